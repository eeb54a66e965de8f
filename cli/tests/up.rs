//! `ferry up` and the management subcommands as a newcomer uses them (the README's quick start), with the
//! real binaries and curl.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

struct Up {
    child: Child,
    url: String,
    amqp: u16,
    mqtt: u16,
    http: u16,
    first_lines: Vec<String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ferry_up(data_dir: &Path) -> Up {
    ferry_up_with(data_dir, &[])
}

fn ferry_up_with(data_dir: &Path, extra: &[&str]) -> Up {
    let port = ferry_test_support::free_port();
    let amqp = ferry_test_support::free_port();
    let mqtt = ferry_test_support::free_port();
    let http = ferry_test_support::free_port();
    let mut child = Command::new(FERRY)
        .args([
            "up",
            "--registry-port",
            &port.to_string(),
            "--amqp-port",
            &amqp.to_string(),
            "--mqtt-port",
            &mqtt.to_string(),
            "--http-port",
            &http.to_string(),
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env_remove("FERRY_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry up");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lines.iter().any(|l: &String| l.starts_with("Press Ctrl-C")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("ferry up did not print its endpoints: {lines:?}"),
        }
    }
    Up {
        child,
        url: format!("http://127.0.0.1:{port}"),
        amqp,
        mqtt,
        http,
        first_lines: lines,
    }
}

fn ferry(up: &Up, data_dir: &Path, args: &[&str]) -> Output {
    Command::new(FERRY)
        .args(args)
        .arg("--registry-url")
        .arg(&up.url)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("FERRY_ADMIN_TOKEN")
        .env_remove("FERRY_REGISTRY_URL")
        .output()
        .expect("run ferry")
}

fn ok(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "ferry failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).expect("ferry prints JSON")
    }
}

#[test]
fn quick_start_creates_tenant_device_and_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = ferry_up(dir.path());
    let printed = up.first_lines.join("\n");
    assert!(printed.contains(&format!("{}/v1", up.url)), "{printed}");
    assert!(
        printed.contains(&format!("amqp://127.0.0.1:{}", up.amqp)),
        "{printed}"
    );
    let token_file = dir.path().join("admin-token");
    assert!(
        printed.contains(&token_file.display().to_string()),
        "says where the token is: {printed}"
    );

