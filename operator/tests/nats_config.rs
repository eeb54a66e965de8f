//! The managed NATS node's files as the operator renders them, checked with the real `nats-server`
//! (`scripts/test` installs it; a missing one fails the test): the config passes `nats-server -t`, and
//! a single node started from it serves the components' own NATS client (`ferry_nats::connect`, with
//! the `messaging` section the operator renders for them) over TLS with the users' permissions, and
//! refuses a client without the CA or with a wrong password; and three nodes started from them form a
//! JetStream cluster over TLS-verified routes that keeps an event when a node dies.

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
    client_config_for(1, component, dir, &[port])
}

fn client_config_for(
    replicas: i32,
    component: build::Component,
    dir: &Path,
    ports: &[u16],
) -> ferry_nats::NatsConfig {
    let desired = build::address_space(&space(replicas), &defaults()).expect("builds");
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
    assert_eq!(nats.urls.len(), ports.len(), "one URL per node");
    nats.urls = ports
        .iter()
        .map(|p| format!("tls://localhost:{p}"))
        .collect();
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
    // The client's flush does not wait for the server, so the router's subscription may arrive after
    // a publish: publish until it gets through.
    let mut delivered = None;
    for _ in 0..50 {
        adapter
            .publish("ferry.telemetry.t1", "hello".into())
            .await
            .expect("publish");
        adapter.flush().await.expect("flush");
        if let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(100), telemetry.next()).await
        {
            delivered = Some(m);
            break;
        }
    }
    assert_eq!(
        delivered
            .expect("the router receives the adapter's telemetry")
            .payload
            .as_ref(),
        b"hello"
    );
    // A router may not publish telemetry as a device; the adapter's next message still arrives.
    router
        .publish("ferry.telemetry.t1", "forged".into())
        .await
        .expect("sent");
    router.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(200)).await;
    adapter
        .publish("ferry.telemetry.t1", "after".into())
        .await
        .expect("publish");
    adapter.flush().await.expect("flush");
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(700), telemetry.next()).await
    {
        seen.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    assert!(seen.contains(&"after".to_owned()), "{seen:?}");
    assert!(
        !seen.contains(&"forged".to_owned()),
        "a router's telemetry was delivered: {seen:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), snooping.next())
            .await
            .map_or(true, |m| m.is_none()),
        "an adapter received telemetry"
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

/// Starts node `i` of three from the rendered files: only the addresses change (free local ports, and
/// `localhost`, which the certificate names, for the nodes' DNS names) and each node its own data.
fn start_node(dir: &Path, i: usize, client: &[u16], cluster: &[u16], monitor: &[u16]) -> Server {
    let rendered = std::fs::read_to_string(dir.join("config/nats.conf")).expect("read");
    let mut text = rendered
        .replace("0.0.0.0:4222", &format!("127.0.0.1:{}", client[i]))
        .replace("0.0.0.0:6222", &format!("127.0.0.1:{}", cluster[i]))
        .replace("0.0.0.0:8222", &format!("127.0.0.1:{}", monitor[i]))
        .replace(
            &format!("{}/data", dir.display()),
            &format!("{}/data-{i}", dir.display()),
        )
        .replace(
            &format!("{}/run/nats.pid", dir.display()),
            &format!("{}/run/nats-{i}.pid", dir.display()),
        );
    for (j, port) in cluster.iter().enumerate() {
        text = text.replace(
            &format!("iot-nats-{j}.iot-nats-headless.prod.svc:6222"),
            &format!("localhost:{port}"),
        );
    }
    assert!(!text.contains("svc:6222"), "every route rewritten:\n{text}");
    // Beside the rendered one, so that its `include "../auth/auth.conf"` resolves the same way.
    let config = dir.join(format!("config/node-{i}.conf"));
    std::fs::write(&config, text).expect("write");
    Server(
        Command::new(require_program("nats-server"))
            .arg("-c")
            .arg(&config)
            .env("POD_NAME", format!("iot-nats-{i}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server"),
    )
}

#[tokio::test]
async fn three_nodes_from_the_rendered_files_form_a_cluster_that_keeps_an_event_when_one_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    nats::write_node_files(&space(3), &defaults(), dir.path()).expect("files");
    let ports = |_| (0..3).map(|_| free_port()).collect::<Vec<u16>>();
    let (client, cluster, monitor) = (ports(0), ports(1), ports(2));
    let mut nodes: Vec<Option<Server>> = (0..3)
        .map(|i| Some(start_node(dir.path(), i, &client, &cluster, &monitor)))
        .collect();

    let adapter_config = client_config_for(3, build::Component::MqttAdapter, dir.path(), &client);
    let router_config = client_config_for(3, build::Component::Router, dir.path(), &client);
    // Streams on all three nodes, as the operator tells the components for a three-node cluster.
    assert_eq!(adapter_config.replicas, 3);
    let mut adapter = None;
    for _ in 0..50 {
        if let Ok(c) = ferry_nats::connect(&adapter_config, "adapter").await {
            adapter = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let adapter = adapter.expect("the adapter connects");
    let js = async_nats::jetstream::new(adapter.clone());
    // The stream needs the cluster formed (routes up, a meta leader elected): retry for a while. On a
    // loaded 2-core machine (CI beside other suites) the election has taken over 30 s.
    let mut stream = None;
    let mut last = String::new();
    for _ in 0..450 {
        match ferry_nats::streams::event_stream(
            &js,
            "t1",
            ferry_nats::streams::EventLimits::default(),
            adapter_config.replicas,
        )
        .await
        {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut stream = stream.unwrap_or_else(|| {
        panic!("no three-replica stream: the nodes did not form a cluster over their TLS routes: {last}")
    });
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(
        info.cluster.as_ref().map(|c| c.replicas.len()),
        Some(2),
        "a leader and two replicas on the other nodes"
    );

    // Accepted means stored on a majority.
    js.publish(ferry_nats::subjects::event("t1"), "door open".into())
        .await
        .expect("publish")
        .await
        .expect("stored");

    // A node dies: the event is still there for a router on the others.
    nodes[0].take();
    let mut survivors = router_config.clone();
    survivors.urls.remove(0);
    let router = ferry_nats::connect(&survivors, "router")
        .await
        .expect("the router connects to the survivors");
    let router_js = async_nats::jetstream::new(router);
    let mut consumer = None;
    for _ in 0..100 {
        if let Ok(s) = ferry_nats::streams::open_event_stream(&router_js, "t1", 3).await {
            if let Ok(c) =
                ferry_nats::streams::event_consumer(&s, 10, Duration::from_secs(30)).await
            {
                consumer = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let consumer = consumer.expect("the shared event consumer on two of three nodes");
    // Right after a node dies the consumer may still be electing its leader on the survivors: a fetch
    // then ends at once with a 503 status (no responders). Asked again until the bound, as a router
    // does; the event must come within it.
    let fetch_until = tokio::time::Instant::now() + Duration::from_secs(30);
    let event = loop {
        let fetched = async {
            let mut batch = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_secs(5))
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            match batch.next().await {
                Some(Ok(m)) => Ok(m),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("the fetch expired empty".to_owned()),
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), fetched).await {
            Ok(Ok(event)) => break event,
            other if tokio::time::Instant::now() < fetch_until => {
                eprintln!("fetch again: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("the event was not delivered within 30 s: {other:?}"),
        }
    };
    assert_eq!(event.payload.as_ref(), b"door open");
    event.ack().await.expect("ack");
}
