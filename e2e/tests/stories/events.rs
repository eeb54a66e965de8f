//! Events are stored until an application takes them: sent while no application is connected, they
//! arrive when it connects, also after the router was killed and restarted.

use std::process::Command;
use std::time::Duration;

use ferry_e2e::{
    attached, binary, free_port, paho_device, proton_app, rhea_app, wait_ready, Ferry, Manager,
    Process,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// The `seq` numbers of events a paho device sent, in the order the application got them.
fn seqs(messages: &[Value]) -> Vec<i64> {
    messages
        .iter()
        .map(|m| {
            let body: Value =
                serde_json::from_str(m["body"].as_str().expect("text body")).expect("a JSON body");
            body["seq"].as_i64().expect("seq")
        })
        .collect()
}

#[test]
fn events_from_paho_sent_while_no_application_is_connected_arrive_when_it_connects() {
    let ferry = Ferry::up();
    ferry.tenant("farm");
    ferry.device_with_password("farm", "silo-3", "silo3", "pw-silo");
    ferry.application("ops", "pw-ops", &["farm"]);

    // Nobody consumes, yet each QoS 1 event is acknowledged: the router stored it.
    let mut device = paho_device("events", ferry.mqtt, &["silo3@farm", "pw-silo", "5"]);
    assert_eq!(device.expect("done", WAIT), 5, "{}", device.log());
    assert!(device.wait_exit(WAIT).success());

    let app = attached(rhea_app(&[
        "consume",
        &ferry.amqp_url("ops", "pw-ops"),
        "event/farm",
        "5",
        "20",
    ]));
    let events = app.messages(5, WAIT);
    assert_eq!(seqs(&events), [0, 1, 2, 3, 4], "in the order sent");
    for e in &events {
        assert_eq!(e["properties"]["device_id"], "silo-3");
        assert_eq!(e["properties"]["orig_adapter"], "hono-mqtt");
        assert_eq!(e["durable"], true);
    }
    // Accepted events are gone: a second application gets nothing.
    let again = attached(proton_app(&[
        "consume",
        &ferry.amqp_url("ops", "pw-ops"),
        "event/farm",
        "1",
        "1",
    ]));
    let next = again.next_json(WAIT);
    assert_eq!(next["timeout"], true, "nothing more to get: {next}");
}

/// Registry, router and MQTT adapter, each its own process configured through its flags and
/// environment as an operator would, sharing one internal token.
struct Separate {
    dir: tempfile::TempDir,
    internal: String,
    _registry: Process,
    registry_url: String,
    router: Option<Process>,
    router_port: u16,
    router_admin: u16,
    mqtt: Option<Process>,
    mqtt_port: u16,
}

impl Separate {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let internal = "e2e-internal-token".to_owned();
        let registry_port = free_port();
        let mut cmd = Command::new(binary("ferry-registry"));
        cmd.args([
            "--bind",
            &format!("127.0.0.1:{registry_port}"),
            "--data-dir",
        ])
        .arg(dir.path().join("registry"))
        .env("FERRY_REGISTRY_ADMIN_TOKEN", "e2e-admin-token")
        .env("FERRY_REGISTRY_INTERNAL_TOKEN", &internal)
        .env("FERRY_REGISTRY_BCRYPT_COST", "4");
        let registry = Process::spawn("ferry-registry", cmd);
        wait_ready("ferry-registry", registry_port, &registry);
        let registry_url = format!("http://127.0.0.1:{registry_port}");

        let router_port = free_port();
        let router_admin = free_port();
        let mut s = Self {
            dir,
            internal,
            _registry: registry,
            registry_url,
            router: None,
            router_port,
            router_admin,
            mqtt: None,
            mqtt_port: free_port(),
        };
        s.start_router();

        let mqtt_admin = free_port();
        let mut cmd = Command::new(binary("ferry-mqtt-adapter"));
        cmd.args(["--bind", &format!("127.0.0.1:{}", s.mqtt_port)])
            .env("FERRY_MQTT_ADMIN_BIND", format!("127.0.0.1:{mqtt_admin}"))
            .env("FERRY_MQTT_TLS_BIND", "127.0.0.1:0")
            .env("FERRY_MQTT_REGISTRY_URL", &s.registry_url)
            .env("FERRY_MQTT_REGISTRY_TOKEN", &s.internal)
            .env(
                "FERRY_MQTT_ROUTER_ADDRESS",
                format!("127.0.0.1:{}", s.router_port),
            )
            .env("FERRY_MQTT_ROUTER_PASSWORD", &s.internal);
        let mqtt = Process::spawn("ferry-mqtt-adapter", cmd);
        wait_ready("ferry-mqtt-adapter", mqtt_admin, &mqtt);
        s.mqtt = Some(mqtt);
        s
    }

    /// Starts the router on its port and data directory (again, after a kill).
    fn start_router(&mut self) {
        let mut cmd = Command::new(binary("ferry-router"));
        cmd.args(["--bind", &format!("127.0.0.1:{}", self.router_port)])
            .arg("--data-dir")
            .arg(self.dir.path().join("router"))
            .args(["--registry-url", &self.registry_url])
            .env(
                "FERRY_ROUTER_ADMIN_BIND",
                format!("127.0.0.1:{}", self.router_admin),
            )
            .env("FERRY_ROUTER_TLS_BIND", "127.0.0.1:0")
            .env("FERRY_ROUTER_REGISTRY_TOKEN", &self.internal)
            .env("FERRY_ROUTER_ADAPTER_PASSWORD", &self.internal);
        let router = Process::spawn("ferry-router", cmd);
        wait_ready("ferry-router", self.router_admin, &router);
        self.router = Some(router);
    }

    fn manager(&self) -> Manager {
        Manager {
            registry: self.registry_url.clone(),
            data_dir: self.dir.path().join("registry"),
            token: Some("e2e-admin-token".into()),
        }
    }

    fn amqp_url(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:{}", self.router_port)
    }
}

