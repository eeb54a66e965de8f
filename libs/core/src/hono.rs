//! Hono's wire names: AMQP addresses, message property names, adapter type names and content types
//! (HONO-CONTRACT.md §1, §2, §4). Kept in one place so that no component spells them twice.

/// Address prefixes of the northbound AMQP API.
pub mod address {
    pub const TELEMETRY: &str = "telemetry";
    pub const TELEMETRY_SHORT: &str = "t";
    pub const EVENT: &str = "event";
    pub const EVENT_SHORT: &str = "e";
    pub const COMMAND: &str = "command";
    pub const COMMAND_RESPONSE: &str = "command_response";
}

/// AMQP application-property names.
pub mod app_property {
    pub const DEVICE_ID: &str = "device_id";
    pub const TENANT_ID: &str = "tenant_id";
    pub const GATEWAY_ID: &str = "gateway_id";
    pub const TTD: &str = "ttd";
    pub const QOS: &str = "qos";
    pub const ORIG_ADAPTER: &str = "orig_adapter";
    pub const ORIG_ADDRESS: &str = "orig_address";
    pub const STATUS: &str = "status";
    pub const REG_ASSERTION: &str = "reg_assertion";
    pub const VIA: &str = "via";
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    pub const CACHE_CONTROL: &str = "cache_control";
    pub const REGISTRATION_STATUS: &str = "hono_registration_status";
}

/// AMQP message-annotation names.
pub mod annotation {
    pub const RETAIN: &str = "x-opt-retain";
    pub const RESOURCE: &str = "resource";
    pub const TRACE_CONTEXT: &str = "x-opt-trace-context";
}

/// Well-known content types.
pub mod content_type {
    pub const OCTET_STREAM: &str = "application/octet-stream";
    pub const EMPTY_NOTIFICATION: &str = "application/vnd.eclipse-hono-empty-notification";
    pub const CONNECTION_NOTIFICATION: &str = "application/vnd.eclipse-hono-dc-notification+json";
    pub const PROVISIONING_NOTIFICATION: &str =
        "application/vnd.eclipse-hono-device-provisioning-notification";
}

/// Protocol adapter type names, as tenants enable them in `adapters[].type`.
pub mod adapter_type {
    pub const HTTP: &str = "hono-http";
    pub const MQTT: &str = "hono-mqtt";
    pub const AMQP: &str = "hono-amqp";
    pub const COAP: &str = "hono-coap";
    pub const LORA: &str = "hono-lora";
    pub const SIGFOX: &str = "hono-sigfox";
    /// Every adapter type Hono defines; the registry accepts only these in a tenant's `adapters`.
    pub const ALL: &[&str] = &[HTTP, MQTT, AMQP, COAP, LORA, SIGFOX];
}

/// Credential type names.
pub mod credential_type {
    pub const HASHED_PASSWORD: &str = "hashed-password";
    pub const PSK: &str = "psk";
    pub const X509_CERT: &str = "x509-cert";
    pub const RPK: &str = "rpk";
}

/// AMQP error conditions Hono uses beyond the standard ones.
pub mod condition {
    pub const UNSUPPORTED_DELIVERY_MODE: &str = "hono:unsupported-delivery-mode";
    pub const NO_DOWNSTREAM_CONSUMER: &str = "hono:no-downstream-consumer";
    pub const BAD_REQUEST: &str = "hono:bad-request";
}

/// Ferry's subscription protocol between adapter instances and the router on `command_internal/INSTANCE`
/// (docs/router.md "Commands"): message subjects and the application property they add to Hono's names.
pub mod command_internal {
    /// Address prefix of an adapter instance's command link.
    pub const ADDRESS: &str = "command_internal";
    /// Route a device's commands (or, with [`ALL_DEVICES`], a gateway's devices' commands) here.
    pub const REGISTER: &str = "register";
    /// Stop routing them here.
    pub const UNREGISTER: &str = "unregister";
    /// Remember the gateway a device last sent through (`tenant_id`, `device_id`, `gateway_id`).
    pub const SET_LAST_GATEWAY: &str = "set-last-gw";
    /// Presence (docs/console.md): a device connected to this instance (`tenant_id`, `device_id`,
    /// `orig_adapter`, optional `gateway_id` and [`REMOTE_ID`]), or went.
    pub const CONNECTED: &str = "connected";
    pub const DISCONNECTED: &str = "disconnected";
    /// Application property of [`CONNECTED`]: the MQTT client id (or peer address).
    pub const REMOTE_ID: &str = "remote_id";
    /// Application property of [`CONNECTED`] and [`DISCONNECTED`]: which connection (instance and
    /// session), so that the end of an older one does not hide a newer one.
    pub const CONNECTION_ID: &str = "connection_id";
    /// Boolean application property (and bulk-body field): the registration is a gateway's subscription
    /// for all the devices that list it in their `via`.
    pub const ALL_DEVICES: &str = "all_devices";
}
