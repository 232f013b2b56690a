//! Sign-up: a new account.

use jochat_core::ops::{SignUp, SignedUp};
use jochat_core::store::ChatRead;
use jochat_core::types::{Credential, IdempotencyKey, Username};
use jochat_core::ChatError;

use crate::error::NodeError;
use crate::node::{Consistency, Node};

impl Node {
    /// Creates an account.
    ///
    /// # Errors
    /// `InvalidArgument` on `username`, `password` or `idempotency_key`; `AlreadyExists` when
    /// the name is taken ignoring case.
    pub async fn sign_up(
        &self,
        username: &str,
        password: &str,
        key: &str,
    ) -> Result<SignedUp, NodeError> {
        let username = Username::new(username)?;
        let credential = Credential::new(password)?;
        let key = IdempotencyKey::optional(key)?;
        self.create_account(username, credential, key).await
    }

    /// [`Node::sign_up`] with the password as the prototype's clients send it
    /// ([`Credential::from_prototype`]): the account then logs in with the same password
    /// through every front end.
    ///
    /// # Errors
    /// As [`Node::sign_up`].
    pub async fn sign_up_prototype(
        &self,
        username: &str,
        password: &str,
    ) -> Result<SignedUp, NodeError> {
        let username = Username::new(username)?;
        let credential = Credential::from_prototype(password)?;
        self.create_account(username, credential, None).await
    }

    async fn create_account(
        &self,
        username: Username,
        credential: Credential,
        key: Option<IdempotencyKey>,
    ) -> Result<SignedUp, NodeError> {
        self.require_current().await?;
        // Refuse a taken name before spending an argon2 hash on it; the state machine checks
        // again, authoritatively. A retry of a sign-up that already succeeded finds its own
        // name taken, so it skips the check and lets the state machine replay the outcome.
        if !self.is_remembered(&key).await? {
            let probe = username.clone();
            let existing = self
                .read(Consistency::Stale, move |store| {
                    Ok(store.user_by_name(&probe)?)
                })
                .await?;
            if let Some(existing) = existing {
                return Err(ChatError::AlreadyExists {
                    field: "username".into(),
                    value: existing.username.as_str().to_owned(),
                }
                .into());
            }
        }
        let password_hash = self.hasher.hash(&credential).await?;
        self.write(
            key,
            SignUp {
                username,
                password_hash,
            },
        )
        .await
    }
}
