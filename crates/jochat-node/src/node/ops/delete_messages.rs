//! Deleting messages from the caller's inbox.

use jochat_core::ops::DeleteMessages;
use jochat_core::types::{IdempotencyKey, MessageIds};

use crate::error::NodeError;
use crate::node::{session_digest, Node};

impl Node {
    /// Deletes those of `ids` that are in the inbox of the account behind `token`; returns
    /// how many were.
    ///
    /// # Errors
    /// `InvalidArgument` on `ids` (none, more than 1000, not positive) or `idempotency_key`;
    /// `Unauthenticated`.
    pub async fn delete_messages(
        &self,
        token: &str,
        ids: &[i64],
        key: &str,
    ) -> Result<u64, NodeError> {
        let ids = MessageIds::new(ids)?;
        let key = IdempotencyKey::optional(key)?;
        let session = session_digest(token)?;
        let deleted = self.write(key, DeleteMessages { session, ids }).await?;
        Ok(deleted.count)
    }
}
