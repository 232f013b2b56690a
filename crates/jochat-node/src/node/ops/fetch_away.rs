//! Fetching away messages: the oldest, marked delivered.

use jochat_core::ops::MarkDelivered;
use jochat_core::query;
use jochat_core::store::MessageRecord;
use jochat_core::types::{FetchLimit, IdempotencyKey};

use crate::error::NodeError;
use crate::node::{session_digest, Consistency, Node};

/// The result of fetching away messages.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The messages now marked delivered, oldest first.
    pub messages: Vec<MessageRecord>,
    /// Away messages left.
    pub remaining: u64,
}

impl Node {
    /// Returns up to `limit` of the oldest away messages and marks them delivered.
    ///
    /// # Errors
    /// `InvalidArgument` on `limit` or `idempotency_key`; `Unauthenticated`.
    pub async fn fetch_away(
        &self,
        token: &str,
        limit: i64,
        key: &str,
    ) -> Result<Fetched, NodeError> {
        let limit = FetchLimit::new(limit)?;
        let key = IdempotencyKey::optional(key)?;
        let session = session_digest(token)?;
        let delivered = self.write(key, MarkDelivered { session, limit }).await?;
        // The write was applied here before it was answered, so this node's rows hold the
        // messages it marked.
        let ids = delivered.ids;
        let messages = self
            .read(Consistency::Stale, move |store| {
                query::messages_by_ids(store, &ids)
            })
            .await?;
        Ok(Fetched {
            messages,
            remaining: delivered.remaining,
        })
    }
}
