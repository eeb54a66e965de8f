//! Headers Ferry sets on the NATS messages it publishes.
//!
//! The payload of a device message on NATS is the AMQP 1.0 message the adapter would send to the router
//! in embedded mode (header, properties with Hono's `device_id`, `content-type`, `creation-time`, the
//! application properties with the registration assertion, the body): Hono's properties are encoded
//! once, in one way, for both modes, and a router forwards the bytes to its applications after the
//! same checks instead of converting between two representations. Headers carry only what NATS or a
//! router must read without decoding the message.

/// JetStream's per-message time-to-live (NATS ≥ 2.11; the stream must allow it), e.g. `"30s"`.
pub const TTL: &str = "Nats-TTL";

/// JetStream's de-duplication id: an adapter that retries a publish after a lost answer sends the same
/// id, and the stream stores the event once.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// The device a message is from (tenant-relative), for routing and logs without decoding.
pub const DEVICE: &str = "Ferry-Device";

/// A TTL header value for `secs` seconds.
pub fn ttl(secs: u64) -> String {
    format!("{secs}s")
}

/// On a telemetry request: the device sent it without wanting delivery confirmed (HTTP QoS 0). The
/// router answers `accepted` as soon as a consumer took it (pre-settled) instead of waiting for the
/// application's outcome; with no consumer it answers `released`, and with no router NATS answers "no
/// responders", which is Hono's 503 either way. MQTT QoS 0 is published without a reply subject at all.
pub const PRESETTLED: &str = "Ferry-Presettled";
