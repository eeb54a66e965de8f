//! Request bodies read with a size bound and a deadline, and the response body that carries a command to
//! the device and settles it.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_adapter_core::downstream::Command;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body did not arrive in time")]
    TooSlow,
    #[error("the body could not be read: {0}")]
    Broken(&'static str),
}

/// The declared `content-length`, if any and if it is a number.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads `body` whole, refusing more than `max` bytes and a body that takes longer than `within`, so a
/// device can neither make the adapter buffer without bound nor hold a request open by trickling bytes.
pub async fn read_bounded<B>(body: B, max: usize, within: Duration) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let read = async move {
        let mut body = body;
        let mut first: Option<Bytes> = None;
        let mut more = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| BodyError::Broken("connection failed"))?;
            let Ok(data) = frame.into_data() else {
                // Trailers carry nothing a device message needs.
                continue;
            };
            let so_far = first.as_ref().map_or(0, Bytes::len) + more.len();
            if so_far + data.len() > max {
                return Err(BodyError::TooLarge(max));
            }
            // The usual body is one chunk: keep it without copying.
            match &first {
                None if more.is_empty() => first = Some(data),
                _ => {
                    if let Some(f) = first.take() {
                        more.extend_from_slice(&f);
                    }
                    more.extend_from_slice(&data);
                }
            }
        }
        Ok(first.unwrap_or_else(|| more.freeze()))
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| BodyError::TooSlow)?
}

/// A response body: plain bytes, or a command's payload that settles the command. The command is
/// `accepted` once hyper has taken the payload to write it, and `released` (the application may retry)
/// if the response is dropped before that, e.g. because the device went away.
#[derive(Debug, Default)]
pub struct ResponseBody {
    data: Option<Bytes>,
    command: Option<Command>,
}

impl ResponseBody {
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn text(s: impl Into<Bytes>) -> Self {
        Self {
            data: Some(s.into()),
            command: None,
        }
    }

    /// The command's payload; the command is settled as described on [`ResponseBody`].
    pub fn command(mut command: Command) -> Self {
        let payload = std::mem::take(&mut command.payload);
        Self {
            data: Some(payload),
            command: Some(command),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take().filter(|d| !d.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(c) = this.command.take() {
            c.accept();
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.command.is_none() && self.data.as_ref().is_none_or(Bytes::is_empty)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(c) = self.command.take() {
            if self.data.is_none() {
                c.accept();
            } else {
                c.release();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    /// A request body fed chunk by chunk, as a slow device would send it.
    struct Chunks(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        let (tx, rx) = tokio::sync::mpsc::channel(parts.len().max(1));
        for p in parts {
            let _ = tx.try_send(Bytes::from_static(p));
        }
        Chunks(rx)
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let b = read_bounded(
            Full::new(Bytes::from_static(b"21.5")),
            4,
            Duration::from_secs(1),
        )
        .await
        .expect("fits");
        assert_eq!(&b[..], b"21.5");
        let b = read_bounded(chunks(&[b"ab", b"cd", b"e"]), 5, Duration::from_secs(1))
            .await
            .expect("fits");
        assert_eq!(&b[..], b"abcde");
        let b = read_bounded(Full::new(Bytes::new()), 0, Duration::from_secs(1))
            .await
            .expect("empty");
        assert!(b.is_empty());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        assert_eq!(
            read_bounded(chunks(&[b"ab", b"cd", b"e"]), 4, Duration::from_secs(1)).await,
            Err(BodyError::TooLarge(4))
        );
    }

    #[tokio::test]
    async fn a_trickling_body_times_out() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.try_send(Bytes::from_static(b"a"));
        // `tx` stays alive: the body never ends.
        assert_eq!(
            read_bounded(Chunks(rx), 10, Duration::from_millis(50)).await,
            Err(BodyError::TooSlow)
        );
        drop(tx);
    }

    #[tokio::test]
    async fn response_body_yields_its_bytes() {
        let b = ResponseBody::text("no").collect().await.expect("body");
        assert_eq!(&b.to_bytes()[..], b"no");
        let b = ResponseBody::empty();
        assert!(b.is_end_stream());
        assert_eq!(b.collect().await.expect("body").to_bytes().len(), 0);
    }
}
