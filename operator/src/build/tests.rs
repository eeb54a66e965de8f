// Specs are built by changing a default field by field, the way a user edits YAML.
#![allow(clippy::field_reassign_with_default)]

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;

use super::secrets::SecretKind;
use super::*;
use crate::crd::{
    AddressSpaceSpec, DatabaseKind, PostgresqlSpec, PullPolicy, ServiceKind, TlsSpec,
};

fn space(spec: AddressSpaceSpec) -> AddressSpace {
    let mut s = AddressSpace::new("iot", spec);
    s.metadata = ObjectMeta {
        name: Some("iot".into()),
        namespace: Some("prod".into()),
        uid: Some("0c3f-uid".into()),
        generation: Some(1),
        ..ObjectMeta::default()
    };
    s
}

fn defaults() -> Defaults {
    Defaults {
        image_registry: "ghcr.io/ferry-iot".into(),
        image_tag: "0.1.0".into(),
        allowed_image_registries: vec!["registry.example.com/iot".into()],
        network_policies: Some(OperatorPods {
            namespace: "ferry-system".into(),
            labels: BTreeMap::from([("app.kubernetes.io/component".into(), "operator".into())]),
        }),
        nats_image: DEFAULT_NATS_IMAGE.into(),
    }
}

fn build(spec: AddressSpaceSpec) -> Desired {
    address_space(&space(spec), &defaults()).expect("builds")
}

fn deployment<'a>(d: &'a Desired, name: &str) -> &'a Deployment {
    d.deployments
        .iter()
        .find(|o| o.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no deployment {name}"))
}

fn template_of_deployment<'a>(d: &'a Desired, name: &str) -> &'a PodTemplateSpec {
    &deployment(d, name).spec.as_ref().expect("spec").template
}

fn router_template(d: &Desired) -> &PodTemplateSpec {
    &d.stateful_sets[0].spec.as_ref().expect("spec").template
}

fn pod(t: &PodTemplateSpec) -> &PodSpec {
    t.spec.as_ref().expect("pod spec")
}

fn hash(t: &PodTemplateSpec) -> String {
    t.metadata
        .as_ref()
        .expect("meta")
        .annotations
        .as_ref()
        .expect("annotations")[CONFIG_HASH_ANNOTATION]
        .clone()
}

fn env_names(t: &PodTemplateSpec) -> Vec<String> {
    pod(t).containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect()
}

fn config_of(d: &Desired, component: Component) -> String {
    let name = names::config("iot", component);
    d.config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(name.as_str()))
        .and_then(|c| c.data.as_ref())
        .map(|data| data[CONFIG_KEY].clone())
        .unwrap_or_else(|| panic!("no config map {name}"))
}

fn names_of<T: kube::Resource>(objects: &[T]) -> Vec<String> {
    objects
        .iter()
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .collect()
}

