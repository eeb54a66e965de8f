//! `ferry-registry-model`: the device registry's wire types and the rules that guard them.
//!
//! The registry server, the protocol adapters (which verify device secrets) and the CLI all speak these
//! types, so they live apart from any I/O. What is here:
//! * the Hono management API bodies: [`Tenant`], [`Device`], [`Credential`] (HONO-CONTRACT.md §3.2, §5),
//!   each with a `validate` that a write must pass;
//! * the credentials write path ([`prepare_for_storage`]: Hono's patch mode, `pwd-plain` hashing) and read
//!   path ([`Credential::redacted`]);
//! * secret verification for adapters ([`Credential::verify_password`], [`Credential::psk_key`]);
//! * Ferry's application users for AMQP consumers ([`ApplicationUser`]);
//! * the change stream's event ([`Change`]), sent by the registry and read by its clients;
//! * search support for `filterJson` / `sortJson` ([`Filter`], [`Sort`]).
//!
//! Every input and output type derives `schemars::JsonSchema`; the registry builds its OpenAPI document
//! from them.

mod app_user;
mod change;
mod credentials;
mod device;
mod error;
mod hashing;
mod schema;
mod search;
mod tenant;

pub use app_user::{
    ApplicationUser, ApplicationUserInput, ApplicationUserView, Operation, TenantGrant, UserName,
};
pub use change::{Change, ChangeKind, ChangeOp};
pub use credentials::{
    prepare_for_storage, redact_all, validate_credentials, Credential, DeviceCredential,
    PasswordData, PskData, RpkData, Secret, TypedCredential, X509Data,
};
pub use device::{Authority, CommandEndpoint, Device, DeviceStatus};
pub use error::ValidationError;
pub use hashing::{HashFunction, HashOptions};
pub use search::{
    compare_by, compare_json, matches_all, wildcard_match, Direction, Filter, FilterOp,
    SearchResult, Sort, WithId,
};
pub use tenant::{
    limit, Adapter, AdapterType, ConnectionDuration, DataVolume, KeyAlgorithm, Period, PeriodMode,
    RegistrationLimits, ResourceLimits, SamplingMode, StoredEventLimits, Tenant, TracingConfig,
    TrustedCa,
};

/// A free-form JSON object (`defaults`, `ext`, extra adapter properties).
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// Serde default for the many Hono flags that default to `true`.
pub(crate) fn default_true() -> bool {
    true
}

/// Serde default for Hono's limits, where `-1` means "no limit".
pub(crate) fn unlimited() -> i64 {
    -1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
pub(crate) fn is_unlimited(value: &i64) -> bool {
    *value == -1
}
