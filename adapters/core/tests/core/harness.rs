//! A real registry and router in-process, with a device with a password, and AMQP application clients.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use ferry_adapter_core::auth::{DeviceAuthenticator, LoginLimits};
use ferry_adapter_core::downstream::{Downstream, DownstreamConfig};
use ferry_adapter_core::registry::{RegistryClient, RegistryConfig};
use ferry_core::ids::{DeviceId, TenantId};
use ferry_core::shutdown::{self, Shutdown, Trigger};
use serde_json::json;

pub const ADMIN: &str = "admin-token";
pub const INTERNAL: &str = "internal-token";
pub const ADAPTER_USER: &str = "ferry-adapter";
pub const ADAPTER_PASSWORD: &str = "adapter-secret";
const SIGNING_SEED: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

pub fn tenant(t: &str) -> TenantId {
    TenantId::new(t).expect("tenant id")
}

pub fn device(d: &str) -> DeviceId {
    DeviceId::new(d).expect("device id")
}

pub struct Platform {
    pub registry_url: String,
    registry_addr: SocketAddr,
    pub amqp: SocketAddr,
    data_dir: tempfile::TempDir,
    http: reqwest::Client,
    registry_trigger: Option<Trigger>,
    registry: Option<ferry_registry::Started>,
    router_trigger: Option<Trigger>,
    router: Option<ferry_router::Started>,
    /// Fires when the platform is dropped, ending the clients' background tasks.
    clients_trigger: Trigger,
    pub clients_shutdown: Shutdown,
}

impl Platform {
    /// Registry with tenants t1, t2; devices d1, d2 (t1) and d1 (t2); `sensor1@t1` / `secret1` for
    /// t1's d1; application user `app1` (t1) and `app2` (t2); then a router.
    pub async fn start() -> Self {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let (clients_trigger, clients_shutdown) = shutdown::channel();
        let mut p = Self {
            registry_url: String::new(),
            registry_addr: "127.0.0.1:0".parse().expect("addr"),
            amqp: "127.0.0.1:0".parse().expect("addr"),
            data_dir,
            http: reqwest::Client::new(),
            registry_trigger: None,
            registry: None,
            router_trigger: None,
            router: None,
            clients_trigger,
            clients_shutdown,
        };
        p.start_registry().await;
        for t in ["t1", "t2"] {
            p.manage(
                reqwest::Method::POST,
                &format!("/v1/tenants/{t}"),
                json!({}),
            )
            .await;
        }
        for (t, d) in [("t1", "d1"), ("t1", "d2"), ("t2", "d1")] {
            p.manage(
                reqwest::Method::POST,
                &format!("/v1/devices/{t}/{d}"),
                json!({}),
            )
            .await;
        }
        p.set_password("t1", "d1", "sensor1", "secret1").await;
        for (name, pw, t) in [("app1", "pw1", "t1"), ("app2", "pw2", "t2")] {
            p.manage(
                reqwest::Method::PUT,
                &format!("/v1/applications/{name}"),
                json!({ "password": pw, "tenants": [t] }),
            )
            .await;
        }
        p.start_router().await;
        p
    }

    /// Starts the registry, on the port it had before if it ran already.
    pub async fn start_registry(&mut self) {
        let (trigger, shutdown) = shutdown::channel();
        let registry = ferry_registry::start(
            ferry_registry::Config {
                bind: self.registry_addr,
                data_dir: self.data_dir.path().join("registry"),
                admin_token: Some(ADMIN.into()),
                internal_token: Some(INTERNAL.into()),
                signing_key: Some(SIGNING_SEED.into()),
                bcrypt_cost: 4,
                ..ferry_registry::Config::default()
            },
            ferry_core::admin::Admin::new(),
            shutdown,
        )
        .await
        .expect("registry starts");
        self.registry_url = registry.url();
        self.registry_addr = registry.addr;
        self.registry_trigger = Some(trigger);
        self.registry = Some(registry);
    }

