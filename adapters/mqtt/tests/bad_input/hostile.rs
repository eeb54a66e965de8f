//! Peers that try to make the adapter hold what it should not (issue 15): sockets that never send a
//! CONNECT, more sockets than the instance allows, keep-alive 0 ("never idle"), and command responses
//! for another device's commands. Each is refused, and well-behaved devices are served meanwhile.

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::{v4, QoS};
use rumqttc::v5::mqttbytes::v5;
use serde_json::Value;

use super::platform::{self, Platform, Raw};

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_sockets_that_never_send_connect_is_cut_at_max_connecting() {
    let p = Platform::start_with(|c| {
        c.max_connecting = 10;
        // Long enough that the CONNECT timeout cannot be what closes them.
        c.connect_timeout_secs = 30;
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(Raw::connect_tcp(p.mqtt).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Beyond the cap: closed at once, not after the CONNECT timeout.
    let mut excess = Vec::new();
    for _ in 0..40 {
        excess.push(Raw::connect_tcp(p.mqtt).await);
    }
    for (i, raw) in excess.iter_mut().enumerate() {
        assert!(
            raw.closed_within(Duration::from_secs(2)).await.is_some(),
            "connection {i} beyond the cap still open"
        );
    }
    // Those within the cap are left alone.
    assert!(silent[0]
        .closed_within(Duration::from_millis(200))
        .await
        .is_none());
    // One of them gives up: a device takes its place, and once connected no longer counts.
    silent.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut device = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
    let mut gateway = Raw::login(p.mqtt, "gw1@t1", "gwpass", 30).await;
    for raw in [&mut device, &mut gateway] {
        raw.send_packet(|out| {
            v4::PingReq.write(out).expect("encode");
        })
        .await;
        assert!(matches!(
            raw.packet(Duration::from_secs(2)).await,
            Some(v4::Packet::PingResp)
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_max_sockets_a_new_connection_is_closed_unread() {
    let p = Platform::start_with(|c| {
        c.max_sockets = 3;
        c.connect_timeout_secs = 30;
    })
    .await;
    let mut device = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
    let gateway = Raw::login(p.mqtt, "gw1@t1", "gwpass", 30).await;
    let _silent = Raw::connect_tcp(p.mqtt).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..5 {
        let mut excess = Raw::connect_tcp(p.mqtt).await;
        assert!(
            excess.closed_within(Duration::from_secs(2)).await.is_some(),
            "connection {i} beyond max_sockets still open"
        );
    }
    // Those within the limit are served.
    device.publish("telemetry", QoS::AtMostOnce, 0, b"x").await;
    device
        .send_packet(|out| {
            v4::PingReq.write(out).expect("encode");
        })
        .await;
    assert!(matches!(
        device.packet(Duration::from_secs(2)).await,
        Some(v4::Packet::PingResp)
    ));
    // A connection that ends makes room for the next one.
    drop(gateway);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _again = Raw::login(p.mqtt, "gw1@t1", "gwpass", 30).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_asking_for_keep_alive_0_is_closed_after_the_server_maximum() {
    let p = Platform::start_with(|c| c.max_keep_alive_secs = 1).await;
    let mut silent = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 0).await;
    let after = silent
        .closed_within(Duration::from_secs(4))
        .await
        .expect("a client with keep-alive 0 was never closed");
    assert!(
        after >= Duration::from_millis(1200) && after < Duration::from_millis(2500),
        "closed after {after:?}"
    );
    // So is one asking for more than the maximum.
    let mut long = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 3600).await;
    assert!(long.closed_within(Duration::from_secs(4)).await.is_some());
}

/// An MQTT 5 CONNECT of `sensor1@t1` with `keep_alive`.
fn connect_v5(keep_alive: u16) -> BytesMut {
    let connect = v5::Connect {
        keep_alive,
        client_id: "raw-v5".into(),
        clean_start: true,
        properties: None,
    };
    let login = Some(v5::Login {
        username: "sensor1@t1".into(),
        password: "hunter2".into(),
    });
    let mut out = BytesMut::new();
    connect.write(&None, &login, &mut out).expect("encode");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt5_client_asking_for_keep_alive_0_is_told_the_server_keep_alive_and_held_to_it() {
    let p = Platform::start_with(|c| c.max_keep_alive_secs = 1).await;
    let mut raw = Raw::connect_tcp(p.mqtt).await;
    raw.send(&connect_v5(0)).await;
    let mut buf = BytesMut::new();
    let connack = loop {
        match v5::Packet::read(&mut buf, None) {
            Ok(v5::Packet::ConnAck(a)) => break a,
            Ok(other) => panic!("expected CONNACK, got {other:?}"),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("unreadable: {e:?}"),
        }
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_buf(&mut raw.stream, &mut buf),
        )
        .await;
        assert!(matches!(read, Ok(Ok(n)) if n > 0), "no CONNACK");
    };
    assert_eq!(connack.code, v5::ConnectReturnCode::Success);
    assert_eq!(
        connack.properties.and_then(|p| p.server_keep_alive),
        Some(1),
        "no Server Keep Alive in the CONNACK"
    );
    let after = raw
        .closed_within(Duration::from_secs(4))
        .await
        .expect("never closed");
    assert!(
        after < Duration::from_millis(2500),
        "closed after {after:?}"
    );
    // A client asking for a keep-alive within the maximum hears nothing about it.
    let mut raw = Raw::connect_tcp(p.mqtt).await;
    raw.send(&connect_v5(1)).await;
    let mut buf = BytesMut::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_buf(&mut raw.stream, &mut buf),
    )
    .await;
    match v5::Packet::read(&mut buf, None) {
        Ok(v5::Packet::ConnAck(a)) => {
            assert_eq!(a.code, v5::ConnectReturnCode::Success);
            assert_eq!(a.properties.and_then(|p| p.server_keep_alive), None);
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// The request id of a command `c///q/REQ_ID/NAME` that `raw` receives.
async fn command_request_id(raw: &mut Raw) -> String {
    match raw.packet(Duration::from_secs(10)).await {
        Some(v4::Packet::Publish(p)) => {
            let topic = p.topic;
            let levels: Vec<&str> = topic.split('/').collect();
            assert_eq!(levels.get(3), Some(&"q"), "{topic}");
            levels
                .get(4)
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| panic!("no request id in {topic}"))
                .to_string()
        }
        other => panic!("no command: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_and_gateways_cannot_answer_another_devices_commands() {
    let p = Platform::start().await;
    // `behind` becomes a device that can log in; it is nobody's gateway. `gw` is `behind`'s gateway,
    // not `d1`'s.
    p.password("t1", "behind", "behind1", "behindpass").await;
    let mut d1 = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
    assert_eq!(
        d1.subscribe(1, "c///q/#", QoS::AtMostOnce).await,
        v4::SubscribeReasonCode::Success(QoS::AtMostOnce)
    );
    let app = Command::new(ferry_test_support::test_python())
        .arg(platform::proton_script())
        .args([
            "command",
            &format!("amqp://app1:pw1@{}", p.amqp),
            "t1",
            "d1",
            "setBrightness",
            "{\"b\":5}",
            "10",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("proton app");
    let request_id = command_request_id(&mut d1).await;
    let topic = format!("c//d1/s/{request_id}/200");

    // A device answers for d1: QoS 0 is dropped, QoS 1 closes its connection.
    let mut device = Raw::login(p.mqtt, "behind1@t1", "behindpass", 30).await;
    device
        .publish(&topic, QoS::AtMostOnce, 0, b"forged by a device")
        .await;
    device
        .publish(&topic, QoS::AtLeastOnce, 1, b"forged by a device, qos 1")
        .await;
    assert!(
        device.closed_within(Duration::from_secs(3)).await.is_some(),
        "a device answering for another one stays connected"
    );
    // A gateway that d1 does not list in `via`: the same.
    let mut gateway = Raw::login(p.mqtt, "gw1@t1", "gwpass", 30).await;
    gateway
        .publish(&topic, QoS::AtMostOnce, 0, b"forged by a gateway")
        .await;
    gateway
        .publish(&topic, QoS::AtLeastOnce, 1, b"forged by a gateway, qos 1")
        .await;
    assert!(
        gateway
            .closed_within(Duration::from_secs(3))
            .await
            .is_some(),
        "a gateway answering for a device not behind it stays connected"
    );

    // d1 itself answers: that is the response the application gets, and the only one.
    d1.publish(
        &format!("c///s/{request_id}/200"),
        QoS::AtLeastOnce,
        2,
        b"{\"done\":true}",
    )
    .await;
    let puback = d1.packet(Duration::from_secs(5)).await;
    let out = tokio::task::spawn_blocking(move || app.wait_with_output())
        .await
        .expect("join")
        .expect("proton app");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let responses: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("response").is_some())
        .collect();
    assert_eq!(
        responses.first().map(|r| &r["response"]),
        Some(&Value::from("{\"done\":true}")),
        "the application got a forged response: {lines:?}"
    );
    assert_eq!(responses.len(), 1, "{lines:?}");
    assert_eq!(responses[0]["correlation_id"], "cmd-1", "{lines:?}");
    match puback {
        Some(v4::Packet::PubAck(a)) => assert_eq!(a.pkid, 2),
        other => panic!("no PUBACK for d1's own response: {other:?}"),
    }
}
