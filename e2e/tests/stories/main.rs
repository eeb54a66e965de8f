//! Ferry's end-to-end stories: what a user sees when devices and applications no one here wrote use a
//! running Ferry. docs/e2e.md tells what each story shows; run one with
//! `scripts/test -p ferry-e2e -E 'test(NAME)'`.

mod commands;
mod console;
mod disabled;
mod events;
mod gateways;
mod noisy;
mod refusals;
mod telemetry;
mod tenants;
mod wire_bytes;
