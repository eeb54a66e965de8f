//! The `AddressSpace` reconcile against a mocked API server (tower-test): create, secrets kept across
//! reconciles, status from readiness, scale and disable (delete), refused specs, failures.

#[path = "fake/api.rs"]
mod fake;

use std::sync::Arc;
use std::time::Duration;

use fake::FakeApi;
use ferry_operator::crd::{AddressSpace, AddressSpaceSpec, Phase};
use ferry_operator::metrics::Metrics;
use ferry_operator::{address_space, Config, Context, Error};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

const NS: &str = "/api/v1/namespaces/prod";
const APPS: &str = "/apis/apps/v1/namespaces/prod";
const SPACE: &str = "/apis/ferry.dev/v1alpha1/namespaces/prod/addressspaces/iot";
const NETPOL: &str = "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies";
const PDB: &str = "/apis/policy/v1/namespaces/prod/poddisruptionbudgets";

fn context(client: kube::Client) -> Arc<Context> {
    let config = Config {
        leader_election: false,
        resync_secs: 300,
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

fn stored_space(api: &FakeApi) -> Arc<AddressSpace> {
    Arc::new(serde_json::from_value(api.get(SPACE).expect("address space")).expect("AddressSpace"))
}

async fn reconcile(api: &FakeApi, ctx: &Arc<Context>) -> Result<Action, Error> {
    address_space::reconcile(stored_space(api), ctx.clone()).await
}

fn condition(space: &AddressSpace, type_: &str) -> (String, String) {
    let c = space
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("no condition {type_}"));
    (c.status.clone(), c.reason.clone())
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

fn secret_token(api: &FakeApi, name: &str, key: &str) -> String {
    let secret = api
        .get(&format!("{NS}/secrets/{name}"))
        .unwrap_or_else(|| panic!("no secret {name}"));
    secret["data"][key].as_str().expect("data").to_owned()
}

#[tokio::test]
async fn create_applies_every_object_with_server_side_apply_and_reports_pending() {
    let (client, api) = FakeApi::start();
    let ctx = context(client);
    create_space(&api, json!({}));

    let action = reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));

    let calls = api.take_calls_without_events();
    let lines: Vec<String> = calls.iter().map(|c| c.line()).collect();
    let mut expected = Vec::new();
    let generated = [
        "iot-admin-token",
        "iot-internal-token",
        "iot-signing-key",
        "iot-adapter-credentials",
        "iot-tls",
    ];
    // Every Secret is looked at before anything is written.
    for s in generated {
        expected.push(format!("GET {NS}/secrets/{s}"));
    }
    for _ in generated {
        expected.push(format!("POST {NS}/secrets"));
    }
    for c in ["registry", "router", "mqtt-adapter", "http-adapter"] {
        expected.push(format!("PATCH {NS}/configmaps/iot-{c}-config"));
    }
    expected.push(format!(
        "PATCH {NS}/persistentvolumeclaims/iot-registry-data"
    ));
    for s in [
        "iot-registry",
        "iot-router",
        "iot-router-internal",
        "iot-router-headless",
        "iot-mqtt-adapter",
        "iot-http-adapter",
    ] {
        expected.push(format!("PATCH {NS}/services/{s}"));
    }
    for c in ["registry", "router", "mqtt-adapter", "http-adapter"] {
        expected.push(format!("PATCH {NETPOL}/iot-{c}"));
    }
    for d in ["iot-registry", "iot-mqtt-adapter", "iot-http-adapter"] {
        expected.push(format!("PATCH {APPS}/deployments/{d}"));
    }
    expected.push(format!("PATCH {APPS}/statefulsets/iot-router"));
    // Embedded mode: whatever nats mode left (managed NATS, the router's Deployment) is deleted.
    expected.extend([
        format!("DELETE {APPS}/statefulsets/iot-nats"),
        format!("DELETE {NS}/services/iot-nats"),
        format!("DELETE {NS}/services/iot-nats-headless"),
        format!("DELETE {NS}/configmaps/iot-nats-config"),
        format!("DELETE {APPS}/deployments/iot-router"),
    ]);
    // One replica each: no disruption budget (one left from a larger scale is deleted).
    for c in ["registry", "router", "mqtt-adapter", "http-adapter", "nats"] {
        expected.push(format!("DELETE {PDB}/iot-{c}"));
    }
    expected.push(format!("DELETE {NETPOL}/iot-nats"));
    expected.push(format!("PATCH {SPACE}/status"));
    assert_eq!(lines, expected);

    for c in calls
        .iter()
        .filter(|c| c.method == http::Method::PATCH && !c.path.ends_with("/status"))
    {
        assert_eq!(c.content_type, "application/apply-patch+yaml", "{}", c.path);
        assert!(
            c.query.contains("fieldManager=ferry-operator"),
            "{}",
            c.query
        );
        assert!(c.query.contains("force=true"), "{}", c.query);
        assert_eq!(c.body["metadata"]["ownerReferences"][0]["uid"], "as-uid-1");
        assert!(c.body["apiVersion"].is_string() && c.body["kind"].is_string());
    }
    let registry = calls
        .iter()
        .find(|c| c.path.ends_with("/deployments/iot-registry"))
        .expect("registry deployment");
    assert_eq!(registry.body["spec"]["replicas"], 1);
    assert!(
        !secret_token(&api, "iot-tls", "tls.crt").is_empty(),
        "certificate generated"
    );
    assert_eq!(
        api.get(&format!("{NS}/secrets/iot-tls")).expect("tls")["type"],
        "kubernetes.io/tls"
    );

    let space = stored_space(&api);
    let status = space.status.as_ref().expect("status");
    assert_eq!(status.phase, Some(Phase::Pending));
    assert_eq!(
        status.admin_token_secret.as_deref(),
        Some("iot-admin-token")
    );
    assert_eq!(
        status.endpoints.as_ref().and_then(|e| e.amqps.as_deref()),
        Some("iot-router.prod.svc:5671")
    );
    assert_eq!(
        status.endpoints.as_ref().and_then(|e| e.amqp.as_deref()),
        None,
        "plain AMQP is not offered to applications"
    );
    assert_eq!(
        condition(&space, "RegistryReady"),
        ("False".into(), "ReplicasNotReady".into())
    );
    assert_eq!(condition(&space, "Ready").0, "False");
    assert!(api.event_reasons().contains(&"SecretGenerated".to_owned()));
    assert!(api.event_reasons().contains(&"Pending".to_owned()));
}

