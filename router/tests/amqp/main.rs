//! Component tests of the router: a registry and a router in this process, driven by the fe2o3-amqp client
//! as an adapter (service credential, registration assertions) and as applications (application users).

mod harness;

mod assertions;
mod cluster;
mod commands;
mod events;
mod security;
mod telemetry;
