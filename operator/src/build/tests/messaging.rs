//! `spec.messaging`: embedded, external NATS, managed NATS; and the internal links on TLS with a
//! generated or a given certificate.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Volume;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::crd::{
    ExternalNatsSpec, ManagedNatsSpec, MessagingMode, NatsSpec, NatsUsers, SecretKeyRef,
};
use ferry_nats::MessagingMode as ComponentMode;

fn managed(replicas: i32) -> AddressSpaceSpec {
    let mut spec = AddressSpaceSpec::default();
    spec.messaging.mode = MessagingMode::Nats;
    spec.messaging.nats = Some(NatsSpec {
        external: None,
        managed: Some(ManagedNatsSpec {
            replicas,
            ..ManagedNatsSpec::default()
        }),
    });
    spec
}

fn external() -> AddressSpaceSpec {
    let mut spec = AddressSpaceSpec::default();
    spec.messaging.mode = MessagingMode::Nats;
    spec.messaging.nats = Some(NatsSpec {
        external: Some(ExternalNatsSpec {
            urls: vec!["tls://nats.corp:4222".into()],
            credentials_secret: "corp-nats".into(),
            users: NatsUsers {
                adapter: "iot-adapters".into(),
                router: "iot-routers".into(),
                registry: "iot-registry".into(),
            },
            ca: Some(SecretKeyRef {
                secret_name: "corp-nats-ca".into(),
                key: "ca.pem".into(),
            }),
            stream_replicas: 3,
        }),
        managed: None,
    });
    spec
}

fn stateful_set<'a>(d: &'a Desired, name: &str) -> &'a k8s_openapi::api::apps::v1::StatefulSet {
    d.stateful_sets
        .iter()
        .find(|o| o.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no StatefulSet {name}"))
}

fn volume<'a>(t: &'a PodTemplateSpec, name: &str) -> &'a Volume {
    pod(t)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The files of the pod's `secrets` volume: (Secret, key, path).
fn secret_files(t: &PodTemplateSpec) -> Vec<(String, String, String)> {
    let Some(v) = pod(t)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "secrets")
    else {
        return Vec::new();
    };
    v.projected
        .as_ref()
        .and_then(|p| p.sources.as_ref())
        .expect("projected sources")
        .iter()
        .filter_map(|s| s.secret.as_ref())
        .flat_map(|s| {
            s.items.iter().flatten().map(|i| {
                (
                    s.name.clone(),
                    i.key.clone(),
                    format!("{}/{}", pod::SECRETS_DIR, i.path),
                )
            })
        })
        .collect()
}

fn file_of<'a>(files: &'a [(String, String, String)], path: &str) -> (&'a str, &'a str) {
    files
        .iter()
        .find(|f| f.2 == path)
        .map(|f| (f.0.as_str(), f.1.as_str()))
        .unwrap_or_else(|| panic!("{path} is not mounted: {files:?}"))
}

fn nats_conf(d: &Desired) -> String {
    d.config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("iot-nats-config"))
        .and_then(|c| c.data.as_ref())
        .map(|data| data[nats::CONFIG_KEY].clone())
        .expect("nats config")
}

#[test]
fn embedded_mode_has_no_nats_and_the_router_keeps_its_volume() {
    let d = build(AddressSpaceSpec::default());
    assert!(!names_of(&d.stateful_sets).contains(&"iot-nats".to_owned()));
    assert_eq!(names_of(&d.stateful_sets), ["iot-router"]);
    assert!(d
        .absent
        .contains(&(Kind::StatefulSet, "iot-nats".to_owned())));
    assert!(d
        .absent
        .contains(&(Kind::Deployment, "iot-router".to_owned())));
    assert!(!config_of(&d, Component::Router).contains("messaging"));
    assert!(!config_of(&d, Component::Registry).contains("messaging"));
    assert!(d.secrets.iter().all(|s| s.kind != SecretKind::NatsUsers));
}

