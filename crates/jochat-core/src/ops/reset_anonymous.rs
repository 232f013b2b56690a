//! `ResetAnonymous`: the socket prototype's `reset_db`, which asks for no session.

use serde::{Deserialize, Serialize};

use super::Operation;
use crate::command::{Action, Outcome};
use crate::error::ChatError;
use crate::store::ChatStore;

/// Delete every account, session and message on nobody's authority but the accepting
/// node's: only a node started with `--allow-anonymous-reset` (the socket prototype's test
/// environments) builds it. Id counters are kept, as for [`super::ResetAll`].
///
/// A build older than this variant cannot read it: enable that flag only once every node
/// of the cluster runs a build that knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetAnonymous {}

impl From<ResetAnonymous> for Action {
    fn from(operation: ResetAnonymous) -> Self {
        Self::ResetAnonymous(operation)
    }
}

impl Operation for ResetAnonymous {
    type Output = ();

    fn apply<S: ChatStore + ?Sized>(&self, store: &mut S, _at_ms: i64) -> Result<(), ChatError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply;
    use crate::command::Command;
    use crate::memory::MemoryStore;
    use crate::ops::SignUp;
    use crate::store::ChatRead;
    use crate::types::Username;

    #[test]
    fn it_clears_every_account_without_a_session() {
        let mut store = MemoryStore::default();
        let name = Username::new("alice").expect("a valid name");
        let sign_up = Command {
            at_ms: 1,
            idempotency_key: None,
            action: SignUp {
                username: name.clone(),
                password_hash: "hash".into(),
            }
            .into(),
        };
        apply(&mut store, &sign_up).expect("the sign-up applies");
        assert!(store.user_by_name(&name).expect("readable").is_some());
        let reset = Command {
            at_ms: 2,
            idempotency_key: None,
            action: ResetAnonymous {}.into(),
        };
        assert_eq!(apply(&mut store, &reset), Ok(Outcome::Reset));
        assert!(store.user_by_name(&name).expect("readable").is_none());
    }
}
