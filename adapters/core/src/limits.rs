//! The tenant's data volume limit (`resource-limits.data-volume`, HONO-CONTRACT §5), counted by each
//! adapter instance for itself.
//!
//! Hono asks Prometheus for the bytes a tenant sent in the current period, across all adapter
//! instances. Ferry has no Prometheus in the message path: each adapter instance counts the payload
//! bytes it let through per tenant and period, in lock-free counters, and refuses messages once its
//! own count would pass `max-bytes`. With N instances a tenant may therefore send up to N × `max-bytes`
//! per period in the worst case; with one instance (`ferry up`) the limit is exact. The counters live in
//! memory: a restarted instance starts its period from zero.
//!
//! Periods (as Hono): `days` = every `no-of-days` days from `effective-since`; `monthly` (the default)
//! = UTC calendar months, the first one pro-rated from `effective-since` to the month's end. Before
//! `effective-since` there is no limit. Payloads are metered rounded up to the tenant's
//! `minimum-message-size`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use ferry_core::ids::TenantId;
use ferry_registry_model::{limit, PeriodMode};

use crate::registry::TenantInfo;

/// The current accounting period of a tenant's data volume: when it started and how many bytes it
/// allows. `None` from [`period`] means no limit applies now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Start, unix seconds.
    pub start: i64,
    /// Bytes allowed in this period.
    pub max_bytes: u64,
}

/// Whether `tenant` has a data volume limit at all ([`period`] may still find none in force).
pub fn meters_volume(tenant: &TenantInfo) -> bool {
    tenant
        .config
        .resource_limits
        .as_ref()
        .and_then(|r| r.data_volume.as_ref())
        .is_some_and(|v| limit(v.max_bytes).is_some())
}

/// The period of `tenant`'s data volume plan that contains `now`.
pub fn period(tenant: &TenantInfo, now: DateTime<Utc>) -> Option<Period> {
    let volume = tenant
        .config
        .resource_limits
        .as_ref()?
        .data_volume
        .as_ref()?;
    let max_bytes = limit(volume.max_bytes)?;
    let since = volume.effective_since;
    if now < since {
        return None;
    }
    let mode = volume
        .period
        .as_ref()
        .map_or(PeriodMode::Monthly, |p| p.mode);
    match mode {
        PeriodMode::Days => {
            let days = volume
                .period
                .as_ref()
                .and_then(|p| p.no_of_days)
                .filter(|d| *d > 0)
                .unwrap_or(30);
            let length = days.checked_mul(86_400)?;
            let elapsed = (now - since).num_seconds();
            let start = since.timestamp() + elapsed / length * length;
            Some(Period { start, max_bytes })
        }
        PeriodMode::Monthly => {
            let month_start = Utc
                .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
                .single()?;
            if since >= month_start {
                // The first month: pro-rated from the start day to the month's end.
                let days = days_in_month(now.year(), now.month());
                let remaining = days - since.day() + 1;
                let max_bytes =
                    u64::try_from(u128::from(max_bytes) * u128::from(remaining) / u128::from(days))
                        .unwrap_or(u64::MAX);
                Some(Period {
                    start: since.timestamp(),
                    max_bytes,
                })
            } else {
                Some(Period {
                    start: month_start.timestamp(),
                    max_bytes,
                })
            }
        }
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (y, m) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|d| d.pred_opt())
        .map_or(30, |d| d.day())
}

/// The bytes a payload counts for: rounded up to a multiple of the tenant's `minimum-message-size`.
pub fn metered(tenant: &TenantInfo, bytes: usize) -> u64 {
    let bytes = bytes as u64;
    match u64::try_from(tenant.config.minimum_message_size) {
        Ok(min) if min > 0 => bytes.div_ceil(min).max(1).saturating_mul(min),
        _ => bytes,
    }
}

/// One tenant's count in its current period.
#[derive(Debug, Default)]
pub struct TenantVolume {
    period_start: AtomicI64,
    bytes: AtomicU64,
}

