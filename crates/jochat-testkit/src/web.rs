//! The web gateway (`jochat_web::serve`, what `jochat web` runs) in process for the web tests,
//! and a small HTTP client with a cookie jar.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jochat_client::ChatServerClient;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// `jochat web` serving on a free loopback port until dropped.
pub struct WebServer {
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
}

impl WebServer {
    /// Serves the page for `servers` through a failover client.
    pub async fn start(servers: &[String]) -> Self {
        Self::start_with(servers, jochat_web::WebOptions::default()).await
    }

    /// Serves the page for `servers`, reached as `options` say (`--public-origin`).
    pub async fn start_with(servers: &[String], options: jochat_web::WebOptions) -> Self {
        let client = ChatServerClient::builder()
            .servers(servers.iter().cloned())
            .build()
            .expect("loopback addresses are valid servers");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let base = format!(
            "http://{}",
            listener
                .local_addr()
                .expect("a bound listener has an address")
        );
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(jochat_web::serve_with(
            listener,
            client,
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            base,
            stop: Some(stop),
        }
    }
}

impl WebServer {
    /// Serves the page over HTTPS with `certs`' node certificate, calling `servers` over TLS
    /// and trusting `certs`' CA.
    pub async fn start_tls(servers: &[String], certs: &crate::tls::TestCerts) -> Self {
        let client = ChatServerClient::builder()
            .servers(servers.iter().cloned())
            .ca_certificate(certs.pem("ca.crt"))
            .build()
            .expect("loopback addresses and a PEM CA are valid");
        let tls = jochat_web::WebTls::from_pem(&certs.pem("node.crt"), &certs.pem("node.key"))
            .expect("the test certificate serves");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let base = format!(
            "https://{}",
            listener
                .local_addr()
                .expect("a bound listener has an address")
        );
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(jochat_web::serve_tls(
            listener,
            client,
            jochat_web::WebOptions::default(),
            tls,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            base,
            stop: Some(stop),
        }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An answer: status, headers and the JSON body (`Null` when there is none).
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
}

impl Answer {
    /// `error.code` of an error answer.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    /// `error.field` of an error answer.
    pub fn field(&self) -> Option<&str> {
        self.json["error"]["field"].as_str()
    }
}

/// A browser-like HTTP client: keeps the session cookie the server sets and sends the
/// request header the page sends on writes.
pub struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// `name=value` of the session cookie, when one is set.
    pub cookie: Option<String>,
}

impl Http {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            cookie: None,
        }
    }

    /// A request as the page makes it.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
        if method != Method::GET {
            builder = builder
                .header("x-jochat-request", "1")
                .header("content-type", "application/json");
        }
        if let Some(cookie) = &self.cookie {
            builder = builder.header("cookie", cookie);
        }
        let body = body.map_or_else(Bytes::new, |body| Bytes::from(body.to_string()));
        builder.body(Full::new(body)).expect("a valid request")
    }

    /// Sends `request`, keeps any session cookie it sets, and reads the JSON answer.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Answer {
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .expect("the web server answers within 30 s")
            .expect("the web server answers");
        let (parts, body) = response.into_parts();
        for cookie in parts.headers.get_all("set-cookie") {
            let cookie = cookie.to_str().expect("an ASCII cookie");
            let pair = cookie.split(';').next().unwrap_or("").to_owned();
            if cookie.contains("Max-Age=0") {
                self.cookie = None;
            } else {
                self.cookie = Some(pair);
            }
        }
        let bytes = body.collect().await.expect("the body arrives").to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Answer {
            status: parts.status,
            headers: parts.headers,
            json,
        }
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        let request = self.request(Method::GET, path, None);
        self.send(request).await
    }

    pub async fn post(&mut self, path: &str, body: Value) -> Answer {
        let request = self.request(Method::POST, path, Some(&body));
        self.send(request).await
    }

    /// Opens `GET path` and returns the streaming response (for the event stream).
    pub async fn open_stream(
        &self,
        path: &str,
        extra: &[(&str, &str)],
    ) -> hyper::Response<hyper::body::Incoming> {
        let mut request = self.request(Method::GET, path, None);
        for (name, value) in extra {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
                http::HeaderValue::from_str(value).expect("a valid header value"),
            );
        }
        self.client
            .request(request)
            .await
            .expect("the web server answers")
    }
}

/// Reads server-sent events from `body` until `count` `message` events arrived (or 30 s pass)
/// and returns each as `(id, data)`.
pub async fn read_events(body: &mut hyper::body::Incoming, count: usize) -> Vec<(i64, Value)> {
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while events.len() < count {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("the events arrive within 30 s")
            .expect("the stream is open")
            .expect("the stream reads");
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).expect("UTF-8 events"));
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            let mut name = "message";
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("id: ") {
                    id = value.parse::<i64>().ok();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data = serde_json::from_str::<Value>(value).ok();
                } else if let Some(value) = line.strip_prefix("event: ") {
                    name = if value == "message" {
                        "message"
                    } else {
                        "other"
                    };
                }
            }
            if let (true, Some(id), Some(data)) = (name == "message", id, data) {
                events.push((id, data));
            }
        }
    }
    events
}
