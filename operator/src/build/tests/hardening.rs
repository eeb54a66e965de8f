//! Disruption budgets, topology spread, rollouts, the plain AMQP port, NetworkPolicies and what the
//! operator allows (image registries, Secrets).

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

/// Whether `selector` selects an object labelled `labels` (matchLabels and the `In` expressions used).
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expression = selector.match_expressions.iter().flatten().all(|e| {
        assert_eq!(e.operator, "In", "only In is used");
        labels
            .get(&e.key)
            .is_some_and(|v| e.values.iter().flatten().any(|w| w == v))
    });
    by_label && by_expression
}

fn template_labels(t: &PodTemplateSpec) -> &BTreeMap<String, String> {
    t.metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .expect("labels")
}

fn templates(d: &Desired) -> Vec<(Component, &PodTemplateSpec)> {
    let mut out = vec![(Component::Router, router_template(d))];
    for (c, name) in [
        (Component::Registry, "iot-registry"),
        (Component::MqttAdapter, "iot-mqtt-adapter"),
        (Component::HttpAdapter, "iot-http-adapter"),
    ] {
        if d.deployments
            .iter()
            .any(|o| o.metadata.name.as_deref() == Some(name))
        {
            out.push((c, template_of_deployment(d, name)));
        }
    }
    out
}

fn postgresql(spec: &mut AddressSpaceSpec, replicas: i32) {
    spec.registry.replicas = replicas;
    spec.registry.database.kind = DatabaseKind::Postgresql;
    spec.registry.database.postgresql = Some(PostgresqlSpec {
        secret_name: "pg".into(),
        key: "url".into(),
    });
}

fn absent_of(d: &Desired, kind: Kind) -> Vec<&str> {
    d.absent
        .iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, n)| n.as_str())
        .collect()
}

#[test]
fn one_replica_gets_no_disruption_budget_and_more_get_max_unavailable_one() {
    let d = build(AddressSpaceSpec::default());
    assert!(d.pod_disruption_budgets.is_empty());
    assert_eq!(
        absent_of(&d, Kind::PodDisruptionBudget),
        [
            "iot-registry",
            "iot-router",
            "iot-mqtt-adapter",
            "iot-http-adapter",
            "iot-nats"
        ],
        "a budget left from a larger scale is removed"
    );

    let mut spec = AddressSpaceSpec::default();
    postgresql(&mut spec, 2);
    spec.router.replicas = 2;
    spec.adapters.mqtt.replicas = 3;
    spec.adapters.http.replicas = 3;
    spec.adapters.http.enabled = false;
    let d = build(spec);
    assert_eq!(
        names_of(&d.pod_disruption_budgets),
        ["iot-registry", "iot-router", "iot-mqtt-adapter"]
    );
    assert_eq!(
        absent_of(&d, Kind::PodDisruptionBudget),
        ["iot-http-adapter", "iot-nats"]
    );
    let templates = templates(&d);
    for pdb in &d.pod_disruption_budgets {
        let spec = pdb.spec.as_ref().expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None, "never blocks a drain for good");
        let selector = spec.selector.as_ref().expect("selector");
        let covered: Vec<Component> = templates
            .iter()
            .filter(|(_, t)| selects(selector, template_labels(t)))
            .map(|(c, _)| *c)
            .collect();
        assert_eq!(
            covered.len(),
            1,
            "{:?} selects {covered:?}",
            pdb.metadata.name
        );
        assert_eq!(
            pdb.metadata.name.as_deref(),
            Some(names::workload("iot", covered[0]).as_str())
        );
    }
}

#[test]
fn every_workload_spreads_softly_over_zones_then_nodes() {
    let mut spec = AddressSpaceSpec::default();
    postgresql(&mut spec, 2);
    let d = build(spec);
    let templates = templates(&d);
    assert_eq!(templates.len(), 4);
    for (component, t) in templates {
        let constraints = pod(t).topology_spread_constraints.as_ref().expect("spread");
        let keys: Vec<&str> = constraints
            .iter()
            .map(|c| c.topology_key.as_str())
            .collect();
        assert_eq!(
            keys,
            ["topology.kubernetes.io/zone", "kubernetes.io/hostname"],
            "{component:?}"
        );
        for c in constraints {
            assert_eq!(c.max_skew, 1);
            assert_eq!(
                c.when_unsatisfiable, "ScheduleAnyway",
                "soft: never unschedulable"
            );
            assert!(selects(
                c.label_selector.as_ref().expect("selector"),
                template_labels(t)
            ));
        }
    }
}

