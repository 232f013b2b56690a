//! What the state machine tells live subscribers: every message it stores and every change to
//! sessions, published once the transaction that applied them has committed, on every node
//! (followers apply the same log). A bounded broadcast channel: publishing never waits, and a
//! receiver that falls behind learns how much it missed (it then reads the gap from the
//! database).

use std::sync::Arc;

use jochat_core::store::MessageRecord;
use jochat_core::types::UserId;
use tokio::sync::broadcast;

/// How many events the channel holds for its slowest receiver.
pub const EVENTS_BUFFERED: usize = 4096;

/// One thing the state machine did that a subscriber may care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEvent {
    /// A message was stored.
    Message(MessageRecord),
    /// Sessions changed: of this user when known (a log-in replaced its other sessions), or
    /// of anyone (a log-out, an account deleted, the database reset). Subscribers check
    /// their own session again.
    SessionsChanged(Option<UserId>),
    /// A snapshot replaced the state wholesale: subscribers read what they missed from the
    /// database and check their session again.
    Resync,
}

/// The sending side, shared by the state machine and every subscription. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Events(broadcast::Sender<Arc<ChatEvent>>);

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// An empty channel.
    pub fn new() -> Self {
        Self(broadcast::channel(EVENTS_BUFFERED).0)
    }

    /// Publishes `events`; nobody listening is fine.
    pub fn publish(&self, events: impl IntoIterator<Item = ChatEvent>) {
        for event in events {
            let _ = self.0.send(Arc::new(event));
        }
    }

    /// Whether anyone is subscribed now.
    pub fn has_receivers(&self) -> bool {
        self.0.receiver_count() > 0
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChatEvent>> {
        self.0.subscribe()
    }
}
