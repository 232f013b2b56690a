//! The JSON API under `/api`, the session cookie, and the live event stream.
//!
//! Each handler makes one [`ChatServerClient`] call. Errors are
//! `{"error": {"code", "message", "field"}}` with the HTTP status of their kind; `field` names
//! the request field the server's rule concerns (its messages read `field: rule`), so the page
//! can show the message beside that field.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use jochat_client::{
    AccountQuery, ChatServerClient, ClientError, InboxQuery, Message, MessageStream, SessionToken,
};

use crate::message_json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// The name of the session cookie: `<token>.<username>`, `HttpOnly`, `SameSite=Strict`.
pub const SESSION_COOKIE: &str = "jochat_session";

/// Characters of a session token (64 hex digits).
const TOKEN_CHARS: usize = 64;

/// What the server says for a wrong password; unlike other `UNAUTHENTICATED` answers it does
/// not mean the session ended.
const WRONG_CREDENTIALS: &str = "wrong username or password";

/// The browser waits this long before reconnecting a dropped event stream.
const RECONNECT_AFTER: Duration = Duration::from_millis(1000);

/// An API error: an HTTP status and `{"error": {"code", "message", "field"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    /// The session is over: the answer also deletes the cookie.
    ends_session: bool,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        let field = field_of(&message);
        Self {
            status,
            code,
            message,
            field,
            ends_session: false,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    fn invalid(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    fn not_logged_in() -> Self {
        let mut error = Self::new(
            StatusCode::UNAUTHORIZED,
            "session_ended",
            "not logged in".to_owned(),
        );
        error.ends_session = true;
        error
    }
}

impl From<ClientError> for ApiError {
    fn from(error: ClientError) -> Self {
        let message = error.to_string();
        let (status, code) = match &error {
            ClientError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            ClientError::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
            ClientError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ClientError::Unauthenticated(text) if text == WRONG_CREDENTIALS => {
                let mut wrong = Self::new(StatusCode::UNAUTHORIZED, "wrong_credentials", message);
                wrong.field = Some("password".to_owned());
                return wrong;
            }
            ClientError::Unauthenticated(_) => {
                let mut ended = Self::new(StatusCode::UNAUTHORIZED, "session_ended", message);
                ended.ends_session = true;
                return ended;
            }
            ClientError::PermissionDenied(_) => (StatusCode::FORBIDDEN, "permission_denied"),
            ClientError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ClientError::FailedPrecondition(_) => (StatusCode::CONFLICT, "failed_precondition"),
            ClientError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ClientError::NoSpace(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_space"),
            ClientError::DeadlineExceeded { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded")
            }
            _ => (StatusCode::BAD_GATEWAY, "server_error"),
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"code": self.code, "message": self.message, "field": self.field}});
        let mut response = (self.status, Json(body)).into_response();
        if self.ends_session {
            response
                .headers_mut()
                .insert(header::SET_COOKIE, ended_cookie());
        }
        response
    }
}

/// The request field a server message concerns: the messages read `field: rule`.
fn field_of(message: &str) -> Option<String> {
    let (field, _) = message.split_once(':')?;
    let plain = !field.is_empty()
        && field
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    plain.then(|| field.to_owned())
}

/// A JSON request body; a bad one is an [`ApiError`] like any other.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(body_error(&rejection)),
        }
    }
}

fn body_error(rejection: &JsonRejection) -> ApiError {
    let status = match rejection.status() {
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        other => other,
    };
    let text = rejection.body_text();
    let detail = without_preamble(&text);
    let mut error = ApiError::new(status, "invalid_body", format!("body: {detail}"));
    // serde names the field first ("content: invalid type") or in backquotes ("missing field
    // `content`").
    error.field = field_of(detail).or_else(|| {
        text.split('`')
            .nth(1)
            .filter(|name| field_of(&format!("{name}:")).is_some())
            .map(str::to_owned)
    });
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        error.message = format!(
            "body: larger than the limit of {} bytes",
            super::BODY_BYTES_MAX
        );
    }
    error
}

/// axum's rejection text without its "Failed to deserialize ...: " preamble, so that the rest
/// starts with the field when serde names one (`limit: invalid digit found in string`).
fn without_preamble(text: &str) -> &str {
    ["the target type: ", "query string: "]
        .iter()
        .find_map(|preamble| text.split_once(preamble).map(|(_, rest)| rest))
        .unwrap_or(text)
}

