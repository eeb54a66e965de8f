//! Telemetry and events to the router: outcomes, settle modes, no-credit behaviour, reconnection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fe2o3_amqp::types::primitives::Value;
use ferry_adapter_core::downstream::{
    DeviceMessage, Downstream, DownstreamError, MessageKind, SendOutcome,
};
use ferry_adapter_core::registry::AssertionOutcome;

use crate::harness::*;

async fn assertion(p: &Platform, t: &str, d: &str) -> Arc<str> {
    match p
        .registry_client()
        .assertion(&tenant(t), &device(d), None)
        .await
        .expect("assertion")
    {
        AssertionOutcome::Granted(a) => a.token.clone(),
        other => panic!("{other:?}"),
    }
}

fn message(
    kind: MessageKind,
    t: &str,
    d: &str,
    qos: u8,
    token: &Arc<str>,
    body: &'static [u8],
) -> DeviceMessage {
    DeviceMessage {
        kind,
        tenant: tenant(t),
        device_id: device(d),
        qos,
        content_type: Some("text/plain".into()),
        payload: Bytes::from_static(body),
        assertion: token.clone(),
        orig_adapter: "hono-mqtt",
        orig_address: "telemetry".into(),
        ttl_ms: None,
        ttd: None,
        extra_properties: vec![],
        stored_limits: None,
    }
}

#[tokio::test]
async fn qos1_telemetry_is_accepted_by_a_consumer() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 10).await;
    let down = p.downstream().await;
    let token = assertion(&p, "t1", "d1").await;

    let d2 = down.clone();
    let msg = message(MessageKind::Telemetry, "t1", "d1", 1, &token, b"21.5");
    let send = tokio::spawn(async move { d2.send(msg).await });
    let d = recv_within(&mut rx, 2000).await.expect("telemetry arrives");
    assert_eq!(body_bytes(&d), b"21.5");
    assert_eq!(app_prop(&d, "device_id"), Some(Value::String("d1".into())));
    assert_eq!(app_prop(&d, "qos"), Some(Value::Int(1)));
    assert_eq!(
        app_prop(&d, "orig_adapter"),
        Some(Value::String("hono-mqtt".into()))
    );
    assert_eq!(
        app_prop(&d, "reg_assertion"),
        None,
        "stripped by the router"
    );
    let props = d.message().properties.clone().expect("properties");
    assert_eq!(props.content_type.map(|c| c.0), Some("text/plain".into()));
    assert!(props.creation_time.is_some());
    rx.accept(&d).await.expect("accept");
    assert_eq!(send.await.expect("join"), Ok(SendOutcome::Accepted));
}

#[tokio::test]
async fn many_messages_are_in_flight_at_once() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 500).await;
    let down = p.downstream().await;
    let token = assertion(&p, "t1", "d1").await;
    let mut sends = Vec::new();
    for _ in 0..200 {
        let (d, msg) = (
            down.clone(),
            message(MessageKind::Telemetry, "t1", "d1", 1, &token, b"x"),
        );
        sends.push(tokio::spawn(async move { d.send(msg).await }));
    }
    for _ in 0..200 {
        let d = recv_within(&mut rx, 2000).await.expect("arrives");
        rx.accept(&d).await.expect("accept");
    }
    for s in sends {
        assert_eq!(s.await.expect("join"), Ok(SendOutcome::Accepted));
    }
    assert_eq!(
        down.stats().links_attached,
        1,
        "one link per tenant and kind"
    );
}

#[tokio::test]
async fn qos0_telemetry_goes_presettled() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 10).await;
    let down = p.downstream().await;
    let token = assertion(&p, "t1", "d1").await;
    let outcome = down
        .send(message(
            MessageKind::Telemetry,
            "t1",
            "d1",
            0,
            &token,
            b"q0",
        ))
        .await;
    assert_eq!(outcome, Ok(SendOutcome::Presettled));
    let d = recv_within(&mut rx, 2000).await.expect("arrives");
    assert_eq!(body_bytes(&d), b"q0");
    assert_eq!(app_prop(&d, "qos"), Some(Value::Int(0)));
}

