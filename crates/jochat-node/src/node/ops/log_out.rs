//! Log-out: revoke the caller's session.

use jochat_core::ops::RevokeSession;
use jochat_core::types::IdempotencyKey;

use crate::error::NodeError;
use crate::node::{session_digest, Node};

impl Node {
    /// Revokes the session of `token`.
    ///
    /// # Errors
    /// `Unauthenticated` for a missing, malformed, unknown, revoked or expired token.
    pub async fn log_out(&self, token: &str, key: &str) -> Result<(), NodeError> {
        let session = session_digest(token)?;
        let key = IdempotencyKey::optional(key)?;
        self.write(key, RevokeSession { session }).await
    }
}
