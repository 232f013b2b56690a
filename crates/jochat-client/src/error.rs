//! [`ClientError`]: the one error type of the client library, and how a caller should react
//! to each variant.

use std::error::Error as _;
use std::time::Duration;

use tonic::{Code, Status};

/// The prefix of the status that tonic's generated client returns when the channel could not
/// become ready (its connection task is gone). It is a local transport failure, not an answer
/// from a server, but it carries no error source to recognise it by.
const NOT_READY_PREFIX: &str = "Service was not ready";

/// An error from a [`ChatServerClient`](crate::ChatServerClient) call.
///
/// The variants that come from the server carry its message verbatim; the server's messages
/// already name the field and the rule (for example `username: must be 1 to 32 characters`),
/// so `Display` shows them as they are.
///
/// Only [`ClientError::Unavailable`] and [`ClientError::NoSpace`] are retryable (see
/// [`ClientError::is_retryable`]), and the client has already retried them with backoff until
/// the deadline before returning one; every other variant is final for this request:
/// retrying the same request gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request broke a rule (`INVALID_ARGUMENT`): fix the input, do not retry.
    #[error("{0}")]
    InvalidArgument(String),
    /// The thing being created exists already (`ALREADY_EXISTS`), for example a username
    /// taken ignoring case. Final.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request names something that does not exist (`NOT_FOUND`), for example an unknown
    /// recipient. Final.
    #[error("{0}")]
    NotFound(String),
    /// Wrong username or password, or the session token is missing, revoked or expired
    /// (`UNAUTHENTICATED`): log in again.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this (`PERMISSION_DENIED`). Final.
    #[error("{0}")]
    PermissionDenied(String),
    /// Too many attempts (`RESOURCE_EXHAUSTED`), for example repeated failed logins: wait
    /// before trying again.
    #[error("{0}")]
    RateLimited(String),
    /// The request conflicts with the server's state (`FAILED_PRECONDITION`), for example an
    /// idempotency key reused for a different request. Final until that state changes.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No server could be reached, or the server could not serve the call now (`UNAVAILABLE`,
    /// or a transport failure such as a refused or reset connection). Retryable; the client
    /// already retried until the deadline.
    #[error("{0}")]
    Unavailable(String),
    /// The call did not finish within its deadline, retries included, and no attempt failed
    /// otherwise (when one did, that failure is returned instead: it says more). Final for this call;
    /// a write may or may not have happened, so a caller that tries again should expect, for
    /// example, `AlreadyExists` after a sign-up that did happen.
    #[error("{operation}: no answer within the deadline of {} ms", deadline.as_millis())]
    DeadlineExceeded {
        /// The operation that timed out, for example `send_message`.
        operation: &'static str,
        /// The deadline that passed.
        deadline: Duration,
    },
    /// Any other gRPC status from the server, with its code and message.
    #[error("{message} ({code:?})")]
    Server {
        /// The gRPC status code.
        code: Code,
        /// The server's message, verbatim.
        message: String,
    },
    /// A server address given to the builder cannot be used.
    #[error("invalid server address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as it was given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The leader's disk is nearly full (`RESOURCE_EXHAUSTED` "disk nearly full ..."): the
    /// cluster refuses writes until an operator makes room. Retryable: the client retries it
    /// until the call's deadline, so a short shortage is only a slower call.
    #[error("{0}")]
    NoSpace(String),
    /// A TLS setting given to the builder cannot be used (a CA certificate or client
    /// identity that is not PEM, or servers that mix `http://` and `https://`).
    #[error("invalid TLS setting: {0}")]
    InvalidTls(String),
    /// The server's reply broke the protocol, for example a required field was missing or an
    /// enum had an unknown value. Final: the server and client disagree about the API.
    #[error("invalid response from the server: {0}")]
    InvalidResponse(String),
    /// A local file could not be read or written (a backup being saved). Final.
    #[error("{0}")]
    Io(String),
}

