//! The `Tenant` reconcile against a mocked Kubernetes API server (tower-test) and a real
//! `ferry-registry` running in-process on a free port: the finalizer, create, update, application users
//! that really authenticate, delete through the finalizer, and the waiting conditions.

#[path = "fake/api.rs"]
mod fake;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use fake::FakeApi;
use ferry_core::shutdown::{self, Trigger};
use ferry_operator::crd::Tenant;
use ferry_operator::metrics::Metrics;
use ferry_operator::{tenant, Config, Context, Error};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

const NS: &str = "/api/v1/namespaces/prod";
const SPACE: &str = "/apis/ferry.dev/v1alpha1/namespaces/prod/addressspaces/iot";
const TENANT: &str = "/apis/ferry.dev/v1alpha1/namespaces/prod/tenants/acme";
const ADMIN_TOKEN: &str = "admin-token-for-the-operator-test";
const INTERNAL_TOKEN: &str = "internal-token-for-the-operator-test";

struct Registry {
    url: String,
    http: reqwest::Client,
    _trigger: Trigger,
    _dir: tempfile::TempDir,
}

impl Registry {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ferry_registry::Config {
            bind: "127.0.0.1:0".parse().expect("addr"),
            data_dir: dir.path().to_owned(),
            admin_token: Some(ADMIN_TOKEN.into()),
            internal_token: Some(INTERNAL_TOKEN.into()),
            bcrypt_cost: 4,
            max_bcrypt_cost: 10,
            ..ferry_registry::Config::default()
        };
        let (trigger, shutdown) = shutdown::channel();
        let started = ferry_registry::start(config, ferry_core::admin::Admin::new(), shutdown)
            .await
            .expect("registry starts");
        Self {
            url: started.url(),
            http: reqwest::Client::new(),
            _trigger: trigger,
            _dir: dir,
        }
    }

    async fn tenant(&self, id: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/v1/tenants/{id}", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("registry answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The internal API's application-user authentication, as the router calls it.
    async fn authenticate(&self, name: &str, password: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!(
                "{}/internal/v1/applications/authenticate",
                self.url
            ))
            .bearer_auth(INTERNAL_TOKEN)
            .json(&json!({"name": name, "password": password}))
            .send()
            .await
            .expect("registry answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn context(client: kube::Client, registry_url: &str) -> Arc<Context> {
    let config = Config {
        leader_election: false,
        registry_url: Some(registry_url.to_owned()),
        ..Config::default()
    };
    Arc::new(Context::new(client, config, Metrics::default()))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// An address space as the operator leaves it: its admin token Secret, and Ready or not.
fn create_space(api: &FakeApi, ready: bool) {
    api.put(
        SPACE,
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "AddressSpace",
            "metadata": {"name": "iot", "namespace": "prod"},
            "spec": {},
            "status": {
                "phase": if ready { "Ready" } else { "Pending" },
                "adminTokenSecret": "iot-admin-token",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                                "reason": "Test", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
            }
        }),
    );
    api.put(
        &format!("{NS}/secrets/iot-admin-token"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "iot-admin-token", "namespace": "prod"},
               "data": {"token": b64(ADMIN_TOKEN)}}),
    );
}

fn create_tenant(api: &FakeApi, spec: Value) {
    api.put(
        TENANT,
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "namespace": "prod", "uid": "tenant-uid-1", "generation": 1},
            "spec": spec,
        }),
    );
}

fn stored_tenant(api: &FakeApi) -> Arc<Tenant> {
    Arc::new(serde_json::from_value(api.get(TENANT).expect("tenant")).expect("Tenant"))
}

async fn reconcile(api: &FakeApi, ctx: &Arc<Context>) -> Result<Action, Error> {
    tenant::reconcile(stored_tenant(api), ctx.clone()).await
}

fn condition(t: &Tenant, type_: &str) -> (String, String) {
    let c = t
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("no condition {type_}"));
    (c.status.clone(), c.reason.clone())
}

