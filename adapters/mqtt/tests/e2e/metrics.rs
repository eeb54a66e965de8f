//! The adapter's Prometheus metrics (HONO-CONTRACT §6) after real connections and messages.

use std::time::Duration;

use super::platform::{Platform, Raw};

/// The value of the sample `name{labels}` in `text`, which must be there.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .trim()
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_attempts_and_telemetry_are_counted() {
    let p = Platform::start().await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let refused =
        tokio::task::block_in_place(|| p.mosquitto_pub("sensor1@t1", "nope", "t", 0, "x"));
    assert!(!refused.status.success());
    let _held = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
    p.telemetry_gets_through("counted");
    assert!(tokio::task::block_in_place(|| c.next(Duration::from_secs(5))).is_some());

    // mosquitto_pub's session may end a moment after the process.
    let gauge = "hono_connections_authenticated{component_type=\"adapter\",component_name=\"hono-mqtt\",tenant=\"t1\"}";
    let mut text = p.admin.encode_metrics();
    for _ in 0..50 {
        if sample(&text, gauge) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = p.admin.encode_metrics();
    }
    assert_eq!(
        sample(&text, gauge),
        1.0,
        "the raw client is still connected, mosquitto_pub is gone"
    );
    assert_eq!(
        sample(
            &text,
            "hono_connections_attempts_total{component_type=\"adapter\",component_name=\"hono-mqtt\",outcome=\"succeeded\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "hono_connections_attempts_total{component_type=\"adapter\",component_name=\"hono-mqtt\",outcome=\"unauthorized\"}"
        ),
        1.0
    );
    let telemetry = "{component_type=\"adapter\",component_name=\"hono-mqtt\",tenant=\"t1\",type=\"telemetry\",status=\"forwarded\",qos=\"1\",ttd=\"none\"}";
    assert_eq!(
        sample(
            &text,
            &format!("hono_telemetry_processing_total{telemetry}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("hono_telemetry_payload_bytes_total{telemetry}")
        ),
        "counted".len() as f64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn qos0_telemetry_that_reaches_the_router_counts_as_forwarded_and_reports_no_error() {
    let p = Platform::start().await;
    // Proton grants its credit with the attach: once the link is open, the router has it.
    let c = p.consumer("app1", "pw1", "telemetry/t1", 5);
    let mut device = Raw::login(p.mqtt, "sensor1@t1", "hunter2", 30).await;
    assert_eq!(
        device
            .subscribe(1, "e///#", rumqttc::mqttbytes::QoS::AtMostOnce)
            .await,
        rumqttc::mqttbytes::v4::SubscribeReasonCode::Success(rumqttc::mqttbytes::QoS::AtMostOnce)
    );
    for _ in 0..2 {
        device
            .publish("t", rumqttc::mqttbytes::QoS::AtMostOnce, 0, b"zero")
            .await;
        let got = tokio::task::block_in_place(|| c.next(Duration::from_secs(5)));
        assert!(got.is_some(), "QoS 0 telemetry reaches the consumer");
    }
    // Pre-settled is as far as QoS 0 goes: it was delivered, so nothing on the error topic.
    if let Some(packet) = device.packet(Duration::from_millis(500)).await {
        panic!("nothing should come back for QoS 0 telemetry, got {packet:?}");
    }
    let series = |status: &str| {
        format!(
            "hono_telemetry_processing_total{{component_type=\"adapter\",component_name=\"hono-mqtt\",tenant=\"t1\",type=\"telemetry\",status=\"{status}\",qos=\"0\",ttd=\"none\"}}"
        )
    };
    let text = p.admin.encode_metrics();
    assert_eq!(sample(&text, &series("forwarded")), 2.0, "{text}");
    assert!(
        !text.contains(&series("undeliverable")),
        "delivered QoS 0 counted as undeliverable: {text}"
    );
}
