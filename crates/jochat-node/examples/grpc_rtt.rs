//! What one round trip between two processes costs on this machine, from the floor up: a
//! 50-byte TCP ping-pong on loopback, then one unary gRPC call (the node's health check)
//! through tonic's `Channel` and through a bare HTTP/2 connection (hyper's, without the
//! `Channel`'s buffer task), from a multi-threaded or a current-thread Tokio runtime.
//!
//! ```sh
//! cargo build --release
//! target/release/jochat-node --server-id 1 --port 5555 --db-file /tmp/rtt/node-1.db &
//! cargo run --release -p jochat-node --example grpc_rtt -- 127.0.0.1:5555          # multi-threaded
//! cargo run --release -p jochat-node --example grpc_rtt -- 127.0.0.1:5555 current  # current-thread
//! ```
//!
//! Every write of JoChat crosses four such calls on its critical path (client to leader,
//! leader to follower and back, leader to client); docs/performance.md ("What limits the
//! next step") holds the figures.

use std::future::Future;
use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::codegen::{Body, Bytes, StdError};
use tonic_health::pb::health_client::HealthClient;

/// Round trips per measurement.
const ROUND_TRIPS: usize = 3_000;

/// A bare HTTP/2 connection as a tower service, for tonic's generated client.
#[derive(Clone)]
struct BareHttp2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for BareHttp2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// Prints the median and 99th percentile of `took`.
fn report(what: &str, mut took: Vec<Duration>) {
    took.sort();
    let at = |q: usize| took[(took.len() * q / 100).min(took.len() - 1)].as_micros();
    println!("{what}: p50 {} µs, p99 {} µs", at(50), at(99));
}

/// Blocking 50-byte ping-pongs with an echo thread over loopback TCP (no runtime at all).
fn tcp_floor() -> anyhow::Result<Vec<Duration>> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut peer, _) = listener.accept()?;
        peer.set_nodelay(true)?;
        let mut buffer = [0u8; 50];
        loop {
            match peer.read_exact(&mut buffer) {
                Ok(()) => peer.write_all(&buffer)?,
                // The client hung up: done.
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(error) => return Err(error),
            }
        }
    });
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let mut buffer = [0u8; 50];
    let mut took = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let began = Instant::now();
        stream.write_all(&buffer)?;
        stream.read_exact(&mut buffer)?;
        took.push(began.elapsed());
    }
    drop(stream);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(took)
}

/// [`ROUND_TRIPS`] health checks through `client`, one after the other.
async fn health_checks<T>(mut client: HealthClient<T>) -> Result<Vec<Duration>, tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let mut took = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let began = Instant::now();
        client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        took.push(began.elapsed());
    }
    Ok(took)
}

async fn grpc(address: &str) -> anyhow::Result<()> {
    // Each measurement runs in a spawned task, as a server's handlers and a client's callers
    // do (the thread of `block_on` is not one of a multi-threaded runtime's workers).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect()
        .await?;
    let through_channel = tokio::spawn(health_checks(HealthClient::new(channel)));
    report("gRPC through tonic's Channel", through_channel.await??);

    let tcp = tokio::net::TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await?;
    tokio::spawn(connection);
    let origin: http::Uri = format!("http://{address}").parse()?;
    let bare = tokio::spawn(health_checks(HealthClient::with_origin(
        BareHttp2(sender),
        origin,
    )));
    report("gRPC over a bare HTTP/2 connection", bare.await??);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("give a running node's address, e.g. 127.0.0.1:5555"))?;
    let current = match args.next().as_deref() {
        None | Some("multi") => false,
        Some("current") => true,
        Some(other) => anyhow::bail!("runtime: `multi` or `current`, not `{other}`"),
    };
    report("TCP ping-pong, blocking threads", tcp_floor()?);
    let runtime = if current {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    println!(
        "client runtime: {}",
        if current {
            "current-thread"
        } else {
            "multi-threaded"
        }
    );
    runtime.block_on(grpc(&address))
}
