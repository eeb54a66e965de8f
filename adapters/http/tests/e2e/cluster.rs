//! Cluster mode: the adapter on a real nats-server; `curl` is the device, this test plays the router
//! with a plain NATS client.

use std::time::Duration;

use ferry_nats::outcome::Outcome;
use ferry_nats::{headers, streams, subjects, MessagingMode, NatsConfig};
use ferry_test_support::NatsServer;
use futures_util::StreamExt;

use crate::{curl, Platform, D1};

async fn router(server: &NatsServer) -> async_nats::Client {
    let config = NatsConfig {
        urls: vec![server.url()],
        ..NatsConfig::default()
    };
    ferry_nats::connect(&config, "test-router")
        .await
        .expect("router connects")
}

fn post(p: &Platform, path: &str, qos: &str, body: &str) -> u16 {
    curl(&[
        "-u",
        D1,
        "-H",
        "content-type: text/plain",
        "-H",
        &format!("qos-level: {qos}"),
        "--data-binary",
        body,
        &p.url(path),
    ])
    .status
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_on_nats_gets_503_without_a_router_and_202_once_one_accepts() {
    let server = NatsServer::start();
    let url = server.url();
    let p = Platform::start_with(move |c| {
        c.adapter.messaging.mode = MessagingMode::Nats;
        c.adapter.messaging.nats.urls = vec![url];
        c.adapter.send_timeout_ms = 2000;
    })
    .await;
    for qos in ["0", "1"] {
        assert_eq!(
            post(&p, "/telemetry", qos, "lost"),
            503,
            "qos {qos}: nobody consumes"
        );
    }

    let client = router(&server).await;
    let mut sub = client
        .subscribe(subjects::telemetry("t1"))
        .await
        .expect("subscribe");
    ferry_nats::round_trip(&client, Duration::from_secs(5))
        .await
        .expect("subscribed");
    let (tx, mut seen) = tokio::sync::mpsc::channel(16);
    let replier = client.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply.clone() {
                let _ = replier.publish(reply, Outcome::Accepted.encode()).await;
            }
            let _ = tx.send(m).await;
        }
    });
    for qos in ["0", "1"] {
        let body = format!("21.5-qos{qos}");
        assert_eq!(post(&p, "/telemetry", qos, &body), 202, "qos {qos}");
        let m = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("seen in time")
            .expect("a message");
        let h = m.headers.as_ref().expect("headers");
        assert_eq!(h.get(headers::DEVICE).map(|v| v.as_str()), Some("d1"));
        assert_eq!(
            h.get(headers::PRESETTLED).is_some(),
            qos == "0",
            "QoS 0 asks for no more than a consumer taking it"
        );
        assert!(m.payload.windows(body.len()).any(|w| w == body.as_bytes()));
    }

    assert_eq!(post(&p, "/event", "1", "ev"), 202);
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(streams::event_stream_name("t1"))
        .await
        .expect("the tenant's stream");
    assert_eq!(stream.info().await.expect("info").state.messages, 1);
}
