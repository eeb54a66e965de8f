//! Batching the adapter's frames to the router into one write.
//!
//! fe2o3's connection task flushes the socket after every frame it sends, so each pre-settled telemetry
//! message cost one `writev` to the router, and one wake-up of the router per message (bench/REPORT.md,
//! "Profile of the device path": 17 % of the adapter's time was that syscall). [`Coalesce`] sits between
//! fe2o3 and the socket: a flush only marks the bytes as due, and they are written before the connection
//! next reads (or once [`SOFT_LIMIT`] bytes are waiting, or at shutdown). fe2o3's connection task polls
//! the socket for reading in every turn of its loop, that is after every frame, so a read alone would
//! still write frame by frame. Before writing, the read therefore yields once to the runtime
//! ([`tokio::task::yield_now`]: the task runs again when the worker has no other task ready): the MQTT
//! sessions that are ready run first and queue their frames, and all of them go out in one write. Under
//! load that is one write, and one wake-up of the router, per scheduler round instead of per message
//! (measured: bench/REPORT.md, "Where the device path's regression comes from"); at rest the worker is
//! idle, so the yield costs one more poll of the task and the frame goes at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held back at most: past it, a flush writes them at once.
pub(crate) const SOFT_LIMIT: usize = 64 * 1024;

/// An I/O stream whose flushes are deferred to its next read (see the module's doc).
pub(crate) struct Coalesce<S> {
    inner: S,
    /// Written by fe2o3, not yet by the socket; `buf[written..]` is still due.
    buf: Vec<u8>,
    written: usize,
    /// The yield before what is due is written (see the module's doc); `None` once it has resolved.
    yielding: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Coalesce<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalesce")
            .field("inner", &self.inner)
            .field("due", &(self.buf.len() - self.written))
            .field("yielding", &self.yielding.is_some())
            .finish()
    }
}

impl<S> Coalesce<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
            yielding: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Writes what is due; ready once all of it is written and the inner stream flushed.
    fn poll_write_due(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        // TLS: the records are pushed out here.
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() >= SOFT_LIMIT {
            ready!(this.poll_write_due(cx))?;
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.len() >= SOFT_LIMIT {
            return this.poll_write_due(cx);
        }
        // Due before the next read.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_due(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buf.is_empty() {
            // Once per batch: let the ready sessions queue their frames first.
            let yielding = this
                .yielding
                .get_or_insert_with(|| Box::pin(tokio::task::yield_now()));
            if yielding.as_mut().poll(cx).is_ready() {
                this.yielding = None;
                // What is due goes first; if the socket cannot take it now, the task is woken when
                // it can (the same task polls for reading), and the read is tried meanwhile.
                if let Poll::Ready(Err(e)) = this.poll_write_due(cx) {
                    return Poll::Ready(Err(e));
                }
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

#[cfg(test)]
mod tests;