#[tokio::test]
async fn without_a_consumer_qos0_gets_no_credit_and_qos1_is_released_quickly() {
    let p = Platform::start().await;
    let down = p.downstream().await;
    let token = assertion(&p, "t1", "d1").await;
    for qos in [1, 0, 1, 0] {
        let started = Instant::now();
        let outcome = down
            .send(message(
                MessageKind::Telemetry,
                "t1",
                "d1",
                qos,
                &token,
                b"x",
            ))
            .await;
        let expected = if qos == 0 {
            Err(DownstreamError::NoCredit)
        } else {
            Ok(SendOutcome::Released)
        };
        assert_eq!(outcome, expected, "qos {qos}");
        assert!(
            started.elapsed() < Duration::from_millis(700),
            "took {:?}",
            started.elapsed()
        );
    }
    // A consumer arrives: credit follows.
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 10).await;
    for qos in [1, 0] {
        let d2 = down.clone();
        let msg = message(MessageKind::Telemetry, "t1", "d1", qos, &token, b"late");
        let send = tokio::spawn(async move { d2.send(msg).await });
        let d = recv_within(&mut rx, 2000).await.expect("arrives");
        rx.accept(&d).await.expect("accept");
        let expected = if qos == 0 {
            SendOutcome::Presettled
        } else {
            SendOutcome::Accepted
        };
        assert_eq!(send.await.expect("join"), Ok(expected));
    }
}

#[tokio::test]
async fn qos1_waits_for_a_busy_consumers_credit_and_fails_only_after_the_bound() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    // Attached, but no credit yet: the consumer is there and busy.
    let mut rx = fe2o3_amqp::Receiver::builder()
        .name("busy")
        .source("telemetry/t1")
        .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Manual)
        .attach(&mut app.session)
        .await
        .expect("attach");
    let down = p.downstream().await;
    let token = assertion(&p, "t1", "d1").await;
    let (d2, msg) = (
        down.clone(),
        message(MessageKind::Telemetry, "t1", "d1", 1, &token, b"patient"),
    );
    let send = tokio::spawn(async move { d2.send(msg).await });
    // Four times the QoS 0 bound later, the consumer grants credit: the message was waiting for it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !send.is_finished(),
        "QoS 1 gave up while the consumer was busy"
    );
    rx.set_credit(1).await.expect("credit");
    let d = recv_within(&mut rx, 2000).await.expect("arrives");
    assert_eq!(body_bytes(&d), b"patient");
    rx.accept(&d).await.expect("accept");
    assert_eq!(send.await.expect("join"), Ok(SendOutcome::Accepted));

    // QoS 0 meanwhile is shed after its short bound, and QoS 1 fails after its own.
    for (qos, at_least, at_most) in [(0, 150, 700), (1, 1_900, 3_500)] {
        let started = Instant::now();
        let outcome = down
            .send(message(
                MessageKind::Telemetry,
                "t1",
                "d1",
                qos,
                &token,
                b"x",
            ))
            .await;
        let took = started.elapsed();
        assert_eq!(outcome, Err(DownstreamError::NoCredit), "qos {qos}");
        assert!(
            took >= Duration::from_millis(at_least) && took <= Duration::from_millis(at_most),
            "qos {qos} took {took:?}"
        );
    }
}

