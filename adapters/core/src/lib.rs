//! `ferry-adapter-core`: what the MQTT and HTTP adapters share.
//!
//! In the data flow (docs/architecture.md) an adapter sits between devices and the router and asks the
//! registry who a device is. This crate holds the parts of that which do not depend on the device protocol:
//! * [`registry`]: the client of the registry's internal API, with caches that the registry's change stream
//!   purges, so that no per-message path waits for the registry;
//! * [`auth`]: device login (`auth-id@tenant` + password, or a client certificate checked against the
//!   tenant's trusted CA: [`x509`], [`tls`]) with verify caches, so bcrypt and signature checks are paid
//!   once per device and secret, not per connect;
//! * [`downstream`]: the adapter's AMQP connection to the router (or NATS in cluster mode): telemetry and events with Hono's
//!   properties and the device's registration assertion, command subscriptions, incoming commands and
//!   command responses, with the contract's defaults and TTL limits;
//! * [`pipeline`]: the steps every device message takes (tenant, assertion, data volume, build, send),
//!   ending in a typed [`pipeline::Outcome`] that each adapter maps to its wire in one place;
//! * [`upstream`]: how an adapter reaches the registry and its downstream, from the settings both share;
//! * [`limits`]: the tenant's data volume, counted per adapter instance;
//! * [`metrics`]: Hono's adapter metric families, once per process, labelled by adapter.

#![warn(missing_docs)]

pub mod auth;
pub mod downstream;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod start;
pub mod tls;
pub mod upstream;
pub mod x509;
