//! Telemetry: direct routing, settle modes, no-consumer behaviour, balancing, credit back-pressure.

use std::time::Duration;

use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::messaging::Outcome;
use fe2o3_amqp::Sender;

use crate::harness::*;

#[tokio::test]
async fn unsettled_telemetry_reaches_the_consumer_and_its_outcome_returns() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 10).await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("telemetry/t1").await;
    let token = p.assertion("t1", "d1").await;

    let send = tokio::spawn(async move {
        let outcome = tx
            .send(device_message("d1", Some(&token), b"21.5"))
            .await
            .expect("send");
        (tx, outcome)
    });
    let d = recv_within(&mut rx, 2000).await.expect("telemetry arrives");
    assert_eq!(body_bytes(&d), b"21.5");
    assert_eq!(app_prop(&d, "device_id"), Some("d1".into()));
    assert_eq!(
        app_prop(&d, "reg_assertion"),
        None,
        "the assertion is stripped"
    );
    let resource = d.message().message_annotations.as_ref().and_then(|a| {
        a.0.iter()
            .find(|(k, _)| format!("{k:?}").contains("resource"))
            .map(|(_, v)| v.clone())
    });
    assert_eq!(resource, Some("telemetry/t1/d1".into()));
    assert_eq!(
        d.message()
            .properties
            .as_ref()
            .and_then(|p| p.content_type.as_ref())
            .map(|c| c.as_str().to_owned()),
        Some("text/plain".into())
    );
    rx.accept(&d).await.expect("accept");
    let (_tx, outcome) = send.await.expect("join");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    assert!(
        p.metrics().contains(
            "ferry_router_messages_total{tenant=\"t1\",type=\"telemetry\",outcome=\"forwarded\"} 1"
        ),
        "{}",
        p.metrics()
    );
}

#[tokio::test]
async fn consumer_rejection_is_relayed_as_rejected() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 10).await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("telemetry/t1").await;
    let token = p.assertion("t1", "d1").await;
    let send = tokio::spawn(async move {
        tx.send(device_message("d1", Some(&token), b"x"))
            .await
            .expect("send")
    });
    let d = recv_within(&mut rx, 2000).await.expect("arrives");
    rx.reject(&d, None).await.expect("reject");
    let outcome = send.await.expect("join");
    assert!(matches!(outcome, Outcome::Rejected(_)), "{outcome:?}");
}

#[tokio::test]
async fn presettled_telemetry_is_forwarded_at_most_once() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 100).await;
    let mut adapter = p.adapter().await;
    let mut tx = Sender::builder()
        .name("qos0")
        .target("telemetry/t1")
        .sender_settle_mode(SenderSettleMode::Settled)
        .attach(&mut adapter.session)
        .await
        .expect("attach");
    let token = p.assertion("t1", "d1").await;
    for i in 0..20u8 {
        tx.send(
            Sendable::builder()
                .message(device_message("d1", Some(&token), &[i]))
                .settled(true)
                .build(),
        )
        .await
        .expect("send");
    }
    for i in 0..20u8 {
        let d = recv_within(&mut rx, 2000).await.expect("arrives");
        assert_eq!(body_bytes(&d), [i], "in order");
    }
}

#[tokio::test]
async fn without_a_consumer_producers_get_no_credit_until_one_attaches() {
    let p = Platform::start().await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("telemetry/t1").await;
    let token = p.assertion("t1", "d1").await;
    let t2 = token.clone();
    let mut send =
        tokio::spawn(async move { tx.send(device_message("d1", Some(&t2), b"early")).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut send)
            .await
            .is_err(),
        "no credit while nobody consumes"
    );
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 10).await;
    let d = recv_within(&mut rx, 3000)
        .await
        .expect("the waiting message flows once a consumer has credit");
    assert_eq!(body_bytes(&d), b"early");
    rx.accept(&d).await.expect("accept");
    let outcome = send.await.expect("join").expect("send");
    assert!(matches!(outcome, Outcome::Accepted(_)));
}

#[tokio::test]
async fn an_unsettled_producer_without_a_consumer_is_released_at_once_and_waits_for_a_busy_one() {
    let p = Platform::start().await;
    let mut adapter = p.adapter().await;
    let mut tx = fe2o3_amqp::Sender::builder()
        .name("qos1")
        .target("telemetry/t1")
        .sender_settle_mode(fe2o3_amqp::types::definitions::SenderSettleMode::Unsettled)
        .attach(&mut adapter.session)
        .await
        .expect("attach");
    let token = p.assertion("t1", "d1").await;
    // Nobody consumes: credit anyway, and `released` for every message.
    for _ in 0..3 {
        let outcome = tokio::time::timeout(
            Duration::from_millis(500),
            tx.send(device_message("d1", Some(&token), b"nobody")),
        )
        .await
        .expect("credit without a consumer")
        .expect("send");
        assert!(matches!(outcome, Outcome::Released(_)), "{outcome:?}");
    }
    // A consumer without credit: the producer waits instead (at most the one credit it holds goes
    // through and is released).
    let mut app = p.app("app1", "pw1").await;
    let mut rx = fe2o3_amqp::Receiver::builder()
        .name("busy")
        .source("telemetry/t1")
        .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Manual)
        .attach(&mut app.session)
        .await
        .expect("attach");
    let t2 = token.clone();
    let mut send = tokio::spawn(async move {
        loop {
            let outcome = tx
                .send(device_message("d1", Some(&t2), b"patient"))
                .await
                .expect("send");
            if !matches!(outcome, Outcome::Released(_)) {
                return outcome;
            }
        }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut send)
            .await
            .is_err(),
        "no credit while the consumer has none"
    );
    rx.set_credit(5).await.expect("credit");
    let d = recv_within(&mut rx, 3000).await.expect("flows with credit");
    assert_eq!(body_bytes(&d), b"patient");
    rx.accept(&d).await.expect("accept");
    assert!(matches!(send.await.expect("join"), Outcome::Accepted(_)));
}