fn password(api: &FakeApi, user: &str) -> Option<String> {
    let secret = api.get(&format!("{NS}/secrets/acme-applications"))?;
    let encoded = secret["data"][user].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

#[tokio::test]
async fn tenant_lifecycle_against_a_real_registry() {
    let registry = Registry::start().await;
    let (client, api) = FakeApi::start();
    let ctx = context(client, &registry.url);
    create_space(&api, true);
    create_tenant(
        &api,
        json!({
            "addressSpace": "iot",
            "enabled": true,
            "adapters": [{"type": "hono-mqtt", "enabled": true, "deviceAuthenticationRequired": true}],
            "resourceLimits": {"maxConnections": 10, "maxTtl": 60, "maxTtd": -1},
            "defaults": {"ttl": 30},
            "applications": [{"name": "dashboard"}]
        }),
    );

    // First pass: only the finalizer, through a JSON patch that tests the list is absent.
    let action = reconcile(&api, &ctx).await.expect("finalizer");
    assert_eq!(action, Action::await_change());
    let calls = api.take_calls_without_events();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].line(), format!("PATCH {TENANT}"));
    assert_eq!(calls[0].content_type, "application/json-patch+json");
    assert_eq!(
        stored_tenant(&api).metadata.finalizers,
        Some(vec!["ferry.dev/tenant".to_owned()])
    );
    assert_eq!(
        registry.tenant("acme").await.0,
        404,
        "nothing created before the finalizer"
    );

    // Second pass: the tenant and its application user.
    let action = reconcile(&api, &ctx).await.expect("create");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let (status, body) = registry.tenant("acme").await;
    assert_eq!(status, 200);
    assert_eq!(body["enabled"], true);
    assert_eq!(body["defaults"]["ttl"], 30);
    assert_eq!(body["resource-limits"]["max-connections"], 10);
    assert_eq!(body["adapters"][0]["type"], "hono-mqtt");
    assert_eq!(body["ext"]["ferry-operator-owner"], "prod/acme");

    let t = stored_tenant(&api);
    for c in ["Accepted", "Synced", "Ready"] {
        assert_eq!(condition(&t, c).0, "True", "{c}");
    }
    let status = t.status.as_ref().expect("status");
    assert_eq!(
        status.applications_secret.as_deref(),
        Some("acme-applications")
    );
    assert_eq!(status.registry_tenant_id.as_deref(), Some("acme"));
    let secret = api
        .get(&format!("{NS}/secrets/acme-applications"))
        .expect("secret");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"],
        "tenant-uid-1"
    );
    let dashboard = password(&api, "dashboard").expect("password");
    let (code, who) = registry.authenticate("dashboard", &dashboard).await;
    assert_eq!(code, 200);
    assert_eq!(who["tenants"], json!(["acme"]), "scoped to its tenant only");
    assert_eq!(registry.authenticate("dashboard", "wrong").await.0, 403);
    assert!(api.event_reasons().contains(&"Ready".to_owned()));

    // Nothing changed: no write to the Secret.
    api.take_calls();
    reconcile(&api, &ctx).await.expect("steady");
    assert!(
        api.take_calls()
            .iter()
            .all(|c| !(c.path.contains("/secrets/acme-applications")
                && c.method != http::Method::GET))
    );

    // Update: disable, and a second application user.
    api.edit(TENANT, |o| {
        o["spec"]["enabled"] = json!(false);
        o["spec"]["applications"] = json!([{"name": "dashboard"}, {"name": "ops.acme"}]);
        o["metadata"]["generation"] = json!(2);
    });
    reconcile(&api, &ctx).await.expect("update");
    assert_eq!(registry.tenant("acme").await.1["enabled"], false);
    assert_eq!(
        password(&api, "dashboard").as_deref(),
        Some(dashboard.as_str()),
        "kept"
    );
    let ops = password(&api, "ops.acme").expect("ops password");
    assert_eq!(registry.authenticate("ops.acme", &ops).await.0, 200);
    assert_eq!(registry.authenticate("dashboard", &dashboard).await.0, 200);
    assert_eq!(
        stored_tenant(&api)
            .status
            .as_ref()
            .and_then(|s| s.observed_generation),
        Some(2)
    );

    // An application user removed from the spec is removed from the registry and the Secret.
    api.edit(TENANT, |o| {
        o["spec"]["applications"] = json!([{"name": "ops.acme"}]);
    });
    reconcile(&api, &ctx).await.expect("remove user");
    assert_eq!(registry.authenticate("dashboard", &dashboard).await.0, 403);
    assert_eq!(password(&api, "dashboard"), None);
    assert_eq!(registry.authenticate("ops.acme", &ops).await.0, 200);

    // Delete: the finalizer removes tenant and users, then lets the resource go.
    api.edit(TENANT, |o| {
        o["metadata"]["deletionTimestamp"] = json!("2026-11-22T08:00:00Z");
    });
    let action = reconcile(&api, &ctx).await.expect("cleanup");
    assert_eq!(action, Action::await_change());
    assert_eq!(registry.tenant("acme").await.0, 404);
    assert_eq!(registry.authenticate("ops.acme", &ops).await.0, 403);
    assert!(
        api.get(TENANT).is_none(),
        "finalizer removed, resource gone"
    );
}

