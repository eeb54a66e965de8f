//! The presence API and the web console (docs/console.md), as an operator sees them against `ferry up`:
//! a paho device's presence follows its connection, and a real headless Chromium drives the console.

use std::time::{Duration, Instant};

use ferry_e2e::{clients_dir, curl, paho_device, proton_app, test_python, Ferry, Process};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

fn admin_token(ferry: &Ferry) -> String {
    std::fs::read_to_string(ferry.data_dir.join("admin-token"))
        .expect("ferry up wrote its admin token")
        .trim()
        .to_owned()
}

fn get(ferry: &Ferry, token: &str, path: &str) -> (u16, Value) {
    let r = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{}{path}", ferry.registry),
    ]);
    let body = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r.status, body)
}

/// Reads a resource, lets `change` edit its body, and writes it back (with its ETag).
fn modify(ferry: &Ferry, token: &str, path: &str, change: impl FnOnce(&mut Value)) {
    let r = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{}{path}", ferry.registry),
    ]);
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    let mut body: Value = serde_json::from_str(&r.body).expect("a JSON body");
    if let Some(map) = body.as_object_mut() {
        map.remove("status");
    }
    change(&mut body);
    let etag = r.header("etag").expect("an ETag").to_owned();
    let r = curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/json",
        "-H",
        &format!("If-Match: {etag}"),
        "--data",
        &body.to_string(),
        &format!("{}{path}", ferry.registry),
    ]);
    assert_eq!(r.status, 204, "PUT {path}: {}", r.body);
}

/// Polls the device's presence until `connected` is `want`; returns it and how long that took.
fn presence_becomes(ferry: &Ferry, token: &str, path: &str, want: bool) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let (status, body) = get(ferry, token, path);
        assert_eq!(status, 200, "{path}: {body}");
        if body["connected"] == want {
            return (body, start.elapsed());
        }
        assert!(
            start.elapsed() < WAIT,
            "{path} did not become connected={want}: {body}\nferry up:\n{}",
            ferry.process.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_paho_device_shows_online_while_connected_and_offline_after() {
    let ferry = Ferry::up();
    let token = admin_token(&ferry);
    ferry.tenant("plant");
    ferry.tenant("other");
    ferry.device_with_password("plant", "pump-1", "pump1", "pw-pump");
    ferry.device("other", "valve-9", "{}");
    let path = "/v1/devices/plant/pump-1/presence";

    // Never seen: known device, nothing known of its presence.
    let (status, body) = get(&ferry, &token, path);
    assert_eq!(
        (status, &body["connected"]),
        (200, &Value::Bool(false)),
        "{body}"
    );

    // A device that only connects (no command subscription, no message) is online.
    let mut device = paho_device(
        "commands",
        ferry.mqtt,
        &["pump1@plant", "pw-pump", "nothing/to/see", "20"],
    );
    device.expect("connected", WAIT);
    let (online, took) = presence_becomes(&ferry, &token, path, true);
    assert!(took < Duration::from_secs(1), "online after {took:?}");
    assert_eq!(online["adapter"], "hono-mqtt", "{online}");
    assert!(
        online["since"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{online}"
    );
    assert!(online["last-seen"].is_string(), "{online}");

    // The connected filter of the device search.
    let (status, found) = get(&ferry, &token, "/v1/devices/plant?connected=true");
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["result"][0]["id"], "pump-1", "{found}");
    let (status, _) = get(&ferry, &token, "/v1/devices/plant?connected=false");
    assert_eq!(
        status, 404,
        "no offline device: Hono's 404 for an empty search"
    );
    let (status, body) = get(&ferry, &token, "/v1/devices/plant?connected=maybe");
    assert_eq!(status, 400, "{body}");

    // The device goes (its process dies, the socket closes): offline within a second.
    device.kill();
    let (offline, took) = presence_becomes(&ferry, &token, path, false);
    assert!(took < Duration::from_secs(1), "offline after {took:?}");
    assert!(offline["disconnected-at"].is_string(), "{offline}");

    // Unknown devices and tenants are 404; another tenant's device is not visible through this one.
    let (status, body) = get(&ferry, &token, "/v1/devices/plant/nobody/presence");
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&ferry, &token, "/v1/devices/other/pump-1/presence");
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&ferry, &token, "/v1/devices/nowhere/pump-1/presence");
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&ferry, &token, "/v1/devices/plant/bad%20id/presence");
    assert_eq!(status, 400, "{body}");

    // Only the admin token: a wrong one, the internal (adapters') token and an application user's
    // Basic credentials are all refused, on presence and on the live view.
    let internal = std::fs::read_to_string(ferry.data_dir.join("internal-token"))
        .expect("internal token")
        .trim()
        .to_owned();
    for bad in ["wrong", internal.as_str()] {
        let (status, _) = get(&ferry, bad, path);
        assert_eq!(status, 401);
        let (status, _) = get(&ferry, bad, "/v1/live/plant");
        assert_eq!(status, 401);
    }
    ferry.application("plant-app", "pw-app", &["plant"]);
    let r = curl(&[
        "-u",
        "plant-app:pw-app",
        &format!("{}{path}", ferry.registry),
    ]);
    assert_eq!(r.status, 401, "{}", r.body);
}

