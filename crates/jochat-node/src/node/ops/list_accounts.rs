//! Account search: a page of the accounts matching a pattern.

use jochat_core::query::{self, AccountPage};
use jochat_core::types::{Page, TokenDigest};
use jochat_core::Pattern;

use crate::error::NodeError;
use crate::node::{now_ms, session_digest, Consistency, Node};

impl Node {
    /// A page of the accounts matching `pattern` (`*`, `?`, else a substring).
    ///
    /// # Errors
    /// `InvalidArgument` on `pattern`, `offset` or `limit`; `Unauthenticated`; `NotLeader`
    /// or `NoQuorum` for a linearizable read.
    pub async fn list_accounts(
        &self,
        token: &str,
        pattern: &str,
        offset: i64,
        limit: i64,
        consistency: Consistency,
    ) -> Result<AccountPage, NodeError> {
        self.list_accounts_matching(token, Pattern::new(pattern)?, offset, limit, consistency)
            .await
    }

    /// A page of the accounts matching an already parsed `pattern` (the prototype's service
    /// parses with its own rules, [`Pattern::substring`]).
    ///
    /// # Errors
    /// `InvalidArgument` on `offset` or `limit`; `Unauthenticated`; `NotLeader` or
    /// `NoQuorum` for a linearizable read.
    pub async fn list_accounts_matching(
        &self,
        token: &str,
        pattern: Pattern,
        offset: i64,
        limit: i64,
        consistency: Consistency,
    ) -> Result<AccountPage, NodeError> {
        let digest = session_digest(token)?;
        self.accounts_page(Some(digest), pattern, offset, limit, consistency)
            .await
    }

    /// A page of the accounts matching `pattern`, for anyone: the socket prototype's
    /// `list_accounts` asks for no session, and its clients search before logging in.
    ///
    /// # Errors
    /// `InvalidArgument` on `offset` or `limit`; `NotLeader` or `NoQuorum` for a
    /// linearizable read.
    pub async fn list_accounts_anonymous(
        &self,
        pattern: Pattern,
        offset: i64,
        limit: i64,
        consistency: Consistency,
    ) -> Result<AccountPage, NodeError> {
        self.accounts_page(None, pattern, offset, limit, consistency)
            .await
    }

    /// The page, for the session of `digest` (checked in the same read) or for anyone.
    async fn accounts_page(
        &self,
        session: Option<TokenDigest>,
        pattern: Pattern,
        offset: i64,
        limit: i64,
        consistency: Consistency,
    ) -> Result<AccountPage, NodeError> {
        let page = Page::new(offset, limit)?;
        self.read(consistency, move |store| {
            if let Some(digest) = &session {
                query::authenticate_digest(store, digest, now_ms())?;
            }
            query::list_accounts(store, &pattern, page)
        })
        .await
    }
}
