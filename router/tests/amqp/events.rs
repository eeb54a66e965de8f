//! Events: stored before accepted, delivered when a consumer comes, redelivered, survive restarts, expire.

use std::time::Duration;

use fe2o3_amqp::types::messaging::{Header, Outcome};

use crate::harness::*;

#[tokio::test]
async fn events_sent_without_consumer_arrive_when_one_attaches() {
    let p = Platform::start().await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("event/t1").await;
    let token = p.assertion("t1", "d1").await;
    for i in 0..5u8 {
        let outcome = tokio::time::timeout(
            Duration::from_secs(3),
            tx.send(device_message("d1", Some(&token), &[i])),
        )
        .await
        .expect("events get credit without consumers")
        .expect("send");
        assert!(
            matches!(outcome, Outcome::Accepted(_)),
            "accepted once stored: {outcome:?}"
        );
    }
    assert!(
        p.metrics()
            .contains("ferry_router_event_store_depth{tenant=\"t1\"} 5"),
        "{}",
        p.metrics()
    );
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("event/t1", 10).await;
    for i in 0..5u8 {
        let d = recv_within(&mut rx, 2000)
            .await
            .expect("stored event arrives");
        assert_eq!(body_bytes(&d), [i], "in order");
        rx.accept(&d).await.expect("accept");
    }
    assert!(recv_within(&mut rx, 300).await.is_none());
    assert!(
        p.metrics()
            .contains("ferry_router_event_store_depth{tenant=\"t1\"} 0"),
        "{}",
        p.metrics()
    );
}

#[tokio::test]
async fn unsettled_events_are_redelivered_to_the_next_consumer() {
    let p = Platform::start().await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("event/t1").await;
    let token = p.assertion("t1", "d1").await;
    tx.send(device_message("d1", Some(&token), b"once"))
        .await
        .expect("send");
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("event/t1", 10).await;
    let _d = recv_within(&mut rx, 2000).await.expect("arrives");
    rx.close().await.expect("detach without settling");
    let mut app2 = p.app("app1", "pw1").await;
    let mut rx2 = app2.receiver("event/t1", 10).await;
    let d = recv_within(&mut rx2, 2000).await.expect("redelivered");
    assert_eq!(body_bytes(&d), b"once");
    rx2.accept(&d).await.expect("accept");
    let mut app3 = p.app("app1", "pw1").await;
    let mut rx3 = app3.receiver("event/t1", 10).await;
    assert!(
        recv_within(&mut rx3, 300).await.is_none(),
        "accepted means gone"
    );
}

#[tokio::test]
async fn stored_events_survive_a_router_restart() {
    let mut p = Platform::start().await;
    {
        let mut adapter = p.adapter().await;
        let mut tx = adapter.sender("event/t1").await;
        let token = p.assertion("t1", "d1").await;
        for i in 0..3u8 {
            tx.send(device_message("d1", Some(&token), &[i]))
                .await
                .expect("send");
        }
        adapter.close().await;
    }
    p.stop_router().await;
    p.start_router().await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("event/t1", 10).await;
    for i in 0..3u8 {
        let d = recv_within(&mut rx, 2000)
            .await
            .expect("event kept across restart");
        assert_eq!(body_bytes(&d), [i]);
        rx.accept(&d).await.expect("accept");
    }
}

#[tokio::test]
async fn events_expire_after_their_ttl() {
    let p = Platform::start().await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("event/t1").await;
    let token = p.assertion("t1", "d1").await;
    let mut short = device_message("d1", Some(&token), b"short");
    short.header = Some(Header {
        durable: true,
        ttl: Some(200),
        ..Header::default()
    });
    tx.send(short).await.expect("send");
    tx.send(device_message("d1", Some(&token), b"kept"))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("event/t1", 10).await;
    let d = recv_within(&mut rx, 2000)
        .await
        .expect("the unexpired event arrives");
    assert_eq!(body_bytes(&d), b"kept");
    rx.accept(&d).await.expect("accept");
    assert!(
        recv_within(&mut rx, 300).await.is_none(),
        "the expired one is gone"
    );
}