#[test]
fn managed_nats_is_a_jetstream_cluster_with_tls_routes_and_users() {
    let d = build(managed(3));
    let set = stateful_set(&d, "iot-nats");
    let spec = set.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("iot-nats-headless"));
    let claims = spec.volume_claim_templates.as_ref().expect("claims");
    assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
    let container = &pod(&spec.template).containers[0];
    assert_eq!(container.image.as_deref(), Some(DEFAULT_NATS_IMAGE));
    assert_eq!(
        container.args.as_deref(),
        Some(
            &[
                "--config".to_owned(),
                "/etc/nats/config/nats.conf".to_owned()
            ][..]
        )
    );
    let security = container.security_context.as_ref().expect("security");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(
        volume(&spec.template, "tls")
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref()),
        Some("iot-tls")
    );
    assert_eq!(
        volume(&spec.template, "auth")
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref()),
        Some("iot-nats-users")
    );
    assert_eq!(
        pod(&spec.template)
            .topology_spread_constraints
            .as_ref()
            .map(Vec::len),
        Some(2)
    );
    let headless = d
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("iot-nats-headless"))
        .and_then(|s| s.spec.as_ref())
        .expect("headless service");
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert!(names_of(&d.services).contains(&"iot-nats".to_owned()));

    let conf = nats_conf(&d);
    for i in 0..3 {
        assert!(
            conf.contains(&format!(
                "nats-route://iot-nats-{i}.iot-nats-headless.prod.svc:6222"
            )),
            "{conf}"
        );
    }
    assert!(
        conf.contains("verify: true"),
        "routes must present a certificate of the CA"
    );
    assert!(conf.contains("no_advertise: true"));
    assert!(conf.contains("include \"../auth/auth.conf\""));
    assert!(!conf.contains("password"), "no secret in the ConfigMap");

    // Users and permissions come from ferry_nats::permissions, rendered into the generated Secret.
    let users = d
        .secrets
        .iter()
        .find(|s| s.kind == SecretKind::NatsUsers)
        .expect("users secret");
    assert_eq!(users.name, "iot-nats-users");
    let generated = users.generate().expect("generate");
    let data = generated.data.as_ref().expect("data");
    let text = |k: &str| String::from_utf8(data[k].0.clone()).expect("utf-8");
    let expected = ferry_nats::permissions::authorization(&[
        (
            nats::ADAPTER_USER,
            &text("adapter"),
            &ferry_nats::permissions::adapter(),
        ),
        (
            nats::ROUTER_USER,
            &text("router"),
            &ferry_nats::permissions::router(),
        ),
        (
            nats::REGISTRY_USER,
            &text("registry"),
            &ferry_nats::permissions::registry(),
        ),
    ])
    .expect("renders");
    assert_eq!(text("auth.conf"), expected);
    assert_ne!(text("adapter"), text("router"));
    assert_ne!(text("registry"), text("router"));

    // A budget and a policy like the other workloads.
    let pdb = d
        .pod_disruption_budgets
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("iot-nats"))
        .expect("nats budget");
    assert_eq!(
        pdb.spec.as_ref().and_then(|s| s.max_unavailable.clone()),
        Some(IntOrString::Int(1))
    );
    assert!(names_of(&d.network_policies).contains(&"iot-nats".to_owned()));
}

#[test]
fn one_managed_node_has_no_cluster_block_and_no_budget() {
    let d = build(managed(1));
    assert!(!nats_conf(&d).contains("cluster {"));
    assert!(d
        .absent
        .contains(&(Kind::PodDisruptionBudget, "iot-nats".to_owned())));
    let router: ferry_router::Config = load(
        &config_of(&d, Component::Router),
        "FERRY_ROUTER_",
        pod_env(template_of_deployment(&d, "iot-router")),
    );
    assert_eq!(router.messaging.nats.replicas, 1);
}

