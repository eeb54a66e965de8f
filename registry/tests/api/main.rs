//! Component tests of the registry: its `start` on `127.0.0.1:0`, driven over HTTP with reqwest, each test
//! run against SQLite and against a real PostgreSQL (see `both!`).

mod harness;

mod applications;
mod assertions;
mod bad_input;
mod changes;
mod console_pages;
mod credentials;
mod devices;
mod limits;
mod server;
mod stats;
mod tenants;
mod tokens;