    let created = ok(&ferry(&up, dir.path(), &["tenant", "create", "my-tenant"]));
    assert_eq!(created["id"], "my-tenant");
    ok(&ferry(
        &up,
        dir.path(),
        &["device", "create", "my-tenant", "my-device"],
    ));
    ok(&ferry(
        &up,
        dir.path(),
        &[
            "credentials",
            "add-password",
            "my-tenant",
            "my-device",
            "--auth-id",
            "sensor1",
            "--password",
            "hunter2",
        ],
    ));
    // Adding a second password keeps the first.
    ok(&ferry(
        &up,
        dir.path(),
        &[
            "credentials",
            "add-password",
            "my-tenant",
            "my-device",
            "--auth-id",
            "sensor2",
            "--password",
            "x",
        ],
    ));
    let creds = ok(&ferry(
        &up,
        dir.path(),
        &["credentials", "get", "my-tenant", "my-device"],
    ));
    let auth_ids: Vec<&str> = creds
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["auth-id"].as_str().expect("auth-id"))
        .collect();
    assert_eq!(auth_ids, ["sensor1", "sensor2"]);
    assert!(!creds.to_string().contains("hunter2"));
    ok(&ferry(
        &up,
        dir.path(),
        &[
            "application",
            "put",
            "my-app",
            "--password",
            "s3cret",
            "--tenant",
            "my-tenant",
        ],
    ));
    let devices = ok(&ferry(&up, dir.path(), &["device", "list", "my-tenant"]));
    assert_eq!(devices["total"], 1);

    // A client no one here wrote sees the same registry with the generated token.
    let curl = ferry_test_support::require_program("curl");
    let token = std::fs::read_to_string(&token_file).expect("token file");
    let out = Command::new(curl)
        .args(["-s", "-H"])
        .arg(format!("Authorization: Bearer {}", token.trim()))
        .arg(format!("{}/v1/devices/my-tenant/my-device", up.url))
        .output()
        .expect("curl");
    let device: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json from curl");
    assert_eq!(device["enabled"], true);

    // The router answers on the AMQP port with its SASL header.
    use std::io::{Read, Write};
    let mut amqp = std::net::TcpStream::connect(("127.0.0.1", up.amqp)).expect("AMQP port open");
    amqp.write_all(b"AMQP\x03\x01\x00\x00").expect("write");
    let mut header = [0u8; 8];
    amqp.read_exact(&mut header).expect("read");
    assert_eq!(&header, b"AMQP\x03\x01\x00\x00");

    // The device the quick start made can publish over MQTT (nobody consumes: QoS 0 is fire and forget).
    let out = Command::new(ferry_test_support::require_program("mosquitto_pub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &up.mqtt.to_string(),
            "-u",
            "sensor1@my-tenant",
            "-P",
            "hunter2",
        ])
        .args(["-t", "telemetry", "-m", "{\"temp\":21}"])
        .output()
        .expect("mosquitto_pub");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong = Command::new(ferry_test_support::require_program("mosquitto_pub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &up.mqtt.to_string(),
            "-u",
            "sensor1@my-tenant",
            "-P",
            "wrong",
        ])
        .args(["-t", "telemetry", "-m", "x"])
        .output()
        .expect("mosquitto_pub");
    assert!(!wrong.status.success(), "a wrong password is refused");

    // And over HTTP: nobody consumes, so QoS 0 telemetry is merely queued (202).
    let out = Command::new(ferry_test_support::require_program("curl"))
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            "sensor1@my-tenant:hunter2",
        ])
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            "{\"temp\":21}",
        ])
        .arg(format!("http://127.0.0.1:{}/telemetry", up.http))
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    // With no application attached there is no credit: Hono's 503 (a consumer would make it 202).
    assert_eq!(code, "503", "HTTP adapter authenticates and routes");
    let out = Command::new(ferry_test_support::require_program("curl"))
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            "sensor1@my-tenant:wrong",
        ])
        .args(["-H", "content-type: text/plain", "--data-binary", "x"])
        .arg(format!("http://127.0.0.1:{}/telemetry", up.http))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}

/// Unconfigured, nothing is reachable from the network (Mosquitto 2's rule), and `ferry up` says so.
#[test]
fn every_endpoint_listens_on_loopback_by_default_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = ferry_up(dir.path());
    let printed = up.first_lines.join("\n");
    assert!(
        printed.contains("listening on 127.0.0.1 (this machine only; --listen ADDR to change)"),
        "{printed}"
    );
    for line in up.first_lines.iter().filter(|l| l.contains("://")) {
        assert!(!line.contains("0.0.0.0"), "{line}");
    }
    for port in [up.mqtt, up.http, up.amqp] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "port {port} on loopback"
        );
    }
}

#[test]
fn errors_are_reported_with_status_and_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = ferry_up(dir.path());
    let missing = ferry(&up, dir.path(), &["tenant", "get", "nope"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("404"), "{stderr}");
    let bad_json = ferry(
        &up,
        dir.path(),
        &["tenant", "create", "t1", "--json", "{nope"],
    );
    assert!(!bad_json.status.success());
    assert!(String::from_utf8_lossy(&bad_json.stderr).contains("--json"));
    let wrong_token = Command::new(FERRY)
        .args([
            "tenant",
            "list",
            "--registry-url",
            &up.url,
            "--token",
            "wrong",
        ])
        .output()
        .expect("run ferry");
    assert!(!wrong_token.status.success());
    assert!(String::from_utf8_lossy(&wrong_token.stderr).contains("401"));
    let no_token = Command::new(FERRY)
        .args(["tenant", "list", "--registry-url", &up.url, "--data-dir"])
        .arg(dir.path().join("elsewhere"))
        .env_remove("FERRY_ADMIN_TOKEN")
        .output()
        .expect("run ferry");
    assert!(
        String::from_utf8_lossy(&no_token.stderr).contains("ferry up"),
        "tells the user how to get a token"
    );
}

