//! The in-process platform that component tests run against (feature `platform`): a registry with the test
//! tokens ([`TestRegistry`]) and a router on it ([`TestRouter`]), each on `127.0.0.1:0` and stopped when
//! dropped. Each crate's harness adds what it tests (an adapter, a CLI, raw AMQP clients) on top; the
//! start-up, the readiness wait and the management calls live here once.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ferry_core::admin::Admin;
use ferry_core::shutdown::{self, Trigger};
use serde_json::{json, Value};

/// The registry's admin token (Bearer for the management API).
pub const ADMIN_TOKEN: &str = "admin-token";
/// The registry's internal token; also the adapters' password at the router.
pub const INTERNAL_TOKEN: &str = "internal-token";

/// A registry on `127.0.0.1:0` with [`ADMIN_TOKEN`], [`INTERNAL_TOKEN`] and a cheap bcrypt cost.
pub struct TestRegistry {
    /// Its base URL (`https://` when configured with TLS).
    pub url: String,
    pub started: ferry_registry::Started,
    http: reqwest::Client,
    trigger: Trigger,
}

impl TestRegistry {
    /// Starts one keeping its data in `data_dir`, with its configuration adjusted by `configure`.
    pub async fn start(
        data_dir: &Path,
        configure: impl FnOnce(&mut ferry_registry::Config),
    ) -> Self {
        let mut config = ferry_registry::Config {
            bind: "127.0.0.1:0".parse().expect("addr"),
            data_dir: data_dir.to_owned(),
            admin_token: Some(ADMIN_TOKEN.into()),
            internal_token: Some(INTERNAL_TOKEN.into()),
            bcrypt_cost: 4,
            ..ferry_registry::Config::default()
        };
        configure(&mut config);
        let (trigger, shutdown) = shutdown::channel();
        let started = ferry_registry::start(config, Admin::new(), shutdown)
            .await
            .expect("registry starts");
        Self {
            url: started.url(),
            started,
            http: reqwest::Client::new(),
            trigger,
        }
    }

    /// Shuts it down (it stops answering; dropping it does the same).
    pub fn stop(&self) {
        self.trigger.trigger();
    }

    /// Shuts it down and waits until it has stopped (its port and database are free again).
    pub async fn stop_and_wait(self) {
        self.trigger.trigger();
        self.started.join().await.expect("registry stops");
    }

    /// Uses `http` for the registry's API (one that trusts the test CA when the registry serves HTTPS).
    pub fn with_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// A management API call as the admin; panics unless it succeeds. The response's JSON (or null).
    pub async fn manage(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("registry call");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap_or(Value::Null)
    }

    /// Creates tenant `tenant` with `body` (`{}` for the defaults).
    pub async fn tenant(&self, tenant: &str, body: Value) {
        self.manage(
            reqwest::Method::POST,
            &format!("/v1/tenants/{tenant}"),
            body,
        )
        .await;
    }

    /// Creates device `device` of `tenant` with `body` (`{}`, `{"via": ["gw"]}`).
    pub async fn device(&self, tenant: &str, device: &str, body: Value) {
        self.manage(
            reqwest::Method::POST,
            &format!("/v1/devices/{tenant}/{device}"),
            body,
        )
        .await;
    }

    /// Gives `device` of `tenant` the password credential `auth_id` / `password` (replacing others).
    pub async fn password(&self, tenant: &str, device: &str, auth_id: &str, password: &str) {
        self.manage(
            reqwest::Method::PUT,
            &format!("/v1/credentials/{tenant}/{device}"),
            json!([{
                "type": "hashed-password",
                "auth-id": auth_id,
                "secrets": [{ "pwd-plain": password }],
            }]),
        )
        .await;
    }

    /// An application user `user` with `password`, allowed on `tenants`.
    pub async fn application(&self, user: &str, password: &str, tenants: &[&str]) {
        self.manage(
            reqwest::Method::PUT,
            &format!("/v1/applications/{user}"),
            json!({ "password": password, "tenants": tenants }),
        )
        .await;
    }

    /// A registration assertion for `device` of `tenant`, as an adapter gets it.
    pub async fn assertion(&self, tenant: &str, device: &str) -> String {
        let resp: Value = self
            .http
            .post(format!(
                "{}/internal/v1/assertions/{tenant}/{device}",
                self.url
            ))
            .bearer_auth(INTERNAL_TOKEN)
            .send()
            .await
            .expect("assertion call")
            .json()
            .await
            .expect("json");
        resp["assertion"].as_str().expect("assertion").to_owned()
    }
}

/// A router on `127.0.0.1:0` following a registry, with [`INTERNAL_TOKEN`] as the adapters' password;
/// started means ready (it has the registry's keys).
pub struct TestRouter {
    /// The plain AMQP listener.
    pub addr: SocketAddr,
    /// The AMQPS listener, when configured with TLS.
    pub tls_addr: Option<SocketAddr>,
    /// Its metrics and readiness.
    pub admin: Admin,
    started: Option<ferry_router::Started>,
    trigger: Option<Trigger>,
}

impl TestRouter {
    /// Starts one on `registry_url` keeping its data in `data_dir`, with its configuration adjusted by
    /// `configure`, and waits until it is ready.
    pub async fn start(
        registry_url: &str,
        data_dir: &Path,
        configure: impl FnOnce(&mut ferry_router::Config),
    ) -> Self {
        let mut config = ferry_router::Config {
            bind: "127.0.0.1:0".parse().expect("addr"),
            data_dir: data_dir.to_owned(),
            registry_url: registry_url.to_owned(),
            registry_token: INTERNAL_TOKEN.into(),
            adapter_password: INTERNAL_TOKEN.into(),
            ..ferry_router::Config::default()
        };
        configure(&mut config);
        let (trigger, shutdown) = shutdown::channel();
        let admin = Admin::new();
        let started = ferry_router::start(config, admin.clone(), shutdown)
            .await
            .expect("router starts");
        for _ in 0..250 {
            if admin.not_ready().is_empty() {
                return Self {
                    addr: started.addr,
                    tls_addr: started.tls_addr,
                    admin,
                    started: Some(started),
                    trigger: Some(trigger),
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("router not ready: {:?}", admin.not_ready());
    }

    /// Shuts it down and waits until it has stopped.
    pub async fn stop(&mut self) {
        if let Some(t) = self.trigger.take() {
            t.trigger();
        }
        if let Some(r) = self.started.take() {
            r.join().await.expect("router stops");
        }
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        if let Some(t) = self.trigger.take() {
            t.trigger();
        }
    }
}
