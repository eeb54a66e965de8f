//! The tenant body of Hono's management API (HONO-CONTRACT.md §5) and the helpers adapters use to read it.
//!
//! Field names are Hono's kebab-case ones; unknown fields and unknown enum values are refused so a typo
//! (`"max-conections"`) fails loudly instead of silently configuring nothing. Only `ext`, `defaults` and an
//! adapter entry's extra properties (e.g. `max-ttd`) are free-form, as in Hono's schema.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, Utc};
use ferry_core::hono::adapter_type;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{check_base64, check_window, join, ValidationError};
use crate::JsonObject;

/// A tenant as the management API reads and writes it (the id travels in the URL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Tenant {
    /// A disabled tenant's devices can neither connect nor send.
    #[serde(default = "crate::default_true")]
    pub enabled: bool,
    /// Alternative id to look the tenant up by (an LDH label, unique among tenants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Tenants of one group may share trusted CA subject DNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_anchor_group: Option<String>,
    /// Default message properties (e.g. `{"ttl": 30}`) for the tenant's devices.
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    pub defaults: JsonObject,
    /// Metering rounds each payload up to a multiple of this many bytes; 0 = no rounding.
    #[serde(default)]
    pub minimum_message_size: i64,
    /// Free extension properties (`messaging-type`, `invalidate-cache-on-update`, ...).
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    pub ext: JsonObject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_limits: Option<RegistrationLimits>,
    /// Per-adapter configuration; absent means every adapter is enabled with its defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapters: Option<Vec<Adapter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_limits: Option<ResourceLimits>,
    /// CAs whose client certificates authenticate this tenant's devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_ca: Vec<TrustedCa>,
}

impl Default for Tenant {
    /// What an empty request body creates: an enabled tenant on every adapter.
    fn default() -> Self {
        Self {
            enabled: true,
            alias: None,
            trust_anchor_group: None,
            defaults: JsonObject::new(),
            minimum_message_size: 0,
            ext: JsonObject::new(),
            tracing: None,
            registration_limits: None,
            adapters: None,
            resource_limits: None,
            trusted_ca: Vec::new(),
        }
    }
}

/// Turns a Hono limit into an option: `-1` (or any negative value) means "no limit".
pub fn limit(value: i64) -> Option<u64> {
    u64::try_from(value).ok()
}

impl Tenant {
    /// The configuration entry for one adapter type (`hono-mqtt`, ...), if the tenant has one.
    pub fn adapter(&self, type_name: &str) -> Option<&Adapter> {
        self.adapters
            .as_deref()?
            .iter()
            .find(|a| a.adapter_type.as_str() == type_name)
    }

    /// Whether devices may use this adapter type. Without an `adapters` list every adapter is enabled
    /// (Hono's rule); with one, only listed adapters with `enabled: true` are. Says nothing about whether
    /// the tenant itself is enabled.
    pub fn is_adapter_enabled(&self, type_name: &str) -> bool {
        match &self.adapters {
            None => true,
            Some(_) => self.adapter(type_name).is_some_and(|a| a.enabled),
        }
    }

    /// Whether devices must authenticate on this adapter type (true unless an entry says otherwise).
    pub fn is_device_authentication_required(&self, type_name: &str) -> bool {
        self.adapter(type_name)
            .is_none_or(|a| a.device_authentication_required)
    }

