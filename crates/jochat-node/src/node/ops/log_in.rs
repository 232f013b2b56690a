//! Log-in: check the password, open a session.

use jochat_core::ops::CreateSession;
use jochat_core::store::ChatRead;
use jochat_core::types::{Credential, SessionToken, UserId, Username};
use jochat_core::ChatError;

use crate::auth::new_session_token;
use crate::error::NodeError;
use crate::node::{forward, now_ms, Consistency, Node};

/// How many times a forwarded log-in tries to open its session while leaders change.
const LOG_IN_ATTEMPTS: u32 = 3;

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
        self.log_in_with(username, vec![credential]).await
    }

    /// [`Node::log_in`] with the password as the prototype's clients send it: accepted as
    /// [`Credential::from_prototype`] makes it (accounts imported from the prototype's files
    /// and signed up through its service), or as it arrived (accounts that earlier builds
    /// signed up through the prototype's service with a plain password).
    ///
    /// # Errors
    /// As [`Node::log_in`].
    pub async fn log_in_prototype(
        &self,
        username: &str,
        password: &str,
    ) -> Result<LoggedIn, NodeError> {
        let username = Username::new(username)?;
        let mut credentials = vec![Credential::from_prototype(password)?];
        if let Ok(raw) = Credential::new(password) {
            if raw != credentials[0] {
                credentials.push(raw);
            }
        }
        self.log_in_with(username, credentials).await
    }

    /// Whether an account named `username` exists (ignoring case), for the socket
    /// prototype's "Username not found." (its `list_accounts` shows every name to anyone, so
    /// this says nothing new). A name JoChat could not have signed up is not found.
    ///
    /// # Errors
    /// `NotLeader` or `NoQuorum` for a linearizable read.
    pub async fn account_exists(
        &self,
        username: &str,
        consistency: Consistency,
    ) -> Result<bool, NodeError> {
        let Ok(username) = Username::new(username) else {
            return Ok(false);
        };
        self.read(consistency, move |store| {
            Ok(store.user_by_name(&username)?.is_some())
        })
        .await
    }

    /// Logs in when any of `credentials` matches the account's hash (each costs one argon2
    /// verification, also for an unknown name).
    async fn log_in_with(
        &self,
        username: Username,
        credentials: Vec<Credential>,
    ) -> Result<LoggedIn, NodeError> {
        let folded = username.folded();
        self.require_current().await?;
        if let Err(limited) = self.limiter.check(&folded) {
            self.metrics.rate_limited.inc();
            return Err(limited);
        }
        // The password is checked against what this node has applied; the session command
        // then checks, authoritatively, that the account still exists.
        let user = self
            .read(Consistency::Stale, move |store| {
                Ok(store.user_by_name(&username)?)
            })
            .await?;
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        let mut matched = false;
        for credential in &credentials {
            if self.hasher.verify(credential, stored.clone()).await? {
                matched = true;
                break;
            }
        }
        if !matched {
            self.metrics.login_failures.inc();
            self.limiter.record_failure(&folded);
            return Err(ChatError::WrongCredentials.into());
        }
        let user = user.expect("verify only succeeds for an existing user");
        self.limiter.record_success(&folded);

        let ttl_ms = i64::try_from(self.config.session_ttl().as_millis()).unwrap_or(i64::MAX);
        let mut attempt = 1;
        let (token, created) = loop {
            let token = new_session_token()?;
            let written = self
                .write(
                    None,
                    CreateSession {
                        user_id: user.id,
                        token_digest: token.digest(),
                        expires_at_ms: now_ms().saturating_add(ttl_ms),
                    },
                )
                .await;
            match written {
                Ok(created) => break (token, created),
                // A forwarded session lost with its leader may or may not have been opened:
                // open another with a fresh token (it ends the first, if there is one).
                Err(NodeError::Forwarded { code, message })
                    if attempt < LOG_IN_ATTEMPTS && forward::transient(code) =>
                {
                    tracing::info!(attempt, %message, "opening the session again under the next leader");
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        };
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
