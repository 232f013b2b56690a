//! Log-in: check the password, open a session.

use jochat_core::ops::CreateSession;
use jochat_core::store::ChatRead;
use jochat_core::types::{Credential, SessionToken, UserId, Username};
use jochat_core::ChatError;

use crate::auth::new_session_token;
use crate::error::NodeError;
use crate::node::{now_ms, Consistency, Node};

/// A successful log-in.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    /// The new session's token; only its digest is stored.
    pub token: SessionToken,
    /// The account.
    pub user_id: UserId,
    /// The account's name as given at sign-up.
    pub username: Username,
    /// When the session expires.
    pub expires_at_ms: i64,
    /// Away messages waiting.
    pub unread_count: u64,
}

impl Node {
    /// Checks the password and opens a session, revoking the account's others.
    ///
    /// # Errors
    /// `InvalidArgument` on a malformed `username` or empty `password`; `WrongCredentials`
    /// for an unknown name or a wrong password (indistinguishable, also in time);
    /// `RateLimited` after too many failures for the name.
    pub async fn log_in(&self, username: &str, password: &str) -> Result<LoggedIn, NodeError> {
        let username = Username::new(username)?;
        let credential = Credential::new(password)?;
        let folded = username.folded();
        self.refuse_unless_leader()?;
        self.limiter.check(&folded)?;
        // The password is checked against what this node has applied; the session command
        // then checks, authoritatively, that the account still exists.
        let user = self
            .read(Consistency::Stale, move |store| {
                Ok(store.user_by_name(&username)?)
            })
            .await?;
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        if !self.hasher.verify(&credential, stored).await? {
            self.limiter.record_failure(&folded);
            return Err(ChatError::WrongCredentials.into());
        }
        let user = user.expect("verify only succeeds for an existing user");
        self.limiter.record_success(&folded);

        let token = new_session_token()?;
        let ttl_ms = i64::try_from(self.config.session_ttl().as_millis()).unwrap_or(i64::MAX);
        let created = self
            .write(
                None,
                CreateSession {
                    user_id: user.id,
                    token_digest: token.digest(),
                    expires_at_ms: now_ms().saturating_add(ttl_ms),
                },
            )
            .await?;
        let owner = created.username.clone();
        let unread_count = self
            .read(Consistency::Stale, move |store| {
                Ok(store.away_count(&owner)?)
            })
            .await?;
        Ok(LoggedIn {
            token,
            user_id: created.user_id,
            username: created.username,
            expires_at_ms: created.expires_at_ms,
            unread_count,
        })
    }
}
