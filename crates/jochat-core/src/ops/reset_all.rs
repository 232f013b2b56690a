//! `ResetAll`: the prototype's `ResetDB`.

use serde::{Deserialize, Serialize};

use super::Operation;
use crate::command::{Action, Outcome};
use crate::error::ChatError;
use crate::query::authenticate_digest;
use crate::store::ChatStore;
use crate::types::TokenDigest;

/// Delete every account, session and message (the prototype's `ResetDB`). The accepting
/// node checked that the session belongs to its configured administrator. Id counters are
/// kept, so ids are still never reused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetAll {
    /// The administrator's session.
    pub session: TokenDigest,
}

impl From<ResetAll> for Action {
    fn from(operation: ResetAll) -> Self {
        Self::ResetAll(operation)
    }
}

impl Operation for ResetAll {
    type Output = ();

    fn apply<S: ChatStore + ?Sized>(&self, store: &mut S, at_ms: i64) -> Result<(), ChatError> {
        authenticate_digest(store, &self.session, at_ms)?;
        store.clear_chat_state()?;
        Ok(())
    }

    fn into_outcome((): ()) -> Outcome {
        Outcome::Reset
    }

    fn from_outcome(outcome: Outcome) -> Result<(), Outcome> {
        if let Outcome::Reset = outcome {
            Ok(())
        } else {
            Err(outcome)
        }
    }
}
