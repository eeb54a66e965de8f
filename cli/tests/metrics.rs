//! `ferry up` serves one `/metrics` for both protocol adapters: Hono's metric families once, the
//! adapters told apart by `component_name` (HONO-CONTRACT §6). Real clients: mosquitto_pub and curl.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

struct Up {
    child: Child,
    url: String,
    mqtt: u16,
    http: u16,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ferry_up(data_dir: &std::path::Path) -> Up {
    let port = ferry_test_support::free_port();
    let amqp = ferry_test_support::free_port();
    let mqtt = ferry_test_support::free_port();
    let http = ferry_test_support::free_port();
    let mut child = Command::new(FERRY)
        .args(["up", "--registry-port", &port.to_string()])
        .args(["--amqp-port", &amqp.to_string()])
        .args(["--mqtt-port", &mqtt.to_string()])
        .args(["--http-port", &http.to_string()])
        .args(["--mqtt-bind", "127.0.0.1", "--data-dir"])
        .arg(data_dir)
        .env_remove("FERRY_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry up");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with("Press Ctrl-C") => break,
            Ok(_) => {}
            Err(_) => panic!("ferry up did not start"),
        }
    }
    Up {
        child,
        url: format!("http://127.0.0.1:{port}"),
        mqtt,
        http,
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run a client")
}

fn manage(up: &Up, token: &str, method: &str, path: &str, body: &str) {
    let out = run(Command::new(ferry_test_support::require_program("curl"))
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ])
        .arg(format!("{}{path}", up.url)));
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(code.starts_with('2'), "{method} {path}: {code}");
}

/// The sum of the samples of `prefix` (a metric name and the first labels) in `text`.
fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn both_adapters_report_into_one_metrics_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = ferry_up(dir.path());
    let token = std::fs::read_to_string(dir.path().join("admin-token")).expect("admin token");
    let token = token.trim();
    manage(&up, token, "POST", "/v1/tenants/t1", "{}");
    manage(&up, token, "POST", "/v1/devices/t1/d1", "{}");
    manage(
        &up,
        token,
        "PUT",
        "/v1/credentials/t1/d1",
        r#"[{"type":"hashed-password","auth-id":"sensor1","secrets":[{"pwd-plain":"hunter2"}]}]"#,
    );

    let out = run(
        Command::new(ferry_test_support::require_program("mosquitto_pub"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &up.mqtt.to_string(),
                "-V",
                "mqttv311",
            ])
            .args([
                "-u",
                "sensor1@t1",
                "-P",
                "hunter2",
                "-t",
                "telemetry",
                "-q",
                "0",
            ])
            .args(["-m", "from mqtt"]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No consumer listens, so the HTTP adapter answers 503; the message counts all the same.
    let out = run(Command::new(ferry_test_support::require_program("curl"))
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            "sensor1@t1:hunter2",
        ])
        .args([
            "-H",
            "content-type: text/plain",
            "--data-binary",
            "from http!",
        ])
        .arg(format!("http://127.0.0.1:{}/telemetry", up.http)));
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(code == "202" || code == "503", "{code}");

    let mqtt = r#"hono_telemetry_processing_total{component_type="adapter",component_name="hono-mqtt",tenant="t1",type="telemetry""#;
    let http = r#"hono_telemetry_processing_total{component_type="adapter",component_name="hono-http",tenant="t1",type="telemetry""#;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = run(Command::new(ferry_test_support::require_program("curl"))
            .args(["-sS", &format!("{}/metrics", up.url)]));
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        // The QoS 0 PUBLISH is counted once the adapter has handed it on, a moment after the client left.
        if sum(&text, mqtt) >= 1.0 && sum(&text, http) >= 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sum(&text, mqtt), 1.0, "{text}");
    assert_eq!(sum(&text, http), 1.0, "{text}");
    let bytes = r#"hono_telemetry_payload_bytes_total{component_type="adapter",component_name="hono-http",tenant="t1""#;
    assert_eq!(sum(&text, bytes), "from http!".len() as f64, "{text}");
    assert_eq!(
        sum(
            &text,
            r#"hono_connections_attempts_total{component_type="adapter",component_name="hono-mqtt",outcome="succeeded"}"#
        ),
        1.0,
        "{text}"
    );
    // Each family is declared once, however many adapters report into it.
    for family in [
        "hono_telemetry_processing",
        "hono_telemetry_payload_bytes",
        "hono_connections_authenticated",
        "hono_command_processing",
    ] {
        assert_eq!(
            text.matches(&format!("# TYPE {family} ")).count(),
            1,
            "{family}: {text}"
        );
    }
}