#[test]
fn default_spec_builds_every_component_on_sqlite_with_generated_tls() {
    let d = build(AddressSpaceSpec::default());
    assert_eq!(
        names_of(&d.config_maps),
        [
            "iot-registry-config",
            "iot-router-config",
            "iot-mqtt-adapter-config",
            "iot-http-adapter-config"
        ]
    );
    assert_eq!(names_of(&d.pvcs), ["iot-registry-data"]);
    assert_eq!(
        names_of(&d.services),
        [
            "iot-registry",
            "iot-router",
            "iot-router-internal",
            "iot-router-headless",
            "iot-mqtt-adapter",
            "iot-http-adapter"
        ]
    );
    assert_eq!(
        names_of(&d.deployments),
        ["iot-registry", "iot-mqtt-adapter", "iot-http-adapter"]
    );
    assert_eq!(names_of(&d.stateful_sets), ["iot-router"]);
    assert_eq!(
        secret_names(&d),
        [
            "iot-admin-token",
            "iot-internal-token",
            "iot-signing-key",
            "iot-adapter-credentials",
            "iot-tls"
        ]
    );
    // One replica each: no disruption budgets (and any left from a larger scale go); embedded mode:
    // no managed NATS and no router Deployment (left from nats mode).
    assert!(d
        .absent
        .iter()
        .all(|(kind, name)| *kind == Kind::PodDisruptionBudget
            || name.starts_with("iot-nats")
            || (*kind, name.as_str()) == (Kind::Deployment, "iot-router")));
    assert!(d.referenced.is_empty());
    assert_eq!(d.admin_token_secret, "iot-admin-token");
    assert_eq!(
        d.endpoints,
        Endpoints {
            registry: Some("iot-registry.prod.svc:28080".into()),
            amqp: None,
            amqps: Some("iot-router.prod.svc:5671".into()),
            mqtt: Some("iot-mqtt-adapter.prod.svc:1883".into()),
            mqtts: Some("iot-mqtt-adapter.prod.svc:8883".into()),
            http: Some("iot-http-adapter.prod.svc:8080".into()),
            https: Some("iot-http-adapter.prod.svc:8443".into()),
        }
    );
    // SQLite: the registry's data is the PVC, one replica, replaced rather than rolled.
    let registry = deployment(&d, "iot-registry").spec.as_ref().expect("spec");
    assert_eq!(registry.replicas, Some(1));
    assert_eq!(
        registry.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate")
    );
    let volumes = pod(&registry.template).volumes.as_ref().expect("volumes");
    let data = volumes
        .iter()
        .find(|v| v.name == "data")
        .expect("data volume");
    assert_eq!(
        data.persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str()),
        Some("iot-registry-data")
    );
    assert!(!env_names(&registry.template).contains(&"FERRY_REGISTRY_DATABASE_URL".to_owned()));
    let pvc = d.pvcs[0].spec.as_ref().expect("pvc spec");
    assert_eq!(
        pvc.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .map(|r| r["storage"].0.as_str()),
        Some("1Gi")
    );
    assert_eq!(pvc.storage_class_name, None);
    // The router and adapters mount the generated certificate.
    for t in [
        router_template(&d),
        template_of_deployment(&d, "iot-mqtt-adapter"),
        template_of_deployment(&d, "iot-http-adapter"),
    ] {
        let tls = pod(t)
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "tls")
            .and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.clone());
        assert_eq!(tls.as_deref(), Some("iot-tls"));
    }
}

#[test]
fn postgresql_registry_reads_its_url_from_the_secret_and_scales() {
    let mut spec = AddressSpaceSpec::default();
    spec.registry.replicas = 3;
    spec.registry.database.kind = DatabaseKind::Postgresql;
    spec.registry.database.postgresql = Some(PostgresqlSpec {
        secret_name: "pg".into(),
        key: "dsn".into(),
    });
    let d = build(spec);
    assert!(d.pvcs.is_empty());
    assert_eq!(d.referenced, [("pg".to_owned(), "dsn".to_owned())]);
    let registry = deployment(&d, "iot-registry").spec.as_ref().expect("spec");
    assert_eq!(registry.replicas, Some(3));
    assert_eq!(
        registry.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("RollingUpdate")
    );
    // A file from the Secret (messaging.rs checks the mount), never the environment.
    assert!(env_names(&registry.template).is_empty());
    let config: serde_json::Value =
        serde_saphyr::from_str(&config_of(&d, Component::Registry)).expect("yaml");
    assert_eq!(
        config["database_url_file"],
        "/etc/ferry/secrets/database-url"
    );
    let data = pod(&registry.template)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "data")
        .expect("data");
    assert!(
        data.empty_dir.is_some(),
        "PostgreSQL needs no volume of its own"
    );
}

#[test]
fn given_tls_secret_serves_the_endpoints_and_the_generated_one_the_internal_links() {
    let mut spec = AddressSpaceSpec::default();
    spec.tls = Some(TlsSpec {
        secret_name: "corp-cert".into(),
        ca_key: None,
    });
    let d = build(spec);
    assert_eq!(
        d.referenced,
        [
            ("corp-cert".to_owned(), "tls.crt".to_owned()),
            ("corp-cert".to_owned(), "tls.key".to_owned())
        ]
    );
    // The address space's own certificate and CA are still generated: the registry and NATS use them.
    assert!(secret_names(&d).contains(&"iot-tls"));
    let tls = pod(router_template(&d))
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "tls")
        .and_then(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.clone());
    assert_eq!(tls.as_deref(), Some("corp-cert"));
    // Switching certificates rolls the pods.
    let generated = build(AddressSpaceSpec::default());
    assert_ne!(hash(router_template(&d)), hash(router_template(&generated)));
}

