//! A page of the inbox.

use jochat_core::limits::PAGE_LIMIT_MAX;
use jochat_core::query::{self, MessagePage};
use jochat_core::types::{Page, Username};

use crate::error::NodeError;
use crate::node::{now_ms, session_digest, Consistency, Node};

impl Node {
    /// A page of the inbox of the account behind `token`, newest first; with a non-empty
    /// `with_user`, only the conversation with that user.
    ///
    /// # Errors
    /// `InvalidArgument` on `offset`, `limit` or `with_user`; `NotFound` on an unknown
    /// `with_user`; `Unauthenticated`; `NotLeader` or `NoQuorum` for a linearizable read.
    pub async fn list_messages(
        &self,
        token: &str,
        offset: i64,
        limit: i64,
        with_user: &str,
        consistency: Consistency,
    ) -> Result<MessagePage, NodeError> {
        let page = Page::new(offset, limit)?;
        let with_user = match with_user {
            "" => None,
            name => Some(Username::parse("with_user", name)?),
        };
        let digest = session_digest(token)?;
        self.read(consistency, move |store| {
            let user = query::authenticate_digest(store, &digest, now_ms())?;
            query::list_messages(store, &user, with_user.as_ref(), page)
        })
        .await
    }

    /// Up to `limit` of the delivered messages of the account behind `token`, oldest first
    /// (what the socket prototype's clients poll).
    ///
    /// # Errors
    /// `InvalidArgument` on `limit` (1 to 1000); `Unauthenticated`; `NotLeader` or
    /// `NoQuorum` for a linearizable read.
    pub async fn delivered_messages(
        &self,
        token: &str,
        limit: u32,
        consistency: Consistency,
    ) -> Result<Vec<jochat_core::store::MessageRecord>, NodeError> {
        if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
            return Err(jochat_core::ChatError::invalid(
                "limit",
                format!("must be between 1 and {PAGE_LIMIT_MAX}, got {limit}"),
            )
            .into());
        }
        let digest = session_digest(token)?;
        self.read(consistency, move |store| {
            let user = query::authenticate_digest(store, &digest, now_ms())?;
            query::delivered_messages(store, &user, limit)
        })
        .await
    }
}
