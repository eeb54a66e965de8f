//! A registry per test, on SQLite or PostgreSQL, and small request helpers.

use ferry_core::shutdown::{self, Trigger};
use ferry_registry::Config;
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const ADMIN: &str = "admin-secret-token";
pub const INTERNAL: &str = "internal-secret-token";

/// Runs the body once against SQLite and once against PostgreSQL:
/// `both!(name, |r| async move { ... })` gives tests `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both {
    ($name:ident, |$r:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let $r = $crate::harness::Registry::sqlite().await;
                $body.await;
            }

            #[tokio::test]
            async fn postgres() {
                let $r = $crate::harness::Registry::postgres().await;
                $body.await;
            }
        }
    };
}

/// A running registry and a client for it.
pub struct Registry {
    pub url: String,
    pub client: reqwest::Client,
    pub admin: ferry_core::admin::Admin,
    _dir: tempfile::TempDir,
    _pg: Option<ferry_test_support::PgDatabase>,
    trigger: Option<Trigger>,
    started: Option<ferry_registry::Started>,
}

/// A response, read completely.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn etag(&self) -> String {
        self.header("etag").expect("an ETag header").to_owned()
    }

    pub fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {:?}", self.body))
    }
}

pub fn test_config(dir: &std::path::Path) -> Config {
    Config {
        bind: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.to_owned(),
        admin_token: Some(ADMIN.into()),
        internal_token: Some(INTERNAL.into()),
        bcrypt_cost: 4,
        ..Config::default()
    }
}

impl Registry {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(dir.path());
        Self::start(config, dir, None).await
    }

    pub async fn postgres() -> Self {
        let pg = ferry_test_support::postgres_database().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        config.database_url = Some(pg.url().to_owned());
        Self::start(config, dir, Some(pg)).await
    }

    pub async fn with_config(config: Config, dir: tempfile::TempDir) -> Self {
        Self::start(config, dir, None).await
    }

    /// A registry on SQLite as `ferry up` runs it: with a router's bridge (in-memory presence), and
    /// sharing `admin` (its metrics) with whatever else the test registers there.
    pub async fn with_bridge(
        admin: ferry_core::admin::Admin,
        bridge: std::sync::Arc<ferry_core::console::RouterBridge>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(dir.path());
        Self::start_with(config, dir, None, admin, Some(bridge)).await
    }

    async fn start(
        config: Config,
        dir: tempfile::TempDir,
        pg: Option<ferry_test_support::PgDatabase>,
    ) -> Self {
        Self::start_with(config, dir, pg, ferry_core::admin::Admin::new(), None).await
    }

    async fn start_with(
        config: Config,
        dir: tempfile::TempDir,
        pg: Option<ferry_test_support::PgDatabase>,
        admin: ferry_core::admin::Admin,
        bridge: Option<std::sync::Arc<ferry_core::console::RouterBridge>>,
    ) -> Self {
        let (trigger, shutdown) = shutdown::channel();
        let started = ferry_registry::start_with_bridge(config, admin.clone(), shutdown, bridge)
            .await
            .expect("registry starts");
        Self {
            url: started.url(),
            client: reqwest::Client::new(),
            admin,
            _dir: dir,
            _pg: pg,
            trigger: Some(trigger),
            started: Some(started),
        }
    }

    /// Stops the registry and waits until it has.
    pub async fn stop(mut self) {
        if let Some(t) = self.trigger.take() {
            t.trigger();
        }
        if let Some(s) = self.started.take() {
            s.join().await.expect("registry stops cleanly");
        }
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Answer {
        let mut req = self.client.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(m) = if_match {
            req = req.header("if-match", m);
        }
        let resp = req.send().await.expect("request sent");
        Self::answer(resp).await
    }

    pub async fn answer(resp: reqwest::Response) -> Answer {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body read");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call_with(Method::GET, path, Some(ADMIN), None, None)
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.call_with(Method::POST, path, Some(ADMIN), Some(body), None)
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Answer {
        self.call_with(Method::PUT, path, Some(ADMIN), Some(body), None)
            .await
    }

    pub async fn put_if(&self, path: &str, body: &Value, if_match: &str) -> Answer {
        self.call_with(Method::PUT, path, Some(ADMIN), Some(body), Some(if_match))
            .await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.call_with(Method::DELETE, path, Some(ADMIN), None, None)
            .await
    }

    pub async fn delete_if(&self, path: &str, if_match: &str) -> Answer {
        self.call_with(Method::DELETE, path, Some(ADMIN), None, Some(if_match))
            .await
    }

    /// A call of the internal API with the internal token.
    pub async fn internal(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        self.call_with(
            method,
            &format!("/internal/v1{path}"),
            Some(INTERNAL),
            body,
            None,
        )
        .await
    }

    /// Creates a tenant and asserts it worked.
    pub async fn tenant(&self, id: &str, body: Value) {
        let a = self.post(&format!("/v1/tenants/{id}"), &body).await;
        assert_eq!(
            a.status,
            StatusCode::CREATED,
            "creating tenant {id}: {:?}",
            a.body
        );
    }

    /// Creates a device and asserts it worked.
    pub async fn device(&self, tenant: &str, id: &str, body: Value) {
        let a = self
            .post(&format!("/v1/devices/{tenant}/{id}"), &body)
            .await;
        assert_eq!(
            a.status,
            StatusCode::CREATED,
            "creating device {tenant}/{id}: {:?}",
            a.body
        );
    }

    /// Sets a device's credentials and asserts it worked.
    pub async fn credentials(&self, tenant: &str, device: &str, body: Value) {
        let a = self
            .put(&format!("/v1/credentials/{tenant}/{device}"), &body)
            .await;
        assert_eq!(
            a.status,
            StatusCode::NO_CONTENT,
            "setting credentials {tenant}/{device}: {:?}",
            a.body
        );
    }

    pub fn metrics(&self) -> String {
        self.admin.encode_metrics()
    }
}