fn query<T>(parsed: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    parsed.map(|Query(value)| value).map_err(|rejection| {
        let text = rejection.body_text();
        let detail = without_preamble(&text);
        let mut error = ApiError::invalid(detail.to_owned());
        if error.field.is_none() {
            error.message = format!("query: {detail}");
        }
        error
    })
}

/// The session of the request's cookie.
pub struct Session {
    token: SessionToken,
    username: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        session_of(&parts.headers).ok_or_else(ApiError::not_logged_in)
    }
}

/// Reads `jochat_session=<token>.<username>` from the `Cookie` headers.
fn session_of(headers: &HeaderMap) -> Option<Session> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .and_then(|(_, value)| {
            let (token, username) = value.split_once('.')?;
            let valid = token.len() == TOKEN_CHARS
                && token.bytes().all(|b| b.is_ascii_hexdigit())
                && !username.is_empty();
            valid.then(|| Session {
                token: SessionToken::from(token.to_owned()),
                username: username.to_owned(),
            })
        })
}

/// The `Set-Cookie` value that stores a session until `expires_at_ms`.
///
/// # Errors
/// When the server's answer cannot go in a header (tokens are hex and usernames letters,
/// digits, `_`, `-` and `.`, so only a misbehaving server gets here).
fn session_cookie(
    token: &SessionToken,
    username: &str,
    expires_at_ms: i64,
) -> Result<HeaderValue, ApiError> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
    let max_age = (expires_at_ms.saturating_sub(now_ms) / 1000).max(0);
    let text = format!(
        "{SESSION_COOKIE}={}.{username}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}",
        token.as_str()
    );
    HeaderValue::from_str(&text).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            "the server's session cannot be stored in a cookie".to_owned(),
        )
    })
}