    /// Starts the router, on the port it had before if it ran already (so that clients find it again).
    pub async fn start_router(&mut self) {
        let (trigger, shutdown) = shutdown::channel();
        let admin = ferry_core::admin::Admin::new();
        let started = ferry_router::start(
            ferry_router::Config {
                bind: self.amqp,
                data_dir: self.data_dir.path().join("router"),
                registry_url: self.registry_url.clone(),
                registry_token: INTERNAL.into(),
                adapter_password: ADAPTER_PASSWORD.into(),
                ..ferry_router::Config::default()
            },
            admin.clone(),
            shutdown,
        )
        .await
        .expect("router starts");
        self.amqp = started.addr;
        self.router_trigger = Some(trigger);
        self.router = Some(started);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !admin.not_ready().is_empty() {
            assert!(
                Instant::now() < deadline,
                "router not ready: {:?}",
                admin.not_ready()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop_router(&mut self) {
        if let Some(t) = self.router_trigger.take() {
            t.trigger();
        }
        if let Some(r) = self.router.take() {
            r.join().await.expect("router stops");
        }
    }

    pub async fn stop_registry(&mut self) {
        if let Some(t) = self.registry_trigger.take() {
            t.trigger();
        }
        if let Some(r) = self.registry.take() {
            r.join().await.expect("registry stops");
        }
    }

    /// A call of the management API that must succeed.
    pub async fn manage(&self, method: reqwest::Method, path: &str, body: serde_json::Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.registry_url))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .expect("registry call");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
    }

    pub async fn set_password(&self, t: &str, d: &str, auth_id: &str, password: &str) {
        self.manage(
            reqwest::Method::PUT,
            &format!("/v1/credentials/{t}/{d}"),
            json!([{ "type": "hashed-password", "auth-id": auth_id, "secrets": [{ "pwd-plain": password }] }]),
        )
        .await;
    }

    pub async fn set_device_enabled(&self, t: &str, d: &str, enabled: bool) {
        self.manage(
            reqwest::Method::PUT,
            &format!("/v1/devices/{t}/{d}"),
            json!({ "enabled": enabled }),
        )
        .await;
    }

    pub fn registry_config(&self) -> RegistryConfig {
        RegistryConfig::new(&self.registry_url, INTERNAL)
    }

    /// A registry client (without the change stream).
    pub fn registry_client(&self) -> RegistryClient {
        RegistryClient::new(self.registry_config()).expect("client")
    }

    /// A registry client following the change stream, once the stream is connected.
    pub async fn following_client(&self, config: RegistryConfig) -> RegistryClient {
        let client = RegistryClient::new(config).expect("client");
        let c = client.clone();
        let shutdown = self.clients_shutdown.clone();
        tokio::spawn(async move { c.follow_changes(shutdown).await });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !client.is_following_changes() {
            assert!(Instant::now() < deadline, "change stream does not connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        client
    }

    pub async fn authenticator(&self) -> DeviceAuthenticator {
        DeviceAuthenticator::new(self.following_client(self.registry_config()).await)
    }

    pub async fn authenticator_with(&self, limits: LoginLimits) -> DeviceAuthenticator {
        DeviceAuthenticator::with_limits(
            self.following_client(self.registry_config()).await,
            limits,
        )
    }

    pub fn downstream_config(&self) -> DownstreamConfig {
        DownstreamConfig::new(self.amqp.to_string(), ADAPTER_USER, ADAPTER_PASSWORD)
    }

    /// A connected downstream.
    pub async fn downstream(&self) -> Downstream {
        let d = Downstream::start(self.downstream_config(), self.clients_shutdown.clone());
        assert!(
            d.wait_connected(Duration::from_secs(5)).await,
            "downstream connects"
        );
        d
    }

    /// An application connection with a session.
    pub async fn app(&self, user: &str, password: &str) -> App {
        let stream = tokio::net::TcpStream::connect(self.amqp)
            .await
            .expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut conn = Connection::builder()
            .container_id(format!("test-{user}"))
            .sasl_profile(SaslProfile::Plain {
                username: user.into(),
                password: password.into(),
            })
            .open_with_stream(stream)
            .await
            .expect("application connects");
        let session = Session::begin(&mut conn).await.expect("session");
        App {
            _conn: conn,
            session,
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.clients_trigger.trigger();
        if let Some(t) = self.router_trigger.take() {
            t.trigger();
        }
        if let Some(t) = self.registry_trigger.take() {
            t.trigger();
        }
    }
}

pub struct App {
    _conn: ConnectionHandle<()>,
    pub session: SessionHandle<()>,
}

impl App {
    pub async fn receiver(&mut self, address: &str, credit: u32) -> Receiver {
        Receiver::builder()
            .name(format!("rcv-{address}"))
            .source(address)
            .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Auto(credit))
            .attach(&mut self.session)
            .await
            .expect("receiver attaches")
    }

    pub async fn sender(&mut self, address: &str) -> Sender {
        Sender::attach(&mut self.session, format!("snd-{address}"), address)
            .await
            .expect("sender attaches")
    }
}

/// Receives one message within `ms` milliseconds, or `None`.
pub async fn recv_within(rx: &mut Receiver, ms: u64) -> Option<Delivery<Body<Value>>> {
    tokio::time::timeout(Duration::from_millis(ms), rx.recv::<Body<Value>>())
        .await
        .ok()
        .map(|r| r.expect("receive"))
}

pub fn body_bytes(d: &Delivery<Body<Value>>) -> Vec<u8> {
    match d.body() {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.to_vec()).collect(),
        other => panic!("expected a Data body, got {other:?}"),
    }
}

pub fn app_prop(d: &Delivery<Body<Value>>, key: &str) -> Option<Value> {
    d.message()
        .application_properties
        .as_ref()
        .and_then(|p| p.0.get(key).cloned())
        .map(Value::from)
}

/// Polls `check` every 20 ms until it holds, for at most `within`.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
