//! The `ferry-router` binary: crash safety under `kill -9`, SIGTERM, configuration errors.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::types::messaging::{Body, Outcome};
use fe2o3_amqp::types::primitives::Value;

use crate::harness::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn accepted_events_survive_kill_9_of_the_router() {
    const PRODUCERS: usize = 4;
    let mut p = Platform::start().await;
    p.stop_router().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut router = RouterProcess::start(&p, data.path()).await;
    p.amqp = router.addr;
    let token = p.assertion("t1", "d1").await;

    // Producers send unsettled events one after another, each waiting for its outcome; several of them so
    // that some events are in flight (stored or not) at the moment of the kill.
    let killed = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for k in 0..PRODUCERS {
        let killed = killed.clone();
        let mut adapter = p.adapter().await;
        let mut tx = adapter.sender("event/t1").await;
        let token = token.clone();
        producers.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut refused = Vec::new();
            for i in 0u64.. {
                let body = format!("p{k}-{i}");
                let sent = tokio::time::timeout(
                    Duration::from_secs(5),
                    tx.send(device_message("d1", Some(&token), body.as_bytes())),
                )
                .await;
                match sent {
                    Ok(Ok(Outcome::Accepted(_))) => accepted.push(body),
                    Ok(Ok(other)) => refused.push(format!("{body}: {other:?}")),
                    // The router is gone. (fe2o3 may also leave a send that was in flight waiting forever.)
                    Ok(Err(_)) => break,
                    Err(_) if killed.load(Ordering::SeqCst) => break,
                    Err(_) => panic!("{body}: no outcome within 5 s from a live router"),
                }
            }
            drop(adapter);
            (accepted, refused)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    killed.store(true, Ordering::SeqCst);
    router.kill9().await;
    let mut accepted = Vec::new();
    for producer in producers {
        let (a, refused) = producer.await.expect("producer task");
        assert!(
            refused.is_empty(),
            "outcomes other than accepted: {refused:?}"
        );
        accepted.extend(a);
    }
    assert!(
        accepted.len() >= 10,
        "too few events accepted in 1 s to tell anything: {}",
        accepted.len()
    );

    let router = RouterProcess::start(&p, data.path()).await;
    p.amqp = router.addr;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("event/t1", 500).await;
    let mut received: HashMap<String, usize> = HashMap::new();
    while let Some(d) = recv_within(&mut rx, 3000).await {
        let body = String::from_utf8(body_bytes(&d)).expect("utf-8 body");
        *received.entry(body).or_default() += 1;
        rx.accept(&d).await.expect("accept");
    }
    let accepted_set: HashSet<&String> = accepted.iter().collect();
    let lost: Vec<&&String> = accepted_set
        .iter()
        .filter(|b| !received.contains_key(**b))
        .collect();
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    let unconfirmed: Vec<&String> = received
        .keys()
        .filter(|b| !accepted_set.contains(b))
        .collect();
    eprintln!(
        "kill -9: {} accepted, {} distinct received ({} deliveries), {} duplicate deliveries, \
         {} received without an accepted outcome (in flight at the kill): {unconfirmed:?}",
        accepted.len(),
        received.len(),
        received.values().sum::<usize>(),
        duplicates,
        unconfirmed.len(),
    );
    assert_eq!(accepted_set.len(), accepted.len(), "bodies are unique");
    assert!(
        lost.is_empty(),
        "{} accepted events lost: {lost:?}",
        lost.len()
    );
    assert!(
        unconfirmed.len() <= PRODUCERS,
        "at most one event per producer was in flight: {unconfirmed:?}"
    );
    app.close().await;
}

/// Runs the binary to its end (at most 20 s): exit code, stdout, stderr.
async fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let data = tempfile::tempdir().expect("tempdir");
    let mut cmd = router_command();
    cmd.args(args)
        // Should validation let a bad configuration through, the router must not take a real port.
        .env("FERRY_ROUTER_BIND", "127.0.0.1:0")
        .env("FERRY_ROUTER_DATA_DIR", data.path())
        .envs(env.iter().copied());
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("ferry-router {args:?} {env:?} still running after 20 s"))
        .expect("ferry-router runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn router_binary_rejects_bad_config_with_exit_64() {
    let (code, _, err) = run_binary(&[], &[("FERRY_ROUTER_BOGUS", "1")]).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("bogus"), "stderr names the field: {err}");

    let (code, _, err) = run_binary(
        &[],
        &[("FERRY_ROUTER_TLS__CERT_PATH", "/nonexistent/cert.pem")],
    )
    .await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("tls"), "stderr names the section: {err}");

    let (code, _, err) = run_binary(&[], &[("FERRY_ROUTER_TLS__CERT_PAHT", "/x.pem")]).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("cert_paht"),
        "stderr names the nested field: {err}"
    );

    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        file.path(),
        "idle_timeout_secs: 5\nmax_event_per_tenant: 3\n",
    )
    .expect("write");
    let path = file.path().to_str().expect("utf-8 path");
    let (code, _, err) = run_binary(&["--config", path], &[]).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("max_event_per_tenant"),
        "stderr names the field of the file: {err}"
    );

    let (code, _, err) = run_binary(&[], &[("FERRY_ROUTER_REGISTRY_URL", "ftp://registry")]).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("registry_url"), "{err}");

    let (code, out, err) = run_binary(&["--print-default-config"], &[]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("bind: 0.0.0.0:15672"), "{out}");
    assert!(out.contains("tls_bind: 0.0.0.0:15671"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_exits_cleanly() {
    let mut p = Platform::start().await;
    p.stop_router().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut router = RouterProcess::start(&p, data.path()).await;
    p.amqp = router.addr;

    // A consumer that works, and a raw connection that shows what the router writes before it goes.
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 10).await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("telemetry/t1").await;
    let token = p.assertion("t1", "d1").await;
    let send = tokio::spawn(async move {
        tx.send(device_message("d1", Some(&token), b"before"))
            .await
            .expect("send")
    });
    let d = recv_within(&mut rx, 2000).await.expect("telemetry flows");
    assert_eq!(body_bytes(&d), b"before");
    rx.accept(&d).await.expect("accept");
    let outcome = send.await.expect("join");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let mut raw = Raw::login(router.addr, "app1", "pw1").await;
    raw.open().await;

    let started = std::time::Instant::now();
    router.sigterm().await;
    let status = router
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM:\n{}", router.stderr()));
    assert!(status.success(), "{status}:\n{}", router.stderr());
    eprintln!("exited {:?} after SIGTERM", started.elapsed());

    let (frames, end) = raw.frames_until_closed(Duration::from_secs(2)).await;
    assert_eq!(end, End::Closed);
    assert_eq!(
        close_condition(&frames),
        Some(Some("amqp:connection:forced".into())),
        "a Close before the socket closes: {frames:?}"
    );
    let after = tokio::time::timeout(Duration::from_secs(5), rx.recv::<Body<Value>>())
        .await
        .expect("the consumer learns within 5 s");
    assert!(after.is_err(), "the consumer's link ended: {after:?}");
}