impl TenantVolume {
    /// Counts `bytes` of `tenant`'s payload at `now` if the period's volume allows them; false (and
    /// nothing counted) when they would exceed it.
    pub fn admit(&self, tenant: &TenantInfo, bytes: usize, now: DateTime<Utc>) -> bool {
        let Some(period) = period(tenant, now) else {
            return true;
        };
        self.roll(period.start);
        let size = metered(tenant, bytes);
        let before = self.bytes.fetch_add(size, Ordering::AcqRel);
        if before.saturating_add(size) > period.max_bytes {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Whether the period's volume is used up already (checked when a device connects).
    pub fn is_exhausted(&self, tenant: &TenantInfo, now: DateTime<Utc>) -> bool {
        let Some(period) = period(tenant, now) else {
            return false;
        };
        self.roll(period.start);
        self.bytes.load(Ordering::Acquire) >= period.max_bytes
    }

    /// Bytes counted in the current period.
    pub fn used(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Starts a new count when the period moved on (one thread wins the swap and resets).
    fn roll(&self, start: i64) {
        let seen = self.period_start.load(Ordering::Acquire);
        if seen != start
            && self
                .period_start
                .compare_exchange(seen, start, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.bytes.store(0, Ordering::Release);
        }
    }
}

/// The per-tenant counters of one adapter instance. Look a tenant's counter up once per connection (MQTT)
/// or request (HTTP, a read lock); counting is lock-free.
#[derive(Debug, Default)]
pub struct VolumeMeter {
    tenants: RwLock<HashMap<TenantId, Arc<TenantVolume>>>,
}

impl VolumeMeter {
    /// An empty meter.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of `tenant`.
    pub fn tenant(&self, tenant: &TenantId) -> Arc<TenantVolume> {
        if let Some(v) = self
            .tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
        {
            return v.clone();
        }
        self.tenants
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.clone())
            .or_default()
            .clone()
    }
}

/// Counts a command's payload against its tenant's data volume (HONO-CONTRACT §5: over the volume,
/// commands are `rejected`). When the tenant cannot be looked up the command passes: delivery checks the
/// device anyway, and the registry's trouble is not the application's fault.
pub async fn admit_command(
    registry: &crate::registry::RegistryClient,
    meter: &VolumeMeter,
    command: &crate::downstream::Command,
) -> bool {
    match registry.tenant(&command.tenant).await {
        Ok(Some(t)) => meter
            .tenant(&command.tenant)
            .admit(&t, command.payload.len(), Utc::now()),
        _ => true,
    }
}

/// The AMQP error condition of a command refused for the tenant's data volume.
pub const RESOURCE_LIMIT_EXCEEDED: &str = "amqp:resource-limit-exceeded";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tenant(limits: serde_json::Value) -> TenantInfo {
        TenantInfo {
            id: TenantId::new("t1").expect("id"),
            config: serde_json::from_value(json!({ "resource-limits": limits })).expect("tenant"),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn periods_of_days_run_from_effective_since() {
        let t = tenant(json!({"data-volume": {
            "effective-since": "2026-01-01T00:00:00Z", "max-bytes": 100,
            "period": {"mode": "days", "no-of-days": 10}}}));
        assert_eq!(period(&t, at("2025-12-31T23:00:00Z")), None);
        assert_eq!(
            period(&t, at("2026-01-15T12:00:00Z")),
            Some(Period {
                start: at("2026-01-11T00:00:00Z").timestamp(),
                max_bytes: 100
            })
        );
    }

    #[test]
    fn the_first_month_is_pro_rated() {
        let t = tenant(json!({"data-volume": {
            "effective-since": "2026-04-21T00:00:00Z", "max-bytes": 3000,
            "period": {"mode": "monthly"}}}));
        // April has 30 days; from the 21st 10 remain.
        assert_eq!(
            period(&t, at("2026-04-25T00:00:00Z")),
            Some(Period {
                start: at("2026-04-21T00:00:00Z").timestamp(),
                max_bytes: 1000
            })
        );
        assert_eq!(
            period(&t, at("2026-05-03T00:00:00Z")),
            Some(Period {
                start: at("2026-05-01T00:00:00Z").timestamp(),
                max_bytes: 3000
            })
        );
    }

    #[test]
    fn counting_stops_at_the_limit_and_restarts_with_the_period() {
        let t = tenant(json!({"data-volume": {
            "effective-since": "2026-01-01T00:00:00Z", "max-bytes": 100,
            "period": {"mode": "days", "no-of-days": 1}}}));
        let v = TenantVolume::default();
        let now = at("2026-02-01T10:00:00Z");
        assert!(v.admit(&t, 60, now));
        assert!(!v.is_exhausted(&t, now));
        assert!(!v.admit(&t, 41, now), "60 + 41 > 100");
        assert!(v.admit(&t, 40, now));
        assert!(v.is_exhausted(&t, now));
        assert!(!v.admit(&t, 1, now));
        assert!(v.admit(&t, 100, at("2026-02-02T00:00:01Z")));
        assert_eq!(v.used(), 100);
        // No plan, or an unlimited one: everything passes, and the pipeline need not count at all.
        assert!(TenantVolume::default().admit(&tenant(json!({})), usize::MAX, now));
        assert!(meters_volume(&t));
        assert!(!meters_volume(&tenant(json!({}))));
        assert!(!meters_volume(&tenant(
            json!({"data-volume": {"effective-since": "2026-01-01T00:00:00Z", "max-bytes": -1}})
        )));
    }

    #[test]
    fn payloads_are_metered_in_minimum_message_sizes() {
        let mut t = tenant(json!({}));
        t.config.minimum_message_size = 4096;
        assert_eq!(metered(&t, 1024), 4096);
        assert_eq!(metered(&t, 10 * 1024), 12 * 1024);
        assert_eq!(metered(&t, 0), 4096);
        t.config.minimum_message_size = 0;
        assert_eq!(metered(&t, 10), 10);
    }
}
