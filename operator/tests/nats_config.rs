//! The managed NATS node's files as the operator renders them, checked with the real `nats-server`
//! (`scripts/test` installs it; a missing one fails the test): the config passes `nats-server -t`, and
//! a single node started from it serves the components' own NATS client (`ferry_nats::connect`, with
//! the `messaging` section the operator renders for them) over TLS with the users' permissions, and
//! refuses a client without the CA or with a wrong password.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_operator::build::{self, nats};
use ferry_operator::crd::{
    AddressSpace, AddressSpaceSpec, ManagedNatsSpec, MessagingMode, NatsSpec,
};
use ferry_test_support::{free_port, require_program};
use futures_util::StreamExt as _;

fn space(replicas: i32) -> AddressSpace {
    let mut spec = AddressSpaceSpec::default();
    spec.messaging.mode = MessagingMode::Nats;
    spec.messaging.nats = Some(NatsSpec {
        external: None,
        managed: Some(ManagedNatsSpec {
            replicas,
            ..ManagedNatsSpec::default()
        }),
    });
    let mut s = AddressSpace::new("iot", spec);
    s.metadata.namespace = Some("prod".into());
    s.metadata.uid = Some("uid-1".into());
    s
}

fn defaults() -> build::Defaults {
    build::Defaults {
        image_registry: "ghcr.io/ferry-iot".into(),
        image_tag: "0.1.0".into(),
        allowed_image_registries: Vec::new(),
        network_policies: None,
        nats_image: build::DEFAULT_NATS_IMAGE.into(),
        internal_tls_fields: false,
    }
}

fn config_test(config: &Path) -> std::process::Output {
    Command::new(require_program("nats-server"))
        .args(["-t", "-c"])
        .arg(config)
        .env("POD_NAME", "iot-nats-0")
        .output()
        .expect("run nats-server -t")
}

#[test]
fn the_rendered_config_passes_the_servers_own_config_test() {
    for replicas in [1, 3, 5] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config =
            nats::write_node_files(&space(replicas), &defaults(), dir.path()).expect("files");
        let out = config_test(&config);
        assert!(
            out.status.success(),
            "{replicas} nodes: nats-server -t refused the rendered config: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&config).unwrap_or_default()
        );
    }
    // The check reads the files the config names: without the certificate it fails.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = nats::write_node_files(&space(3), &defaults(), dir.path()).expect("files");
    std::fs::remove_file(dir.path().join("tls/tls.key")).expect("remove");
    assert!(!config_test(&config).status.success());
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The router's or an adapter's `messaging.nats` as the operator renders it, with the local server's
/// address and the local files in place of the pod's.
fn client_config(component: build::Component, dir: &Path, port: u16) -> ferry_nats::NatsConfig {
    let desired = build::address_space(&space(1), &defaults()).expect("builds");
    let name = build::names::config("iot", component);
    let yaml = desired
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(name.as_str()))
        .and_then(|c| c.data.as_ref()?.get(build::CONFIG_KEY).cloned())
        .expect("config");
    let value: serde_json::Value = serde_saphyr::from_str(&yaml).expect("yaml");
    let messaging: ferry_nats::Messaging =
        serde_json::from_value(value["messaging"].clone()).expect("messaging section");
    assert_eq!(messaging.mode, ferry_nats::MessagingMode::Nats);
    let mut nats = messaging.nats;
    assert!(nats.tls_required && nats.tls_ca.is_some() && nats.password_file.is_some());
    nats.urls = vec![format!("tls://localhost:{port}")];
    let user = if component == build::Component::Router {
        "router"
    } else {
        "adapter"
    };
    nats.password_file = Some(dir.join("users").join(user));
    nats.tls_ca = Some(dir.join("tls/ca.crt"));
    nats.connect_timeout_ms = 3000;
    nats
}

#[tokio::test]
async fn a_node_started_from_the_rendered_files_serves_the_components_over_tls_with_their_permissions(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = nats::write_node_files(&space(1), &defaults(), dir.path()).expect("files");
    // The only change: free ports instead of 4222 and 8222.
    let (port, monitor) = (free_port(), free_port());
    let text = std::fs::read_to_string(&config)
        .expect("read")
        .replace("0.0.0.0:4222", &format!("127.0.0.1:{port}"))
        .replace("0.0.0.0:8222", &format!("127.0.0.1:{monitor}"));
    std::fs::write(&config, text).expect("write");
    let _server = Server(
        Command::new(require_program("nats-server"))
            .arg("-c")
            .arg(&config)
            .env("POD_NAME", "iot-nats-0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server"),
    );
    let router_config = client_config(build::Component::Router, dir.path(), port);
    let adapter_config = client_config(build::Component::MqttAdapter, dir.path(), port);
    let mut router = None;
    for _ in 0..50 {
        if let Ok(c) = ferry_nats::connect(&router_config, "router").await {
            router = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let router = router.expect("the router connects over TLS with its user");
    let adapter = ferry_nats::connect(&adapter_config, "adapter")
        .await
        .expect("the adapter connects");

    let mut telemetry = router
        .subscribe("ferry.telemetry.>")
        .await
        .expect("subscribe");
    // An adapter may not read telemetry: its subscription is refused by the server.
    let mut snooping = adapter.subscribe("ferry.telemetry.>").await.expect("sent");
    router.flush().await.expect("flush");
    adapter
        .publish("ferry.telemetry.t1", "hello".into())
        .await
        .expect("publish");
    adapter.flush().await.expect("flush");
    let got = tokio::time::timeout(Duration::from_secs(5), telemetry.next())
        .await
        .expect("delivered")
        .expect("message");
    assert_eq!(got.payload.as_ref(), b"hello");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), snooping.next())
            .await
            .map_or(true, |m| m.is_none()),
        "an adapter received telemetry"
    );
    // A router may not publish telemetry as a device.
    router
        .publish("ferry.telemetry.t1", "forged".into())
        .await
        .expect("sent");
    router.flush().await.ok();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), telemetry.next())
            .await
            .is_err(),
        "a router's telemetry was delivered"
    );

    // Without the CA (system roots only) the server's certificate is not trusted.
    let mut no_ca = adapter_config.clone();
    no_ca.tls_ca = None;
    assert!(ferry_nats::connect(&no_ca, "no-ca").await.is_err());
    // A wrong password is refused.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password").expect("write");
    let mut bad = adapter_config.clone();
    bad.password_file = Some(wrong);
    assert!(ferry_nats::connect(&bad, "bad").await.is_err());
}
