//! Hono's adapter metrics (HONO-CONTRACT §6), shared by every adapter of a process.
//!
//! Each metric family exists once per [`Admin`] ([`HonoMetrics::new`]); every adapter reports into it
//! under Hono's common tags `component_type="adapter"` and `component_name` (`hono-mqtt`, `hono-http`),
//! so that `ferry up` serves one `/metrics` for both adapters, with names Hono's dashboards know.
//!
//! Label sets hold the tenant as its [`TenantId`] (a reference-counted string), so that counting a
//! message clones a pointer rather than allocating a `String`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use ferry_core::admin::Admin;
use ferry_core::ids::TenantId;

use crate::downstream::MessageKind;

/// A tenant as a label value.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TenantLabel(pub TenantId);

impl EncodeLabelValue for TenantLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.0.as_str())
    }
}

/// `component_type`, `component_name`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    /// Always `adapter` here.
    pub component_type: &'static str,
    /// `hono-mqtt`, `hono-http`.
    pub component_name: &'static str,
}

/// Component and tenant.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// Always `adapter` here.
    pub component_type: &'static str,
    /// The adapter type.
    pub component_name: &'static str,
    /// The tenant.
    pub tenant: TenantLabel,
}

/// Connection attempts by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// Always `adapter` here.
    pub component_type: &'static str,
    /// The adapter type.
    pub component_name: &'static str,
    /// Hono's outcome (`succeeded`, `unauthorized`, ...).
    pub outcome: &'static str,
}

/// Telemetry and events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// Always `adapter` here.
    pub component_type: &'static str,
    /// The adapter type.
    pub component_name: &'static str,
    /// The tenant.
    pub tenant: TenantLabel,
    /// `telemetry` or `event`.
    pub r#type: &'static str,
    /// `forwarded`, `undeliverable`, `unprocessable`.
    pub status: &'static str,
    /// `0`, `1`.
    pub qos: &'static str,
    /// `none`, `command`, `expired`.
    pub ttd: &'static str,
}

/// Commands and command responses.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// Always `adapter` here.
    pub component_type: &'static str,
    /// The adapter type.
    pub component_name: &'static str,
    /// The tenant.
    pub tenant: TenantLabel,
    /// `one-way`, `request`, `response`.
    pub direction: &'static str,
    /// `forwarded`, `undeliverable`, `unprocessable`.
    pub status: &'static str,
}

/// What became of a device message (Hono's `status` tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Accepted downstream (QoS 0: handed to the router).
    Forwarded,
    /// No consumer took it.
    Undeliverable,
    /// Refused on the adapter's side (e.g. the tenant's data volume is used up).
    Unprocessable,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Undeliverable => "undeliverable",
            Self::Unprocessable => "unprocessable",
        }
    }
}

/// What became of a device's wait for a command (Hono's `ttd` tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttd {
    /// The device did not wait.
    None,
    /// A command went back to it.
    Command,
    /// The wait ended without one.
    Expired,
}

impl Ttd {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Command => "command",
            Self::Expired => "expired",
        }
    }
}

struct Families {
    connections: Family<TenantLabels, Gauge>,
    unauthenticated: Family<ComponentLabels, Gauge>,
    attempts: Family<AttemptLabels, Counter>,
    messages: Family<MessageLabels, Counter>,
    payload_bytes: Family<MessageLabels, Counter>,
    commands: Family<CommandLabels, Counter>,
    command_bytes: Family<CommandLabels, Counter>,
}

/// The Hono metric families of one process (one [`Admin`]); cheap to clone. Create it once per
/// `Admin` and hand [`HonoMetrics::component`] to each adapter.
#[derive(Clone)]
pub struct HonoMetrics {
    families: Arc<Families>,
}

impl std::fmt::Debug for HonoMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HonoMetrics").finish_non_exhaustive()
    }
}

impl HonoMetrics {
    /// Creates the families and registers them with `admin`. Call once per `Admin`: a second call
    /// would register every name twice.
    pub fn new(admin: &Admin) -> Self {
        let f = Families {
            connections: Family::default(),
            unauthenticated: Family::default(),
            attempts: Family::default(),
            messages: Family::default(),
            payload_bytes: Family::default(),
            commands: Family::default(),
            command_bytes: Family::default(),
        };
        admin.register(
            "hono_connections_authenticated",
            "Authenticated device connections per adapter and tenant",
            f.connections.clone(),
        );
        admin.register(
            "hono_connections_unauthenticated",
            "Unauthenticated device connections per adapter",
            f.unauthenticated.clone(),
        );
        admin.register(
            "hono_connections_attempts",
            "Device connection attempts per adapter and outcome",
            f.attempts.clone(),
        );
        admin.register(
            "hono_telemetry_processing",
            "Telemetry and events per adapter, tenant, type, status, QoS and ttd outcome",
            f.messages.clone(),
        );
        admin.register(
            "hono_telemetry_payload_bytes",
            "Payload bytes of telemetry and events per adapter, tenant, type, status, QoS and ttd outcome",
            f.payload_bytes.clone(),
        );
        admin.register(
            "hono_command_processing",
            "Commands and command responses per adapter, tenant, direction and status",
            f.commands.clone(),
        );
        admin.register(
            "hono_command_payload_bytes",
            "Payload bytes of commands and command responses per adapter, tenant, direction and status",
            f.command_bytes.clone(),
        );
        Self {
            families: Arc::new(f),
        }
    }