/// What the browser script asks the story to check through the API (`{"check": WHAT}`); the
/// answer is the file `checked-WHAT` in the screenshot folder.
fn check_through_the_api(ferry: &Ferry, token: &str, line: &str) {
    let tenant = "/v1/tenants/console-t";
    let device = "/v1/devices/console-t/sensor-1";
    if line.contains("\"limits\"") {
        // Saved by the limits form: the two limits set, the rest of the tenant as it was.
        let (status, body) = get(ferry, token, tenant);
        assert_eq!(status, 200, "{body}");
        let limits = &body["resource-limits"];
        assert_eq!(limits["max-connections"], 1, "{body}");
        assert_eq!(limits["max-stored-events"], 5, "{body}");
        assert_eq!(limits["max-ttl"], 60, "kept: {body}");
        assert_eq!(body["ext"]["owner"], "console-test", "kept: {body}");
        assert!(body.get("registration-limits").is_none(), "{body}");
    } else if line.contains("\"via\"") {
        let (status, body) = get(ferry, token, device);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["via"], serde_json::json!(["gw-1"]), "{body}");
        assert_eq!(body["ext"]["site"], "lab", "kept: {body}");
        assert!(body.get("viaGroups").is_none(), "{body}");
        let (status, found) = get(ferry, token, "/v1/devices/console-t?isGateway=true");
        assert_eq!(status, 200, "{found}");
        assert_eq!(found["result"][0]["id"], "gw-1", "{found}");
        assert_eq!(found["total"], 1, "{found}");
    } else {
        panic!("the browser asks for an unknown check: {line}");
    }
}

