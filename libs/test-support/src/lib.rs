//! Fixtures shared by the tests of every Ferry crate; never a dependency of production code.
//!
//! It sits beside the data flow rather than in it: components' tests use it to get a fresh
//! PostgreSQL database ([`postgres_database`]), a throwaway PKI for TLS and device x509 auth
//! ([`TestPki`]), the external programs they drive ([`require_program`], [`test_python`]) and a
//! port to hand to a child process ([`free_port`]); with the feature `platform`, an in-process registry
//! and router ([`platform`]) that the harnesses of the crates above them build on.
//!
//! Everything here fails loudly instead of skipping: a test whose dependency is missing must
//! fail with a message saying how to get it (run `scripts/test`), never pass silently.

mod nats;
mod net;
mod pki;
#[cfg(feature = "platform")]
pub mod platform;
mod postgres;
mod programs;

pub use nats::NatsServer;
pub use net::free_port;
pub use pki::{client_subject_dn, TestPki};
pub use postgres::{postgres_database, PgDatabase, POSTGRES_URL_ENV};
pub use programs::{find_program, require_program, test_python, PYTHON_ENV};