    /// The view one adapter reports through, labelled `component_name` = `adapter_type`.
    pub fn component(&self, adapter_type: &'static str) -> AdapterMetrics {
        AdapterMetrics {
            families: self.families.clone(),
            name: adapter_type,
            tallies: Arc::default(),
        }
    }
}

/// The message and payload-byte counters of one label set, looked up once: counting a message is then
/// two atomic adds, not two hashed lookups under the families' locks (QoS 0 telemetry counts per
/// message). The families never drop a label set, so a kept counter stays the exported one.
#[derive(Clone, Debug)]
struct Tally {
    messages: Counter,
    bytes: Counter,
}

impl Tally {
    /// One message of `bytes` payload.
    fn add(&self, bytes: usize) {
        self.messages.inc();
        self.bytes.inc_by(bytes as u64);
    }
}

/// One tenant's counters of telemetry and events without `ttd`, by QoS and outcome
/// ([`AdapterMetrics::tenant_tally`]), for callers that count many messages of one tenant. Each series
/// is made when first counted, as the per-call path makes it: a tenant whose messages all went through
/// shows no `undeliverable` series.
pub struct TenantTally {
    families: Arc<Families>,
    name: &'static str,
    tenant: TenantId,
    /// Telemetry QoS 0, telemetry QoS 1, events (QoS 1); each by forwarded, undeliverable,
    /// unprocessable.
    by_row: [[OnceLock<Tally>; 3]; 3],
}

impl std::fmt::Debug for TenantTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTally")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl TenantTally {
    /// One message of `kind` and `qos` with `bytes` of payload that ended as `status`.
    pub fn add(&self, kind: MessageKind, qos: u8, status: Status, bytes: usize) {
        let row = match (kind, qos) {
            (MessageKind::Telemetry, 0) => 0,
            (MessageKind::Telemetry, _) => 1,
            (MessageKind::Event, _) => 2,
        };
        let column = match status {
            Status::Forwarded => 0,
            Status::Undeliverable => 1,
            Status::Unprocessable => 2,
        };
        self.by_row[row][column]
            .get_or_init(|| {
                let labels = message_labels(self.name, &self.tenant, kind, qos, status, Ttd::None);
                Tally {
                    messages: self.families.messages.get_or_create(&labels).clone(),
                    bytes: self.families.payload_bytes.get_or_create(&labels).clone(),
                }
            })
            .add(bytes);
    }

    /// One QoS 0 telemetry message of `bytes` payload that ended as `status`.
    pub fn add_qos0(&self, status: Status, bytes: usize) {
        self.add(MessageKind::Telemetry, 0, status, bytes);
    }
}

/// One adapter's view of the [`HonoMetrics`]; cheap to clone.
#[derive(Clone)]
pub struct AdapterMetrics {
    families: Arc<Families>,
    name: &'static str,
    /// Per tenant, its [`TenantTally`], shared by every connection of the tenant. Like the families'
    /// label sets, an entry stays once made.
    tallies: Arc<Mutex<HashMap<TenantId, Arc<TenantTally>>>>,
}

impl std::fmt::Debug for AdapterMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterMetrics")
            .field("component_name", &self.name)
            .finish_non_exhaustive()
    }
}

const ADAPTER: &str = "adapter";

impl AdapterMetrics {
    /// The per-tenant gauge of authenticated connections (fetch it once per connection).
    pub fn connected(&self, tenant: &TenantId) -> Gauge {
        self.families
            .connections
            .get_or_create(&TenantLabels {
                component_type: ADAPTER,
                component_name: self.name,
                tenant: TenantLabel(tenant.clone()),
            })
            .clone()
    }

    /// The gauge of unauthenticated connections.
    pub fn unauthenticated(&self) -> Gauge {
        self.families
            .unauthenticated
            .get_or_create(&ComponentLabels {
                component_type: ADAPTER,
                component_name: self.name,
            })
            .clone()
    }

    /// A connection attempt with Hono's `outcome`.
    pub fn attempt(&self, outcome: &'static str) {
        self.families
            .attempts
            .get_or_create(&AttemptLabels {
                component_type: ADAPTER,
                component_name: self.name,
                outcome,
            })
            .inc();
    }

    /// A telemetry message or event and its payload size.
    pub fn telemetry(
        &self,
        tenant: &TenantId,
        kind: MessageKind,
        qos: u8,
        status: Status,
        ttd: Ttd,
        bytes: usize,
    ) {
        let labels = message_labels(self.name, tenant, kind, qos, status, ttd);
        self.families.messages.get_or_create(&labels).inc();
        self.families
            .payload_bytes
            .get_or_create(&labels)
            .inc_by(bytes as u64);
    }

