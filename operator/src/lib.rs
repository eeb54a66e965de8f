//! `ferry-operator`: reconciles the `AddressSpace` and `Tenant` custom resources.
//!
//! Where it sits: beside the data flow, not in it. An `AddressSpace` becomes the registry, router and
//! adapter workloads (and the Secrets they share); a `Tenant` becomes a tenant and application users in
//! that address space's registry, through the registry's management API. Each reconcile is a pipeline:
//! read → validate → build the desired objects ([`build`], pure, no API calls) → server-side apply with
//! owner references → status conditions and events.

pub mod address_space;
pub mod build;
pub mod config;
pub mod context;
pub mod crd;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod registry_client;
pub mod status;
pub mod tenant;

mod run;

pub use config::Config;
pub use context::Context;
pub use error::Error;
pub use run::{run, run_with_client};
