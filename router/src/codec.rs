//! The AMQP 1.0 codec, shared with the adapters: see the `ferry-amqp` crate.

pub use ferry_amqp::*;
