//! The gRPC services a node serves, one module each. Handlers are thin: proto fields in, one
//! call into [`crate::Node`], domain values (or a status) out.

pub mod chat;
pub mod legacy;
pub mod raft;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tonic::{Response, Status};
use tracing::Instrument;

use crate::error::NodeError;
use crate::Node;

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// Runs one request's work inside a span carrying the node id, a request id and the
/// operation, logs its outcome and latency, and counts it in the node's metrics.
pub(crate) async fn observe<T>(
    node: &Node,
    operation: &'static str,
    work: impl Future<Output = Result<T, NodeError>>,
) -> Result<Response<T>, Status> {
    let node_id = node.id();
    let request_id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("request", node_id, request_id, operation);
    let started = Instant::now();
    let result = work.instrument(span.clone()).await;
    let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let code = result
        .as_ref()
        .map_or_else(NodeError::code, |_| tonic::Code::Ok);
    let (service, method) = crate::metrics::service_and_method(operation);
    node.metrics()
        .record_request(service, method, code, started.elapsed());
    span.in_scope(|| match &result {
        Ok(_) => tracing::info!(latency_us, outcome = "ok", "request served"),
        Err(error) => {
            tracing::info!(latency_us, outcome = ?error.code(), %error, "request refused")
        }
    });
    result.map(Response::new).map_err(Status::from)
}
