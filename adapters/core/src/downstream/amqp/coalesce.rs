//! Batching the adapter's frames to the router into one write.
//!
//! fe2o3's connection task flushes the socket after every frame it sends, so each pre-settled telemetry
//! message cost one `writev` to the router, and one wake-up of the router per message (bench/REPORT.md,
//! "Profile of the device path": 17 % of the adapter's time was that syscall). [`Coalesce`] sits between
//! fe2o3 and the socket: a flush only marks the bytes as due, and they are written before the connection
//! next reads (or once [`SOFT_LIMIT`] bytes are waiting, or at shutdown). fe2o3's connection task polls
//! the socket for reading in every turn of its loop in which nothing else is ready, that is before it
//! sleeps, so nothing waits longer than the frames queued behind it: under load, all the frames the
//! sessions queued while the task was busy go out in one write; at rest, each frame goes at once, as
//! before.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held back at most: past it, a flush writes them at once.
pub(crate) const SOFT_LIMIT: usize = 64 * 1024;

/// An I/O stream whose flushes are deferred to its next read (see the module's doc).
#[derive(Debug)]
pub(crate) struct Coalesce<S> {
    inner: S,
    /// Written by fe2o3, not yet by the socket; `buf[written..]` is still due.
    buf: Vec<u8>,
    written: usize,
}

impl<S> Coalesce<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
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
        // What is due goes first; if the socket cannot take it now, the task is woken when it can
        // (the same task polls for reading), and the read is tried meanwhile.
        if let Poll::Ready(Err(e)) = this.poll_write_due(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

#[cfg(test)]
mod tests;