#[test]
fn nats_mode_routers_are_a_stateless_deployment_and_configs_point_at_nats() {
    for (replicas, stream_replicas) in [(3, 3), (5, 3)] {
        let d = build(managed(replicas));
        assert_eq!(names_of(&d.stateful_sets), ["iot-nats"]);
        let router = template_of_deployment(&d, "iot-router");
        assert!(
            pod(router)
                .volumes
                .iter()
                .flatten()
                .all(|v| v.name != "data" && v.persistent_volume_claim.is_none()),
            "no data volume"
        );
        for gone in [
            (Kind::StatefulSet, "iot-router"),
            (Kind::Service, "iot-router-headless"),
            (Kind::Service, "iot-router-internal"),
        ] {
            assert!(d.absent.contains(&(gone.0, gone.1.to_owned())), "{gone:?}");
        }
        assert!(!names_of(&d.services).contains(&"iot-router-internal".to_owned()));

        let config: ferry_router::Config = load(
            &config_of(&d, Component::Router),
            "FERRY_ROUTER_",
            pod_env(router),
        );
        config.validate().expect("router config");
        let nats = &config.messaging.nats;
        assert_eq!(config.messaging.mode, ComponentMode::Nats);
        assert_eq!(nats.replicas, stream_replicas);
        assert_eq!(nats.urls.len(), replicas as usize);
        assert_eq!(
            nats.urls[0],
            "tls://iot-nats-0.iot-nats-headless.prod.svc:4222"
        );
        assert_eq!(nats.user.as_deref(), Some(nats::ROUTER_USER));
        assert!(nats.tls_required);
        let files = secret_files(router);
        let password = nats.password_file.as_ref().expect("password file");
        assert_eq!(
            file_of(&files, &password.to_string_lossy()),
            ("iot-nats-users", "router")
        );
        let ca = nats.tls_ca.as_ref().expect("CA");
        assert_eq!(
            file_of(&files, &ca.to_string_lossy()),
            ("iot-tls", "ca.crt")
        );

        let adapter = template_of_deployment(&d, "iot-mqtt-adapter");
        let mqtt: ferry_mqtt_adapter::Config = load(
            &config_of(&d, Component::MqttAdapter),
            "FERRY_MQTT_",
            pod_env(adapter),
        );
        mqtt.validate().expect("mqtt config");
        assert_eq!(
            mqtt.adapter.messaging.nats.user.as_deref(),
            Some(nats::ADAPTER_USER)
        );
        let files = secret_files(adapter);
        let password = mqtt
            .adapter
            .messaging
            .nats
            .password_file
            .as_ref()
            .expect("file");
        assert_eq!(
            file_of(&files, &password.to_string_lossy()),
            ("iot-nats-users", "adapter")
        );
        assert!(
            !env_names(adapter).contains(&"FERRY_MQTT_ROUTER_PASSWORD".to_owned()),
            "the adapters do not talk to the router in nats mode"
        );
        let http: ferry_http_adapter::Config = load(
            &config_of(&d, Component::HttpAdapter),
            "FERRY_HTTP_",
            pod_env(template_of_deployment(&d, "iot-http-adapter")),
        );
        http.validate().expect("http config");
        assert_eq!(http.adapter.messaging.mode, ComponentMode::Nats);

        // The registry reads presence from NATS as its own user.
        let registry = template_of_deployment(&d, "iot-registry");
        let reg: ferry_registry::Config = load(
            &config_of(&d, Component::Registry),
            "FERRY_REGISTRY_",
            pod_env(registry),
        );
        assert_eq!(reg.messaging.mode, ComponentMode::Nats);
        assert_eq!(
            reg.messaging.nats.user.as_deref(),
            Some(nats::REGISTRY_USER)
        );
        let files = secret_files(registry);
        let password = reg.messaging.nats.password_file.as_ref().expect("file");
        assert_eq!(
            file_of(&files, &password.to_string_lossy()),
            ("iot-nats-users", "registry")
        );
        let ca = reg.messaging.nats.tls_ca.as_ref().expect("CA");
        assert_eq!(
            file_of(&files, &ca.to_string_lossy()),
            ("iot-tls", "ca.crt")
        );
    }
}

