//! A gateway publishes for the devices behind it (the registry's `via`), over MQTT and HTTP; for a
//! device that does not list it, it is refused.

use std::time::Duration;

use ferry_e2e::{attached, curl, mosquitto_pub, rhea_app, text, Ferry};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn a_gateway_publishes_for_its_device_over_mqtt_and_http() {
    let ferry = Ferry::up();
    ferry.tenant("plant");
    ferry.device_with_password("plant", "gw-1", "gw1", "pw-gw");
    ferry.device("plant", "sensor-behind", r#"{"via": ["gw-1"]}"#);
    ferry.device("plant", "sensor-elsewhere", "{}");
    ferry.application("scada", "pw-scada", &["plant"]);
    let app = attached(rhea_app(&[
        "consume",
        &ferry.amqp_url("scada", "pw-scada"),
        "telemetry/plant",
        "3",
        "20",
    ]));

    let out = mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "gw1@plant",
            "-P",
            "pw-gw",
            "-q",
            "1",
            "-t",
            "telemetry//sensor-behind",
            "-m",
            "via mqtt",
        ],
    );
    assert!(out.status.success(), "mosquitto_pub: {}", text(&out.stderr));
    let put = curl(&[
        "-u",
        "gw1@plant:pw-gw",
        "-X",
        "PUT",
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "via http",
        &ferry.http_url("/telemetry/plant/sensor-behind"),
    ]);
    assert_eq!(put.status, 202, "{put:?}");

    // Not the gateway of sensor-elsewhere: MQTT closes the connection (no PUBACK), HTTP answers 403.
    let out = mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "gw1@plant",
            "-P",
            "pw-gw",
            "-q",
            "1",
            "-t",
            "telemetry//sensor-elsewhere",
            "-m",
            "sneaky",
        ],
    );
    assert!(!out.status.success(), "refused: {}", text(&out.stdout));
    let put = curl(&[
        "-u",
        "gw1@plant:pw-gw",
        "-X",
        "PUT",
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "sneaky",
        &ferry.http_url("/telemetry/plant/sensor-elsewhere"),
    ]);
    assert_eq!(put.status, 403, "{put:?}");

    // The gateway's own telemetry, last: the application got exactly the two messages before it.
    let out = mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "gw1@plant",
            "-P",
            "pw-gw",
            "-q",
            "1",
            "-t",
            "telemetry",
            "-m",
            "gateway itself",
        ],
    );
    assert!(out.status.success(), "mosquitto_pub: {}", text(&out.stderr));
    let messages = app.messages(3, WAIT);
    let seen: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| {
            (
                m["properties"]["device_id"].as_str().expect("device_id"),
                m["body"].as_str().expect("body"),
            )
        })
        .collect();
    assert!(seen.contains(&("sensor-behind", "via mqtt")), "{seen:?}");
    assert!(seen.contains(&("sensor-behind", "via http")), "{seen:?}");
    assert_eq!(seen[2], ("gw-1", "gateway itself"), "{seen:?}");
    let http = messages
        .iter()
        .find(|m| m["body"] == "via http")
        .expect("via http");
    assert_eq!(http["properties"]["orig_adapter"], "hono-http");
    assert_eq!(
        http["annotations"]["resource"],
        "telemetry/plant/sensor-behind"
    );
}
