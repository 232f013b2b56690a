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
//! - `tls`: [`serve_tls`], the gateway serving HTTPS itself ([`WebTls`]).
//! - this file: [`router`] with the security checks (`guard`), [`serve`], and
//!   [`message_json`], the JSON shape of a message that the API serves and `jochat --json`
//!   prints.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
mod tls;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use jochat_client::{ChatServerClient, Message};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub use api::{ApiError, SESSION_COOKIE};
pub use tls::{serve_tls, WebTls};

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

/// How the gateway is reached, when that is not simply `http://` and the `Host` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebOptions {
    /// The origin browsers see, as `scheme://host[:port]` (`--public-origin`), when the page
    /// is served through a proxy: API calls must come from exactly this origin.
    pub public_origin: Option<PublicOrigin>,
    /// Whether the gateway itself serves HTTPS ([`serve_tls`] sets it): without a public
    /// origin, the page's origin is then `https://` and its host.
    pub serves_https: bool,
}

impl WebOptions {
    /// Options with `public_origin` as the origin browsers see.
    pub fn with_public_origin(public_origin: PublicOrigin) -> Self {
        Self {
            public_origin: Some(public_origin),
            serves_https: false,
        }
    }

    /// Whether session cookies carry `Secure` (sent over HTTPS only): whenever browsers see
    /// the page over HTTPS.
    pub fn secure_cookies(&self) -> bool {
        self.serves_https
            || self
                .public_origin
                .as_ref()
                .is_some_and(PublicOrigin::is_https)
    }
}

/// A checked origin: `http` or `https`, a host, an optional port, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicOrigin(String);

impl PublicOrigin {
    /// Checks `raw` (`https://chat.example.com`, `http://10.0.0.5:8080`; a trailing `/` is
    /// dropped) and keeps it in lowercase.
    ///
    /// # Errors
    /// The rule `raw` breaks: another scheme, a path, query or user part, or no host.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let origin = raw.trim().trim_end_matches('/').to_ascii_lowercase();
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .ok_or_else(|| format!("{raw:?} must start with https:// or http://"))?;
        let valid = !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !valid {
            return Err(format!(
                "{raw:?} must be scheme://host[:port] with no path, query or user"
            ));
        }
        Ok(Self(origin))
    }

    /// Whether browsers reach the page over HTTPS.
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }

    /// The origin, as an `Origin` header carries it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The page and its API, calling the cluster through `client`, reached directly over HTTP.
pub fn router(client: ChatServerClient) -> Router {
    router_with(client, WebOptions::default())
}

/// The page and its API, calling the cluster through `client`, reached as `options` say.
pub fn router_with(client: ChatServerClient, options: WebOptions) -> Router {
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
        .layer(middleware::from_fn_with_state(Arc::new(options), guard))
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
    serve_with(listener, client, WebOptions::default(), shutdown).await
}

/// [`serve`] for a gateway reached as `options` say ([`router_with`]).
///
/// # Errors
/// When accepting connections fails.
pub async fn serve_with(
    listener: TcpListener,
    client: ChatServerClient,
    options: WebOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = axum::serve(listener, router_with(client, options));
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

/// Refuses cross-site state changes, then adds the security headers to every answer (and
/// `Secure` to its cookies when browsers see the page over HTTPS).
async fn guard(
    State(options): State<Arc<WebOptions>>,
    mut request: Request,
    next: Next,
) -> Response {
    // HTTP/2 carries the host in `:authority` (which hyper puts in the URI), not in a `Host`
    // header: give the same-origin check one place to look.
    if !request.headers().contains_key(header::HOST) {
        if let Some(authority) = request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            request.headers_mut().insert(header::HOST, authority);
        }
    }
    // The page itself may be opened from anywhere (a link, a bookmark); only the API checks.
    let refusal = if request.uri().path().starts_with("/api/") {
        cross_site_refusal(request.method(), request.headers(), &options)
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
    if options.secure_cookies() {
        // One place for every cookie the API sets or deletes.
        let cookies: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|cookie| {
                HeaderValue::from_bytes(&[cookie.as_bytes(), b"; Secure"].concat())
                    .expect("a valid header value followed by visible ASCII is a valid value")
            })
            .collect();
        headers.remove(header::SET_COOKIE);
        for cookie in cookies {
            headers.append(header::SET_COOKIE, cookie);
        }
    }
    response
}

