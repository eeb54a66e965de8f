//! `Tenant`: a tenant of an address space's registry, with its application users.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A tenant in the registry of an `AddressSpace` of the same namespace.
// The printer columns repeat `type_ = "string"`, which clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "Tenant",
    plural = "tenants",
    singular = "tenant",
    shortname = "ften",
    namespaced,
    status = "TenantStatus",
    doc = "A Ferry tenant: its configuration in the registry of an AddressSpace and its application users.",
    printcolumn(
        name = "Tenant",
        type_ = "string",
        json_path = ".status.registryTenantId"
    ),
    printcolumn(
        name = "AddressSpace",
        type_ = "string",
        json_path = ".spec.addressSpace"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.addressSpace == oldSelf.addressSpace").message("addressSpace is immutable: create a new Tenant instead"))]
#[x_kube(validation = kube::core::Rule::new("has(self.tenantId) == has(oldSelf.tenantId) && (!has(self.tenantId) || self.tenantId == oldSelf.tenantId)").message("tenantId is immutable: create a new Tenant instead"))]
pub struct TenantSpec {
    /// The `AddressSpace` (same namespace) whose registry holds the tenant.
    #[schemars(length(min = 1, max = 63))]
    pub address_space: String,
    /// The tenant id in the registry; `metadata.name` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]{1,128}$"))]
    pub tenant_id: Option<String>,
    /// A disabled tenant's devices can neither connect nor send.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Per adapter type settings; absent means every adapter is enabled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub adapters: Vec<TenantAdapter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_limits: Option<ResourceLimitsSpec>,
    /// Default message properties for the tenant's devices (e.g. `{"ttl": 30}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::free_form")]
    pub defaults: Option<serde_json::Map<String, serde_json::Value>>,
    /// CAs whose client certificates authenticate the tenant's devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_ca: Vec<TrustedCaSpec>,
    /// Application users (AMQP consumers) for this tenant only; their generated passwords are written to
    /// the Secret `<name>-applications`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub applications: Vec<ApplicationSpec>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantAdapter {
    #[serde(rename = "type")]
    pub kind: TenantAdapterType,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "yes")]
    pub device_authentication_required: bool,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantAdapterType {
    #[serde(rename = "hono-mqtt")]
    Mqtt,
    #[serde(rename = "hono-http")]
    Http,
}

impl TenantAdapterType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mqtt => "hono-mqtt",
            Self::Http => "hono-http",
        }
    }
}

/// Runtime limits; `-1` means no limit, TTLs in seconds.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLimitsSpec {
    #[serde(default = "unlimited")]
    #[schemars(range(min = -1))]
    pub max_connections: i64,
    #[serde(default = "unlimited")]
    #[schemars(range(min = -1))]
    pub max_ttl: i64,
    #[serde(default = "unlimited")]
    #[schemars(range(min = -1))]
    pub max_ttd: i64,
    /// Most events stored for the tenant and not yet consumed; `-1`: the platform's default.
    #[serde(default = "unlimited")]
    #[schemars(range(min = -1))]
    pub max_stored_events: i64,
    /// Most bytes of events stored for the tenant; `-1`: the platform's default.
    #[serde(default = "unlimited")]
    #[schemars(range(min = -1))]
    pub max_stored_event_bytes: i64,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.cert) || has(self.publicKey)").message("a trusted CA needs cert or publicKey"))]
pub struct TrustedCaSpec {
    /// RFC 2253 subject DN of the CA.
    #[schemars(length(min = 1))]
    pub subject_dn: String,
    /// The CA certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// The CA's public key (base64 DER), instead of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Algorithm of `publicKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<KeyAlgorithmSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub not_after: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithmSpec {
    #[serde(rename = "RSA")]
    Rsa,
    #[serde(rename = "EC")]
    Ec,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSpec {
    /// The application user's name (what it logs in to the router with). Also the key of its password
    /// in the applications Secret, hence the Secret key alphabet (no `@`, which the registry would allow).
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]{1,128}$"))]
    pub name: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The Secret holding the application users' passwords (key = user name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applications_secret: Option<String>,
    /// The tenant's id in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_tenant_id: Option<String>,
}

impl Tenant {
    /// The id of the tenant in the registry: `spec.tenantId`, else `metadata.name`.
    pub fn registry_tenant_id(&self) -> &str {
        self.spec
            .tenant_id
            .as_deref()
            .or(self.metadata.name.as_deref())
            .unwrap_or_default()
    }
}

fn yes() -> bool {
    true
}

fn unlimited() -> i64 {
    -1
}