impl ClientError {
    /// Whether trying the same request again later may succeed.
    ///
    /// True only for [`ClientError::Unavailable`] (an `UNAVAILABLE` status or a transport
    /// failure) and [`ClientError::NoSpace`] (the leader's disk is nearly full).
    /// [`ClientError::DeadlineExceeded`] is not retryable: the deadline is the caller's budget
    /// for the call, and it is spent.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::NoSpace(_))
    }

    /// The gRPC status code this error stands for, or `None` for errors found by the client
    /// itself (a bad address or an invalid response).
    #[must_use]
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::InvalidArgument(_) => Some(Code::InvalidArgument),
            Self::AlreadyExists(_) => Some(Code::AlreadyExists),
            Self::NotFound(_) => Some(Code::NotFound),
            Self::Unauthenticated(_) => Some(Code::Unauthenticated),
            Self::PermissionDenied(_) => Some(Code::PermissionDenied),
            Self::RateLimited(_) | Self::NoSpace(_) => Some(Code::ResourceExhausted),
            Self::FailedPrecondition(_) => Some(Code::FailedPrecondition),
            Self::Unavailable(_) => Some(Code::Unavailable),
            Self::DeadlineExceeded { .. } => Some(Code::DeadlineExceeded),
            Self::Server { code, .. } => Some(*code),
            Self::InvalidAddress { .. }
            | Self::InvalidTls(_)
            | Self::InvalidResponse(_)
            | Self::Io(_) => None,
        }
    }

    /// Maps a status returned by one attempt of `operation` (whose deadline is `deadline`) on
    /// `server`. A server's message is kept verbatim; a transport failure, which has no
    /// server message, is described with the server's address and the causes tonic kept.
    pub(crate) fn from_status(
        status: &Status,
        operation: &'static str,
        deadline: Duration,
        server: &str,
    ) -> Self {
        let message = status.message().to_owned();
        if is_local_timeout(status) {
            return Self::DeadlineExceeded {
                operation,
                deadline,
            };
        }
        if is_transport_failure(status) {
            return Self::Unavailable(format!("cannot reach {server}: {}", with_causes(status)));
        }
        match status.code() {
            Code::InvalidArgument => Self::InvalidArgument(message),
            Code::AlreadyExists => Self::AlreadyExists(message),
            Code::NotFound => Self::NotFound(message),
            Code::Unauthenticated => Self::Unauthenticated(message),
            Code::PermissionDenied => Self::PermissionDenied(message),
            Code::ResourceExhausted if message.starts_with("disk nearly full") => {
                Self::NoSpace(message)
            }
            Code::ResourceExhausted => Self::RateLimited(message),
            Code::FailedPrecondition => Self::FailedPrecondition(message),
            Code::Unavailable => Self::Unavailable(message),
            Code::DeadlineExceeded => Self::DeadlineExceeded {
                operation,
                deadline,
            },
            code => Self::Server { code, message },
        }
    }
}

impl ClientError {
    /// A plaintext call that failed the way calls to a TLS server fail (the connection was
    /// made, then HTTP/2 broke: the server's TLS alert read as a frame, or the connection
    /// closed at once) says what to do about it.
    pub(crate) fn with_plaintext_hint(self) -> Self {
        match self {
            Self::Unavailable(message)
                if message.starts_with("cannot reach ") && !message.contains("tcp connect") =>
            {
                Self::Unavailable(format!(
                    "{message} (the server may serve TLS only: call it with https:// or a CA \
                     certificate)"
                ))
            }
            other => other,
        }
    }
}

/// The status's message followed by each cause in its source chain that the text does not
/// already say (tonic's "tcp connect error" becomes "tcp connect error: Connection refused").
fn with_causes(status: &Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = status.source();
    while let Some(error) = source {
        let cause = error.to_string();
        if !cause.is_empty() && !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = error.source();
    }
    text
}