/// Why an API request must not run, if it must not: no API call may come from another site,
/// and any method but GET and HEAD needs the request header. The page's own origin is
/// the public origin when one is given (behind a proxy), else `https://` (or, unless the
/// gateway serves HTTPS itself, `http://`) and the request's `Host`.
fn cross_site_refusal(
    method: &Method,
    headers: &HeaderMap,
    options: &WebOptions,
) -> Option<ApiError> {
    if let Some(site) = headers.get("sec-fetch-site") {
        // `none` is the user typing the address; `same-origin` is the page itself.
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Some(ApiError::forbidden("cross-site requests are refused"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().ok().map(str::to_ascii_lowercase);
        let same = match &options.public_origin {
            Some(public) => origin.as_deref() == Some(public.as_str()),
            None => {
                let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
                // Served over plain HTTP, a TLS-terminating proxy that keeps the Host header
                // makes the origin https:// too; served over HTTPS, only https:// is ours.
                origin
                    .as_deref()
                    .and_then(|origin| {
                        origin.strip_prefix("https://").or_else(|| {
                            (!options.serves_https)
                                .then(|| origin.strip_prefix("http://"))
                                .flatten()
                        })
                    })
                    .is_some_and(|origin_host| {
                        host.is_some_and(|host| host.eq_ignore_ascii_case(origin_host))
                    })
            }
        };
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
        assert!(cross_site_refusal(&Method::GET, &headers(&[]), &WebOptions::default()).is_none());
        let page = headers(&[
            ("sec-fetch-site", "same-origin"),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(cross_site_refusal(&Method::GET, &page, &WebOptions::default()).is_none());
    }

    #[test]
    fn writes_need_the_header() {
        let refused = cross_site_refusal(&Method::POST, &headers(&[]), &WebOptions::default())
            .expect("refused");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let allowed = headers(&[("x-jochat-request", "1"), ("host", "a:1")]);
        assert!(cross_site_refusal(&Method::POST, &allowed, &WebOptions::default()).is_none());
        let wrong = headers(&[("x-jochat-request", "yes")]);
        assert!(cross_site_refusal(&Method::POST, &wrong, &WebOptions::default()).is_some());
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
            let refused =
                cross_site_refusal(&Method::POST, &headers(&pairs), &WebOptions::default());
            assert!(refused.is_some(), "{pairs:?}");
        }
        // Reads from another site are refused too (no data leaks into a cross-site fetch).
        let read = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(cross_site_refusal(&Method::GET, &read, &WebOptions::default()).is_some());
    }

    #[test]
    fn behind_an_https_proxy_only_the_public_origin_may_write() {
        let public = PublicOrigin::parse("https://Chat.Example.com/").unwrap();
        assert_eq!(public.as_str(), "https://chat.example.com");
        let through_proxy = headers(&[
            ("x-jochat-request", "1"),
            ("sec-fetch-site", "same-origin"),
            ("host", "127.0.0.1:8080"),
            ("origin", "https://chat.example.com"),
        ]);
        assert!(cross_site_refusal(
            &Method::POST,
            &through_proxy,
            &WebOptions::with_public_origin(public.clone())
        )
        .is_none());
        let other = headers(&[
            ("x-jochat-request", "1"),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(cross_site_refusal(
            &Method::POST,
            &other,
            &WebOptions::with_public_origin(public.clone())
        )
        .is_some());
        // Without a public origin, a proxy that keeps the Host header works over https too.
        let same_host = headers(&[
            ("x-jochat-request", "1"),
            ("host", "chat.example.com"),
            ("origin", "https://chat.example.com"),
        ]);
        assert!(cross_site_refusal(&Method::POST, &same_host, &WebOptions::default()).is_none());
        assert!(WebOptions::with_public_origin(public).secure_cookies());
        assert!(!WebOptions::default().secure_cookies());
        for bad in [
            "chat.example.com",
            "ftp://x",
            "https://x/path",
            "https://u@x",
            "https://",
        ] {
            assert!(PublicOrigin::parse(bad).is_err(), "{bad}");
        }
    }
}