#[test]
fn disabled_adapter_has_no_objects_and_is_listed_for_deletion() {
    let mut spec = AddressSpaceSpec::default();
    spec.adapters.mqtt.enabled = false;
    let d = build(spec);
    assert_eq!(
        names_of(&d.deployments),
        ["iot-registry", "iot-http-adapter"]
    );
    assert!(!names_of(&d.services).contains(&"iot-mqtt-adapter".to_owned()));
    assert!(!names_of(&d.config_maps).contains(&"iot-mqtt-adapter-config".to_owned()));
    let absent: Vec<_> = d
        .absent
        .iter()
        .filter(|(kind, name)| {
            *kind != Kind::PodDisruptionBudget
                && !name.starts_with("iot-nats")
                && name != "iot-router"
        })
        .cloned()
        .collect();
    assert_eq!(
        absent,
        [
            (Kind::Deployment, "iot-mqtt-adapter".to_owned()),
            (Kind::Service, "iot-mqtt-adapter".to_owned()),
            (Kind::ConfigMap, "iot-mqtt-adapter-config".to_owned()),
            (Kind::NetworkPolicy, "iot-mqtt-adapter".to_owned()),
        ]
    );
    assert_eq!(d.endpoints.mqtt, None);
    assert_eq!(d.endpoints.mqtts, None);
    assert!(d.endpoints.http.is_some());

    let mut spec = AddressSpaceSpec::default();
    spec.adapters.http.enabled = false;
    let d = build(spec);
    assert_eq!(
        names_of(&d.deployments),
        ["iot-registry", "iot-mqtt-adapter"]
    );
    assert_eq!(
        d.absent
            .iter()
            .filter(|(kind, name)| *kind != Kind::PodDisruptionBudget
                && name.starts_with("iot-http-adapter"))
            .count(),
        4
    );
    assert_eq!(d.endpoints.https, None);
}

#[test]
fn service_types_and_replicas_follow_the_spec() {
    let mut spec = AddressSpaceSpec::default();
    spec.router.service.kind = ServiceKind::LoadBalancer;
    spec.router.replicas = 3;
    spec.adapters.mqtt.service.kind = ServiceKind::NodePort;
    spec.adapters.mqtt.replicas = 4;
    spec.adapters.http.replicas = 0;
    let d = build(spec);
    let service_type = |name: &str| {
        d.services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.type_.clone())
            .unwrap_or_default()
    };
    assert_eq!(service_type("iot-router"), "LoadBalancer");
    assert_eq!(service_type("iot-mqtt-adapter"), "NodePort");
    assert_eq!(service_type("iot-http-adapter"), "ClusterIP");
    assert_eq!(service_type("iot-registry"), "ClusterIP");
    let headless = d
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("iot-router-headless"))
        .and_then(|s| s.spec.as_ref())
        .expect("headless");
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    let router = d.stateful_sets[0].spec.as_ref().expect("spec");
    assert_eq!(router.replicas, Some(3));
    assert_eq!(router.service_name.as_deref(), Some("iot-router-headless"));
    let claims = router.volume_claim_templates.as_ref().expect("claims");
    assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
    let replicas = |name: &str| deployment(&d, name).spec.as_ref().and_then(|s| s.replicas);
    assert_eq!(replicas("iot-mqtt-adapter"), Some(4));
    assert_eq!(replicas("iot-http-adapter"), Some(0));
    // Service ports point at named container ports.
    let mqtt = d
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("iot-mqtt-adapter"))
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.clone())
        .expect("ports");
    let container_ports: Vec<String> = pod(template_of_deployment(&d, "iot-mqtt-adapter"))
        .containers[0]
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone())
        .collect();
    for p in &mqtt {
        assert!(container_ports.contains(p.name.as_ref().expect("port name")));
    }
    assert_eq!(
        mqtt.iter().map(|p| p.port).collect::<Vec<_>>(),
        [1883, 8883]
    );
}

#[test]
fn storage_size_and_class_reach_the_claims() {
    let mut spec = AddressSpaceSpec::default();
    spec.router.storage.size = "20Gi".into();
    spec.router.storage.storage_class_name = Some("fast".into());
    spec.registry.database.storage.size = "5Gi".into();
    let d = build(spec);
    let claim = &d.stateful_sets[0]
        .spec
        .as_ref()
        .expect("spec")
        .volume_claim_templates
        .as_ref()
        .expect("claims")[0];
    let claim = claim.spec.as_ref().expect("claim spec");
    assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        claim
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .map(|r| r["storage"].0.clone()),
        Some("20Gi".to_owned())
    );
    let pvc = d.pvcs[0].spec.as_ref().expect("pvc");
    assert_eq!(
        pvc.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .map(|r| r["storage"].0.clone()),
        Some("5Gi".to_owned())
    );
}

