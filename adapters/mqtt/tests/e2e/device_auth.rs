//! Client-certificate authentication (tenant by the issuer's DN, `x509-cert` credential by the subject
//! DN) and unauthenticated devices, with `mosquitto_pub` and a Proton consumer.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_test_support::TestPki;
use serde_json::json;

use super::platform::{stderr, Platform};

/// The base64 DER inside a PEM block.
pub fn pem_base64(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

/// `t1` trusts the test CA; `d1` authenticates with a certificate for `CN=<cn>` (and keeps its password).
async fn trust(p: &Platform, pki: &TestPki, cn: &str) {
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        json!({ "trusted-ca": [{ "subject-dn": pki.ca_subject_dn, "cert": pem_base64(&pki.ca_cert_pem) }] }),
    )
    .await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/credentials/t1/d1",
        json!([
            { "type": "hashed-password", "auth-id": "sensor1", "secrets": [{ "pwd-plain": "hunter2" }] },
            { "type": "x509-cert", "auth-id": ferry_test_support::client_subject_dn(cn), "secrets": [{}] }
        ]),
    )
    .await;
}

/// `mosquitto_pub` over TLS (trusting `ca`) with a client certificate and no user name.
fn pub_with_cert(
    port: u16,
    ca: &Path,
    cert: &Path,
    key: &Path,
    message: &str,
) -> std::process::Output {
    Command::new(ferry_test_support::require_program("mosquitto_pub"))
        .args(["--cafile", ca.to_str().expect("utf-8 path")])
        .args(["--cert", cert.to_str().expect("utf-8 path")])
        .args(["--key", key.to_str().expect("utf-8 path")])
        .args(["-h", "localhost", "-p", &port.to_string(), "-V", "mqttv311"])
        .args(["-t", "telemetry", "-q", "1", "-m", message])
        .output()
        .expect("mosquitto_pub")
}