#[test]
fn up_stops_on_sigterm_and_keeps_its_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut up = ferry_up(dir.path());
    ok(&ferry(&up, dir.path(), &["tenant", "create", "kept"]));
    let pid = up.child.id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = up.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "ferry up did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let again = ferry_up(dir.path());
    let t = ok(&ferry(&again, dir.path(), &["tenant", "get", "kept"]));
    assert_eq!(t["enabled"], true);
}

#[test]
fn bad_registry_environment_exits_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(FERRY)
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .env("FERRY_REGISTRY_NO_SUCH_THING", "1")
        .output()
        .expect("run ferry up");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_thing"));
}

/// A line `ferry up --demo` printed for the user to paste, starting with `program`.
fn demo_command<'a>(printed: &'a [String], program: &str) -> &'a str {
    printed
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with(&format!("{program} ")))
        .unwrap_or_else(|| panic!("ferry up --demo prints a {program} command: {printed:#?}"))
}

/// Runs the three commands `ferry up --demo` printed, literally, in `sh`, with `ferry` on the PATH:
/// the consumer must print the telemetry of both the MQTT and the HTTP device.
fn paste_demo_commands(printed: &[String]) {
    let bin_dir = Path::new(FERRY).parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sh = |line: &str| {
        let mut c = Command::new("sh");
        c.arg("-c").arg(line).env("PATH", &path);
        c.env_remove("FERRY_AMQP_URL")
            .env_remove("FERRY_AMQP_USER")
            .env_remove("FERRY_AMQP_PASSWORD");
        c
    };
    let mut consumer = sh(demo_command(printed, "ferry consume"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh");
    let (tx, rx) = std::sync::mpsc::channel();
    let out_tx = tx.clone();
    let stdout = consumer.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(format!("out: {line}"));
        }
    });
    let stderr = consumer.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(format!("err: {line}"));
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => seen.push(l),
                Err(_) => panic!("the consumer did not print {needle:?}: {seen:#?}"),
            }
        }
    };
    wait_for("err: ferry: receiving telemetry of tenant demo");

    let mqtt = demo_command(printed, "mosquitto_pub");
    let out = sh(mqtt).output().expect("sh");
    assert!(
        out.status.success(),
        "{mqtt}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = wait_for("out: ");
    assert!(line.contains("device=demo-device"), "{line}");
    assert!(line.contains("orig_adapter=hono-mqtt"), "{line}");
    assert!(line.ends_with(r#"body={"temp": 21}"#), "{line}");

    let http = demo_command(printed, "curl");
    let out = sh(http).output().expect("sh");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.starts_with("HTTP/1.1 202"), "{http}: {answer}");
    let line = wait_for("out: ");
    assert!(line.contains("device=demo-device"), "{line}");
    assert!(line.contains("orig_adapter=hono-http"), "{line}");
    assert!(line.ends_with(r#"body={"temp": 22}"#), "{line}");
    let _ = consumer.kill();
    let _ = consumer.wait();
}

#[test]
fn up_demo_prints_commands_that_send_and_receive_telemetry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = ferry_up_with(dir.path(), &["--demo"]);
    paste_demo_commands(&first.first_lines);
    let first_password = demo_command(&first.first_lines, "mosquitto_pub")
        .split_whitespace()
        .skip_while(|w| *w != "-P")
        .nth(1)
        .expect("-P PASSWORD")
        .to_owned();
    drop(first);

    // Again on the same data directory: the demo is reused (same passwords), and still works.
    let again = ferry_up_with(dir.path(), &["--demo"]);
    let mqtt = demo_command(&again.first_lines, "mosquitto_pub");
    assert!(
        mqtt.contains(&format!("-P {first_password} ")),
        "{mqtt} reuses {first_password}"
    );
    paste_demo_commands(&again.first_lines);
    let apps = ok(&ferry(&again, dir.path(), &["application", "list"]));
    assert_eq!(
        apps.to_string().matches("demo-app").count(),
        1,
        "one demo application user: {apps}"
    );
    let creds = ok(&ferry(
        &again,
        dir.path(),
        &["credentials", "get", "demo", "demo-device"],
    ));
    assert_eq!(creds.as_array().map(Vec::len), Some(1), "{creds}");
}
