//! Hono's adapter metrics (HONO-CONTRACT §6) for HTTP: telemetry and event counts and payload sizes by
//! tenant, type, status, QoS and ttd outcome, command counts by direction, and requests by status code.
//! HTTP is stateless, so (as in Hono) there are no connection gauges.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use ferry_adapter_core::downstream::MessageKind;
use ferry_core::ids::TenantId;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub tenant: String,
    pub r#type: &'static str,
    pub status: &'static str,
    pub qos: &'static str,
    pub ttd: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub tenant: String,
    pub direction: &'static str,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub code: u16,
}

/// What became of a `hono-ttd` wait (Hono's `ttd` tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtdOutcome {
    /// No `hono-ttd`.
    None,
    /// A command went back in the response.
    Command,
    /// The wait ended without one.
    Expired,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    messages: Family<MessageLabels, Counter>,
    payload_bytes: Family<MessageLabels, Counter>,
    commands: Family<CommandLabels, Counter>,
    command_bytes: Family<CommandLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
}

impl Metrics {
    pub fn new(admin: &ferry_core::admin::Admin) -> Self {
        let m = Self {
            messages: Family::default(),
            payload_bytes: Family::default(),
            commands: Family::default(),
            command_bytes: Family::default(),
            requests: Family::default(),
        };
        admin.register(
            "hono_telemetry_processing",
            "Device messages by tenant, type, status, QoS and ttd outcome",
            m.messages.clone(),
        );
        admin.register(
            "hono_telemetry_payload_bytes",
            "Payload bytes of device messages by tenant, type, status, QoS and ttd outcome",
            m.payload_bytes.clone(),
        );
        admin.register(
            "hono_command_processing",
            "Commands and command responses by tenant, direction and status",
            m.commands.clone(),
        );
        admin.register(
            "hono_command_payload_bytes",
            "Payload bytes of commands and command responses by tenant, direction and status",
            m.command_bytes.clone(),
        );
        admin.register(
            "ferry_http_adapter_requests",
            "Device requests by response status code",
            m.requests.clone(),
        );
        m
    }

    pub fn telemetry(
        &self,
        tenant: &TenantId,
        kind: MessageKind,
        qos: u8,
        forwarded: bool,
        ttd: TtdOutcome,
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
            ttd: match ttd {
                TtdOutcome::None => "none",
                TtdOutcome::Command => "command",
                TtdOutcome::Expired => "expired",
            },
        };
        self.messages.get_or_create(&labels).inc();
        self.payload_bytes
            .get_or_create(&labels)
            .inc_by(bytes as u64);
    }

    /// A command handed to a device (`one-way` / `request`) or a device's `response`.
    pub fn command(
        &self,
        tenant: &TenantId,
        direction: &'static str,
        forwarded: bool,
        bytes: usize,
    ) {
        let labels = CommandLabels {
            tenant: tenant.to_string(),
            direction,
            status: if forwarded {
                "forwarded"
            } else {
                "undeliverable"
            },
        };
        self.commands.get_or_create(&labels).inc();
        self.command_bytes
            .get_or_create(&labels)
            .inc_by(bytes as u64);
    }

    pub fn request(&self, code: u16) {
        self.requests.get_or_create(&RequestLabels { code }).inc();
    }
}
