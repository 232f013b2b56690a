//! The one error type of the chat core.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a command or a query was refused.
///
/// Every variant but [`ChatError::Storage`] is final: retrying the same request gives the same
/// answer. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum ChatError {
    /// A field of the request breaks a rule; the message names both (`"username: must be 1 to
    /// 32 characters"`). Fix the request.
    #[error("{field}: {rule}")]
    InvalidArgument {
        /// The request field at fault.
        field: Cow<'static, str>,
        /// The rule it breaks, in words.
        rule: String,
    },
    /// The thing to create exists already (a username taken, ignoring case).
    #[error("{field}: {value:?} is already taken")]
    AlreadyExists {
        /// The request field at fault.
        field: Cow<'static, str>,
        /// The value that is taken.
        value: String,
    },
    /// A named thing does not exist (an unknown recipient).
    #[error("{field}: no account named {value:?}")]
    NotFound {
        /// The request field at fault.
        field: Cow<'static, str>,
        /// The value that names nothing.
        value: String,
    },
    /// The session token is missing, malformed, unknown, revoked or expired. Log in again.
    #[error("{0}")]
    Unauthenticated(Cow<'static, str>),
    /// Log-in or password check failed. Deliberately says nothing about which part was wrong.
    #[error("wrong username or password")]
    WrongCredentials,
    /// An idempotency key was reused for a different kind of request or by another caller.
    #[error("idempotency_key: already used for a different request")]
    IdempotencyKeyReused,
    /// The store failed. Not the caller's fault; the command changed nothing and may be retried.
    #[error("storage error: {0}")]
    Storage(String),
}

impl ChatError {
    /// Builds an [`ChatError::InvalidArgument`].
    pub fn invalid(field: &'static str, rule: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: Cow::Borrowed(field),
            rule: rule.into(),
        }
    }

    /// Builds an [`ChatError::Unauthenticated`] with its reason.
    pub fn unauthenticated(reason: &'static str) -> Self {
        Self::Unauthenticated(Cow::Borrowed(reason))
    }

    /// Whether the same request may succeed if sent again unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Storage(_))
    }
}

/// A failure of a [`crate::ChatStore`] implementation, carried up as [`ChatError::Storage`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl From<StoreError> for ChatError {
    fn from(error: StoreError) -> Self {
        Self::Storage(error.0)
    }
}
