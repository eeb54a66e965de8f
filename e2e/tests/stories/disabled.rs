//! A device disabled through the management API is cut off within a second: its MQTT connections are
//! closed and it cannot log in again; over HTTP its next request is refused.

use std::process::Command;
use std::time::{Duration, Instant};

use ferry_e2e::{curl, paho_device, require_program, text, Ferry, Process};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn a_disabled_device_is_cut_off_within_a_second() {
    let ferry = Ferry::up();
    ferry.tenant("fleet");
    ferry.device_with_password("fleet", "truck-9", "truck9", "pw-truck");
    // Two connections of the device: paho and mosquitto_sub, both waiting for commands.
    let paho = paho_device(
        "commands",
        ferry.mqtt,
        &["truck9@fleet", "pw-truck", "command///req/#", "30"],
    );
    assert_eq!(paho.expect("subscribed", WAIT), serde_json::json!([1]));
    // stdbuf: mosquitto_sub's -d lines through a pipe, as they happen.
    let mut sub_cmd = Command::new(require_program("stdbuf"));
    sub_cmd
        .arg("-oL")
        .arg(require_program("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &ferry.mqtt.to_string()])
        .args([
            "-u",
            "truck9@fleet",
            "-P",
            "pw-truck",
            "-q",
            "1",
            "-t",
            "command///req/#",
            "-d",
        ]);
    let mut sub = Process::spawn("mosquitto_sub", sub_cmd);
    sub.wait_for_line("SUBACK", WAIT);
    let ok = curl(&[
        "-u",
        "truck9@fleet:pw-truck",
        "-H",
        "content-type: application/vnd.eclipse-hono-empty-notification",
        "-X",
        "POST",
        &ferry.http_url("/event"),
    ]);
    assert_eq!(ok.status, 202, "enabled, the device may send: {ok:?}");

    ferry.manage(&[
        "device",
        "update",
        "fleet",
        "truck-9",
        "--json",
        r#"{"enabled": false}"#,
    ]);
    let disabled_at = Instant::now();
    let dropped = paho.expect("disconnected", Duration::from_secs(5));
    let after = disabled_at.elapsed();
    assert!(
        after < Duration::from_secs(1),
        "paho cut off after {after:?} ({dropped})"
    );
    // mosquitto_sub is dropped too; it tries to log in again and is refused for good.
    let status = sub.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    let log = sub.log();
    assert!(log.contains("not authorised"), "{log}");

    let refused = curl(&[
        "-u",
        "truck9@fleet:pw-truck",
        "-H",
        "content-type: application/vnd.eclipse-hono-empty-notification",
        "-X",
        "POST",
        &ferry.http_url("/event"),
    ]);
    assert_eq!(refused.status, 404, "disabled: {refused:?}");
    let out = Command::new(require_program("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &ferry.mqtt.to_string()])
        .args([
            "-u",
            "truck9@fleet",
            "-P",
            "pw-truck",
            "-t",
            "telemetry",
            "-m",
            "x",
        ])
        .output()
        .expect("mosquitto_pub");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not authorised"),
        "{}",
        text(&out.stderr)
    );
}
