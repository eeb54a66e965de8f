//! The console's live view and commands in cluster mode (docs/console.md "Cluster mode"): the registry
//! of `ferry up --cluster` has no router in its process and serves them through NATS.

use std::process::Command;
use std::time::{Duration, Instant};

use ferry_e2e::{attached, curl, paho_device, proton_app, Cluster, Process};
use serde_json::Value;

use super::{admin_token, command_subscribers, plant, received, seqs, WAIT};

/// `GET /v1/live/{tenant}` read by curl as it streams, once the registry said `hello` (its subscriptions
/// are in place then).
fn live_view(c: &Cluster, token: &str, tenant: &str) -> Process {
    let mut cmd = Command::new("curl");
    cmd.args(["-sN", "--max-time", "60", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{}/v1/live/{tenant}", c.registry));
    let p = Process::spawn(&format!("live view of {tenant}"), cmd);
    p.wait_for_line("event: hello", WAIT);
    p
}

/// The `message` events a live view showed so far.
fn shown(p: &Process) -> Vec<Value> {
    let mut out = Vec::new();
    let mut is_message = false;
    for line in p.log().lines() {
        if let Some(kind) = line.strip_prefix("event: ") {
            is_message = kind == "message";
        } else if let Some(data) = line.strip_prefix("data: ") {
            if is_message {
                out.push(serde_json::from_str(data).expect("a JSON message"));
            }
        }
    }
    out
}

/// The `seq` of each message a live view showed.
fn shown_seqs(messages: &[Value]) -> Vec<i64> {
    let mut s: Vec<i64> = messages
        .iter()
        .map(|m| {
            let body: Value = serde_json::from_str(m["payload"].as_str().expect("payload"))
                .expect("a JSON payload");
            body["seq"].as_i64().expect("seq")
        })
        .collect();
    s.sort_unstable();
    s
}

#[test]
fn the_live_view_shows_a_paho_devices_telemetry_while_the_application_gets_every_message() {
    let c = Cluster::up(None);
    plant(&c);
    c.tenant("other");
    c.device_with_password("other", "valve-9", "valve9", "pw-valve");
    let token = admin_token(&c);
    let of_plant = live_view(&c, &token, "plant");
    let of_other = live_view(&c, &token, "other");
    // Watched, with nobody consuming: a device still hears 503 at once, as unwatched (the live view
    // reads the routers' copies and is no responder of the adapters' requests).
    let started = Instant::now();
    let refused = curl(&[
        "-u",
        "press1@plant:pw-press",
        "-H",
        "content-type: application/json",
        "-d",
        "{\"t\": 1}",
        &c.http_url("/telemetry"),
    ]);
    assert_eq!(refused.status, 503, "nobody consumes: {refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "503 after {:?}, not at once",
        started.elapsed()
    );
    // The live views' subscriptions are confirmed on the registry's NATS node; reaching the nodes the
    // routers publish their copies on, and the routers' hearing of the views, takes a moment more (CI
    // missed every message once, under load, sending at once).
    std::thread::sleep(Duration::from_secs(1));
    let app = attached(proton_app(&[
        "consume",
        &c.amqp_url(0, "ops", "pw-ops"),
        "telemetry/plant",
        "1000",
        "30",
    ]));
    // QoS 1 through MQTT adapter 2; each PUBACK comes after the application accepted the message.
    let mut device = paho_device("telemetry", c.mqtt[1], &["press1@plant", "pw-press", "20"]);
    assert_eq!(device.expect("done", WAIT), 20, "{}", device.log());
    assert!(device.wait_exit(WAIT).success());
    // Another tenant's events (stored by JetStream, so acknowledged without a consumer).
    let mut valve = paho_device("events", c.mqtt[0], &["valve9@other", "pw-valve", "3"]);
    assert_eq!(valve.expect("done", WAIT), 3, "{}", valve.log());
    assert!(valve.wait_exit(WAIT).success());

    let deadline = Instant::now() + WAIT;
    while (shown(&of_plant).len() < 20 || shown(&of_other).len() < 3) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let plant_shown = shown(&of_plant);
    assert_eq!(
        shown_seqs(&plant_shown),
        (0..20).collect::<Vec<_>>(),
        "{}",
        of_plant.log()
    );
    for m in &plant_shown {
        assert_eq!(m["kind"], "telemetry", "{m}");
        assert_eq!(m["device-id"], "press-1", "{m}");
    }
    assert_eq!(
        seqs(&received(&app)),
        (0..20).collect::<Vec<_>>(),
        "the application got every message"
    );
    // Each tenant's view shows its own messages only.
    let other_shown = shown(&of_other);
    assert_eq!(shown_seqs(&other_shown), [0, 1, 2], "{}", of_other.log());
    for m in &other_shown {
        assert_eq!(
            (&m["kind"], &m["device-id"]),
            (&"event".into(), &"valve-9".into())
        );
    }
}

fn command(c: &Cluster, token: &str, device: &str) -> (Value, Duration) {
    let started = Instant::now();
    let r = curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"name": "stop", "payload": "{\"now\": true}", "content-type": "application/json", "timeout-ms": 5000}"#,
        &format!("{}/v1/commands/plant/{device}", c.registry),
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    (
        serde_json::from_str(&r.body).expect("JSON"),
        started.elapsed(),
    )
}

#[test]
fn console_commands_reach_paho_devices_on_either_adapter_and_a_disconnected_one_is_released() {
    let c = Cluster::up(None);
    plant(&c);
    c.device_with_password("plant", "press-2", "press2", "pw-press2");
    c.device("plant", "press-3", "{}");
    let token = admin_token(&c);
    let (mut first, second) = command_subscribers(&c, "60");
    for (device, paho) in [("press-1", &first), ("press-2", &second)] {
        let (result, _) = command(&c, &token, device);
        assert_eq!(result["outcome"], "accepted", "{device}: {result}");
        let response = &result["response"];
        assert_eq!(response["status"], 200, "{result}");
        let body: Value = serde_json::from_str(response["payload"].as_str().expect("payload"))
            .expect("the device's JSON");
        assert_eq!(body["echo"], "{\"now\": true}", "{result}");
        let got = paho.expect("command", WAIT);
        assert_eq!(got["payload"], "{\"now\": true}", "{got}");
    }

    // Never connected: released at once.
    let (result, took) = command(&c, &token, "press-3");
    assert_eq!(result["outcome"], "released", "{result}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // Gone: paho killed, the adapter deletes its route; then released at once too.
    first.kill();
    let deadline = Instant::now() + WAIT;
    while command(&c, &token, "press-1").0["outcome"] != "released" {
        assert!(
            Instant::now() < deadline,
            "press-1's commands never released"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (result, took) = command(&c, &token, "press-1");
    assert_eq!(result["outcome"], "released", "{result}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}