    /// `tenant`'s counters of telemetry and events, by QoS and outcome, for a caller that counts many
    /// messages of one tenant (an MQTT session keeps them for its connection); one per tenant, shared.
    pub fn tenant_tally(&self, tenant: &TenantId) -> Arc<TenantTally> {
        let mut known = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        known
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(TenantTally {
                    families: self.families.clone(),
                    name: self.name,
                    tenant: tenant.clone(),
                    by_row: Default::default(),
                })
            })
            .clone()
    }

    /// A command handed to a device (`one-way` / `request`) or a device's `response`.
    pub fn command(
        &self,
        tenant: &TenantId,
        direction: &'static str,
        status: Status,
        bytes: usize,
    ) {
        let labels = CommandLabels {
            component_type: ADAPTER,
            component_name: self.name,
            tenant: TenantLabel(tenant.clone()),
            direction,
            status: status.as_str(),
        };
        self.families.commands.get_or_create(&labels).inc();
        self.families
            .command_bytes
            .get_or_create(&labels)
            .inc_by(bytes as u64);
    }
}

/// The labels of a telemetry message or event counted by adapter `name`.
fn message_labels(
    name: &'static str,
    tenant: &TenantId,
    kind: MessageKind,
    qos: u8,
    status: Status,
    ttd: Ttd,
) -> MessageLabels {
    MessageLabels {
        component_type: ADAPTER,
        component_name: name,
        tenant: TenantLabel(tenant.clone()),
        r#type: match kind {
            MessageKind::Telemetry => "telemetry",
            MessageKind::Event => "event",
        },
        status: status.as_str(),
        qos: if qos == 0 { "0" } else { "1" },
        ttd: ttd.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_adapters_share_one_set_of_families() {
        let admin = Admin::new();
        let hono = HonoMetrics::new(&admin);
        let mqtt = hono.component("hono-mqtt");
        let http = hono.component("hono-http");
        let t1 = TenantId::new("t1").expect("id");
        mqtt.telemetry(
            &t1,
            MessageKind::Telemetry,
            1,
            Status::Forwarded,
            Ttd::None,
            5,
        );
        http.telemetry(
            &t1,
            MessageKind::Event,
            1,
            Status::Undeliverable,
            Ttd::None,
            7,
        );
        mqtt.connected(&t1).inc();
        let text = admin.encode_metrics();
        assert_eq!(
            text.matches("# TYPE hono_telemetry_processing counter")
                .count(),
            1
        );
        assert!(text.contains(r#"hono_telemetry_processing_total{component_type="adapter",component_name="hono-mqtt",tenant="t1",type="telemetry",status="forwarded",qos="1",ttd="none"} 1"#), "{text}");
        assert!(text.contains(r#"hono_telemetry_payload_bytes_total{component_type="adapter",component_name="hono-http",tenant="t1",type="event",status="undeliverable",qos="1",ttd="none"} 7"#), "{text}");
        assert!(text.contains(r#"hono_connections_authenticated{component_type="adapter",component_name="hono-mqtt",tenant="t1"} 1"#), "{text}");
    }

    #[test]
    fn a_kept_tenant_tally_counts_into_the_exported_series() {
        let admin = Admin::new();
        let mqtt = HonoMetrics::new(&admin).component("hono-mqtt");
        let t1 = TenantId::new("t1").expect("id");
        let tally = mqtt.tenant_tally(&t1);
        assert!(
            Arc::ptr_eq(&tally, &mqtt.tenant_tally(&t1)),
            "one per tenant"
        );
        assert!(
            !admin.encode_metrics().contains("qos=\"0\""),
            "no series before anything is counted"
        );
        tally.add_qos0(Status::Forwarded, 10);
        tally.add_qos0(Status::Forwarded, 4);
        tally.add_qos0(Status::Undeliverable, 3);
        tally.add(MessageKind::Event, 1, Status::Forwarded, 6);
        // The same series as the per-call path: both add up.
        mqtt.telemetry(
            &t1,
            MessageKind::Telemetry,
            0,
            Status::Forwarded,
            Ttd::None,
            1,
        );
        let text = admin.encode_metrics();
        assert!(text.contains(r#"hono_telemetry_processing_total{component_type="adapter",component_name="hono-mqtt",tenant="t1",type="telemetry",status="forwarded",qos="0",ttd="none"} 3"#), "{text}");
        assert!(text.contains(r#"hono_telemetry_payload_bytes_total{component_type="adapter",component_name="hono-mqtt",tenant="t1",type="telemetry",status="forwarded",qos="0",ttd="none"} 15"#), "{text}");
        assert!(text.contains(r#"hono_telemetry_processing_total{component_type="adapter",component_name="hono-mqtt",tenant="t1",type="telemetry",status="undeliverable",qos="0",ttd="none"} 1"#), "{text}");
        assert!(text.contains(r#"hono_telemetry_payload_bytes_total{component_type="adapter",component_name="hono-mqtt",tenant="t1",type="event",status="forwarded",qos="1",ttd="none"} 6"#), "{text}");
        assert!(
            !text.contains(r#"type="telemetry",status="forwarded",qos="1""#),
            "{text}"
        );
    }
}
