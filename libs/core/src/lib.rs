//! `ferry-core`: what every Ferry component shares.
//!
//! Ids as validated newtypes ([`ids`]), Hono's property and address names ([`hono`]), registration
//! assertions and their verification against a JWKS ([`assertion`]), layered configuration ([`config`]),
//! the admin server with `/live`, `/ready` and `/metrics` ([`admin`]) and graceful shutdown ([`shutdown`]).
//! It sits under every component in the data flow and knows nothing of any protocol's I/O.

pub mod admin;
pub mod assertion;
pub mod component;
pub mod config;
pub mod console;
pub mod hono;
pub mod ids;
pub mod lockout;
pub mod logs;
pub mod net;
pub mod shutdown;
pub mod tls;
