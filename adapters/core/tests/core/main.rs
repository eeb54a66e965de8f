//! Component tests of `ferry-adapter-core` against a real registry and router running in-process.

mod auth;
mod commands;
mod downstream;
mod guessing;
mod harness;
mod nats;
mod registry;
