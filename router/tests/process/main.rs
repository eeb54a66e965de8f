//! Process-level tests of the router: the `ferry-router` binary as a child process (crash with `kill -9`,
//! SIGTERM, configuration errors), AMQPS with Qpid Proton, and peers that misbehave on the wire (raw TCP).
//!
//! The registry runs in this process, as in the component tests (`tests/amqp/harness.rs`).

#[path = "../amqp/harness.rs"]
#[allow(dead_code)]
mod harness;

mod support;

mod binary;
mod credit;
mod hostile;
mod malformed;
mod sequences;
mod settling;
mod tls;
