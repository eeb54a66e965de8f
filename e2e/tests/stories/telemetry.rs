//! Telemetry and events from MQTT and HTTP devices reach applications.

use std::time::Duration;

use ferry_e2e::{attached, curl, mosquitto_pub, proton_app, rhea_app, text, Ferry};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// The message of `messages` sent by `adapter`.
fn from<'a>(messages: &'a [Value], adapter: &str) -> &'a Value {
    messages
        .iter()
        .find(|m| m["properties"]["orig_adapter"] == adapter)
        .unwrap_or_else(|| panic!("no message from {adapter} in {messages:?}"))
}

#[test]
fn telemetry_from_mosquitto_pub_and_curl_reaches_a_rhea_application() {
    let ferry = Ferry::up();
    ferry.tenant("acme");
    ferry.device_with_password("acme", "thermo-1", "thermo1", "pw-thermo");
    ferry.application("dashboard", "pw-dash", &["acme"]);
    let app = attached(rhea_app(&[
        "consume",
        &ferry.amqp_url("dashboard", "pw-dash"),
        "telemetry/acme",
        "2",
        "20",
    ]));

    let out = mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "thermo1@acme",
            "-P",
            "pw-thermo",
            "-t",
            "telemetry/?content-type=application%2Fjson",
            "-m",
            r#"{"temp":21}"#,
        ],
    );
    assert!(out.status.success(), "mosquitto_pub: {}", text(&out.stderr));
    let posted = curl(&[
        "-u",
        "thermo1@acme:pw-thermo",
        "-H",
        "content-type: application/json",
        "--data-binary",
        r#"{"temp":22}"#,
        &ferry.http_url("/telemetry"),
    ]);
    assert_eq!(posted.status, 202, "{posted:?}");

    let messages = app.messages(2, WAIT);
    let mqtt = from(&messages, "hono-mqtt");
    assert_eq!(mqtt["body"], r#"{"temp":21}"#);
    assert_eq!(mqtt["properties"]["device_id"], "thermo-1");
    assert_eq!(mqtt["content_type"], "application/json");
    assert_eq!(mqtt["properties"]["qos"], 0);
    assert!(
        mqtt["creation_time"].as_i64().is_some_and(|t| t > 0),
        "{mqtt}"
    );
    let http = from(&messages, "hono-http");
    assert_eq!(http["body"], r#"{"temp":22}"#);
    assert_eq!(http["properties"]["device_id"], "thermo-1");
    assert_eq!(http["content_type"], "application/json");
    assert_eq!(http["properties"]["orig_address"], "/telemetry");
    // The tenant is in the address the application consumed from and in the message's resource.
    for m in [mqtt, http] {
        assert_eq!(
            m["annotations"]["resource"], "telemetry/acme/thermo-1",
            "{m}"
        );
    }
    // What a newcomer reads in `ferry up`'s log sent to a pipe: no colour codes, and no warning that
    // assertions will be refused when they are not (messages just went through).
    let log = ferry.process.log();
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a piped log:\n{log}"
    );
    assert!(!log.contains("JWKS"), "a false JWKS warning:\n{log}");
}

#[test]
fn telemetry_and_events_from_mosquitto_pub_and_curl_reach_a_proton_application() {
    let ferry = Ferry::up();
    ferry.tenant("acme");
    ferry.device_with_password("acme", "pump-7", "pump7", "pw-pump");
    ferry.application("control-room", "pw-cr", &["acme"]);
    let url = ferry.amqp_url("control-room", "pw-cr");
    let telemetry = attached(proton_app(&["consume", &url, "telemetry/acme", "2", "20"]));

    // At-least-once telemetry: the device's PUBACK and the 202 come after the application accepted.
    let out = mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "pump7@acme",
            "-P",
            "pw-pump",
            "-q",
            "1",
            "-t",
            "t",
            "-m",
            "rpm=1200",
        ],
    );
    assert!(out.status.success(), "mosquitto_pub: {}", text(&out.stderr));
    let posted = curl(&[
        "-u",
        "pump7@acme:pw-pump",
        "-H",
        "content-type: text/plain",
        "-H",
        "qos-level: 1",
        "--data-binary",
        "rpm=1250",
        &ferry.http_url("/telemetry"),
    ]);
    assert_eq!(posted.status, 202, "{posted:?}");
    let messages = telemetry.messages(2, WAIT);
    let mqtt = from(&messages, "hono-mqtt");
    assert_eq!(mqtt["body"], "rpm=1200");
    assert_eq!(mqtt["properties"]["qos"], 1);
    assert_eq!(mqtt["properties"]["device_id"], "pump-7");
    assert_eq!(mqtt["properties"]["orig_address"], "t");
    let http = from(&messages, "hono-http");
    assert_eq!(http["body"], "rpm=1250");
    assert_eq!(http["properties"]["qos"], 1);
    assert_eq!(http["content_type"], "text/plain");

    // Events: durable, with the device's content type.
    let out = mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "pump7@acme",
            "-P",
            "pw-pump",
            "-q",
            "1",
            "-t",
            "event/?content-type=text%2Fplain",
            "-m",
            "overheat",
        ],
    );
    assert!(out.status.success(), "mosquitto_pub: {}", text(&out.stderr));
    let posted = curl(&[
        "-u",
        "pump7@acme:pw-pump",
        "-H",
        "content-type: application/json",
        "--data-binary",
        r#"{"alarm":"leak"}"#,
        &ferry.http_url("/event"),
    ]);
    assert_eq!(posted.status, 202, "{posted:?}");
    let events = attached(proton_app(&["consume", &url, "event/acme", "2", "20"]));
    let messages = events.messages(2, WAIT);
    let mqtt = from(&messages, "hono-mqtt");
    assert_eq!(mqtt["body"], "overheat");
    assert_eq!(mqtt["content_type"], "text/plain");
    assert_eq!(mqtt["durable"], true);
    assert_eq!(mqtt["properties"]["device_id"], "pump-7");
    assert_eq!(mqtt["annotations"]["resource"], "event/acme/pump-7");
    let http = from(&messages, "hono-http");
    assert_eq!(http["body"], r#"{"alarm":"leak"}"#);
    assert_eq!(http["content_type"], "application/json");
    assert_eq!(http["durable"], true);
}