#[test]
fn external_nats_reads_the_users_secret_and_ca_and_runs_nothing() {
    let d = build(external());
    assert!(names_of(&d.stateful_sets).is_empty());
    assert!(d
        .absent
        .contains(&(Kind::StatefulSet, "iot-nats".to_owned())));
    assert!(d
        .absent
        .contains(&(Kind::NetworkPolicy, "iot-nats".to_owned())));
    assert!(d.secrets.iter().all(|s| s.kind != SecretKind::NatsUsers));
    for referenced in [
        ("corp-nats", "adapter"),
        ("corp-nats", "router"),
        ("corp-nats", "registry"),
        ("corp-nats-ca", "ca.pem"),
    ] {
        assert!(
            d.referenced
                .contains(&(referenced.0.to_owned(), referenced.1.to_owned())),
            "{referenced:?} must be checked (allowed for Ferry, present) before use"
        );
    }
    let router = template_of_deployment(&d, "iot-router");
    let config: ferry_router::Config = load(
        &config_of(&d, Component::Router),
        "FERRY_ROUTER_",
        pod_env(router),
    );
    config.validate().expect("router config");
    let nats = &config.messaging.nats;
    assert_eq!(nats.urls, ["tls://nats.corp:4222"]);
    assert_eq!(nats.user.as_deref(), Some("iot-routers"));
    let files = secret_files(router);
    let ca = nats.tls_ca.as_ref().expect("CA");
    assert_eq!(
        file_of(&files, &ca.to_string_lossy()),
        ("corp-nats-ca", "ca.pem")
    );
    let mqtt: ferry_mqtt_adapter::Config = load(
        &config_of(&d, Component::MqttAdapter),
        "FERRY_MQTT_",
        pod_env(template_of_deployment(&d, "iot-mqtt-adapter")),
    );
    assert_eq!(
        mqtt.adapter.messaging.nats.user.as_deref(),
        Some("iot-adapters")
    );
    let registry: ferry_registry::Config = load(
        &config_of(&d, Component::Registry),
        "FERRY_REGISTRY_",
        pod_env(template_of_deployment(&d, "iot-registry")),
    );
    assert_eq!(
        registry.messaging.nats.user.as_deref(),
        Some("iot-registry")
    );

    // Without a CA: the system's roots, and TLS only if every URL asks for it.
    let mut spec = external();
    if let Some(e) = spec
        .messaging
        .nats
        .as_mut()
        .and_then(|n| n.external.as_mut())
    {
        e.ca = None;
        e.urls = vec!["nats://nats.corp:4222".into()];
    }
    let d = build(spec);
    assert!(!config_of(&d, Component::Router).contains("tls_ca"));
    assert!(config_of(&d, Component::Router).contains("tls_required: false"));
}

#[test]
fn an_even_or_two_node_nats_cluster_is_refused() {
    for replicas in [2, 4, 0, -1] {
        let err = address_space(&space(managed(replicas)), &defaults()).expect_err("refused");
        assert_eq!(err.refusal_reason(), Some("InvalidSpec"), "{replicas}");
        assert!(err.to_string().contains("odd number"), "{err}");
    }
    for replicas in [1, 3, 5] {
        address_space(&space(managed(replicas)), &defaults()).expect("builds");
    }
    let mut both = external();
    if let Some(n) = both.messaging.nats.as_mut() {
        n.managed = Some(ManagedNatsSpec::default());
    }
    let err = address_space(&space(both), &defaults()).expect_err("refused");
    assert!(err.to_string().contains("not both"), "{err}");
    let mut bad_url = external();
    if let Some(e) = bad_url
        .messaging
        .nats
        .as_mut()
        .and_then(|n| n.external.as_mut())
    {
        e.urls = vec!["http://nats.corp".into()];
    }
    let err = address_space(&space(bad_url), &defaults()).expect_err("refused");
    assert!(err.to_string().contains("tls:// or nats://"), "{err}");
}

