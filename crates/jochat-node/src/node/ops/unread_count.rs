//! The unread count: how many away messages wait.

use jochat_core::query;

use crate::error::NodeError;
use crate::node::{now_ms, session_digest, Consistency, Node};

impl Node {
    /// The number of away messages of the account behind `token`.
    ///
    /// # Errors
    /// `Unauthenticated`; `NotLeader` or `NoQuorum` for a linearizable read.
    pub async fn unread_count(
        &self,
        token: &str,
        consistency: Consistency,
    ) -> Result<u64, NodeError> {
        let digest = session_digest(token)?;
        self.read(consistency, move |store| {
            let user = query::authenticate_digest(store, &digest, now_ms())?;
            query::unread_count(store, &user)
        })
        .await
    }
}
