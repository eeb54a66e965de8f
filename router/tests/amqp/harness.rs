//! A registry plus a router, and AMQP clients for them.

use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Data, Message, Properties};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use ferry_core::shutdown::{self, Trigger};
use serde_json::json;

pub const ADMIN: &str = "admin-token";
pub const INTERNAL: &str = "internal-token";
pub const ADAPTER_USER: &str = "ferry-adapter";
pub const ADAPTER_PASSWORD: &str = "adapter-secret";
/// The registry's signing seed, so tests can mint tokens the registry would (expired ones included).
pub const SIGNING_SEED: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

pub struct Platform {
    pub registry_url: String,
    pub amqp: std::net::SocketAddr,
    pub admin: ferry_core::admin::Admin,
    pub data_dir: tempfile::TempDir,
    http: reqwest::Client,
    trigger: Option<Trigger>,
    router: Option<ferry_router::Started>,
    _registry_trigger: Option<Trigger>,
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
            http: reqwest::Client::new(),
            trigger: None,
            router: None,
            _registry_trigger: None,
        }
    }

    /// The registry with its tenants, devices and application users, and no router yet.
    pub async fn start_without_router() -> Self {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let (registry_trigger, registry_shutdown) = shutdown::channel();
        let registry = ferry_registry::start(
            ferry_registry::Config {
                bind: "127.0.0.1:0".parse().expect("addr"),
                data_dir: data_dir.path().join("registry"),
                admin_token: Some(ADMIN.into()),
                internal_token: Some(INTERNAL.into()),
                signing_key: Some(SIGNING_SEED.into()),
                bcrypt_cost: 4,
                ..ferry_registry::Config::default()
            },
            ferry_core::admin::Admin::new(),
            registry_shutdown,
        )
        .await
        .expect("registry starts");
        let registry_url = registry.url();
        let http = reqwest::Client::new();
        let p = Self {
            registry_url,
            amqp: "127.0.0.1:1".parse().expect("addr"),
            admin: ferry_core::admin::Admin::new(),
            data_dir,
            http,
            trigger: None,
            router: None,
            _registry_trigger: Some(registry_trigger),
        };
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
        p.manage(
            reqwest::Method::PUT,
            "/v1/applications/app1",
            json!({ "password": "pw1", "tenants": ["t1"] }),
        )
        .await;
        p.manage(
            reqwest::Method::PUT,
            "/v1/applications/app2",
            json!({ "password": "pw2", "tenants": ["t2"] }),
        )
        .await;
        p
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
        let (trigger, shutdown) = shutdown::channel();
        self.admin = ferry_core::admin::Admin::new();
        let mut config = ferry_router::Config {
            bind: "127.0.0.1:0".parse().expect("addr"),
            data_dir: self.data_dir.path().join("router"),
            registry_url: self.registry_url.clone(),
            registry_token: INTERNAL.into(),
            adapter_password: ADAPTER_PASSWORD.into(),
            ..ferry_router::Config::default()
        };
        tweak(&mut config);
        let started = ferry_router::start(config, self.admin.clone(), shutdown)
            .await
            .expect("router starts");
        self.amqp = started.addr;
        self.trigger = Some(trigger);
        self.router = Some(started);
        // Ready once it has the registry's keys.
        for _ in 0..100 {
            if self.admin.not_ready().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("router not ready: {:?}", self.admin.not_ready());
    }

    pub async fn stop_router(&mut self) {
        if let Some(t) = self.trigger.take() {
            t.trigger();
        }
        if let Some(r) = self.router.take() {
            r.join().await.expect("router stops");
        }
    }

    pub async fn manage(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.registry_url))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .expect("registry call");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap_or(serde_json::Value::Null)
    }

    /// A registration assertion for `device` of `tenant`, as an adapter gets it.
    pub async fn assertion(&self, tenant: &str, device: &str) -> String {
        let resp: serde_json::Value = self
            .http
            .post(format!(
                "{}/internal/v1/assertions/{tenant}/{device}",
                self.registry_url
            ))
            .bearer_auth(INTERNAL)
            .send()
            .await
            .expect("assertion call")
            .json()
            .await
            .expect("json");
        resp["assertion"].as_str().expect("assertion").to_owned()
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

impl Drop for Platform {
    fn drop(&mut self) {
        if let Some(t) = self.trigger.take() {
            t.trigger();
        }
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
