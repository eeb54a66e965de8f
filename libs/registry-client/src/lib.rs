//! `ferry-registry-client`: the one client of the registry's internal API (docs/registry.md), used by the
//! router and by the protocol adapters.
//!
//! In the data flow (docs/architecture.md) adapters ask the registry who a device is and for its
//! registration assertion, routers ask for the JWKS, application logins and a device's gateways, and both
//! follow the change stream to purge what they cached. This crate is the wire side of that and holds no
//! cache: each caller keeps the caches its hot path needs, keyed and bounded its own way.
//! * [`Client`]: one typed method per endpoint; an answer says found (with the registry's
//!   `Cache-Control: max-age`), not found or forbidden, and "the registry could not answer" is an
//!   [`Error`], never a denial;
//! * [`Client::follow_changes`] and [`ChangeParser`]: the change stream, parsed over bytes (an event may
//!   be split anywhere, UTF-8 sequences included) with a bound on line length;
//! * the types: [`Change`] (defined with the registry's other wire types in `ferry-registry-model`, which
//!   the registry itself uses to send it), [`AppUser`], [`IssuedAssertion`].

mod client;
mod stream;

pub use client::{Answer, AppUser, Client, ClientConfig, Error, IssuedAssertion};
pub use ferry_registry_model::{Change, ChangeKind, ChangeOp};
pub use stream::{ChangeParser, StreamConfig, StreamEvent, StreamSignal, MAX_LINE};
