//! Cluster mode's bus (`spec.messaging.mode: nats`): the `messaging` section of the routers' and
//! adapters' configs, and, for a managed cluster, the NATS nodes themselves.
//!
//! A managed cluster is a StatefulSet of the official `nats` image: each node keeps JetStream on its
//! own volume, finds the others through a headless Service (`<name>-nats-headless`, cluster routes on
//! 6222) and serves clients on 4222. Clients and routes use TLS with the address space's certificate
//! (`<name>-tls`, issued by its own CA; a route must present a certificate of that CA too). Three NATS
//! users, one per component kind (adapters, routers, and the registry, which reads device presence),
//! with the permissions of `ferry_nats::permissions`: the passwords
//! and the `authorization` block rendered from them live in the generated Secret `<name>-nats-users`,
//! which the config includes (the ConfigMap holds no secret).
//!
//! Nodes do not advertise their pod addresses to clients (`no_advertise`): a client only knows the
//! nodes' DNS names, which the certificate covers, so reconnecting to another node still verifies.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ExecAction, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PersistentVolumeClaim, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SecretVolumeSource, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use std::collections::BTreeMap;

use super::pod::{self, SECRETS_DIR};
use super::registry::claim_spec;
use super::{config_hash, names, ports, service, Component, Ctx, Desired, Kind};
use crate::crd::{AddressSpaceSpec, ExternalNatsSpec, ManagedNatsSpec, MessagingMode};

/// The key of the NATS config in its ConfigMap.
pub const CONFIG_KEY: &str = "nats.conf";
/// Where a NATS pod has its files: `config/nats.conf`, `auth/auth.conf`, `tls/`, `data/` (JetStream),
/// `run/` (the pid file for lame-duck mode).
pub const BASE_DIR: &str = "/etc/nats";
/// The user names of a managed cluster.
pub const ADAPTER_USER: &str = "ferry-adapter";
pub const ROUTER_USER: &str = "ferry-router";
pub const REGISTRY_USER: &str = "ferry-registry";
/// Files in the component pods' secret directory.
pub const PASSWORD_FILE: &str = "nats-password";
pub const EXTERNAL_CA_FILE: &str = "nats-ca.crt";
/// The address space's CA in the component pods' secret directory.
pub const CA_FILE: &str = "ca.crt";

/// `spec.messaging` resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Bus<'a> {
    /// Adapters → router over AMQP; the router keeps events on its volume.
    Embedded,
    /// A NATS cluster run by someone else.
    External(&'a ExternalNatsSpec),
    /// A NATS cluster run by the operator (the spec's, or the defaults when `nats` names neither).
    Managed(ManagedNatsSpec),
}

impl<'a> Bus<'a> {
    pub fn of(spec: &'a AddressSpaceSpec) -> Self {
        if spec.messaging.mode != MessagingMode::Nats {
            return Self::Embedded;
        }
        match &spec.messaging.nats {
            Some(n) => match (&n.external, &n.managed) {
                (Some(e), _) => Self::External(e),
                (None, m) => Self::Managed(m.clone().unwrap_or_default()),
            },
            None => Self::Managed(ManagedNatsSpec::default()),
        }
    }

    pub fn is_nats(&self) -> bool {
        !matches!(self, Self::Embedded)
    }
}

/// JetStream keeps a stream while a majority of its replicas is up: a cluster of 2 (or any even
/// size) tolerates no more failures than one of a node fewer, and stalls on a tie.
pub fn valid_cluster_size(replicas: i32) -> bool {
    replicas == 1 || (replicas >= 3 && replicas % 2 == 1)
}

/// The NATS user names of the adapters, the routers and the registry.
pub(crate) struct Users<'a> {
    pub(crate) adapter: &'a str,
    pub(crate) router: &'a str,
    pub(crate) registry: &'a str,
}

/// The NATS user names of this address space.
pub(crate) fn users<'a>(ctx: &'a Ctx<'_>) -> Users<'a> {
    match &ctx.bus {
        Bus::External(e) => Users {
            adapter: &e.users.adapter,
            router: &e.users.router,
            registry: &e.users.registry,
        },
        _ => Users {
            adapter: ADAPTER_USER,
            router: ROUTER_USER,
            registry: REGISTRY_USER,
        },
    }
}

/// The key of a component's password in the users' Secret (generated or the user's own).
pub(crate) fn password_key(component: Component) -> &'static str {
    match component {
        Component::Router => "router",
        Component::Registry => "registry",
        _ => "adapter",
    }
}

