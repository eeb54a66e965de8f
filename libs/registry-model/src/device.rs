//! The device body of Hono's management API (HONO-CONTRACT.md §3.2).
//!
//! Hono spells the gateway group fields `viaGroups` and `memberOf` in camelCase while everything else is
//! kebab-case; the serde names below follow Hono exactly, since existing Hono clients send them.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use ferry_core::ids::DeviceId;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{join, ValidationError};
use crate::JsonObject;

/// A device (or gateway) as the management API reads and writes it (the id travels in the URL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Device {
    /// A disabled device is refused by every adapter (`assert` answers 404).
    #[serde(default = "crate::default_true")]
    pub enabled: bool,
    /// Default message properties (e.g. `content-type`, `ttl`), overriding the tenant's.
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    pub defaults: JsonObject,
    /// Gateways that may act on behalf of this device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<crate::schema::DeviceIdSchema>")]
    pub via: Vec<DeviceId>,
    /// Gateway groups whose members may act on behalf of this device.
    #[serde(rename = "viaGroups", default, skip_serializing_if = "Vec::is_empty")]
    pub via_groups: Vec<String>,
    /// Gateway groups this (gateway) device belongs to; excludes `via` and `viaGroups`.
    #[serde(rename = "memberOf", default, skip_serializing_if = "Vec::is_empty")]
    pub member_of: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorities: Vec<Authority>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream_message_mapper: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_message_mapper: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_endpoint: Option<CommandEndpoint>,
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    pub ext: JsonObject,
    /// Read-only metadata the registry maintains. Accepted but discarded when a body is deserialized, so
    /// a client that PUTs back what it got cannot forge it; the registry keeps it beside the body and
    /// sets it here before rendering a response.
    #[serde(
        default,
        deserialize_with = "discard",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DeviceStatus>", extend("readOnly" = true))]
    pub status: Option<DeviceStatus>,
}

fn discard<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DeviceStatus>, D::Error> {
    serde::de::IgnoredAny::deserialize(d)?;
    Ok(None)
}

impl Default for Device {
    /// What an empty request body creates: an enabled device without configuration.
    fn default() -> Self {
        Self {
            enabled: true,
            defaults: JsonObject::new(),
            via: Vec::new(),
            via_groups: Vec::new(),
            member_of: Vec::new(),
            authorities: Vec::new(),
            downstream_message_mapper: None,
            upstream_message_mapper: None,
            command_endpoint: None,
            ext: JsonObject::new(),
            status: None,
        }
    }
}

/// Rights granted to a device; only gateways use them today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Authority {
    /// The gateway may auto-provision the edge devices it publishes for.
    AutoProvisioningEnabled,
}

/// Where an adapter that connects out to devices sends their commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CommandEndpoint {
    /// Target URI; `{{deviceId}}` is replaced by the command's device id.
    pub uri: String,
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    pub headers: JsonObject,
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    pub payload_properties: JsonObject,
}

/// Registry-maintained metadata of a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DeviceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::schema::Rfc3339>")]
    pub created: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::schema::Rfc3339>")]
    pub updated: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_user: Option<String>,
    #[serde(default)]
    pub auto_provisioned: bool,
    #[serde(default)]
    pub auto_provisioning_notification_sent: bool,
}

impl Device {
    /// Whether this gateway may auto-provision edge devices.
    pub fn may_auto_provision(&self) -> bool {
        self.authorities
            .contains(&Authority::AutoProvisioningEnabled)
    }

    /// Checks the rules a device must satisfy before it is stored.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut seen = HashSet::new();
        for (i, gateway) in self.via.iter().enumerate() {
            if !seen.insert(gateway) {
                return Err(ValidationError::at(
                    &format!("via[{i}]"),
                    format!("gateway `{gateway}` is listed twice"),
                ));
            }
        }
        check_group_ids("viaGroups", &self.via_groups)?;
        check_group_ids("memberOf", &self.member_of)?;
        if !self.member_of.is_empty() && (!self.via.is_empty() || !self.via_groups.is_empty()) {
            return Err(ValidationError::at(
                "memberOf",
                "a gateway group member cannot itself have via or viaGroups; set one side only",
            ));
        }
        for (field, mapper) in [
            ("downstream-message-mapper", &self.downstream_message_mapper),
            ("upstream-message-mapper", &self.upstream_message_mapper),
        ] {
            if mapper.as_deref().is_some_and(|m| m.trim().is_empty()) {
                return Err(ValidationError::at(
                    field,
                    "must not be empty; omit it instead",
                ));
            }
        }
        if let Some(endpoint) = &self.command_endpoint {
            if endpoint.uri.trim().is_empty() {
                return Err(ValidationError::at(
                    &join("command-endpoint", "uri"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
}

/// Group ids share the device id alphabet: they are matched against gateways' `memberOf` entries and
/// travel in the same places.
fn check_group_ids(field: &str, ids: &[String]) -> Result<(), ValidationError> {
    let mut seen = HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        let path = format!("{field}[{i}]");
        DeviceId::new(id).map_err(|e| ValidationError::at(&path, format!("group id: {e}")))?;
        if !seen.insert(id.as_str()) {
            return Err(ValidationError::at(
                &path,
                format!("group `{id}` is listed twice"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
