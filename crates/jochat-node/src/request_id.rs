//! Request ids across nodes: a caller's `x-request-id` (the client library sends one per
//! call, the same on every retry) becomes the request id in the log lines of that request, on
//! whichever node serves it; without one the node numbers the request itself.
//!
//! [`RequestIdLayer`] wraps the whole gRPC server: it reads the header and runs the request
//! inside a task-local scope, where [`current`] finds it (`service::observe` puts it in the
//! request's span).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The metadata key.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id kept; a longer (or non-printable) one is ignored.
pub const REQUEST_ID_CHARS_MAX: usize = 128;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The caller's request id for the request being served, if it gave a usable one.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Runs `work` with `id` as its request id (what [`current`] returns inside it).
pub async fn scope<F: Future>(id: String, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}

/// Whether `id` may stand in logs: 1 to [`REQUEST_ID_CHARS_MAX`] visible ASCII characters.
pub fn is_usable(id: &str) -> bool {
    !id.is_empty() && id.len() <= REQUEST_ID_CHARS_MAX && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Wraps a service with [`RequestIdService`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower_layer::Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// Runs each request inside the scope of its caller's `x-request-id`.
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for RequestIdService<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|id| is_usable(id))
            .map(str::to_owned);
        let served = self.inner.call(request);
        match id {
            Some(id) => Box::pin(REQUEST_ID.scope(id, served)),
            None => Box::pin(served),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_printable_bounded_ids_are_kept() {
        assert!(is_usable("0f3a9c2e11d4b7a8"));
        assert!(!is_usable(""));
        assert!(!is_usable("has space"));
        assert!(!is_usable("line\nbreak"));
        assert!(!is_usable(&"x".repeat(REQUEST_ID_CHARS_MAX + 1)));
    }
}
