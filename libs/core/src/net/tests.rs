use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::*;

async fn listeners() -> Listeners {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    Listeners::plain(l).expect("local address")
}

#[tokio::test]
async fn shutdown_waits_for_open_connections_to_finish() {
    let listeners = listeners().await;
    let addr = listeners.addr();
    let (trigger, shutdown) = crate::shutdown::channel();
    let finished = Arc::new(AtomicUsize::new(0));
    let stop = shutdown.clone();
    let done = finished.clone();
    let handler = move |_stream: Stream, _peer, _tls| {
        let (stop, done) = (stop.clone(), done.clone());
        async move {
            // A connection that closes itself some time after shutdown, as an AMQP connection
            // sending its close does.
            stop.wait().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            done.fetch_add(1, Ordering::SeqCst);
        }
    };
    let server = tokio::spawn(listeners.serve(Accept::default(), shutdown, handler));
    let _client = TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    trigger.trigger();
    tokio::time::timeout(DRAIN_GRACE, server)
        .await
        .expect("serve returns within the drain grace")
        .expect("serve task");
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "serve returned before the open connection finished"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}

#[tokio::test]
async fn clients_beyond_max_connections_wait_until_a_slot_frees() {
    let listeners = listeners().await;
    let addr = listeners.addr();
    let (_trigger, shutdown) = crate::shutdown::channel();
    let served = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let (count, gate) = (served.clone(), release.clone());
    let handler = move |_stream: Stream, _peer, _tls| {
        let (count, gate) = (count.clone(), gate.clone());
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            gate.notified().await;
        }
    };
    let accept = Accept {
        max_connections: Some(1),
        tls_in_handler: false,
    };
    tokio::spawn(listeners.serve(accept, shutdown, handler));
    let _first = TcpStream::connect(addr).await.expect("connect");
    // The second connects (the kernel's listen queue) but is not served while the first holds the slot.
    let _second = TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served.load(Ordering::SeqCst), 1);
    release.notify_one();
    tokio::time::timeout(Duration::from_secs(5), async {
        while served.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the second client is served once the first ends");
}

#[tokio::test]
async fn http_connection_without_a_request_header_is_cut_off() {
    let listeners = listeners().await;
    let addr = listeners.addr();
    let (_trigger, shutdown) = crate::shutdown::channel();
    let stop = shutdown.clone();
    let handler = move |stream: Stream, _peer, _tls| {
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(String::from("ok")))
        });
        serve_http1(stream, service, Duration::from_millis(300), stop.clone())
    };
    tokio::spawn(listeners.serve(Accept::default(), shutdown, handler));

    // A slow client: half a request line, then nothing.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET / HT").await.expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server did not close a silent client");

    // A client that asks gets its answer.
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_string(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// With a plain and a TLS port, the cap counts connections, not listeners: a loop waiting for a client
/// on one port must not hold a slot the other port's client needs.
#[tokio::test]
async fn the_cap_is_shared_by_every_listener_and_an_idle_one_holds_no_slot() {
    let pki = throwaway_acceptor();
    let tls = Some(("TLS", "127.0.0.1:0".parse().expect("addr"), pki));
    let listeners = Listeners::bind("plain", "127.0.0.1:0".parse().expect("addr"), tls)
        .await
        .expect("bind");
    let addr = listeners.addr();
    let (_trigger, shutdown) = crate::shutdown::channel();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let handler = move |_stream: Stream, _peer, _tls| {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            // Held open: each one keeps its slot.
            std::future::pending::<()>().await;
        }
    };
    let accept = Accept {
        max_connections: Some(2),
        tls_in_handler: true,
    };
    tokio::spawn(listeners.serve(accept, shutdown, handler));
    let _first = TcpStream::connect(addr).await.expect("connect");
    let _second = TcpStream::connect(addr).await.expect("connect");
    tokio::time::timeout(Duration::from_secs(5), async {
        while served.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("two clients on the plain port are served under a cap of two");
}

/// A TLS acceptor from a throwaway self-signed certificate (the handshake is never done here).
fn throwaway_acceptor() -> TlsAcceptor {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    crate::tls::acceptor(&cert_path, &key_path, &[]).expect("acceptor")
}

#[tokio::test]
async fn a_connect_storm_larger_than_tokios_default_backlog_is_queued_not_dropped() {
    // Nothing accepts: every handshake must wait in the kernel's accept queue. With tokio's default backlog
    // (1,024) the kernel drops the SYNs past it and those connects stall for a second-long retransmission.
    let listener = bind("storm", "127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    // The kernel caps the backlog at somaxconn (4,096 by default since Linux 5.4).
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(4_096);
    let storm = 1_500.min(somaxconn.saturating_sub(16));
    let mut clients = Vec::new();
    for i in 0..storm {
        let connect = tokio::time::timeout(Duration::from_millis(800), TcpStream::connect(addr));
        match connect.await {
            Ok(Ok(s)) => clients.push(s),
            other => panic!("connect {i} not queued: {other:?}"),
        }
    }
    assert_eq!(clients.len(), storm);
}

#[test]
fn a_probed_port_is_free_and_outside_the_ephemeral_range() {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let v: Vec<u16> = s
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            Some((*v.first()?, *v.get(1)?))
        })
        .unwrap_or((32_768, 60_999));
    for _ in 0..20 {
        let port = probe_free_port().expect("a free port");
        assert!(
            !(low..=high).contains(&port),
            "{port} is in the ephemeral range {low}-{high}"
        );
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("still free");
    }
}