/// A QoS 0 flood while consumers give no credit: what does not fit in the link's queue is shed at once
/// (`NoCredit`) instead of each message waiting for room until its deadline, which held one message per
/// publish (a three-device flood grew `ferry up` by hundreds of MiB).
#[tokio::test]
async fn a_qos0_flood_beyond_the_link_queue_is_shed_at_once() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    let _busy = fe2o3_amqp::Receiver::builder()
        .name("busy")
        .source("telemetry/t1")
        .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Manual)
        .attach(&mut app.session)
        .await
        .expect("attach");
    let mut config = p.downstream_config();
    config.link_queue = 8;
    config.no_credit_timeout = Duration::from_secs(10);
    let down = Downstream::start(config, p.clients_shutdown.clone());
    assert!(down.wait_connected(Duration::from_secs(5)).await);
    let token = assertion(&p, "t1", "d1").await;
    let sends: Vec<_> = (0..200)
        .map(|_| {
            let (d, msg) = (
                down.clone(),
                message(MessageKind::Telemetry, "t1", "d1", 0, &token, b"flood"),
            );
            tokio::spawn(async move { d.send(msg).await })
        })
        .collect();
    // Everything beyond what the queue (and the link task) holds fails long before the 10 s bound.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let finished = sends.iter().filter(|s| s.is_finished()).count();
    assert!(
        finished >= 180,
        "only {finished} of 200 QoS 0 sends were shed; the rest wait for room"
    );
    for s in sends {
        if s.is_finished() {
            assert_eq!(s.await.expect("join"), Err(DownstreamError::NoCredit));
        } else {
            s.abort();
        }
    }
}

/// A QoS 0 burst larger than the link's queue while the consumer has credit: the link is busy, not
/// stalled, so what does not fit waits for room instead of being shed (the link's task batches what the
/// sessions queue in one round, so a round of a hundred devices can exceed the queue at any rate).
#[tokio::test]
async fn a_qos0_burst_beyond_the_link_queue_is_not_shed_while_credit_flows() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 1_000).await;
    let mut config = p.downstream_config();
    config.link_queue = 8;
    let down = Downstream::start(config, p.clients_shutdown.clone());
    assert!(down.wait_connected(Duration::from_secs(5)).await);
    let token = assertion(&p, "t1", "d1").await;
    // The link is attached and has credit before the burst.
    let first = message(MessageKind::Telemetry, "t1", "d1", 0, &token, b"first");
    assert_eq!(down.send(first).await, Ok(SendOutcome::Presettled));
    recv_within(&mut rx, 2000).await.expect("the first arrives");
    let sends: Vec<_> = (0..200)
        .map(|_| {
            let (d, msg) = (
                down.clone(),
                message(MessageKind::Telemetry, "t1", "d1", 0, &token, b"burst"),
            );
            tokio::spawn(async move { d.send(msg).await })
        })
        .collect();
    for s in sends {
        assert_eq!(s.await.expect("join"), Ok(SendOutcome::Presettled));
    }
    for i in 0..200 {
        recv_within(&mut rx, 2000)
            .await
            .unwrap_or_else(|| panic!("message {i} of the burst arrives"));
    }
}

#[tokio::test]
async fn messages_queued_behind_a_slow_consumer_wait_their_turn_instead_of_failing() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    // The consumer takes one message at a time, each 120 ms after the last: credit keeps flowing,
    // but slower than the no-credit timeout (200 ms) would allow for a message queued behind others.
    let mut rx = fe2o3_amqp::Receiver::builder()
        .name("one-at-a-time")
        .source("telemetry/t1")
        .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Manual)
        .attach(&mut app.session)
        .await
        .expect("attach");
    rx.set_credit(1).await.expect("credit");
    let down = p.downstream().await;
    let token = assertion(&p, "t1", "d1").await;
    let mut sends = Vec::new();
    for _ in 0..5 {
        let (d, msg) = (
            down.clone(),
            message(MessageKind::Telemetry, "t1", "d1", 1, &token, b"x"),
        );
        sends.push(tokio::spawn(async move { d.send(msg).await }));
    }
    for _ in 0..5 {
        let d = recv_within(&mut rx, 2000).await.expect("arrives");
        rx.accept(&d).await.expect("accept");
        tokio::time::sleep(Duration::from_millis(120)).await;
        rx.set_credit(1).await.expect("credit");
    }
    for s in sends {
        assert_eq!(s.await.expect("join"), Ok(SendOutcome::Accepted));
    }
}

