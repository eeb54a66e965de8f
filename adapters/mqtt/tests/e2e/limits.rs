//! Device and tenant `defaults`, the tenant's `max-ttl`, and the tenant's data volume, end to end.

use std::time::Duration;

use rumqttc::mqttbytes::{v4, QoS};
use serde_json::{json, Value};

use super::platform::{stderr, Platform, Raw};

fn json_line(line: Option<String>) -> Value {
    serde_json::from_str(&line.expect("a message arrives")).expect("JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn defaults_fill_in_and_the_tenant_caps_the_ttl() {
    let p = Platform::start().await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        json!({
            "defaults": { "content-type": "application/vnd.tenant+json", "ttl": 600, "region": "eu" },
            "resource-limits": { "max-ttl": 30 }
        }),
    )
    .await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/devices/t1/d1",
        json!({ "defaults": { "line": 7 } }),
    )
    .await;
    let events = p.header_consumer("app1", "pw1", "event/t1");
    // No content type in the message; a TTL of one hour in the property bag.
    let out = tokio::task::block_in_place(|| {
        p.mosquitto_pub("sensor1@t1", "hunter2", "event/?hono-ttl=3600", 1, "{}")
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let m = json_line(tokio::task::block_in_place(|| {
        events.line(Duration::from_secs(5))
    }));
    assert_eq!(m["content_type"], "application/vnd.tenant+json", "{m}");
    assert_eq!(m["ttl"], 30.0, "capped by max-ttl: {m}");
    assert_eq!(m["durable"], true);
    assert_eq!(m["properties"]["region"], "eu", "a tenant default: {m}");
    assert_eq!(m["properties"]["line"], 7, "a device default: {m}");

    // The device's own content type wins; without hono-ttl the tenant's default (600 s), capped.
    let out = tokio::task::block_in_place(|| {
        p.mosquitto_pub(
            "sensor1@t1",
            "hunter2",
            "event/?content-type=text%2Fplain",
            1,
            "x",
        )
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let m = json_line(tokio::task::block_in_place(|| {
        events.line(Duration::from_secs(5))
    }));
    assert_eq!(m["content_type"], "text/plain", "{m}");
    assert_eq!(m["ttl"], 30.0, "{m}");
}

/// `t1` may send 10 payload bytes per month.
async fn ten_bytes_a_month(p: &Platform) {
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        json!({ "resource-limits": { "data-volume": {
            "effective-since": "2020-01-01T00:00:00Z", "max-bytes": 10, "period": { "mode": "monthly" }
        } } }),
    )
    .await;
}

const PAHO_V5_QUOTA: &str = r#"
import sys, threading, paho.mqtt.client as mqtt
port = int(sys.argv[1])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-quota", protocol=mqtt.MQTTv5)
c.username_pw_set("sensor1@t1", "hunter2")
connected, acked, result = threading.Event(), threading.Event(), {}
def on_connect(cl, u, flags, rc, props=None):
    result["rc"] = rc
    connected.set()
def on_publish(cl, u, mid, rc, props=None):
    result["puback"] = rc
    acked.set()
c.on_connect, c.on_publish = on_connect, on_publish
c.connect("127.0.0.1", port, keepalive=30)
c.loop_start()
if not connected.wait(10):
    print("no connack", flush=True)
    sys.exit(1)
print("connack", result["rc"].value, flush=True)
if result["rc"].is_failure:
    sys.exit(0)
c.publish("telemetry", b"0123456789", qos=1)
acked.wait(5)
print("puback", result["puback"].value if "puback" in result else "none", flush=True)
c.disconnect()
c.loop_stop()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_data_volume_stops_messages_and_then_connections() {
    let p = Platform::start().await;
    ten_bytes_a_month(&p).await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 2);
    let mut raw = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
    raw.publish("telemetry", QoS::AtLeastOnce, 1, b"123456")
        .await;
    match raw.packet(Duration::from_secs(5)).await {
        Some(v4::Packet::PubAck(a)) => assert_eq!(a.pkid, 1),
        other => panic!("no PUBACK: {other:?}"),
    }
    // 6 + 6 > 10: discarded, not acknowledged (MQTT 3.1.1 has no negative PUBACK); the connection stays.
    raw.publish("telemetry", QoS::AtLeastOnce, 2, b"abcdef")
        .await;
    raw.send_packet(|out| {
        v4::PingReq.write(out).expect("encode");
    })
    .await;
    match raw.packet(Duration::from_secs(5)).await {
        Some(v4::Packet::PingResp) => {}
        other => panic!("the message must go unacknowledged and the session live on: {other:?}"),
    }
    // 6 + 4 = 10 still fits.
    raw.publish("telemetry", QoS::AtLeastOnce, 3, b"wxyz").await;
    match raw.packet(Duration::from_secs(5)).await {
        Some(v4::Packet::PubAck(a)) => assert_eq!(a.pkid, 3),
        other => panic!("no PUBACK: {other:?}"),
    }
    let bodies: Vec<Value> = (0..2)
        .map(|_| {
            tokio::task::block_in_place(|| c.next(Duration::from_secs(5))).expect("arrives")["body"]
                .clone()
        })
        .collect();
    assert_eq!(bodies, [json!("123456"), json!("wxyz")]);

    // Used up: MQTT 5 gets CONNACK 0x97 (quota exceeded), MQTT 3.1.1 0x05.
    let paho = p.paho(PAHO_V5_QUOTA, &[]);
    assert_eq!(
        paho.line(Duration::from_secs(10)).as_deref(),
        Some("connack 151")
    );
    let out = tokio::task::block_in_place(|| {
        p.mosquitto_pub("sensor1@t1", "hunter2", "telemetry", 0, "x")
    });
    assert!(stderr(&out).contains("not authorised"), "{}", stderr(&out));
    let text = p.admin.encode_metrics();
    assert!(
        text.contains(r#"hono_connections_attempts_total{component_type="adapter",component_name="hono-mqtt",outcome="data-volume-exceeded"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"hono_telemetry_processing_total{component_type="adapter",component_name="hono-mqtt",tenant="t1",type="telemetry",status="unprocessable",qos="1",ttd="none"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt5_hears_quota_exceeded_in_the_puback() {
    let p = Platform::start().await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        json!({ "resource-limits": { "data-volume": {
            "effective-since": "2020-01-01T00:00:00Z", "max-bytes": 15, "period": { "mode": "days", "no-of-days": 30 }
        } } }),
    )
    .await;
    let _c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    // The first 10 bytes fit, the second 10 do not: PUBACK reason 0x97, connection kept.
    let first = p.paho(PAHO_V5_QUOTA, &[]);
    assert_eq!(
        first.line(Duration::from_secs(10)).as_deref(),
        Some("connack 0")
    );
    assert_eq!(
        first.line(Duration::from_secs(10)).as_deref(),
        Some("puback 0")
    );
    let second = p.paho(PAHO_V5_QUOTA, &[]);
    assert_eq!(
        second.line(Duration::from_secs(10)).as_deref(),
        Some("connack 0")
    );
    assert_eq!(
        second.line(Duration::from_secs(10)).as_deref(),
        Some("puback 151")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_are_rejected_once_the_data_volume_is_used_up() {
    let p = Platform::start().await;
    ten_bytes_a_month(&p).await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let mut raw = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
    assert_eq!(
        raw.subscribe(1, "c///q/#", QoS::AtMostOnce).await,
        v4::SubscribeReasonCode::Success(QoS::AtMostOnce)
    );
    raw.publish("telemetry", QoS::AtLeastOnce, 2, b"0123456789")
        .await;
    match raw.packet(Duration::from_secs(5)).await {
        Some(v4::Packet::PubAck(a)) => assert_eq!(a.pkid, 2),
        other => panic!("no PUBACK: {other:?}"),
    }
    assert!(tokio::task::block_in_place(|| c.next(Duration::from_secs(5))).is_some());
    let script = super::platform::proton_script();
    let app = tokio::task::block_in_place(|| {
        std::process::Command::new(ferry_test_support::test_python())
            .arg(script)
            .args(["command", &format!("amqp://app1:pw1@{}", p.amqp)])
            .args(["t1", "d1", "reboot", "{}", "5"])
            .output()
            .expect("proton app")
    });
    let out = String::from_utf8_lossy(&app.stdout);
    assert!(out.contains("\"outcome\": \"rejected\""), "{out}");
    // The device never saw it.
    assert!(
        !matches!(
            raw.packet(Duration::from_millis(300)).await,
            Some(v4::Packet::Publish(_))
        ),
        "no command reaches the device"
    );
}
