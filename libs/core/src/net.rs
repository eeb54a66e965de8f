//! Accepting connections for every Ferry listener: plain TCP or TLS (terminated before the first protocol
//! byte), with TCP_NODELAY, a bounded TLS handshake, back-off when accept fails (file descriptors
//! exhausted), an optional cap on connections served at once, and at shutdown an end to accepting and
//! one drain grace ([`DRAIN_GRACE`]) for the connections still open. Each component supplies what to do
//! with a connection; the HTTP servers (registry, HTTP adapter, admin) serve theirs with
//! [`serve_http1`], which carries hyper's header-read timer.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use futures_util::FutureExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::shutdown::Shutdown;

/// How long a client has to finish the TLS handshake, unless the component says otherwise.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long, after shutdown, the connections still open get to finish what they are doing (every
/// connection watches the same shutdown and closes itself: an MQTT session sends its DISCONNECT, an
/// AMQP connection its close, an HTTP connection finishes the request in progress). The same for every
/// component, so that a pod's `terminationGracePeriodSeconds` has one figure to cover.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// TLS for a listener: the acceptor and how long a handshake may take.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// TLS with the default handshake bound.
    pub fn new(acceptor: TlsAcceptor) -> Self {
        Self {
            acceptor,
            handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
        }
    }
}

/// An accepted connection, plain or TLS.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A listener that could not be bound, named as the component's settings name it.
#[derive(Debug, thiserror::Error)]
#[error("binding {what} to {addr}: {source}")]
pub struct BindError {
    what: String,
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// The accept queue asked of the kernel (which caps it at `net.core.somaxconn`). Devices reconnect in
/// storms after an outage; with tokio's default of 1,024 the queue overflows while the accept loop catches
/// up, and the kernel then drops the handshakes' last ACKs, so those clients wait seconds for
/// retransmissions.
pub const LISTEN_BACKLOG: u32 = 4_096;

/// Binds `addr` with [`LISTEN_BACKLOG`]; `what` names the listener in the error ("MQTT", "HTTPS", "admin",
/// ...).
pub async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted component rebinds at once past TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|source| BindError {
        what: what.to_owned(),
        addr,
        source,
    })
}

/// A TCP port of 127.0.0.1 that was free a moment ago, for a process that must be told its port before it
/// starts (`ferry up --cluster`'s admin listeners, tests). It is taken outside the kernel's range of
/// ephemeral ports (`net.ipv4.ip_local_port_range`), at a random place: a port the kernel handed out for
/// `bind(0)` and that was then released goes back to that range, where any outgoing connection of any
/// process can take it before its new owner binds it (seen as "Address already in use", or worse, as
/// another process answering on it).
pub fn probe_free_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999));
    let (from, to) = if low > 12_000 {
        (10_000, low)
    } else if high < 63_000 {
        (high + 1, u16::MAX)
    } else {
        (0, 0)
    };
    let span = u64::from(to.saturating_sub(from));
    if span > 0 {
        let start = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            % span;
        for k in 0..span {
            let port = u16::try_from(u64::from(from) + (start + k) % span).unwrap_or(from);
            if std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    // No room outside the ephemeral range: the kernel's choice.
    Ok(
        std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port(),
    )
}

/// One component's listeners for its peers: plain, and TLS when it has a certificate (on a port of its
/// own, or instead of plain on the one port).
pub struct Listeners {
    listeners: Vec<(TcpListener, Option<TlsAcceptor>)>,
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("addr", &self.addr)
            .field("tls_addr", &self.tls_addr)
            .finish_non_exhaustive()
    }
}

/// How [`Listeners::serve`] accepts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accept {
    /// Connections served at once over all listeners; while all are taken nothing is accepted, so
    /// further clients wait in the kernel's listen queue (as with nginx's `worker_connections`) instead
    /// of being cut off. `None`: the component limits connections itself.
    pub max_connections: Option<usize>,
    /// The handler does the TLS handshake itself (it is handed the plain stream and the acceptor), so
    /// that the handshake counts among its own limits; otherwise the accept loop does it, bounded by
    /// [`TLS_HANDSHAKE_TIMEOUT`], before the handler sees the stream.
    pub tls_in_handler: bool,
}

pub(crate) fn local_addr(
    what: &str,
    addr: SocketAddr,
    l: &TcpListener,
) -> Result<SocketAddr, BindError> {
    l.local_addr().map_err(|source| BindError {
        what: what.to_owned(),
        addr,
        source,
    })
}

impl Listeners {
    /// Binds the plain listener (`what` names it in errors) and, with `tls`, a TLS one on its own port
    /// (`tls_what`).
    pub async fn bind(
        what: &str,
        addr: SocketAddr,
        tls: Option<(&str, SocketAddr, TlsAcceptor)>,
    ) -> Result<Self, BindError> {
        let mut me = Self::bind_one(what, addr, None).await?;
        if let Some((tls_what, tls_bind, acceptor)) = tls {
            let l = self::bind(tls_what, tls_bind).await?;
            me.tls_addr = Some(local_addr(tls_what, tls_bind, &l)?);
            me.listeners.push((l, Some(acceptor)));
        }
        Ok(me)
    }

