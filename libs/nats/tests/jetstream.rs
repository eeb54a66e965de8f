//! Against a real nats-server: the event stream keeps a tenant's events until they are acknowledged,
//! enforces the tenant's limits by refusing new events, honours per-message TTL, and keeps tenants apart.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use ferry_nats::streams::{event_consumer, event_stream, EventLimits};
use ferry_nats::{headers, subjects, NatsConfig};
use ferry_test_support::NatsServer;
use futures_util::StreamExt;

async fn client(server: &NatsServer) -> async_nats::Client {
    let config = NatsConfig {
        urls: vec![server.url()],
        ..NatsConfig::default()
    };
    ferry_nats::connect(&config, "test").await.expect("connect")
}

async fn publish(js: &jetstream::Context, tenant: &str, body: &str, ttl: Option<u64>) -> bool {
    let mut h = HeaderMap::new();
    if let Some(secs) = ttl {
        h.insert(headers::TTL, headers::ttl(secs).as_str());
    }
    match js
        .publish_with_headers(subjects::event(tenant), h, body.to_owned().into())
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn events_stay_until_acknowledged_and_a_full_tenant_refuses_only_its_own() {
    let server = NatsServer::start();
    let js = jetstream::new(client(&server).await);
    let small = EventLimits {
        max_events: 3,
        ..EventLimits::default()
    };
    let a = event_stream(&js, "tenant.a", small, 1)
        .await
        .expect("stream a");
    event_stream(&js, "b", EventLimits::default(), 1)
        .await
        .expect("stream b");

    for i in 0..3 {
        assert!(
            publish(&js, "tenant.a", &format!("a{i}"), None).await,
            "a{i} stored"
        );
    }
    assert!(
        !publish(&js, "tenant.a", "a3", None).await,
        "the fourth event of a full tenant is refused"
    );
    assert!(
        publish(&js, "b", "b0", None).await,
        "another tenant goes on"
    );

    // A router takes one event and dies without acknowledging it: it comes back.
    let consumer = event_consumer(&a, 100, Duration::from_secs(1))
        .await
        .expect("consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch");
    let first = batch.next().await.expect("one").expect("message");
    assert_eq!(&first.payload[..], b"a0");
    drop(first);
    drop(batch);

    // Another router (same durable consumer) acknowledges what it gets.
    let consumer = event_consumer(&a, 100, Duration::from_secs(1))
        .await
        .expect("consumer again");
    let mut got = Vec::new();
    let mut messages = consumer.messages().await.expect("messages");
    while got.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("redelivered within the ack wait")
            .expect("stream")
            .expect("message");
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
        m.ack().await.expect("ack");
    }
    got.sort();
    assert_eq!(got, ["a0", "a1", "a2"]);
    // Acknowledged events leave the stream, so the tenant may publish again.
    let mut a = js
        .get_stream(ferry_nats::streams::event_stream_name("tenant.a"))
        .await
        .expect("get");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a.info().await.expect("info").state.messages != 0 {
        assert!(tokio::time::Instant::now() < deadline, "acked events left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(publish(&js, "tenant.a", "a4", None).await);
}

#[tokio::test]
async fn an_event_with_a_ttl_expires() {
    let server = NatsServer::start();
    let js = jetstream::new(client(&server).await);
    let mut s = event_stream(&js, "t", EventLimits::default(), 1)
        .await
        .expect("stream");
    assert!(publish(&js, "t", "short", Some(1)).await);
    assert!(publish(&js, "t", "kept", None).await);
    assert_eq!(s.info().await.expect("info").state.messages, 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.info().await.expect("info").state.messages != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the 1 s event expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_tenants_limits_can_change() {
    let server = NatsServer::start();
    let js = jetstream::new(client(&server).await);
    event_stream(&js, "t", EventLimits::default(), 1)
        .await
        .expect("create");
    let lower = EventLimits {
        max_events: 10,
        ..EventLimits::default()
    };
    let mut s = event_stream(&js, "t", lower, 1).await.expect("update");
    assert_eq!(s.info().await.expect("info").config.max_messages, 10);
}

/// A tenant's limit lowered below what its stream holds: nothing stored is dropped (the stream
/// discards new events, not old ones), new events are refused until it is under the limit.
#[tokio::test]
async fn a_lowered_limit_keeps_what_is_stored_and_refuses_new_events() {
    let server = NatsServer::start();
    let js = jetstream::new(client(&server).await);
    event_stream(&js, "t", EventLimits::default(), 1)
        .await
        .expect("create");
    for i in 0..5 {
        assert!(publish(&js, "t", &format!("e{i}"), None).await);
    }
    let lower = EventLimits {
        max_events: 3,
        ..EventLimits::default()
    };
    let mut s = event_stream(&js, "t", lower, 1).await.expect("update");
    assert_eq!(
        s.info().await.expect("info").state.messages,
        5,
        "stored events were dropped when the limit was lowered"
    );
    assert!(
        !publish(&js, "t", "e5", None).await,
        "an event past the lowered limit was stored"
    );
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let server = NatsServer::start_with(
        "authorization { users = [ { user: ferry-router, password: right } ] }",
    );
    let config = NatsConfig {
        urls: vec![server.url()],
        user: Some("ferry-router".into()),
        password: Some("wrong".into()),
        connect_timeout_ms: 2000,
        ..NatsConfig::default()
    };
    assert!(ferry_nats::connect(&config, "test").await.is_err());
    let config = NatsConfig {
        password: Some("right".into()),
        ..config
    };
    ferry_nats::connect(&config, "test")
        .await
        .expect("right password");
}
