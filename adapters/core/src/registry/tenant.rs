//! [`TenantInfo`]: a tenant's configuration as the registry's internal API returns it, with the checks
//! adapters make per connection and per message (HONO-CONTRACT §2.1, §5).

use ferry_core::ids::TenantId;
use ferry_registry_model::{limit, StoredEventLimits, Tenant};
use serde_json::Value;

/// Which TTL limit of a tenant applies (HONO-CONTRACT §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlLimit {
    /// `max-ttl`: events.
    Event,
    /// `max-ttl-telemetry-qos0`.
    TelemetryQos0,
    /// `max-ttl-telemetry-qos1`.
    TelemetryQos1,
    /// `max-ttl-command-response`.
    CommandResponse,
}

/// A tenant and its id.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantInfo {
    /// The tenant's id.
    pub id: TenantId,
    /// Its configuration as the management API shows it.
    pub config: Tenant,
}

impl TenantInfo {
    /// Whether the tenant's devices may connect and send at all.
    pub fn is_enabled(&self) -> bool {
        self.config.enabled
    }

    /// Whether devices may use this adapter type (`hono-mqtt`, ...): Hono's rule, every adapter when the
    /// tenant lists none. Says nothing about the tenant being enabled.
    pub fn is_adapter_enabled(&self, adapter_type: &str) -> bool {
        self.config.is_adapter_enabled(adapter_type)
    }

    /// Whether devices must authenticate on this adapter type.
    pub fn is_device_authentication_required(&self, adapter_type: &str) -> bool {
        self.config.is_device_authentication_required(adapter_type)
    }

    /// An adapter-specific option of the tenant's entry for `adapter_type` (e.g. `max-ttd`).
    pub fn adapter_option(&self, adapter_type: &str, key: &str) -> Option<&Value> {
        self.config.adapter(adapter_type)?.extra.get(key)
    }

    /// The tenant's `max-connections`, `None` when unlimited.
    pub fn max_connections(&self) -> Option<u64> {
        limit(self.config.resource_limits.as_ref()?.max_connections)
    }

    /// The tenant's own limits on stored events (`max-stored-events`, `max-stored-event-bytes`).
    pub fn stored_event_limits(&self) -> StoredEventLimits {
        self.config
            .resource_limits
            .as_ref()
            .map(ferry_registry_model::ResourceLimits::stored_events)
            .unwrap_or_default()
    }

    /// The tenant's TTL limit in seconds, `None` when unlimited.
    pub fn max_ttl_secs(&self, which: TtlLimit) -> Option<u64> {
        let limits = self.config.resource_limits.as_ref()?;
        limit(match which {
            TtlLimit::Event => limits.max_ttl,
            TtlLimit::TelemetryQos0 => limits.max_ttl_telemetry_qos0,
            TtlLimit::TelemetryQos1 => limits.max_ttl_telemetry_qos1,
            TtlLimit::CommandResponse => limits.max_ttl_command_response,
        })
    }

    /// The TTL (seconds) a message gets: the device's own value, else the device's `defaults.ttl`, else
    /// the tenant's `defaults.ttl`; then capped by the tenant's limit. `None`: no TTL at all.
    pub fn effective_ttl_secs(
        &self,
        which: TtlLimit,
        requested: Option<u64>,
        device_defaults: &serde_json::Map<String, Value>,
    ) -> Option<u64> {
        let wanted = requested
            .or_else(|| device_defaults.get("ttl").and_then(Value::as_u64))
            .or_else(|| self.config.defaults.get("ttl").and_then(Value::as_u64));
        match (wanted, self.max_ttl_secs(which)) {
            (Some(w), Some(max)) => Some(w.min(max)),
            (Some(w), None) => Some(w),
            (None, max) => max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tenant(body: Value) -> TenantInfo {
        TenantInfo {
            id: TenantId::new("t1").expect("id"),
            config: serde_json::from_value(body).expect("tenant"),
        }
    }

    #[test]
    fn adapters_enabled_by_hono_rules() {
        let all = tenant(json!({}));
        assert!(all.is_enabled() && all.is_adapter_enabled("hono-mqtt"));
        let http_only = tenant(json!({
            "adapters": [{"type": "hono-http", "enabled": true, "max-ttd": 30}, {"type": "hono-mqtt"}]
        }));
        assert!(http_only.is_adapter_enabled("hono-http"));
        assert!(!http_only.is_adapter_enabled("hono-mqtt"));
        assert_eq!(
            http_only.adapter_option("hono-http", "max-ttd"),
            Some(&json!(30))
        );
        assert!(!tenant(json!({"enabled": false})).is_enabled());
    }

    #[test]
    fn ttl_prefers_device_value_then_defaults_and_is_capped() {
        let t = tenant(json!({
            "defaults": {"ttl": 100},
            "resource-limits": {"max-ttl": 60, "max-connections": 5}
        }));
        let none = serde_json::Map::new();
        let dev: serde_json::Map<String, Value> =
            serde_json::from_value(json!({"ttl": 20})).expect("map");
        assert_eq!(
            t.effective_ttl_secs(TtlLimit::Event, Some(30), &dev),
            Some(30)
        );
        assert_eq!(t.effective_ttl_secs(TtlLimit::Event, None, &dev), Some(20));
        assert_eq!(t.effective_ttl_secs(TtlLimit::Event, None, &none), Some(60));
        assert_eq!(
            t.effective_ttl_secs(TtlLimit::Event, Some(500), &none),
            Some(60)
        );
        assert_eq!(
            t.effective_ttl_secs(TtlLimit::TelemetryQos0, None, &none),
            Some(100)
        );
        assert_eq!(t.max_connections(), Some(5));
        assert_eq!(
            tenant(json!({})).effective_ttl_secs(TtlLimit::Event, None, &none),
            None
        );
    }
}