    /// The trusted CAs with a given subject DN (several may overlap in time during a CA rollover).
    pub fn trusted_cas_for<'a>(
        &'a self,
        subject_dn: &'a str,
    ) -> impl Iterator<Item = &'a TrustedCa> + 'a {
        self.trusted_ca
            .iter()
            .filter(move |ca| ca.subject_dn == subject_dn)
    }

    /// Gives every trusted CA without an `id` a fresh one, as the registry does on write.
    pub fn assign_trusted_ca_ids(&mut self) {
        for ca in self.trusted_ca.iter_mut().filter(|ca| ca.id.is_none()) {
            ca.id = Some(uuid::Uuid::new_v4().simple().to_string());
        }
    }

    /// Checks the rules a tenant must satisfy before it is stored.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(alias) = &self.alias {
            check_ldh_label("alias", alias)?;
        }
        if let Some(group) = &self.trust_anchor_group {
            if group.trim().is_empty() {
                return Err(ValidationError::at(
                    "trust-anchor-group",
                    "must not be empty",
                ));
            }
        }
        if self.minimum_message_size < 0 {
            return Err(ValidationError::at(
                "minimum-message-size",
                format!("must be 0 or more, got {}", self.minimum_message_size),
            ));
        }
        if let Some(tracing) = &self.tracing {
            if tracing
                .sampling_mode_per_auth_id
                .keys()
                .any(|k| k.is_empty())
            {
                return Err(ValidationError::at(
                    "tracing.sampling-mode-per-auth-id",
                    "auth ids must not be empty",
                ));
            }
        }
        if let Some(limits) = &self.registration_limits {
            check_limit("registration-limits.max-devices", limits.max_devices)?;
            check_limit(
                "registration-limits.max-credentials-per-device",
                limits.max_credentials_per_device,
            )?;
        }
        if let Some(adapters) = &self.adapters {
            validate_adapters(adapters)?;
        }
        if let Some(limits) = &self.resource_limits {
            limits.validate("resource-limits")?;
        }
        let mut ids = HashSet::new();
        for (i, ca) in self.trusted_ca.iter().enumerate() {
            let path = format!("trusted-ca[{i}]");
            ca.validate(&path)?;
            if let Some(id) = &ca.id {
                if !ids.insert(id.as_str()) {
                    return Err(ValidationError::at(
                        &join(&path, "id"),
                        format!("`{id}` is used by another trusted CA of this tenant"),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn validate_adapters(adapters: &[Adapter]) -> Result<(), ValidationError> {
    if adapters.is_empty() {
        return Err(ValidationError::at(
            "adapters",
            "must not be empty; omit it to enable every adapter",
        ));
    }
    let mut seen = HashSet::new();
    for (i, adapter) in adapters.iter().enumerate() {
        if !seen.insert(adapter.adapter_type.as_str()) {
            return Err(ValidationError::at(
                &format!("adapters[{i}].type"),
                format!("{} is configured more than once", adapter.adapter_type),
            ));
        }
    }
    Ok(())
}

fn check_limit(path: &str, value: i64) -> Result<(), ValidationError> {
    if value < -1 {
        return Err(ValidationError::at(
            path,
            format!("must be -1 (no limit) or more, got {value}"),
        ));
    }
    Ok(())
}

/// RFC 5890 LDH label, lower case only as Hono's schema demands: `[a-z0-9-]`, 1–63 characters, no
/// leading or trailing hyphen. The alias ends up as a DNS label (SNI host name), hence the strictness.
fn check_ldh_label(path: &str, label: &str) -> Result<(), ValidationError> {
    let valid = (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(ValidationError::at(
            path,
            format!(
                "`{label}` is not a DNS label: use 1-63 lower-case letters, digits and hyphens, not starting or ending with a hyphen"
            ),
        ))
    }
}

/// A protocol adapter type name, restricted to the ones Hono defines (`hono-http`, `hono-mqtt`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AdapterType(&'static str);

impl AdapterType {
    pub fn new(name: &str) -> Result<Self, ValidationError> {
        adapter_type::ALL
            .iter()
            .find(|known| **known == name)
            .map(|known| Self(known))
            .ok_or_else(|| {
                ValidationError::new(format!(
                    "unknown adapter type `{name}`; known types: {}",
                    adapter_type::ALL.join(", ")
                ))
            })
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl fmt::Display for AdapterType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for AdapterType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for AdapterType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <Cow<'de, str>>::deserialize(d)?;
        Self::new(&name).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for AdapterType {
    fn schema_name() -> Cow<'static, str> {
        "AdapterType".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "enum": adapter_type::ALL })
    }
}

/// One entry of a tenant's `adapters` list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Adapter {
    #[serde(rename = "type")]
    pub adapter_type: AdapterType,
    /// Hono's schema defaults this to false: listing an adapter does not enable it.
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "crate::default_true")]
    pub device_authentication_required: bool,
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    pub ext: JsonObject,
    /// Adapter-specific options such as `max-ttd`; Hono allows any extra property here.
    #[serde(flatten)]
    pub extra: JsonObject,
}

impl Adapter {
    /// A disabled entry with Hono's defaults.
    pub fn new(adapter_type: AdapterType) -> Self {
        Self {
            adapter_type,
            enabled: false,
            device_authentication_required: true,
            ext: JsonObject::new(),
            extra: JsonObject::new(),
        }
    }
}

/// How many spans are recorded for the tenant's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SamplingMode {
    #[default]
    Default,
    All,
    None,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TracingConfig {
    #[serde(default)]
    pub sampling_mode: SamplingMode,
    /// Overrides `sampling-mode` for particular auth ids.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sampling_mode_per_auth_id: std::collections::BTreeMap<String, SamplingMode>,
}

/// Limits on what may be registered; `-1` = no limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RegistrationLimits {
    #[serde(default = "crate::unlimited")]
    pub max_devices: i64,
    #[serde(default = "crate::unlimited")]
    pub max_credentials_per_device: i64,
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        Self {
            max_devices: -1,
            max_credentials_per_device: -1,
        }
    }
}

