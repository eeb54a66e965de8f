//! Hono's adapter metrics (HONO-CONTRACT §6) come from `ferry-adapter-core`, shared with the HTTP adapter
//! under `component_name="hono-mqtt"`; the MQTT adapter's part is the outcome of refused CONNECTs.

pub use ferry_adapter_core::metrics::{AdapterMetrics as Metrics, HonoMetrics, Status, Ttd};
