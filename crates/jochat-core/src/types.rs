//! Validated values. Each constructor checks one field of a request and, on failure, returns
//! [`ChatError::InvalidArgument`] naming that field and the rule it breaks.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ChatError;
use crate::limits::*;

/// A user's id: positive, assigned by the state machine, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub i64);

/// A message's id: positive, assigned by the state machine in commit order, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub i64);

impl MessageId {
    /// Checks an id sent by a client: it must be positive.
    ///
    /// # Errors
    /// `InvalidArgument` on `field` when `raw` is zero or negative.
    pub fn parse(field: &'static str, raw: i64) -> Result<Self, ChatError> {
        if raw <= 0 {
            return Err(ChatError::invalid(
                field,
                format!("ids must be positive, got {raw}"),
            ));
        }
        Ok(Self(raw))
    }
}

/// A username: 1 to 32 characters, each an ASCII letter, digit, `_`, `-` or `.`.
///
/// Usernames are unique ignoring case; the value keeps the case it was given with.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    /// Checks `raw` as the request field `username`.
    ///
    /// # Errors
    /// `InvalidArgument` naming `username` and the broken rule.
    pub fn new(raw: &str) -> Result<Self, ChatError> {
        Self::parse("username", raw)
    }

    /// Checks `raw` as the request field `field` (for example `recipient`).
    ///
    /// # Errors
    /// `InvalidArgument` naming `field` and the broken rule.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ChatError> {
        let chars = raw.chars().count();
        if !(USERNAME_CHARS_MIN..=USERNAME_CHARS_MAX).contains(&chars) {
            return Err(ChatError::invalid(
                field,
                format!(
                    "must be {USERNAME_CHARS_MIN} to {USERNAME_CHARS_MAX} characters, got {chars}"
                ),
            ));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(ChatError::invalid(
                field,
                format!("may contain only letters, digits, '_', '-' and '.', found {bad:?}"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The name as given at sign-up.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name folded to lower case, the key under which names are unique.
    pub fn folded(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The password credential a client sends: 1 to 256 bytes. The client library sends the
/// SHA-256 hex digest of the password; the server only ever stores an argon2id hash of this.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(String);

impl Credential {
    /// Checks `raw` as the request field `password`.
    ///
    /// # Errors
    /// `InvalidArgument` on `password` when empty or longer than 256 bytes.
    pub fn new(raw: &str) -> Result<Self, ChatError> {
        if raw.is_empty() {
            return Err(ChatError::invalid("password", "must not be empty"));
        }
        if raw.len() > PASSWORD_BYTES_MAX {
            return Err(ChatError::invalid(
                "password",
                format!(
                    "must be at most {PASSWORD_BYTES_MAX} bytes, got {}",
                    raw.len()
                ),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The credential JoChat's own clients would send for a password as the prototype's
    /// clients sent it. The prototype's client sent the SHA-256 hex digest of the password,
    /// which is what JoChat's client library sends too: it is kept (in lower case). Its test
    /// scripts sent the password as plain text: that is digested, so the account logs in
    /// through `jochat.v1`, the CLI and the web page with the same password. (A plain
    /// password that is itself 64 hex digits is taken for a digest.)
    ///
    /// # Errors
    /// `InvalidArgument` on `password` when empty.
    pub fn from_prototype(raw: &str) -> Result<Self, ChatError> {
        if raw.is_empty() {
            return Err(ChatError::invalid("password", "must not be empty"));
        }
        if is_sha256_hex(raw) {
            return Ok(Self(raw.to_ascii_lowercase()));
        }
        Ok(Self(hex::encode(Sha256::digest(raw.as_bytes()))))
    }

    /// The bytes to hash or verify.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Whether `raw` has the form of a SHA-256 hex digest: 64 hex digits, in either case.
pub fn is_sha256_hex(raw: &str) -> bool {
    raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit())
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

/// Message content: 1 byte up to the node's configured limit of UTF-8 text.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Content(String);

impl Content {
    /// Checks `raw` as the request field `content` against a limit of `bytes_max`.
    ///
    /// # Errors
    /// `InvalidArgument` on `content` when empty or longer than `bytes_max` bytes.
    pub fn new(raw: String, bytes_max: usize) -> Result<Self, ChatError> {
        if raw.is_empty() {
            return Err(ChatError::invalid("content", "must not be empty"));
        }
        if raw.len() > bytes_max {
            return Err(ChatError::invalid(
                "content",
                format!("must be at most {bytes_max} bytes, got {}", raw.len()),
            ));
        }
        Ok(Self(raw))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, consumed.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Content({} bytes)", self.0.len())
    }
}

/// A page of a listing: how many to skip and how many to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Items to skip, at most [`PAGE_OFFSET_MAX`].
    pub offset: u64,
    /// Items to return, 1 to [`PAGE_LIMIT_MAX`].
    pub limit: u32,
}

impl Page {
    /// Checks the request fields `offset` and `limit`; a zero `limit` means
    /// [`PAGE_LIMIT_DEFAULT`].
    ///
    /// # Errors
    /// `InvalidArgument` on `offset` or `limit` when negative or too large.
    pub fn new(offset: i64, limit: i64) -> Result<Self, ChatError> {
        if offset < 0 || offset as u64 > PAGE_OFFSET_MAX {
            return Err(ChatError::invalid(
                "offset",
                format!("must be between 0 and {PAGE_OFFSET_MAX}, got {offset}"),
            ));
        }
        let limit = match limit {
            0 => PAGE_LIMIT_DEFAULT,
            1..=0xFFFF_FFFF if limit as u64 <= u64::from(PAGE_LIMIT_MAX) => limit as u32,
            _ => {
                return Err(ChatError::invalid(
                    "limit",
                    format!("must be between 1 and {PAGE_LIMIT_MAX} (0 for {PAGE_LIMIT_DEFAULT}), got {limit}"),
                ))
            }
        };
        Ok(Self {
            offset: offset as u64,
            limit,
        })
    }
}

/// How many away messages one fetch may return: 1 to [`FETCH_LIMIT_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FetchLimit(u32);

impl FetchLimit {
    /// Checks the request field `limit`; zero means [`FETCH_LIMIT_DEFAULT`].
    ///
    /// # Errors
    /// `InvalidArgument` on `limit` when negative or above the maximum.
    pub fn new(limit: i64) -> Result<Self, ChatError> {
        match limit {
            0 => Ok(Self(FETCH_LIMIT_DEFAULT)),
            1.. if limit <= i64::from(FETCH_LIMIT_MAX) => Ok(Self(limit as u32)),
            _ => Err(ChatError::invalid(
                "limit",
                format!("must be between 1 and {FETCH_LIMIT_MAX} (0 for {FETCH_LIMIT_DEFAULT}), got {limit}"),
            )),
        }
    }

    /// The number of messages.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// The ids named by one delete request: 1 to [`DELETE_IDS_MAX`] positive ids, duplicates
/// removed, in ascending order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageIds(Vec<MessageId>);

impl MessageIds {
    /// Checks the request field `ids`.
    ///
    /// # Errors
    /// `InvalidArgument` on `ids` when empty, too many, or any id is not positive.
    pub fn new(raw: &[i64]) -> Result<Self, ChatError> {
        if raw.is_empty() {
            return Err(ChatError::invalid("ids", "must name at least one message"));
        }
        if raw.len() > DELETE_IDS_MAX {
            return Err(ChatError::invalid(
                "ids",
                format!("at most {DELETE_IDS_MAX} per request, got {}", raw.len()),
            ));
        }
        let mut ids = raw
            .iter()
            .map(|&id| MessageId::parse("ids", id))
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        ids.dedup();
        Ok(Self(ids))
    }

    /// The ids, ascending, without duplicates.
    pub fn as_slice(&self) -> &[MessageId] {
        &self.0
    }
}

/// A secret session token: 32 random bytes as 64 lowercase hex characters. The server keeps
/// only its [`TokenDigest`].
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    /// Builds a token from 32 bytes of randomness chosen by the caller.
    pub fn from_random_bytes(bytes: [u8; SESSION_TOKEN_HEX_CHARS / 2]) -> Self {
        Self(hex::encode(bytes))
    }

    /// Checks a token sent by a client.
    ///
    /// # Errors
    /// `Unauthenticated` when it is not 64 lowercase hex characters.
    pub fn parse(raw: &str) -> Result<Self, ChatError> {
        if raw.len() != SESSION_TOKEN_HEX_CHARS
            || !raw
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ChatError::unauthenticated("session token is malformed"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The token text, to hand to the client once.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SHA-256 digest under which the session is stored.
    pub fn digest(&self) -> TokenDigest {
        TokenDigest(hex::encode(Sha256::digest(self.0.as_bytes())))
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// The SHA-256 hex digest of a [`SessionToken`]: what the store keeps and commands carry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenDigest(String);

impl TokenDigest {
    /// The digest as hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Rebuilds a digest read back from storage.
    pub fn from_stored(hex: String) -> Self {
        Self(hex)
    }
}

/// A client-chosen key that makes a write exactly-once: 1 to 64 characters of ASCII letters,
/// digits, `_`, `-`, `.` and `:`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks the request field `idempotency_key`; an empty value means "no key".
    ///
    /// # Errors
    /// `InvalidArgument` on `idempotency_key` when too long or with other characters.
    pub fn optional(raw: &str) -> Result<Option<Self>, ChatError> {
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.len() > IDEMPOTENCY_KEY_CHARS_MAX {
            return Err(ChatError::invalid(
                "idempotency_key",
                format!(
                    "must be at most {IDEMPOTENCY_KEY_CHARS_MAX} characters, got {}",
                    raw.len()
                ),
            ));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        {
            return Err(ChatError::invalid(
                "idempotency_key",
                "may contain only letters, digits, '_', '-', '.' and ':'",
            ));
        }
        Ok(Some(Self(raw.to_owned())))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `host` is a DNS name: labels of letters, digits and `-` (not at either end of a
/// label), 1 to 63 characters each, joined by dots, at most 253 characters in all.
pub fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn prototype_credentials_become_what_jochat_clients_send() {
        let digest = hex::encode(Sha256::digest(b"hunter2"));
        // The prototype's client sent the digest: kept, lower-cased.
        let from_client = Credential::from_prototype(&digest.to_ascii_uppercase()).unwrap();
        assert_eq!(from_client.as_bytes(), digest.as_bytes());
        // Its scripts sent the password itself: digested.
        let from_script = Credential::from_prototype("hunter2").unwrap();
        assert_eq!(from_script.as_bytes(), digest.as_bytes());
        // Longer than a plain credential may be, still one digest.
        let long = "p".repeat(1000);
        assert_eq!(
            Credential::from_prototype(&long).unwrap().as_bytes().len(),
            64
        );
        assert_eq!(
            Credential::from_prototype("").unwrap_err(),
            ChatError::invalid("password", "must not be empty")
        );
        assert!(!is_sha256_hex(&digest[1..]));
        assert!(!is_sha256_hex(&format!("{}g", &digest[1..])));
    }

    #[test]
    fn host_names_are_dns_labels_joined_by_dots() {
        for good in [
            "localhost",
            "node-1",
            "chat1.example.internal",
            "a.b.c",
            "x1",
        ] {
            assert!(is_host_name(good), "{good}");
        }
        for bad in [
            "",
            "not a host",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "é.example",
            &"a".repeat(64),
        ] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }

    use super::*;

    fn rule_of(error: ChatError) -> String {
        error.to_string()
    }

    #[test]
    fn usernames_follow_the_rules() {
        assert!(Username::new("Alice_1.x-y").is_ok());
        assert_eq!(
            rule_of(Username::new("").unwrap_err()),
            "username: must be 1 to 32 characters, got 0"
        );
        assert!(rule_of(Username::new(&"a".repeat(33)).unwrap_err()).contains("got 33"));
        assert_eq!(
            rule_of(Username::parse("recipient", "bob smith").unwrap_err()),
            "recipient: may contain only letters, digits, '_', '-' and '.', found ' '"
        );
        assert!(Username::new("é").is_err());
        assert_eq!(Username::new("AbC").unwrap().folded(), "abc");
    }

    #[test]
    fn pages_reject_negative_and_huge_values() {
        assert_eq!(Page::new(0, 0).unwrap().limit, PAGE_LIMIT_DEFAULT);
        assert!(rule_of(Page::new(-1, 10).unwrap_err()).starts_with("offset: "));
        assert!(rule_of(Page::new(i64::MAX, 10).unwrap_err()).starts_with("offset: "));
        assert!(rule_of(Page::new(0, -5).unwrap_err()).starts_with("limit: "));
        assert!(rule_of(Page::new(0, 1001).unwrap_err()).starts_with("limit: "));
        assert!(rule_of(Page::new(0, i64::MAX).unwrap_err()).starts_with("limit: "));
        assert_eq!(
            Page::new(7, 1000).unwrap(),
            Page {
                offset: 7,
                limit: 1000
            }
        );
    }

    #[test]
    fn message_ids_are_bounded_and_positive() {
        assert!(MessageIds::new(&[]).is_err());
        assert!(MessageIds::new(&[1, 0]).is_err());
        assert!(MessageIds::new(&vec![1; 1001]).is_err());
        assert_eq!(
            MessageIds::new(&[3, 1, 3]).unwrap().as_slice(),
            &[MessageId(1), MessageId(3)]
        );
    }

    #[test]
    fn tokens_are_hex_and_stored_as_digests() {
        let token = SessionToken::from_random_bytes([7; 32]);
        assert_eq!(token.as_str().len(), 64);
        assert_eq!(SessionToken::parse(token.as_str()).unwrap(), token);
        assert_ne!(token.digest().as_str(), token.as_str());
        assert!(SessionToken::parse("garbage").is_err());
        assert!(SessionToken::parse(&"G".repeat(64)).is_err());
        assert!(!format!("{token:?}").contains(token.as_str()));
    }

    #[test]
    fn content_and_credentials_are_bounded() {
        assert!(Content::new(String::new(), 10).is_err());
        assert!(Content::new("x".repeat(11), 10).is_err());
        assert!(Content::new("x".repeat(10), 10).is_ok());
        assert_eq!(
            rule_of(Credential::new("").unwrap_err()),
            "password: must not be empty"
        );
        assert!(Credential::new(&"p".repeat(257)).is_err());
    }

    #[test]
    fn idempotency_keys() {
        assert_eq!(IdempotencyKey::optional("").unwrap(), None);
        assert!(IdempotencyKey::optional("abc-123:x").unwrap().is_some());
        assert!(IdempotencyKey::optional("a b").is_err());
        assert!(IdempotencyKey::optional(&"k".repeat(65)).is_err());
    }
}
