//! What applications hear about a device's reachability on `event/TENANT` (HONO-CONTRACT §1.2, §1.3):
//! ttd notifications on command SUBSCRIBE / UNSUBSCRIBE / disconnect, and with `connection_events`,
//! Hono's connection events.

use std::time::Duration;

use rumqttc::mqttbytes::{v4, QoS};
use serde_json::Value;

use super::platform::{Consumer, Platform, Raw};

const EMPTY: &str = "application/vnd.eclipse-hono-empty-notification";
const CONNECTION: &str = "application/vnd.eclipse-hono-dc-notification+json";

fn next_event(c: &Consumer) -> Value {
    tokio::task::block_in_place(|| c.next(Duration::from_secs(5))).expect("a notification")
}

fn assert_ttd(m: &Value, device: &str, ttd: i64) {
    assert_eq!(m["content_type"], EMPTY, "{m}");
    assert_eq!(m["properties"]["ttd"], ttd, "{m}");
    assert_eq!(m["properties"]["device_id"], device, "{m}");
    assert_eq!(m["properties"]["orig_adapter"], "hono-mqtt", "{m}");
    assert_eq!(m["body"], "", "{m}");
}

fn assert_connection(m: &Value, cause: &str, remote_id: &str) {
    assert_eq!(m["content_type"], CONNECTION, "{m}");
    assert_eq!(m["properties"]["device_id"], "d1", "{m}");
    assert!(m["properties"].get("ttd").is_none(), "{m}");
    let body: Value = serde_json::from_str(m["body"].as_str().expect("a body")).expect("JSON");
    assert_eq!(
        body,
        serde_json::json!({"cause": cause, "remote-id": remote_id, "source": "hono-mqtt", "data": {}})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn command_subscriptions_announce_ttd_minus_one_then_zero() {
    let p = Platform::start().await;
    let c = p.consumer("app1", "pw1", "event/t1", 10);
    let mut device = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
    assert_eq!(
        device.subscribe(1, "c///q/#", QoS::AtLeastOnce).await,
        v4::SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_ttd(&next_event(&c), "d1", -1);
    device.unsubscribe(2, "c///q/#").await;
    assert_ttd(&next_event(&c), "d1", 0);
    // Subscribed again, then gone without UNSUBSCRIBE: the disconnect says ttd 0.
    device
        .subscribe(3, "command///req/#", QoS::AtMostOnce)
        .await;
    assert_ttd(&next_event(&c), "d1", -1);
    drop(device);
    assert_ttd(&next_event(&c), "d1", 0);
    // Connection events are off by default; a refused subscription announces nothing.
    let mut device = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
    assert_eq!(
        device.subscribe(4, "c///q/+", QoS::AtLeastOnce).await,
        v4::SubscribeReasonCode::Failure
    );
    drop(device);
    assert!(tokio::task::block_in_place(|| c.next(Duration::from_millis(700))).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_s_subscription_for_its_device_announces_that_device() {
    let p = Platform::start().await;
    let c = p.consumer("app1", "pw1", "event/t1", 10);
    let mut gateway = Raw::login(p.mqtt, "gw1@t1", "gwpass", 30).await;
    assert_eq!(
        gateway
            .subscribe(1, "c//behind/q/#", QoS::AtLeastOnce)
            .await,
        v4::SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_ttd(&next_event(&c), "behind", -1);
    gateway.unsubscribe(2, "c//behind/q/#").await;
    assert_ttd(&next_event(&c), "behind", 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_s_subscription_for_all_its_devices_announces_the_gateway() {
    let p = Platform::start().await;
    let c = p.consumer("app1", "pw1", "event/t1", 10);
    let mut gateway = Raw::login(p.mqtt, "gw1@t1", "gwpass", 30).await;
    assert_eq!(
        gateway.subscribe(1, "c//+/q/#", QoS::AtLeastOnce).await,
        v4::SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_ttd(&next_event(&c), "gw", -1);
    gateway.unsubscribe(2, "c//+/q/#").await;
    assert_ttd(&next_event(&c), "gw", 0);
    // Again, then gone without UNSUBSCRIBE.
    gateway
        .subscribe(3, "command//+/req/#", QoS::AtMostOnce)
        .await;
    assert_ttd(&next_event(&c), "gw", -1);
    drop(gateway);
    assert_ttd(&next_event(&c), "gw", 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_events_bracket_the_ttd_notifications() {
    let p = Platform::start_with(|c| c.connection_events = true).await;
    let c = p.consumer("app1", "pw1", "event/t1", 10);
    let mut device = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
    assert_connection(&next_event(&c), "connected", "raw-sensor1@t1");
    device.subscribe(1, "c///q/#", QoS::AtLeastOnce).await;
    assert_ttd(&next_event(&c), "d1", -1);
    drop(device);
    assert_ttd(&next_event(&c), "d1", 0);
    assert_connection(&next_event(&c), "disconnected", "raw-sensor1@t1");
    // A refused login is not a connection.
    let out = tokio::task::block_in_place(|| p.mosquitto_pub("sensor1@t1", "wrong", "t", 0, "x"));
    assert!(!out.status.success());
    assert!(tokio::task::block_in_place(|| c.next(Duration::from_millis(700))).is_none());
}
