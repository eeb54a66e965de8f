//! The in-process platform the MQTT adapter's tests run against (registry, router and adapter on
//! 127.0.0.1:0, tenants `t1`/`t2`, devices `d1`, `gw` and `behind` of `t1`), and the clients that talk to
//! it: `mosquitto_pub`, paho-mqtt scripts, a Qpid Proton consumer and a raw TCP client for input no real
//! client would send. Shared by the `e2e` and `bad_input` test binaries.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use ferry_core::shutdown::{self, Trigger};
use rumqttc::mqttbytes::{v4, QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use ferry_test_support::platform::{TestRegistry, TestRouter, INTERNAL_TOKEN};

pub struct Platform {
    pub registry: String,
    pub amqp: SocketAddr,
    pub mqtt: SocketAddr,
    /// The TLS listener, when the test configured one.
    pub mqtts: Option<SocketAddr>,
    /// The adapter's admin (its metrics).
    pub admin: ferry_core::admin::Admin,
    backend: TestRegistry,
    _router: TestRouter,
    _adapter: Trigger,
    _dir: tempfile::TempDir,
}

impl Platform {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts the platform with the adapter's configuration adjusted by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut ferry_mqtt_adapter::Config)) -> Self {
        Self::start_with_internal_tls(None, configure).await
    }

    /// [`Self::start_with`]; with `pki`, the registry serves HTTPS and the router AMQPS with its server
    /// certificate, and the adapter is set to reach both over TLS trusting `pki`'s CA (before
    /// `configure` may change that). Applications still use the router's plain port.
    pub async fn start_with_internal_tls(
        pki: Option<&ferry_test_support::TestPki>,
        configure: impl FnOnce(&mut ferry_mqtt_adapter::Config),
    ) -> Self {
        let server_tls = || match pki {
            Some(pki) => ferry_core::tls::TlsConfig {
                cert_path: Some(pki.server_cert_path.clone()),
                key_path: Some(pki.server_key_path.clone()),
            },
            None => ferry_core::tls::TlsConfig::default(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut registry =
            TestRegistry::start(&dir.path().join("registry"), |c| c.tls = server_tls()).await;
        if let Some(pki) = pki {
            registry = registry.with_client(
                reqwest::Client::builder()
                    .add_root_certificate(
                        reqwest::Certificate::from_pem(pki.ca_cert_pem.as_bytes()).expect("CA"),
                    )
                    .build()
                    .expect("client"),
            );
        }
        let router = TestRouter::start(&registry.url, &dir.path().join("router"), |c| {
            c.tls_bind = "127.0.0.1:0".parse().expect("addr");
            c.tls = server_tls();
            c.registry_ca_file = pki.map(|p| p.ca_cert_path.clone());
        })
        .await;
        let mut config = ferry_mqtt_adapter::Config {
            bind: "127.0.0.1:0".parse().expect("addr"),
            tls_bind: "127.0.0.1:0".parse().expect("addr"),
            adapter: ferry_mqtt_adapter::AdapterSettings {
                registry_url: registry.url.clone(),
                registry_token: INTERNAL_TOKEN.into(),
                registry_ca_file: pki.map(|p| p.ca_cert_path.clone()),
                router_address: router.tls_addr.unwrap_or(router.addr).to_string(),
                router_password: INTERNAL_TOKEN.into(),
                router_tls: pki.is_some(),
                router_ca_file: pki.map(|p| p.ca_cert_path.clone()),
                ..ferry_mqtt_adapter::Config::default().adapter
            },
            ..ferry_mqtt_adapter::Config::default()
        };
        configure(&mut config);
        let admin = ferry_core::admin::Admin::new();
        let (trigger, s) = shutdown::channel();
        let mqtt = ferry_mqtt_adapter::start(config, admin.clone(), s)
            .await
            .expect("mqtt adapter");
        for t in ["t1", "t2"] {
            registry.tenant(t, json!({})).await;
        }
        registry.device("t1", "d1", json!({})).await;
        registry.device("t1", "gw", json!({})).await;
        registry
            .device("t1", "behind", json!({ "via": ["gw"] }))
            .await;
        registry.password("t1", "d1", "sensor1", "hunter2").await;
        registry.password("t1", "gw", "gw1", "gwpass").await;
        registry.application("app1", "pw1", &["t1"]).await;
        registry.application("app2", "pw2", &["t2"]).await;
        Self {
            registry: registry.url.clone(),
            amqp: router.addr,
            mqtt: mqtt.addr,
            mqtts: mqtt.tls_addr,
            admin,
            backend: registry,
            _router: router,
            _adapter: trigger,
            _dir: dir,
        }
    }

    pub async fn manage(&self, method: reqwest::Method, path: &str, body: Value) {
        self.backend.manage(method, path, body).await;
    }

    pub async fn password(&self, tenant: &str, device: &str, auth_id: &str, password: &str) {
        self.backend
            .password(tenant, device, auth_id, password)
            .await;
    }

    /// A Proton consumer on `address` as `user`, expecting `count` messages; returns its JSON lines.
    pub fn consumer(&self, user: &str, password: &str, address: &str, count: usize) -> Consumer {
        let mut child = Command::new(ferry_test_support::test_python())
            .arg(proton_script())
            .arg("consume")
            .arg(format!("amqp://{user}:{password}@{}", self.amqp))
            .arg(address)
            .arg(count.to_string())
            .arg("10")
            .stdout(Stdio::piped())
            .spawn()
            .expect("python");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let opened = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("consumer starts");
        assert_eq!(opened["opened"], address, "{opened}");
        Consumer { child, rx }
    }

    /// `mosquitto_pub` (MQTT 3.1.1) to the plain listener.
    pub fn mosquitto_pub(
        &self,
        user: &str,
        password: &str,
        topic: &str,
        qos: u8,
        message: &str,
    ) -> std::process::Output {
        Command::new(ferry_test_support::require_program("mosquitto_pub"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.mqtt.port().to_string(),
                "-u",
                user,
                "-P",
                password,
            ])
            .args([
                "-t",
                topic,
                "-q",
                &qos.to_string(),
                "-m",
                message,
                "-V",
                "mqttv311",
            ])
            .output()
            .expect("mosquitto_pub")
    }

    /// `d1` publishes telemetry `message` with `mosquitto_pub` at QoS 1; panics unless it is acknowledged.
    pub fn telemetry_gets_through(&self, message: &str) {
        let out = tokio::task::block_in_place(|| {
            self.mosquitto_pub("sensor1@t1", "hunter2", "telemetry", 1, message)
        });
        assert!(out.status.success(), "{}", stderr(&out));
    }

    /// A paho-mqtt `script` run with the plain listener's port and `args`.
    pub fn paho(&self, script: &str, args: &[&str]) -> Script {
        Script::start(script, &self.mqtt.port().to_string(), args)
    }
}

pub fn proton_script() -> &'static str {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../router/tests/proton/client.py"
    )
}

