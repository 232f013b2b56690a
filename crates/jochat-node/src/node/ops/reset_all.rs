//! The prototype's `ResetDB`: everything cleared, for the administrator only.

use jochat_core::ops::{ResetAll, ResetAnonymous};

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

    /// Deletes every account, session and message for anyone, as the socket prototype's
    /// `reset_db` did: only on a node started with `--allow-anonymous-reset`.
    ///
    /// # Errors
    /// `PermissionDenied` without that flag.
    pub async fn reset_anonymous(&self) -> Result<(), NodeError> {
        if !self.config.allow_anonymous_reset {
            tracing::warn!("refused an anonymous database reset: --allow-anonymous-reset is off");
            return Err(NodeError::PermissionDenied(
                "reset_db: refused, this node was not started with --allow-anonymous-reset".into(),
            ));
        }
        self.write(None, ResetAnonymous {}).await?;
        tracing::warn!("anonymous database reset: every account, session and message deleted");
        Ok(())
    }
}