#[tokio::test]
async fn tenant_waits_for_a_missing_or_unready_address_space() {
    let registry = Registry::start().await;
    let (client, api) = FakeApi::start();
    let ctx = context(client, &registry.url);
    create_tenant(&api, json!({"addressSpace": "iot", "tenantId": "t-1"}));
    reconcile(&api, &ctx).await.expect("finalizer");

    let action = reconcile(&api, &ctx).await.expect("waits");
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    let t = stored_tenant(&api);
    assert_eq!(
        condition(&t, "Accepted"),
        ("False".into(), "AddressSpaceNotFound".into())
    );
    assert_eq!(condition(&t, "Ready").0, "False");
    assert_eq!(
        t.status
            .as_ref()
            .and_then(|s| s.registry_tenant_id.as_deref()),
        Some("t-1")
    );

    create_space(&api, false);
    reconcile(&api, &ctx).await.expect("waits");
    let t = stored_tenant(&api);
    assert_eq!(condition(&t, "Accepted"), ("True".into(), "Valid".into()));
    assert_eq!(
        condition(&t, "Synced"),
        ("False".into(), "AddressSpaceNotReady".into())
    );
    assert_eq!(registry.tenant("t-1").await.0, 404);

    create_space(&api, true);
    reconcile(&api, &ctx).await.expect("syncs");
    assert_eq!(condition(&stored_tenant(&api), "Ready").0, "True");
    assert_eq!(registry.tenant("t-1").await.0, 200);

    // Deleting a tenant whose address space is gone only drops the finalizer.
    api.remove(SPACE);
    api.edit(TENANT, |o| {
        o["metadata"]["deletionTimestamp"] = json!("2026-11-22T08:00:00Z")
    });
    reconcile(&api, &ctx).await.expect("cleanup");
    assert!(api.get(TENANT).is_none());
}

#[tokio::test]
async fn a_registry_tenant_not_ours_is_neither_taken_over_nor_deleted() {
    let registry = Registry::start().await;
    let r = registry
        .http
        .post(format!("{}/v1/tenants/acme", registry.url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"enabled": true}))
        .send()
        .await
        .expect("create by hand");
    assert_eq!(r.status(), 201);
    let (client, api) = FakeApi::start();
    let ctx = context(client, &registry.url);
    create_space(&api, true);
    create_tenant(&api, json!({"addressSpace": "iot", "enabled": false}));
    reconcile(&api, &ctx).await.expect("finalizer");
    reconcile(&api, &ctx).await.expect("handled");
    let t = stored_tenant(&api);
    assert_eq!(
        condition(&t, "Synced"),
        ("False".into(), "RegistryRejected".into())
    );
    assert_eq!(
        registry.tenant("acme").await.1["enabled"],
        true,
        "untouched"
    );

    api.edit(TENANT, |o| {
        o["metadata"]["deletionTimestamp"] = json!("2026-11-22T08:00:00Z")
    });
    reconcile(&api, &ctx).await.expect("cleanup");
    assert_eq!(registry.tenant("acme").await.0, 200, "not deleted");
}

#[tokio::test]
async fn invalid_spec_and_unreachable_registry_are_reported() {
    let (client, api) = FakeApi::start();
    // A free port: nothing listens there.
    let url = format!("http://127.0.0.1:{}", ferry_test_support::free_port());
    let ctx = context(client, &url);
    create_space(&api, true);
    create_tenant(
        &api,
        json!({"addressSpace": "iot", "trustedCa": [{"subjectDn": "CN=x", "cert": "garbage"}]}),
    );
    reconcile(&api, &ctx).await.expect("finalizer");
    let action = reconcile(&api, &ctx).await.expect("refused");
    assert_eq!(action, Action::await_change());
    let t = stored_tenant(&api);
    assert_eq!(
        condition(&t, "Accepted"),
        ("False".into(), "InvalidSpec".into())
    );

    api.edit(TENANT, |o| o["spec"] = json!({"addressSpace": "iot"}));
    let action = reconcile(&api, &ctx).await.expect("unavailable");
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    let t = stored_tenant(&api);
    assert_eq!(
        condition(&t, "Synced"),
        ("False".into(), "RegistryUnavailable".into())
    );
    assert_eq!(condition(&t, "Accepted").0, "True");

    // Cleanup needs the registry: the finalizer stays until it answers.
    api.edit(TENANT, |o| {
        o["metadata"]["deletionTimestamp"] = json!("2026-11-22T08:00:00Z")
    });
    let e = reconcile(&api, &ctx).await.expect_err("registry down");
    assert!(matches!(e, Error::Registry(_)), "{e}");
    assert_eq!(
        stored_tenant(&api).metadata.finalizers,
        Some(vec!["ferry.dev/tenant".to_owned()])
    );
}
