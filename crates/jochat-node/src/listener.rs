//! The node's listening socket with a cap on open connections (`--connections-max`).
//!
//! Each accepted connection holds a permit of a semaphore until it closes. With every permit
//! taken the node stops accepting: new connections wait in the kernel's listen backlog (and
//! their clients time out and try another node) instead of each taking a task, buffers and a
//! file descriptor. The cap counts clients and peers alike; peers connect once and keep their
//! connections, so a flood of clients cannot take the places they already hold.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

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
