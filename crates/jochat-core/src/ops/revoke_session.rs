//! `RevokeSession`: log out.

use serde::{Deserialize, Serialize};

use super::Operation;
use crate::command::{Action, Outcome};
use crate::error::ChatError;
use crate::query::authenticate_digest;
use crate::store::ChatStore;
use crate::types::TokenDigest;

/// Revoke a session (log out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeSession {
    /// The session to revoke.
    pub session: TokenDigest,
}

impl From<RevokeSession> for Action {
    fn from(operation: RevokeSession) -> Self {
        Self::RevokeSession(operation)
    }
}

impl Operation for RevokeSession {
    type Output = ();

    fn apply<S: ChatStore + ?Sized>(&self, store: &mut S, at_ms: i64) -> Result<(), ChatError> {
        authenticate_digest(store, &self.session, at_ms)?;
        store.delete_session(&self.session)?;
        Ok(())
    }

    fn into_outcome((): ()) -> Outcome {
        Outcome::SessionRevoked
    }

    fn from_outcome(outcome: Outcome) -> Result<(), Outcome> {
        if let Outcome::SessionRevoked = outcome {
            Ok(())
        } else {
            Err(outcome)
        }
    }
}
