//! The `AddressSpace` reconcile in `nats` mode against a mocked API server (tower-test): create with a
//! managed NATS cluster, `MessagingReady` from its StatefulSet, scaling it (an even size refused),
//! switching modes (the other mode's workloads deleted), and an external cluster's Secrets checked.

#[path = "fake/api.rs"]
mod fake;

use std::sync::Arc;

use fake::FakeApi;
use ferry_operator::crd::{AddressSpace, Phase};
use ferry_operator::metrics::Metrics;
use ferry_operator::{address_space, Config, Context};
use serde_json::{json, Value};

const NS: &str = "/api/v1/namespaces/prod";
const APPS: &str = "/apis/apps/v1/namespaces/prod";
const SPACE: &str = "/apis/ferry.dev/v1alpha1/namespaces/prod/addressspaces/iot";
const NETPOL: &str = "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies";
const PDB: &str = "/apis/policy/v1/namespaces/prod/poddisruptionbudgets";

fn context(client: kube::Client) -> Arc<Context> {
    let config = Config {
        leader_election: false,
        ..Config::default()
    };
    Arc::new(Context::new(client, config, Metrics::default()))
}

fn create_space(api: &FakeApi, spec: Value) {
    api.put(
        SPACE,
        json!({
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "AddressSpace",
            "metadata": {"name": "iot", "namespace": "prod", "uid": "as-uid-1", "generation": 1},
            "spec": spec,
        }),
    );
}

fn edit_spec(api: &FakeApi, spec: Value, generation: i64) {
    api.edit(SPACE, |o| {
        o["spec"] = spec;
        o["metadata"]["generation"] = json!(generation);
    });
}

fn stored_space(api: &FakeApi) -> Arc<AddressSpace> {
    Arc::new(serde_json::from_value(api.get(SPACE).expect("address space")).expect("AddressSpace"))
}

async fn reconcile(api: &FakeApi, ctx: &Arc<Context>) {
    address_space::reconcile(stored_space(api), ctx.clone())
        .await
        .expect("reconcile");
}