/// The client URLs of a managed cluster: every node by its DNS name.
pub fn managed_urls(space: &str, namespace: &str, replicas: i32) -> Vec<String> {
    (0..replicas)
        .map(|i| {
            format!(
                "tls://{}-{i}.{}.{namespace}.svc:{}",
                names::nats(space),
                names::nats_headless(space),
                ports::NATS_CLIENT
            )
        })
        .collect()
}

/// The `messaging` section of a router's, adapter's or registry's config (`ferry_nats::Messaging`);
/// `None` in embedded mode (the components' default).
pub(crate) fn messaging(ctx: &Ctx<'_>, component: Component) -> Option<serde_json::Value> {
    let users = users(ctx);
    let user = match component {
        Component::Router => users.router,
        Component::Registry => users.registry,
        _ => users.adapter,
    };
    let password_file = format!("{SECRETS_DIR}/{PASSWORD_FILE}");
    let nats = match &ctx.bus {
        Bus::Embedded => return None,
        Bus::Managed(m) => json!({
            "urls": managed_urls(ctx.name, ctx.namespace, m.replicas),
            "user": user,
            "password_file": password_file,
            "tls_ca": format!("{SECRETS_DIR}/{CA_FILE}"),
            "tls_required": true,
            "replicas": m.replicas.min(3),
        }),
        Bus::External(e) => {
            let mut n = json!({
                "urls": e.urls,
                "user": user,
                "password_file": password_file,
                "tls_required": e.ca.is_some() || e.urls.iter().all(|u| u.starts_with("tls://")),
                "replicas": e.stream_replicas,
            });
            if e.ca.is_some() {
                n["tls_ca"] = json!(format!("{SECRETS_DIR}/{EXTERNAL_CA_FILE}"));
            }
            n
        }
    };
    Some(json!({ "mode": "nats", "nats": nats }))
}

/// The Secret files a router, adapter or registry pod needs for NATS: (Secret, key, file name).
pub(crate) fn client_files(ctx: &Ctx<'_>, component: Component) -> Vec<(String, String, String)> {
    let key = password_key(component);
    match &ctx.bus {
        Bus::Embedded => Vec::new(),
        Bus::Managed(_) => vec![
            (
                names::nats_users(ctx.name),
                key.to_owned(),
                PASSWORD_FILE.to_owned(),
            ),
            (
                names::tls(ctx.name),
                "ca.crt".to_owned(),
                CA_FILE.to_owned(),
            ),
        ],
        Bus::External(e) => {
            let mut files = vec![(
                e.credentials_secret.clone(),
                key.to_owned(),
                PASSWORD_FILE.to_owned(),
            )];
            if let Some(ca) = &e.ca {
                files.push((
                    ca.secret_name.clone(),
                    ca.key.clone(),
                    EXTERNAL_CA_FILE.to_owned(),
                ));
            }
            files
        }
    }
}

/// nats-server's config for a managed cluster of `replicas` nodes, with its files under `base`
/// ([`BASE_DIR`] in the pods). The node's name comes from `$POD_NAME`.
pub fn server_config(space: &str, namespace: &str, replicas: i32, base: &str) -> String {
    // A `tls { ... }` block at `indent`; `verify` makes a route present a certificate of the CA too.
    let tls = |indent: &str, verify: bool| {
        let i = format!("{indent}  ");
        let mut block = format!(
            "{indent}tls {{\n{i}cert_file: \"{base}/tls/tls.crt\"\n{i}key_file: \"{base}/tls/tls.key\"\n{i}ca_file: \"{base}/tls/ca.crt\"\n{i}timeout: 3\n"
        );
        if verify {
            block.push_str(&format!("{i}verify: true\n"));
        }
        block.push_str(&format!("{indent}}}\n"));
        block
    };
    let mut out = format!(
        "# Rendered by ferry-operator for AddressSpace {namespace}/{space}; the operator rewrites it.\n\
         # Users' permissions {permissions} (auth.conf follows them; a change rolls the nodes).\n\
         server_name: $POD_NAME\n\
         listen: \"0.0.0.0:{client}\"\n\
         http: \"0.0.0.0:{monitor}\"\n\
         pid_file: \"{base}/run/nats.pid\"\n\
         # preStop puts the node in lame-duck mode: it stops taking clients and moves them to the others.\n\
         lame_duck_duration: \"30s\"\n\
         lame_duck_grace_period: \"10s\"\n\
         {tls}\
         jetstream {{\n  store_dir: \"{base}/data\"\n}}\n",
        tls = tls("", false),
        permissions = permissions_fingerprint(),
        client = ports::NATS_CLIENT,
        monitor = ports::NATS_MONITOR,
    );
    if replicas > 1 {
        let routes: Vec<String> = (0..replicas)
            .map(|i| {
                format!(
                    "    \"nats-route://{}-{i}.{}.{namespace}.svc:{}\"",
                    names::nats(space),
                    names::nats_headless(space),
                    ports::NATS_CLUSTER
                )
            })
            .collect();
        out.push_str(&format!(
            "cluster {{\n  name: \"{space}\"\n  listen: \"0.0.0.0:{}\"\n  no_advertise: true\n  # Only a node with a certificate of the address space's CA joins.\n{}  routes: [\n{}\n  ]\n}}\n",
            ports::NATS_CLUSTER,
            tls("  ", true),
            routes.join("\n"),
        ));
    }
    out.push_str("include \"../auth/auth.conf\"\n");
    out
}

