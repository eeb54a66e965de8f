//! The operator's rendering end to end, without Kubernetes: the objects `ferry-operator` builds for an
//! AddressSpace with a generated certificate (its own CA), run as local processes: in `nats` mode with
//! a managed NATS cluster, three `nats-server` nodes, `ferry-registry` (SQLite), a router and both
//! adapters; in embedded mode the same without NATS. Each process gets what its pod would get: the
//! files of its volume mounts (the ConfigMap's `config.yaml` or `nats.conf`, the Secrets' keys,
//! generated as the operator does), its environment and its arguments. The one change is [`localize`]:
//! in-pod paths become directories under the test's, and the in-cluster names and ports become local
//! ones.
//!
//! They reach each other over TLS verified against the generated CA (adapters and router → registry
//! over https; → NATS over TLS with their users' password files, NATS routes with client certificates;
//! in embedded mode adapters → router over AMQPS); a paho device's telemetry and event arrive at a
//! Qpid Proton application on the router's AMQPS port; clients without the CA (curl, Proton) are
//! refused.
//!
//! Host names: the generated certificate names the in-cluster DNS names and `localhost` (for
//! `kubectl port-forward`), not 127.0.0.1. So the in-cluster names are rewritten to `localhost`, which
//! every client then verifies as it would verify the Service's name in a cluster; no verification is
//! weakened and the certificate is the one the operator generates, unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_e2e::{
    binary, curl, paho_device, proton_app, proton_app_trusting, require_program, text,
    wait_http_ok, HttpResponse, Process,
};
use ferry_operator::build::{self, names, ports, Component, Desired};
use ferry_operator::crd::{
    AddressSpace, AddressSpaceSpec, ManagedNatsSpec, MessagingMode, NatsSpec,
};
use k8s_openapi::api::core::v1::{PodTemplateSpec, Secret};
use serde_json::{json, Value};

const SPACE: &str = "iot";
const NAMESPACE: &str = "prod";
const NODES: usize = 3;
/// Generous: nine processes start, and bcrypt hashes at the registry's default cost, on a machine that
/// runs the rest of the suite beside them.
const WAIT: Duration = Duration::from_secs(60);
/// Where the pods' files live in the images: the operator's mounts are all under these.
const POD_ROOTS: [&str; 3] = ["/etc/ferry", "/var/lib/ferry", "/etc/nats"];

/// The one rewrite of what the operator rendered, so that it runs here instead of in a pod: the in-pod
/// paths become the same paths under `root` (this pod's directory), and each rendered address
/// (`addresses`: rendered → local) becomes its local one: the ports the pod binds, and the in-cluster
/// names it connects to. Everything else stays as rendered.
fn localize(rendered: &str, root: &Path, addresses: &[(String, String)]) -> String {
    let mut text = rendered.to_owned();
    for dir in POD_ROOTS {
        text = text.replace(dir, &format!("{}{dir}", root.display()));
    }
    for (from, to) in addresses {
        text = text.replace(from.as_str(), to);
    }
    text
}

/// An address space in `mode` (`nats`: a managed cluster of [`NODES`]), with no `spec.tls` (the
/// operator generates the certificate and its CA), and one registry on SQLite.
fn space(mode: MessagingMode) -> AddressSpace {
    let mut spec = AddressSpaceSpec::default();
    if mode == MessagingMode::Nats {
        spec.messaging.mode = MessagingMode::Nats;
        spec.messaging.nats = Some(NatsSpec {
            external: None,
            managed: Some(ManagedNatsSpec {
                replicas: NODES as i32,
                ..ManagedNatsSpec::default()
            }),
        });
    }
    let mut s = AddressSpace::new(SPACE, spec);
    s.metadata.namespace = Some(NAMESPACE.into());
    s.metadata.uid = Some("uid-1".into());
    s
}

/// The objects the operator builds for an address space, with its generated Secrets filled in as the
/// reconcile creates them.
struct Rendered {
    desired: Desired,
    secrets: BTreeMap<String, Secret>,
}

impl Rendered {
    fn new(space: &AddressSpace) -> Self {
        let defaults = build::Defaults {
            image_registry: "ghcr.io/ferry-iot".into(),
            image_tag: "test".into(),
            allowed_image_registries: Vec::new(),
            network_policies: None,
            nats_image: build::DEFAULT_NATS_IMAGE.into(),
        };
        let desired = build::address_space(space, &defaults).expect("the operator builds it");
        let secrets = desired
            .secrets
            .iter()
            .map(|s| (s.name.clone(), s.generate().expect("generated")))
            .collect();
        Self { desired, secrets }
    }