#[tokio::test]
async fn generated_secrets_are_never_regenerated() {
    let (client, api) = FakeApi::start();
    let ctx = context(client);
    create_space(&api, json!({}));
    reconcile(&api, &ctx).await.expect("first");
    let admin = secret_token(&api, "iot-admin-token", "token");
    let key = secret_token(&api, "iot-signing-key", "signing.key");
    let cert = secret_token(&api, "iot-tls", "tls.crt");
    api.take_calls();

    reconcile(&api, &ctx).await.expect("second");
    let calls = api.take_calls_without_events();
    assert!(
        calls
            .iter()
            .all(|c| !(c.path.contains("/secrets") && c.method != http::Method::GET)),
        "secrets were written again"
    );
    assert_eq!(secret_token(&api, "iot-admin-token", "token"), admin);
    assert_eq!(secret_token(&api, "iot-signing-key", "signing.key"), key);
    assert_eq!(secret_token(&api, "iot-tls", "tls.crt"), cert);

    // A user's own Secret of that name is kept when it is labelled for Ferry and has the key...
    api.put(
        &format!("{NS}/secrets/iot-admin-token"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "iot-admin-token", "namespace": "prod", "labels": {"ferry.dev/allow": "true"}},
               "stringData": {"token": "chosen-by-the-user"}}),
    );
    reconcile(&api, &ctx).await.expect("user secret");
    assert_eq!(
        api.get(&format!("{NS}/secrets/iot-admin-token"))
            .expect("secret")["stringData"]["token"],
        "chosen-by-the-user"
    );
    assert_eq!(
        stored_space(&api).status.as_ref().and_then(|s| s.phase),
        Some(Phase::Pending)
    );
    // ...and refused, with a warning, when it lacks it.
    api.put(
        &format!("{NS}/secrets/iot-admin-token"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "iot-admin-token", "namespace": "prod", "labels": {"ferry.dev/allow": "true"}},
               "data": {}}),
    );
    let e = reconcile(&api, &ctx).await.expect_err("incomplete secret");
    assert!(
        matches!(&e, Error::SecretIncomplete { name, key } if name == "iot-admin-token" && key == "token"),
        "{e}"
    );
    assert!(api.event_reasons().contains(&"ReconcileFailed".to_owned()));
}

