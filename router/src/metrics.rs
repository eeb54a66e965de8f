//! The router's metrics: messages and bytes by tenant, type and outcome; connections; links; event store
//! depth.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use ferry_core::ids::TenantId;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub tenant: String,
    /// `telemetry`, `event`, `command`, `command_response`.
    pub r#type: &'static str,
    /// `forwarded`, `stored`, `released`, `rejected`, `dropped`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    pub messages: Family<MessageLabels, Counter>,
    pub bytes: Family<MessageLabels, Counter>,
    pub connections: Gauge,
    pub links: Gauge,
    pub depth: Family<TenantLabel, Gauge>,
    /// Cluster mode: adapter instances that hold command routes and have a stand-in consumer here.
    pub command_instances: Gauge,
    /// Bytes of live events in the store, over all tenants.
    pub store_bytes: Gauge,
    /// Free bytes on the event store's filesystem (-1 when unknown or not checked).
    pub free_disk: Gauge,
}

impl Metrics {
    pub fn new(admin: &ferry_core::admin::Admin) -> Self {
        let m = Self {
            messages: Family::default(),
            bytes: Family::default(),
            connections: Gauge::default(),
            links: Gauge::default(),
            depth: Family::default(),
            command_instances: Gauge::default(),
            store_bytes: Gauge::default(),
            free_disk: Gauge::default(),
        };
        m.free_disk.set(-1);
        admin.register(
            "ferry_router_messages",
            "Messages by tenant, type and outcome",
            m.messages.clone(),
        );
        admin.register(
            "ferry_router_message_bytes",
            "Payload bytes by tenant, type and outcome",
            m.bytes.clone(),
        );
        admin.register(
            "ferry_router_connections",
            "Open AMQP connections",
            m.connections.clone(),
        );
        admin.register("ferry_router_links", "Attached links", m.links.clone());
        admin.register(
            "ferry_router_event_store_depth",
            "Stored events not yet accepted, by tenant",
            m.depth.clone(),
        );
        admin.register(
            "ferry_router_command_instances",
            "Adapter instances holding command routes that this router forwards commands to (cluster mode)",
            m.command_instances.clone(),
        );
        admin.register(
            "ferry_router_event_store_bytes",
            "Bytes of live events in the event store, over all tenants (max_event_store_bytes bounds it)",
            m.store_bytes.clone(),
        );
        admin.register(
            "ferry_router_event_store_free_disk_bytes",
            "Free bytes on the event store's filesystem; below min_free_disk_bytes event producers get no credit (-1: unknown)",
            m.free_disk.clone(),
        );
        m
    }

    pub fn event_store_bytes(&self, bytes: u64) {
        self.store_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn event_store_free_disk(&self, bytes: u64) {
        self.free_disk.set(i64::try_from(bytes).unwrap_or(-1));
    }

    /// The counters of one tenant's address kind, looked up once (at attach) so that counting a message
    /// is two atomic adds, not a label lookup with a fresh string.
    pub fn outcomes(&self, tenant: &TenantId, kind: &'static str) -> Outcomes {
        let pair = |outcome: &'static str| {
            let labels = MessageLabels {
                tenant: tenant.to_string(),
                r#type: kind,
                outcome,
            };
            (
                self.messages.get_or_create(&labels).clone(),
                self.bytes.get_or_create(&labels).clone(),
            )
        };
        Outcomes {
            forwarded: pair("forwarded"),
            stored: pair("stored"),
            released: pair("released"),
            rejected: pair("rejected"),
            depth: (kind == "event").then(|| {
                self.depth
                    .get_or_create(&TenantLabel {
                        tenant: tenant.to_string(),
                    })
                    .clone()
            }),
        }
    }

    pub fn event_store_depth(&self, tenant: &TenantId, depth: u64) {
        self.depth
            .get_or_create(&TenantLabel {
                tenant: tenant.to_string(),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
}

/// What happened to a message, for counting.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Forwarded,
    Stored,
    Released,
    Rejected,
}

/// Message and byte counters per outcome of one tenant's address kind.
#[derive(Debug, Clone)]
pub struct Outcomes {
    forwarded: (Counter, Counter),
    stored: (Counter, Counter),
    released: (Counter, Counter),
    rejected: (Counter, Counter),
    /// The tenant's event store depth gauge (event addresses only), set after each append and accept
    /// without a label lookup.
    depth: Option<Gauge>,
}

impl Outcomes {
    pub fn count(&self, outcome: Outcome, bytes: usize) {
        let (messages, total) = match outcome {
            Outcome::Forwarded => &self.forwarded,
            Outcome::Stored => &self.stored,
            Outcome::Released => &self.released,
            Outcome::Rejected => &self.rejected,
        };
        messages.inc();
        total.inc_by(bytes as u64);
    }

    /// Sets the tenant's event store depth (an event address's; nothing for other kinds).
    pub fn event_store_depth(&self, depth: u64) {
        if let Some(gauge) = &self.depth {
            gauge.set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
    }
}
