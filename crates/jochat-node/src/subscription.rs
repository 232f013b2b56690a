//! Subscribe: every message addressed to the caller, pushed as soon as this node applies it.
//!
//! A subscription is one task per subscriber, served by whichever node it reached from what
//! that node has applied (its reads are `Consistency::Stale`). It joins the state machine's
//! event channel ([`crate::events`]) *before* reading what it must catch up on from the
//! database, so nothing applied in between is missed, and it sends each message id at most
//! once, in increasing order (ids grow in commit order). Its output is a bounded channel: a
//! subscriber that lets `--subscriber-buffer` messages pile up unread is dropped with
//! RESOURCE_EXHAUSTED, so a slow reader never slows writers (publishing never waits). A session
//! that is revoked, replaced by a newer log-in, deleted or expired ends the stream with
//! UNAUTHENTICATED. At most `--subscribers-max` subscriptions live at once; beyond it a new one
//! is refused with UNAVAILABLE "overloaded" before anything is read.

use std::sync::Arc;
use std::time::Duration;

use jochat_core::query;
use jochat_core::store::{ChatRead, MessageRecord, UserRecord};
use jochat_core::types::{MessageId, SessionToken, TokenDigest};
use jochat_core::ChatError;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

use crate::error::NodeError;
use crate::events::ChatEvent;
use crate::node::{now_ms, Consistency, Node};

/// Messages read from the database per catch-up query.
const CATCH_UP_PAGE: u32 = 500;
/// How often a quiet subscription checks that its session has not expired.
const SESSION_RECHECK: Duration = Duration::from_secs(30);
/// How long an ending subscription waits to hand its final status to a full buffer.
const FINAL_STATUS_WAIT: Duration = Duration::from_secs(10);

/// The messages of one subscription, then possibly one final error.
pub type Subscription = mpsc::Receiver<Result<MessageRecord, NodeError>>;

/// Starts a subscription for the session `token`, resuming after message `after_id` (0: from
/// now on).
///
/// # Errors
/// `InvalidArgument` on a negative `after_id`; `Unauthenticated` for a bad session.
pub async fn subscribe(
    node: Arc<Node>,
    token: &str,
    after_id: i64,
) -> Result<Subscription, NodeError> {
    if after_id < 0 {
        return Err(
            ChatError::invalid("after_id", "must be 0 (from now on) or a message id").into(),
        );
    }
    let slot = node.subscriber_slot()?;
    let user = node.authenticate(token).await?;
    let digest = SessionToken::parse(token)?.digest();
    // From now on: whatever is stored already is not sent. Read before joining the channel;
    // the catch-up below covers anything applied in between.
    let after = if after_id == 0 {
        node.read(Consistency::Stale, |store| Ok(store.last_ids()?.message))
            .await?
    } else {
        after_id
    };
    let live = node.events().subscribe();
    let buffer = node.config().subscriber_buffer;
    let (output, subscription) = mpsc::channel(buffer);
    tracing::debug!(user = %user.username, after, "subscription started");
    tokio::spawn(async move {
        run(node, user, digest, after, live, output).await;
        // The place is free again once the subscription has ended.
        drop(slot);
    });
    Ok(subscription)
}

/// Why a subscription stopped early.
enum Stop {
    /// The subscriber went away.
    Gone,
    /// End with this status.
    Fail(NodeError),
}

struct Run {
    node: Arc<Node>,
    user: UserRecord,
    digest: TokenDigest,
    /// The last message id queued to the subscriber.
    last: i64,
    output: mpsc::Sender<Result<MessageRecord, NodeError>>,
}

impl Run {
    /// Queues `message` unless it was sent already; a full buffer drops the subscriber.
    fn push(&mut self, message: MessageRecord) -> Result<(), Stop> {
        if message.id.0 <= self.last {
            return Ok(());
        }
        let id = message.id.0;
        match self.output.try_send(Ok(message)) {
            Ok(()) => {
                self.last = id;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Stop::Gone),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(Stop::Fail(NodeError::SubscriberTooSlow {
                    buffered: self.output.max_capacity(),
                    last_id: self.last,
                }))
            }
        }
    }

    /// Queues everything stored for the subscriber after the last id sent.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        loop {
            let (recipient, after) = (self.user.username.clone(), MessageId(self.last));
            let page = self
                .node
                .read(Consistency::Stale, move |store| {
                    Ok(store.messages_after(&recipient, after, CATCH_UP_PAGE)?)
                })
                .await
                .map_err(Stop::Fail)?;
            let full = page.len() == CATCH_UP_PAGE as usize;
            for message in page {
                self.push(message)?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Ends the subscription unless the session is still valid now.
    async fn check_session(&self) -> Result<(), Stop> {
        let digest = self.digest.clone();
        let now = now_ms();
        self.node
            .read(Consistency::Stale, move |store| {
                query::authenticate_digest(store, &digest, now)
            })
            .await
            .map(drop)
            .map_err(Stop::Fail)
    }

    async fn follow(&mut self, live: &mut broadcast::Receiver<Arc<ChatEvent>>) -> Result<(), Stop> {
        self.catch_up().await?;
        let mut recheck = tokio::time::interval(SESSION_RECHECK);
        recheck.tick().await;
        let mut stopping = self.node.stopping();
        loop {
            if *stopping.borrow_and_update() {
                return Err(Stop::Fail(NodeError::ShuttingDown));
            }
            tokio::select! {
                () = self.output.closed() => return Err(Stop::Gone),
                _ = stopping.changed() => {}
                _ = recheck.tick() => self.check_session().await?,
                event = live.recv() => match event {
                    Ok(event) => match &*event {
                        ChatEvent::Message(message) if message.recipient == self.user.username => {
                            self.push(message.clone())?;
                        }
                        ChatEvent::Message(_) => {}
                        ChatEvent::SessionsChanged(user) => {
                            if user.is_none_or(|user| user == self.user.id) {
                                self.check_session().await?;
                            }
                        }
                        ChatEvent::Resync => {
                            self.check_session().await?;
                            self.catch_up().await?;
                        }
                    },
                    // This task fell behind the node's event channel (not the subscriber
                    // behind it): what it missed is in the database.
                    Err(RecvError::Lagged(_)) => self.catch_up().await?,
                    Err(RecvError::Closed) => return Err(Stop::Fail(NodeError::ShuttingDown)),
                },
            }
        }
    }
}

async fn run(
    node: Arc<Node>,
    user: UserRecord,
    digest: TokenDigest,
    after: i64,
    mut live: broadcast::Receiver<Arc<ChatEvent>>,
    output: mpsc::Sender<Result<MessageRecord, NodeError>>,
) {
    let mut run = Run {
        node,
        user,
        digest,
        last: after,
        output,
    };
    if let Err(Stop::Fail(error)) = run.follow(&mut live).await {
        tracing::debug!(user = %run.user.username, %error, "subscription ended");
        let _ = run.output.send_timeout(Err(error), FINAL_STATUS_WAIT).await;
    }
}