    fn secret_key(&self, secret: &str, key: &str) -> Vec<u8> {
        self.secrets
            .get(secret)
            .and_then(|s| s.data.as_ref()?.get(key))
            .unwrap_or_else(|| panic!("the generated Secret {secret} has no key {key}"))
            .0
            .clone()
    }

    fn config_map(&self, name: &str) -> &BTreeMap<String, String> {
        self.desired
            .config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .and_then(|c| c.data.as_ref())
            .unwrap_or_else(|| panic!("no ConfigMap {name}"))
    }

    fn deployment(&self, name: &str) -> Option<&PodTemplateSpec> {
        self.desired
            .deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .and_then(|d| d.spec.as_ref())
            .map(|s| &s.template)
    }

    /// The pod template of the Deployment or StatefulSet `name`, and the name its first pod gets.
    fn workload(&self, name: &str) -> (String, &PodTemplateSpec) {
        match (self.deployment(name), self.stateful_set(name)) {
            (Some(t), None) => (format!("{name}-7d9f-x2k4q"), t),
            (None, Some(t)) => (format!("{name}-0"), t),
            _ => panic!("not exactly one Deployment or StatefulSet {name}"),
        }
    }

    fn stateful_set(&self, name: &str) -> Option<&PodTemplateSpec> {
        self.desired
            .stateful_sets
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .and_then(|d| d.spec.as_ref())
            .map(|s| &s.template)
    }
}

/// One pod of a rendered template, run as a local process, as a kubelet would run it: its volume
/// mounts written under `root`, its environment, its arguments, and a free local port for each of
/// its container ports.
struct Pod<'a> {
    name: String,
    template: &'a PodTemplateSpec,
    root: PathBuf,
    /// Container port name → (in-pod port, local port).
    ports: BTreeMap<String, (i32, u16)>,
}

