//! Giving memory back once the node goes quiet.
//!
//! Under load a node's SQLite connections fill their page caches (up to 2 MiB each) and the C
//! allocator keeps what was freed for reuse. Neither matters while the node is busy, but an
//! idle node should not sit on it. [`run`] watches a count of the node's activity (writes run
//! plus reads started) and, once it has stayed the same for a whole [`CHECK_EVERY`] period
//! after changing, calls its release function once; then it waits for activity again. The
//! release comes between one and two periods after the last activity, and costs a busy node
//! nothing but one atomic load per period.

use std::future::Future;
use std::time::Duration;

/// How often the activity count is looked at.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Watches `activity` and calls `release` once each time the node goes quiet (including once
/// after start-up). Runs until the task is aborted.
pub async fn run<A, R, F>(activity: A, release: R)
where
    A: Fn() -> u64,
    R: Fn() -> F,
    F: Future<Output = ()>,
{
    let mut seen = activity();
    let mut released = false;
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let now = activity();
        if now != seen {
            seen = now;
            released = false;
        } else if !released {
            release().await;
            released = true;
        }
    }
}

/// Hands the C allocator's free memory back to the system (glibc's `malloc_trim`): freed
/// blocks it keeps for reuse, in every arena. Elsewhere a no-op.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `malloc_trim` takes a plain integer, touches only the allocator's own free
    // lists (under the allocator's locks) and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn releases_once_per_quiet_spell_and_never_while_busy() {
        let activity = Arc::new(AtomicU64::new(0));
        let releases = Arc::new(AtomicU64::new(0));
        let watcher = {
            let activity = Arc::clone(&activity);
            let releases = Arc::clone(&releases);
            tokio::spawn(async move {
                run(
                    move || activity.load(Ordering::SeqCst),
                    move || {
                        let releases = Arc::clone(&releases);
                        async move {
                            releases.fetch_add(1, Ordering::SeqCst);
                        }
                    },
                )
                .await;
            })
        };
        let half = CHECK_EVERY / 2;
        // Quiet from the start: one release after start-up, then none while it stays quiet.
        tokio::time::sleep(CHECK_EVERY * 2 + half).await;
        assert_eq!(releases.load(Ordering::SeqCst), 1);
        tokio::time::sleep(CHECK_EVERY * 10).await;
        assert_eq!(releases.load(Ordering::SeqCst), 1);
        // Busy: activity in every period, no release.
        for _ in 0..10 {
            activity.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(CHECK_EVERY).await;
        }
        assert_eq!(releases.load(Ordering::SeqCst), 1);
        // Quiet again: one more release within two periods.
        tokio::time::sleep(CHECK_EVERY * 2 + half).await;
        assert_eq!(releases.load(Ordering::SeqCst), 2);
        watcher.abort();
    }
}
