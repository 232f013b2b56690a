//! The socket front end: the first prototype's TCP protocol (`legacy/SOCKET.md`), served
//! beside gRPC when the node is started with `--socket-port`.
//!
//! One task per connection, a strict request/reply loop as in the prototype. Each
//! connection reads into one bounded buffer (the largest request the format allows, plus a
//! read's worth) and decodes with [`binary`] or [`json`] (`--socket-protocol`, one mode for
//! every connection, as the prototype). Requests map onto the same [`Node`] operations as
//! the gRPC services ([`session`]), run inside [`Node::forwarding`]: the prototype's clients
//! know one address, so a follower forwards their writes to the leader instead of refusing.
//!
//! Bad bytes end the connection without a reply and without touching the state, as the
//! prototype did. How the close looks matters to its tests: when the peer's bytes were all
//! read, an orderly close; when bytes of the bad request remain unread, a reset (the
//! kernel's answer to closing with unread input, which this buffered reader reproduces with
//! `SO_LINGER` 0).
//!
//! Limits: `--socket-connections-max` connections (one more is closed at once); a request
//! that has begun must arrive whole within [`REQUEST_STALL`]; replies must be taken within
//! [`WRITE_TIMEOUT`]; TCP keepalive finds peers that vanished, so their names are freed.
//! Between requests a connection may stay idle, as the prototype's clients expect.

pub mod binary;
pub mod json;
pub mod protocol;
pub mod session;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::SocketProtocol;
use crate::node::Node;
use protocol::{Decoded, Reply};
use session::{After, Registry, Session};

/// How long a request that has begun may take to arrive whole.
pub const REQUEST_STALL: Duration = Duration::from_secs(30);
/// How long a reply may take to be written (the peer reads it).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle time before TCP keepalive probes start, and their interval.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Bytes read at a time.
const READ_CHUNK: usize = 16 * 1024;
/// The largest binary request: `send_message` with 255-byte names and 65535 bytes of content.
const BINARY_REQUEST_MAX: usize = 2 + (1 + 255) * 2 + 2 + 65_535;

static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

/// The wire mode with its limits.
#[derive(Debug, Clone, Copy)]
enum Codec {
    Binary,
    Json { frame_max: usize },
}

impl Codec {
    fn decode(self, buffer: &[u8]) -> Decoded {
        match self {
            Codec::Binary => binary::decode(buffer),
            Codec::Json { frame_max } => json::decode(buffer, frame_max),
        }
    }

    fn encode(self, reply: &Reply, out: &mut Vec<u8>) {
        match self {
            Codec::Binary => binary::encode(reply, out),
            Codec::Json { .. } => json::encode(reply, out),
        }
    }

    /// The most bytes a connection buffers.
    fn buffer_max(self) -> usize {
        match self {
            Codec::Binary => BINARY_REQUEST_MAX + READ_CHUNK,
            Codec::Json { frame_max } => 4 + frame_max + READ_CHUNK,
        }
    }
}

/// Serves the socket protocol on `listener` until the node starts stopping.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let config = node.config();
    let codec = match config.socket_protocol {
        SocketProtocol::Custom => Codec::Binary,
        SocketProtocol::Json => Codec::Json {
            frame_max: config.request_bytes_max,
        },
    };
    let permits = Arc::new(Semaphore::new(config.socket_connections_max));
    let registry = Arc::new(Registry::default());
    let mut stopping = node.stopping();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|stopping| *stopping) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(%error, "the socket front end could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::warn!(%peer, limit = config.socket_connections_max, "socket connections at --socket-connections-max: closed a new one");
            drop(stream);
            continue;
        };
        let connection = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("socket", node_id = node.id(), connection, %peer);
        let session = Session::new(Arc::clone(&node), Arc::clone(&registry), connection);
        let stopping = node.stopping();
        let metrics_node = Arc::clone(&node);
        tokio::spawn(
            async move {
                metrics_node.metrics().socket_connections.inc();
                serve_connection(stream, peer, codec, session, stopping).await;
                metrics_node.metrics().socket_connections.dec();
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The peer closed, or a reply said to close.
    Closed,
    /// Bad bytes: closed without a reply.
    Malformed(String),
    /// Nothing more arrived of a request that had begun, or a reply was not taken.
    Stalled,
    /// The socket failed.
    Failed(std::io::Error),
    /// The node is stopping.
    Stopping,
}

fn keep_alive(stream: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "TCP keepalive could not be set");
    }
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY could not be set");
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    codec: Codec,
    mut session: Session,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    keep_alive(&stream);
    tracing::debug!(%peer, "socket connection opened");
    let mut buffer: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut out = Vec::new();
    let end = loop {
        match codec.decode(&buffer) {
            Decoded::Request(request, used) => {
                buffer.drain(..used.min(buffer.len()));
                let (replies, after) = session.handle(request).await;
                out.clear();
                for reply in &replies {
                    codec.encode(reply, &mut out);
                }
                match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&out)).await {
                    Err(_) => break End::Stalled,
                    Ok(Err(error)) => break End::Failed(error),
                    Ok(Ok(())) => {}
                }
                if after == After::Close {
                    break End::Closed;
                }
            }
            Decoded::Malformed(why, read) => {
                // What the prototype would have left unread when it closed.
                buffer.drain(..read.min(buffer.len()));
                break End::Malformed(why);
            }
            Decoded::Incomplete if buffer.len() >= codec.buffer_max() => {
                break End::Malformed(format!(
                    "{} bytes buffered without a whole request",
                    buffer.len()
                ));
            }
            Decoded::Incomplete => {
                let read = stream.read(&mut chunk);
                let read = tokio::select! {
                    read = async {
                        if buffer.is_empty() {
                            Ok(read.await)
                        } else {
                            tokio::time::timeout(REQUEST_STALL, read).await
                        }
                    } => read,
                    _ = stopping.wait_for(|stopping| *stopping) => break End::Stopping,
                };
                match read {
                    Err(_) => break End::Stalled,
                    Ok(Err(error)) => break End::Failed(error),
                    Ok(Ok(0)) => break End::Closed,
                    Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
        }
    };
    session.close();
    match &end {
        End::Malformed(why) => {
            tracing::info!(%peer, %why, "closed a socket connection on bad input, without a reply");
            if !buffer.is_empty() {
                // Unread input: the peer sees a reset, as from the prototype.
                if let Err(error) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))
                {
                    tracing::debug!(%error, "SO_LINGER could not be set");
                }
            }
        }
        End::Stalled => tracing::info!(%peer, "closed a stalled socket connection"),
        End::Failed(error) => tracing::debug!(%peer, %error, "socket connection failed"),
        End::Closed | End::Stopping => tracing::debug!(%peer, ?end, "socket connection closed"),
    }
    drop(stream);
}