fn condition(api: &FakeApi, type_: &str) -> (String, String, String) {
    let space = stored_space(api);
    let c = space
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("no condition {type_}"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn phase(api: &FakeApi) -> Option<Phase> {
    stored_space(api).status.as_ref().and_then(|s| s.phase)
}

/// Marks every workload's replicas ready, as the kubelet would.
fn make_ready(api: &FakeApi) {
    for path in api.paths() {
        if path.contains("/deployments/") || path.contains("/statefulsets/") {
            api.edit(&path, |o| {
                let replicas = o["spec"]["replicas"].clone();
                let generation = o["metadata"]["generation"].clone();
                o["status"] = json!({"replicas": replicas, "readyReplicas": replicas,
                                     "updatedReplicas": replicas, "observedGeneration": generation});
            });
        }
    }
}

fn lines(api: &FakeApi) -> Vec<String> {
    api.take_calls_without_events()
        .iter()
        .map(|c| c.line())
        .collect()
}

#[tokio::test]
async fn nats_mode_runs_managed_nats_and_reports_it_in_messaging_ready() {
    let (client, api) = FakeApi::start();
    let ctx = context(client);
    create_space(&api, json!({"messaging": {"mode": "nats"}}));
    reconcile(&api, &ctx).await;
    let calls = lines(&api);
    for expected in [
        format!("GET {NS}/secrets/iot-nats-users"),
        format!("PATCH {NS}/configmaps/iot-nats-config"),
        format!("PATCH {NS}/services/iot-nats"),
        format!("PATCH {NS}/services/iot-nats-headless"),
        format!("PATCH {NETPOL}/iot-nats"),
        format!("PATCH {PDB}/iot-nats"),
        format!("PATCH {APPS}/statefulsets/iot-nats"),
        format!("PATCH {APPS}/deployments/iot-router"),
        format!("DELETE {APPS}/statefulsets/iot-router"),
        format!("DELETE {NS}/services/iot-router-headless"),
    ] {
        assert!(calls.contains(&expected), "{expected} missing: {calls:#?}");
    }
    assert!(
        !calls.contains(&format!("PATCH {APPS}/statefulsets/iot-router")),
        "no router StatefulSet in nats mode"
    );
    // The users' Secret holds the rendered permissions; the passwords are the components' files.
    let users = api
        .get(&format!("{NS}/secrets/iot-nats-users"))
        .expect("users secret");
    for key in ["adapter", "router", "auth.conf"] {
        assert!(users["data"][key].is_string(), "{key}");
    }
    let nats = api
        .get(&format!("{APPS}/statefulsets/iot-nats"))
        .expect("nats");
    assert_eq!(nats["spec"]["replicas"], 3, "three nodes by default");
    assert_eq!(
        nats["metadata"]["ownerReferences"][0]["uid"], "as-uid-1",
        "owned by the address space"
    );
    let (status, reason, message) = condition(&api, "MessagingReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ReplicasNotReady")
    );
    assert_eq!(message, "0/3 NATS nodes ready");
    assert_eq!(phase(&api), Some(Phase::Pending));

    make_ready(&api);
    reconcile(&api, &ctx).await;
    assert_eq!(condition(&api, "MessagingReady").0, "True");
    assert_eq!(condition(&api, "Ready").0, "True");
    assert_eq!(phase(&api), Some(Phase::Ready));

    // A node lost degrades the address space, and Ready says why.
    api.edit(&format!("{APPS}/statefulsets/iot-nats"), |o| {
        o["status"]["readyReplicas"] = json!(2);
    });
    reconcile(&api, &ctx).await;
    assert_eq!(phase(&api), Some(Phase::Degraded));
    assert_eq!(condition(&api, "MessagingReady").2, "2/3 NATS nodes ready");
    assert_eq!(condition(&api, "Ready").2, "not ready: messaging");
    assert_eq!(condition(&api, "RouterReady").0, "True");
}

#[tokio::test]
async fn nats_scales_by_odd_sizes_and_switching_modes_deletes_the_other_workloads() {
    let (client, api) = FakeApi::start();
    let ctx = context(client);
    create_space(&api, json!({}));
    reconcile(&api, &ctx).await;
    make_ready(&api);
    reconcile(&api, &ctx).await;
    assert_eq!(condition(&api, "MessagingReady").1, "Embedded");
    assert!(api
        .get(&format!("{APPS}/statefulsets/iot-router"))
        .is_some());

    // To managed NATS: the router becomes a Deployment, its StatefulSet goes.
    edit_spec(
        &api,
        json!({"messaging": {"mode": "nats", "nats": {"managed": {"replicas": 3}}},
               "router": {"replicas": 2}}),
        2,
    );
    reconcile(&api, &ctx).await;
    api.take_calls();
    assert!(api
        .get(&format!("{APPS}/statefulsets/iot-router"))
        .is_none());
    let router = api
        .get(&format!("{APPS}/deployments/iot-router"))
        .expect("router deployment");
    assert_eq!(router["spec"]["replicas"], 2);
    assert!(
        router["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .all(|v| v.get("persistentVolumeClaim").is_none()),
        "stateless"
    );
    assert!(api.get(&format!("{PDB}/iot-router")).is_some());

    // Five nodes: the StatefulSet and the routes follow.
    edit_spec(
        &api,
        json!({"messaging": {"mode": "nats", "nats": {"managed": {"replicas": 5}}}}),
        3,
    );
    reconcile(&api, &ctx).await;
    let nats = api
        .get(&format!("{APPS}/statefulsets/iot-nats"))
        .expect("nats");
    assert_eq!(nats["spec"]["replicas"], 5);
    let conf = api
        .get(&format!("{NS}/configmaps/iot-nats-config"))
        .expect("config")["data"]["nats.conf"]
        .as_str()
        .expect("nats.conf")
        .to_owned();
    assert!(
        conf.contains("iot-nats-4.iot-nats-headless.prod.svc:6222"),
        "{conf}"
    );
    let router_config = api
        .get(&format!("{NS}/configmaps/iot-router-config"))
        .expect("router config")["data"]["config.yaml"]
        .as_str()
        .expect("yaml")
        .to_owned();
    assert!(
        router_config.contains("replicas: 3"),
        "streams stay at three replicas"
    );
    api.take_calls();

    // Two nodes: refused, nothing applied, the cluster stays as it is.
    edit_spec(
        &api,
        json!({"messaging": {"mode": "nats", "nats": {"managed": {"replicas": 2}}}}),
        4,
    );
    reconcile(&api, &ctx).await;
    let written: Vec<String> = lines(&api)
        .into_iter()
        .filter(|l| !l.starts_with("GET") && !l.ends_with("/status"))
        .collect();
    assert_eq!(written, Vec::<String>::new());
    let (status, reason, message) = condition(&api, "Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.contains("odd number"), "{message}");
    assert_eq!(phase(&api), Some(Phase::Failed));
    assert_eq!(
        api.get(&format!("{APPS}/statefulsets/iot-nats"))
            .expect("nats")["spec"]["replicas"],
        5
    );

    // Back to embedded: NATS and the router's Deployment go, the StatefulSet returns.
    edit_spec(&api, json!({}), 5);
    reconcile(&api, &ctx).await;
    for gone in [
        format!("{APPS}/statefulsets/iot-nats"),
        format!("{APPS}/deployments/iot-router"),
        format!("{NS}/services/iot-nats"),
        format!("{NS}/configmaps/iot-nats-config"),
        format!("{PDB}/iot-nats"),
        format!("{NETPOL}/iot-nats"),
    ] {
        assert!(api.get(&gone).is_none(), "{gone} left behind");
    }
    assert!(api
        .get(&format!("{APPS}/statefulsets/iot-router"))
        .is_some());
}

#[tokio::test]
async fn external_nats_secrets_are_checked_and_messaging_is_reported_external() {
    let (client, api) = FakeApi::start();
    let ctx = context(client);
    create_space(
        &api,
        json!({"messaging": {"mode": "nats", "nats": {"external": {
            "urls": ["tls://nats.corp:4222"], "credentialsSecret": "corp-nats",
            "ca": {"secretName": "corp-nats", "key": "ca.crt"}}}}}),
    );
    reconcile(&api, &ctx).await;
    let (status, reason, message) = condition(&api, "Ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretMissing")
    );
    assert!(
        message.contains("Secret corp-nats (key adapter)"),
        "{message}"
    );
    assert!(api.get(&format!("{APPS}/deployments/iot-router")).is_none());

    // Present but not made for Ferry: refused.
    let secret = |labels: Value| {
        json!({"metadata": {"name": "corp-nats", "namespace": "prod", "labels": labels},
               "data": {"adapter": "YQ==", "router": "cg==", "registry": "Zw==", "ca.crt": "Y2E="}})
    };
    api.put(&format!("{NS}/secrets/corp-nats"), secret(json!({})));
    reconcile(&api, &ctx).await;
    assert_eq!(condition(&api, "Ready").1, "SecretNotAllowed");

    api.put(
        &format!("{NS}/secrets/corp-nats"),
        secret(json!({"ferry.dev/allow": "true"})),
    );
    reconcile(&api, &ctx).await;
    assert!(api.get(&format!("{APPS}/statefulsets/iot-nats")).is_none());
    assert!(api.get(&format!("{NS}/secrets/iot-nats-users")).is_none());
    let (status, reason, _) = condition(&api, "MessagingReady");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "External"));
    let adapter = api
        .get(&format!("{APPS}/deployments/iot-mqtt-adapter"))
        .expect("adapter");
    let sources = adapter["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "secrets")
        .expect("secret files")["projected"]["sources"]
        .clone();
    assert!(
        sources
            .as_array()
            .expect("sources")
            .iter()
            .any(|s| s["secret"]["name"] == "corp-nats"
                && s["secret"]["items"][0]["key"] == "adapter"),
        "{sources}"
    );
}

#[tokio::test]
async fn the_users_auth_conf_follows_the_permissions_and_keeps_the_passwords() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (client, api) = FakeApi::start();
    let ctx = context(client);
    create_space(&api, json!({"messaging": {"mode": "nats"}}));
    // Generated by an older operator whose permissions differed.
    api.put(
        &format!("{NS}/secrets/iot-nats-users"),
        json!({"metadata": {"name": "iot-nats-users", "namespace": "prod",
                            "ownerReferences": [{"apiVersion": "ferry.dev/v1alpha1", "kind": "AddressSpace",
                                                 "name": "iot", "uid": "as-uid-1", "controller": true}]},
               "data": {"adapter": b64("adapter-pw"), "router": b64("router-pw"),
                        "auth.conf": b64("authorization { users = [] }\n")}}),
    );
    reconcile(&api, &ctx).await;
    let secret = api
        .get(&format!("{NS}/secrets/iot-nats-users"))
        .expect("secret");
    let text = |k: &str| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(secret["data"][k].as_str().expect("key"))
                .expect("base64"),
        )
        .expect("utf-8")
    };
    assert_eq!(text("adapter"), "adapter-pw", "passwords are kept");
    // A Secret from before the registry had a NATS user gets one (for the presence API).
    let registry_pw = text("registry");
    assert!(
        registry_pw.len() >= 16,
        "a generated password: {registry_pw:?}"
    );
    let expected = ferry_nats::permissions::authorization(&[
        (
            "ferry-adapter",
            "adapter-pw",
            &ferry_nats::permissions::adapter(),
        ),
        (
            "ferry-router",
            "router-pw",
            &ferry_nats::permissions::router(),
        ),
        (
            "ferry-registry",
            &registry_pw,
            &ferry_nats::permissions::registry(),
        ),
    ])
    .expect("renders");
    assert_eq!(text("auth.conf"), expected);
    // Once current, it is left alone.
    api.take_calls();
    reconcile(&api, &ctx).await;
    assert!(!lines(&api).contains(&format!("PATCH {NS}/secrets/iot-nats-users")));
}
