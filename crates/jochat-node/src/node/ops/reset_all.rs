//! The prototype's `ResetDB`: everything cleared, for the administrator only.

use jochat_core::ops::ResetAll;

use crate::error::NodeError;
use crate::node::{session_digest, Node};

impl Node {
    /// Deletes every account, session and message, for the administrator named by
    /// `--admin-user` only (the prototype's `ResetDB`).
    ///
    /// # Errors
    /// `PermissionDenied` when no administrator is configured or the caller is someone else;
    /// `Unauthenticated`.
    pub async fn reset_all(&self, token: &str) -> Result<(), NodeError> {
        // The session first, as the prototype did: a caller without one is "not logged in".
        let user = self.authenticate(token).await?;
        let Some(admin) = &self.config.admin_user else {
            return Err(NodeError::PermissionDenied(
                "resetting the database is disabled: the node has no --admin-user".into(),
            ));
        };
        if !user.username.as_str().eq_ignore_ascii_case(admin) {
            tracing::warn!(user = %user.username, "refused a database reset by a non-administrator");
            return Err(NodeError::PermissionDenied(
                "only the administrator may reset the database".into(),
            ));
        }
        let session = session_digest(token)?;
        self.write(None, ResetAll { session }).await?;
        tracing::warn!(admin = %user.username, "database reset: every account, session and message deleted");
        Ok(())
    }
}
