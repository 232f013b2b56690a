//! [`ClientError`]: the one error type of the client library.

use std::time::Duration;

use thiserror::Error;
use tonic::{Code, Status};

/// Why a call failed. [`ClientError::is_retryable`] tells a final answer (bad input, wrong
/// password, not found: retrying changes nothing) from a passing failure (no server reachable).
///
/// Server-sent variants carry the server's message unchanged; it names the field and the rule,
/// for example `username: must be 1 to 32 characters, got 0`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientError {
    /// A request field breaks a rule. Final: fix the input.
    #[error("{0}")]
    InvalidArgument(String),
    /// The thing to create exists already (a username taken). Final.
    #[error("{0}")]
    AlreadyExists(String),
    /// A named thing does not exist (an unknown recipient). Final.
    #[error("{0}")]
    NotFound(String),
    /// The session is missing, malformed, revoked or expired, or the password was wrong.
    /// Final: log in again.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this. Final.
    #[error("{0}")]
    PermissionDenied(String),
    /// Too many attempts (failed log-ins). Final for now: wait before trying again.
    #[error("{0}")]
    RateLimited(String),
    /// The request conflicts with the server's state (an idempotency key reused for another
    /// request). Final.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No server could take the call (down, unreachable, shutting down). Retryable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call did not finish within its deadline (retries included).
    #[error("{operation}: no answer within {deadline:?}")]
    DeadlineExceeded {
        /// The operation that timed out.
        operation: &'static str,
        /// The deadline it had.
        deadline: Duration,
    },
    /// Any other status from the server.
    #[error("{message} ({code:?})")]
    Server {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// A server address given to the builder is not usable.
    #[error("server address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server's reply lacks something the protocol promises.
    #[error("invalid response: {0}")]
    InvalidResponse(String),
}

impl ClientError {
    /// Whether the same call may succeed if made again. Only availability failures are; the
    /// client itself already retried those until the deadline.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// The gRPC status code behind this error, if it came from (or stands for) a status.
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::NotFound(_) => Code::NotFound,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::RateLimited(_) => Code::ResourceExhausted,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Self::Server { code, .. } => *code,
            Self::InvalidAddress { .. } | Self::InvalidResponse(_) => return None,
        })
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => Self::InvalidArgument(message),
            Code::AlreadyExists => Self::AlreadyExists(message),
            Code::NotFound => Self::NotFound(message),
            Code::Unauthenticated => Self::Unauthenticated(message),
            Code::PermissionDenied => Self::PermissionDenied(message),
            Code::ResourceExhausted => Self::RateLimited(message),
            Code::FailedPrecondition => Self::FailedPrecondition(message),
            Code::Unavailable => Self::Unavailable(message),
            code => Self::Server { code, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_variants_and_only_unavailability_is_retried() {
        let error = ClientError::from(Status::invalid_argument("username: must not be empty"));
        assert_eq!(
            error,
            ClientError::InvalidArgument("username: must not be empty".into())
        );
        assert_eq!(error.to_string(), "username: must not be empty");
        assert_eq!(error.code(), Some(Code::InvalidArgument));
        assert!(!error.is_retryable());
        assert!(ClientError::from(Status::unavailable("down")).is_retryable());
        assert!(
            !ClientError::from(Status::unauthenticated("wrong username or password"))
                .is_retryable()
        );
        let other = ClientError::from(Status::out_of_range("too large"));
        assert_eq!(other.code(), Some(Code::OutOfRange));
        assert!(!other.is_retryable());
    }
}