/// The `Set-Cookie` value that deletes the session cookie.
fn ended_cookie() -> HeaderValue {
    HeaderValue::from_static("jochat_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Checks that a password arrives as the page sends it: its SHA-256 as 64 lowercase hex
/// digits (or empty, which the server refuses with its own rule).
fn password_digest(password: &str) -> Result<&str, ApiError> {
    let digest = password.is_empty()
        || (password.len() == 64
            && password
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    if digest {
        Ok(password)
    } else {
        Err(ApiError::invalid(
            "password: must arrive as its SHA-256, 64 lowercase hex digits (the page hashes it)"
                .to_owned(),
        ))
    }
}

fn messages_json(messages: &[Message]) -> Vec<Value> {
    messages.iter().map(message_json).collect()
}

/// `POST /api/signup` `{username, password}` → 201 `{user_id, username}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    username: String,
    password: String,
}

pub async fn sign_up(
    State(client): State<ChatServerClient>,
    Body(body): Body<Credentials>,
) -> Result<Response, ApiError> {
    let password = password_digest(&body.password)?;
    let account = client.sign_up_hashed(&body.username, password).await?;
    let reply = json!({"user_id": account.user_id, "username": account.username});
    Ok((StatusCode::CREATED, Json(reply)).into_response())
}

/// `POST /api/login` `{username, password}` → `{username, user_id, unread_count,
/// expires_at_ms}` and the session cookie.
pub async fn log_in(
    State(client): State<ChatServerClient>,
    Body(body): Body<Credentials>,
) -> Result<Response, ApiError> {
    let password = password_digest(&body.password)?;
    let session = client.log_in_hashed(&body.username, password).await?;
    let cookie = session_cookie(&session.token, &session.username, session.expires_at_ms)?;
    let reply = json!({
        "username": session.username,
        "user_id": session.user_id,
        "unread_count": session.unread_count,
        "expires_at_ms": session.expires_at_ms,
    });
    Ok(([(header::SET_COOKIE, cookie)], Json(reply)).into_response())
}

/// `POST /api/logout` → `{}`, the cookie deleted. Logging out without a valid session is not
/// an error.
pub async fn log_out(
    State(client): State<ChatServerClient>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(session) = session_of(&headers) {
        match client.log_out(&session.token).await {
            Ok(()) | Err(ClientError::Unauthenticated(_)) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(([(header::SET_COOKIE, ended_cookie())], Json(json!({}))).into_response())
}

/// `GET /api/me` → `{username, unread_count}`; 401 when the session is over.
pub async fn me(
    State(client): State<ChatServerClient>,
    session: Session,
) -> Result<Json<Value>, ApiError> {
    let unread = client.unread_count(&session.token).await?;
    Ok(Json(
        json!({"username": session.username, "unread_count": unread}),
    ))
}

/// `GET /api/messages?offset&limit&with_user` parameters.
#[derive(Deserialize)]
pub struct InboxParams {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    with_user: Option<String>,
}

/// `GET /api/messages` → `{messages (newest first), total_count}`.
pub async fn list_messages(
    State(client): State<ChatServerClient>,
    session: Session,
    params: Result<Query<InboxParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = query(params)?;
    let inbox = InboxQuery {
        offset: params.offset,
        limit: params.limit,
        with_user: params.with_user.filter(|name| !name.is_empty()),
        ..InboxQuery::default()
    };
    let page = client.list_messages(&session.token, &inbox).await?;
    Ok(Json(
        json!({"messages": messages_json(&page.messages), "total_count": page.total_count}),
    ))
}

/// `POST /api/messages` `{recipient, content}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    recipient: String,
    content: String,
}

/// `POST /api/messages` → 201 `{id, timestamp_ms, status}`.
pub async fn send_message(
    State(client): State<ChatServerClient>,
    session: Session,
    Body(body): Body<SendBody>,
) -> Result<Response, ApiError> {
    let sent = client
        .send_message(&session.token, &body.recipient, &body.content)
        .await?;
    let reply =
        json!({"id": sent.id, "timestamp_ms": sent.timestamp_ms, "status": sent.status.as_str()});
    Ok((StatusCode::CREATED, Json(reply)).into_response())
}

/// `POST /api/messages/delete` `{ids}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    ids: Vec<i64>,
}

/// `POST /api/messages/delete` → `{deleted_count}`.
pub async fn delete_messages(
    State(client): State<ChatServerClient>,
    session: Session,
    Body(body): Body<DeleteBody>,
) -> Result<Json<Value>, ApiError> {
    let deleted = client.delete_messages(&session.token, &body.ids).await?;
    Ok(Json(json!({"deleted_count": deleted})))
}

/// `POST /api/away` `{limit}` body (0 or absent: the server's default).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwayBody {
    #[serde(default)]
    limit: u32,
}

/// `POST /api/away` → `{messages (oldest first), remaining}`; they are now delivered.
pub async fn fetch_away(
    State(client): State<ChatServerClient>,
    session: Session,
    Body(body): Body<AwayBody>,
) -> Result<Json<Value>, ApiError> {
    let away = client.fetch_away(&session.token, body.limit).await?;
    Ok(Json(
        json!({"messages": messages_json(&away.messages), "remaining": away.remaining}),
    ))
}

/// `GET /api/accounts?pattern&offset&limit` parameters.
#[derive(Deserialize)]
pub struct AccountParams {
    #[serde(default)]
    pattern: String,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    limit: u32,
}

/// `GET /api/accounts` → `{accounts: [{id, username}], total_count}`.
pub async fn list_accounts(
    State(client): State<ChatServerClient>,
    session: Session,
    params: Result<Query<AccountParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = query(params)?;
    let search = AccountQuery::new(params.pattern)
        .offset(params.offset)
        .limit(params.limit);
    let page = client.list_accounts(&session.token, &search).await?;
    let accounts: Vec<Value> = page
        .accounts
        .iter()
        .map(|account| json!({"id": account.id, "username": account.username}))
        .collect();
    Ok(Json(
        json!({"accounts": accounts, "total_count": page.total_count}),
    ))
}

/// `POST /api/account/delete` `{password}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    password: String,
}

/// `POST /api/account/delete` → `{deleted_messages}`, the cookie deleted.
pub async fn delete_account(
    State(client): State<ChatServerClient>,
    session: Session,
    Body(body): Body<PasswordBody>,
) -> Result<Response, ApiError> {
    let password = password_digest(&body.password)?;
    let deleted = client
        .delete_account_hashed(&session.token, password)
        .await?;
    let reply = json!({"deleted_messages": deleted});
    Ok(([(header::SET_COOKIE, ended_cookie())], Json(reply)).into_response())
}

/// `GET /api/events?after` parameters.
#[derive(Deserialize)]
pub struct EventParams {
    #[serde(default)]
    after: i64,
}