/// `GET /v1/stats/{tenant}` against `ferry up`: the real adapters' and router's figures, admin only,
/// 404 for an unknown tenant.
#[test]
fn tenant_stats_count_a_paho_devices_telemetry_and_connection() {
    let ferry = Ferry::up();
    let token = admin_token(&ferry);
    ferry.tenant("metered");
    ferry.tenant("quiet");
    ferry.device_with_password("metered", "meter-1", "meter1", "pw-meter");
    ferry.application("meter-app", "pw-app", &["metered"]);
    let consumer = proton_app(&[
        "consume",
        &ferry.amqp_url("meter-app", "pw-app"),
        "telemetry/metered",
        "3",
        "30",
    ]);
    consumer.expect("attached", WAIT);
    let (status, before) = get(&ferry, &token, "/v1/stats/metered");
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["source"], "process", "{before}");
    assert_eq!(before["telemetry"]["forwarded"], 0, "{before}");
    assert_eq!(before["connections"], 0, "{before}");

    // A device that stays connected, and one that sends three telemetry messages.
    let holder = paho_device(
        "commands",
        ferry.mqtt,
        &["meter1@metered", "pw-meter", "command///req/#", "30"],
    );
    holder.expect("connected", WAIT);
    let start = Instant::now();
    loop {
        let (_, body) = get(&ferry, &token, "/v1/stats/metered");
        if body["connections"] == 1 && body["connected-devices"] == 1 {
            break;
        }
        assert!(start.elapsed() < WAIT, "the connection not counted: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let device = paho_device(
        "telemetry",
        ferry.mqtt,
        &["meter1@metered", "pw-meter", "3"],
    );
    device.expect("done", WAIT);
    let start = Instant::now();
    let stats = loop {
        let (status, body) = get(&ferry, &token, "/v1/stats/metered");
        assert_eq!(status, 200, "{body}");
        if body["telemetry"]["forwarded"] == 3 {
            break body;
        }
        assert!(
            start.elapsed() < WAIT,
            "3 forwarded telemetry messages not counted: {body}\n{}",
            device.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(stats["router"]["telemetry"]["forwarded"], 3, "{stats}");
    assert_eq!(stats["tenant"], "metered", "{stats}");

    // Another tenant's path shows none of it; unknown tenants are 404; only the admin token.
    let (status, quiet) = get(&ferry, &token, "/v1/stats/quiet");
    assert_eq!(status, 200, "{quiet}");
    assert_eq!(quiet["telemetry"]["forwarded"], 0, "{quiet}");
    assert_eq!(quiet["router"]["telemetry"]["forwarded"], 0, "{quiet}");
    let (status, body) = get(&ferry, &token, "/v1/stats/nowhere");
    assert_eq!(status, 404, "{body}");
    let internal = std::fs::read_to_string(ferry.data_dir.join("internal-token"))
        .expect("internal token")
        .trim()
        .to_owned();
    for bad in ["wrong", internal.as_str()] {
        let (status, body) = get(&ferry, bad, "/v1/stats/metered");
        assert_eq!(status, 401, "{body}");
    }
    drop(holder);
    drop(device);
    drop(consumer);
}

#[test]
fn the_console_in_headless_chromium_manages_devices_and_shows_presence_telemetry_and_commands() {
    let ferry = Ferry::up_with(&["--demo"]);
    let token = admin_token(&ferry);
    let shots = screenshots();
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    // The flags of an earlier run would let the script go on without the story's checks.
    for flag in ["consumer-ready", "checked-limits", "checked-via"] {
        let _ = std::fs::remove_file(shots.join(flag));
    }
    let mut cmd = std::process::Command::new(test_python());
    cmd.arg(clients_dir().join("console_browser.py"))
        .arg(&ferry.registry)
        .arg(&token)
        .arg(ferry.mqtt.to_string())
        .arg(&shots);
    // The live view shows what flows to applications: an application consumes the tenant's telemetry,
    // as the demo's instructions suggest (without one, devices' telemetry gets no credit).
    ferry.application("console-test-app", "pw-console", &["console-t"]);
    let mut browser = Process::spawn("console_browser.py", cmd);
    let mut consumer: Option<Process> = None;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(line) = browser.line(left) else {
            panic!(
                "console_browser.py ended or hung without passing; its output:\n{}\nferry up:\n{}",
                browser.log(),
                ferry.process.log()
            );
        };
        if line.contains("\"need_consumer\"") {
            consumer = Some(proton_app(&[
                "consume",
                &ferry.amqp_url("console-test-app", "pw-console"),
                "telemetry/console-t",
                "1000",
                "180",
            ]));
            if let Some(c) = &consumer {
                c.expect("attached", WAIT);
            }
            // Fields of their own on the tenant and the device: the console's saves must keep them.
            modify(&ferry, &token, "/v1/tenants/console-t", |t| {
                t["ext"] = serde_json::json!({ "owner": "console-test" });
                t["resource-limits"] = serde_json::json!({ "max-ttl": 60 });
            });
            modify(&ferry, &token, "/v1/devices/console-t/sensor-1", |d| {
                d["ext"] = serde_json::json!({ "site": "lab" });
            });
            // Tells the script the consumer is there.
            std::fs::write(shots.join("consumer-ready"), b"1").expect("flag file");
        }
        if line.contains("\"check\"") {
            check_through_the_api(&ferry, &token, &line);
            let what = if line.contains("\"limits\"") {
                "limits"
            } else {
                "via"
            };
            std::fs::write(shots.join(format!("checked-{what}")), b"1").expect("flag file");
        }
        if line.contains("\"passed\"") {
            break;
        }
        if line.contains("\"failed\"") {
            panic!(
                "the console test failed: {line}\nits output:\n{}\nferry up:\n{}",
                browser.log(),
                ferry.process.log()
            );
        }
    }
    let status = browser.wait_exit(WAIT);
    assert!(status.success(), "{}", browser.log());
    drop(consumer);
}

/// A tenant token signs in to the console: it lands on its own tenant's devices, the admin's pages are
/// not offered, and asking for another tenant's pages brings it back to its own (headless Chromium).
#[test]
fn the_console_signed_in_with_a_tenant_token_shows_only_its_tenant() {
    let ferry = Ferry::up();
    for (tenant, device) in [("acme", "press-1"), ("globex", "saw-1")] {
        ferry.tenant(tenant);
        ferry.device(tenant, device, "{}");
    }
    let made = ferry.manage(&["token", "create", "acme", "--comment", "console test"]);
    let token = made["token"].as_str().expect("a token");
    browser_script(
        &ferry,
        "console_tenant_token.py",
        &[token, "acme", "globex", "press-1"],
    );
}

/// The tenant page's adapters form (headless Chromium) turns a tenant's HTTP adapter off: the API shows
/// it, the tenant's HTTP device is refused (Hono: 403) and its MQTT device still sends.
#[test]
fn the_console_turns_a_tenants_http_adapter_off() {
    let ferry = Ferry::up();
    let token = admin_token(&ferry);
    ferry.tenant("acme");
    ferry.device_with_password("acme", "press-1", "press1", "pw-press");
    browser_script(&ferry, "console_tenant_adapters.py", &[&token, "acme"]);

    let (status, tenant) = get(&ferry, &token, "/v1/tenants/acme");
    assert_eq!(status, 200);
    let adapters = tenant["adapters"].as_array().expect("an adapter list");
    let of = |t: &str| {
        adapters
            .iter()
            .find(|a| a["type"] == t)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(of("hono-http")["enabled"], false, "{tenant}");
    assert_eq!(of("hono-mqtt")["enabled"], true, "{tenant}");
    // The adapters apply it within a second (the change stream).
    let deadline = Instant::now() + WAIT;
    loop {
        let r = curl(&[
            "-u",
            "press1@acme:pw-press",
            "-H",
            "content-type: text/plain",
            "-d",
            "21.5",
            &ferry.http_url("/telemetry"),
        ]);
        if r.status == 403 {
            break;
        }
        assert!(Instant::now() < deadline, "HTTP still served: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = ferry_e2e::mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "press1@acme",
            "-P",
            "pw-press",
            "-q",
            "0",
            "-t",
            "telemetry",
            "-m",
            "21.5",
        ],
    );
    assert!(
        out.status.success(),
        "MQTT is still enabled: {}",
        ferry_e2e::text(&out.stderr)
    );
}

/// Where the browser scripts write their screenshots (outside the tree).
fn screenshots() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ferry-target"))
        .join("console-screenshots")
}

/// Runs a browser script of e2e/clients against `ferry` (`script REGISTRY ARGS.. SCREENSHOTS`): it must
/// print `{"passed": true}` and end by itself (its Chromium quit first).
fn browser_script(ferry: &Ferry, script: &str, args: &[&str]) {
    let mut cmd = std::process::Command::new(test_python());
    cmd.arg(clients_dir().join(script))
        .arg(&ferry.registry)
        .args(args)
        .arg(screenshots());
    let mut browser = Process::spawn(script, cmd);
    let line = browser.line(Duration::from_secs(120)).unwrap_or_default();
    assert!(
        line.contains("\"passed\""),
        "{line}\n{}\nferry up:\n{}",
        browser.log(),
        ferry.process.log()
    );
    assert!(browser.wait_exit(WAIT).success(), "{}", browser.log());
}