#[test]
fn a_nats_image_from_a_registry_the_operator_does_not_allow_is_refused() {
    let with_image = |image: &str| {
        let mut spec = managed(3);
        if let Some(m) = spec
            .messaging
            .nats
            .as_mut()
            .and_then(|n| n.managed.as_mut())
        {
            m.image = Some(image.to_owned());
        }
        address_space(&space(spec), &defaults())
    };
    let err = with_image("evil.example.com/nats:2.11").expect_err("refused");
    assert_eq!(err.refusal_reason(), Some("ImageRegistryNotAllowed"));
    assert!(err.to_string().contains("security.allowedImageRegistries"));
    // A prefix is not a path: `docker.io/library-x` is not within `docker.io/library`.
    assert!(with_image("docker.io/library-x/nats:2.11").is_err());
    for allowed in [
        "docker.io/library/nats:2.11.9",
        "registry.example.com/iot/mirror/nats:2.11",
        "ghcr.io/ferry-iot/nats@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        let d = with_image(allowed).expect("allowed");
        let image = pod(&stateful_set(&d, "iot-nats").spec.as_ref().expect("spec").template)
            .containers[0]
            .image
            .clone();
        assert_eq!(image.as_deref(), Some(allowed));
    }
}

#[test]
fn nats_is_reachable_only_by_ferry_clients_and_its_peers() {
    let d = build(managed(3));
    let policy = d
        .network_policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("iot-nats"))
        .and_then(|p| p.spec.as_ref())
        .expect("nats policy");
    let rules = policy.ingress.as_ref().expect("ingress");
    let from = |port: i32| {
        rules
            .iter()
            .find(|r| {
                r.ports
                    .iter()
                    .flatten()
                    .any(|p| p.port == Some(IntOrString::Int(port)))
            })
            .unwrap_or_else(|| panic!("no rule for {port}"))
            .from
            .clone()
    };
    let components = |peers: Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>| {
        let peers = peers.expect("restricted");
        assert_eq!(peers.len(), 1);
        let selector = peers[0].pod_selector.as_ref().expect("pods");
        assert_eq!(
            selector
                .match_labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/instance"))
                .map(String::as_str),
            Some("iot")
        );
        assert!(peers[0].namespace_selector.is_none(), "same namespace only");
        selector.match_expressions.as_ref().expect("expr")[0]
            .values
            .clone()
            .unwrap_or_default()
    };
    assert_eq!(
        components(from(4222)),
        ["router", "mqtt-adapter", "http-adapter", "registry"]
    );
    assert_eq!(components(from(6222)), ["nats"]);
    assert!(from(8222).is_none(), "monitoring like the admin ports");
    assert_eq!(rules.len(), 3, "nothing else is open");

    let mut off = defaults();
    off.network_policies = None;
    let d = address_space(&space(managed(3)), &off).expect("builds");
    assert!(d.network_policies.is_empty());
    assert!(d
        .absent
        .contains(&(Kind::NetworkPolicy, "iot-nats".to_owned())));
}

