//! Hono's adapter metrics (HONO-CONTRACT §6): authenticated connections per tenant, connection attempts by
//! outcome, telemetry and event counts and payload sizes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use ferry_adapter_core::downstream::MessageKind;
use ferry_core::ids::TenantId;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub tenant: String,
    pub r#type: &'static str,
    pub status: &'static str,
    pub qos: &'static str,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    connections: Family<TenantLabels, Gauge>,
    attempts: Family<AttemptLabels, Counter>,
    messages: Family<MessageLabels, Counter>,
    payload_bytes: Family<MessageLabels, Counter>,
}

impl Metrics {
    pub fn new(admin: &ferry_core::admin::Admin) -> Self {
        let m = Self {
            connections: Family::default(),
            attempts: Family::default(),
            messages: Family::default(),
            payload_bytes: Family::default(),
        };
        admin.register(
            "hono_connections_authenticated",
            "Authenticated MQTT connections per tenant",
            m.connections.clone(),
        );
        admin.register(
            "hono_connections_attempts",
            "MQTT connection attempts by outcome",
            m.attempts.clone(),
        );
        admin.register(
            "hono_telemetry_processing",
            "Device messages by tenant, type, status and QoS",
            m.messages.clone(),
        );
        admin.register(
            "hono_telemetry_payload_bytes",
            "Payload bytes of device messages by tenant, type, status and QoS",
            m.payload_bytes.clone(),
        );
        m
    }

    /// The per-tenant connection gauge, fetched once per connection.
    pub fn connected(&self, tenant: &TenantId) -> Gauge {
        self.connections
            .get_or_create(&TenantLabels {
                tenant: tenant.to_string(),
            })
            .clone()
    }

    pub fn attempt(&self, outcome: &'static str) {
        self.attempts
            .get_or_create(&AttemptLabels { outcome })
            .inc();
    }

    pub fn telemetry(
        &self,
        tenant: &TenantId,
        kind: MessageKind,
        qos: u8,
        forwarded: bool,
        bytes: usize,
    ) {
        let labels = MessageLabels {
            tenant: tenant.to_string(),
            r#type: match kind {
                MessageKind::Telemetry => "telemetry",
                MessageKind::Event => "event",
            },
            status: if forwarded {
                "forwarded"
            } else {
                "undeliverable"
            },
            qos: if qos == 0 { "0" } else { "1" },
        };
        self.messages.get_or_create(&labels).inc();
        self.payload_bytes
            .get_or_create(&labels)
            .inc_by(bytes as u64);
    }
}
