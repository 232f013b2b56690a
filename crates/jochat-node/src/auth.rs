//! Password hashing, session tokens, and the failed-log-in limiter.
//!
//! argon2id is deliberately slow and memory-hungry (19 MiB, a few tens of milliseconds per
//! hash), so it runs on [`HASHES_CONCURRENT_MAX`] dedicated threads, never on an async worker
//! nor on Tokio's blocking pool. Dedicated threads bound the memory as well as the time: the
//! allocator keeps each thread's freed 19 MiB for that thread's next hash, so a few long-lived
//! threads hold a few blocks, where the blocking pool's many short-lived threads each left one
//! behind (measured: about 1 GiB resident after ten seconds of log-ins from eight clients).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use jochat_core::types::{Credential, SessionToken};
use tokio::sync::{OnceCell, Semaphore};

use crate::error::NodeError;

/// argon2 computations running at once at most; more wait their turn.
pub const HASHES_CONCURRENT_MAX: usize = 4;
/// Usernames with recent failed log-ins tracked at most. Past this the limiter forgets the
/// stale ones; if all are fresh it stops tracking new names (and logs it) rather than lock
/// everyone out.
pub const LOGIN_FAILURES_TRACKED_MAX: usize = 100_000;

/// A job for the hashing threads.
type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads: [`HASHES_CONCURRENT_MAX`] of them take jobs from one queue. They end
/// when the last [`Hasher`] clone is dropped (the queue closes).
struct HashThreads {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl HashThreads {
    fn start() -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..HASHES_CONCURRENT_MAX {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || loop {
                    let job = {
                        let queue = queue
                            .lock()
                            .expect("the job queue's mutex is never held across a panic");
                        queue.recv()
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a hashing thread");
            }
        }
        Self { jobs }
    }

    /// Runs `work` on a hashing thread and waits for its result.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        self.jobs
            .send(job)
            .map_err(|_| NodeError::Task("the hashing threads have stopped".into()))?;
        result
            .await
            .map_err(|_| NodeError::Task("a hashing thread failed".into()))
    }
}

/// Hashes and verifies credentials with argon2id off the async executor.
#[derive(Clone)]
pub struct Hasher {
    /// Admission: at most one job per thread is queued, so a flood of log-ins waits here,
    /// where a caller that gives up (a cancelled request) leaves nothing behind to compute.
    permits: Arc<Semaphore>,
    threads: Arc<HashThreads>,
    /// A hash of a credential no one knows, verified when the username does not exist so that
    /// "no such user" takes as long as "wrong password".
    decoy: Arc<OnceCell<String>>,
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    /// A hasher with [`HASHES_CONCURRENT_MAX`] permits.
    pub fn new() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(HASHES_CONCURRENT_MAX)),
            threads: Arc::new(HashThreads::start()),
            decoy: Arc::new(OnceCell::new()),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        self.threads.run(work).await
    }

    /// The argon2id PHC string of `credential`, with a fresh random salt.
    ///
    /// # Errors
    /// `Hashing` if argon2 or the random source fails.
    pub async fn hash(&self, credential: &Credential) -> Result<String, NodeError> {
        let credential = credential.clone();
        self.blocking(move || {
            Argon2::default()
                .hash_password(credential.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| NodeError::Hashing(e.to_string()))
        })
        .await?
    }

    /// Whether `credential` matches `stored` (an argon2id PHC string). With `None` (no such
    /// user) it does the same work against a decoy and answers false.
    ///
    /// # Errors
    /// `Hashing` if the decoy cannot be made.
    pub async fn verify(
        &self,
        credential: &Credential,
        stored: Option<String>,
    ) -> Result<bool, NodeError> {
        let exists = stored.is_some();
        let stored = match stored {
            Some(stored) => stored,
            None => self
                .decoy
                .get_or_try_init(|| async {
                    let decoy = SessionToken::from_random_bytes(random_bytes()?);
                    self.hash(&Credential::new(decoy.as_str())?).await
                })
                .await?
                .clone(),
        };
        let credential = credential.clone();
        let matches = self
            .blocking(move || {
                Argon2::default()
                    .verify_password(credential.as_bytes(), stored.as_str())
                    .is_ok()
            })
            .await?;
        Ok(exists && matches)
    }
}

