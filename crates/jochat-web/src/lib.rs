//! The JoChat web gateway: one page for people who chat, and the small JSON API it calls, on
//! one origin. It is an axum server whose every API call goes through
//! [`jochat_client::ChatServerClient`], the failover client, so the page keeps working while
//! the cluster fails over; the page's files are compiled into the crate. `jochat web` runs it
//! with [`serve`]; [`router`] is the same server for embedding.
//!
//! # Security
//!
//! - The session token lives in one cookie, `jochat_session`, `HttpOnly` and
//!   `SameSite=Strict`: page scripts never see it and other sites' pages never send it.
//! - Every state-changing call is a `POST` with a JSON body and the header
//!   `X-JoChat-Request: 1`; a request that carries an `Origin` other than the page's own, or a
//!   `Sec-Fetch-Site` of `cross-site`/`same-site`, is refused with 403 before anything runs.
//!   A cross-site form cannot set the header, and a cross-site script that tries is stopped by
//!   the browser's CORS preflight, which this server never approves.
//! - Bodies are limited to [`BODY_BYTES_MAX`] (256 KiB); a larger one gets 413.
//! - The page builds every element from text (`textContent`), never from HTML, and the
//!   `Content-Security-Policy` allows only the page's own script and style files, so a message
//!   holding `<script>` is shown as text and could not run even if it were inserted as HTML.
//! - The browser hashes the password with SHA-256 before sending it, as the client library
//!   does; the server passes the digest on unchanged.
//!
//! # Layout
//!
//! - `api`: the JSON handlers under `/api`, their errors ([`ApiError`]), the session cookie
//!   and the live event stream (Server-Sent Events).
//! - `assets/`: the page itself (`index.html`, `app.js`, `style.css`, `icon.svg`), plain files
//!   with no build step, embedded with `include_str!`.
//! - this file: [`router`] with the security checks (`guard`), [`serve`], and
//!   [`message_json`], the JSON shape of a message that the API serves and `jochat --json`
//!   prints.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;

use std::future::Future;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use jochat_client::{ChatServerClient, Message};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub use api::{ApiError, SESSION_COOKIE};

/// The largest request body accepted, in bytes (a message of the default 64 KiB limit fits even
/// with every character escaped in JSON).
pub const BODY_BYTES_MAX: usize = 256 * 1024;

/// The header every state-changing call must carry (value `1`).
pub const REQUEST_HEADER: &str = "x-jochat-request";

/// What the page may load and connect to: its own files only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// The page and its API, calling the cluster through `client`.
pub fn router(client: ChatServerClient) -> Router {
    let api = Router::new()
        .route("/signup", post(api::sign_up))
        .route("/login", post(api::log_in))
        .route("/logout", post(api::log_out))
        .route("/me", get(api::me))
        .route("/messages", get(api::list_messages).post(api::send_message))
        .route("/messages/delete", post(api::delete_messages))
        .route("/away", post(api::fetch_away))
        .route("/accounts", get(api::list_accounts))
        .route("/account/delete", post(api::delete_account))
        .route("/events", get(api::events))
        .fallback(api::not_found)
        .with_state(client);
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE_CSS)),
        )
        .route("/icon.svg", get(|| asset("image/svg+xml", ICON_SVG)))
        .nest("/api", api)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(middleware::from_fn(guard))
}

/// Serves [`router`] on `listener` until `shutdown` completes. Open live streams are cut at
/// shutdown rather than waited for.
///
/// # Errors
/// When accepting connections fails.
pub async fn serve(
    listener: TcpListener,
    client: ChatServerClient,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = axum::serve(listener, router(client));
    tokio::select! {
        served = server => served,
        () = shutdown => Ok(()),
    }
}

/// A message as JSON: `id`, `sender`, `recipient`, `content`, `timestamp_ms`, `status`
/// (`delivered` or `away`).
pub fn message_json(message: &Message) -> Value {
    json!({
        "id": message.id,
        "sender": message.sender,
        "recipient": message.recipient,
        "content": message.content,
        "timestamp_ms": message.timestamp_ms,
        "status": message.status.as_str(),
    })
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Refuses cross-site state changes, then adds the security headers to every answer.
async fn guard(request: Request, next: Next) -> Response {
    // The page itself may be opened from anywhere (a link, a bookmark); only the API checks.
    let refusal = if request.uri().path().starts_with("/api/") {
        cross_site_refusal(request.method(), request.headers())
    } else {
        None
    };
    let mut response = match refusal {
        Some(refusal) => refusal.into_response(),
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Why an API request must not run, if it must not: no API call may come from another site,
/// and any method but GET and HEAD needs the request header.
fn cross_site_refusal(method: &Method, headers: &HeaderMap) -> Option<ApiError> {
    if let Some(site) = headers.get("sec-fetch-site") {
        // `none` is the user typing the address; `same-origin` is the page itself.
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Some(ApiError::forbidden("cross-site requests are refused"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let same = origin
            .to_str()
            .ok()
            .and_then(|origin| origin.strip_prefix("http://"))
            .is_some_and(|origin_host| Some(origin_host) == host);
        if !same {
            return Some(ApiError::forbidden(
                "requests from another origin are refused",
            ));
        }
    }
    if *method == Method::GET || *method == Method::HEAD {
        return None;
    }
    if headers.get(REQUEST_HEADER).map(HeaderValue::as_bytes) != Some(b"1") {
        return Some(ApiError::forbidden(
            "state-changing requests need the header X-JoChat-Request: 1",
        ));
    }
    None
}

impl ApiError {
    fn forbidden(message: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn reads_from_the_page_or_the_address_bar_pass() {
        assert!(cross_site_refusal(&Method::GET, &headers(&[])).is_none());
        let page = headers(&[
            ("sec-fetch-site", "same-origin"),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(cross_site_refusal(&Method::GET, &page).is_none());
    }

    #[test]
    fn writes_need_the_header() {
        let refused = cross_site_refusal(&Method::POST, &headers(&[])).expect("refused");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let allowed = headers(&[("x-jochat-request", "1"), ("host", "a:1")]);
        assert!(cross_site_refusal(&Method::POST, &allowed).is_none());
        let wrong = headers(&[("x-jochat-request", "yes")]);
        assert!(cross_site_refusal(&Method::POST, &wrong).is_some());
    }

    #[test]
    fn other_sites_are_refused_even_with_the_header() {
        for pairs in [
            [
                ("x-jochat-request", "1"),
                ("sec-fetch-site", "cross-site"),
                ("host", "127.0.0.1:8080"),
            ],
            [
                ("x-jochat-request", "1"),
                ("origin", "http://evil.example"),
                ("host", "127.0.0.1:8080"),
            ],
            [
                ("x-jochat-request", "1"),
                ("origin", "null"),
                ("host", "127.0.0.1:8080"),
            ],
        ] {
            let refused = cross_site_refusal(&Method::POST, &headers(&pairs));
            assert!(refused.is_some(), "{pairs:?}");
        }
        // Reads from another site are refused too (no data leaks into a cross-site fetch).
        let read = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(cross_site_refusal(&Method::GET, &read).is_some());
    }
}
