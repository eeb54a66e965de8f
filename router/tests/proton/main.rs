//! End-to-end tests of the router with Qpid Proton (python3-qpid-proton), a client no one here wrote,
//! using its default link names and settings.

#[path = "../amqp/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::*;
use serde_json::Value;

/// Runs client.py SCENARIO with ARGS; returns its JSON lines as they come.
fn proton(
    scenario: &str,
    url: &str,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<Value>) {
    let python = ferry_test_support::test_python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proton/client.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(scenario)
        .arg(url)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python runs");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    (child, rx)
}

fn next(rx: &std::sync::mpsc::Receiver<Value>) -> Value {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("a line from the Proton client")
}

#[tokio::test(flavor = "multi_thread")]
async fn proton_consumer_receives_telemetry_with_hono_properties() {
    let p = Platform::start().await;
    let url = format!("amqp://app1:pw1@{}", p.amqp);
    let (mut child, rx) = proton("consume", &url, &["telemetry/t1", "2", "10"]);
    let opened = tokio::task::spawn_blocking(move || (next(&rx), rx))
        .await
        .expect("join");
    let (line, rx) = opened;
    assert_eq!(line["opened"], "telemetry/t1");

    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("telemetry/t1").await;
    let token = p.assertion("t1", "d1").await;
    tx.send(device_message("d1", Some(&token), b"{\"temp\":5}"))
        .await
        .expect("send");
    tx.send(device_message("d1", Some(&token), b"second"))
        .await
        .expect("send");

    let (first, second) = tokio::task::spawn_blocking(move || (next(&rx), next(&rx)))
        .await
        .expect("join");
    assert_eq!(first["body"], "{\"temp\":5}");
    assert_eq!(first["content_type"], "text/plain");
    assert_eq!(first["properties"]["device_id"], "d1");
    assert!(
        first["properties"].get("reg_assertion").is_none(),
        "{first}"
    );
    assert_eq!(first["annotations"]["resource"], "telemetry/t1/d1");
    assert_eq!(second["body"], "second");
    assert!(child.wait().expect("wait").success());
}

#[tokio::test(flavor = "multi_thread")]
async fn proton_session_survives_refused_attaches() {
    let p = Platform::start().await;
    let url = format!("amqp://app1:pw1@{}", p.amqp);
    let (mut child, rx) = proton(
        "refused",
        &url,
        &["telemetry/t2", "event/t2", "queue/x", "telemetry/t1"],
    );
    let lines = tokio::task::spawn_blocking(move || (0..4).map(|_| next(&rx)).collect::<Vec<_>>())
        .await
        .expect("join");
    let results: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["address"].as_str().unwrap_or(""),
                l["result"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            ("telemetry/t2", "amqp:unauthorized-access"),
            ("event/t2", "amqp:unauthorized-access"),
            ("queue/x", "amqp:not-found"),
            ("telemetry/t1", "opened"),
        ]
    );
    assert!(child.wait().expect("wait").success());
}

#[tokio::test(flavor = "multi_thread")]
async fn proton_with_a_wrong_password_is_refused() {
    let p = Platform::start().await;
    let url = format!("amqp://app1:nope@{}", p.amqp);
    let (mut child, rx) = proton("consume", &url, &["telemetry/t1", "1", "5"]);
    let line = tokio::task::spawn_blocking(move || next(&rx))
        .await
        .expect("join");
    assert!(
        line["transport_error"]
            .as_str()
            .is_some_and(|e| e.contains("unauthorized") || e.contains("auth")),
        "{line}"
    );
    let _ = child.kill();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "debugging aid: keeps a platform up for a minute"]
async fn debug_platform() {
    let p = Platform::start().await;
    println!("AMQP {}", p.amqp);
    tokio::time::sleep(Duration::from_secs(60)).await;
}
