//! The pure step of the `AddressSpace` reconcile: from the resource (and the operator's defaults) to the
//! objects that should exist. No API calls happen here, so every branch is unit-tested (`build/tests.rs`).
//!
//! Component configuration goes into ConfigMaps as the YAML each component reads with `--config`;
//! secrets never do: they reach the pods as files from Secret volumes, which the configs name (the
//! registry's `admin_token_file`, `internal_token_file`, `signing_key_file`, `database_url_file`; the
//! router's and adapters' `registry_token_file`, `*_password_file`, and the CA files they verify the
//! internal links with; docs/kubernetes.md lists them). A hash of each component's config is put on
//! its pod template, so a config change rolls the pods.
//!
//! Messaging (`spec.messaging`): in `embedded` mode the router is a StatefulSet with its event store on
//! a volume and the adapters send to it over AMQP; in `nats` mode the router is a stateless Deployment,
//! and router and adapters get a `messaging` section pointing at NATS, either one the user runs
//! (`external`) or a cluster the operator runs ([`nats`]). The objects of the other mode are listed in
//! [`Desired::absent`] so that switching modes deletes them.
//!
//! What the operator allows is checked here too ([`policy`]): image registries against the operator's
//! list; the Secrets a spec names are checked by the reconcile, which reads them, with
//! [`policy::secret_allowed`].

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource as _;

use crate::crd::{AddressSpace, Endpoints};

mod adapter;
mod disruption;
pub mod names;
pub mod nats;
mod network;
mod pod;
pub mod policy;
mod registry;
mod router;
pub mod secrets;
pub mod tenant;

pub use secrets::GeneratedSecret;

/// Ports the components listen on inside their pods (and their Services expose).
pub mod ports {
    pub const REGISTRY: i32 = 28080;
    pub const ADMIN: i32 = 9090;
    pub const AMQP: i32 = 5672;
    pub const AMQPS: i32 = 5671;
    pub const MQTT: i32 = 1883;
    pub const MQTTS: i32 = 8883;
    pub const HTTP: i32 = 8080;
    pub const HTTPS: i32 = 8443;
    pub const NATS_CLIENT: i32 = 4222;
    pub const NATS_CLUSTER: i32 = 6222;
    pub const NATS_MONITOR: i32 = 8222;
}

/// The NATS image the operator runs for a managed cluster unless the spec names another one.
pub const DEFAULT_NATS_IMAGE: &str = "docker.io/library/nats:2.11";

/// The annotation on each pod template that carries the hash of the component's config.
pub const CONFIG_HASH_ANNOTATION: &str = "ferry.dev/config-hash";
/// The key of the component config in its ConfigMap; mounted at `/etc/ferry/config.yaml`.
pub const CONFIG_KEY: &str = "config.yaml";

/// What the operator needs besides the resource: its own defaults and what it allows.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub image_registry: String,
    pub image_tag: String,
    /// Registries an address space may take images from besides `image_registry`.
    pub allowed_image_registries: Vec<String>,
    /// Where the operator's pods are, for the registry's NetworkPolicy; `None`: no NetworkPolicies.
    pub network_policies: Option<OperatorPods>,
    /// The image of managed NATS nodes; its registry is allowed like `image_registry`.
    pub nats_image: String,
}

/// The operator's pods as a NetworkPolicy peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorPods {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// Why the desired objects cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("the resource has no {0} (not read from the API server?)")]
    MissingMetadata(&'static str),
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The spec is valid but asks for something the operator does not allow (`reason` is the status
    /// condition's reason).
    #[error("{message}")]
    NotAllowed {
        reason: &'static str,
        message: String,
    },
}

impl BuildError {
    /// The reason of the `Ready` condition of a refused spec (`None`: not a refusal, retried).
    pub fn refusal_reason(&self) -> Option<&'static str> {
        match self {
            Self::InvalidSpec(_) => Some("InvalidSpec"),
            Self::NotAllowed { reason, .. } => Some(reason),
            Self::MissingMetadata(_) => None,
        }
    }
}

/// The kinds of object an address space owns, for the ones that must be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ConfigMap,
    Deployment,
    StatefulSet,
    Service,
    PodDisruptionBudget,
    NetworkPolicy,
}