/// A short hash of the users' permissions: in the node config, so that an operator whose
/// `ferry_nats::permissions` changed rolls the nodes, which then read the re-rendered `auth.conf`.
fn permissions_fingerprint() -> String {
    let rendered = ferry_nats::permissions::authorization(&[
        (ADAPTER_USER, "-", &ferry_nats::permissions::adapter()),
        (ROUTER_USER, "-", &ferry_nats::permissions::router()),
        (REGISTRY_USER, "-", &ferry_nats::permissions::registry()),
    ])
    .unwrap_or_default();
    config_hash(&rendered)
}

pub(crate) fn build(ctx: &Ctx<'_>, desired: &mut Desired) {
    let Bus::Managed(spec) = &ctx.bus else {
        if let Bus::External(e) = &ctx.bus {
            // The user's Secrets: checked (made for Ferry, present) before any pod mounts them.
            for key in ["adapter", "router", "registry"] {
                desired
                    .referenced
                    .push((e.credentials_secret.clone(), key.to_owned()));
            }
            if let Some(ca) = &e.ca {
                desired
                    .referenced
                    .push((ca.secret_name.clone(), ca.key.clone()));
            }
        }
        let name = names::nats(ctx.name);
        desired.absent.extend([
            (Kind::StatefulSet, name.clone()),
            (Kind::Service, name),
            (Kind::Service, names::nats_headless(ctx.name)),
            (Kind::ConfigMap, names::nats_config(ctx.name)),
        ]);
        return;
    };
    let component = Component::Nats;
    let name = names::nats(ctx.name);
    let headless = names::nats_headless(ctx.name);
    let config = server_config(ctx.name, ctx.namespace, spec.replicas, BASE_DIR);
    let hash = config_hash(&config);
    desired.config_maps.push(ConfigMap {
        metadata: ctx.meta(names::nats_config(ctx.name), Some(component)),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), config)])),
        ..ConfigMap::default()
    });
    desired.services.push(service(
        ctx,
        name.clone(),
        component,
        "ClusterIP",
        &[("client", ports::NATS_CLIENT)],
        false,
    ));
    desired.services.push(service(
        ctx,
        headless.clone(),
        component,
        "ClusterIP",
        &[
            ("client", ports::NATS_CLIENT),
            ("cluster", ports::NATS_CLUSTER),
            ("monitor", ports::NATS_MONITOR),
        ],
        true,
    ));
    desired.stateful_sets.push(StatefulSet {
        metadata: ctx.meta(name, Some(component)),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(headless),
            // Nodes find each other through routes that retry: start them together. Updates still
            // roll one node at a time, each waiting for the one before to be ready.
            pod_management_policy: Some("Parallel".to_owned()),
            selector: LabelSelector {
                match_labels: Some(ctx.selector(component)),
                ..LabelSelector::default()
            },
            template: template(ctx, spec, hash),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".to_owned()),
                    labels: Some(ctx.selector(component)),
                    ..ObjectMeta::default()
                },
                spec: Some(claim_spec(
                    &spec.storage.size,
                    spec.storage.storage_class_name.as_deref(),
                )),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    });
}

