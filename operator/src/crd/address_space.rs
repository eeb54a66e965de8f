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

fn url_key() -> String {
    "url".to_owned()
}
