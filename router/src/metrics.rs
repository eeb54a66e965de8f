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
}

impl Metrics {
    pub fn new(admin: &ferry_core::admin::Admin) -> Self {
        let m = Self {
            messages: Family::default(),
            bytes: Family::default(),
            connections: Gauge::default(),
            links: Gauge::default(),
            depth: Family::default(),
        };
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
        m
    }

    pub fn message(
        &self,
        tenant: &TenantId,
        kind: &'static str,
        outcome: &'static str,
        bytes: usize,
    ) {
        let labels = MessageLabels {
            tenant: tenant.to_string(),
            r#type: kind,
            outcome,
        };
        self.messages.get_or_create(&labels).inc();
        self.bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    pub fn event_store_depth(&self, tenant: &TenantId, depth: u64) {
        self.depth
            .get_or_create(&TenantLabel {
                tenant: tenant.to_string(),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
}
