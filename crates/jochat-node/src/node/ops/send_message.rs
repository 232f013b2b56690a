//! Sending a message.

use jochat_core::ops::{MessageSent, SendMessage};
use jochat_core::types::{Content, IdempotencyKey, Username};

use crate::error::NodeError;
use crate::node::{session_digest, Node};

impl Node {
    /// Sends `content` to `recipient` from the account behind `token`.
    ///
    /// # Errors
    /// `InvalidArgument` on `recipient`, `content` or `idempotency_key`; `NotFound` on an
    /// unknown recipient; `Unauthenticated`.
    pub async fn send_message(
        &self,
        token: &str,
        recipient: &str,
        content: String,
        key: &str,
    ) -> Result<MessageSent, NodeError> {
        let recipient = Username::parse("recipient", recipient)?;
        let content = Content::new(content, self.config.content_bytes_max)?;
        let key = IdempotencyKey::optional(key)?;
        let session = session_digest(token)?;
        self.write(
            key,
            SendMessage {
                session,
                recipient,
                content,
            },
        )
        .await
    }
}
