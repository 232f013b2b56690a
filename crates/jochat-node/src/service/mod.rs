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

/// Runs one request's work inside a span carrying the node id, the term, the request id
/// (the caller's `x-request-id`, else one the node makes) and the operation; logs its
/// outcome and latency (at `debug`, or `info` when slower than `--slow-request-ms`, `warn`
/// for internal failures), and counts it in the node's metrics.
pub(crate) async fn observe<T>(
    node: &Node,
    operation: &'static str,
    work: impl Future<Output = Result<T, NodeError>>,
) -> Result<Response<T>, Status> {
    observed(node, operation, work)
        .await
        .map(Response::new)
        .map_err(Status::from)
}

/// [`observe`] for front ends that are not gRPC (the socket front end): the same span, log
/// lines and metrics, the outcome returned as it is. The request id is in force during
/// `work` ([`crate::request_id::current`]), so requests forwarded to the leader carry it.
pub(crate) async fn observed<T>(
    node: &Node,
    operation: &'static str,
    work: impl Future<Output = Result<T, NodeError>>,
) -> Result<T, NodeError> {
    let node_id = node.id();
    let request_id = crate::request_id::current()
        .unwrap_or_else(|| format!("n{node_id}-{}", REQUEST_IDS.fetch_add(1, Ordering::Relaxed)));
    let term = node.raft().metrics().borrow().current_term;
    let span = tracing::info_span!("request", node_id, term, request_id = %request_id, operation);
    let started = Instant::now();
    let result = crate::request_id::scope(request_id, work.instrument(span.clone())).await;
    let elapsed = started.elapsed();
    let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let code = result
        .as_ref()
        .map_or_else(NodeError::code, |_| tonic::Code::Ok);
    let (service, method) = crate::metrics::service_and_method(operation);
    node.metrics()
        .record_request(service, method, code, elapsed);
    let slow = elapsed.as_millis() > u128::from(node.config().slow_request_ms);
    span.in_scope(|| match &result {
        Ok(_) if slow => tracing::info!(latency_us, code = ?code, "slow request served"),
        Ok(_) => tracing::debug!(latency_us, code = ?code, "request served"),
        Err(error)
            if matches!(
                code,
                tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss
            ) =>
        {
            tracing::warn!(latency_us, code = ?code, %error, "request failed")
        }
        Err(error) if slow => {
            tracing::info!(latency_us, code = ?code, %error, "slow request refused")
        }
        Err(error) => tracing::debug!(latency_us, code = ?code, %error, "request refused"),
    });
    result
}
