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