/// Runtime limits the adapters enforce; `-1` = no limit, TTLs in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ResourceLimits {
    #[serde(default = "crate::unlimited")]
    pub max_connections: i64,
    #[serde(default = "crate::unlimited")]
    pub max_ttl: i64,
    #[serde(default = "crate::unlimited")]
    pub max_ttl_telemetry_qos0: i64,
    #[serde(default = "crate::unlimited")]
    pub max_ttl_telemetry_qos1: i64,
    #[serde(default = "crate::unlimited")]
    pub max_ttl_command_response: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<DataVolume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_duration: Option<ConnectionDuration>,
    /// Ferry: most events stored for the tenant and not yet consumed (the router's event store in
    /// embedded mode, the tenant's JetStream stream in cluster mode); past it the tenant's devices get
    /// 503 (MQTT: no PUBACK) for events. `-1`: the platform's default (the router's
    /// `max_events_per_tenant`, the adapters' stream limits), never unlimited.
    #[serde(
        default = "crate::unlimited",
        skip_serializing_if = "crate::is_unlimited"
    )]
    pub max_stored_events: i64,
    /// Ferry: most bytes of events stored for the tenant, as `max-stored-events`.
    #[serde(
        default = "crate::unlimited",
        skip_serializing_if = "crate::is_unlimited"
    )]
    pub max_stored_event_bytes: i64,
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    pub ext: JsonObject,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self {
            max_connections: -1,
            max_ttl: -1,
            max_ttl_telemetry_qos0: -1,
            max_ttl_telemetry_qos1: -1,
            max_ttl_command_response: -1,
            data_volume: None,
            connection_duration: None,
            max_stored_events: -1,
            max_stored_event_bytes: -1,
            ext: JsonObject::new(),
        }
    }
}

impl ResourceLimits {
    /// The tenant's own stored-event limits (`max-stored-events`, `max-stored-event-bytes`).
    pub fn stored_events(&self) -> StoredEventLimits {
        StoredEventLimits {
            max_events: limit(self.max_stored_events),
            max_bytes: limit(self.max_stored_event_bytes),
        }
    }

    fn validate(&self, path: &str) -> Result<(), ValidationError> {
        for (field, value) in [
            ("max-connections", self.max_connections),
            ("max-ttl", self.max_ttl),
            ("max-ttl-telemetry-qos0", self.max_ttl_telemetry_qos0),
            ("max-ttl-telemetry-qos1", self.max_ttl_telemetry_qos1),
            ("max-ttl-command-response", self.max_ttl_command_response),
            ("max-stored-events", self.max_stored_events),
            ("max-stored-event-bytes", self.max_stored_event_bytes),
        ] {
            check_limit(&join(path, field), value)?;
        }
        if let Some(volume) = &self.data_volume {
            let path = join(path, "data-volume");
            check_limit(&join(&path, "max-bytes"), volume.max_bytes)?;
            if let Some(period) = &volume.period {
                period.validate(&join(&path, "period"))?;
            }
        }
        if let Some(duration) = &self.connection_duration {
            let path = join(path, "connection-duration");
            check_limit(&join(&path, "max-minutes"), duration.max_minutes)?;
            if let Some(period) = &duration.period {
                period.validate(&join(&path, "period"))?;
            }
        }
        Ok(())
    }
}

/// A tenant's own limits on its stored events (`resource-limits` `max-stored-events`,
/// `max-stored-event-bytes`); `None`: the platform's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct StoredEventLimits {
    /// Most events stored and not yet consumed.
    pub max_events: Option<u64>,
    /// Most bytes of them.
    pub max_bytes: Option<u64>,
}

/// A data volume plan: at most `max-bytes` per accounting period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DataVolume {
    #[schemars(with = "crate::schema::Rfc3339")]
    pub effective_since: DateTime<Utc>,
    #[serde(default = "crate::unlimited")]
    pub max_bytes: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
}

/// A connection time plan: at most `max-minutes` of device connections per accounting period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConnectionDuration {
    #[schemars(with = "crate::schema::Rfc3339")]
    pub effective_since: DateTime<Utc>,
    #[serde(default = "crate::unlimited")]
    pub max_minutes: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PeriodMode {
    /// UTC calendar months; the first one is pro-rated.
    Monthly,
    /// Every `no-of-days` days from `effective-since`.
    Days,
}

