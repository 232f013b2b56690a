//! A page of the inbox.

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
}