fn template(ctx: &Ctx<'_>, spec: &ManagedNatsSpec, hash: String) -> PodTemplateSpec {
    let component = Component::Nats;
    let dir = |d: &str| format!("{BASE_DIR}/{d}");
    let container = Container {
        name: "nats".to_owned(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| ctx.nats_image.to_owned()),
        ),
        image_pull_policy: Some(ctx.spec.image.pull_policy.as_str().to_owned()),
        args: Some(vec![
            "--config".to_owned(),
            format!("{}/{CONFIG_KEY}", dir("config")),
        ]),
        env: Some(vec![EnvVar {
            name: "POD_NAME".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![
            pod::port("client", ports::NATS_CLIENT),
            pod::port("cluster", ports::NATS_CLUSTER),
            pod::port("monitor", ports::NATS_MONITOR),
        ]),
        security_context: Some(pod::container_security()),
        startup_probe: Some(health("/healthz", 90)),
        liveness_probe: Some(health("/healthz?js-enabled-only=true", 3)),
        readiness_probe: Some(health("/healthz?js-server-only=true", 3)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "/nats-server".to_owned(),
                        format!("--signal=ldm={}/nats.pid", dir("run")),
                    ]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: Some(
            spec.resources
                .clone()
                .unwrap_or_else(|| ResourceRequirements {
                    requests: Some(BTreeMap::from([
                        ("cpu".to_owned(), Quantity("100m".to_owned())),
                        ("memory".to_owned(), Quantity("256Mi".to_owned())),
                    ])),
                    ..ResourceRequirements::default()
                }),
        ),
        volume_mounts: Some(vec![
            pod::mount("config", &dir("config"), true),
            pod::mount("auth", &dir("auth"), true),
            pod::mount("tls", &dir("tls"), true),
            pod::mount("data", &dir("data"), false),
            pod::mount("run", &dir("run"), false),
        ]),
        ..Container::default()
    };
    let secret = |volume: &str, secret: String, items: Option<Vec<KeyToPath>>| Volume {
        name: volume.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            items,
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mut labels = ctx.labels(Some(component));
    labels.extend(ctx.selector(component));
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                super::CONFIG_HASH_ANNOTATION.to_owned(),
                hash,
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![
                Volume {
                    name: "config".to_owned(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: names::nats_config(ctx.name),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                secret(
                    "auth",
                    names::nats_users(ctx.name),
                    Some(vec![KeyToPath {
                        key: "auth.conf".to_owned(),
                        path: "auth.conf".to_owned(),
                        mode: None,
                    }]),
                ),
                secret("tls", names::tls(ctx.name), None),
                Volume {
                    name: "run".to_owned(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Volume::default()
                },
            ]),
            security_context: Some(pod::pod_security()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            // Lame duck (30 s) plus its grace period, then the shutdown itself.
            termination_grace_period_seconds: Some(60),
            topology_spread_constraints: Some(pod::spread(ctx, component)),
            ..PodSpec::default()
        }),
    }
}

fn health(path: &str, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("monitor".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        timeout_seconds: Some(5),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// Writes what a managed NATS node of `space` reads, with `dir` in place of [`BASE_DIR`]: the config
/// (`config/nats.conf`, returned), the `authorization` block (`auth/auth.conf`), the certificate
/// (`tls/`) and the users' passwords (`users/adapter`, `users/router`), all freshly generated as the
/// operator would. For checking the rendered config with a real
/// server: `POD_NAME=x nats-server -t -c <path>` (charts/test.sh, `--example nats-config`).
pub fn write_node_files(
    space: &crate::crd::AddressSpace,
    defaults: &super::Defaults,
    dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let desired = super::address_space(space, defaults)?;
    let Bus::Managed(managed) = Bus::of(&space.spec) else {
        anyhow::bail!("the address space does not run managed NATS");
    };
    let (name, namespace) = (
        space.metadata.name.as_deref().unwrap_or_default(),
        space.metadata.namespace.as_deref().unwrap_or_default(),
    );
    let deployed = desired
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(names::nats_config(name).as_str()))
        .and_then(|c| c.data.as_ref()?.get(CONFIG_KEY).cloned())
        .context("no NATS ConfigMap")?;
    let base = dir.to_str().context("directory name is not UTF-8")?;
    let local = server_config(name, namespace, managed.replicas, base);
    anyhow::ensure!(
        local.replace(base, BASE_DIR) == deployed,
        "the local config differs from the deployed one beyond its base directory"
    );
    let write = |path: std::path::PathBuf, content: &[u8]| -> anyhow::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))
    };
    for secret in &desired.secrets {
        let files: &[(&str, &str)] = match secret.kind {
            super::secrets::SecretKind::Tls => &[
                ("tls.crt", "tls/tls.crt"),
                ("tls.key", "tls/tls.key"),
                ("ca.crt", "tls/ca.crt"),
            ],
            // The passwords too, as the component pods have them (`password_file`).
            super::secrets::SecretKind::NatsUsers => &[
                ("auth.conf", "auth/auth.conf"),
                ("adapter", "users/adapter"),
                ("router", "users/router"),
                ("registry", "users/registry"),
            ],
            _ => continue,
        };
        let generated = secret.generate()?;
        let data = generated.data.unwrap_or_default();
        for (key, file) in files {
            let value = data.get(*key).context("generated Secret lacks a key")?;
            write(dir.join(file), &value.0)?;
        }
    }
    for d in ["data", "run"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let config = dir.join("config").join(CONFIG_KEY);
    write(config.clone(), local.as_bytes())?;
    Ok(config)
}
