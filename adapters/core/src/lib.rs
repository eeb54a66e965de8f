//! `ferry-adapter-core`: what the MQTT and HTTP adapters share (registry client with caches, downstream
//! AMQP sender, command subscriptions, tenant and limit checks).
//!
//! Not built yet: issue #4. Empty until then, so that nothing pretends to work.
