//! `MarkDelivered`: fetch the oldest away messages, marking them delivered.

use serde::{Deserialize, Serialize};

use super::Operation;
use crate::command::{Action, Outcome};
use crate::error::ChatError;
use crate::limits::REPLY_CONTENT_BYTES_MAX;
use crate::query::authenticate_digest;
use crate::store::{ChatStore, MessageRecord};
use crate::types::{FetchLimit, MessageId, TokenDigest};

/// Mark the caller's oldest away messages delivered (fetching them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkDelivered {
    /// The caller's session.
    pub session: TokenDigest,
    /// How many at most.
    pub limit: FetchLimit,
}

/// Away messages were marked delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// Which, oldest first.
    pub ids: Vec<MessageId>,
    /// Away messages left.
    pub remaining: u64,
}

impl From<MarkDelivered> for Action {
    fn from(operation: MarkDelivered) -> Self {
        Self::MarkDelivered(operation)
    }
}

impl Operation for MarkDelivered {
    type Output = Delivered;

    fn apply<S: ChatStore + ?Sized>(
        &self,
        store: &mut S,
        at_ms: i64,
    ) -> Result<Delivered, ChatError> {
        let user = authenticate_digest(store, &self.session, at_ms)?;
        let away = store.away_messages(&user.username, self.limit.get())?;
        let ids: Vec<MessageId> = within_reply_budget(&away).iter().map(|m| m.id).collect();
        store.mark_delivered(&ids)?;
        let remaining = store.away_count(&user.username)?;
        Ok(Delivered { ids, remaining })
    }

    fn into_outcome(output: Delivered) -> Outcome {
        Outcome::Delivered(output)
    }

    fn from_outcome(outcome: Outcome) -> Result<Delivered, Outcome> {
        if let Outcome::Delivered(output) = outcome {
            Ok(output)
        } else {
            Err(outcome)
        }
    }
}

/// The longest prefix of `messages` whose contents fit in one reply, and never less than one
/// message, so that a reader always makes progress.
pub fn within_reply_budget(messages: &[MessageRecord]) -> &[MessageRecord] {
    let mut bytes = 0usize;
    for (index, message) in messages.iter().enumerate() {
        bytes += message.content.len();
        if bytes > REPLY_CONTENT_BYTES_MAX && index > 0 {
            return &messages[..index];
        }
    }
    messages
}