#[test]
fn resources_default_to_requests_and_follow_the_spec() {
    let d = build(AddressSpaceSpec::default());
    for t in [
        router_template(&d),
        template_of_deployment(&d, "iot-registry"),
    ] {
        let r = pod(t).containers[0].resources.as_ref().expect("resources");
        let requests = r.requests.as_ref().expect("requests");
        assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
        assert!(r.limits.is_none());
    }
    let mut spec = AddressSpaceSpec::default();
    let given = ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".to_owned(), Quantity("2".into()))])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("1Gi".into()),
        )])),
        ..ResourceRequirements::default()
    };
    spec.router.resources = Some(given.clone());
    spec.adapters.http.resources = Some(given.clone());
    let d = build(spec);
    assert_eq!(
        pod(router_template(&d)).containers[0].resources.as_ref(),
        Some(&given)
    );
    assert_eq!(
        pod(template_of_deployment(&d, "iot-http-adapter")).containers[0]
            .resources
            .as_ref(),
        Some(&given)
    );
    assert_ne!(
        pod(template_of_deployment(&d, "iot-mqtt-adapter")).containers[0]
            .resources
            .as_ref(),
        Some(&given)
    );
}

#[test]
fn config_hash_changes_with_the_config_and_only_then() {
    let a = build(AddressSpaceSpec::default());
    let b = build(AddressSpaceSpec::default());
    for (x, y) in [
        (router_template(&a), router_template(&b)),
        (
            template_of_deployment(&a, "iot-registry"),
            template_of_deployment(&b, "iot-registry"),
        ),
    ] {
        assert_eq!(hash(x), hash(y));
    }
    // Scaling does not touch the config: no roll.
    let mut spec = AddressSpaceSpec::default();
    spec.router.replicas = 2;
    spec.adapters.mqtt.replicas = 5;
    let scaled = build(spec);
    assert_eq!(hash(router_template(&a)), hash(router_template(&scaled)));
    assert_eq!(
        hash(template_of_deployment(&a, "iot-mqtt-adapter")),
        hash(template_of_deployment(&scaled, "iot-mqtt-adapter"))
    );
    // The same spec in another namespace has other addresses in its configs.
    let mut other = space(AddressSpaceSpec::default());
    other.metadata.namespace = Some("staging".into());
    let moved = address_space(&other, &defaults()).expect("builds");
    assert_ne!(hash(router_template(&a)), hash(router_template(&moved)));
    assert_ne!(
        hash(template_of_deployment(&a, "iot-mqtt-adapter")),
        hash(template_of_deployment(&moved, "iot-mqtt-adapter"))
    );
    assert_eq!(config_hash("x"), config_hash("x"));
    assert_ne!(config_hash("x"), config_hash("y"));
}

#[test]
fn every_pod_is_locked_down_and_probed_on_its_admin_port() {
    let d = build(AddressSpaceSpec::default());
    let mut templates: Vec<&PodTemplateSpec> = d
        .deployments
        .iter()
        .map(|o| &o.spec.as_ref().expect("spec").template)
        .collect();
    templates.push(router_template(&d));
    assert_eq!(templates.len(), 4);
    for t in templates {
        let p = pod(t);
        assert_eq!(p.enable_service_links, Some(false));
        assert_eq!(p.automount_service_account_token, Some(false));
        let sc = p.security_context.as_ref().expect("pod security");
        assert_eq!(
            sc.fs_group,
            Some(65532),
            "Secret files are group-readable for the runtime user"
        );
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.run_as_user, Some(65532));
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        let c = &p.containers[0];
        let csc = c.security_context.as_ref().expect("container security");
        assert_eq!(csc.read_only_root_filesystem, Some(true));
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        assert_eq!(
            csc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        let admin = c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("admin"))
            .expect("admin port");
        assert_eq!(admin.container_port, ports::ADMIN);
        for (probe, path) in [(&c.liveness_probe, "/live"), (&c.readiness_probe, "/ready")] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .expect("probe");
            assert_eq!(get.path.as_deref(), Some(path));
        }
        // /tmp is writable, the config is mounted where --config points.
        let mounts = c.volume_mounts.as_ref().expect("mounts");
        assert!(mounts.iter().any(|m| m.mount_path == "/tmp"));
        assert!(mounts.iter().any(|m| m.mount_path == pod::CONFIG_PATH));
        assert_eq!(
            c.args.as_deref(),
            Some(&["--config".to_owned(), pod::CONFIG_PATH.to_owned()][..])
        );
    }
}

