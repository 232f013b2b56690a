//! `SendMessage`: store a message, delivered or away.

use serde::{Deserialize, Serialize};

use super::Operation;
use crate::command::{Action, Outcome};
use crate::error::ChatError;
use crate::query::authenticate_digest;
use crate::store::{ChatStore, LastIds, MessageRecord};
use crate::types::{Content, MessageId, TokenDigest, Username};

/// Send a message to another account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessage {
    /// The sender's session.
    pub session: TokenDigest,
    /// The recipient, resolved ignoring case.
    pub recipient: Username,
    /// The text.
    pub content: Content,
}

/// A message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSent {
    /// Its id.
    pub id: MessageId,
    /// Its timestamp (the command's time).
    pub timestamp_ms: i64,
    /// Whether the recipient had a live session (delivered) or not (away).
    pub delivered: bool,
}

impl From<SendMessage> for Action {
    fn from(operation: SendMessage) -> Self {
        Self::SendMessage(operation)
    }
}

impl Operation for SendMessage {
    type Output = MessageSent;

    fn apply<S: ChatStore + ?Sized>(
        &self,
        store: &mut S,
        at_ms: i64,
    ) -> Result<MessageSent, ChatError> {
        let sender = authenticate_digest(store, &self.session, at_ms)?;
        let Some(recipient) = store.user_by_name(&self.recipient)? else {
            return Err(ChatError::NotFound {
                field: "recipient".into(),
                value: self.recipient.as_str().to_owned(),
            });
        };
        let delivered = store.has_live_session(recipient.id, at_ms)?;
        let last = store.last_ids()?;
        let id = MessageId(last.message + 1);
        debug_assert!(id.0 > last.message, "message ids only grow");
        store.insert_message(&MessageRecord {
            id,
            sender: sender.username,
            recipient: recipient.username,
            content: self.content.as_str().to_owned(),
            timestamp_ms: at_ms,
            delivered,
        })?;
        store.set_last_ids(
            last,
            LastIds {
                message: id.0,
                ..last
            },
        )?;
        Ok(MessageSent {
            id,
            timestamp_ms: at_ms,
            delivered,
        })
    }

    fn into_outcome(output: MessageSent) -> Outcome {
        Outcome::MessageSent(output)
    }

    fn from_outcome(outcome: Outcome) -> Result<MessageSent, Outcome> {
        if let Outcome::MessageSent(output) = outcome {
            Ok(output)
        } else {
            Err(outcome)
        }
    }
}
