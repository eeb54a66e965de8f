//! MQTT over TLS: `mosquitto_pub` trusting only the test CA publishes to the TLS listener.

use std::process::Command;
use std::time::Duration;

use super::platform::{stderr, Platform};

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_pub_over_tls_reaches_a_proton_consumer() {
    let pki = ferry_test_support::TestPki::generate();
    let p = Platform::start_with(|c| {
        c.tls.cert_path = Some(pki.server_cert_path.clone());
        c.tls.key_path = Some(pki.server_key_path.clone());
    })
    .await;
    let port = p.mqtts.expect("a TLS listener").port();
    let c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let out = tokio::task::block_in_place(|| {
        Command::new(ferry_test_support::require_program("mosquitto_pub"))
            .args(["--cafile", pki.ca_cert_path.to_str().expect("utf-8 path")])
            .args(["-h", "localhost", "-p", &port.to_string()])
            .args(["-u", "sensor1@t1", "-P", "hunter2", "-V", "mqttv311"])
            .args(["-t", "telemetry", "-q", "1", "-m", "over TLS"])
            .output()
            .expect("mosquitto_pub")
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let m = tokio::task::block_in_place(|| c.next(Duration::from_secs(5))).expect("arrives");
    assert_eq!(m["body"], "over TLS");
    assert_eq!(m["properties"]["device_id"], "d1");
}

/// Every internal link on TLS (as the operator sets it up in Kubernetes): the registry serves HTTPS and
/// the router AMQPS, and the adapter (and the router towards the registry) verify them against the CA
/// they are given; `mosquitto_pub` → adapter → router → Proton still works end to end.
#[tokio::test(flavor = "multi_thread")]
async fn internal_links_over_tls_verified_against_the_ca_carry_messages() {
    let pki = ferry_test_support::TestPki::generate();
    let p = Platform::start_with_internal_tls(Some(&pki), |_| {}).await;
    assert!(p.registry.starts_with("https://"), "{}", p.registry);
    let c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    p.telemetry_gets_through("over internal TLS");
    let m = tokio::task::block_in_place(|| c.next(Duration::from_secs(5))).expect("arrives");
    assert_eq!(m["body"], "over internal TLS");
    assert_eq!(m["properties"]["device_id"], "d1");
}

/// An adapter given another CA trusts neither the registry nor the router: devices are refused
/// ("server unavailable", not "bad credentials") and nothing is sent in plain text instead.
#[tokio::test(flavor = "multi_thread")]
async fn an_adapter_that_does_not_trust_the_ca_reaches_nothing() {
    let pki = ferry_test_support::TestPki::generate();
    let other = ferry_test_support::TestPki::generate();

    // The registry's certificate does not verify: the device cannot be authenticated.
    let p = Platform::start_with_internal_tls(Some(&pki), |c| {
        c.adapter.registry_ca_file = Some(other.ca_cert_path.clone());
    })
    .await;
    let out = tokio::task::block_in_place(|| {
        p.mosquitto_pub("sensor1@t1", "hunter2", "telemetry", 1, "x")
    });
    assert!(
        !out.status.success(),
        "connected without a verified registry"
    );
    let err = stderr(&out);
    assert!(err.contains("unavailable"), "{err}");

    // The router's certificate does not verify: the device logs in, its QoS 1 message is refused.
    let p = Platform::start_with_internal_tls(Some(&pki), |c| {
        c.adapter.router_ca_file = Some(other.ca_cert_path.clone());
    })
    .await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let out = tokio::task::block_in_place(|| {
        p.mosquitto_pub("sensor1@t1", "hunter2", "telemetry", 1, "x")
    });
    assert!(
        !out.status.success(),
        "acknowledged without a verified router"
    );
    assert!(
        tokio::task::block_in_place(|| c.next(Duration::from_secs(1))).is_none(),
        "a message reached the application"
    );
}
