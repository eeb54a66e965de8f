//! What one HTTP client can make the registry hold: a header that never ends, a body that never ends, more
//! connections than the cap. Raw TCP, so that the client can misbehave.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::*;

async fn registry(configure: impl FnOnce(&mut ferry_registry::Config)) -> Registry {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    configure(&mut config);
    Registry::with_config(config, dir).await
}

async fn connect(r: &Registry) -> TcpStream {
    let addr = r.url.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("connect")
}

/// Everything the server sends until it closes, or `None` if it neither closes nor sends within `wait`.
async fn read_to_close(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

/// Whether the server sends anything within `wait`.
async fn answers_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

const LIVE: &[u8] = b"GET /live HTTP/1.1\r\nhost: registry\r\nconnection: close\r\n\r\n";

#[tokio::test]
async fn half_a_request_header_is_cut_off_after_the_header_timeout() {
    let r = registry(|c| c.header_read_timeout_secs = 1).await;
    let mut silent = connect(&r).await;
    let mut slow = connect(&r).await;
    slow.write_all(b"GET /live HTTP/1.1\r\nhost: regis")
        .await
        .expect("write");
    for (what, stream) in [("half a header", &mut slow), ("nothing", &mut silent)] {
        let closed = read_to_close(stream, Duration::from_secs(10)).await;
        assert!(
            closed.is_some(),
            "a client that sent {what} is still connected after 10 s (header timeout 1 s)"
        );
    }
    // A client that sends its request in time is still served.
    let mut ok = connect(&r).await;
    ok.write_all(LIVE).await.expect("write");
    let answer = read_to_close(&mut ok, Duration::from_secs(10))
        .await
        .expect("answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    r.stop().await;
}

#[tokio::test]
async fn slow_request_body_gets_503_after_the_request_timeout() {
    let r = registry(|c| c.request_timeout_secs = 1).await;
    let mut slow = connect(&r).await;
    slow.write_all(
        format!(
            "POST /v1/tenants/t1 HTTP/1.1\r\nhost: registry\r\nauthorization: Bearer {ADMIN}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"ena"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let answer = read_to_close(&mut slow, Duration::from_secs(10))
        .await
        .expect("answered and closed within 10 s (request timeout 1 s)");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#"{"error":"#), "{answer}");
    assert_eq!(
        r.get("/v1/tenants/t1").await.status,
        reqwest::StatusCode::NOT_FOUND,
        "nothing was created"
    );
    r.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_while_those_within_it_are_served() {
    let r = registry(|c| c.max_connections = 2).await;
    // One slot held by a client that stalls in its header (the header timer is 30 s here).
    let mut stalled = connect(&r).await;
    stalled
        .write_all(b"GET /live HTTP/1.1\r\n")
        .await
        .expect("write");
    // Within the cap: served.
    let mut within = connect(&r).await;
    within.write_all(LIVE).await.expect("write");
    let answer = read_to_close(&mut within, Duration::from_secs(10))
        .await
        .expect("answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(within);

    // The second slot taken too (give the server time to free the first request's slot and accept it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = connect(&r).await;
    second
        .write_all(b"GET /live HTTP/1.1\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Beyond the cap: the connection waits in the listen queue, its request unanswered.
    let mut beyond = connect(&r).await;
    beyond.write_all(LIVE).await.expect("write");
    assert!(
        !answers_within(&mut beyond, Duration::from_millis(500)).await,
        "a third connection was served with max_connections = 2"
    );

    // A slot frees: the waiting client is served.
    drop(second);
    let answer = read_to_close(&mut beyond, Duration::from_secs(10))
        .await
        .expect("answered once a slot was free");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(stalled);
    r.stop().await;
}