impl<'a> Pod<'a> {
    fn new(name: &str, template: &'a PodTemplateSpec, dir: &Path) -> Self {
        let ports = container(template)
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let name = p.name.clone().expect("named container ports");
                (name, (p.container_port, ferry_e2e::free_port()))
            })
            .collect();
        Self {
            name: name.to_owned(),
            template,
            root: dir.join(name),
            ports,
        }
    }

    /// The local port of the container port `name`.
    fn port(&self, name: &str) -> u16 {
        self.ports
            .get(name)
            .unwrap_or_else(|| panic!("{} has no port {name}", self.name))
            .1
    }

    /// Writes the pod's files and starts `program` as its container would run; `cluster` maps the
    /// in-cluster addresses to local ones.
    fn start(
        &self,
        rendered: &Rendered,
        program: PathBuf,
        cluster: &[(String, String)],
    ) -> Process {
        let mut addresses = cluster.to_vec();
        for (in_pod, local) in self.ports.values() {
            for host in ["0.0.0.0", "127.0.0.1"] {
                addresses.push((format!("{host}:{in_pod}"), format!("127.0.0.1:{local}")));
            }
        }
        let localized = |t: &str| localize(t, &self.root, &addresses);
        let spec = self.template.spec.as_ref().expect("pod spec");
        let container = container(self.template);
        for mount in container.volume_mounts.iter().flatten() {
            let path = self.root.join(mount.mount_path.trim_start_matches('/'));
            let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name);
            let files: Vec<(PathBuf, Vec<u8>)> = match volume {
                Some(v) if v.config_map.is_some() => {
                    let cm = rendered.config_map(&v.config_map.as_ref().expect("checked").name);
                    let localize_config = |key: &String, value: &String| {
                        let text = localized(value);
                        assert!(
                            !text.contains(".svc") && !text.contains("0.0.0.0"),
                            "{}: an address left as rendered in {key}:\n{text}",
                            self.name
                        );
                        text.into_bytes()
                    };
                    match &mount.sub_path {
                        Some(key) => vec![(path, localize_config(key, &cm[key]))],
                        None => cm
                            .iter()
                            .map(|(k, v)| (path.join(k), localize_config(k, v)))
                            .collect(),
                    }
                }
                Some(v) if v.secret.is_some() => {
                    let s = v.secret.as_ref().expect("checked");
                    let name = s.secret_name.as_deref().expect("secret name");
                    match &s.items {
                        Some(items) => items
                            .iter()
                            .map(|i| (path.join(&i.path), rendered.secret_key(name, &i.key)))
                            .collect(),
                        None => rendered.secrets[name]
                            .data
                            .iter()
                            .flatten()
                            .map(|(k, v)| (path.join(k), v.0.clone()))
                            .collect(),
                    }
                }
                Some(v) if v.projected.is_some() => v
                    .projected
                    .as_ref()
                    .and_then(|p| p.sources.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|source| source.secret.as_ref())
                    .flat_map(|s| {
                        s.items
                            .iter()
                            .flatten()
                            .map(|i| (path.join(&i.path), rendered.secret_key(&s.name, &i.key)))
                    })
                    .collect(),
                // emptyDir, a PersistentVolumeClaim, a StatefulSet's claim template: a directory.
                _ => {
                    std::fs::create_dir_all(&path).expect("mkdir");
                    Vec::new()
                }
            };
            for (file, content) in files {
                std::fs::create_dir_all(file.parent().expect("a parent")).expect("mkdir");
                std::fs::write(&file, content).expect("write");
            }
        }
        let mut cmd = Command::new(program);
        cmd.args(container.args.iter().flatten().map(|a| localized(a)));
        for var in container.env.iter().flatten() {
            let source = var.value_from.as_ref();
            let value = match (&var.value, source) {
                (Some(v), _) => v.clone(),
                (None, Some(s)) if s.field_ref.is_some() => {
                    let field = &s.field_ref.as_ref().expect("checked").field_path;
                    assert_eq!(field, "metadata.name", "{}: {var:?}", self.name);
                    self.name.clone()
                }
                (None, Some(s)) if s.secret_key_ref.is_some() => {
                    let key = s.secret_key_ref.as_ref().expect("checked");
                    text(&rendered.secret_key(&key.name, &key.key))
                }
                _ => panic!(
                    "{}: an environment variable of no known kind: {var:?}",
                    self.name
                ),
            };
            cmd.env(&var.name, value);
        }
        Process::spawn(&self.name, cmd)
    }

    /// Waits until the pod's startup probe, when it has one, and then its readiness probe (HTTP GETs
    /// on its ports) answer 200.
    ///
    /// For the NATS nodes the startup probe (`/healthz`) is the one that says the JetStream cluster
    /// has formed; the readiness probe passes on a node alone. A router or adapter started before
    /// then exits (the first stream it creates finds "no suitable peers for placement") and, in a
    /// cluster, is restarted by the kubelet; here the test starts them once the nodes have started.
    fn wait_ready(&self, process: &Process) {
        let c = container(self.template);
        let probes = [c.startup_probe.as_ref(), c.readiness_probe.as_ref()];
        assert!(probes[1].is_some(), "{}: no readiness probe", self.name);
        for probe in probes.into_iter().flatten() {
            let get = probe.http_get.as_ref().expect("an HTTP probe");
            let port = match &get.port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
                    self.port(name)
                }
                other => panic!("{}: probe on an unnamed port {other:?}", self.name),
            };
            let path = get.path.as_deref().unwrap_or("/");
            wait_http_ok(&self.name, port, path, WAIT, process);
        }
    }
}

fn container(template: &PodTemplateSpec) -> &k8s_openapi::api::core::v1::Container {
    template
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .expect("a container")
}

/// The program a Ferry container runs (`/usr/local/bin/ferry-router`): the workspace's binary.
fn ferry_binary(template: &PodTemplateSpec) -> PathBuf {
    let command = container(template)
        .command
        .as_ref()
        .and_then(|c| c.first())
        .expect("a command");
    binary(command.rsplit('/').next().expect("a file name"))
}

/// The registry's management API over https, verified against `ca`, with the admin token.
fn manage(registry: u16, ca: &Path, token: &str, method: &str, path: &str, body: Value) {
    let response: HttpResponse = curl(&[
        "--cacert",
        ca.to_str().expect("UTF-8 path"),
        "-H",
        &format!("authorization: Bearer {token}"),
        "-H",
        "content-type: application/json",
        "-X",
        method,
        "-d",
        &body.to_string(),
        &format!("https://localhost:{registry}/v1{path}"),
    ]);
    assert!(
        (200..300).contains(&response.status),
        "{method} {path}: {response:?}"
    );
}

#[test]
fn the_rendered_nats_mode_runs_over_tls_verified_against_the_generated_ca_and_carries_paho_to_proton(
) {
    carries_paho_to_proton_over_verified_tls(&space(MessagingMode::Nats));
}

