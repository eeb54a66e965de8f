//! One keep-alive HTTP/1.1 connection, held by one task: no pool, no lock, nothing shared per request.
//!
//! The load generator must not be what limits the rate, so a response is read only as far as its status
//! line; the body is drained (needed to reuse the connection) but never parsed or copied.

use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A client connection to one server.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    /// Connects (with `TCP_NODELAY`, as a latency-sensitive client would) and starts the connection task.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            // Its end (server closed, or we dropped the sender) shows up as an error on the next request.
            let _ = connection.await;
        });
        Ok(Self { sender })
    }

    /// Sends `req` and returns the status, draining the body unread.
    pub async fn status(&mut self, req: Request<Full<Bytes>>) -> Result<StatusCode, hyper::Error> {
        self.sender.ready().await?;
        let response = self.sender.send_request(req).await?;
        let status = response.status();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            frame?;
        }
        Ok(status)
    }

    /// Sends `req` and returns the status and the whole body (for setup and checks, not under load).
    pub async fn fetch(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.sender.ready().await?;
        let response = self.sender.send_request(req).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// What a request to one server always carries.
#[derive(Debug, Clone)]
pub struct Base {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    pub authorization: HeaderValue,
}

impl Base {
    pub fn new(addr: SocketAddr, bearer_token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
            authorization: HeaderValue::from_str(&format!("Bearer {bearer_token}"))
                .context("the token is not a valid header value")?,
        })
    }

    /// A request with `Host`, `Authorization` and, for a body, `Content-Type: application/json`.
    pub fn request(&self, method: Method, uri: Uri, body: Bytes) -> Request<Full<Bytes>> {
        let has_body = !body.is_empty();
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        headers.insert(header::HOST, self.host.clone());
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        if has_body {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        req
    }
}