/// An accounting period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Period {
    pub mode: PeriodMode,
    /// Period length; required for `days`, ignored for `monthly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_of_days: Option<i64>,
}

impl Period {
    fn validate(&self, path: &str) -> Result<(), ValidationError> {
        match (self.mode, self.no_of_days) {
            (PeriodMode::Days, None) => Err(ValidationError::at(
                &join(path, "no-of-days"),
                "is required when mode is days",
            )),
            (_, Some(days)) if days < 1 => Err(ValidationError::at(
                &join(path, "no-of-days"),
                format!("must be 1 or more, got {days}"),
            )),
            _ => Ok(()),
        }
    }
}

/// Public key algorithm of a trusted CA or raw public key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum KeyAlgorithm {
    #[default]
    #[serde(rename = "RSA")]
    Rsa,
    #[serde(rename = "EC")]
    Ec,
}

/// The placeholders Hono's auth-id and device-id templates may use.
const TEMPLATE_PLACEHOLDERS: &[&str] = &[
    "{{subject-dn}}",
    "{{subject-cn}}",
    "{{subject-ou}}",
    "{{subject-o}}",
];

/// A trust anchor: client certificates it issued authenticate the tenant's devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TrustedCa {
    /// Unique among the tenant's CAs; the registry assigns one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// RFC 2253 subject DN. Required: Ferry does not extract it from `cert`.
    pub subject_dn: String,
    /// DER encoding of the subject DN, base64; helps OCSP responders that compare bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_dn_bytes: Option<String>,
    /// Base64 DER public key; this or `cert` must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Algorithm of `public-key` (RSA when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<KeyAlgorithm>,
    /// Base64 DER CA certificate; this or `public-key` must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::schema::Rfc3339>")]
    pub not_before: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::schema::Rfc3339>")]
    pub not_after: Option<DateTime<Utc>>,
    /// Builds a device's auth id from its certificate subject (`{{subject-cn}}`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_id_template: Option<String>,
    #[serde(default)]
    pub auto_provisioning_enabled: bool,
    #[serde(default)]
    pub auto_provision_as_gateway: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_provisioning_device_id_template: Option<String>,
    #[serde(default)]
    pub ocsp_revocation_enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp_responder_uri: Option<String>,
    /// Base64 DER certificate that signs OCSP responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp_responder_cert: Option<String>,
    #[serde(default)]
    pub ocsp_nonce_enabled: bool,
}

impl TrustedCa {
    /// Whether the CA may authenticate devices at `now`.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.not_before.is_none_or(|nb| nb <= now) && self.not_after.is_none_or(|na| now <= na)
    }

    /// The key algorithm, RSA unless stated.
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.algorithm.unwrap_or_default()
    }

    fn validate(&self, path: &str) -> Result<(), ValidationError> {
        if let Some(id) = &self.id {
            if id.trim().is_empty() {
                return Err(ValidationError::at(&join(path, "id"), "must not be empty"));
            }
        }
        if self.subject_dn.trim().is_empty() {
            return Err(ValidationError::at(
                &join(path, "subject-dn"),
                "must not be empty",
            ));
        }
        if self.public_key.is_none() && self.cert.is_none() {
            return Err(ValidationError::at(
                path,
                "one of public-key or cert is required",
            ));
        }
        check_base64(path, "public-key", self.public_key.as_deref())?;
        check_base64(path, "cert", self.cert.as_deref())?;
        check_base64(path, "subject-dn-bytes", self.subject_dn_bytes.as_deref())?;
        check_base64(
            path,
            "ocsp-responder-cert",
            self.ocsp_responder_cert.as_deref(),
        )?;
        check_window(path, self.not_before.as_ref(), self.not_after.as_ref())?;
        for (field, template) in [
            ("auth-id-template", &self.auth_id_template),
            (
                "auto-provisioning-device-id-template",
                &self.auto_provisioning_device_id_template,
            ),
        ] {
            if let Some(template) = template {
                if !TEMPLATE_PLACEHOLDERS.iter().any(|p| template.contains(p)) {
                    return Err(ValidationError::at(
                        &join(path, field),
                        format!(
                            "must contain at least one of {}",
                            TEMPLATE_PLACEHOLDERS.join(", ")
                        ),
                    ));
                }
            }
        }
        if self.ocsp_revocation_enabled && self.cert.is_none() && self.ocsp_responder_cert.is_none()
        {
            return Err(ValidationError::at(
                path,
                "ocsp-revocation-enabled needs cert or ocsp-responder-cert to verify responses",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
