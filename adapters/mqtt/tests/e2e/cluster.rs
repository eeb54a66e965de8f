//! Cluster mode: the adapter on a real nats-server; `mosquitto_pub` is the device, this test plays the
//! router with a plain NATS client.

use std::time::Duration;

use ferry_nats::outcome::Outcome;
use ferry_nats::{headers, streams, subjects, MessagingMode, NatsConfig};
use ferry_test_support::NatsServer;
use futures_util::StreamExt;

use crate::platform::{stderr, Platform};

async fn on_nats(server: &NatsServer) -> Platform {
    let url = server.url();
    Platform::start_with(move |c| {
        c.adapter.messaging.mode = MessagingMode::Nats;
        c.adapter.messaging.nats.urls = vec![url];
        c.adapter.send_timeout_ms = 2000;
    })
    .await
}

/// A router that accepts everything on `subject`; yields what it saw.
async fn accepting_router(
    server: &NatsServer,
    subject: String,
) -> tokio::sync::mpsc::Receiver<async_nats::Message> {
    let config = NatsConfig {
        urls: vec![server.url()],
        ..NatsConfig::default()
    };
    let client = ferry_nats::connect(&config, "test-router")
        .await
        .expect("router connects");
    let mut sub = client.subscribe(subject).await.expect("subscribe");
    ferry_nats::round_trip(&client, Duration::from_secs(5))
        .await
        .expect("subscribed");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply.clone() {
                let _ = client.publish(reply, Outcome::Accepted.encode()).await;
            }
            let _ = tx.send(m).await;
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_pub_on_nats_is_acknowledged_once_a_router_accepted_it() {
    let server = NatsServer::start();
    let p = on_nats(&server).await;
    let out = tokio::task::block_in_place(|| {
        p.mosquitto_pub("sensor1@t1", "hunter2", "telemetry", 1, "lost")
    });
    assert!(
        !out.status.success(),
        "no PUBACK while no router consumes: {}",
        stderr(&out)
    );

    let mut seen = accepting_router(&server, subjects::telemetry("t1")).await;
    for qos in [1u8, 0] {
        let body = format!("21.5-qos{qos}");
        let out = tokio::task::block_in_place(|| {
            p.mosquitto_pub("sensor1@t1", "hunter2", "telemetry", qos, &body)
        });
        assert!(out.status.success(), "qos {qos}: {}", stderr(&out));
        let m = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("seen in time")
            .expect("a message");
        assert_eq!(
            m.headers
                .as_ref()
                .and_then(|h| h.get(headers::DEVICE))
                .map(|v| v.as_str()),
            Some("d1")
        );
        assert!(
            m.payload.windows(body.len()).any(|w| w == body.as_bytes()),
            "the AMQP message carries the payload"
        );
        assert_eq!(m.reply.is_some(), qos == 1, "QoS 0 wants no reply");
    }

    // An event is in the tenant's stream once acknowledged.
    let out =
        tokio::task::block_in_place(|| p.mosquitto_pub("sensor1@t1", "hunter2", "event", 1, "ev"));
    assert!(out.status.success(), "{}", stderr(&out));
    let config = NatsConfig {
        urls: vec![server.url()],
        ..NatsConfig::default()
    };
    let js = async_nats::jetstream::new(
        ferry_nats::connect(&config, "test-check")
            .await
            .expect("connect"),
    );
    let mut stream = js
        .get_stream(streams::event_stream_name("t1"))
        .await
        .expect("the tenant's stream");
    assert_eq!(stream.info().await.expect("info").state.messages, 1);
}
