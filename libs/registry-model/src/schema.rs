//! JSON Schema stand-ins for field types that do not implement `JsonSchema` themselves.
//!
//! chrono's impl sits behind a schemars feature this crate does not enable, and ferry-core's id newtypes
//! carry no schemars dependency, so fields of those types name one of these with `#[schemars(with = ..)]`.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

/// An RFC 3339 timestamp (`2024-05-01T12:00:00Z`).
pub(crate) struct Rfc3339;

impl JsonSchema for Rfc3339 {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "DateTime".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "date-time" })
    }
}

/// A device id (`[A-Za-z0-9-_.:=]`, 1–256 characters).
pub(crate) struct DeviceIdSchema;

impl JsonSchema for DeviceIdSchema {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "DeviceId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": "^[A-Za-z0-9_.:=-]{1,256}$" })
    }
}

/// An auth id: 1–512 characters without control characters.
pub(crate) struct AuthIdSchema;

impl JsonSchema for AuthIdSchema {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "AuthId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "minLength": 1, "maxLength": 512 })
    }
}