#[test]
fn events_accepted_before_the_router_is_killed_arrive_after_it_restarts() {
    let mut platform = Separate::start();
    let manage = platform.manager();
    manage.tenant("farm");
    manage.device_with_password("farm", "silo-3", "silo3", "pw-silo");
    manage.application("ops", "pw-ops", &["farm"]);

    let mut device = paho_device(
        "events",
        platform.mqtt_port,
        &["silo3@farm", "pw-silo", "3"],
    );
    assert_eq!(device.expect("done", WAIT), 3, "{}", device.log());
    assert!(device.wait_exit(WAIT).success());

    // kill -9: no chance to flush anything after the PUBACKs.
    let mut router = platform.router.take().expect("router runs");
    let status = Command::new("kill")
        .args(["-KILL", &router.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let killed = router.wait_exit(WAIT);
    assert!(!killed.success(), "{killed:?}");
    platform.start_router();

    let app = attached(proton_app(&[
        "consume",
        &platform.amqp_url("ops", "pw-ops"),
        "event/farm",
        "4",
        "30",
    ]));
    let events = app.messages(3, WAIT);
    assert_eq!(seqs(&events), [0, 1, 2]);
    for e in &events {
        assert_eq!(e["properties"]["device_id"], "silo-3");
        assert_eq!(e["durable"], true);
    }
    // The adapter found the restarted router again: a new event goes all the way.
    let mut device = paho_device(
        "events",
        platform.mqtt_port,
        &["silo3@farm", "pw-silo", "1"],
    );
    assert_eq!(
        device.expect("done", Duration::from_secs(20)),
        1,
        "{}",
        device.log()
    );
    assert!(device.wait_exit(WAIT).success());
    let late = app.expect("message", WAIT);
    assert_eq!(seqs(&[late]), [0]);
}
