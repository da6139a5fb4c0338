//! Accepting connections under the limits, and IO that the limits can close.

use super::{Connection, Connections};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// How long accepting pauses after an error such as "too many open files" (retrying at once
/// would spin on the error).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A listener that admits connections under the shared limits.
pub(crate) struct Admitting {
    listener: TcpListener,
    connections: Arc<Connections>,
    paused: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Admitting {
    pub(crate) fn new(listener: TcpListener, connections: Arc<Connections>) -> Admitting {
        Admitting {
            listener,
            connections,
            paused: None,
        }
    }

    /// The next admitted connection. Connections over the limit are closed at once; accept
    /// errors are logged and pause accepting briefly.
    pub(crate) fn poll_admit(&mut self, cx: &mut Context<'_>) -> Poll<(Tracked, SocketAddr)> {
        loop {
            if let Some(pause) = &mut self.paused {
                ready!(pause.as_mut().poll(cx));
                self.paused = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((stream, peer)) => {
                    // Without it small replies wait on delayed ACKs (~40 ms tail spikes).
                    let _ = stream.set_nodelay(true);
                    if let Some(connection) = self.connections.admit(peer) {
                        let tracked = Tracked::new(stream, connection, self.connections.clone());
                        return Poll::Ready((tracked, peer));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed; pausing accepts");
                    self.paused = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE)));
                }
            }
        }
    }
}

/// The gRPC port's incoming connections (tonic takes a stream of them).
impl futures_core::Stream for Admitting {
    type Item = io::Result<Tracked>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .poll_admit(cx)
            .map(|(tracked, _)| Some(Ok(tracked)))
    }
}

/// The HTTP port's listener without TLS.
impl axum::serve::Listener for Admitting {
    type Io = Tracked;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Tracked, SocketAddr) {
        std::future::poll_fn(|cx| self.poll_admit(cx)).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// The HTTP port's listener under TLS (the handshakes run concurrently).
impl tls_listener::AsyncAccept for Admitting {
    type Connection = Tracked;
    type Address = SocketAddr;
    type Error = io::Error;

    fn poll_accept(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Tracked, SocketAddr)>> {
        self.get_mut().poll_admit(cx).map(Ok)
    }
}

impl tls_listener::AsyncListener for Admitting {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Who is on the other end of a request's connection: its address, and the connection's
/// place in the limits. Both ports put it in each request's extensions.
#[derive(Clone)]
pub(crate) struct Peer(pub(crate) Arc<Connection>);

impl Peer {
    /// The peer's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.0.peer
    }
}

/// A connection's IO: it fails once the connection is closed by the limits, which makes the
/// protocol stack above drop the connection.
pub(crate) struct Tracked {
    stream: TcpStream,
    connection: Arc<Connection>,
    connections: Arc<Connections>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Tracked {
    fn new(stream: TcpStream, connection: Arc<Connection>, connections: Arc<Connections>) -> Self {
        let closed = Box::pin(connection.closing.clone().cancelled_owned());
        Tracked {
            stream,
            connection,
            connections,
            closed,
        }
    }

    pub(crate) fn peer(&self) -> Peer {
        Peer(self.connection.clone())
    }

    /// An error once the connection is closed (and a wake-up when it is).
    fn check_open(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.closed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection was closed by the server's connection limits",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.connections.remove(self.connection.id);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_open(cx)?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_open(cx)?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_open(cx)?;
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_open(cx)?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The gRPC port's connection info (tonic puts it in each request's extensions).
impl tonic::transport::server::Connected for Tracked {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer()
    }
}

/// The HTTP port's connection info, without TLS.
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Admitting>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Admitting>) -> Peer {
        stream.io().peer()
    }
}

/// The HTTP port's listener under TLS.
pub(crate) type TlsAdmitting = tls_listener::TlsListener<Admitting, tokio_rustls::TlsAcceptor>;

/// The HTTP port's connection info, under TLS.
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsAdmitting>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsAdmitting>) -> Peer {
        stream.io().get_ref().0.peer()
    }
}