async fn tls_platform(pki: &TestPki) -> Platform {
    let (cert, key) = (pki.server_cert_path.clone(), pki.server_key_path.clone());
    Platform::start_with(move |c| {
        c.tls.cert_path = Some(cert);
        c.tls.key_path = Some(key);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_of_the_tenants_ca_authenticates_without_a_password() {
    let pki = TestPki::generate();
    let p = tls_platform(&pki).await;
    trust(&p, &pki, "device-one").await;
    let port = p.mqtts.expect("TLS listener").port();
    let (cert, key) = pki.client_cert_files("device-one");
    let c = p.consumer("app1", "pw1", "telemetry/t1", 2);
    for message in ["by certificate", "again, from the verify cache"] {
        let out = tokio::task::block_in_place(|| {
            pub_with_cert(port, &pki.ca_cert_path, &cert, &key, message)
        });
        assert!(out.status.success(), "{}", stderr(&out));
        let m = tokio::task::block_in_place(|| c.next(Duration::from_secs(5))).expect("arrives");
        assert_eq!(m["body"], message);
        assert_eq!(m["properties"]["device_id"], "d1", "{m}");
    }
    // A password login over TLS without a certificate still works.
    let out = tokio::task::block_in_place(|| {
        Command::new(ferry_test_support::require_program("mosquitto_pub"))
            .args(["--cafile", pki.ca_cert_path.to_str().expect("utf-8 path")])
            .args(["-h", "localhost", "-p", &port.to_string(), "-V", "mqttv311"])
            .args([
                "-u",
                "sensor1@t1",
                "-P",
                "hunter2",
                "-t",
                "telemetry",
                "-q",
                "0",
                "-m",
                "pw",
            ])
            .output()
            .expect("mosquitto_pub")
    });
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_the_tenant_does_not_trust_are_refused() {
    let pki = TestPki::generate();
    let p = tls_platform(&pki).await;
    trust(&p, &pki, "device-one").await;
    let port = p.mqtts.expect("TLS listener").port();
    let refused = |cert: &Path, key: &Path| {
        let out =
            tokio::task::block_in_place(|| pub_with_cert(port, &pki.ca_cert_path, cert, key, "x"));
        assert!(!out.status.success(), "must be refused");
        stderr(&out)
    };
    // Same issuer DN, another CA key: the signature does not verify.
    let impostor = TestPki::generate();
    let (cert, key) = impostor.client_cert_files("device-one");
    let why = refused(&cert, &key);
    assert!(why.contains("bad user name or password"), "{why}");
    // The tenant's CA, but no x509-cert credential for this subject.
    let (cert, key) = pki.client_cert_files("device-two");
    let why = refused(&cert, &key);
    assert!(why.contains("bad user name or password"), "{why}");
    // A certificate decides even when a user name comes with it.
    let out = tokio::task::block_in_place(|| {
        Command::new(ferry_test_support::require_program("mosquitto_pub"))
            .args(["--cafile", pki.ca_cert_path.to_str().expect("utf-8 path")])
            .args(["--cert", cert.to_str().expect("utf-8 path")])
            .args(["--key", key.to_str().expect("utf-8 path")])
            .args(["-h", "localhost", "-p", &port.to_string(), "-V", "mqttv311"])
            .args([
                "-u",
                "sensor1@t1",
                "-P",
                "hunter2",
                "-t",
                "telemetry",
                "-q",
                "0",
                "-m",
                "x",
            ])
            .output()
            .expect("mosquitto_pub")
    });
    assert!(
        !out.status.success(),
        "the certificate, not the password, decides"
    );
    // The right certificate of a disabled device, then of a disabled tenant: not authorised.
    let (cert, key) = pki.client_cert_files("device-one");
    p.manage(
        reqwest::Method::PUT,
        "/v1/devices/t1/d1",
        json!({ "enabled": false }),
    )
    .await;
    let why = refused(&cert, &key);
    assert!(why.contains("not authorised"), "{why}");
    p.manage(reqwest::Method::PUT, "/v1/devices/t1/d1", json!({}))
        .await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        json!({ "enabled": false, "trusted-ca": [{ "subject-dn": pki.ca_subject_dn, "cert": pem_base64(&pki.ca_cert_pem) }] }),
    )
    .await;
    let why = refused(&cert, &key);
    assert!(why.contains("not authorised"), "{why}");
    // No tenant trusts the issuer at all.
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        json!({ "trusted-ca": [{ "subject-dn": "CN=Another CA", "cert": pem_base64(&pki.ca_cert_pem) }] }),
    )
    .await;
    let why = refused(&cert, &key);
    assert!(why.contains("bad user name or password"), "{why}");
}

/// `t3` lets devices on `hono-mqtt` send without authenticating; `t1` does not.
async fn open_tenant(p: &Platform) {
    p.manage(
        reqwest::Method::POST,
        "/v1/tenants/t3",
        json!({ "adapters": [{ "type": "hono-mqtt", "enabled": true, "device-authentication-required": false }] }),
    )
    .await;
    p.manage(reqwest::Method::POST, "/v1/devices/t3/d9", json!({}))
        .await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/applications/app3",
        json!({ "password": "pw3", "tenants": ["t3"] }),
    )
    .await;
}

fn anonymous_pub(p: &Platform, topic: &str, qos: u8, message: &str) -> std::process::Output {
    tokio::task::block_in_place(|| {
        Command::new(ferry_test_support::require_program("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &p.mqtt.port().to_string()])
            .args([
                "-V",
                "mqttv311",
                "-t",
                topic,
                "-q",
                &qos.to_string(),
                "-m",
                message,
            ])
            .output()
            .expect("mosquitto_pub")
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_devices_publish_where_the_tenant_allows_it() {
    let p = Platform::start_with(|c| c.authentication_required = false).await;
    open_tenant(&p).await;
    let c = p.consumer("app3", "pw3", "telemetry/t3", 1);
    let out = anonymous_pub(&p, "telemetry/t3/d9", 1, "anonymous");
    assert!(out.status.success(), "{}", stderr(&out));
    let m = tokio::task::block_in_place(|| c.next(Duration::from_secs(5))).expect("arrives");
    assert_eq!(m["body"], "anonymous");
    assert_eq!(m["properties"]["device_id"], "d9", "{m}");
    assert_eq!(m["properties"]["orig_address"], "telemetry/t3/d9");
    let e = p.consumer("app3", "pw3", "event/t3", 1);
    let out = anonymous_pub(&p, "e/t3/d9", 1, "anonymous event");
    assert!(out.status.success(), "{}", stderr(&out));
    let m = tokio::task::block_in_place(|| e.next(Duration::from_secs(5))).expect("arrives");
    assert_eq!(m["body"], "anonymous event");

    // t1 requires authentication: the QoS 1 message is refused and the connection closed.
    let t1 = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let out = anonymous_pub(&p, "telemetry/t1/d1", 1, "not allowed");
    assert!(!out.status.success(), "t1 requires authentication");
    // A topic without tenant and device means nothing without a login.
    let out = anonymous_pub(&p, "telemetry", 1, "who?");
    assert!(!out.status.success());
    // An unknown device of the open tenant.
    let out = anonymous_pub(&p, "telemetry/t3/nobody", 1, "who?");
    assert!(!out.status.success());
    assert!(
        tokio::task::block_in_place(|| t1.next(Duration::from_millis(500))).is_none(),
        "nothing reached t1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_adapter_setting_a_connect_needs_credentials() {
    let p = Platform::start().await;
    open_tenant(&p).await;
    let out = anonymous_pub(&p, "telemetry/t3/d9", 1, "anonymous");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("bad user name or password"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthenticated_device_receives_commands_and_answers_them() {
    use rumqttc::mqttbytes::{v4, QoS};
    let p = Platform::start_with(|c| c.authentication_required = false).await;
    open_tenant(&p).await;
    let events = p.consumer("app3", "pw3", "event/t3", 1);
    let mut raw = super::platform::Raw::connect_tcp(p.mqtt).await;
    raw.send_packet(|out| {
        v4::Connect::new("anonymous-d9").write(out).expect("encode");
    })
    .await;
    match raw.packet(Duration::from_secs(5)).await {
        Some(v4::Packet::ConnAck(a)) => assert_eq!(a.code, v4::ConnectReturnCode::Success),
        other => panic!("no CONNACK: {other:?}"),
    }
    // Another tenant's device, a filter without tenant and device: refused.
    assert_eq!(
        raw.subscribe(1, "c/t1/d1/q/#", QoS::AtLeastOnce).await,
        v4::SubscribeReasonCode::Failure
    );
    assert_eq!(
        raw.subscribe(2, "c///q/#", QoS::AtLeastOnce).await,
        v4::SubscribeReasonCode::Failure
    );
    assert_eq!(
        raw.subscribe(3, "c/t3/d9/q/#", QoS::AtLeastOnce).await,
        v4::SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    // Applications hear the device can be reached.
    let ttd =
        tokio::task::block_in_place(|| events.next(Duration::from_secs(5))).expect("ttd event");
    assert_eq!(ttd["properties"]["ttd"], -1, "{ttd}");
    assert_eq!(ttd["properties"]["device_id"], "d9");

    let amqp = p.amqp;
    let app = std::thread::spawn(move || {
        std::process::Command::new(ferry_test_support::test_python())
            .arg(super::platform::proton_script())
            .args([
                "command",
                &format!("amqp://app3:pw3@{amqp}"),
                "t3",
                "d9",
                "blink",
                "{}",
                "10",
            ])
            .output()
            .expect("proton app")
    });
    let (topic, pkid) = match raw.packet(Duration::from_secs(10)).await {
        Some(v4::Packet::Publish(p)) => (p.topic.clone(), p.pkid),
        other => panic!("no command: {other:?}"),
    };
    let levels: Vec<&str> = topic.split('/').collect();
    assert_eq!(levels[..4], ["c", "t3", "d9", "q"], "{topic}");
    assert_eq!(levels[5], "blink");
    raw.send_packet(|out| {
        v4::PubAck::new(pkid).write(out).expect("encode");
    })
    .await;
    let response = format!("c/t3/d9/s/{}/200", levels[4]);
    raw.publish(&response, QoS::AtMostOnce, 0, b"{\"done\":true}")
        .await;
    let out = tokio::task::block_in_place(|| app.join()).expect("app thread");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("\"outcome\": \"accepted\""), "{out}");
    assert!(out.contains("{\\\"done\\\":true}"), "{out}");
}
