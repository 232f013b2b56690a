//! The node's listening socket with a cap on open connections (`--connections-max`).
//!
//! Each accepted connection holds a permit of a semaphore until it closes. With every permit
//! taken the node stops accepting: new connections wait in the kernel's listen backlog (and
//! their clients time out and try another node) instead of each taking a task, buffers and a
//! file descriptor. The cap counts clients and peers alike; peers connect once and keep their
//! connections, so a flood of clients cannot take the places they already hold.
//!
//! With TLS, [`with_tls`] runs each connection's handshake on its own task (a slow or silent
//! caller delays nobody else) and hands the server only connections whose handshake
//! succeeded within [`HANDSHAKE_TIMEOUT`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::tls::{refused_certificate, NodeTls, HANDSHAKE_TIMEOUT};

/// How long to wait before accepting again after `accept` failed (for example when the
/// process is out of file descriptors), instead of spinning.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// An accepted connection and its place under the cap, given back when it is dropped.
pub struct CappedConnection {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
}

impl Connected for CappedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for CappedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connections `listener` accepts, at most `connections_max` open at once, with
/// `TCP_NODELAY` set (replies are small and many streams share a connection: Nagle's
/// algorithm would hold each reply until the client's delayed ACK).
pub fn capped(
    listener: TcpListener,
    connections_max: usize,
) -> impl Stream<Item = io::Result<CappedConnection>> + Send + 'static {
    let places = Arc::new(Semaphore::new(connections_max));
    futures::stream::unfold(
        (listener, places, false),
        move |(listener, places, mut at_cap)| async move {
            let place = match Arc::clone(&places).try_acquire_owned() {
                Ok(place) => {
                    at_cap = false;
                    place
                }
                Err(_) => {
                    if !at_cap {
                        tracing::warn!(
                            connections_max,
                            "--connections-max connections are open: new ones wait until one closes"
                        );
                    }
                    at_cap = true;
                    Arc::clone(&places)
                        .acquire_owned()
                        .await
                        .expect("the connection semaphore is never closed")
                }
            };
            let accepted = match listener.accept().await {
                Ok((stream, _peer)) => stream.set_nodelay(true).map(|()| CappedConnection {
                    stream,
                    _place: place,
                }),
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                    Err(error)
                }
            };
            Some((accepted, (listener, places, at_cap)))
        },
    )
}

/// How many connections past their handshake may wait for the server to take them.
const HANDSHAKEN_WAITING_MAX: usize = 64;
/// At most one warning about refused certificates this often; the others are counted into the
/// next one (a client retrying with a wrong certificate would otherwise flood the log).
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(5);

/// Warnings about refused certificates, at most one per [`REFUSAL_WARNING_INTERVAL`].
#[derive(Default)]
struct RefusalWarnings {
    /// When the last warning went out, and how many refusals were not warned of since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl RefusalWarnings {
    fn refused(&self, caller: Option<std::net::SocketAddr>, reason: &dyn std::fmt::Display) {
        let mut state = self
            .state
            .lock()
            .expect("the refusal warnings' lock is never held across a panic");
        let (last, unreported) = &mut *state;
        let now = std::time::Instant::now();
        if last.is_some_and(|last| now.duration_since(last) < REFUSAL_WARNING_INTERVAL) {
            *unreported += 1;
            tracing::debug!(?caller, %reason, "refused a TLS connection");
            return;
        }
        tracing::warn!(?caller, %reason, also_refused_since_last_warning = *unreported, "refused a TLS connection: its certificate is not one the cluster CA signed");
        *last = Some(now);
        *unreported = 0;
    }
}

/// `connections` after a TLS handshake with `tls`'s current material. A handshake that fails
/// or times out drops its connection (and frees its place); one refusing a certificate the
/// cluster CA did not sign is logged as a warning with the caller's address.
pub fn with_tls(
    connections: impl Stream<Item = io::Result<CappedConnection>> + Send + 'static,
    tls: Arc<NodeTls>,
) -> ReceiverStream<io::Result<TlsStream<CappedConnection>>> {
    let (ready, taken) = mpsc::channel(HANDSHAKEN_WAITING_MAX);
    let warnings = Arc::new(RefusalWarnings::default());
    tokio::spawn(async move {
        let mut connections = std::pin::pin!(connections);
        loop {
            let next = tokio::select! {
                next = futures::StreamExt::next(&mut connections) => next,
                // The server stopped taking connections: stop accepting.
                () = ready.closed() => return,
            };
            let connection = match next {
                None => return,
                Some(Err(error)) => {
                    if ready.send(Err(error)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Ok(connection)) => connection,
            };
            let caller = connection.stream.peer_addr().ok();
            let acceptor = tls.acceptor();
            let ready = ready.clone();
            let warnings = Arc::clone(&warnings);
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(connection)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => match refused_certificate(&error) {
                        Some(reason) => warnings.refused(caller, reason),
                        None => tracing::debug!(?caller, %error, "TLS handshake failed"),
                    },
                    Err(_) => tracing::debug!(?caller, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(taken)
}
