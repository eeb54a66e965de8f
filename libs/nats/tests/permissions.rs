//! The per-component NATS users of `ferry_nats::permissions`, enforced by a real nats-server: an
//! adapter's credential cannot read device traffic, a router's cannot publish it, and each can do its
//! own job (telemetry, events through JetStream, command routes).

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use ferry_nats::streams::{event_consumer, event_stream, EventLimits};
use ferry_nats::{permissions, routes, subjects, NatsConfig};
use ferry_test_support::NatsServer;
use futures_util::StreamExt;

fn server() -> NatsServer {
    let block = permissions::authorization(&[
        ("ferry-adapter", "adapter-pw", &permissions::adapter()),
        ("ferry-router", "router-pw", &permissions::router()),
    ])
    .expect("renders");
    NatsServer::start_with(&block)
}

async fn connect(server: &NatsServer, user: &str, password: &str) -> async_nats::Client {
    let config = NatsConfig {
        urls: vec![server.url()],
        user: Some(user.into()),
        password: Some(password.into()),
        ..NatsConfig::default()
    };
    ferry_nats::connect(&config, user).await.expect("connect")
}

fn js(client: &async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client.clone())
}

#[tokio::test]
async fn an_adapter_cannot_read_telemetry_and_a_router_cannot_send_it() {
    let server = server();
    let adapter = connect(&server, "ferry-adapter", "adapter-pw").await;
    let router = connect(&server, "ferry-router", "router-pw").await;
    let mut spy = adapter
        .subscribe(subjects::telemetry("t1"))
        .await
        .expect("subscribe call");
    let mut taker = router
        .subscribe(subjects::telemetry("t1"))
        .await
        .expect("subscribe");
    // The denial reaches the adapter as an error event; the router's interest must be in place
    // before the adapter publishes (flush only writes the socket).
    ferry_nats::round_trip(&router, Duration::from_secs(5))
        .await
        .expect("subscribed");
    adapter
        .publish(
            subjects::telemetry("t1"),
            Bytes::from_static(b"from a device"),
        )
        .await
        .expect("publish");
    adapter.flush().await.expect("flush");
    let got = tokio::time::timeout(Duration::from_secs(2), taker.next())
        .await
        .expect("the router gets telemetry")
        .expect("message");
    assert_eq!(&got.payload[..], b"from a device");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), spy.next())
            .await
            .ok()
            .flatten()
            .is_none(),
        "an adapter's credential read telemetry"
    );

    // A router publishing telemetry as a device: dropped by the server.
    router
        .publish(subjects::telemetry("t1"), Bytes::from_static(b"forged"))
        .await
        .expect("publish call");
    router.flush().await.expect("flush");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), taker.next())
            .await
            .ok()
            .flatten()
            .is_none(),
        "a router's credential published telemetry"
    );
}

#[tokio::test]
async fn adapters_store_events_that_only_routers_can_take() {
    let server = server();
    let adapter = connect(&server, "ferry-adapter", "adapter-pw").await;
    let router = connect(&server, "ferry-router", "router-pw").await;
    let ajs = js(&adapter);
    let stream = event_stream(&ajs, "t1", EventLimits::default(), 1)
        .await
        .expect("an adapter creates the tenant's stream");
    ajs.publish(subjects::event("t1"), Bytes::from_static(b"e1"))
        .await
        .expect("publish")
        .await
        .expect("an adapter stores an event");
    assert!(
        event_consumer(&stream, 10, Duration::from_secs(30))
            .await
            .is_err(),
        "an adapter's credential made a consumer of the event stream"
    );
    // A router cannot store an event as a device.
    let rjs = js(&router);
    let forged = match rjs
        .publish(subjects::event("t1"), Bytes::from_static(b"forged"))
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!forged, "a router's credential stored an event");
    // It takes and acknowledges the adapter's.
    let stream = rjs.get_stream("FERRY_EVENTS_t1").await.expect("stream");
    let consumer = event_consumer(&stream, 10, Duration::from_secs(30))
        .await
        .expect("a router makes the shared consumer");
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("batch");
    let msg = batch.next().await.expect("an event").expect("ok");
    assert_eq!(&msg.payload[..], b"e1");
    msg.ack().await.expect("ack");
}

#[tokio::test]
async fn adapters_write_command_routes_and_routers_read_them() {
    let server = server();
    let adapter = connect(&server, "ferry-adapter", "adapter-pw").await;
    let router = connect(&server, "ferry-router", "router-pw").await;
    let written = routes::bucket(&js(&adapter), 1)
        .await
        .expect("adapter opens the bucket");
    let key = routes::key(routes::RouteKind::Device, "t1", "d1");
    written
        .put(&key, Bytes::from_static(b"mqtt-0"))
        .await
        .expect("adapter writes a route");
    let read = routes::bucket(&js(&router), 1)
        .await
        .expect("router opens it");
    assert_eq!(
        read.get(&key).await.expect("get").as_deref(),
        Some(&b"mqtt-0"[..])
    );
    assert!(routes::delete_if(&read, &key, b"mqtt-0")
        .await
        .expect("delete"));
    assert_eq!(written.get(&key).await.expect("get"), None);
}

/// A router makes a tenant's stream first (an application attached before any event); an adapter then
/// brings it to the tenant's limits: its credential may update the stream, and the update is taken.
#[tokio::test]
async fn an_adapter_brings_a_stream_a_router_made_to_the_tenants_limits() {
    let server = server();
    let adapter = connect(&server, "ferry-adapter", "adapter-pw").await;
    let router = connect(&server, "ferry-router", "router-pw").await;
    ferry_nats::streams::open_event_stream(&js(&router), "t1", 1)
        .await
        .expect("the router makes the stream");
    let limits = EventLimits {
        max_events: 7,
        ..EventLimits::default()
    };
    let mut s = event_stream(&js(&adapter), "t1", limits, 1)
        .await
        .expect("the adapter updates it");
    assert_eq!(s.info().await.expect("info").config.max_messages, 7);
}