#[tokio::test]
async fn status_turns_ready_when_the_workloads_are_ready() {
    let (client, api) = FakeApi::start();
    let ctx = context(client);
    create_space(&api, json!({}));
    reconcile(&api, &ctx).await.expect("create");
    make_ready(&api);

    let action = reconcile(&api, &ctx).await.expect("ready");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let space = stored_space(&api);
    assert_eq!(
        space.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Ready)
    );
    for c in [
        "Ready",
        "RegistryReady",
        "RouterReady",
        "MqttAdapterReady",
        "HttpAdapterReady",
    ] {
        assert_eq!(condition(&space, c).0, "True", "{c}");
    }
    assert_eq!(
        space.status.as_ref().and_then(|s| s.observed_generation),
        Some(1)
    );
    assert!(api.event_reasons().contains(&"Ready".to_owned()));

    // A router replica going away degrades the address space.
    api.edit(&format!("{APPS}/statefulsets/iot-router"), |o| {
        o["status"]["readyReplicas"] = json!(0);
    });
    reconcile(&api, &ctx).await.expect("degraded");
    let space = stored_space(&api);
    assert_eq!(
        space.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Degraded)
    );
    assert_eq!(
        condition(&space, "RouterReady"),
        ("False".into(), "ReplicasNotReady".into())
    );
    assert_eq!(condition(&space, "RegistryReady").0, "True");
}

#[tokio::test]
async fn update_scales_and_a_disabled_adapter_is_deleted() {
    let (client, api) = FakeApi::start();
    let ctx = context(client);
    create_space(&api, json!({}));
    reconcile(&api, &ctx).await.expect("create");
    make_ready(&api);
    reconcile(&api, &ctx).await.expect("ready");
    let mqtt_hash = api
        .get(&format!("{APPS}/deployments/iot-mqtt-adapter"))
        .expect("mqtt")["spec"]["template"]["metadata"]["annotations"]["ferry.dev/config-hash"]
        .clone();
    api.take_calls();

    api.edit(SPACE, |o| {
        o["spec"] = json!({
            "router": {"replicas": 3, "service": {"type": "LoadBalancer"}},
            "adapters": {"http": {"enabled": false}, "mqtt": {"replicas": 2}}
        });
        o["metadata"]["generation"] = json!(2);
    });
    reconcile(&api, &ctx).await.expect("update");
    let calls = api.take_calls_without_events();
    let router = calls
        .iter()
        .find(|c| c.path.ends_with("/statefulsets/iot-router"))
        .expect("router applied");
    assert_eq!(router.body["spec"]["replicas"], 3);
    let service = calls
        .iter()
        .find(|c| c.path.ends_with("/services/iot-router"))
        .expect("router service");
    assert_eq!(service.body["spec"]["type"], "LoadBalancer");
    let deletes: Vec<String> = calls
        .iter()
        .filter(|c| c.method == http::Method::DELETE)
        .map(|c| c.path.clone())
        .filter(|p| !p.contains("iot-nats") && !p.ends_with("/deployments/iot-router"))
        .collect();
    assert_eq!(
        deletes,
        [
            format!("{APPS}/deployments/iot-http-adapter"),
            format!("{NS}/services/iot-http-adapter"),
            format!("{NS}/configmaps/iot-http-adapter-config"),
            format!("{PDB}/iot-registry"),
            format!("{PDB}/iot-http-adapter"),
            format!("{NETPOL}/iot-http-adapter"),
        ]
    );
    // Three routers and two MQTT adapters may lose one pod at a time to a drain.
    for name in ["iot-router", "iot-mqtt-adapter"] {
        let pdb = api
            .get(&format!("{PDB}/{name}"))
            .unwrap_or_else(|| panic!("no budget {name}"));
        assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{name}");
    }
    assert!(api
        .get(&format!("{APPS}/deployments/iot-http-adapter"))
        .is_none());
    let mqtt = api
        .get(&format!("{APPS}/deployments/iot-mqtt-adapter"))
        .expect("mqtt");
    assert_eq!(mqtt["spec"]["replicas"], 2);
    // Scaling is not a config change: no roll.
    assert_eq!(
        mqtt["spec"]["template"]["metadata"]["annotations"]["ferry.dev/config-hash"],
        mqtt_hash
    );

    let space = stored_space(&api);
    assert_eq!(
        condition(&space, "HttpAdapterReady"),
        ("True".into(), "Disabled".into())
    );
    assert_eq!(
        space
            .status
            .as_ref()
            .and_then(|s| s.endpoints.as_ref())
            .and_then(|e| e.http.clone()),
        None
    );
    // The router has 3 wanted, 1 ready (the kubelet has not caught up).
    assert_eq!(condition(&space, "RouterReady").0, "False");
    assert_eq!(
        space.status.as_ref().and_then(|s| s.observed_generation),
        Some(2)
    );

    // Deleting what is already gone is fine.
    reconcile(&api, &ctx).await.expect("idempotent");
}

