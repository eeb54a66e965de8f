//! A registry plus a router, and AMQP clients for them.

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Data, Message, Properties};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use ferry_test_support::platform::{TestRegistry, TestRouter};
use serde_json::json;

#[allow(unused_imports)] // used by the process tests, which share this file
pub use ferry_test_support::platform::INTERNAL_TOKEN as INTERNAL;
pub const ADAPTER_USER: &str = "ferry-adapter";
pub const ADAPTER_PASSWORD: &str = "adapter-secret";
/// The registry's signing seed, so tests can mint tokens the registry would (expired ones included).
pub const SIGNING_SEED: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

pub struct Platform {
    pub registry_url: String,
    pub amqp: std::net::SocketAddr,
    pub admin: ferry_core::admin::Admin,
    pub data_dir: tempfile::TempDir,
    registry: Arc<TestRegistry>,
    router: Option<TestRouter>,
}

impl Platform {
    /// Registry with tenants t1 and t2, devices d1, d2 (t1) and d1 (t2), application users
    /// `app1` (t1, all operations) and `app2` (t2); then a router.
    pub async fn start() -> Self {
        let mut p = Self::start_without_router().await;
        p.start_router().await;
        p
    }

    /// Another router's platform on `first`'s registry (its own data directory and admin), without its
    /// router yet.
    #[allow(dead_code)]
    pub async fn on_registry(first: &Platform) -> Self {
        Self {
            registry_url: first.registry_url.clone(),
            amqp: "127.0.0.1:1".parse().expect("addr"),
            admin: ferry_core::admin::Admin::new(),
            data_dir: tempfile::tempdir().expect("tempdir"),
            registry: first.registry.clone(),
            router: None,
        }
    }

    /// The registry with its tenants, devices and application users, and no router yet.
    pub async fn start_without_router() -> Self {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let registry = TestRegistry::start(&data_dir.path().join("registry"), |c| {
            c.signing_key = Some(SIGNING_SEED.into());
        })
        .await;
        for t in ["t1", "t2"] {
            registry.tenant(t, json!({})).await;
        }
        for (t, d) in [("t1", "d1"), ("t1", "d2"), ("t2", "d1")] {
            registry.device(t, d, json!({})).await;
        }
        registry.application("app1", "pw1", &["t1"]).await;
        registry.application("app2", "pw2", &["t2"]).await;
        Self {
            registry_url: registry.url.clone(),
            amqp: "127.0.0.1:1".parse().expect("addr"),
            admin: ferry_core::admin::Admin::new(),
            data_dir,
            registry: Arc::new(registry),
            router: None,
        }
    }

    pub async fn start_router(&mut self) {
        self.start_router_with(|_| {}).await;
    }

    /// Stops the router and starts it again with its config changed by `tweak`.
    #[allow(dead_code)] // used by the process tests, which share this file
    pub async fn restart_router_with(&mut self, tweak: impl FnOnce(&mut ferry_router::Config)) {
        self.stop_router().await;
        self.start_router_with(tweak).await;
    }

    pub async fn start_router_with(&mut self, tweak: impl FnOnce(&mut ferry_router::Config)) {
        let router = TestRouter::start(
            &self.registry_url,
            &self.data_dir.path().join("router"),
            |c| {
                c.adapter_password = ADAPTER_PASSWORD.into();
                tweak(c);
            },
        )
        .await;
        self.amqp = router.addr;
        self.admin = router.admin.clone();
        self.router = Some(router);
    }

    pub async fn stop_router(&mut self) {
        if let Some(mut r) = self.router.take() {
            r.stop().await;
        }
    }

    pub async fn manage(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        self.registry.manage(method, path, body).await
    }

    /// A registration assertion for `device` of `tenant`, as an adapter gets it.
    pub async fn assertion(&self, tenant: &str, device: &str) -> String {
        self.registry.assertion(tenant, device).await
    }

    pub async fn connect(
        &self,
        user: &str,
        password: &str,
    ) -> Result<ConnectionHandle<()>, fe2o3_amqp::connection::OpenError> {
        let stream = tokio::net::TcpStream::connect(self.amqp)
            .await
            .expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        Connection::builder()
            .container_id(format!("test-{user}"))
            .sasl_profile(SaslProfile::Plain {
                username: user.into(),
                password: password.into(),
            })
            .open_with_stream(stream)
            .await
    }

    /// An adapter connection with a session.
    pub async fn adapter(&self) -> Client {
        Client::open(self, ADAPTER_USER, ADAPTER_PASSWORD).await
    }

    /// An application connection with a session.
    pub async fn app(&self, user: &str, password: &str) -> Client {
        Client::open(self, user, password).await
    }

    pub fn metrics(&self) -> String {
        self.admin.encode_metrics()
    }
}

pub struct Client {
    pub conn: ConnectionHandle<()>,
    pub session: SessionHandle<()>,
}

impl Client {
    pub async fn open(p: &Platform, user: &str, password: &str) -> Self {
        let mut conn = p.connect(user, password).await.expect("connection opens");
        let session = Session::begin(&mut conn).await.expect("session begins");
        Self { conn, session }
    }

    pub async fn sender(&mut self, address: &str) -> Sender {
        Sender::attach(&mut self.session, format!("snd-{address}"), address)
            .await
            .expect("sender attaches")
    }

    pub async fn receiver(&mut self, address: &str, credit: u32) -> Receiver {
        Receiver::builder()
            .name(format!("rcv-{address}"))
            .source(address)
            .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Auto(credit))
            .attach(&mut self.session)
            .await
            .expect("receiver attaches")
    }

    pub async fn close(mut self) {
        let _ = self.session.end().await;
        let _ = self.conn.close().await;
    }
}

/// A telemetry/event message as an adapter sends it.
pub fn device_message(device: &str, assertion: Option<&str>, body: &[u8]) -> Message<Data> {
    let mut props = ApplicationProperties::builder().insert("device_id", device);
    if let Some(a) = assertion {
        props = props.insert("reg_assertion", a);
    }
    Message::builder()
        .properties(Properties::builder().content_type("text/plain").build())
        .application_properties(props.build())
        .data(Binary::from(body.to_vec()))
        .build()
}

/// Receives one message within `ms` milliseconds, or `None`.
pub async fn recv_within(
    rx: &mut Receiver,
    ms: u64,
) -> Option<fe2o3_amqp::link::delivery::Delivery<Body<Value>>> {
    tokio::time::timeout(Duration::from_millis(ms), rx.recv::<Body<Value>>())
        .await
        .ok()
        .map(|r| r.expect("receive"))
}

/// The body of a received message as bytes.
pub fn body_bytes(d: &fe2o3_amqp::link::delivery::Delivery<Body<Value>>) -> Vec<u8> {
    match d.body() {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.to_vec()).collect(),
        other => panic!("expected a Data body, got {other:?}"),
    }
}

pub fn app_prop(d: &fe2o3_amqp::link::delivery::Delivery<Body<Value>>, key: &str) -> Option<Value> {
    d.message()
        .application_properties
        .as_ref()
        .and_then(|p| p.0.get(key).cloned())
        .map(Value::from)
}

#[allow(dead_code)]
pub fn info(d: &fe2o3_amqp::link::delivery::Delivery<Body<Value>>) -> DeliveryInfo {
    DeliveryInfo::from(d)
}
