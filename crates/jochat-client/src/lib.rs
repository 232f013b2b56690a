//! The JoChat client library: [`ChatServerClient`], one typed async method per chat operation.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let node = jochat_node::spawn_ephemeral().await?;
//! use jochat_client::ChatServerClient;
//!
//! let client = ChatServerClient::builder().servers([node.address()]).build()?;
//! client.sign_up("alice", "correct horse").await?;
//! let alice = client.log_in("alice", "correct horse").await?;
//! client.send_message(&alice.token, "alice", "note to self").await?;
//! assert_eq!(client.unread_count(&alice.token).await?, 0);
//! # Ok(())
//! # }
//! ```
//!
//! Passwords never leave the client: it sends their SHA-256 ([`hash_password`]), and the
//! server stores only an argon2id hash of that. Errors are one enum, [`ClientError`], whose
//! [`ClientError::is_retryable`] tells final answers from passing failures.
//!
//! # Layout
//!
//! - `client`: [`ChatServerClient`], its builder, and one typed method per operation.
//! - `routing`: the one call path every method takes: the servers known and the leader
//!   believed, NOT-LEADER hints, moving on from a failed server, deadline, backoff with
//!   jitter, learning the members.
//! - `tls`: how servers are called: plaintext, or TLS with a CA and an optional client
//!   certificate (`ca_certificate`, `client_identity` on the builder).
//! - `admin`: membership changes (`add_member`, `remove_member`) through the leader.
//! - `subscribe`: [`MessageStream`], the live stream that resumes on another server.
//! - `types`: the values methods take and return ([`SessionToken`], [`Message`], queries...).
//! - `error`: [`ClientError`], and the mapping from gRPC statuses and transport failures.
//! - this file: [`hash_password`] and the idempotency keys every write carries.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod backup;
mod client;
mod error;
#[cfg(test)]
mod mock;
mod routing;
mod subscribe;
mod tls;
mod types;

use sha2::{Digest, Sha256};

pub use backup::{Backup, BACKUP_CHUNK_TIMEOUT};
pub use client::{
    ChatServerClient, ChatServerClientBuilder, BACKOFF_INITIAL, BACKOFF_MAX,
    CONNECT_TIMEOUT_DEFAULT, DEADLINE_DEFAULT, REPLY_BYTES_MAX,
};
pub use error::ClientError;
pub use subscribe::MessageStream;
/// The gRPC status code [`ClientError::code`] reports, re-exported so callers need not
/// depend on `tonic` themselves.
pub use tonic::Code;
pub use types::{
    Account, AccountPage, AccountQuery, AwayMessages, ClusterInfo, InboxQuery, LoggedIn, Member,
    MemberRole, Message, MessagePage, MessageStatus, ReadConsistency, SentMessage, SessionToken,
    SignedUp,
};

/// The lowercase hex SHA-256 of a password's UTF-8 bytes: what the client sends instead of
/// the password.
///
/// [`ChatServerClient::sign_up`], [`ChatServerClient::log_in`] and
/// [`ChatServerClient::delete_account`] take the plain password and send this digest, except
/// that an empty password is sent as the empty string: the server is the one place input is
/// validated, so it is the server that answers with its rule (`INVALID_ARGUMENT`), exactly as
/// for any other bad input.
///
/// ```
/// assert_eq!(
///     jochat_client::hash_password("abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub fn hash_password(password: &str) -> String {
    hex::encode(Sha256::digest(password.as_bytes()))
}

/// A fresh idempotency key: 32 hex characters, the first 12 the milliseconds since the Unix
/// epoch and the other 20 random (80 bits). Keys made later sort later, so the server's key
/// index grows at its end instead of at a random page per write. If the random source fails
/// the write goes without a key (it is then not protected against a double apply on retry).
fn idempotency_key() -> String {
    let mut random = [0u8; 10];
    match getrandom::fill(&mut random) {
        Ok(()) => {
            let millis = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis());
            // 12 hex digits hold milliseconds until the year 10889.
            format!("{:012x}{}", millis & 0xffff_ffff_ffff, hex::encode(random))
        }
        Err(error) => {
            tracing::warn!(%error, "no randomness for an idempotency key; the write goes without");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_password_is_lowercase_hex_sha256() {
        assert_eq!(
            hash_password("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hash_password(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn idempotency_keys_are_fresh_hex() {
        let (a, b) = (idempotency_key(), idempotency_key());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        assert_ne!(a, b);
        // Time first: a key made later sorts after one made now.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = idempotency_key();
        assert!(later > a && later > b, "{later} sorts after {a} and {b}");
    }
}
