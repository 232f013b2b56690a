//! Every bound the chat core enforces, in one place.
//!
//! Each limit is named after what it bounds, with the unit last. What happens at the limit is
//! written beside it; the relations between limits are checked when the crate compiles (bottom of this file).

/// Shortest username, in characters.
pub const USERNAME_CHARS_MIN: usize = 1;
/// Longest username, in characters. Longer names are refused with `INVALID_ARGUMENT`.
pub const USERNAME_CHARS_MAX: usize = 32;
/// Longest password credential the server accepts, in bytes (the client library sends a
/// 64-character SHA-256 hex digest; the prototype's clients may send more).
pub const PASSWORD_BYTES_MAX: usize = 256;
/// Default longest message content, in bytes of UTF-8; a node may be configured lower or higher
/// up to [`CONTENT_BYTES_LIMIT`].
pub const CONTENT_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// The highest content limit a node may be configured with.
pub const CONTENT_BYTES_LIMIT: usize = 1024 * 1024;
/// Longest account search pattern, in characters.
pub const PATTERN_CHARS_MAX: usize = 64;
/// Largest page a listing returns; a larger `limit` is refused.
pub const PAGE_LIMIT_MAX: u32 = 1000;
/// Page size used when a request leaves `limit` at zero.
pub const PAGE_LIMIT_DEFAULT: u32 = 50;
/// Largest offset a listing accepts; a larger `offset` is refused rather than scanned.
pub const PAGE_OFFSET_MAX: u64 = 1_000_000_000;
/// Most away messages one fetch returns; a larger `limit` is refused.
pub const FETCH_LIMIT_MAX: u32 = 1000;
/// Away messages returned when a fetch leaves `limit` at zero.
pub const FETCH_LIMIT_DEFAULT: u32 = 100;
/// Most message ids one delete request may name; more are refused.
pub const DELETE_IDS_MAX: usize = 1000;
/// Total content bytes one reply carries at most: a page or a fetch stops early (with at least
/// one message) rather than pass it, so that replies stay well under gRPC frame limits.
pub const REPLY_CONTENT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest idempotency key, in characters.
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 64;
/// How long a remembered write outcome is kept for retries, in milliseconds (one day).
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// Most remembered write outcomes; the oldest are forgotten first past this.
pub const IDEMPOTENCY_ENTRIES_MAX: u64 = 100_000;
/// How many of the oldest remembered outcomes are forgotten at once when
/// [`IDEMPOTENCY_ENTRIES_MAX`] is reached. Keys are random, so forgetting one outcome per
/// write rewrote one random page of the key index per write; forgetting a thousand at once
/// rewrites each page once per thousand writes.
pub const IDEMPOTENCY_FORGET_CHUNK: u64 = 1_000;
/// How long past [`IDEMPOTENCY_TTL_MS`] an outcome may stay, in milliseconds: expired
/// outcomes are forgotten together once the oldest is this much older than its time, not one
/// per write.
pub const IDEMPOTENCY_FORGET_SLACK_MS: i64 = 60 * 1000;
/// Length of a session token: 32 random bytes as lowercase hex (256 bits).
pub const SESSION_TOKEN_HEX_CHARS: usize = 64;

// The relations between the limits, checked when the crate compiles.
const _: () = {
    assert!(USERNAME_CHARS_MIN <= USERNAME_CHARS_MAX);
    assert!(CONTENT_BYTES_MAX_DEFAULT <= CONTENT_BYTES_LIMIT);
    // A single message must always fit in one reply, or fetching could not make progress.
    assert!(CONTENT_BYTES_LIMIT <= REPLY_CONTENT_BYTES_MAX);
    assert!(PAGE_LIMIT_DEFAULT <= PAGE_LIMIT_MAX);
    assert!(FETCH_LIMIT_DEFAULT <= FETCH_LIMIT_MAX);
    assert!(
        SESSION_TOKEN_HEX_CHARS * 4 >= 128,
        "tokens carry at least 128 random bits"
    );
};
