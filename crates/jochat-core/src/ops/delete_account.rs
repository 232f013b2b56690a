//! `DeleteAccount`: delete the caller's account and everything of it.

use serde::{Deserialize, Serialize};

use super::Operation;
use crate::command::{Action, Outcome};
use crate::error::ChatError;
use crate::query::authenticate_digest;
use crate::store::ChatStore;
use crate::types::TokenDigest;

/// Delete the caller's account, sessions, and every message it sent or received. The
/// accepting node checked the password again before building this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAccount {
    /// The caller's session.
    pub session: TokenDigest,
}

/// An account was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDeleted {
    /// How many messages went with it.
    pub messages_deleted: u64,
}

impl From<DeleteAccount> for Action {
    fn from(operation: DeleteAccount) -> Self {
        Self::DeleteAccount(operation)
    }
}

impl Operation for DeleteAccount {
    type Output = AccountDeleted;

    fn apply<S: ChatStore + ?Sized>(
        &self,
        store: &mut S,
        at_ms: i64,
    ) -> Result<AccountDeleted, ChatError> {
        let user = authenticate_digest(store, &self.session, at_ms)?;
        let messages_deleted = store.delete_messages_of(&user.username)?;
        store.delete_sessions_of(user.id)?;
        store.delete_user(user.id)?;
        Ok(AccountDeleted { messages_deleted })
    }

    fn into_outcome(output: AccountDeleted) -> Outcome {
        Outcome::AccountDeleted(output)
    }

    fn from_outcome(outcome: Outcome) -> Result<AccountDeleted, Outcome> {
        if let Outcome::AccountDeleted(output) = outcome {
            Ok(output)
        } else {
            Err(outcome)
        }
    }
}