#[test]
fn every_internal_link_is_on_tls_with_secrets_from_files() {
    let mut spec = AddressSpaceSpec::default();
    spec.registry.replicas = 2;
    spec.registry.database.kind = DatabaseKind::Postgresql;
    spec.registry.database.postgresql = Some(PostgresqlSpec {
        secret_name: "pg".into(),
        key: "url".into(),
    });
    let d = build(spec);
    let yaml =
        |c| -> serde_json::Value { serde_saphyr::from_str(&config_of(&d, c)).expect("yaml") };
    let registry = yaml(Component::Registry);
    assert_eq!(
        registry["tls"]["cert_path"],
        "/etc/ferry/internal-tls/tls.crt"
    );
    assert_eq!(
        registry["database_url_file"],
        "/etc/ferry/secrets/database-url"
    );
    let registry_pod = template_of_deployment(&d, "iot-registry");
    assert_eq!(
        file_of(
            &secret_files(registry_pod),
            "/etc/ferry/secrets/database-url"
        ),
        ("pg", "url")
    );
    assert!(
        env_names(registry_pod).is_empty(),
        "no secret in the environment"
    );
    assert_eq!(
        volume(registry_pod, "internal-tls")
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref()),
        Some("iot-tls")
    );

    let router = yaml(Component::Router);
    assert_eq!(
        router["registry_url"],
        "https://iot-registry.prod.svc:28080"
    );
    assert_eq!(
        router["bind"], "127.0.0.1:5672",
        "no adapter needs plain AMQP"
    );
    let router_files = secret_files(router_template(&d));
    for (key, expected) in [
        ("registry_ca_file", ("iot-tls", "ca.crt")),
        ("registry_token_file", ("iot-internal-token", "token")),
        (
            "adapter_password_file",
            ("iot-adapter-credentials", "password"),
        ),
    ] {
        let path = router[key].as_str().expect(key);
        assert_eq!(file_of(&router_files, path), expected, "{key}");
    }
    assert!(env_names(router_template(&d)).is_empty());

    for (c, name) in [
        (Component::MqttAdapter, "iot-mqtt-adapter"),
        (Component::HttpAdapter, "iot-http-adapter"),
    ] {
        let adapter = yaml(c);
        let t = template_of_deployment(&d, name);
        assert_eq!(adapter["router_tls"], true);
        assert_eq!(
            adapter["router_address"],
            "iot-router-internal.prod.svc:5671"
        );
        assert_eq!(
            adapter["registry_url"],
            "https://iot-registry.prod.svc:28080"
        );
        let files = secret_files(t);
        for (key, expected) in [
            ("router_ca_file", ("iot-tls", "ca.crt")),
            ("registry_ca_file", ("iot-tls", "ca.crt")),
            ("registry_token_file", ("iot-internal-token", "token")),
            (
                "router_password_file",
                ("iot-adapter-credentials", "password"),
            ),
        ] {
            let path = adapter[key].as_str().expect(key);
            assert_eq!(file_of(&files, path), expected, "{name} {key}");
        }
        assert_eq!(
            env_names(t),
            [format!("{}INSTANCE_ID", c.env_prefix())],
            "only the pod name"
        );
    }
    let internal = d
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("iot-router-internal"))
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .expect("internal service");
    assert_eq!(internal.len(), 1);
    assert_eq!(internal[0].port, ports::AMQPS);
}

#[test]
fn a_given_certificate_is_verified_by_its_ca_or_the_adapters_stay_on_the_internal_plain_port() {
    let given = |ca_key: Option<&str>| {
        let mut spec = AddressSpaceSpec::default();
        spec.tls = Some(TlsSpec {
            secret_name: "corp-cert".into(),
            ca_key: ca_key.map(str::to_owned),
        });
        build(spec)
    };
    let d = given(Some("ca.crt"));
    assert!(d
        .referenced
        .contains(&("corp-cert".to_owned(), "ca.crt".to_owned())));
    let mqtt: serde_json::Value =
        serde_saphyr::from_str(&config_of(&d, Component::MqttAdapter)).expect("yaml");
    assert_eq!(mqtt["router_tls"], true);
    let files = secret_files(template_of_deployment(&d, "iot-mqtt-adapter"));
    let path = mqtt["router_ca_file"].as_str().expect("router CA");
    assert_eq!(file_of(&files, path), ("corp-cert", "ca.crt"));
    // The registry still uses the address space's own certificate.
    assert_eq!(
        file_of(
            &files,
            mqtt["registry_ca_file"].as_str().expect("registry CA")
        ),
        ("iot-tls", "ca.crt")
    );

    let d = given(None);
    let mqtt: serde_json::Value =
        serde_saphyr::from_str(&config_of(&d, Component::MqttAdapter)).expect("yaml");
    assert_eq!(mqtt["router_tls"], false);
    assert!(mqtt.get("router_ca_file").is_none());
    assert_eq!(mqtt["router_address"], "iot-router-internal.prod.svc:5672");
    let router: serde_json::Value =
        serde_saphyr::from_str(&config_of(&d, Component::Router)).expect("yaml");
    assert_eq!(router["bind"], "0.0.0.0:5672");
}

