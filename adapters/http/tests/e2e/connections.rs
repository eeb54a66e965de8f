//! Many idle keep-alive connections and malformed request heads: the adapter keeps serving others.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` and reads one response head (and body up to `Content-Length`); returns the status.
async fn exchange(s: &mut tokio::net::TcpStream, request: &[u8]) -> Option<u16> {
    s.write_all(request).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf);
    text.lines().next()?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_idle_keep_alive_connections_do_not_hold_up_a_device() {
    const IDLE: usize = 3_000;
    let p = Platform::start().await;
    let addr = p.adapter.addr;
    // Each connection makes one quick request (405: the route is checked before anything else) and then
    // stays open, idle, as a keep-alive client's connection does.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IDLE {
        tasks.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let status = exchange(&mut s, b"GET /telemetry HTTP/1.1\r\nhost: x\r\n\r\n").await;
            assert_eq!(status, Some(405));
            s
        });
    }
    let mut idle = Vec::with_capacity(IDLE);
    while let Some(s) = tasks.join_next().await {
        idle.push(s.expect("an idle connection"));
    }
    assert_eq!(idle.len(), IDLE);
    let c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let r = curl(&[
        "-u",
        D1,
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "still served",
        &p.url("/telemetry"),
    ]);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(
        c.next(Duration::from_secs(5)).expect("arrives")["body"],
        "still served"
    );
    // The idle connections are still open and answer their next request.
    for s in idle.iter_mut().step_by(500) {
        let status = exchange(s, b"GET /event HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert_eq!(status, Some(405));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_request_heads_get_400_and_others_are_unaffected() {
    let p = Platform::start().await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let heads: [&[u8]; 5] = [
        // A header line without a colon.
        b"POST /telemetry HTTP/1.1\r\nhost: x\r\nthis is no header\r\n\r\n",
        // A space in a header name.
        b"POST /telemetry HTTP/1.1\r\nhost: x\r\nbad name: v\r\n\r\n",
        // A control character in a value.
        b"POST /telemetry HTTP/1.1\r\nhost: x\r\nx-v: a\x01b\r\n\r\n",
        // Not HTTP at all.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        // Two different content lengths.
        b"POST /telemetry HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
    ];
    for head in heads {
        let mut s = tokio::net::TcpStream::connect(p.adapter.addr)
            .await
            .expect("connect");
        let status = exchange(&mut s, head).await;
        assert_eq!(status, Some(400), "{:?}", String::from_utf8_lossy(head));
        // And the connection is closed.
        let mut rest = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    // A header block over hyper's limit: 431 or a close, never a hang.
    let mut s = tokio::net::TcpStream::connect(p.adapter.addr)
        .await
        .expect("connect");
    let mut big = b"POST /telemetry HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..20_000 {
        big.extend_from_slice(format!("x-filler-{i}: {}\r\n", "v".repeat(30)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let status = exchange(&mut s, &big).await;
    assert!(matches!(status, None | Some(431) | Some(400)), "{status:?}");
    let r = curl(&[
        "-u",
        D1,
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "fine",
        &p.url("/telemetry"),
    ]);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(
        c.next(Duration::from_secs(5)).expect("arrives")["body"],
        "fine"
    );
}
