//! `DeleteMessages`: delete messages from the caller's inbox.

use serde::{Deserialize, Serialize};

use super::Operation;
use crate::command::{Action, Outcome};
use crate::error::ChatError;
use crate::query::authenticate_digest;
use crate::store::ChatStore;
use crate::types::{MessageIds, TokenDigest};

/// Delete messages from the caller's inbox; ids that are not the caller's are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteMessages {
    /// The caller's session.
    pub session: TokenDigest,
    /// The messages.
    pub ids: MessageIds,
}

/// Messages were deleted from an inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagesDeleted {
    /// How many.
    pub count: u64,
}

impl From<DeleteMessages> for Action {
    fn from(operation: DeleteMessages) -> Self {
        Self::DeleteMessages(operation)
    }
}

impl Operation for DeleteMessages {
    type Output = MessagesDeleted;

    fn apply<S: ChatStore + ?Sized>(
        &self,
        store: &mut S,
        at_ms: i64,
    ) -> Result<MessagesDeleted, ChatError> {
        let user = authenticate_digest(store, &self.session, at_ms)?;
        let count = store.delete_inbox_messages(&user.username, self.ids.as_slice())?;
        Ok(MessagesDeleted { count })
    }

    fn into_outcome(output: MessagesDeleted) -> Outcome {
        Outcome::MessagesDeleted(output)
    }

    fn from_outcome(outcome: Outcome) -> Result<MessagesDeleted, Outcome> {
        if let Outcome::MessagesDeleted(output) = outcome {
            Ok(output)
        } else {
            Err(outcome)
        }
    }
}
