//! Metrics of the HTTP adapter: Hono's adapter families (HONO-CONTRACT §6) come from
//! `ferry-adapter-core`, shared with the MQTT adapter under `component_name="hono-http"`; the HTTP
//! adapter adds its requests by status code. HTTP is stateless, so (as in Hono) there are no
//! connection gauges.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use ferry_adapter_core::downstream::MessageKind;
pub use ferry_adapter_core::metrics::{HonoMetrics, Status, Ttd as TtdOutcome};
use ferry_core::ids::TenantId;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub code: u16,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    hono: ferry_adapter_core::metrics::AdapterMetrics,
    requests: Family<RequestLabels, Counter>,
}

impl Metrics {
    /// The adapter's metrics: Hono's families from `hono`, its own registered with `admin`.
    pub fn new(admin: &ferry_core::admin::Admin, hono: &HonoMetrics) -> Self {
        let m = Self {
            hono: hono.component(ferry_core::hono::adapter_type::HTTP),
            requests: Family::default(),
        };
        admin.register(
            "ferry_http_adapter_requests",
            "Device requests by response status code",
            m.requests.clone(),
        );
        m
    }

    /// Hono's families, labelled `hono-http` (what the shared pipeline counts into).
    pub fn hono(&self) -> &ferry_adapter_core::metrics::AdapterMetrics {
        &self.hono
    }

    pub fn telemetry(
        &self,
        tenant: &TenantId,
        kind: MessageKind,
        qos: u8,
        status: Status,
        ttd: TtdOutcome,
        bytes: usize,
    ) {
        self.hono.telemetry(tenant, kind, qos, status, ttd, bytes);
    }

    /// A command handed to a device (`one-way` / `request`) or a device's `response`.
    pub fn command(
        &self,
        tenant: &TenantId,
        direction: &'static str,
        status: Status,
        bytes: usize,
    ) {
        self.hono.command(tenant, direction, status, bytes);
    }

    pub fn request(&self, code: u16) {
        self.requests.get_or_create(&RequestLabels { code }).inc();
    }
}