#[test]
fn every_object_is_owned_by_the_address_space_and_labelled() {
    let d = build(AddressSpaceSpec::default());
    let mut metas: Vec<&ObjectMeta> = Vec::new();
    metas.extend(d.config_maps.iter().map(|o| &o.metadata));
    metas.extend(d.pvcs.iter().map(|o| &o.metadata));
    metas.extend(d.services.iter().map(|o| &o.metadata));
    metas.extend(d.deployments.iter().map(|o| &o.metadata));
    metas.extend(d.stateful_sets.iter().map(|o| &o.metadata));
    for s in &d.secrets {
        let secret = s.generate().expect("generate");
        assert_eq!(secret.metadata.name.as_deref(), Some(s.name.as_str()));
        assert!(secret.metadata.owner_references.is_some());
    }
    for m in metas {
        let owners = m.owner_references.as_ref().expect("owner");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "AddressSpace");
        assert_eq!(owners[0].name, "iot");
        assert_eq!(owners[0].uid, "0c3f-uid");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(m.namespace.as_deref(), Some("prod"));
        let labels = m.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/instance"], "iot");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "ferry-operator");
    }
    // Selectors match the pod labels.
    for dep in &d.deployments {
        let spec = dep.spec.as_ref().expect("spec");
        let selector = spec.selector.match_labels.as_ref().expect("selector");
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .expect("labels");
        for (k, v) in selector {
            assert_eq!(labels.get(k), Some(v));
        }
    }
}

#[test]
fn images_come_from_the_spec_or_the_operator_defaults() {
    let d = build(AddressSpaceSpec::default());
    let image = |d: &Desired| {
        pod(router_template(d)).containers[0]
            .image
            .clone()
            .unwrap_or_default()
    };
    assert_eq!(image(&d), "ghcr.io/ferry-iot/ferry-router:0.1.0");
    assert_eq!(
        pod(template_of_deployment(&d, "iot-http-adapter")).containers[0]
            .image
            .as_deref(),
        Some("ghcr.io/ferry-iot/ferry-http-adapter:0.1.0")
    );
    let mut spec = AddressSpaceSpec::default();
    spec.image.registry = Some("registry.local:5000/ferry/".into());
    spec.image.tag = Some("dev".into());
    spec.image.pull_policy = PullPolicy::Always;
    let allowing = Defaults {
        allowed_image_registries: vec!["registry.local:5000/ferry".into()],
        ..defaults()
    };
    let d = address_space(&space(spec), &allowing).expect("an allowed registry");
    assert_eq!(image(&d), "registry.local:5000/ferry/ferry-router:dev");
    assert_eq!(
        pod(router_template(&d)).containers[0]
            .image_pull_policy
            .as_deref(),
        Some("Always")
    );
    assert_eq!(
        pod(router_template(&d)).containers[0].command,
        Some(vec!["/usr/local/bin/ferry-router".to_owned()])
    );
}

#[test]
fn invalid_specs_are_refused_with_the_reason() {
    let mut spec = AddressSpaceSpec::default();
    spec.registry.replicas = 2;
    let e = address_space(&space(spec), &defaults()).expect_err("sqlite with 2 replicas");
    assert!(
        matches!(&e, BuildError::InvalidSpec(m) if m.contains("SQLite")),
        "{e}"
    );

    let mut spec = AddressSpaceSpec::default();
    spec.registry.database.kind = DatabaseKind::Postgresql;
    let e = address_space(&space(spec), &defaults()).expect_err("postgresql without secret");
    assert!(
        matches!(&e, BuildError::InvalidSpec(m) if m.contains("secretName")),
        "{e}"
    );

    let mut spec = AddressSpaceSpec::default();
    spec.adapters.mqtt.replicas = -1;
    assert!(address_space(&space(spec), &defaults()).is_err());

    let mut s = space(AddressSpaceSpec::default());
    s.metadata.name = Some("x".repeat(41));
    assert!(matches!(
        address_space(&s, &defaults()),
        Err(BuildError::InvalidSpec(_))
    ));

    let mut s = space(AddressSpaceSpec::default());
    s.metadata.uid = None;
    assert_eq!(
        address_space(&s, &defaults()).expect_err("no uid"),
        BuildError::MissingMetadata("uid")
    );
}

