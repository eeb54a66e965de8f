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

pub use ferry_test_support::platform::INTERNAL_TOKEN as INTERNAL;
use ferry_test_support::platform::{TestRegistry, TestRouter};
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
    registry: Option<TestRegistry>,
    router: Option<TestRouter>,
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
            registry: None,
            router: None,
            clients_trigger,
            clients_shutdown,
        };
        p.start_registry().await;
        let registry = p.registry.as_ref().expect("registry");
        for t in ["t1", "t2"] {
            registry.tenant(t, json!({})).await;
        }
        for (t, d) in [("t1", "d1"), ("t1", "d2"), ("t2", "d1")] {
            registry.device(t, d, json!({})).await;
        }
        registry.password("t1", "d1", "sensor1", "secret1").await;
        registry.application("app1", "pw1", &["t1"]).await;
        registry.application("app2", "pw2", &["t2"]).await;
        p.start_router().await;
        p
    }

    /// Starts the registry, on the port it had before if it ran already.
    pub async fn start_registry(&mut self) {
        let bind = self.registry_addr;
        let registry = TestRegistry::start(&self.data_dir.path().join("registry"), |c| {
            c.bind = bind;
            c.signing_key = Some(SIGNING_SEED.into());
        })
        .await;
        self.registry_url = registry.url.clone();
        self.registry_addr = registry.started.addr;
        self.registry = Some(registry);
    }

    /// Starts the router, on the port it had before if it ran already (so that clients find it again).
    pub async fn start_router(&mut self) {
        let bind = self.amqp;
        let router = TestRouter::start(
            &self.registry_url,
            &self.data_dir.path().join("router"),
            |c| {
                c.bind = bind;
                c.adapter_password = ADAPTER_PASSWORD.into();
            },
        )
        .await;
        self.amqp = router.addr;
        self.router = Some(router);
    }

    pub async fn stop_router(&mut self) {
        if let Some(mut r) = self.router.take() {
            r.stop().await;
        }
    }

    pub async fn stop_registry(&mut self) {
        if let Some(r) = self.registry.take() {
            r.stop_and_wait().await;
        }
    }

    fn registry(&self) -> &TestRegistry {
        self.registry.as_ref().expect("the registry is running")
    }

    /// A call of the management API that must succeed.
    pub async fn manage(&self, method: reqwest::Method, path: &str, body: serde_json::Value) {
        self.registry().manage(method, path, body).await;
    }

    pub async fn set_password(&self, t: &str, d: &str, auth_id: &str, password: &str) {
        self.registry().password(t, d, auth_id, password).await;
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