/// Every object one `AddressSpace` should have, and the ones it should no longer have.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub config_maps: Vec<ConfigMap>,
    pub pvcs: Vec<PersistentVolumeClaim>,
    pub services: Vec<Service>,
    pub deployments: Vec<Deployment>,
    pub stateful_sets: Vec<StatefulSet>,
    pub pod_disruption_budgets: Vec<PodDisruptionBudget>,
    pub network_policies: Vec<NetworkPolicy>,
    /// Secrets to create when absent (never overwritten: they hold generated keys and passwords).
    pub secrets: Vec<GeneratedSecret>,
    /// Objects of a disabled component, to delete when present.
    pub absent: Vec<(Kind, String)>,
    /// Keys of Secrets the user provides (TLS, PostgreSQL URL) that the pods read: (Secret, key).
    pub referenced: Vec<(String, String)>,
    pub endpoints: Endpoints,
    pub admin_token_secret: String,
}

/// The components whose readiness the status reports, in condition order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Registry,
    Router,
    MqttAdapter,
    HttpAdapter,
    /// A managed NATS node (not in [`Component::ALL`]: it exists only in managed `nats` mode).
    Nats,
}

impl Component {
    pub const ALL: [Self; 4] = [
        Self::Registry,
        Self::Router,
        Self::MqttAdapter,
        Self::HttpAdapter,
    ];

    /// The `app.kubernetes.io/component` label and the object name suffix.
    pub fn label(self) -> &'static str {
        match self {
            Self::Registry => "registry",
            Self::Router => "router",
            Self::MqttAdapter => "mqtt-adapter",
            Self::HttpAdapter => "http-adapter",
            Self::Nats => "nats",
        }
    }

    /// The binary (and image) name.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Registry => "ferry-registry",
            Self::Router => "ferry-router",
            Self::MqttAdapter => "ferry-mqtt-adapter",
            Self::HttpAdapter => "ferry-http-adapter",
            Self::Nats => "nats-server",
        }
    }

    /// The status condition type.
    pub fn condition(self) -> &'static str {
        match self {
            Self::Registry => "RegistryReady",
            Self::Router => "RouterReady",
            Self::MqttAdapter => "MqttAdapterReady",
            Self::HttpAdapter => "HttpAdapterReady",
            Self::Nats => "MessagingReady",
        }
    }

    /// The environment prefix of the component's config.
    pub fn env_prefix(self) -> &'static str {
        match self {
            Self::Registry => "FERRY_REGISTRY_",
            Self::Router => "FERRY_ROUTER_",
            Self::MqttAdapter => "FERRY_MQTT_",
            Self::HttpAdapter => "FERRY_HTTP_",
            Self::Nats => "NATS_",
        }
    }
}

/// What every builder needs about the address space.
pub(crate) struct Ctx<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub owner: OwnerReference,
    pub spec: &'a crate::crd::AddressSpaceSpec,
    pub image_registry: &'a str,
    pub image_tag: &'a str,
    pub operator_pods: Option<&'a OperatorPods>,
    pub nats_image: &'a str,
    /// `spec.messaging` resolved (a `nats` spec without `external` is a managed cluster).
    pub bus: nats::Bus<'a>,
}

