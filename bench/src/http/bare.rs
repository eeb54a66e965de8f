//! The ceiling for B8: a bare hyper 1 HTTP/1.1 server that reads each request's body and answers 202 with
//! no body, nothing else (no routing, no authentication, no downstream). Run as its own process
//! (`ferry-bench bare-hyper --bind ADDR`) so it can be pinned like the adapter.

use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Serves until the process is killed.
pub async fn serve(bind: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, hyper::Error> {
    // Read the body as the adapter must (it forwards it); its bytes are not looked at.
    let _ = req.into_body().collect().await?;
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = StatusCode::ACCEPTED;
    Ok(resp)
}