#[test]
fn adapters_and_a_postgresql_registry_roll_one_new_pod_before_an_old_one_goes() {
    let mut spec = AddressSpaceSpec::default();
    postgresql(&mut spec, 2);
    let d = build(spec);
    for name in ["iot-registry", "iot-mqtt-adapter", "iot-http-adapter"] {
        let strategy = deployment(&d, name)
            .spec
            .as_ref()
            .and_then(|s| s.strategy.as_ref())
            .expect("strategy");
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{name}");
        let rolling = strategy.rolling_update.as_ref().expect("rolling update");
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)), "{name}");
        assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)), "{name}");
    }
}

fn service(d: &Desired, name: &str) -> Vec<(String, i32)> {
    d.services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .unwrap_or_else(|| panic!("no service {name}"))
        .iter()
        .map(|p| (p.name.clone().unwrap_or_default(), p.port))
        .collect()
}

#[test]
fn applications_get_amqps_only_unless_plain_amqp_is_on() {
    let d = build(AddressSpaceSpec::default());
    assert_eq!(service(&d, "iot-router"), [("amqps".to_owned(), 5671)]);
    assert_eq!(
        service(&d, "iot-router-internal"),
        [("amqps".to_owned(), 5671)]
    );
    assert_eq!(d.endpoints.amqp, None);
    assert_eq!(
        d.endpoints.amqps.as_deref(),
        Some("iot-router.prod.svc:5671")
    );
    // The adapters reach the router's AMQPS port through the internal Service (they verify the
    // generated certificate), so the plain listener stays on the pod's loopback.
    for c in [Component::MqttAdapter, Component::HttpAdapter] {
        assert!(
            config_of(&d, c).contains("router_address: iot-router-internal.prod.svc:5671"),
            "{}",
            config_of(&d, c)
        );
    }
    assert!(config_of(&d, Component::Router).contains("bind: 127.0.0.1:5672"));

    let mut spec = AddressSpaceSpec::default();
    spec.router.plain_amqp = true;
    spec.router.service.kind = ServiceKind::LoadBalancer;
    let d = build(spec);
    assert_eq!(
        service(&d, "iot-router"),
        [("amqp".to_owned(), 5672), ("amqps".to_owned(), 5671)]
    );
    assert_eq!(
        d.endpoints.amqp.as_deref(),
        Some("iot-router.prod.svc:5672")
    );
    let internal = d
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("iot-router-internal"))
        .and_then(|s| s.spec.as_ref())
        .expect("internal");
    assert_eq!(
        internal.type_.as_deref(),
        Some("ClusterIP"),
        "never a LoadBalancer"
    );
}

#[test]
fn without_adapters_and_plain_amqp_the_plain_listener_is_on_loopback_only() {
    let mut spec = AddressSpaceSpec::default();
    spec.adapters.mqtt.enabled = false;
    spec.adapters.http.enabled = false;
    let d = build(spec.clone());
    let config = config_of(&d, Component::Router);
    let router: ferry_router::Config = load(&config, "FERRY_ROUTER_", vec![]);
    router.validate().expect("router config");
    assert!(router.bind.ip().is_loopback(), "{config}");
    assert_eq!(router.tls_bind.port(), 5671);
    assert!(!router.tls_bind.ip().is_loopback());

    spec.router.plain_amqp = true;
    let router: ferry_router::Config = load(
        &config_of(&build(spec), Component::Router),
        "FERRY_ROUTER_",
        vec![],
    );
    assert!(router.bind.ip().is_unspecified());
}

fn policy<'a>(d: &'a Desired, name: &str) -> &'a NetworkPolicy {
    d.network_policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no NetworkPolicy {name}"))
}

/// The ingress rule that opens `port`.
fn rule_for(p: &NetworkPolicy, port: i32) -> &NetworkPolicyIngressRule {
    let rules: Vec<&NetworkPolicyIngressRule> = p
        .spec
        .as_ref()
        .and_then(|s| s.ingress.as_ref())
        .expect("ingress")
        .iter()
        .filter(|r| {
            r.ports
                .iter()
                .flatten()
                .any(|x| x.port == Some(IntOrString::Int(port)))
        })
        .collect();
    assert_eq!(rules.len(), 1, "port {port} in one rule");
    rules[0]
}