#[tokio::test]
async fn events_are_stored_without_a_consumer() {
    let p = Platform::start().await;
    let down = p.downstream().await;
    let token = assertion(&p, "t1", "d1").await;
    let mut msg = message(MessageKind::Event, "t1", "d1", 1, &token, b"alarm");
    msg.ttl_ms = Some(60_000);
    assert_eq!(down.send(msg).await, Ok(SendOutcome::Accepted));

    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("event/t1", 10).await;
    let d = recv_within(&mut rx, 2000)
        .await
        .expect("the stored event arrives");
    assert_eq!(body_bytes(&d), b"alarm");
    let header = d.message().header.clone().expect("header");
    assert!(header.durable);
    rx.accept(&d).await.expect("accept");
}

#[tokio::test]
async fn a_bad_assertion_is_rejected() {
    let p = Platform::start().await;
    let down = p.downstream().await;
    // t1's d2's assertion on a message that claims to be from d1.
    let token = assertion(&p, "t1", "d2").await;
    let outcome = down
        .send(message(MessageKind::Event, "t1", "d1", 1, &token, b"x"))
        .await;
    assert!(
        matches!(&outcome, Ok(SendOutcome::Rejected { condition: Some(c), .. }) if c == "amqp:precondition-failed"),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn reconnects_after_the_router_restarts() {
    let mut p = Platform::start().await;
    let mut config = p.downstream_config();
    config.max_reconnect_delay = Duration::from_millis(200);
    let down = Downstream::start(config, ferry_core::shutdown::Shutdown::never());
    assert!(down.wait_connected(Duration::from_secs(5)).await);
    let token = assertion(&p, "t1", "d1").await;
    assert_eq!(
        down.send(message(
            MessageKind::Event,
            "t1",
            "d1",
            1,
            &token,
            b"before"
        ))
        .await,
        Ok(SendOutcome::Accepted)
    );

    p.stop_router().await;
    assert!(
        eventually(Duration::from_secs(2), || async { !down.is_connected() }).await,
        "the loss is noticed"
    );
    let outcome = down
        .send(message(
            MessageKind::Event,
            "t1",
            "d1",
            1,
            &token,
            b"during",
        ))
        .await;
    assert!(outcome.is_err(), "{outcome:?}");

    p.start_router().await;
    assert!(
        down.wait_connected(Duration::from_secs(5)).await,
        "reconnected"
    );
    assert_eq!(
        down.send(message(MessageKind::Event, "t1", "d1", 1, &token, b"after"))
            .await,
        Ok(SendOutcome::Accepted)
    );
    assert_eq!(down.stats().connects, 2);
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("event/t1", 10).await;
    for expected in [&b"before"[..], b"after"] {
        let d = recv_within(&mut rx, 2000).await.expect("event");
        assert_eq!(body_bytes(&d), expected);
        rx.accept(&d).await.expect("accept");
    }
}

/// Many devices' QoS 1 messages at once against one consumer that accepts as fast as it can: credit must
/// keep flowing (a lost wake-up would leave messages waiting until `NoCredit`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_qos1_stream_from_many_devices_never_runs_out_of_credit() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 200).await;
    let down = p.downstream().await;
    let token = assertion(&p, "t1", "d1").await;
    const DEVICES: usize = 100;
    const EACH: usize = 300;
    let consumer = tokio::spawn(async move {
        for _ in 0..DEVICES * EACH {
            let d = recv_within(&mut rx, 5000)
                .await
                .expect("the stream keeps flowing");
            rx.accept(&d).await.expect("accept");
        }
    });
    let mut devices = Vec::new();
    for _ in 0..DEVICES {
        let (down, token) = (down.clone(), token.clone());
        devices.push(tokio::spawn(async move {
            for _ in 0..EACH {
                let msg = message(MessageKind::Telemetry, "t1", "d1", 1, &token, b"x");
                let outcome = down.send(msg).await;
                assert_eq!(outcome, Ok(SendOutcome::Accepted));
            }
        }));
    }
    for d in devices {
        d.await.expect("every message accepted");
    }
    consumer.await.expect("consumer got them all");
}
