//! `ferry-router`: the AMQP 1.0 messaging router between protocol adapters and business applications.
//!
//! Not built yet: issue #3 brings telemetry routing, the durable event store, commands and assertion
//! verification. This crate holds nothing until then, so that nothing pretends to work.
