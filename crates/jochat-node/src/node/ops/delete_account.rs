//! Deleting the caller's account.

use jochat_core::ops::DeleteAccount;
use jochat_core::types::{Credential, IdempotencyKey, TokenDigest};
use jochat_core::ChatError;

use crate::error::NodeError;
use crate::node::{session_digest, Node};

impl Node {
    /// Deletes the account behind `token` after checking its password again; returns how
    /// many messages went with it.
    ///
    /// # Errors
    /// `InvalidArgument` on `password` or `idempotency_key`; `WrongCredentials` on a wrong
    /// password (rate-limited like log-ins); `Unauthenticated`.
    pub async fn delete_account(
        &self,
        token: &str,
        password: &str,
        key: &str,
    ) -> Result<u64, NodeError> {
        let credential = Credential::new(password)?;
        let key = IdempotencyKey::optional(key)?;
        let session = session_digest(token)?;
        self.require_current().await?;
        // A retry of a deletion that already succeeded has no account left to check the
        // password against; the state machine replays the first outcome to the same session.
        if !self.is_remembered(&key).await? {
            let user = self.authenticate(token).await?;
            let folded = user.username.folded();
            self.limiter.check(&folded)?;
            if !self
                .hasher
                .verify(&credential, Some(user.password_hash))
                .await?
            {
                self.limiter.record_failure(&folded);
                return Err(ChatError::WrongCredentials.into());
            }
        }
        self.delete_session_account(session, key).await
    }

    /// Deletes the account behind `token` on the strength of the session alone, as the
    /// prototype's `DeleteAccount` did (its request carries no password).
    ///
    /// # Errors
    /// `Unauthenticated`.
    pub async fn delete_account_by_session(&self, token: &str) -> Result<u64, NodeError> {
        self.delete_session_account(session_digest(token)?, None)
            .await
    }

    async fn delete_session_account(
        &self,
        session: TokenDigest,
        key: Option<IdempotencyKey>,
    ) -> Result<u64, NodeError> {
        let deleted = self.write(key, DeleteAccount { session }).await?;
        Ok(deleted.messages_deleted)
    }
}