/// 32 bytes from the operating system's random source.
///
/// # Errors
/// `Hashing` if the random source fails.
pub fn random_bytes() -> Result<[u8; 32], NodeError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| NodeError::Hashing(format!("random source: {e}")))?;
    Ok(bytes)
}

/// A fresh session token with 256 random bits.
///
/// # Errors
/// `Hashing` if the random source fails.
pub fn new_session_token() -> Result<SessionToken, NodeError> {
    Ok(SessionToken::from_random_bytes(random_bytes()?))
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first_at: Instant,
}

/// Refuses log-ins for a username after `failures_max` failures within `lockout`, until the
/// window that began with the first failure has passed. Local to the node: a failed log-in
/// changes no replicated state.
pub struct LoginLimiter {
    failures_max: u32,
    lockout: Duration,
    /// Folded username → recent failures. A std mutex: held briefly, never across an await.
    failures: Mutex<HashMap<String, Failures>>,
}

impl LoginLimiter {
    /// A limiter allowing `failures_max` failures per `lockout` window.
    pub fn new(failures_max: u32, lockout: Duration) -> Self {
        Self {
            failures_max,
            lockout,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        self.failures
            .lock()
            .expect("the limiter's mutex is never held across a panic")
    }

    /// Whether a log-in for `name` may be tried now.
    ///
    /// # Errors
    /// `RateLimited` with the seconds left while the name is locked out.
    pub fn check(&self, name: &str) -> Result<(), NodeError> {
        let mut table = self.table();
        let Some(entry) = table.get(name).copied() else {
            return Ok(());
        };
        let elapsed = entry.first_at.elapsed();
        if elapsed >= self.lockout {
            table.remove(name);
            return Ok(());
        }
        if entry.count >= self.failures_max {
            let left = self.lockout - elapsed;
            return Err(NodeError::RateLimited {
                retry_after_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
            });
        }
        Ok(())
    }

    /// Counts a failed log-in for `name`.
    pub fn record_failure(&self, name: &str) {
        let mut table = self.table();
        if table.len() >= LOGIN_FAILURES_TRACKED_MAX && !table.contains_key(name) {
            let lockout = self.lockout;
            table.retain(|_, f| f.first_at.elapsed() < lockout);
            if table.len() >= LOGIN_FAILURES_TRACKED_MAX {
                tracing::warn!("login limiter full: not tracking failures for a new username");
                return;
            }
        }
        let now = Instant::now();
        let entry = table.entry(name.to_owned()).or_insert(Failures {
            count: 0,
            first_at: now,
        });
        if entry.first_at.elapsed() >= self.lockout {
            *entry = Failures {
                count: 0,
                first_at: now,
            };
        }
        entry.count += 1;
    }

    /// Forgets the failures of `name` after a successful log-in.
    pub fn record_success(&self, name: &str) {
        self.table().remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_locks_a_name_after_too_many_failures() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            limiter.check("alice").expect("not locked yet");
            limiter.record_failure("alice");
        }
        assert!(matches!(
            limiter.check("alice"),
            Err(NodeError::RateLimited {
                retry_after_secs: 1..=60
            })
        ));
        limiter.check("bob").expect("other names are not affected");
        limiter.record_success("alice");
        limiter
            .check("alice")
            .expect("a success clears the failures");
    }

    #[test]
    fn the_lockout_ends() {
        let limiter = LoginLimiter::new(1, Duration::ZERO);
        limiter.record_failure("alice");
        limiter
            .check("alice")
            .expect("a zero lockout has already ended");
    }

    #[tokio::test]
    async fn hashes_verify_and_decoys_never_match() {
        let hasher = Hasher::new();
        let credential = Credential::new("secret").unwrap();
        let hash = hasher.hash(&credential).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(hasher
            .verify(&credential, Some(hash.clone()))
            .await
            .unwrap());
        assert!(!hasher
            .verify(&Credential::new("wrong").unwrap(), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!hasher.verify(&credential, None).await.unwrap());
        // Two hashes of one credential differ: each has its own salt.
        assert_ne!(hasher.hash(&credential).await.unwrap(), hash);
    }
}
