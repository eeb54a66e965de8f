//! `AddressSpace`: one messaging infrastructure (registry, router, adapters) in a namespace.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The desired shape of one Ferry installation: which components run, how many, with what storage, how
/// they are exposed.
// The printer columns repeat `type_ = "string"`, which clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "AddressSpace",
    plural = "addressspaces",
    singular = "addressspace",
    shortname = "fas",
    namespaced,
    status = "AddressSpaceStatus",
    doc = "A Ferry messaging infrastructure: device registry, AMQP router and protocol adapters.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "AMQPS",
        type_ = "string",
        json_path = ".status.endpoints.amqps"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AddressSpaceSpec {
    /// Where the component images come from.
    #[serde(default)]
    pub image: ImageSpec,
    /// The device registry.
    #[serde(default)]
    pub registry: RegistrySpec,
    /// The AMQP 1.0 router.
    #[serde(default)]
    pub router: RouterSpec,
    /// The protocol adapters.
    #[serde(default)]
    pub adapters: AdaptersSpec,
    /// The certificate of the TLS endpoints (AMQPS, MQTTS, HTTPS); a self-signed one is generated into
    /// `<name>-tls` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// How adapters and routers exchange messages: `embedded` (one router, the default) or `nats`.
    #[serde(default)]
    pub messaging: MessagingSpec,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image registry and path prefix, e.g. `ghcr.io/ferry-iot`; the operator's default when absent.
    /// It must be one the operator allows (its own, or one of the chart's
    /// `security.allowedImageRegistries`); another one is refused with reason `ImageRegistryNotAllowed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]+)?(/[A-Za-z0-9._-]+)*$"))]
    pub registry: Option<String>,
    /// Image tag; the operator's default (its own version) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"))]
    pub tag: Option<String>,
    #[serde(default)]
    pub pull_policy: PullPolicy,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// The registry. SQLite keeps its database on a volume and runs one replica; PostgreSQL allows more.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.database.type != 'sqlite' || self.replicas == 1").message("a registry on SQLite runs exactly one replica; use database.type postgresql for more"))]
pub struct RegistrySpec {
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub replicas: i32,
    #[serde(default)]
    pub database: DatabaseSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::resources_schema")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for RegistrySpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            database: DatabaseSpec::default(),
            resources: None,
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.type != 'postgresql' || (has(self.postgresql) && self.postgresql.secretName != '')").message("database.postgresql.secretName is required when database.type is postgresql"))]
pub struct DatabaseSpec {
    #[serde(default, rename = "type")]
    pub kind: DatabaseKind,
    /// The SQLite volume.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Where the PostgreSQL URL is (a key of a Secret in the same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgresql: Option<PostgresqlSpec>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    #[default]
    Sqlite,
    Postgresql,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresqlSpec {
    /// The Secret holding the `postgres://` URL.
    #[schemars(length(min = 1))]
    pub secret_name: String,
    /// The key of the URL in that Secret.
    #[serde(default = "url_key")]
    pub key: String,
}

/// A persistent volume request.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size as a Kubernetes quantity.
    #[serde(default = "one_gi")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,
    /// The storage class; the cluster's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: one_gi(),
            storage_class_name: None,
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouterSpec {
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub replicas: i32,
    /// The event store's volume (one per replica).
    #[serde(default)]
    pub storage: StorageSpec,
    /// The application-facing Service: AMQPS 5671 always; plain AMQP 5672 only with `plainAmqp`.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Also offer plain AMQP (5672, no TLS) to applications: on the router's Service, in
    /// `status.endpoints.amqp` and through the NetworkPolicy. Off by default: applications use AMQPS.
    /// (The adapters reach the router's plain port through the internal `<name>-router-internal`
    /// Service either way, until they can speak AMQPS; only Ferry's adapters may.)
    #[serde(default)]
    pub plain_amqp: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::resources_schema")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for RouterSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            storage: StorageSpec::default(),
            service: ServiceSpec::default(),
            plain_amqp: false,
            resources: None,
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "type")]
    pub kind: ServiceKind,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceKind {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdaptersSpec {
    #[serde(default)]
    pub mqtt: AdapterSpec,
    #[serde(default)]
    pub http: AdapterSpec,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdapterSpec {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    #[serde(default)]
    pub service: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::resources_schema")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for AdapterSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            replicas: 1,
            service: ServiceSpec::default(),
            resources: None,
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) in the same namespace.
    #[schemars(length(min = 1))]
    pub secret_name: String,
    /// The key of that Secret holding the CA certificate the certificate chains to (cert-manager writes
    /// `ca.crt`). With it, the adapters reach the router over AMQPS and verify it; without it, over
    /// plain AMQP on the internal Service, which only the adapters may reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
}

/// The bus between adapters and routers (docs/kubernetes.md "Messaging").
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.mode == 'nats' || !has(self.nats)").message("messaging.nats is only read with messaging.mode nats"))]
pub struct MessagingSpec {
    /// `embedded`: adapters send to the router over AMQP and routers keep their own event store (one
    /// router replica does the work). `nats`: NATS with JetStream is the bus and every component scales.
    #[serde(default)]
    pub mode: MessagingMode,
    /// The NATS cluster (`mode: nats`): `external` or `managed`; managed with its defaults when neither
    /// is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSpec>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MessagingMode {
    #[default]
    Embedded,
    Nats,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.external) && has(self.managed))").message("give messaging.nats.external or messaging.nats.managed, not both"))]
pub struct NatsSpec {
    /// A NATS cluster run by someone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalNatsSpec>,
    /// A NATS cluster the operator runs for this address space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedNatsSpec>,
}

/// An existing NATS cluster with JetStream.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalNatsSpec {
    /// Server URLs, `tls://host:4222` or `nats://host:4222`.
    #[schemars(length(min = 1))]
    pub urls: Vec<String>,
    /// A Secret whose keys `adapter`, `router` and `registry` hold the passwords of the three NATS users
    /// (the registry reads device presence from NATS).
    #[schemars(length(min = 1))]
    pub credentials_secret: String,
    /// The NATS user names.
    #[serde(default)]
    pub users: NatsUsers,
    /// The CA certificate the servers' certificates chain to; the system's roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretKeyRef>,
    /// Replicas of the JetStream streams and buckets Ferry creates (at most the cluster's size).
    #[serde(default = "three")]
    #[schemars(range(min = 1, max = 5))]
    pub stream_replicas: i32,
}

/// The NATS users of the adapters, the routers and the registry.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NatsUsers {
    #[serde(default = "adapter_user")]
    #[schemars(length(min = 1))]
    pub adapter: String,
    #[serde(default = "router_user")]
    #[schemars(length(min = 1))]
    pub router: String,
    /// Reads device presence (the `ferry-presence` bucket) for the presence API and the console.
    #[serde(default = "registry_user")]
    #[schemars(length(min = 1))]
    pub registry: String,
}