#[test]
fn the_generated_certificate_chains_to_the_generated_ca_for_every_internal_name() {
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let d = build(managed(3));
    let tls = d
        .secrets
        .iter()
        .find(|s| s.kind == SecretKind::Tls)
        .expect("tls");
    let secret = tls.generate().expect("generate");
    let data = secret.data.as_ref().expect("data");
    let pem = |k: &str| -> Vec<CertificateDer<'static>> {
        rustls_pemfile::certs(&mut data[k].0.as_slice())
            .collect::<Result<_, _>>()
            .expect("PEM")
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in pem("ca.crt") {
        roots.add(ca).expect("CA");
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .expect("verifier");
    let leaf = pem("tls.crt");
    for name in [
        "iot-registry.prod.svc",
        "iot-router-internal.prod.svc",
        "iot-router.prod.svc",
        "iot-nats-2.iot-nats-headless.prod.svc",
        "iot-mqtt-adapter.prod.svc",
    ] {
        let server = ServerName::try_from(name.to_owned()).expect("name");
        verifier
            .verify_server_cert(&leaf[0], &[], &server, &[], UnixTime::now())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let elsewhere = ServerName::try_from("iot-registry.other.svc".to_owned()).expect("name");
    assert!(verifier
        .verify_server_cert(&leaf[0], &[], &elsewhere, &[], UnixTime::now())
        .is_err());
}

/// Loads a rendered config as the component does, or says why it refuses it.
fn try_load<T>(config: &str, prefix: &str, env: Vec<(String, String)>) -> Result<T, String>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Default,
{
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    let sources = ferry_core::config::Sources {
        file: Some(path),
        env_prefix: prefix.to_owned(),
        env,
        ..Default::default()
    };
    ferry_core::config::load(&sources).map_err(|e| e.to_string())
}

/// Every config rendered in each messaging mode is accepted and valid for its component (the
/// components refuse unknown keys).
#[test]
fn every_rendered_config_in_every_mode_is_accepted_by_its_component() {
    let mut postgres = AddressSpaceSpec::default();
    postgres.registry.database.kind = DatabaseKind::Postgresql;
    postgres.registry.database.postgresql = Some(PostgresqlSpec {
        secret_name: "pg".into(),
        key: "url".into(),
    });
    for spec in [AddressSpaceSpec::default(), postgres, managed(3)] {
        let nats = nats::Bus::of(&spec).is_nats();
        let d = build(spec);
        let router_template = if nats {
            template_of_deployment(&d, "iot-router")
        } else {
            router_template(&d)
        };
        let results = [
            try_load::<ferry_registry::Config>(
                &config_of(&d, Component::Registry),
                "FERRY_REGISTRY_",
                pod_env(template_of_deployment(&d, "iot-registry")),
            )
            .and_then(|c| c.validate().map_err(|e| e.to_string())),
            try_load::<ferry_router::Config>(
                &config_of(&d, Component::Router),
                "FERRY_ROUTER_",
                pod_env(router_template),
            )
            .and_then(|c| c.validate().map_err(|e| e.to_string())),
            try_load::<ferry_mqtt_adapter::Config>(
                &config_of(&d, Component::MqttAdapter),
                "FERRY_MQTT_",
                pod_env(template_of_deployment(&d, "iot-mqtt-adapter")),
            )
            .and_then(|c| c.validate().map_err(|e| e.to_string())),
            try_load::<ferry_http_adapter::Config>(
                &config_of(&d, Component::HttpAdapter),
                "FERRY_HTTP_",
                pod_env(template_of_deployment(&d, "iot-http-adapter")),
            )
            .and_then(|c| c.validate().map_err(|e| e.to_string())),
        ];
        for r in &results {
            assert!(r.is_ok(), "{r:?}");
        }
    }
}