#[test]
fn generated_secrets_hold_what_the_components_read() {
    let d = build(AddressSpaceSpec::default());
    let find = |kind: SecretKind| d.secrets.iter().find(|s| s.kind == kind).expect("secret");
    let text = |s: &k8s_openapi::api::core::v1::Secret, k: &str| {
        String::from_utf8(s.data.as_ref().expect("data")[k].0.clone()).expect("utf-8")
    };
    let key = find(SecretKind::SigningKey).generate().expect("key");
    let seed = text(&key, "signing.key");
    assert!(seed.starts_with("ed25519:"));
    ferry_core::assertion::SigningKey::from_seed_b64(seed.trim()).expect("the registry reads it");

    let a = find(SecretKind::AdminToken).generate().expect("token");
    let b = find(SecretKind::AdminToken).generate().expect("token");
    assert_ne!(text(&a, "token"), text(&b, "token"), "tokens are random");
    assert!(text(&a, "token").len() >= 40);

    let creds = find(SecretKind::AdapterCredentials)
        .generate()
        .expect("creds");
    assert_eq!(text(&creds, "username"), router::ADAPTER_USER);

    let tls = find(SecretKind::Tls);
    assert!(tls.sans().contains(&"iot-router.prod.svc".to_owned()));
    assert!(tls.sans().contains(&"iot-mqtt-adapter".to_owned()));
    assert!(tls
        .sans()
        .contains(&"*.iot-router-headless.prod.svc".to_owned()));
    let secret = tls.generate().expect("certificate");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert!(text(&secret, "tls.crt").starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(text(&secret, "tls.key").contains("PRIVATE KEY"));
    for s in &d.secrets {
        let generated = s.generate().expect("generate");
        let data = generated.data.as_ref().expect("data");
        for k in s.keys() {
            assert!(data.contains_key(*k), "{} lacks {k}", s.name);
        }
    }
}

/// What a pod's environment holds: field refs get the pod name (no pod has a Secret in its
/// environment: `every_internal_link_is_on_tls_with_secrets_from_files`).
fn pod_env(t: &PodTemplateSpec) -> Vec<(String, String)> {
    pod(t).containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| {
            let v = match e.value_from.as_ref() {
                Some(f) if f.field_ref.is_some() => "iot-mqtt-adapter-7d9f-x2k4q".to_owned(),
                Some(other) => panic!("{}: not from the pod's fields: {other:?}", e.name),
                None => e.value.clone().unwrap_or_default(),
            };
            (e.name.clone(), v)
        })
        .collect()
}

/// Loads a rendered config as the component does: file, then env.
fn load<T>(config: &str, prefix: &str, env: Vec<(String, String)>) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned + Default,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).expect("write");
    let sources = ferry_core::config::Sources {
        file: Some(path),
        env_prefix: prefix.to_owned(),
        env,
        ..Default::default()
    };
    ferry_core::config::load(&sources).unwrap_or_else(|e| panic!("{prefix}: {e}\n{config}"))
}