impl Default for NatsUsers {
    fn default() -> Self {
        Self {
            adapter: adapter_user(),
            router: router_user(),
            registry: registry_user(),
        }
    }
}

/// A key of a Secret in the same namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1))]
    pub secret_name: String,
    #[serde(default = "ca_key")]
    pub key: String,
}

/// A NATS cluster with JetStream run by the operator: a StatefulSet of the official `nats` image, TLS
/// from the address space's CA, one user per component kind.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.replicas == 1 || (self.replicas >= 3 && self.replicas % 2 == 1)").message("messaging.nats.managed.replicas must be 1 or an odd number of at least 3: JetStream needs a majority of its nodes"))]
pub struct ManagedNatsSpec {
    /// NATS nodes; each stream is kept on min(3, replicas) of them.
    #[serde(default = "three")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// The JetStream volume of each node.
    #[serde(default)]
    pub storage: StorageSpec,
    /// The NATS image (`registry/path/nats:tag`); the operator's default when absent. Its registry must
    /// be one the operator allows, as for `spec.image.registry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]+)?(/[A-Za-z0-9._-]+)+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$"
    ))]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::resources_schema")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for ManagedNatsSpec {
    fn default() -> Self {
        Self {
            replicas: 3,
            storage: StorageSpec::default(),
            image: None,
            resources: None,
        }
    }
}

/// What the operator observed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AddressSpaceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// The Secret whose key `token` is the management API's bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_secret: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Ready,
    Degraded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Ready => "Ready",
            Self::Degraded => "Degraded",
            Self::Failed => "Failed",
        }
    }
}

/// In-cluster addresses (`host:port`) of the endpoints; null when the component is disabled (serialized
/// as null so that a status merge patch removes an endpoint that went away).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    #[serde(default)]
    pub registry: Option<String>,
    #[serde(default)]
    pub amqp: Option<String>,
    #[serde(default)]
    pub amqps: Option<String>,
    #[serde(default)]
    pub mqtt: Option<String>,
    #[serde(default)]
    pub mqtts: Option<String>,
    #[serde(default)]
    pub http: Option<String>,
    #[serde(default)]
    pub https: Option<String>,
}

fn one() -> i32 {
    1
}

fn yes() -> bool {
    true
}

fn one_gi() -> String {
    "1Gi".to_owned()
}

fn three() -> i32 {
    3
}

fn adapter_user() -> String {
    "ferry-adapter".to_owned()
}

fn router_user() -> String {
    "ferry-router".to_owned()
}

fn registry_user() -> String {
    "ferry-registry".to_owned()
}

fn ca_key() -> String {
    "ca.crt".to_owned()
}

fn url_key() -> String {
    "url".to_owned()
}