impl Ctx<'_> {
    /// Metadata of an object owned by the address space.
    pub fn meta(&self, name: String, component: Option<Component>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    pub fn labels(&self, component: Option<Component>) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            ("app.kubernetes.io/part-of".to_owned(), "ferry".to_owned()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "ferry-operator".to_owned(),
            ),
            (
                "app.kubernetes.io/instance".to_owned(),
                self.name.to_owned(),
            ),
        ]);
        if let Some(c) = component {
            labels.insert("app.kubernetes.io/name".to_owned(), c.binary().to_owned());
            labels.insert(
                "app.kubernetes.io/component".to_owned(),
                c.label().to_owned(),
            );
        }
        labels
    }

    /// The labels that select a component's pods (stable across upgrades: selectors are immutable).
    pub fn selector(&self, component: Component) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/instance".to_owned(),
                self.name.to_owned(),
            ),
            (
                "app.kubernetes.io/component".to_owned(),
                component.label().to_owned(),
            ),
        ])
    }

    pub fn image(&self, component: Component) -> String {
        format!(
            "{}/{}:{}",
            self.spec
                .image
                .registry
                .as_deref()
                .unwrap_or(self.image_registry)
                .trim_end_matches('/'),
            component.binary(),
            self.spec.image.tag.as_deref().unwrap_or(self.image_tag)
        )
    }

    /// `<service>.<namespace>.svc:<port>`.
    pub fn address(&self, service: &str, port: i32) -> String {
        format!("{service}.{}.svc:{port}", self.namespace)
    }

    /// The registry's internal URL: https, verified against the address space's CA.
    pub fn registry_url(&self) -> String {
        format!(
            "https://{}",
            self.address(&names::registry(self.name), ports::REGISTRY)
        )
    }

    /// Whether the adapters reach the router over AMQPS and can verify its certificate: the generated
    /// certificate (the address space's CA), or the user's with its CA named (`spec.tls.caKey`).
    pub fn router_tls(&self) -> bool {
        self.spec.tls.as_ref().is_none_or(|t| t.ca_key.is_some())
    }

    /// The Secret with the certificate of the TLS endpoints.
    pub fn tls_secret(&self) -> String {
        match &self.spec.tls {
            Some(tls) => tls.secret_name.clone(),
            None => names::tls(self.name),
        }
    }
}

/// Builds every object of `space`.
pub fn address_space(space: &AddressSpace, defaults: &Defaults) -> Result<Desired, BuildError> {
    let name = space
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let namespace = space
        .metadata
        .namespace
        .as_deref()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let owner = space
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))?;
    validate(space)?;
    policy::check_image_registry(&space.spec, defaults)?;
    let bus = nats::Bus::of(&space.spec);
    if let nats::Bus::Managed(managed) = &bus {
        policy::check_nats_image(managed, defaults)?;
    }
    let ctx = Ctx {
        name,
        namespace,
        owner,
        spec: &space.spec,
        image_registry: &defaults.image_registry,
        image_tag: &defaults.image_tag,
        operator_pods: defaults.network_policies.as_ref(),
        nats_image: &defaults.nats_image,
        bus,
    };
    let mut desired = Desired {
        admin_token_secret: names::admin_token(name),
        ..Desired::default()
    };
    desired.secrets = secrets::wanted(&ctx);
    if let Some(tls) = &space.spec.tls {
        for key in ["tls.crt", "tls.key"]
            .into_iter()
            .chain(tls.ca_key.as_deref())
        {
            desired
                .referenced
                .push((tls.secret_name.clone(), key.to_owned()));
        }
    }
    registry::build(&ctx, &mut desired);
    nats::build(&ctx, &mut desired);
    router::build(&ctx, &mut desired);
    adapter::build(&ctx, Component::MqttAdapter, &mut desired);
    adapter::build(&ctx, Component::HttpAdapter, &mut desired);
    disruption::build(&ctx, &mut desired);
    network::build(&ctx, &mut desired);
    Ok(desired)
}

/// What the schema cannot say (or says only to API servers with CEL): checked again here, because an
/// operator must not act on a resource an older API server let through.
pub fn validate(space: &AddressSpace) -> Result<(), BuildError> {
    use crate::crd::DatabaseKind;
    let spec = &space.spec;
    let bad = |m: &str| Err(BuildError::InvalidSpec(m.to_owned()));
    if spec.registry.replicas < 1 || spec.router.replicas < 1 {
        return bad("registry.replicas and router.replicas must be at least 1");
    }
    if spec.adapters.mqtt.replicas < 0 || spec.adapters.http.replicas < 0 {
        return bad("adapter replicas must not be negative");
    }
    match spec.registry.database.kind {
        DatabaseKind::Sqlite if spec.registry.replicas != 1 => return bad(
            "a registry on SQLite runs exactly one replica; use database.type postgresql for more",
        ),
        DatabaseKind::Postgresql
            if spec
                .registry
                .database
                .postgresql
                .as_ref()
                .is_none_or(|p| p.secret_name.is_empty()) =>
        {
            return bad(
                "database.postgresql.secretName is required when database.type is postgresql",
            )
        }
        _ => {}
    }
    if let Some(nats) = spec
        .messaging
        .nats
        .as_ref()
        .filter(|_| spec.messaging.mode == crate::crd::MessagingMode::Nats)
    {
        if nats.external.is_some() && nats.managed.is_some() {
            return bad("give messaging.nats.external or messaging.nats.managed, not both");
        }
        if let Some(m) = &nats.managed {
            if !nats::valid_cluster_size(m.replicas) {
                return bad("messaging.nats.managed.replicas must be 1 or an odd number of at least 3: JetStream needs a majority of its nodes");
            }
        }
        if let Some(e) = &nats.external {
            if e.urls.is_empty() {
                return bad("messaging.nats.external.urls must name at least one NATS server");
            }
            if let Some(u) = e.urls.iter().find(|u| {
                !(u.starts_with("tls://") || u.starts_with("nats://")) || u.contains(['"', '\\'])
            }) {
                return Err(BuildError::InvalidSpec(format!(
                    "messaging.nats.external.urls: {u:?} is not a tls:// or nats:// URL"
                )));
            }
            if !(1..=5).contains(&e.stream_replicas) {
                return bad("messaging.nats.external.streamReplicas must be 1 to 5");
            }
        }
    }
    // Object names are `<name>-mqtt-adapter-config` and the like: keep them within DNS label limits.
    if space.metadata.name.as_deref().is_some_and(|n| n.len() > 40) {
        return bad(
            "metadata.name must be at most 40 characters (the component names add a suffix)",
        );
    }
    Ok(())
}