#[test]
fn every_rendered_config_is_accepted_by_its_component() {
    let mut spec = AddressSpaceSpec::default();
    spec.registry.database.kind = DatabaseKind::Postgresql;
    spec.registry.database.postgresql = Some(PostgresqlSpec {
        secret_name: "pg".into(),
        key: "url".into(),
    });
    for d in [build(AddressSpaceSpec::default()), build(spec)] {
        let registry: ferry_registry::Config = load(
            &config_of(&d, Component::Registry),
            "FERRY_REGISTRY_",
            pod_env(template_of_deployment(&d, "iot-registry")),
        );
        registry.validate().expect("registry config");
        assert_eq!(
            registry.admin_bind.map(|a| a.port()),
            Some(ports::ADMIN as u16)
        );
        assert_eq!(registry.bind.port(), ports::REGISTRY as u16);
        assert!(registry.signing_key_file.is_some() && registry.admin_token_file.is_some());

        let router: ferry_router::Config = load(
            &config_of(&d, Component::Router),
            "FERRY_ROUTER_",
            pod_env(router_template(&d)),
        );
        router.validate().expect("router config");
        assert_eq!(
            router.admin_bind.map(|a| a.port()),
            Some(ports::ADMIN as u16)
        );
        assert_eq!(router.registry_url, "https://iot-registry.prod.svc:28080");
        let file = |f: &Option<std::path::PathBuf>| f.as_ref().map(|p| p.display().to_string());
        assert_eq!(
            file(&router.registry_token_file).as_deref(),
            Some("/etc/ferry/secrets/registry-token")
        );
        assert_eq!(
            file(&router.adapter_password_file).as_deref(),
            Some("/etc/ferry/secrets/adapter-password")
        );
        assert!(router.tls.cert_path.is_some());

        let mqtt: ferry_mqtt_adapter::Config = load(
            &config_of(&d, Component::MqttAdapter),
            "FERRY_MQTT_",
            pod_env(template_of_deployment(&d, "iot-mqtt-adapter")),
        );
        mqtt.validate().expect("mqtt config");
        assert_eq!(mqtt.admin_bind.map(|a| a.port()), Some(ports::ADMIN as u16));
        // AMQPS: the generated certificate's CA is the adapters' to verify it with.
        assert_eq!(
            mqtt.adapter.router_address,
            "iot-router-internal.prod.svc:5671"
        );
        assert_eq!(mqtt.adapter.router_user, router.adapter_user);
        assert_eq!(mqtt.adapter.instance_id, "iot-mqtt-adapter-7d9f-x2k4q");
        assert_eq!(mqtt.bind.port(), 1883);

        let http: ferry_http_adapter::Config = load(
            &config_of(&d, Component::HttpAdapter),
            "FERRY_HTTP_",
            pod_env(template_of_deployment(&d, "iot-http-adapter")),
        );
        http.validate().expect("http config");
        assert_eq!(http.admin_bind.map(|a| a.port()), Some(ports::ADMIN as u16));
        assert_eq!(http.tls_bind.port(), 8443);
        assert_eq!(
            file(&http.adapter.router_password_file).as_deref(),
            Some("/etc/ferry/secrets/router-password")
        );
    }
}

mod hardening;
mod messaging;

mod tenant_body {
    use crate::build::tenant::{is_owned_by, is_up_to_date, registry_tenant, OWNER_EXT};
    use crate::crd::{
        ApplicationSpec, KeyAlgorithmSpec, ResourceLimitsSpec, Tenant, TenantAdapter,
        TenantAdapterType, TenantSpec, TrustedCaSpec,
    };
    use kube::api::ObjectMeta;
    use serde_json::json;

    fn tenant(spec: TenantSpec) -> Tenant {
        let mut t = Tenant::new("acme", spec);
        t.metadata = ObjectMeta {
            name: Some("acme".into()),
            namespace: Some("prod".into()),
            uid: Some("uid-1".into()),
            ..ObjectMeta::default()
        };
        t
    }

    fn spec() -> TenantSpec {
        TenantSpec {
            address_space: "iot".into(),
            enabled: true,
            ..TenantSpec::default()
        }
    }

    #[test]
    fn minimal_tenant_is_enabled_on_every_adapter_and_marked_as_ours() {
        let t = tenant(spec());
        assert_eq!(t.registry_tenant_id(), "acme");
        let body = registry_tenant(&t).expect("valid");
        assert!(body.enabled);
        assert!(body.adapters.is_none(), "no list = every adapter");
        assert_eq!(body.ext[OWNER_EXT], "prod/acme");
        assert!(is_owned_by(&body, &t));
        let mut other = tenant(spec());
        other.metadata.namespace = Some("dev".into());
        assert!(!is_owned_by(&body, &other));
    }

