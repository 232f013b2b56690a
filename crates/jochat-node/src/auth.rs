//! Password hashing, session tokens, and the failed-log-in limiter.
//!
//! argon2id is deliberately slow and memory-hungry (19 MiB per hash), so it runs on [`HASHES_CONCURRENT_MAX`] dedicated threads, never on an async worker
//! nor on Tokio's blocking pool, with working memory this module manages itself
//! ([`hash_into`]): each hashing thread keeps one reservation larger than the C allocator's
//! largest dynamic mmap threshold, so it is a mapping of its own; the thread reuses it while
//! log-ins keep coming (no page faults per hash) and unmaps it after
//! [`WORKING_MEMORY_IDLE`] without work. With argon2's own 19 MiB allocation per hash, glibc
//! raises its threshold above it after the first free and keeps every later one in its
//! heaps, so a node that had served log-ins would stay large (docs/performance.md,
//! "History").

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use jochat_core::types::{Credential, SessionToken};
use tokio::sync::{OnceCell, Semaphore};

use crate::error::NodeError;

/// argon2 computations running at once at most; more wait their turn.
pub const HASHES_CONCURRENT_MAX: usize = 4;
/// Usernames with recent failed log-ins tracked at most. Past this the limiter forgets the
/// stale ones; if all are fresh it stops tracking new names (and logs it) rather than lock
/// everyone out.
pub const LOGIN_FAILURES_TRACKED_MAX: usize = 100_000;

/// How long a hashing thread keeps its working memory without a job before unmapping it.
pub const WORKING_MEMORY_IDLE: Duration = Duration::from_millis(500);

/// A job for the hashing threads.
type Job = Box<dyn FnOnce() + Send>;

/// The jobs waiting for a hashing thread, and whether the queue is closed.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a job arrives or the queue closes.
    changed: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// The hashing threads: [`HASHES_CONCURRENT_MAX`] of them take jobs from one queue. Each waits
/// for work on its own (a condition variable releases the lock while waiting), so each
/// notices on its own that it has been idle for [`WORKING_MEMORY_IDLE`]. They end when the
/// last [`Hasher`] clone is dropped (the queue closes).
struct HashThreads {
    queue: Arc<Queue>,
}

impl HashThreads {
    fn start() -> Self {
        let queue = Arc::new(Queue::default());
        for index in 0..HASHES_CONCURRENT_MAX {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || Self::work(&queue));
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a hashing thread");
            }
        }
        Self { queue }
    }

    /// One hashing thread: runs jobs until the queue closes, and lets its working memory go
    /// whenever no job came for [`WORKING_MEMORY_IDLE`].
    fn work(queue: &Queue) {
        const POISONED: &str = "the hashing queue's mutex is never held across a panic";
        let mut state = queue.state.lock().expect(POISONED);
        loop {
            if let Some(job) = state.jobs.pop_front() {
                drop(state);
                job();
                state = queue.state.lock().expect(POISONED);
                continue;
            }
            if state.closed {
                return;
            }
            let (next, waited) = queue
                .changed
                .wait_timeout(state, WORKING_MEMORY_IDLE)
                .expect(POISONED);
            state = next;
            if waited.timed_out() && state.jobs.is_empty() {
                release_working_memory();
            }
        }
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
        {
            let mut state = self
                .queue
                .state
                .lock()
                .map_err(|_| NodeError::Task("the hashing queue failed".into()))?;
            if state.closed {
                return Err(NodeError::Task("the hashing threads have stopped".into()));
            }
            state.jobs.push_back(job);
        }
        self.queue.changed.notify_one();
        result
            .await
            .map_err(|_| NodeError::Task("a hashing thread failed".into()))
    }
}