/// Hex SHA-256 of a config, for [`CONFIG_HASH_ANNOTATION`].
pub fn config_hash(config: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(config.as_bytes());
    let mut out = String::with_capacity(16);
    for b in &digest[..8] {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A ConfigMap holding `config` under [`CONFIG_KEY`].
pub(crate) fn config_map(ctx: &Ctx<'_>, component: Component, config: String) -> ConfigMap {
    ConfigMap {
        metadata: ctx.meta(names::config(ctx.name, component), Some(component)),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), config)])),
        ..ConfigMap::default()
    }
}

/// Renders a component config as YAML. A `serde_json::Value` always serializes.
pub(crate) fn yaml(value: &serde_json::Value) -> String {
    serde_saphyr::to_string(value).unwrap_or_default()
}

/// Secret keys mounted as files in a pod's [`pod::SECRETS_DIR`]: (Secret, key, file name).
pub(crate) mod secret_files {
    use super::{names, Ctx};

    pub type File = (String, String, String);

    /// `ca.crt`: the address space's CA (registry, router, managed NATS certificates chain to it).
    pub fn ca(ctx: &Ctx<'_>) -> File {
        (
            names::tls(ctx.name),
            "ca.crt".to_owned(),
            "ca.crt".to_owned(),
        )
    }

    /// `registry-token`: the registry's internal API token.
    pub fn registry_token(ctx: &Ctx<'_>) -> File {
        (
            names::internal_token(ctx.name),
            "token".to_owned(),
            "registry-token".to_owned(),
        )
    }

    /// The files without repeats (one path may appear once in a projected volume).
    pub fn unique(files: Vec<File>) -> Vec<File> {
        let mut out: Vec<File> = Vec::with_capacity(files.len());
        for f in files {
            if !out.iter().any(|o| o.2 == f.2) {
                out.push(f);
            }
        }
        out
    }
}

/// The secret a built object refers to, so tests can check names line up.
pub fn secret_names(desired: &Desired) -> Vec<&str> {
    desired.secrets.iter().map(|s| s.name.as_str()).collect()
}

#[cfg(test)]
mod tests;

/// A Service selecting `component`'s pods.
pub(crate) fn service(
    ctx: &Ctx<'_>,
    name: String,
    component: Component,
    kind: &str,
    service_ports: &[(&str, i32)],
    headless: bool,
) -> Service {
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    Service {
        metadata: ctx.meta(name, Some(component)),
        spec: Some(ServiceSpec {
            type_: Some(kind.to_owned()),
            cluster_ip: headless.then(|| "None".to_owned()),
            publish_not_ready_addresses: headless.then_some(true),
            selector: Some(ctx.selector(component)),
            ports: Some(
                service_ports
                    .iter()
                    .map(|(port_name, port)| ServicePort {
                        name: Some((*port_name).to_owned()),
                        port: *port,
                        target_port: Some(IntOrString::String((*port_name).to_owned())),
                        protocol: Some("TCP".to_owned()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
