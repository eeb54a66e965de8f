//! End-to-end tests of the MQTT adapter with clients no one here wrote: `mosquitto_pub` and paho-mqtt
//! publish, a Qpid Proton application consumes from the router. Registry, router and adapter run in this
//! process on 127.0.0.1:0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

// Shared with the `bad_input` binary, which uses other parts of it.
#[allow(dead_code)]
mod platform;

mod cluster;
mod connection_events;
mod device_auth;
mod limits;
mod metrics;
mod mqtt5;
mod tls;

use platform::{stderr, Platform};

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_pub_telemetry_reaches_a_proton_consumer_with_hono_properties() {
    let p = Platform::start().await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 2);
    for qos in [0u8, 1] {
        let out = tokio::task::block_in_place(|| {
            p.mosquitto_pub(
                "sensor1@t1",
                "hunter2",
                "telemetry",
                qos,
                &format!("{{\"qos\":{qos}}}"),
            )
        });
        assert!(out.status.success(), "qos {qos}: {}", stderr(&out));
    }
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let m = c.next(Duration::from_secs(5)).expect("telemetry arrives");
        assert_eq!(m["properties"]["device_id"], "d1", "{m}");
        assert_eq!(m["properties"]["orig_adapter"], "hono-mqtt", "{m}");
        assert!(m["properties"].get("reg_assertion").is_none());
        bodies.push(m["body"].as_str().expect("body").to_owned());
    }
    bodies.sort();
    assert_eq!(bodies, ["{\"qos\":0}", "{\"qos\":1}"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_stored_and_delivered_later() {
    let p = Platform::start().await;
    let out = tokio::task::block_in_place(|| {
        p.mosquitto_pub(
            "sensor1@t1",
            "hunter2",
            "event/?content-type=text%2Fplain",
            1,
            "alarm",
        )
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let c = p.consumer("app1", "pw1", "event/t1", 1);
    let m = c
        .next(Duration::from_secs(5))
        .expect("the stored event arrives");
    assert_eq!(m["body"], "alarm");
    assert_eq!(m["content_type"], "text/plain");
}

#[tokio::test(flavor = "multi_thread")]
async fn qos1_without_consumer_is_not_acknowledged() {
    let p = Platform::start().await;
    let out = tokio::task::block_in_place(|| {
        p.mosquitto_pub("sensor1@t1", "hunter2", "telemetry", 1, "lost")
    });
    assert!(
        !out.status.success(),
        "no PUBACK while nobody consumes: {}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_and_disabled_things_are_refused() {
    let p = Platform::start().await;
    let refused = |user: &str, pw: &str| {
        let out = tokio::task::block_in_place(|| p.mosquitto_pub(user, pw, "telemetry", 0, "x"));
        assert!(!out.status.success(), "{user} must be refused");
        stderr(&out)
    };
    assert!(
        refused("sensor1@t1", "wrong").contains("bad user name or password"),
        "{}",
        refused("sensor1@t1", "wrong")
    );
    assert!(refused("sensor1@nope", "hunter2").contains("bad user name or password"));
    p.manage(
        reqwest::Method::PUT,
        "/v1/devices/t1/d1",
        json!({ "enabled": false }),
    )
    .await;
    assert!(refused("sensor1@t1", "hunter2").contains("not authorised"));
    p.manage(reqwest::Method::PUT, "/v1/devices/t1/d1", json!({}))
        .await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        json!({ "adapters": [{ "type": "hono-mqtt", "enabled": false }, { "type": "hono-http", "enabled": true }] }),
    )
    .await;
    assert!(refused("sensor1@t1", "hunter2").contains("not authorised"));
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        json!({ "enabled": false }),
    )
    .await;
    assert!(refused("sensor1@t1", "hunter2").contains("not authorised"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_publishes_for_its_device_and_another_tenants_topic_is_refused() {
    let p = Platform::start().await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let out = tokio::task::block_in_place(|| {
        p.mosquitto_pub("gw1@t1", "gwpass", "telemetry/t1/behind", 1, "via gw")
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let m = c.next(Duration::from_secs(5)).expect("arrives");
    assert_eq!(m["properties"]["device_id"], "behind");
    // d1 is not a gateway of anyone: publishing for "behind" is refused.
    let out = tokio::task::block_in_place(|| {
        p.mosquitto_pub("sensor1@t1", "hunter2", "telemetry/t1/behind", 1, "x")
    });
    assert!(!out.status.success());
    // Another tenant's topic: refused, and t2's consumer sees nothing.
    let c2 = p.consumer("app2", "pw2", "telemetry/t2", 1);
    let out = tokio::task::block_in_place(|| {
        p.mosquitto_pub("sensor1@t1", "hunter2", "telemetry/t2/d1", 1, "intrusion")
    });
    assert!(!out.status.success());
    assert!(c2.next(Duration::from_millis(500)).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn paho_device_is_cut_off_within_a_second_when_disabled() {
    let p = Platform::start().await;
    assert_cut_off_within_a_second(&p, "/v1/devices/t1/d1", json!({ "enabled": false })).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn paho_device_is_cut_off_within_a_second_when_its_credentials_change() {
    let p = Platform::start().await;
    let new_password = json!([{
        "type": "hashed-password",
        "auth-id": "sensor1",
        "secrets": [{ "pwd-plain": "a-new-secret" }]
    }]);
    assert_cut_off_within_a_second(&p, "/v1/credentials/t1/d1", new_password).await;
    // The old password no longer works; the new one does.
    let connect = |password: &str| {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &p.mqtt.port().to_string()])
            .args([
                "-u",
                "sensor1@t1",
                "-P",
                password,
                "-t",
                "telemetry",
                "-m",
                "x",
            ])
            .output()
            .expect("mosquitto_pub")
    };
    assert!(!connect("hunter2").status.success());
    assert!(connect("a-new-secret").status.success());
}

/// Connects paho as sensor1@t1, publishes an event, applies `PUT path body` to the registry, and
/// asserts that the adapter drops the connection within a second.
async fn assert_cut_off_within_a_second(p: &Platform, path: &str, body: serde_json::Value) {
    let _c = p.consumer("app1", "pw1", "telemetry/t1", 100);
    let python = ferry_test_support::test_python();
    let script = r#"
import sys, time, paho.mqtt.client as mqtt
port = int(sys.argv[1])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-d1")
c.username_pw_set("sensor1@t1", "hunter2")
state = {}
c.on_connect = lambda cl, u, f, rc, p=None: print("connected", rc, flush=True)
def gone(cl, u, f, rc, p=None):
    print("disconnected", flush=True)
c.on_disconnect = gone
c.connect("127.0.0.1", port, keepalive=30)
c.loop_start()
r = c.publish("event", b"from paho", qos=1)
r.wait_for_publish(5)
print("event published", r.is_published(), flush=True)
time.sleep(8)
"#;
    let mut child = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(p.mqtt.port().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("paho connects");
    assert!(first.starts_with("connected"), "{first}");
    let published = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("paho publishes");
    assert_eq!(published, "event published True");
    p.manage(reqwest::Method::PUT, path, body).await;
    let started = std::time::Instant::now();
    let line = rx
        .recv_timeout(Duration::from_secs(3))
        .expect("paho is disconnected");
    assert_eq!(line, "disconnected");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "cut off after {:?}",
        started.elapsed()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A paho device subscribed to its commands; answers each request with status 200 and echoes the payload.
const PAHO_COMMAND_DEVICE: &str = r#"
import sys, time, paho.mqtt.client as mqtt
port, qos = int(sys.argv[1]), int(sys.argv[2])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-cmd")
c.username_pw_set("sensor1@t1", "hunter2")
def on_connect(cl, u, f, rc, p=None):
    cl.subscribe("c///q/#", qos=qos)
def on_subscribe(cl, u, mid, codes, p=None):
    print("subscribed", [getattr(x, "value", x) for x in codes], flush=True)
def on_message(cl, u, msg):
    print("command", msg.topic, msg.payload.decode(), flush=True)
    parts = msg.topic.split("/")
    req = parts[4]
    if req:
        cl.publish("c///s/%s/200" % req, b'{"done":true}', qos=1)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", port, keepalive=30)
c.loop_start()
time.sleep(15)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_command_from_a_proton_application_reaches_a_paho_device_and_its_response_returns() {
    let p = Platform::start().await;
    for qos in ["1", "0"] {
        let mut device = Command::new(ferry_test_support::test_python())
            .arg("-c")
            .arg(PAHO_COMMAND_DEVICE)
            .arg(p.mqtt.port().to_string())
            .arg(qos)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python");
        let stdout = device.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let subscribed = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("paho subscribes");
        assert_eq!(subscribed, format!("subscribed [{qos}]"));

        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../router/tests/proton/client.py"
        );
        let app = Command::new(ferry_test_support::test_python())
            .arg(script)
            .args([
                "command",
                &format!("amqp://app1:pw1@{}", p.amqp),
                "t1",
                "d1",
                "setBrightness",
                "{\"b\":80}",
            ])
            .output()
            .expect("proton app");
        let lines: Vec<Value> = String::from_utf8_lossy(&app.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let command = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the device gets the command");
        assert!(command.starts_with("command c///q/"), "{command}");
        assert!(command.ends_with("/setBrightness {\"b\":80}"), "{command}");
        assert!(
            lines.iter().any(|l| l["outcome"] == "accepted"),
            "qos {qos}: {lines:?}"
        );
        let response = lines
            .iter()
            .find(|l| l.get("response").is_some())
            .expect("a response");
        assert_eq!(response["response"], "{\"done\":true}");
        assert_eq!(response["correlation_id"], "cmd-1");
        assert_eq!(response["properties"]["status"], 200);
        let _ = device.kill();
        let _ = device.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_for_a_device_without_subscription_is_released() {
    let p = Platform::start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../router/tests/proton/client.py"
    );
    let app = tokio::task::block_in_place(|| {
        Command::new(ferry_test_support::test_python())
            .arg(script)
            .args([
                "command",
                &format!("amqp://app1:pw1@{}", p.amqp),
                "t1",
                "d1",
                "reboot",
                "{}",
                "5",
            ])
            .output()
            .expect("proton app")
    });
    let out = String::from_utf8_lossy(&app.stdout);
    assert!(out.contains("\"outcome\": \"released\""), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_refused_for_a_device_does_not_take_its_commands() {
    let p = Platform::start().await;
    let device = p.paho(PAHO_COMMAND_DEVICE, &["1"]);
    let subscribed = device
        .line(Duration::from_secs(10))
        .expect("paho subscribes");
    assert_eq!(subscribed, "subscribed [1]");
    // d1 lists no gateway: gw may not subscribe for it. Its attempt once replaced d1's route and then
    // removed it, so d1's commands were released until d1 subscribed again.
    let mut gateway = platform::Raw::login(p.mqtt, "gw1@t1", "gwpass", 30).await;
    assert_eq!(
        gateway
            .subscribe(1, "c//d1/q/#", rumqttc::mqttbytes::QoS::AtLeastOnce)
            .await,
        rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure
    );
    let app = tokio::task::block_in_place(|| {
        Command::new(ferry_test_support::test_python())
            .arg(platform::proton_script())
            .args([
                "command",
                &format!("amqp://app1:pw1@{}", p.amqp),
                "t1",
                "d1",
                "setBrightness",
                "{\"b\":1}",
                "5",
            ])
            .output()
            .expect("proton app")
    });
    let out = String::from_utf8_lossy(&app.stdout);
    assert!(out.contains("\"outcome\": \"accepted\""), "{out}");
    let command = device
        .line(Duration::from_secs(5))
        .expect("d1 gets the command");
    assert!(command.ends_with("/setBrightness {\"b\":1}"), "{command}");
    assert!(
        gateway.packet(Duration::from_millis(300)).await.is_none(),
        "nothing for the gateway"
    );
}

/// A paho client (user, password, filter, QoS) subscribed to commands; prints each one and answers a
/// request on the response topic that mirrors the command topic (`c`/`q` → `c`/`s`, `command`/`req` →
/// `command`/`res`, same tenant and device levels) with status 200.
const PAHO_COMMAND_CLIENT: &str = r#"
import sys, time, paho.mqtt.client as mqtt
port, user, password, flt, qos = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-" + user)
c.username_pw_set(user, password)
def on_connect(cl, u, f, rc, p=None):
    cl.subscribe(flt, qos=qos)
def on_subscribe(cl, u, mid, codes, p=None):
    print("subscribed", [getattr(x, "value", x) for x in codes], flush=True)
def on_message(cl, u, msg):
    print("command", msg.topic, msg.payload.decode(), flush=True)
    endpoint, tenant, device, _, req = msg.topic.split("/")[:5]
    if req:
        res = "s" if endpoint == "c" else "res"
        cl.publish("%s/%s/%s/%s/%s/200" % (endpoint, tenant, device, res, req), b'{"done":true}', qos=1)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", port, keepalive=30)
c.loop_start()
time.sleep(20)
"#;

/// Sends one request/response command with the Proton client; its JSON lines.
fn proton_command(p: &Platform, device: &str, name: &str) -> Vec<Value> {
    let out = tokio::task::block_in_place(|| {
        Command::new(ferry_test_support::test_python())
            .arg(platform::proton_script())
            .args([
                "command",
                &format!("amqp://app1:pw1@{}", p.amqp),
                "t1",
                device,
                name,
                "{\"b\":7}",
                "5",
            ])
            .output()
            .expect("proton app")
    });
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn assert_answered(lines: &[Value], what: &str) {
    assert!(
        lines.iter().any(|l| l["outcome"] == "accepted"),
        "{what}: {lines:?}"
    );
    let response = lines
        .iter()
        .find(|l| l.get("response").is_some())
        .unwrap_or_else(|| panic!("{what}: no response in {lines:?}"));
    assert_eq!(response["response"], "{\"done\":true}", "{what}");
    assert_eq!(response["properties"]["status"], 200, "{what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_subscribed_for_all_its_devices_gets_their_commands_and_answers_them() {
    let p = Platform::start().await;
    let gateway = p.paho(
        PAHO_COMMAND_CLIENT,
        &["gw1@t1", "gwpass", "command//+/req/#", "1"],
    );
    assert_eq!(
        gateway.line(Duration::from_secs(10)).as_deref(),
        Some("subscribed [1]")
    );

    // `behind` lists gw in its via and has no subscription of its own: the gateway gets its command,
    // with the device level, and its response reaches the application.
    let lines = proton_command(&p, "behind", "setBrightness");
    let command = gateway
        .line(Duration::from_secs(5))
        .expect("the gateway gets behind's command");
    assert!(
        command.starts_with("command command//behind/req/"),
        "{command}"
    );
    assert!(command.ends_with("/setBrightness {\"b\":7}"), "{command}");
    assert_answered(&lines, "behind through the gateway");

    // The gateway's own commands come on the same filter, without the device level.
    let lines = proton_command(&p, "gw", "reboot");
    let command = gateway.line(Duration::from_secs(5)).expect("own command");
    assert!(command.starts_with("command command///req/"), "{command}");
    assert!(command.ends_with("/reboot {\"b\":7}"), "{command}");
    assert_answered(&lines, "the gateway's own command");

    // d1 does not list gw: its command is released and the gateway sees nothing.
    let lines = proton_command(&p, "d1", "setBrightness");
    assert!(
        lines.iter().any(|l| l["outcome"] == "released"),
        "{lines:?}"
    );
    assert!(gateway.line(Duration::from_millis(300)).is_none());

    // behind connects itself and subscribes: its own subscription wins over the gateway's.
    p.password("t1", "behind", "behind1", "behindpass").await;
    let own = p.paho(
        PAHO_COMMAND_CLIENT,
        &["behind1@t1", "behindpass", "c///q/#", "0"],
    );
    assert_eq!(
        own.line(Duration::from_secs(10)).as_deref(),
        Some("subscribed [0]")
    );
    let lines = proton_command(&p, "behind", "setBrightness");
    let command = own
        .line(Duration::from_secs(5))
        .expect("behind gets its own command");
    assert!(command.starts_with("command c///q/"), "{command}");
    assert_answered(&lines, "behind's own subscription");
    assert!(gateway.line(Duration::from_millis(300)).is_none());

    // behind goes away: its commands go through the gateway again.
    drop(own);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = proton_command(&p, "behind", "setBrightness");
    let command = gateway
        .line(Duration::from_secs(5))
        .expect("the gateway takes over again");
    assert!(
        command.starts_with("command command//behind/req/"),
        "{command}"
    );
    assert_answered(&lines, "back through the gateway");
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_go_to_the_gateway_a_device_last_sent_through() {
    let p = Platform::start().await;
    p.manage(reqwest::Method::POST, "/v1/devices/t1/gw2", json!({}))
        .await;
    p.password("t1", "gw2", "gw2", "gw2pass").await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/devices/t1/behind",
        json!({ "via": ["gw", "gw2"] }),
    )
    .await;
    let first = p.paho(PAHO_COMMAND_CLIENT, &["gw1@t1", "gwpass", "c//+/q/#", "1"]);
    let second = p.paho(PAHO_COMMAND_CLIENT, &["gw2@t1", "gw2pass", "c//+/q/#", "1"]);
    for g in [&first, &second] {
        assert_eq!(
            g.line(Duration::from_secs(10)).as_deref(),
            Some("subscribed [1]")
        );
    }
    // Each gateway in turn publishes for behind; the next commands follow it.
    for (user, password, expect, other) in [
        ("gw2@t1", "gw2pass", &second, &first),
        ("gw1@t1", "gwpass", &first, &second),
    ] {
        let out = tokio::task::block_in_place(|| {
            p.mosquitto_pub(user, password, "telemetry//behind", 0, "{\"t\":1}")
        });
        assert!(out.status.success(), "{}", platform::stderr(&out));
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..3 {
            let lines = proton_command(&p, "behind", "x");
            let command = expect
                .line(Duration::from_secs(5))
                .unwrap_or_else(|| panic!("{user} gets behind's command: {lines:?}"));
            assert!(command.starts_with("command c//behind/q/"), "{command}");
            assert_answered(&lines, user);
        }
        assert!(other.line(Duration::from_millis(200)).is_none());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateways_all_devices_subscription_ends_with_unsubscribe() {
    let p = Platform::start().await;
    let mut gateway = platform::Raw::login(p.mqtt, "gw1@t1", "gwpass", 30).await;
    assert_eq!(
        gateway
            .subscribe(1, "c//+/q/#", rumqttc::mqttbytes::QoS::AtMostOnce)
            .await,
        rumqttc::mqttbytes::v4::SubscribeReasonCode::Success(rumqttc::mqttbytes::QoS::AtMostOnce)
    );
    // Another tenant's filter, and `+` with QoS 2, are refused.
    assert_eq!(
        gateway
            .subscribe(2, "c/t2/+/q/#", rumqttc::mqttbytes::QoS::AtMostOnce)
            .await,
        rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure
    );
    assert_eq!(
        gateway
            .subscribe(3, "c//+/q/#", rumqttc::mqttbytes::QoS::ExactlyOnce)
            .await,
        rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure
    );
    let lines = proton_command(&p, "behind", "x");
    assert!(
        lines.iter().any(|l| l["outcome"] == "accepted"),
        "{lines:?}"
    );
    match gateway.packet(Duration::from_secs(2)).await {
        Some(rumqttc::mqttbytes::v4::Packet::Publish(publish)) => {
            let topic = publish.topic.clone();
            assert!(topic.starts_with("c//behind/q/"), "{topic}");
        }
        other => panic!("expected the command, got {other:?}"),
    }
    gateway.unsubscribe(4, "c//+/q/#").await;
    let lines = proton_command(&p, "behind", "x");
    assert!(
        lines.iter().any(|l| l["outcome"] == "released"),
        "{lines:?}"
    );
    let lines = proton_command(&p, "gw", "x");
    assert!(
        lines.iter().any(|l| l["outcome"] == "released"),
        "the gateway's own commands end too: {lines:?}"
    );
}