/// `GET /api/events?after=ID`: Server-Sent Events, one `message` event per incoming message
/// after message `ID` (0: from now on), each with the message id as its event id. A browser
/// that reconnects sends the last id it received (`Last-Event-ID`) and continues from there,
/// with no gap and no repeat. The stream ends with a `session-ended` event when the session
/// does, and with an `interrupted` event for other final errors (the browser reconnects).
pub async fn events(
    State(client): State<ChatServerClient>,
    session: Session,
    headers: HeaderMap,
    params: Result<Query<EventParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let params = query(params)?;
    let resumed = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::invalid("last-event-id: must be a message id".to_owned())
                })?,
        ),
    };
    if params.after < 0 || resumed.is_some_and(|id| id < 0) {
        return Err(ApiError::invalid(
            "after: must be 0 (from now on) or a message id".to_owned(),
        ));
    }
    let after = resumed.unwrap_or(0).max(params.after);
    // Refuse a dead session with 401 (the browser then stops reconnecting) instead of
    // opening a stream that ends at once.
    client.unread_count(&session.token).await?;
    let mut messages = client.subscribe(&session.token, after);
    // The opening event means the stream is live: a message sent after it is not missed.
    messages.started().await?;
    let opening = Event::default().retry(RECONNECT_AFTER).comment("live");
    let stream = stream::once(async move { Ok(opening) }).chain(stream::unfold(
        Some(messages),
        |state: Option<MessageStream>| async move {
            let mut messages = state?;
            let event = match messages.next().await? {
                Ok(message) => {
                    let event = Event::default()
                        .event("message")
                        .id(message.id.to_string())
                        .data(message_json(&message).to_string());
                    return Some((Ok(event), Some(messages)));
                }
                Err(ClientError::Unauthenticated(reason)) => {
                    Event::default().event("session-ended").data(reason)
                }
                Err(error) => Event::default()
                    .event("interrupted")
                    .data(error.to_string()),
            };
            Some((Ok(event), None))
        },
    ));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Any other `/api` path.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such API call".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_from_the_servers_messages() {
        assert_eq!(
            field_of("username: must be 1 to 32 characters").as_deref(),
            Some("username")
        );
        assert_eq!(
            field_of("recipient: no account named \"x\"").as_deref(),
            Some("recipient")
        );
        assert_eq!(field_of("wrong username or password"), None);
        assert_eq!(field_of("Some Thing: else"), None);
    }

    #[test]
    fn the_session_cookie_is_read_back() {
        let token = SessionToken::from("ab".repeat(32));
        let cookie = session_cookie(&token, "alice.b", i64::MAX).expect("a valid header");
        let text = cookie.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        let pair = text.split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("theme=dark; {pair}")).unwrap(),
        );
        let session = session_of(&headers).expect("the cookie is a session");
        assert_eq!(session.token, token);
        assert_eq!(session.username, "alice.b");
        // A short or non-hex token is no session.
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("jochat_session=abc.alice"),
        );
        assert!(session_of(&headers).is_none());
        // Deleting it expires it at once.
        let gone = ended_cookie();
        assert!(gone
            .to_str()
            .unwrap()
            .starts_with(&format!("{SESSION_COOKIE}=;")));
        assert!(gone.to_str().unwrap().contains("Max-Age=0"));
        // A name that cannot go in a header is an error, not an empty cookie.
        assert!(session_cookie(&token, "a\nb", i64::MAX).is_err());
    }

    #[test]
    fn passwords_must_arrive_hashed() {
        let digest = jochat_client::hash_password("pw");
        assert!(password_digest(&digest).is_ok());
        assert!(password_digest("").is_ok(), "the server's own rule answers");
        let plain = password_digest("hunter2").unwrap_err();
        assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
        assert_eq!(plain.field.as_deref(), Some("password"));
        assert!(password_digest(&digest.to_uppercase()).is_err());
    }

    #[test]
    fn a_wrong_password_does_not_end_the_session() {
        let wrong = ApiError::from(ClientError::Unauthenticated(WRONG_CREDENTIALS.to_owned()));
        assert!(!wrong.ends_session);
        assert_eq!(wrong.field.as_deref(), Some("password"));
        let ended = ApiError::from(ClientError::Unauthenticated(
            "session expired: log in again".to_owned(),
        ));
        assert!(ended.ends_session);
        assert_eq!(ended.code, "session_ended");
    }
}
