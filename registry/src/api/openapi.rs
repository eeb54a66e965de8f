//! The OpenAPI 3.1 document of the management API, served at `/v1/openapi.json`.
//!
//! Body schemas are generated from the model's Rust types (schemars), the paths are listed here beside the
//! routes; `docs/registry-openapi.json` is the committed copy, and a test fails when it is stale
//! (regenerate with `FERRY_BLESS=1 cargo test -p ferry-registry openapi`).

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_registry_model::{ApplicationUserInput, ApplicationUserView, Credential, Device, Tenant};
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

pub async fn serve() -> Response {
    Json(document().clone()).into_response()
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn error_responses(codes: &[u16]) -> Map<String, Value> {
    codes
        .iter()
        .map(|c| {
            let text = match c {
                400 => "Malformed request: bad JSON, invalid id, unknown field or value",
                401 => "Missing or invalid bearer token",
                403 => "Forbidden, e.g. a registration limit is reached",
                404 => "No such resource (or nothing matches the search)",
                409 => "Conflict: the resource or a unique key already exists",
                412 => "If-Match does not match the resource version",
                413 => "Request body too large",
                429 => "Too many live views open",
                503 => "Storage unavailable, or neither a router in this process nor messaging.mode nats (presence, live view, commands, stats)",
                _ => "Error",
            };
            (
                c.to_string(),
                json!({ "description": text, "content": { "application/json": { "schema": schema_ref("Error") } } }),
            )
        })
        .collect()
}

struct Op {
    summary: &'static str,
    params: &'static [&'static str],
    body: Option<&'static str>,
    ok: (u16, &'static str, Option<Value>),
    errors: &'static [u16],
}

fn op(o: Op) -> Value {
    let mut responses = error_responses(o.errors);
    let mut ok = json!({ "description": o.ok.1 });
    if let Some(schema) = o.ok.2 {
        ok["content"] = json!({ "application/json": { "schema": schema } });
    }
    responses.insert(o.ok.0.to_string(), ok);
    let mut v = json!({
        "summary": o.summary,
        "parameters": o.params.iter().map(|p| schema_ref_param(p)).collect::<Vec<_>>(),
        "responses": responses,
    });
    if let Some(body) = o.body {
        v["requestBody"] =
            json!({ "content": { "application/json": { "schema": schema_ref(body) } } });
    }
    v
}

fn schema_ref_param(name: &str) -> Value {
    json!({ "$ref": format!("#/components/parameters/{name}") })
}

fn build() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut schemas = Map::new();
    schemas.insert(
        "Tenant".into(),
        generator.subschema_for::<Tenant>().to_value(),
    );
    schemas.insert(
        "Device".into(),
        generator.subschema_for::<Device>().to_value(),
    );
    schemas.insert(
        "Credentials".into(),
        generator.subschema_for::<Vec<Credential>>().to_value(),
    );
    schemas.insert(
        "ApplicationUserInput".into(),
        generator.subschema_for::<ApplicationUserInput>().to_value(),
    );
    schemas.insert(
        "ApplicationUser".into(),
        generator.subschema_for::<ApplicationUserView>().to_value(),
    );
    for (k, v) in generator.take_definitions(true) {
        schemas.entry(k).or_insert(v);
    }
    schemas.insert(
        "Error".into(),
        json!({ "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } }),
    );
    schemas.insert(
        "Created".into(),
        json!({ "type": "object", "required": ["id"], "properties": { "id": { "type": "string" } } }),
    );
    schemas.insert(
        "SearchResult".into(),
        json!({ "type": "object", "required": ["total", "result"], "properties": {
            "total": { "type": "integer" },
            "result": { "type": "array", "items": { "type": "object" } } } }),
    );

    schemas.insert(
        "Presence".into(),
        json!({ "type": "object", "required": ["connected"], "description": "A device's presence (Ferry extension; docs/console.md). Only `connected` when nothing is known of the device since the router started.", "properties": {
            "connected": { "type": "boolean" },
            "since": { "type": "string", "format": "date-time", "description": "Start of the current (or last) connection" },
            "adapter": { "type": "string", "description": "Adapter type of that connection, e.g. hono-mqtt" },
            "gateway": { "type": "string" },
            "remote-id": { "type": "string", "description": "MQTT client id or peer address" },
            "last-seen": { "type": "string", "format": "date-time", "description": "Last connect, disconnect or message (coarse: 5 s)" },
            "disconnected-at": { "type": "string", "format": "date-time" } } }),
    );
    schemas.insert(
        "ConsoleCommand".into(),
        json!({ "type": "object", "required": ["name"], "additionalProperties": false, "properties": {
            "name": { "type": "string", "description": "Command name (AMQP subject), 1-256 characters" },
            "payload": { "type": "string", "maxLength": 8192 },
            "content-type": { "type": "string" },
            "one-way": { "type": "boolean", "default": false, "description": "true: no reply-to, no response awaited" },
            "timeout-ms": { "type": "integer", "minimum": 1, "maximum": 20000, "default": 10000 } } }),
    );
    schemas.insert(
        "CommandResult".into(),
        json!({ "type": "object", "required": ["outcome"], "properties": {
            "outcome": { "type": "string", "enum": ["accepted", "released", "rejected", "modified", "timeout"],
                         "description": "The disposition the command got (Hono: released = device not connected or did not take it)" },
            "error": { "type": "string" },
            "response": { "type": "object", "properties": {
                "status": { "type": ["integer", "null"] },
                "content-type": { "type": "string" },
                "payload": { "type": "string", "description": "UTF-8 (invalid bytes replaced), at most 1 KiB" } } } } }),
    );

    schemas.insert(
        "TokenRequest".into(),
        json!({ "type": "object", "additionalProperties": false, "description": "A new tenant token (Ferry extension; docs/registry.md \"Tenant tokens\")", "properties": {
            "comment": { "type": "string", "maxLength": 256 },
            "expires-at": { "type": "string", "format": "date-time", "description": "In the future; absent: until deleted" } } }),
    );
    schemas.insert(
        "Token".into(),
        json!({ "type": "object", "required": ["id", "tenant", "created"], "properties": {
            "id": { "type": "string" },
            "tenant": { "type": "string" },
            "comment": { "type": ["string", "null"] },
            "created": { "type": "string", "format": "date-time" },
            "expires-at": { "type": ["string", "null"], "format": "date-time" },
            "token": { "type": "string", "description": "The bearer token itself: only in the answer that made it" } } }),
    );
    schemas.insert(
        "Tokens".into(),
        json!({ "type": "object", "required": ["tokens"], "properties": {
            "tokens": { "type": "array", "items": schema_ref("Token") } } }),
    );
    schemas.insert(
        "WhoAmI".into(),
        json!({ "type": "object", "required": ["scope"], "properties": {
            "scope": { "type": "string", "enum": ["admin", "tenant"] },
            "tenant": { "type": "string", "description": "The tenant of a tenant token" } } }),
    );
    let counts = |desc: &str, keys: &[&str]| {
        let props: Map<String, Value> = keys
            .iter()
            .map(|k| ((*k).to_owned(), json!({ "type": "integer", "minimum": 0 })))
            .collect();
        json!({ "type": "object", "description": desc, "properties": props })
    };
    let statuses = ["forwarded", "undeliverable", "unprocessable"];
    let outcomes = ["forwarded", "stored", "released", "rejected"];
    schemas.insert(
        "TenantStats".into(),
        json!({ "type": "object", "required": ["tenant", "time", "source"],
            "description": "A tenant's figures for the console's charts (Ferry extension; docs/console.md). Counters count since the process started; poll and divide differences by the difference of `time` for rates. `source` process: ferry up, read from the metrics the adapters and the router report (as /metrics shows them); cluster: the same series summed over the components that answered over NATS.",
            "properties": {
                "tenant": { "type": "string" },
                "time": { "type": "string", "format": "date-time", "description": "When the figures were read" },
                "source": { "type": "string", "enum": ["process", "cluster", "presence"], "description": "process: ferry up (this process's metrics); cluster: summed over the adapters and routers that answered over NATS; presence: connected devices only" },
                "answers": { "type": "integer", "minimum": 0, "description": "cluster: how many adapters and routers answered" },
                "connections": { "type": "integer", "minimum": 0, "description": "Authenticated device connections now (hono_connections_authenticated, all adapters)" },
                "connected-devices": { "type": "integer", "minimum": 0, "description": "Devices connected now, from presence" },
                "telemetry": counts("Telemetry by Hono status, all adapters (hono_telemetry_processing_total)", &statuses),
                "event": counts("Events by Hono status, all adapters", &statuses),
                "router": { "type": "object", "description": "What the router did with them (ferry_router_messages_total)", "properties": {
                    "telemetry": counts("Telemetry by outcome", &outcomes),
                    "event": counts("Events by outcome", &outcomes) } },
                "stored-events": { "type": "integer", "minimum": 0, "description": "Events stored and not yet consumed (ferry_router_event_store_depth)" } } }),
    );

    let id = |name: &str, desc: &str| json!({ "name": name, "in": "path", "required": true, "description": desc, "schema": { "type": "string" } });
    let query = |name: &str, desc: &str, schema: Value| json!({ "name": name, "in": "query", "required": false, "description": desc, "schema": schema });
    let parameters = json!({
        "tenantId": id("tenantId", "Tenant id"),
        "deviceId": id("deviceId", "Device id"),
        "name": id("name", "Application user name"),
        "tokenId": id("tokenId", "Token id"),
        "ifMatch": { "name": "If-Match", "in": "header", "required": false,
                     "description": "The resource version (ETag) the change applies to", "schema": { "type": "string" } },
        "pageSize": query("pageSize", "Results per page (0-200)", json!({ "type": "integer", "minimum": 0, "maximum": 200, "default": 30 })),
        "pageOffset": query("pageOffset", "Results to skip", json!({ "type": "integer", "minimum": 0, "default": 0 })),
        "filterJson": query("filterJson", "{\"field\":\"/pointer\",\"op\":\"eq\",\"value\":...}; repeatable, * and ? wildcards", json!({ "type": "string" })),
        "sortJson": query("sortJson", "{\"field\":\"/pointer\",\"direction\":\"asc\"|\"desc\"}", json!({ "type": "string" })),
        "connected": query("connected", "Only devices connected now (true) or not (false); Ferry extension", json!({ "type": "boolean" })),
        "isGateway": query("isGateway", "Only gateways (true) or only non-gateways (false)", json!({ "type": "boolean" })),
    });

    let search = &["pageSize", "pageOffset", "filterJson", "sortJson"];
    let created = |what: &'static str| (201, what, Some(schema_ref("Created")));
    let paths = json!({
        "/v1/tenants": {
            "post": op(Op { summary: "Create a tenant with a generated id", params: &[], body: Some("Tenant"),
                ok: created("Tenant created"), errors: &[400, 401, 403, 409, 413] }),
            "get": op(Op { summary: "Search tenants", params: search, body: None,
                ok: (200, "Matching tenants", Some(schema_ref("SearchResult"))), errors: &[400, 401, 404] }),
        },
        "/v1/tenants/{tenantId}": {
            "post": op(Op { summary: "Create a tenant", params: &["tenantId"], body: Some("Tenant"),
                ok: created("Tenant created"), errors: &[400, 401, 403, 409, 413] }),
            "get": op(Op { summary: "Get a tenant", params: &["tenantId"], body: None,
                ok: (200, "The tenant", Some(schema_ref("Tenant"))), errors: &[400, 401, 404] }),
            "put": op(Op { summary: "Update a tenant", params: &["tenantId", "ifMatch"], body: Some("Tenant"),
                ok: (204, "Updated", None), errors: &[400, 401, 403, 404, 409, 412, 413] }),
            "delete": op(Op { summary: "Delete a tenant with its devices and credentials", params: &["tenantId", "ifMatch"], body: None,
                ok: (204, "Deleted", None), errors: &[401, 403, 404, 412] }),
        },
        "/v1/devices/{tenantId}": {
            "post": op(Op { summary: "Create a device with a generated id", params: &["tenantId"], body: Some("Device"),
                ok: created("Device created"), errors: &[400, 401, 403, 404, 409, 413] }),
            "get": op(Op { summary: "Search devices", params: &["tenantId", "pageSize", "pageOffset", "filterJson", "sortJson", "isGateway", "connected"], body: None,
                ok: (200, "Matching devices", Some(schema_ref("SearchResult"))), errors: &[400, 401, 404] }),
            "delete": op(Op { summary: "Delete every device of the tenant", params: &["tenantId"], body: None,
                ok: (204, "Deleted", None), errors: &[400, 401, 404] }),
        },
        "/v1/devices/{tenantId}/{deviceId}": {
            "post": op(Op { summary: "Create a device", params: &["tenantId", "deviceId"], body: Some("Device"),
                ok: created("Device created"), errors: &[400, 401, 403, 404, 409, 413] }),
            "get": op(Op { summary: "Get a device", params: &["tenantId", "deviceId"], body: None,
                ok: (200, "The device", Some(schema_ref("Device"))), errors: &[400, 401, 404] }),
            "put": op(Op { summary: "Update a device", params: &["tenantId", "deviceId", "ifMatch"], body: Some("Device"),
                ok: (204, "Updated", None), errors: &[400, 401, 403, 404, 412, 413] }),
            "delete": op(Op { summary: "Delete a device and its credentials", params: &["tenantId", "deviceId", "ifMatch"], body: None,
                ok: (204, "Deleted", None), errors: &[401, 403, 404, 412] }),
        },
        "/v1/devices/{tenantId}/{deviceId}/presence": {
            "get": op(Op { summary: "Whether the device is connected now, since when, through which adapter (Ferry extension)", params: &["tenantId", "deviceId"], body: None,
                ok: (200, "The device's presence", Some(schema_ref("Presence"))), errors: &[400, 401, 404, 503] }),
        },
        "/v1/live/{tenantId}": {
            "get": {
                "summary": "The tenant's telemetry and events as they pass the router, as server-sent events `message` and `dropped` (Ferry extension; a copy, applications lose nothing; at most 50 messages a second)",
                "parameters": [schema_ref_param("tenantId")],
                "responses": {
                    "200": { "description": "An event stream", "content": { "text/event-stream": { "schema": { "type": "string" } } } },
                    "400": error_responses(&[400])["400"], "401": error_responses(&[401])["401"],
                    "404": error_responses(&[404])["404"], "429": error_responses(&[429])["429"],
                    "503": error_responses(&[503])["503"],
                },
            },
        },
        "/v1/commands/{tenantId}/{deviceId}": {
            "post": op(Op { summary: "Send a command to the device as an application would, and wait for its outcome and response (Ferry extension)", params: &["tenantId", "deviceId"], body: Some("ConsoleCommand"),
                ok: (200, "What became of the command", Some(schema_ref("CommandResult"))), errors: &[400, 401, 404, 413, 503] }),
        },
        "/v1/stats/{tenantId}": {
            "get": op(Op { summary: "The tenant's message counters and connections, for charts (Ferry extension; 503 when the registry runs without the adapters in its process and without presence)", params: &["tenantId"], body: None,
                ok: (200, "The tenant's figures", Some(schema_ref("TenantStats"))), errors: &[400, 401, 404, 503] }),
        },
        "/v1/credentials/{tenantId}/{deviceId}": {
            "get": op(Op { summary: "Get a device's credentials (secret metadata, no secret data)", params: &["tenantId", "deviceId"], body: None,
                ok: (200, "The credentials", Some(schema_ref("Credentials"))), errors: &[400, 401, 404] }),
            "put": op(Op { summary: "Replace a device's credentials (secrets with a known id keep their data)", params: &["tenantId", "deviceId", "ifMatch"], body: Some("Credentials"),
                ok: (204, "Updated", None), errors: &[400, 401, 403, 404, 409, 412, 413] }),
        },
        "/v1/tokens/{tenantId}": {
            "post": op(Op { summary: "Make a token for the tenant's own devices, credentials, presence, live messages and commands; admin token only (Ferry extension)", params: &["tenantId"], body: Some("TokenRequest"),
                ok: (201, "The token, shown this once", Some(schema_ref("Token"))), errors: &[400, 401, 403, 404, 413] }),
            "get": op(Op { summary: "The tenant's tokens, without their secrets; admin token only (Ferry extension)", params: &["tenantId"], body: None,
                ok: (200, "The tokens", Some(schema_ref("Tokens"))), errors: &[400, 401, 403, 404] }),
        },
        "/v1/tokens/{tenantId}/{tokenId}": {
            "delete": op(Op { summary: "Delete a token: refused from the next request on; admin token only (Ferry extension)", params: &["tenantId", "tokenId"], body: None,
                ok: (204, "Deleted", None), errors: &[400, 401, 403, 404] }),
        },
        "/v1/whoami": {
            "get": op(Op { summary: "What the bearer token may do: admin, or one tenant's resources (Ferry extension)", params: &[], body: None,
                ok: (200, "The token's scope", Some(schema_ref("WhoAmI"))), errors: &[401] }),
        },
        "/v1/applications": {
            "get": op(Op { summary: "List application users (Ferry extension)", params: search, body: None,
                ok: (200, "Application users", Some(schema_ref("SearchResult"))), errors: &[400, 401, 404] }),
        },
        "/v1/applications/{name}": {
            "put": op(Op { summary: "Create or replace an application user (Ferry extension)", params: &["name", "ifMatch"], body: Some("ApplicationUserInput"),
                ok: (204, "Updated (201 when created)", None), errors: &[400, 401, 412, 413] }),
            "get": op(Op { summary: "Get an application user", params: &["name"], body: None,
                ok: (200, "The user, without its password hash", Some(schema_ref("ApplicationUser"))), errors: &[400, 401, 404] }),
            "delete": op(Op { summary: "Delete an application user", params: &["name", "ifMatch"], body: None,
                ok: (204, "Deleted", None), errors: &[400, 401, 404, 412] }),
        },
    });

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Ferry device registry management API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Eclipse Hono's device registry management API (v1), plus application users for AMQP consumers.",
        },
        "servers": [{ "url": "/" }],
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "description": "The admin token, or a tenant token (`ftt_...`) for that tenant's devices, credentials, presence, live messages and commands (403 elsewhere)" } },
            "parameters": parameters,
            "schemas": schemas,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_openapi_is_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/registry-openapi.json");
        let fresh = serde_json::to_string_pretty(document()).expect("serializable") + "\n";
        if std::env::var_os("FERRY_BLESS").is_some() {
            std::fs::write(&path, &fresh).expect("write openapi");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == fresh,
            "docs/registry-openapi.json is stale: run FERRY_BLESS=1 cargo test -p ferry-registry openapi"
        );
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"").skip(1) {
            let reference = part.split('"').next().unwrap_or_default();
            let pointer = reference.trim_start_matches('#');
            assert!(
                doc.pointer(pointer).is_some(),
                "dangling reference {reference}"
            );
        }
    }
}