/// The components of this address space whose pods a rule's peers select (pod selector only).
fn own_components(d: &Desired, peers: &[NetworkPolicyPeer]) -> Vec<Component> {
    templates(d)
        .into_iter()
        .filter(|(_, t)| {
            peers.iter().any(|p| {
                p.namespace_selector.is_none()
                    && p.pod_selector
                        .as_ref()
                        .is_some_and(|s| selects(s, template_labels(t)))
            })
        })
        .map(|(c, _)| c)
        .collect()
}

#[test]
fn network_policies_let_only_ferry_reach_internal_ports() {
    let d = build(AddressSpaceSpec::default());
    assert_eq!(
        names_of(&d.network_policies),
        [
            "iot-registry",
            "iot-router",
            "iot-mqtt-adapter",
            "iot-http-adapter"
        ]
    );
    // Embedded mode: no managed NATS, so its policy goes (if one is left from nats mode).
    assert_eq!(absent_of(&d, Kind::NetworkPolicy), ["iot-nats"]);
    // Each policy selects its component's pods, and only those; ingress only.
    for (component, t) in templates(&d) {
        let selecting: Vec<&str> = d
            .network_policies
            .iter()
            .filter(|p| {
                selects(
                    p.spec
                        .as_ref()
                        .and_then(|s| s.pod_selector.as_ref())
                        .expect("pod selector"),
                    template_labels(t),
                )
            })
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        assert_eq!(selecting, [names::workload("iot", component)]);
    }
    for p in &d.network_policies {
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_owned()][..])
        );
        assert!(spec.egress.is_none());
    }

    // Registry: its API from this address space's router and adapters, and the operator's pods.
    let registry = rule_for(policy(&d, "iot-registry"), 28080);
    let from = registry.from.as_ref().expect("restricted");
    assert_eq!(
        own_components(&d, from),
        [
            Component::Router,
            Component::MqttAdapter,
            Component::HttpAdapter
        ]
    );
    let operator = from
        .iter()
        .find(|p| p.namespace_selector.is_some())
        .expect("operator peer");
    assert_eq!(
        operator
            .namespace_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .map(|l| l["kubernetes.io/metadata.name"].as_str()),
        Some("ferry-system")
    );
    assert!(selects(
        operator.pod_selector.as_ref().expect("pods"),
        &BTreeMap::from([
            ("app.kubernetes.io/component".into(), "operator".into()),
            ("app.kubernetes.io/name".into(), "ferry".into())
        ])
    ));
    assert_eq!(from.len(), 2, "nobody else");
    assert!(rule_for(policy(&d, "iot-registry"), 9090).from.is_none());

    // Router: AMQPS for anyone, the plain port for the adapters only.
    let router = policy(&d, "iot-router");
    assert!(rule_for(router, 5671).from.is_none());
    let plain = rule_for(router, 5672).from.as_ref().expect("restricted");
    assert_eq!(
        own_components(&d, plain),
        [Component::MqttAdapter, Component::HttpAdapter]
    );
    assert_eq!(plain.len(), 1);
    // Devices reach the adapters.
    for port in [1883, 8883] {
        assert!(rule_for(policy(&d, "iot-mqtt-adapter"), port)
            .from
            .is_none());
    }
    for port in [8080, 8443] {
        assert!(rule_for(policy(&d, "iot-http-adapter"), port)
            .from
            .is_none());
    }
}

#[test]
fn plain_amqp_opens_the_plain_port_and_a_disabled_adapter_loses_its_policy() {
    let mut spec = AddressSpaceSpec::default();
    spec.router.plain_amqp = true;
    spec.adapters.http.enabled = false;
    let d = build(spec);
    assert!(rule_for(policy(&d, "iot-router"), 5672).from.is_none());
    assert_eq!(
        names_of(&d.network_policies),
        ["iot-registry", "iot-router", "iot-mqtt-adapter"]
    );
    assert_eq!(
        absent_of(&d, Kind::NetworkPolicy),
        ["iot-http-adapter", "iot-nats"]
    );
}

