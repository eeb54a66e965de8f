//! `ferry-adapter-core`: what the MQTT and HTTP adapters share.
//!
//! In the data flow (docs/architecture.md) an adapter sits between devices and the router and asks the
//! registry who a device is. This crate holds the parts of that which do not depend on the device protocol:
//! * [`registry`]: the client of the registry's internal API, with caches that the registry's change stream
//!   purges, so that no per-message path waits for the registry;
//! * [`auth`]: device login (`auth-id@tenant` + password) with a verify cache, so bcrypt is paid once per
//!   device and password, not per connect;
//! * [`downstream`]: the adapter's AMQP connection to the router: telemetry and events with Hono's
//!   properties and the device's registration assertion, command subscriptions, incoming commands and
//!   command responses.

#![warn(missing_docs)]

pub mod auth;
pub mod downstream;
pub mod registry;