/// Embedded mode: the adapters send to the router over AMQPS on its internal Service (`router_tls`,
/// `router_ca_file`: the router's certificate is the generated one), the router keeps events on its
/// volume.
#[test]
fn the_rendered_embedded_mode_runs_over_tls_verified_against_the_generated_ca_and_carries_paho_to_proton(
) {
    carries_paho_to_proton_over_verified_tls(&space(MessagingMode::Embedded));
}

/// Runs every pod of `space` as rendered (the NATS nodes when there are some), then: curl without the
/// CA is refused by the registry; tenant, device and application are made over https with the admin
/// token; router and adapters become ready (which needs the registry over https, and NATS over TLS or
/// the router over AMQPS); Proton without the CA is refused at AMQPS, Proton with it receives a paho
/// device's telemetry and event.
fn carries_paho_to_proton_over_verified_tls(space: &AddressSpace) {
    let rendered = Rendered::new(space);
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes: Vec<Pod> = match rendered.stateful_set(&names::nats(SPACE)) {
        Some(template) => (0..NODES)
            .map(|i| Pod::new(&format!("{}-{i}", names::nats(SPACE)), template, dir.path()))
            .collect(),
        None => Vec::new(),
    };
    let pod = |name: String| {
        let (pod_name, template) = rendered.workload(&name);
        Pod::new(&pod_name, template, dir.path())
    };
    let registry = pod(names::registry(SPACE));
    let router = pod(names::router(SPACE));
    let adapters: Vec<Pod> = [Component::MqttAdapter, Component::HttpAdapter]
        .into_iter()
        .map(|c| pod(names::workload(SPACE, c)))
        .collect();

    // The cluster's DNS: each in-cluster address the configs name, as `localhost` with a local port.
    let mut cluster = vec![(
        format!(
            "{}.{NAMESPACE}.svc:{}",
            names::registry(SPACE),
            ports::REGISTRY
        ),
        format!("localhost:{}", registry.port("http")),
    )];
    for (port, name) in [(ports::AMQPS, "amqps"), (ports::AMQP, "amqp")] {
        cluster.push((
            format!("{}.{NAMESPACE}.svc:{port}", names::router_internal(SPACE)),
            format!("localhost:{}", router.port(name)),
        ));
    }
    for (i, node) in nodes.iter().enumerate() {
        for (port, name) in [
            (ports::NATS_CLIENT, "client"),
            (ports::NATS_CLUSTER, "cluster"),
        ] {
            cluster.push((
                format!(
                    "{}-{i}.{}.{NAMESPACE}.svc:{port}",
                    names::nats(SPACE),
                    names::nats_headless(SPACE)
                ),
                format!("localhost:{}", node.port(name)),
            ));
        }
    }

    let nats_server = require_program("nats-server");
    let running: Vec<Process> = nodes
        .iter()
        .map(|n| n.start(&rendered, nats_server.clone(), &cluster))
        .collect();
    for (node, process) in nodes.iter().zip(&running) {
        node.wait_ready(process);
    }
    let registry_process = registry.start(&rendered, ferry_binary(registry.template), &cluster);
    registry.wait_ready(&registry_process);

    // The operator's CA and admin token, as a user gets them from the Secrets.
    let ca = dir.path().join("client/ca.crt");
    std::fs::create_dir_all(ca.parent().expect("parent")).expect("mkdir");
    std::fs::write(&ca, rendered.secret_key(&names::tls(SPACE), "ca.crt")).expect("write");
    let token = text(&rendered.secret_key(&names::admin_token(SPACE), "token"));
    let registry_port = registry.port("http");

    // Without the CA, curl does not trust the registry (60: the peer's certificate is not verified).
    let untrusting = Command::new(require_program("curl"))
        .args(["-s", "-o", "/dev/null", "--max-time", "10", "-H"])
        .arg(format!("authorization: Bearer {token}"))
        .arg(format!("https://localhost:{registry_port}/v1/tenants"))
        .output()
        .expect("run curl");
    assert_eq!(
        untrusting.status.code(),
        Some(60),
        "curl without the CA: {}",
        text(&untrusting.stderr)
    );

    let m = |method: &str, path: &str, body: Value| {
        manage(registry_port, &ca, &token, method, path, body)
    };
    m("POST", "/tenants/plant", json!({}));
    m("POST", "/devices/plant/press-1", json!({}));
    m(
        "PUT",
        "/credentials/plant/press-1",
        json!([{ "type": "hashed-password", "auth-id": "press1", "secrets": [{ "pwd-plain": "pw-press" }] }]),
    );
    m(
        "PUT",
        "/applications/ops",
        json!({ "password": "pw-ops", "tenants": ["plant"] }),
    );
    // The operator's own registry client, trusting the CA as it does from the Secret, reads what was
    // made; given another CA it cannot reach the registry.
    let operator_reads = |pem: &str| {
        let http = ferry_operator::context::http_trusting_pem(pem).expect("a CA");
        let client = ferry_operator::registry_client::RegistryClient::new(
            http,
            &format!("https://localhost:{registry_port}"),
            token.clone(),
        );
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(client.get_tenant("plant"))
    };
    let ca_pem = text(&rendered.secret_key(&names::tls(SPACE), "ca.crt"));
    assert!(
        operator_reads(&ca_pem)
            .expect("the operator reaches the registry")
            .is_some(),
        "the operator sees the tenant"
    );
    let other = ferry_test_support::TestPki::generate();
    assert!(
        operator_reads(&other.ca_cert_pem).is_err(),
        "the operator trusted a registry its CA did not issue"
    );

    let router_process = router.start(&rendered, ferry_binary(router.template), &cluster);
    let adapter_processes: Vec<Process> = adapters
        .iter()
        .map(|a| a.start(&rendered, ferry_binary(a.template), &cluster))
        .collect();
    router.wait_ready(&router_process);
    for (adapter, process) in adapters.iter().zip(&adapter_processes) {
        adapter.wait_ready(process);
    }

    let amqps = format!("amqps://ops:pw-ops@localhost:{}", router.port("amqps"));
    // Without the CA, Proton refuses the router's certificate and never attaches.
    let refused = proton_app(&["consume", &amqps, "telemetry/plant", "1", "30"]);
    refused.expect("transport_error", WAIT);
    let log = refused.log();
    assert!(log.contains("certificate verify failed"), "{log}");
    assert!(
        !log.contains("\"attached\""),
        "attached without the CA: {log}"
    );

    let telemetry = proton_app_trusting(&ca, &["consume", &amqps, "telemetry/plant", "3", "90"]);
    telemetry.expect("attached", WAIT);
    let events = proton_app_trusting(&ca, &["consume", &amqps, "event/plant", "1", "90"]);
    events.expect("attached", WAIT);
    let mqtt = adapters[0].port("mqtt");
    let mut device = paho_device("telemetry", mqtt, &["press1@plant", "pw-press", "3"]);
    assert_eq!(device.expect("done", WAIT), 3, "{}", device.log());
    assert!(device.wait_exit(WAIT).success());
    let mut device = paho_device("events", mqtt, &["press1@plant", "pw-press", "1"]);
    assert_eq!(device.expect("done", WAIT), 1, "{}", device.log());
    assert!(device.wait_exit(WAIT).success());

    let got = telemetry.messages(3, WAIT);
    let seqs: Vec<Value> = got
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(m["body"].as_str().expect("text")).expect("JSON body")
                ["seq"]
                .clone()
        })
        .collect();
    assert_eq!(seqs, [json!(0), json!(1), json!(2)]);
    for message in &got {
        assert_eq!(message["properties"]["device_id"], "press-1", "{message}");
        assert_eq!(
            message["properties"]["orig_adapter"], "hono-mqtt",
            "{message}"
        );
    }
    let event = events.expect("message", WAIT);
    assert_eq!(event["properties"]["device_id"], "press-1", "{event}");
    assert_eq!(event["durable"], true, "{event}");

    // Presence, through the registry over https: in nats mode the registry reads what the routers
    // keep in NATS, as its own NATS user (rendered by the operator); in embedded mode on Kubernetes the
    // router keeps it in its own process, which the registry cannot reach (docs/kubernetes.md).
    let presence = || {
        curl(&[
            "--cacert",
            ca.to_str().expect("UTF-8 path"),
            "-H",
            &format!("authorization: Bearer {token}"),
            &format!("https://localhost:{registry_port}/v1/devices/plant/press-1/presence"),
        ])
    };
    if nodes.is_empty() {
        let answer = presence();
        assert_eq!(answer.status, 503, "{answer:?}");
        return;
    }
    // The device has gone: offline within a few seconds of its disconnect, and its last connection known.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answer = presence();
        assert_eq!(answer.status, 200, "{answer:?}");
        let body: Value = serde_json::from_str(&answer.body).expect("JSON");
        if body["connected"] == false && body.get("disconnected-at").is_some() {
            assert_eq!(body["adapter"], "hono-mqtt", "{body}");
            assert!(body["last-seen"].is_string(), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "presence did not show the device gone: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
