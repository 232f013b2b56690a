//! Reads that wait for the applies whose outcomes have been handed out.
//!
//! The leader hands an apply's outcomes to openraft (and so to the waiting clients) as soon as
//! its statements have run inside the writer's transaction and the entries' own log appends
//! are durable, before the transaction commits (`raft::storage`, "Outcomes before the
//! commit"). Until that commit the read connections do not see the change. So every read
//! ([`super::Database::read`]) first waits until everything released when it began is
//! committed: a client that got its answer and then reads, on this node, sees its write.
//!
//! Indexes are kept as *ends* (the index after the last entry), so that 0 means "none".

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::error::NodeError;

/// The visibility of every database open for Raft in this process, by file: for whoever
/// reads a node's file directly, around the node (tests), see [`settle`].
static OPEN: Mutex<Vec<(PathBuf, Weak<Visibility>)>> = Mutex::new(Vec::new());

/// Registers the visibility of the database at `path` (opened for Raft in this process).
pub(crate) fn register(path: &Path, visibility: &Arc<Visibility>) {
    let mut open = OPEN
        .lock()
        .expect("the visibility registry's mutex is never held across a panic");
    let path = canonical(path);
    open.retain(|(known, weak)| weak.strong_count() > 0 && *known != path);
    open.push((path, Arc::downgrade(visibility)));
}

/// `path` with its links and relative parts resolved, when it exists.
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_owned())
}

/// Blocks (up to `patience`) until every apply answered on the database at `path`, if this
/// process has it open, has committed; returns whether it has. For reading a running node's
/// file directly from outside the node (tests): the node's own reads wait by themselves.
pub fn settle(path: &Path, patience: Duration) -> bool {
    let path = canonical(path);
    let visibility = {
        let open = OPEN
            .lock()
            .expect("the visibility registry's mutex is never held across a panic");
        open.iter()
            .rev()
            .find(|(known, _)| *known == path)
            .and_then(|(_, weak)| weak.upgrade())
    };
    let Some(visibility) = visibility else {
        return true;
    };
    let deadline = Instant::now() + patience;
    while !visibility.settled() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// What the read connections can see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Visible {
    /// The index after the last applied entry whose transaction has committed.
    end: u64,
    /// The writer failed: an apply whose outcomes were handed out may never commit.
    failed: bool,
}

/// How far applies are handed out and how far they are committed (see the module).
#[derive(Debug)]
pub struct Visibility {
    /// The index after the last entry whose outcomes were handed out before its commit.
    released_end: AtomicU64,
    visible: tokio::sync::watch::Sender<Visible>,
}

impl Default for Visibility {
    fn default() -> Self {
        Self {
            released_end: AtomicU64::new(0),
            visible: tokio::sync::watch::Sender::new(Visible::default()),
        }
    }
}

impl Visibility {
    /// The outcomes of the entries before `end` are being handed out; their transaction has
    /// not committed yet. Called before they are handed out.
    pub fn released(&self, end: u64) {
        self.released_end.fetch_max(end, Ordering::AcqRel);
    }

    /// The entries before `end` are applied and committed: reads see them.
    pub fn committed(&self, end: u64) {
        self.visible.send_if_modified(|visible| {
            let grows = end > visible.end;
            visible.end = visible.end.max(end);
            grows
        });
    }

    /// The writer failed: whatever was released and not committed may never be. Waiting
    /// reads fail from now on.
    pub fn failed(&self) {
        self.visible.send_if_modified(|visible| {
            let changed = !visible.failed;
            visible.failed = true;
            changed
        });
    }

    /// Whether everything released has committed (or the writer failed).
    pub fn settled(&self) -> bool {
        let visible = *self.visible.borrow();
        visible.failed || visible.end >= self.released_end.load(Ordering::Acquire)
    }

    /// Returns once every apply released before this call has committed.
    ///
    /// # Errors
    /// `Stopped` when the writer failed before that.
    pub async fn wait(&self) -> Result<(), NodeError> {
        let wanted = self.released_end.load(Ordering::Acquire);
        let mut visible = self.visible.subscribe();
        let seen = visible
            .wait_for(|visible| visible.end >= wanted || visible.failed)
            .await
            .map(|visible| *visible);
        match seen {
            Ok(visible) if visible.end >= wanted => Ok(()),
            Ok(_) | Err(_) => Err(NodeError::Stopped(
                "a write this node answered may not have reached its database".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_waits_for_what_was_released_before_it_and_no_more() {
        let visibility = Arc::new(Visibility::default());
        // Nothing released: no wait.
        visibility.wait().await.expect("nothing to wait for");
        visibility.committed(3);
        visibility.released(5);
        let waiting = tokio::spawn({
            let visibility = Arc::clone(&visibility);
            async move { visibility.wait().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "returned before entry 4 committed");
        // Released after the read began: not waited for.
        visibility.released(9);
        visibility.committed(5);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the read goes on once entry 4 committed")
            .expect("the task ran")
            .expect("no failure");
        // The committed end never moves back; a read that starts now waits for entry 8.
        visibility.committed(2);
        assert!(
            !visibility.settled(),
            "entries 5 to 8 were released, not committed"
        );
        visibility.committed(9);
        assert!(visibility.settled());
        visibility
            .wait()
            .await
            .expect("everything released is committed");
    }

    #[tokio::test]
    async fn a_failed_writer_fails_the_reads_that_wait() {
        let visibility = Arc::new(Visibility::default());
        visibility.released(2);
        let waiting = tokio::spawn({
            let visibility = Arc::clone(&visibility);
            async move { visibility.wait().await }
        });
        visibility.failed();
        let outcome = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the failure wakes the read")
            .expect("the task ran");
        assert!(matches!(outcome, Err(NodeError::Stopped(_))), "{outcome:?}");
        // What committed before the failure is still readable.
        visibility.committed(2);
        visibility.wait().await.expect("entry 1 committed");
    }
}
