//! AMQPS: Qpid Proton verifies the router's certificate and consumes over TLS; plain AMQP on the TLS port
//! fails.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::Connection;
use ferry_test_support::TestPki;
use serde_json::Value;

use crate::harness::*;
use crate::support::router_in_process;

/// Runs tests/proton/client.py SCENARIO URL ARGS; returns the child and its JSON lines as they come.
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

async fn next_line(
    rx: std::sync::mpsc::Receiver<Value>,
) -> (Value, std::sync::mpsc::Receiver<Value>) {
    tokio::task::spawn_blocking(move || {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a line from the Proton client");
        (line, rx)
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread")]
async fn amqps_with_qpid_proton() {
    let pki = TestPki::generate();
    let mut p = Platform::start().await;
    p.stop_router().await;
    let (trigger, started) = router_in_process(&p, "router-tls", |c| {
        c.tls_bind = "127.0.0.1:0".parse().expect("addr");
        c.tls = ferry_router::config::TlsConfig {
            cert_path: Some(pki.server_cert_path.clone()),
            key_path: Some(pki.server_key_path.clone()),
        };
    })
    .await;
    p.amqp = started.addr;
    let tls_addr = started.tls_addr.expect("a TLS listener");
    let url = format!("amqps://app1:pw1@localhost:{}", tls_addr.port());
    let ca = pki.ca_cert_path.to_str().expect("utf-8 path");

    // Proton over TLS, checking the certificate against the test CA and the name `localhost`.
    let (mut child, rx) = proton("consume_tls", &url, &[ca, "telemetry/t1", "1", "10"]);
    let (line, rx) = next_line(rx).await;
    assert_eq!(line["opened"], "telemetry/t1", "{line}");
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("telemetry/t1").await;
    let token = p.assertion("t1", "d1").await;
    tx.send(device_message("d1", Some(&token), b"over tls"))
        .await
        .expect("send");
    let (line, _rx) = next_line(rx).await;
    assert_eq!(line["body"], "over tls", "{line}");
    assert_eq!(line["properties"]["device_id"], "d1", "{line}");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "{status}");

    // A CA that did not sign the router's certificate: the TLS handshake fails.
    let other = TestPki::generate();
    let other_ca = other.ca_cert_path.to_str().expect("utf-8 path");
    let (mut child, rx) = proton("consume_tls", &url, &[other_ca, "telemetry/t1", "1", "10"]);
    let (line, _rx) = next_line(rx).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.get("transport_error").is_some(), "{line}");
    assert!(
        line["description"]
            .as_str()
            .is_some_and(|d| d.contains("certificate verify failed")),
        "{line}"
    );

    // Plain AMQP on the TLS port: refused, promptly.
    let stream = tokio::net::TcpStream::connect(tls_addr)
        .await
        .expect("tcp connect");
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::builder()
            .container_id("plain-on-tls")
            .sasl_profile(SaslProfile::Plain {
                username: "app1".into(),
                password: "pw1".into(),
            })
            .open_with_stream(stream),
    )
    .await
    .expect("the attempt ends within 5 s");
    assert!(plain.is_err(), "plain AMQP on the TLS port must fail");

    // Plain AMQP still works on the plain port.
    let mut app = p.app("app1", "pw1").await;
    let _rx = app.receiver("telemetry/t1", 1).await;
    app.close().await;
    adapter.close().await;
    trigger.trigger();
    started.join().await.expect("router stops");
}