#[test]
fn without_network_policies_none_is_built_and_old_ones_are_removed() {
    let mut defaults = defaults();
    defaults.network_policies = None;
    let d = address_space(&space(AddressSpaceSpec::default()), &defaults).expect("builds");
    assert!(d.network_policies.is_empty());
    assert_eq!(
        absent_of(&d, Kind::NetworkPolicy),
        [
            "iot-registry",
            "iot-router",
            "iot-mqtt-adapter",
            "iot-http-adapter",
            "iot-nats"
        ]
    );
}

#[test]
fn images_only_come_from_allowed_registries() {
    for (registry, ok) in [
        ("ghcr.io/ferry-iot", true),
        ("ghcr.io/ferry-iot/", true),
        ("ghcr.io/ferry-iot/mirror", true),
        ("registry.example.com/iot", true),
        ("registry.example.com/iot/ferry", true),
        ("registry.example.com/iot-x", false),
        ("registry.example.com", false),
        ("ghcr.io", false),
        ("evil.example/ferry-iot", false),
    ] {
        let mut spec = AddressSpaceSpec::default();
        spec.image.registry = Some(registry.into());
        match address_space(&space(spec), &defaults()) {
            Ok(d) if ok => {
                let image = pod(router_template(&d)).containers[0].image.clone();
                assert!(
                    image
                        .as_deref()
                        .is_some_and(|i| i.starts_with(registry.trim_end_matches('/'))),
                    "{registry}: {image:?}"
                );
            }
            Err(BuildError::NotAllowed { reason, message }) if !ok => {
                assert_eq!(reason, "ImageRegistryNotAllowed");
                assert!(message.contains(registry), "{message}");
                assert!(
                    message.contains("ghcr.io/ferry-iot, registry.example.com/iot"),
                    "{message}"
                );
            }
            other => panic!("{registry}: {other:?}"),
        }
    }
    let refused = BuildError::NotAllowed {
        reason: "ImageRegistryNotAllowed",
        message: String::new(),
    };
    assert_eq!(refused.refusal_reason(), Some("ImageRegistryNotAllowed"));
    assert_eq!(
        BuildError::InvalidSpec(String::new()).refusal_reason(),
        Some("InvalidSpec")
    );
    assert_eq!(BuildError::MissingMetadata("uid").refusal_reason(), None);
}

#[test]
fn only_secrets_made_for_ferry_may_be_mounted() {
    use super::policy::{secret_allowed, ALLOW_LABEL};
    let meta = |labels: &[(&str, &str)], owner: Option<(&str, bool)>| ObjectMeta {
        name: Some("corp-cert".into()),
        namespace: Some("prod".into()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        owner_references: owner.map(|(uid, controller)| {
            vec![OwnerReference {
                uid: uid.into(),
                controller: Some(controller),
                ..OwnerReference::default()
            }]
        }),
        ..ObjectMeta::default()
    };
    let none: &[String] = &[];
    assert!(secret_allowed(&meta(&[(ALLOW_LABEL, "true")], None), "uid-1", none).is_ok());
    let why =
        secret_allowed(&meta(&[(ALLOW_LABEL, "yes")], None), "uid-1", none).expect_err("not true");
    assert!(why.contains("Secret corp-cert is not allowed"), "{why}");
    assert!(why.contains("ferry.dev/allow=true"), "{why}");
    assert!(why.contains("security.allowedSecrets"), "{why}");
    assert!(secret_allowed(&meta(&[], None), "uid-1", none).is_err());
    // Generated by the operator for this address space: its controller owner.
    assert!(secret_allowed(&meta(&[], Some(("uid-1", true))), "uid-1", none).is_ok());
    assert!(secret_allowed(&meta(&[], Some(("uid-2", true))), "uid-1", none).is_err());
    assert!(secret_allowed(&meta(&[], Some(("uid-1", false))), "uid-1", none).is_err());
    // Named in the operator's list.
    for (entry, ok) in [
        ("prod/corp-cert", true),
        ("corp-cert", true),
        ("staging/corp-cert", false),
        ("prod/other", false),
    ] {
        assert_eq!(
            secret_allowed(&meta(&[], None), "uid-1", &[entry.to_owned()]).is_ok(),
            ok,
            "{entry}"
        );
    }
}
