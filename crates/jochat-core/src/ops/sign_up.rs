//! `SignUp`: create an account.

use serde::{Deserialize, Serialize};

use super::Operation;
use crate::command::{Action, Outcome};
use crate::error::ChatError;
use crate::store::{ChatStore, LastIds, UserRecord};
use crate::types::{UserId, Username};

/// Create an account. `password_hash` is the finished argon2id PHC string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignUp {
    /// The name, unique ignoring case.
    pub username: Username,
    /// argon2id PHC string of the credential the client sent.
    pub password_hash: String,
}

/// An account was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedUp {
    /// The new account's id.
    pub user_id: UserId,
    /// Its name as given.
    pub username: Username,
}

impl From<SignUp> for Action {
    fn from(operation: SignUp) -> Self {
        Self::SignUp(operation)
    }
}

impl Operation for SignUp {
    type Output = SignedUp;

    fn apply<S: ChatStore + ?Sized>(
        &self,
        store: &mut S,
        at_ms: i64,
    ) -> Result<SignedUp, ChatError> {
        if let Some(existing) = store.user_by_name(&self.username)? {
            return Err(ChatError::AlreadyExists {
                field: "username".into(),
                value: existing.username.as_str().to_owned(),
            });
        }
        let last = store.last_ids()?;
        let id = UserId(last.user + 1);
        debug_assert!(id.0 > last.user, "user ids only grow");
        store.insert_user(&UserRecord {
            id,
            username: self.username.clone(),
            password_hash: self.password_hash.clone(),
            created_at_ms: at_ms,
        })?;
        store.set_last_ids(last, LastIds { user: id.0, ..last })?;
        Ok(SignedUp {
            user_id: id,
            username: self.username.clone(),
        })
    }

    fn into_outcome(output: SignedUp) -> Outcome {
        Outcome::SignedUp(output)
    }

    fn from_outcome(outcome: Outcome) -> Result<SignedUp, Outcome> {
        if let Outcome::SignedUp(output) = outcome {
            Ok(output)
        } else {
            Err(outcome)
        }
    }
}