#[tokio::test]
async fn two_consumers_share_the_load() {
    let p = Platform::start().await;
    let mut a = p.app("app1", "pw1").await;
    let mut b = p.app("app1", "pw1").await;
    let mut rx_a = a.receiver("telemetry/t1", 100).await;
    let mut rx_b = b.receiver("telemetry/t1", 100).await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("telemetry/t1").await;
    let token = p.assertion("t1", "d1").await;
    let sender = tokio::spawn(async move {
        for i in 0..40u8 {
            tx.send(device_message("d1", Some(&token), &[i]))
                .await
                .expect("send");
        }
    });
    let (mut got_a, mut got_b) = (0, 0);
    while got_a + got_b < 40 {
        tokio::select! {
            Some(d) = recv_within(&mut rx_a, 3000) => { rx_a.accept(&d).await.expect("accept"); got_a += 1; }
            Some(d) = recv_within(&mut rx_b, 3000) => { rx_b.accept(&d).await.expect("accept"); got_b += 1; }
            else => panic!("messages stopped after {got_a} + {got_b}"),
        }
    }
    sender.await.expect("join");
    assert!(got_a >= 10 && got_b >= 10, "balanced: {got_a} vs {got_b}");
}

#[tokio::test]
async fn a_slow_consumer_throttles_the_producer() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    // Credit 5 and manual: the consumer takes 5 and then nothing more.
    let mut rx = fe2o3_amqp::Receiver::builder()
        .name("slow")
        .source("telemetry/t1")
        .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Manual)
        .attach(&mut app.session)
        .await
        .expect("attach");
    rx.set_credit(5).await.expect("credit");
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("telemetry/t1").await;
    let token = p.assertion("t1", "d1").await;
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = counter.clone();
    let producer = tokio::spawn(async move {
        for i in 0..10_000u32 {
            let outcome = tx
                .send(device_message("d1", Some(&token), &i.to_be_bytes()))
                .await
                .expect("send");
            if matches!(outcome, Outcome::Accepted(_) | Outcome::Released(_)) {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let mut received = 0;
    while let Some(d) = recv_within(&mut rx, 500).await {
        rx.accept(&d).await.expect("accept");
        received += 1;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = counter.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(received, 5, "the consumer got exactly its credit");
    assert!(
        settled < 1000,
        "the producer was throttled, not buffered: {settled} of 10000 settled"
    );
    producer.abort();
}

#[tokio::test]
async fn a_presettled_producer_gets_no_more_credit_than_its_consumers_have() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = fe2o3_amqp::Receiver::builder()
        .name("manual")
        .source("telemetry/t1")
        .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Manual)
        .attach(&mut app.session)
        .await
        .expect("attach");
    rx.set_credit(5).await.expect("credit");
    let mut adapter = p.adapter().await;
    let mut tx = Sender::builder()
        .name("qos0")
        .target("telemetry/t1")
        .sender_settle_mode(SenderSettleMode::Settled)
        .attach(&mut adapter.session)
        .await
        .expect("attach");
    let token = p.assertion("t1", "d1").await;
    // Pre-settled messages cannot be released: had the producer been given more credit than the
    // consumer has, the surplus would be dropped and the consumer would see a gap.
    let producer = tokio::spawn(async move {
        for i in 0..15u8 {
            tx.send(
                Sendable::builder()
                    .message(device_message("d1", Some(&token), &[i]))
                    .settled(true)
                    .build(),
            )
            .await
            .expect("send");
        }
        tx
    });
    let mut bodies = Vec::new();
    for _ in 0..3 {
        while let Some(d) = recv_within(&mut rx, 500).await {
            bodies.push(body_bytes(&d)[0]);
        }
        rx.set_credit(5).await.expect("more credit");
    }
    assert_eq!(
        bodies,
        (0..15).collect::<Vec<u8>>(),
        "every message, in order, none dropped"
    );
    let _tx = producer.await.expect("the producer finished");
}

#[tokio::test]
async fn in_flight_messages_are_released_when_the_last_consumer_leaves() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 10).await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("telemetry/t1").await;
    let token = p.assertion("t1", "d1").await;
    let send = tokio::spawn(async move {
        tx.send(device_message("d1", Some(&token), b"x"))
            .await
            .expect("send")
    });
    let _unsettled = recv_within(&mut rx, 2000).await.expect("arrives");
    rx.close().await.expect("detach");
    let outcome = tokio::time::timeout(Duration::from_secs(3), send)
        .await
        .expect("settled")
        .expect("join");
    assert!(matches!(outcome, Outcome::Released(_)), "{outcome:?}");
}