pub struct Consumer {
    child: std::process::Child,
    rx: std::sync::mpsc::Receiver<Value>,
}

impl Consumer {
    pub fn next(&self, within: Duration) -> Option<Value> {
        self.rx
            .recv_timeout(within)
            .ok()
            .filter(|v| v.get("timeout").is_none())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python script (`python -c`) whose stdout lines arrive on a channel; killed when dropped.
pub struct Script {
    child: std::process::Child,
    rx: std::sync::mpsc::Receiver<String>,
}

impl Script {
    pub fn start(script: &str, first: &str, args: &[&str]) -> Self {
        let mut child = Command::new(ferry_test_support::test_python())
            .arg("-c")
            .arg(script)
            .arg(first)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, rx }
    }

    pub fn line(&self, within: Duration) -> Option<String> {
        self.rx.recv_timeout(within).ok()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An MQTT 3.1.1 client on a bare TCP socket, for bytes and packet sequences no library would send.
/// Packets are encoded and decoded with rumqttc's codecs.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect_tcp(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.expect("tcp connect"),
            buf: BytesMut::new(),
        }
    }

    /// Connects and logs in as `user`; panics unless the CONNACK says yes.
    pub async fn login(addr: SocketAddr, user: &str, password: &str, keep_alive: u16) -> Self {
        let mut raw = Self::connect_tcp(addr).await;
        let mut connect = v4::Connect::new(format!("raw-{user}"));
        connect.keep_alive = keep_alive;
        connect.set_login(user, password);
        let mut out = BytesMut::new();
        connect.write(&mut out).expect("encode CONNECT");
        raw.send(&out).await;
        match raw.packet(Duration::from_secs(5)).await {
            Some(v4::Packet::ConnAck(a)) => {
                assert_eq!(a.code, v4::ConnectReturnCode::Success, "{a:?}")
            }
            other => panic!("no CONNACK: {other:?}"),
        }
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("tcp write");
    }