    #[test]
    fn spec_fields_map_to_hono_tenant_fields() {
        let mut s = spec();
        s.tenant_id = Some("ACME_1".into());
        s.enabled = false;
        s.adapters = vec![TenantAdapter {
            kind: TenantAdapterType::Http,
            enabled: true,
            device_authentication_required: false,
        }];
        s.resource_limits = Some(ResourceLimitsSpec {
            max_connections: 100,
            max_ttl: 60,
            max_ttd: 30,
            max_stored_events: 500,
            max_stored_event_bytes: -1,
        });
        s.defaults = Some(
            json!({"ttl": 30, "content-type": "text/plain"})
                .as_object()
                .cloned()
                .expect("object"),
        );
        s.applications = vec![ApplicationSpec {
            name: "dashboard".into(),
        }];
        let t = tenant(s);
        assert_eq!(t.registry_tenant_id(), "ACME_1");
        let body = serde_json::to_value(registry_tenant(&t).expect("valid")).expect("json");
        assert_eq!(body["enabled"], false);
        assert_eq!(body["defaults"]["ttl"], 30);
        assert_eq!(body["resource-limits"]["max-connections"], 100);
        assert_eq!(body["resource-limits"]["max-ttl"], 60);
        assert_eq!(body["resource-limits"]["max-stored-events"], 500);
        assert!(
            body["resource-limits"]
                .get("max-stored-event-bytes")
                .is_none(),
            "the default is left out: {body}"
        );
        assert_eq!(
            body["adapters"],
            json!([{"type": "hono-http", "enabled": true, "device-authentication-required": false, "max-ttd": 30}])
        );
    }

    #[test]
    fn max_ttd_without_adapter_list_keeps_both_adapters_enabled() {
        let mut s = spec();
        s.resource_limits = Some(ResourceLimitsSpec {
            max_connections: -1,
            max_ttl: -1,
            max_ttd: 20,
            max_stored_events: -1,
            max_stored_event_bytes: -1,
        });
        let body = registry_tenant(&tenant(s)).expect("valid");
        assert!(body.is_adapter_enabled("hono-mqtt") && body.is_adapter_enabled("hono-http"));
        let http = body.adapter("hono-http").expect("entry");
        assert_eq!(http.extra["max-ttd"], 20);
    }

    const CA_PEM: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ3Y=\n-----END CERTIFICATE-----\n";

    #[test]
    fn trusted_ca_pem_becomes_base64_der_and_garbage_is_refused() {
        let mut s = spec();
        s.trusted_ca = vec![TrustedCaSpec {
            subject_dn: "CN=ACME Root".into(),
            cert: Some(CA_PEM.into()),
            not_after: Some("2030-01-01T00:00:00Z".into()),
            ..TrustedCaSpec::default()
        }];
        let body = registry_tenant(&tenant(s.clone())).expect("valid");
        assert_eq!(
            body.trusted_ca[0].cert.as_deref(),
            Some("MIIBszCCAVmgAwIBAgIUQ3Y=")
        );
        assert_eq!(body.trusted_ca[0].subject_dn, "CN=ACME Root");
        assert!(body.trusted_ca[0].not_after.is_some());

        // The registry assigns ids: a stored copy with ids is still up to date.
        let mut stored = body.clone();
        stored.trusted_ca[0].id = Some("7f".into());
        assert!(is_up_to_date(&stored, &body));
        stored.enabled = false;
        assert!(!is_up_to_date(&stored, &body));

        s.trusted_ca[0].cert = Some("not a certificate".into());
        assert!(registry_tenant(&tenant(s.clone())).is_err());
        s.trusted_ca[0].cert = None;
        s.trusted_ca[0].public_key = Some("MFkwEwYHKoZIzj0CAQ==".into());
        s.trusted_ca[0].algorithm = Some(KeyAlgorithmSpec::Ec);
        let body = serde_json::to_value(registry_tenant(&tenant(s.clone())).expect("valid"))
            .expect("json");
        assert_eq!(body["trusted-ca"][0]["algorithm"], "EC");
        s.trusted_ca[0].not_before = Some("yesterday".into());
        assert!(registry_tenant(&tenant(s)).is_err(), "not an RFC 3339 time");
    }

    #[test]
    fn application_names_must_be_secret_keys() {
        let mut s = spec();
        s.applications = vec![ApplicationSpec {
            name: "ops@acme".into(),
        }];
        let e = registry_tenant(&tenant(s)).expect_err("@ is no Secret key");
        assert!(e.to_string().contains("applications[0].name"), "{e}");
    }

    #[test]
    fn invalid_tenant_id_or_limits_are_refused() {
        let mut s = spec();
        s.tenant_id = Some("a/b".into());
        assert!(registry_tenant(&tenant(s)).is_err());
        let mut s = spec();
        s.resource_limits = Some(ResourceLimitsSpec {
            max_connections: -5,
            max_ttl: -1,
            max_ttd: -1,
            max_stored_events: -1,
            max_stored_event_bytes: -1,
        });
        let e = registry_tenant(&tenant(s)).expect_err("limit below -1");
        assert!(e.to_string().contains("max-connections"), "{e}");
    }
}
