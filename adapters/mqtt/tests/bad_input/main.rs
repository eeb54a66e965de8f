//! The MQTT adapter against input no well-behaved client sends: bytes that are not MQTT, a CONNECT that
//! never completes, floods, oversized payloads, QoS it does not support, silence. Each misbehaving
//! connection is closed, and the adapter keeps serving everyone else.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::{v4, QoS};
use serde_json::json;

// Shared with the `e2e` binary, which uses other parts of it.
#[allow(dead_code)]
#[path = "../e2e/platform.rs"]
mod platform;

mod hostile;

use platform::{Platform, Raw};

/// The adapter as the tests below configure it: one second for the CONNECT.
async fn platform() -> Platform {
    Platform::start_with(|c| c.connect_timeout_secs = 1).await
}

/// A valid MQTT 3.1.1 CONNECT for `d1`.
fn connect_bytes(keep_alive: u16) -> BytesMut {
    let mut connect = v4::Connect::new("raw-d1");
    connect.keep_alive = keep_alive;
    connect.set_login("sensor1@t1", "hunter2");
    let mut out = BytesMut::new();
    connect.write(&mut out).expect("encode CONNECT");
    out
}

/// Deterministic noise.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_that_are_not_mqtt_are_dropped_and_others_are_served() {
    let p = platform().await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let mut huge_connect = vec![0x10, 0xff, 0xff, 0xff, 0x7f];
    huge_connect.extend_from_slice(&noise(64, 3));
    let mut publish_first = BytesMut::new();
    v4::Publish::new("telemetry", QoS::AtMostOnce, b"x".to_vec())
        .write(&mut publish_first)
        .expect("encode");
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        (
            "HTTP",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        (
            "TLS hello on the plain port",
            vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
        ),
        ("noise", noise(4096, 1)),
        ("noise after a CONNECT header", {
            let mut b = vec![0x10, 0x7f];
            b.extend_from_slice(&noise(127, 2));
            b
        }),
        ("a 256 MB CONNECT", huge_connect),
        ("PUBLISH before CONNECT", publish_first.to_vec()),
        ("a second CONNECT", {
            let mut b = connect_bytes(30).to_vec();
            b.extend_from_slice(&connect_bytes(30));
            b
        }),
    ];
    let mut open = Vec::new();
    for (what, bytes) in inputs {
        let mut raw = Raw::connect_tcp(p.mqtt).await;
        raw.send_packet(|out| out.extend_from_slice(&bytes)).await;
        open.push((what, raw));
    }
    // Meanwhile a real client is served.
    p.telemetry_gets_through("unaffected");
    let m = tokio::task::block_in_place(|| c.next(Duration::from_secs(5))).expect("arrives");
    assert_eq!(m["body"], "unaffected");
    for (what, mut raw) in open {
        assert!(
            raw.closed_within(Duration::from_secs(3)).await.is_some(),
            "{what}: still open"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsupported_protocol_level_is_refused_with_0x01() {
    let p = platform().await;
    let mut raw = Raw::connect_tcp(p.mqtt).await;
    // An MQTT 3.1 CONNECT ("MQIsdp", level 3).
    let mut body = vec![0x00, 0x06];
    body.extend_from_slice(b"MQIsdp");
    body.extend_from_slice(&[0x03, 0x02, 0x00, 0x1e, 0x00, 0x02, b'c', b'1']);
    let mut bytes = vec![0x10, u8::try_from(body.len()).expect("short")];
    bytes.extend_from_slice(&body);
    raw.send(&bytes).await;
    match raw.packet(Duration::from_secs(2)).await {
        Some(v4::Packet::ConnAck(a)) => {
            assert_eq!(a.code, v4::ConnectReturnCode::RefusedProtocolVersion)
        }
        other => panic!("expected CONNACK 0x01, got {other:?}"),
    }
    assert!(raw.closed_within(Duration::from_secs(2)).await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connect_that_never_completes_is_closed_after_the_connect_timeout() {
    let pki = ferry_test_support::TestPki::generate();
    let p = Platform::start_with(|c| {
        c.connect_timeout_secs = 1;
        c.tls.cert_path = Some(pki.server_cert_path.clone());
        c.tls.key_path = Some(pki.server_key_path.clone());
    })
    .await;
    let connect = connect_bytes(30);
    let mut half = Raw::connect_tcp(p.mqtt).await;
    half.send(&connect[..connect.len() / 2]).await;
    let mut silent = Raw::connect_tcp(p.mqtt).await;
    // On the TLS listener the handshake is bounded by the same time.
    let mut no_handshake = Raw::connect_tcp(p.mqtts.expect("TLS listener")).await;
    let started = std::time::Instant::now();
    for (what, raw) in [
        ("half a CONNECT", &mut half),
        ("nothing", &mut silent),
        ("no TLS handshake", &mut no_handshake),
    ] {
        raw.closed_within(Duration::from_secs(4))
            .await
            .unwrap_or_else(|| panic!("{what}: still open"));
        let after = started.elapsed();
        assert!(
            after >= Duration::from_millis(800) && after < Duration::from_millis(2500),
            "{what}: closed after {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_bad_subscriptions_gets_failures_and_others_are_served() {
    let p = platform().await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let mut flooder = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
    let bad = [
        "#",
        "+/+/+",
        "c/+/+/q/#",
        "c///q/+",
        "c/t2//q/#",
        "telemetry",
        "c///q/#/more",
        "e///#/x",
        "command///q/#",
    ];
    let mut out = BytesMut::new();
    for pkid in 1..=1000u16 {
        let filter = bad[usize::from(pkid) % bad.len()];
        let mut s = v4::Subscribe::new(filter, QoS::AtLeastOnce);
        s.pkid = pkid;
        s.write(&mut out).expect("encode SUBSCRIBE");
    }
    flooder.send(&out).await;
    // Meanwhile a real client is served.
    p.telemetry_gets_through("during the flood");
    let m = tokio::task::block_in_place(|| c.next(Duration::from_secs(5))).expect("arrives");
    assert_eq!(m["body"], "during the flood");
    for pkid in 1..=1000u16 {
        match flooder.packet(Duration::from_secs(5)).await {
            Some(v4::Packet::SubAck(a)) => {
                assert_eq!(a.pkid, pkid, "SUBACKs in order");
                assert_eq!(a.return_codes, [v4::SubscribeReasonCode::Failure]);
            }
            other => panic!("SUBACK {pkid}: {other:?}"),
        }
    }
    // Refused subscriptions are no reason to drop the connection.
    flooder
        .send_packet(|out| {
            v4::PingReq.write(out).expect("encode");
        })
        .await;
    assert!(matches!(
        flooder.packet(Duration::from_secs(2)).await,
        Some(v4::Packet::PingResp)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_payloads_close_the_connection_and_reach_no_one() {
    let p = platform().await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let max = ferry_mqtt_adapter::Config::default().max_payload_bytes;
    // Just over the limit (the session's check) and far over it (the codec's).
    for size in [max + 1, max + 100, 100 * 1024] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let mut raw = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
            raw.publish("telemetry", qos, 1, &vec![b'x'; size]).await;
            assert!(
                raw.closed_within(Duration::from_secs(3)).await.is_some(),
                "{size} bytes at {qos:?}: still open"
            );
        }
    }
    // A command response is no exception (it once was, at QoS 0).
    let request_id = ferry_mqtt_adapter::topic::request_id("corr-1", "replies", false).expect("id");
    let mut raw = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
    raw.publish(
        &format!("c///s/{request_id}/200"),
        QoS::AtMostOnce,
        0,
        &vec![b'x'; max + 1],
    )
    .await;
    assert!(
        raw.closed_within(Duration::from_secs(3)).await.is_some(),
        "oversized command response: still open"
    );
    // The consumer's only message is the one that fits.
    p.telemetry_gets_through("fits");
    let m = tokio::task::block_in_place(|| c.next(Duration::from_secs(5))).expect("arrives");
    assert_eq!(m["body"], "fits");
}

#[tokio::test(flavor = "multi_thread")]
async fn qos_2_and_events_at_qos_0_close_the_connection() {
    let p = platform().await;
    let c = p.consumer("app1", "pw1", "event/t1", 1);
    for (topic, qos) in [
        ("telemetry", QoS::ExactlyOnce),
        ("event", QoS::ExactlyOnce),
        ("event", QoS::AtMostOnce),
        ("e", QoS::AtMostOnce),
    ] {
        let mut raw = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
        raw.publish(topic, qos, 1, b"refused").await;
        assert!(
            raw.closed_within(Duration::from_secs(3)).await.is_some(),
            "{topic} at {qos:?}: still open"
        );
    }
    assert!(tokio::task::block_in_place(|| c.next(Duration::from_millis(500))).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_client_is_closed_after_one_and_a_half_keep_alives() {
    let p = platform().await;
    let mut silent = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 1).await;
    let after = silent
        .closed_within(Duration::from_secs(4))
        .await
        .expect("closed");
    assert!(
        after >= Duration::from_millis(1200) && after < Duration::from_millis(2500),
        "closed after {after:?}"
    );
    // A client that pings stays.
    let mut pinging = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 1).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        pinging
            .send_packet(|out| {
                v4::PingReq.write(out).expect("encode");
            })
            .await;
        assert!(matches!(
            pinging.packet(Duration::from_secs(1)).await,
            Some(v4::Packet::PingResp)
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn other_devices_registry_changes_do_not_keep_a_silent_client_alive() {
    let p = platform().await;
    let mut silent = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 1).await;
    // Every change in the registry wakes every session; each wake-up once restarted the keep-alive.
    let churn = async {
        for i in 0..20 {
            p.manage(
                reqwest::Method::PUT,
                "/v1/devices/t1/gw",
                json!({ "defaults": { "n": i } }),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    };
    let (closed, ()) = tokio::join!(silent.closed_within(Duration::from_secs(4)), churn);
    let after = closed.expect("closed despite the churn");
    assert!(
        after < Duration::from_millis(2500),
        "closed after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipelined_qos1_flood_is_acknowledged_in_order() {
    let p = platform().await;
    let mut flooder = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
    // No consumer: every message fails, `on-error=ignore` acknowledges it anyway. More than the
    // session holds at once, so it must stop reading and catch up.
    let mut out = BytesMut::new();
    let count = 3000u16;
    for pkid in 1..=count {
        let mut publish = v4::Publish::new(
            "telemetry/?on-error=ignore",
            QoS::AtLeastOnce,
            b"flood".to_vec(),
        );
        publish.pkid = pkid;
        publish.write(&mut out).expect("encode");
    }
    flooder.send(&out).await;
    for pkid in 1..=count {
        match flooder.packet(Duration::from_secs(10)).await {
            Some(v4::Packet::PubAck(a)) => assert_eq!(a.pkid, pkid, "PUBACKs in order"),
            other => panic!("PUBACK {pkid}: {other:?}"),
        }
    }
}