    /// Sends a packet; write errors are ignored (the adapter may already have closed the connection).
    pub async fn send_packet(&mut self, write: impl FnOnce(&mut BytesMut)) {
        let mut out = BytesMut::new();
        write(&mut out);
        let _ = self.stream.write_all(&out).await;
    }

    pub async fn publish(&mut self, topic: &str, qos: QoS, pkid: u16, payload: &[u8]) {
        let mut p = v4::Publish::new(topic, qos, payload.to_vec());
        p.pkid = pkid;
        self.send_packet(|out| {
            p.write(out).expect("encode PUBLISH");
        })
        .await;
    }

    /// SUBSCRIBEs to `filter` and returns the SUBACK's return code.
    pub async fn subscribe(
        &mut self,
        pkid: u16,
        filter: &str,
        qos: QoS,
    ) -> v4::SubscribeReasonCode {
        let mut s = v4::Subscribe::new(filter, qos);
        s.pkid = pkid;
        self.send_packet(|out| {
            s.write(out).expect("encode SUBSCRIBE");
        })
        .await;
        match self.packet(Duration::from_secs(5)).await {
            Some(v4::Packet::SubAck(a)) if a.pkid == pkid && a.return_codes.len() == 1 => {
                a.return_codes[0]
            }
            other => panic!("no SUBACK for {filter}: {other:?}"),
        }
    }

    pub async fn unsubscribe(&mut self, pkid: u16, filter: &str) {
        let mut u = v4::Unsubscribe::new(filter);
        u.pkid = pkid;
        self.send_packet(|out| {
            u.write(out).expect("encode UNSUBSCRIBE");
        })
        .await;
        match self.packet(Duration::from_secs(5)).await {
            Some(v4::Packet::UnsubAck(a)) if a.pkid == pkid => {}
            other => panic!("no UNSUBACK for {filter}: {other:?}"),
        }
    }

    /// The next packet from the adapter; `None` when the connection closed or nothing came `within`.
    pub async fn packet(&mut self, within: Duration) -> Option<v4::Packet> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match v4::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("the adapter sent something unreadable: {e:?}"),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Waits until the adapter closes the connection; returns how long that took, or `None` if it
    /// stayed open `within`. Packets before the close are skipped.
    pub async fn closed_within(&mut self, within: Duration) -> Option<Duration> {
        let started = tokio::time::Instant::now();
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(started + within, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// A Qpid Proton receiver (argv: URL, address) that prints each message as JSON with what the
/// contract's defaults and limits touch: content type, `ttl` (seconds, from the header), durability and
/// application properties.
pub const PROTON_HEADERS: &str = r#"
import sys, json
from proton.handlers import MessagingHandler
from proton.reactor import Container
class R(MessagingHandler):
    def __init__(self, url, address):
        super().__init__()
        self.url, self.address = url, address
    def on_start(self, event):
        conn = event.container.connect(self.url, allowed_mechs="PLAIN", allow_insecure_mechs=True)
        event.container.create_receiver(conn, self.address)
    def on_link_opened(self, event):
        if event.receiver:
            print(json.dumps({"opened": self.address}), flush=True)
    def on_message(self, event):
        m = event.message
        body = m.body
        if isinstance(body, (bytes, memoryview)):
            body = bytes(body).decode("utf-8", "replace")
        print(json.dumps({"body": body, "content_type": m.content_type, "ttl": m.ttl,
                          "durable": m.durable, "properties": m.properties or {}}), flush=True)
        self.accept(event.delivery)
Container(R(sys.argv[1], sys.argv[2])).run()
"#;

impl Platform {
    /// A [`PROTON_HEADERS`] receiver on `address` as `user`; its JSON lines, once the link is open.
    pub fn header_consumer(&self, user: &str, password: &str, address: &str) -> Script {
        let s = Script::start(
            PROTON_HEADERS,
            &format!("amqp://{user}:{password}@{}", self.amqp),
            &[address],
        );
        let opened = s.line(Duration::from_secs(10)).expect("consumer starts");
        assert!(opened.contains("opened"), "{opened}");
        s
    }
}