    /// Binds one listener, speaking TLS when `tls` is given (the registry's API: HTTP or HTTPS on its
    /// one port).
    pub async fn bind_one(
        what: &str,
        addr: SocketAddr,
        tls: Option<TlsAcceptor>,
    ) -> Result<Self, BindError> {
        let l = self::bind(what, addr).await?;
        Ok(Self {
            addr: local_addr(what, addr, &l)?,
            listeners: vec![(l, tls)],
            tls_addr: None,
        })
    }

    /// One plain listener already bound (the admin server's, a test's).
    pub fn plain(listener: TcpListener) -> std::io::Result<Self> {
        Ok(Self {
            addr: listener.local_addr()?,
            listeners: vec![(listener, None)],
            tls_addr: None,
        })
    }

    /// Where the first listener (the plain one, unless bound by [`Self::bind_one`] with TLS) listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the TLS listener of [`Self::bind`] listens, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Accepts on every listener until `shutdown`, each connection handled by `handler` in its own
    /// task (`handler`'s third argument is the TLS acceptor when [`Accept::tls_in_handler`] is set and
    /// the connection came in on a TLS listener); then stops accepting and waits up to
    /// [`DRAIN_GRACE`] for the handlers to finish.
    pub async fn serve<F, Fut>(self, accept: Accept, shutdown: Shutdown, handler: F)
    where
        F: Fn(Stream, SocketAddr, Option<TlsAcceptor>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Every handler task holds a clone of `open`; the channel closes when the last one ends.
        let (open, mut all_closed) = mpsc::channel::<()>(1);
        let slots = accept.max_connections.map(|n| Arc::new(Semaphore::new(n)));
        Loop {
            listeners: self.listeners,
            tls_in_handler: accept.tls_in_handler,
            slots,
            open: open.clone(),
            shutdown: shutdown.clone(),
        }
        .run(handler)
        .await;
        drop(open);
        if tokio::time::timeout(DRAIN_GRACE, all_closed.recv())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the drain grace period; closing them");
        }
    }
}

/// The accept loop over all of a component's listeners. One loop rather than one per listener, so that
/// a slot is taken only when a client is about to be accepted on any of them: a loop per listener would
/// each hold a slot while waiting for its next client, and a cap of n would serve n - 1 on one port.
struct Loop {
    listeners: Vec<(TcpListener, Option<TlsAcceptor>)>,
    tls_in_handler: bool,
    slots: Option<Arc<Semaphore>>,
    open: mpsc::Sender<()>,
    shutdown: Shutdown,
}

impl Loop {
    /// The next connection on any listener, with the index of the listener it came in on.
    async fn accept_any(&self) -> (usize, std::io::Result<(TcpStream, SocketAddr)>) {
        std::future::poll_fn(|cx| {
            for (i, (listener, _)) in self.listeners.iter().enumerate() {
                if let Poll::Ready(r) = listener.poll_accept(cx) {
                    return Poll::Ready((i, r));
                }
            }
            Poll::Pending
        })
        .await
    }

    async fn run<F, Fut>(self, handler: F)
    where
        F: Fn(Stream, SocketAddr, Option<TlsAcceptor>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = self.shutdown.clone().wait();
        tokio::pin!(stop);
        loop {
            // A slot first: while all are taken, nothing is accepted and new clients queue in the
            // kernel.
            let slot = match &self.slots {
                None => None,
                Some(slots) => tokio::select! {
                    () = &mut stop => return,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(s) => Some(s),
                        Err(_) => return, // the semaphore is never closed
                    },
                },
            };
            let (index, (stream, peer)) = tokio::select! {
                () = &mut stop => return,
                (index, r) = self.accept_any() => match r {
                    Ok(a) => (index, a),
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let tls = self.listeners.get(index).and_then(|(_, tls)| tls.clone());
            // Held until the connection ends.
            let held = (slot, self.open.clone());
            let acceptor = match tls {
                Some(acceptor) if !self.tls_in_handler => acceptor,
                tls => {
                    // The handler's future is the task's, made here: an async block around it would
                    // keep what it captured (the stream, the address) and the handler's future twice,
                    // moved out of the capture to be awaited, for the life of the connection (MQTT B6).
                    let connection = handler(Stream::Plain(stream), peer, tls);
                    tokio::spawn(connection.map(move |()| drop(held)));
                    continue;
                }
            };
            tokio::spawn(async move {
                // A future is as large as its largest state: the handshake is boxed, and its outcome
                // is boxed before the connection is served, so that no connection's task keeps a
                // handshake's room (MQTT B6: 3.4 KiB each).
                let handshake = Box::pin(acceptor.accept(stream));
                let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                handler(Stream::Tls(tls), peer, None).await;
                drop(held);
            });
        }
    }
}

/// Serves HTTP/1.1 on one connection until the client closes it, or it sends no complete request
/// header within `header_read_timeout` (hyper's timer, which also runs while a keep-alive connection
/// waits for its next request, so it is the idle timeout as well), or `shutdown` (which lets the
/// request in progress finish). HTTP/1.1 only: hyper-util's `auto` builder would first wait for the
/// HTTP/2 preface without any timer, so a client sending nothing would hold its connection forever.
pub async fn serve_http1<IO, S, B>(
    io: IO,
    service: S,
    header_read_timeout: Duration,
    shutdown: Shutdown,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
                return;
            }
            () = &mut stop, if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests;