impl Drop for HashThreads {
    fn drop(&mut self) {
        if let Ok(mut state) = self.queue.state.lock() {
            state.closed = true;
        }
        self.queue.changed.notify_all();
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
        let salt = random_bytes()?;
        self.blocking(move || {
            hash_phc(credential.as_bytes(), &salt[..SALT_BYTES])
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
            .blocking(move || verify_phc(credential.as_bytes(), &stored))
            .await?;
        Ok(exists && matches)
    }
}

/// Salt bytes per hash (argon2's recommended 16).
const SALT_BYTES: usize = 16;

/// Blocks (1 KiB each) of working memory reserved per hashing thread: 33 MiB, above glibc's
/// highest dynamic mmap threshold (32 MiB on 64-bit systems), so the reservation is always a
/// mapping of its own, unmapped when dropped. Only the blocks a hash uses (19 MiB by default)
/// are ever touched.
const WORKING_MEMORY_BLOCKS: usize = 33 * 1024;

thread_local! {
    /// This thread's argon2 working memory, kept between hashes that come close together.
    static WORKING_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Computes argon2 of `password` and `salt` into `out` in this thread's working memory (see
/// the module's notes). argon2 writes every block before it reads it, so blocks left by an
/// earlier hash need no clearing.
fn hash_into(
    argon2: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    let used = params.block_count();
    WORKING_MEMORY.with_borrow_mut(|blocks| {
        let reserve = used.max(WORKING_MEMORY_BLOCKS);
        if blocks.capacity() < reserve {
            *blocks = Vec::with_capacity(reserve);
        }
        if blocks.len() < used {
            blocks.resize(used, Block::default());
        }
        argon2.hash_password_into_with_memory(password, salt, out, &mut blocks[..used])
    })
}

/// Unmaps this thread's working memory.
fn release_working_memory() {
    WORKING_MEMORY.with_borrow_mut(|blocks| *blocks = Vec::new());
}

/// The argon2id (v19, default parameters) PHC string of `password` with `salt`: the same
/// string `argon2::PasswordHasher` makes.
fn hash_phc(password: &[u8], salt: &[u8]) -> Result<String, argon2::password_hash::Error> {
    let params = Params::default();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = Salt::new(salt)?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    hash_into(&argon2, &params, password, &salt, &mut out)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(salt),
        hash: Some(Output::new(&out)?),
    };
    Ok(hash.to_string())
}

/// Whether `password` matches the argon2 PHC string `stored`, recomputed with the algorithm,
/// version and parameters `stored` names (compared in constant time by `Output`).
fn verify_phc(password: &[u8], stored: &str) -> bool {
    let Ok(hash) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::new(hash.algorithm.as_str()) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    hash_into(&argon2, &params, password, salt, &mut out).is_ok()
        && Output::new(&out).is_ok_and(|computed| computed == *expected)
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
    fn hashes_are_the_strings_argon2_itself_makes_and_checks() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let salt = [7u8; SALT_BYTES];
        let ours = hash_phc(b"secret", &salt).expect("hashes");
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        // argon2's own implementation accepts ours and makes the same string from the salt.
        let parsed = PasswordHash::new(&ours).expect("a PHC string");
        assert!(Argon2::default()
            .verify_password(b"secret", &parsed)
            .is_ok());
        let theirs = Argon2::default()
            .hash_password_with_salt(b"secret", &salt)
            .expect("hashes")
            .to_string();
        assert_eq!(ours, theirs);
        // Ours checks hashes stored by argon2's own hasher, including other parameters.
        let stored = Argon2::default()
            .hash_password(b"pw")
            .expect("hashes")
            .to_string();
        assert!(verify_phc(b"pw", &stored));
        assert!(!verify_phc(b"pW", &stored));
        let cheap = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, Some(32)).expect("valid parameters"),
        );
        let stored = cheap.hash_password(b"pw").expect("hashes").to_string();
        assert!(verify_phc(b"pw", &stored));
        assert!(!verify_phc(b"other", &stored));
        for broken in ["", "not a hash", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA"] {
            assert!(!verify_phc(b"pw", broken), "{broken:?}");
        }
    }

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
