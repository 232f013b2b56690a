//! `CreateSession`: open a session after the accepting node checked the password.

use serde::{Deserialize, Serialize};

use super::Operation;
use crate::command::{Action, Outcome};
use crate::error::ChatError;
use crate::store::{ChatStore, SessionRecord};
use crate::types::{TokenDigest, UserId, Username};

/// Open a session after the accepting node checked the password; revokes the user's other
/// sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSession {
    /// Whose session.
    pub user_id: UserId,
    /// SHA-256 of the token handed to the client.
    pub token_digest: TokenDigest,
    /// When the session stops being valid.
    pub expires_at_ms: i64,
}

/// A session was opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCreated {
    /// Whose.
    pub user_id: UserId,
    /// The account's name as given at sign-up.
    pub username: Username,
    /// When it expires.
    pub expires_at_ms: i64,
}

impl From<CreateSession> for Action {
    fn from(operation: CreateSession) -> Self {
        Self::CreateSession(operation)
    }
}

impl Operation for CreateSession {
    type Output = SessionCreated;

    fn apply<S: ChatStore + ?Sized>(
        &self,
        store: &mut S,
        at_ms: i64,
    ) -> Result<SessionCreated, ChatError> {
        // The account may have been deleted between the password check and this command.
        let Some(user) = store.user_by_id(self.user_id)? else {
            return Err(ChatError::WrongCredentials);
        };
        if self.expires_at_ms <= at_ms {
            return Err(ChatError::invalid(
                "expires_at_ms",
                "must be after the command's time",
            ));
        }
        // Tokens carry 256 random bits, so a digest collision means a replayed or forged
        // command; refusing it keeps every replica's answer the same whatever the store's key
        // rules.
        if store.session(&self.token_digest)?.is_some() {
            return Err(ChatError::invalid("token_digest", "is already in use"));
        }
        // One session per account: a new login ends the others. Expired sessions of everyone
        // are swept here too, so the table does not grow with abandoned logins.
        store.delete_expired_sessions(at_ms)?;
        store.delete_sessions_of(self.user_id)?;
        store.insert_session(&SessionRecord {
            token_digest: self.token_digest.clone(),
            user_id: self.user_id,
            created_at_ms: at_ms,
            expires_at_ms: self.expires_at_ms,
        })?;
        Ok(SessionCreated {
            user_id: self.user_id,
            username: user.username,
            expires_at_ms: self.expires_at_ms,
        })
    }

    fn into_outcome(output: SessionCreated) -> Outcome {
        Outcome::SessionCreated(output)
    }

    fn from_outcome(outcome: Outcome) -> Result<SessionCreated, Outcome> {
        if let Outcome::SessionCreated(output) = outcome {
            Ok(output)
        } else {
            Err(outcome)
        }
    }
}