/// Whether `status` is tonic's own enforcement of the `grpc-timeout` the client set from its
/// deadline (reported as `CANCELLED`, "Timeout expired"): the deadline has passed.
fn is_local_timeout(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether `status` was made by the local transport rather than sent by a server.
///
/// A status decoded from a server's reply never has an error source, while tonic attaches the
/// underlying connect, I/O, hyper or h2 error to the statuses it makes for a refused, reset or
/// broken connection (as `UNAVAILABLE`, `UNKNOWN`, `CANCELLED` or `INTERNAL`). Such a failure
/// says nothing about the request, so it is as retryable as `UNAVAILABLE`; writes are safe to
/// retry thanks to their idempotency key.
fn is_transport_failure(status: &Status) -> bool {
    let local_code = matches!(
        status.code(),
        Code::Unknown | Code::Cancelled | Code::Internal | Code::Unavailable
    );
    let made_locally = status.source().is_some() || status.message().starts_with(NOT_READY_PREFIX);
    local_code && made_locally
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn map(status: &Status) -> ClientError {
        ClientError::from_status(status, "sign_up", DEADLINE, "127.0.0.1:5001")
    }

    #[test]
    fn server_codes_map_to_their_variants_with_the_message_verbatim() {
        let message = "username: must be 1 to 32 characters";
        let cases = [
            (
                Code::InvalidArgument,
                ClientError::InvalidArgument(message.into()),
            ),
            (
                Code::AlreadyExists,
                ClientError::AlreadyExists(message.into()),
            ),
            (Code::NotFound, ClientError::NotFound(message.into())),
            (
                Code::Unauthenticated,
                ClientError::Unauthenticated(message.into()),
            ),
            (
                Code::PermissionDenied,
                ClientError::PermissionDenied(message.into()),
            ),
            (
                Code::ResourceExhausted,
                ClientError::RateLimited(message.into()),
            ),
            (
                Code::FailedPrecondition,
                ClientError::FailedPrecondition(message.into()),
            ),
            (Code::Unavailable, ClientError::Unavailable(message.into())),
            (
                Code::Internal,
                ClientError::Server {
                    code: Code::Internal,
                    message: message.into(),
                },
            ),
            (
                Code::Unknown,
                ClientError::Server {
                    code: Code::Unknown,
                    message: message.into(),
                },
            ),
        ];
        for (code, expected) in cases {
            let error = map(&Status::new(code, message));
            assert_eq!(error, expected, "{code:?}");
            assert_eq!(error.code(), Some(code));
        }
        assert_eq!(
            ClientError::InvalidArgument(message.into()).to_string(),
            message
        );
    }

    #[test]
    fn deadline_exceeded_names_the_operation_and_the_deadline() {
        let error = map(&Status::deadline_exceeded("too slow"));
        assert_eq!(
            error,
            ClientError::DeadlineExceeded {
                operation: "sign_up",
                deadline: DEADLINE,
            }
        );
        assert_eq!(
            error.to_string(),
            "sign_up: no answer within the deadline of 10000 ms"
        );
        assert!(!error.is_retryable());
    }

    #[test]
    fn transport_failures_are_unavailable() {
        // 1. A status made by tonic around an I/O error has a source.
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection reset");
        let status = Status::from_error(Box::new(io));
        assert!(status.source().is_some());
        assert_eq!(
            map(&status),
            ClientError::Unavailable("cannot reach 127.0.0.1:5001: connection reset".into())
        );
        // A plaintext client whose connection broke after it was made is told about TLS; one
        // that could not connect at all is not.
        let hinted = map(&status).with_plaintext_hint().to_string();
        assert!(
            hinted.ends_with(
                "(the server may serve TLS only: call it with https:// or a CA certificate)"
            ),
            "{hinted}"
        );
        let refused =
            ClientError::Unavailable("cannot reach 127.0.0.1:5001: tcp connect error".into());
        assert_eq!(refused.clone().with_plaintext_hint(), refused);

        // 2. The generated client's "not ready" status has no source but is local too.
        let status = Status::unknown(format!("{NOT_READY_PREFIX}: buffer closed"));
        assert!(map(&status).is_retryable());

        // 3. The same code sent by a server is not a transport failure.
        assert!(!map(&Status::unknown("boom")).is_retryable());
    }

    #[test]
    fn the_local_grpc_timeout_is_the_deadline() {
        let status = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(status.code(), Code::Cancelled);
        assert_eq!(
            map(&status),
            ClientError::DeadlineExceeded {
                operation: "sign_up",
                deadline: DEADLINE,
            }
        );
    }

    #[test]
    fn only_unavailable_is_retryable() {
        assert!(ClientError::Unavailable("no quorum".into()).is_retryable());
        let final_errors = [
            ClientError::InvalidArgument(String::new()),
            ClientError::Unauthenticated(String::new()),
            ClientError::RateLimited(String::new()),
            ClientError::DeadlineExceeded {
                operation: "log_in",
                deadline: DEADLINE,
            },
            ClientError::Server {
                code: Code::Aborted,
                message: String::new(),
            },
            ClientError::InvalidResponse(String::new()),
            ClientError::InvalidAddress {
                address: String::new(),
                reason: String::new(),
            },
        ];
        for error in final_errors {
            assert!(!error.is_retryable(), "{error:?}");
        }
    }

    #[test]
    fn local_errors_have_no_code() {
        assert_eq!(ClientError::InvalidResponse("x".into()).code(), None);
        let error = ClientError::InvalidAddress {
            address: "nope".into(),
            reason: "expected HOST:PORT".into(),
        };
        assert_eq!(error.code(), None);
        assert_eq!(
            error.to_string(),
            "invalid server address \"nope\": expected HOST:PORT"
        );
    }
}