#[tokio::test]
async fn refused_spec_sets_failed_status_and_applies_nothing() {
    let (client, api) = FakeApi::start();
    let ctx = context(client);
    create_space(&api, json!({"registry": {"replicas": 2}}));
    let action = reconcile(&api, &ctx).await.expect("handled");
    assert_eq!(action, Action::await_change());
    let lines: Vec<String> = api
        .take_calls_without_events()
        .iter()
        .map(|c| c.line())
        .collect();
    assert_eq!(lines, [format!("PATCH {SPACE}/status")]);
    let space = stored_space(&api);
    assert_eq!(
        space.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Failed)
    );
    assert_eq!(
        condition(&space, "Ready"),
        ("False".into(), "InvalidSpec".into())
    );
    assert!(api.event_reasons().contains(&"InvalidSpec".to_owned()));
}

#[tokio::test]
async fn api_failure_is_an_error_with_a_warning_event_and_a_metric() {
    let (client, api) = FakeApi::start();
    let admin = ferry_core::admin::Admin::new();
    let config = Config {
        leader_election: false,
        ..Config::default()
    };
    let ctx = Arc::new(Context::new(client, config, Metrics::new(&admin)));
    create_space(&api, json!({}));
    api.fail(&format!("{APPS}/statefulsets/iot-router"), 500);
    let e = reconcile(&api, &ctx).await.expect_err("apply fails");
    assert!(matches!(e, Error::Kube(_)), "{e}");
    assert_eq!(e.metric_label(), "kube");
    assert!(api.event_reasons().contains(&"ReconcileFailed".to_owned()));
    let action = address_space::error_policy(stored_space(&api), &e, ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    let metrics = admin.encode_metrics();
    assert!(
        metrics.contains(r#"ferry_operator_reconciliations_total{kind="AddressSpace"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"ferry_operator_reconcile_errors_total{kind="AddressSpace",error="kube"} 1"#
        ),
        "{metrics}"
    );
}

#[test]
fn spec_defaults_round_trip() {
    let spec: AddressSpaceSpec = serde_json::from_value(json!({})).expect("empty spec");
    assert_eq!(spec, AddressSpaceSpec::default());
}

/// The calls that wrote something, other than the address space's status.
fn writes(api: &FakeApi) -> Vec<String> {
    api.take_calls_without_events()
        .iter()
        .filter(|c| c.method != http::Method::GET && !c.path.ends_with("/status"))
        .map(|c| c.line())
        .collect()
}

fn ready_condition(space: &AddressSpace) -> (String, String, String) {
    let c = space
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .expect("Ready");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn a_missing_user_secret_holds_everything_back_until_it_exists() {
    let (client, api) = FakeApi::start();
    let ctx = context(client);
    create_space(
        &api,
        json!({"tls": {"secretName": "corp-cert"},
               "registry": {"replicas": 2, "database": {"type": "postgresql", "postgresql": {"secretName": "pg"}}}}),
    );
    let action = reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    assert!(
        api.get(&format!("{NS}/secrets/iot-tls")).is_some(),
        "the internal certificate is generated beside the user's"
    );
    // Only the generated Secrets were written: no workload would mount a Secret nobody checked.
    let written = writes(&api);
    assert!(
        written.iter().all(|l| l == &format!("POST {NS}/secrets")),
        "{written:?}"
    );
    assert!(api
        .get(&format!("{APPS}/deployments/iot-registry"))
        .is_none());
    let space = stored_space(&api);
    assert_eq!(
        space.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Pending)
    );
    let (status, reason, message) = ready_condition(&space);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretMissing")
    );
    assert!(
        message.contains("Secret corp-cert (key tls.crt)"),
        "{message}"
    );
    assert!(message.contains("Secret pg (key url)"), "{message}");
    assert!(api.event_reasons().contains(&"SecretMissing".to_owned()));

    // Once the Secrets exist (made for Ferry), everything is applied and the message is gone.
    api.put(
        &format!("{NS}/secrets/corp-cert"),
        json!({"metadata": {"name": "corp-cert", "namespace": "prod", "labels": {"ferry.dev/allow": "true"}},
        "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}}),
    );
    api.put(
        &format!("{NS}/secrets/pg"),
        json!({"metadata": {"name": "pg", "namespace": "prod", "labels": {"ferry.dev/allow": "true"}},
               "data": {"url": "cG9zdGdyZXM6Ly8="}}),
    );
    reconcile(&api, &ctx).await.expect("reconcile");
    let registry = api
        .get(&format!("{APPS}/deployments/iot-registry"))
        .expect("registry");
    assert_eq!(registry["spec"]["replicas"], 2);
    assert_eq!(
        api.get(&format!("{PDB}/iot-registry")).expect("budget")["spec"]["maxUnavailable"],
        1
    );
    let space = stored_space(&api);
    assert_eq!(ready_condition(&space).1, "ComponentsNotReady");
    assert!(space
        .status
        .as_ref()
        .expect("status")
        .conditions
        .iter()
        .all(|c| !c.message.contains("Secret")));
}

#[tokio::test]
async fn a_user_secret_not_made_for_ferry_refuses_the_address_space() {
    let (client, api) = FakeApi::start();
    let ctx = context(client);
    create_space(&api, json!({"tls": {"secretName": "kube-admin-cert"}}));
    api.put(
        &format!("{NS}/secrets/kube-admin-cert"),
        json!({"metadata": {"name": "kube-admin-cert", "namespace": "prod"},
               "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}}),
    );
    let action = reconcile(&api, &ctx).await.expect("handled");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    assert_eq!(writes(&api), Vec::<String>::new(), "nothing is deployed");
    let space = stored_space(&api);
    assert_eq!(
        space.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Failed)
    );
    let (status, reason, message) = ready_condition(&space);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretNotAllowed")
    );
    assert!(
        message.contains("Secret kube-admin-cert is not allowed for Ferry"),
        "{message}"
    );
    assert!(message.contains("ferry.dev/allow=true"), "{message}");
    assert!(api.event_reasons().contains(&"SecretNotAllowed".to_owned()));

    // Named in the operator's list, it is mounted.
    let listed = Arc::new(Context::new(
        ctx.client.clone(),
        Config {
            allowed_secrets: vec!["prod/kube-admin-cert".into()],
            ..ctx.config.clone()
        },
        Metrics::default(),
    ));
    reconcile(&api, &listed).await.expect("allowed by name");
    let router = api
        .get(&format!("{APPS}/statefulsets/iot-router"))
        .expect("router deployed");
    let volumes = router["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .clone();
    assert!(volumes
        .iter()
        .any(|v| v["secret"]["secretName"] == "kube-admin-cert"));
}

#[tokio::test]
async fn a_generated_secret_name_taken_by_a_foreign_secret_is_refused() {
    let (client, api) = FakeApi::start();
    let ctx = context(client);
    create_space(&api, json!({}));
    // Someone else's Secret where the operator would generate the internal token.
    api.put(
        &format!("{NS}/secrets/iot-internal-token"),
        json!({"metadata": {"name": "iot-internal-token", "namespace": "prod",
                            "ownerReferences": [{"apiVersion": "ferry.dev/v1alpha1", "kind": "AddressSpace",
                                                 "name": "other", "uid": "other-uid", "controller": true}]},
               "data": {"token": "c2VjcmV0"}}),
    );
    reconcile(&api, &ctx).await.expect("handled");
    assert_eq!(
        writes(&api),
        Vec::<String>::new(),
        "nothing generated or deployed"
    );
    let (_, reason, message) = ready_condition(&stored_space(&api));
    assert_eq!(reason, "SecretNotAllowed");
    assert!(message.contains("iot-internal-token"), "{message}");
}

#[tokio::test]
async fn an_image_registry_the_operator_does_not_allow_is_refused() {
    let (client, api) = FakeApi::start();
    let ctx = context(client);
    create_space(
        &api,
        json!({"image": {"registry": "evil.example.com/ferry"}}),
    );
    let action = reconcile(&api, &ctx).await.expect("handled");
    assert_eq!(action, Action::await_change());
    let lines: Vec<String> = api
        .take_calls_without_events()
        .iter()
        .map(|c| c.line())
        .collect();
    assert_eq!(
        lines,
        [format!("PATCH {SPACE}/status")],
        "nothing is deployed"
    );
    let space = stored_space(&api);
    assert_eq!(
        space.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Failed)
    );
    let (status, reason, message) = ready_condition(&space);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ImageRegistryNotAllowed")
    );
    assert!(message.contains("\"evil.example.com/ferry\""), "{message}");
    assert!(message.contains("allowed: ghcr.io/ferry-iot"), "{message}");
    assert!(api
        .event_reasons()
        .contains(&"ImageRegistryNotAllowed".to_owned()));

    // The operator's list lets it through.
    let allowing = Arc::new(Context::new(
        ctx.client.clone(),
        Config {
            allowed_image_registries: vec!["evil.example.com".into()],
            ..ctx.config.clone()
        },
        Metrics::default(),
    ));
    reconcile(&api, &allowing).await.expect("allowed");
    let router = api
        .get(&format!("{APPS}/statefulsets/iot-router"))
        .expect("router");
    assert_eq!(
        router["spec"]["template"]["spec"]["containers"][0]["image"],
        format!(
            "evil.example.com/ferry/ferry-router:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[tokio::test]
async fn network_policies_follow_the_operator_setting() {
    let (client, api) = FakeApi::start();
    let ctx = context(client);
    create_space(&api, json!({}));
    reconcile(&api, &ctx).await.expect("on");
    let registry = api
        .get(&format!("{NETPOL}/iot-registry"))
        .expect("registry policy");
    assert_eq!(registry["spec"]["ingress"][0]["ports"][0]["port"], 28080);
    assert_eq!(
        registry["spec"]["ingress"][0]["from"][1]["namespaceSelector"]["matchLabels"]
            ["kubernetes.io/metadata.name"],
        "default"
    );

    let off = Arc::new(Context::new(
        ctx.client.clone(),
        Config {
            network_policies: false,
            ..ctx.config.clone()
        },
        Metrics::default(),
    ));
    reconcile(&api, &off).await.expect("off");
    for c in ["registry", "router", "mqtt-adapter", "http-adapter"] {
        assert!(
            api.get(&format!("{NETPOL}/iot-{c}")).is_none(),
            "iot-{c} removed"
        );
    }
}
