//! Hono's device registry management API (HONO-CONTRACT §3.2): tenants, devices, credentials, and Ferry's
//! application users for AMQP consumers.
//!
//! Bodies are validated with the shared model (`ferry-registry-model`) and stored normalized; what the
//! store needs to constrain (CA subject DNs, (type, auth-id) pairs, registration limits) is read from the
//! validated body. Every successful write is announced on the change stream.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_core::ids::{DeviceId, TenantId};
use ferry_registry_model::{
    ApplicationUser, ApplicationUserInput, Credential, Device, Tenant, UserName,
};
use serde_json::{json, Map, Value};

use super::extract::{IfMatch, JsonBody, PathParams, QueryPairs};
use super::search::Search;
use super::AppState;
use crate::error::ApiError;
use crate::store::{Limits, Stored, TenantKeys};
use axum::extract::State;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tenants", post(create_tenant).get(search_tenants))
        .route(
            "/tenants/{tenant}",
            post(create_tenant)
                .get(get_tenant)
                .put(update_tenant)
                .delete(delete_tenant),
        )
        .route(
            "/devices/{tenant}",
            post(create_device)
                .get(search_devices)
                .delete(delete_all_devices),
        )
        .route(
            "/devices/{tenant}/{device}",
            post(create_device)
                .get(get_device)
                .put(update_device)
                .delete(delete_device),
        )
        .route(
            "/credentials/{tenant}/{device}",
            get(get_credentials).put(set_credentials),
        )
        .route("/applications", get(list_applications))
        .route(
            "/applications/{name}",
            get(get_application)
                .put(put_application)
                .delete(delete_application),
        )
}

fn etag(version: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

fn created(location: String, version: &str, id: &str) -> Response {
    let mut r = (StatusCode::CREATED, Json(json!({ "id": id }))).into_response();
    if let Ok(loc) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    r.headers_mut().insert(header::ETAG, etag(version));
    r
}

fn no_content(version: Option<&str>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Some(v) = version {
        r.headers_mut().insert(header::ETAG, etag(v));
    }
    r
}

fn with_etag(body: Value, version: &str) -> Response {
    let mut r = Json(body).into_response();
    r.headers_mut().insert(header::ETAG, etag(version));
    r
}

/// A stored body, which we wrote ourselves; if it no longer parses, that is a storage fault, not bad input.
pub(crate) fn stored_json(s: &Stored) -> Result<Value, ApiError> {
    serde_json::from_str(&s.body).map_err(|e| {
        ApiError::Unavailable(crate::store::StoreError::Database(sqlx::Error::Decode(
            Box::new(e),
        )))
    })
}

pub(crate) fn to_json<T: serde::Serialize>(t: &T) -> Result<String, ApiError> {
    serde_json::to_string(t).map_err(|e| ApiError::bad_request(format!("cannot encode body: {e}")))
}

fn generated_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn one(p: &PathParams, i: usize) -> &str {
    p.0.get(i).map_or("", String::as_str)
}

// ---- tenants ----

/// What the store must index of a tenant: its CA subject DNs and trust anchor group.
pub(crate) fn tenant_keys(body: &Value) -> TenantKeys {
    TenantKeys {
        subject_dns: body
            .get("trusted-ca")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|ca| {
                ca.get("subject-dn")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect(),
        trust_anchor_group: body
            .get("trust-anchor-group")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

pub(crate) fn tenant_limits(body: &Value) -> Limits {
    let limit = |key: &str| {
        body.pointer(&format!("/registration-limits/{key}"))
            .and_then(Value::as_i64)
            .and_then(|n| u64::try_from(n).ok())
    };
    Limits {
        max_devices: limit("max-devices"),
        max_credentials_per_device: limit("max-credentials-per-device"),
    }
}

fn validated_tenant(t: &Tenant) -> Result<(String, Value), ApiError> {
    t.validate()?;
    let body = serde_json::to_value(t).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((body.to_string(), body))
}

async fn create_tenant(
    State(s): State<AppState>,
    path: PathParams,
    JsonBody(tenant): JsonBody<Tenant>,
) -> Result<Response, ApiError> {
    let id = match path.0.first() {
        Some(id) => TenantId::new(id)?.to_string(),
        None => generated_id(),
    };
    let (text, body) = validated_tenant(&tenant)?;
    let version = s
        .store
        .create_tenant(&id, &text, &tenant_keys(&body))
        .await?;
    s.metrics.tenants.inc();
    Ok(created(format!("/v1/tenants/{id}"), &version, &id))
}

async fn get_tenant(State(s): State<AppState>, path: PathParams) -> Result<Response, ApiError> {
    let id = TenantId::new(one(&path, 0))?;
    let stored = s.store.get_tenant(id.as_str()).await?;
    Ok(with_etag(stored_json(&stored)?, &stored.version))
}

async fn update_tenant(
    State(s): State<AppState>,
    path: PathParams,
    IfMatch(if_match): IfMatch,
    JsonBody(tenant): JsonBody<Tenant>,
) -> Result<Response, ApiError> {
    let id = TenantId::new(one(&path, 0))?;
    let (text, body) = validated_tenant(&tenant)?;
    let version = s
        .store
        .update_tenant(id.as_str(), &text, &tenant_keys(&body), if_match.as_deref())
        .await?;
    Ok(no_content(Some(&version)))
}

async fn delete_tenant(
    State(s): State<AppState>,
    path: PathParams,
    IfMatch(if_match): IfMatch,
) -> Result<Response, ApiError> {
    let id = TenantId::new(one(&path, 0))?;
    s.store
        .delete_tenant(id.as_str(), if_match.as_deref())
        .await?;
    s.metrics.tenants.dec();
    Ok(no_content(None))
}

async fn search_tenants(State(s): State<AppState>, q: QueryPairs) -> Result<Response, ApiError> {
    let search = Search::from_query(&q)?;
    let items = s
        .store
        .list_tenants()
        .await?
        .iter()
        .map(|t| with_id(stored_json(t)?, &t.id))
        .collect::<Result<Vec<_>, _>>()?;
    search_result(&search, items)
}

fn with_id(mut body: Value, id: &str) -> Result<Value, ApiError> {
    if let Value::Object(map) = &mut body {
        let mut out = Map::with_capacity(map.len() + 1);
        out.insert("id".into(), Value::String(id.to_owned()));
        out.append(map);
        return Ok(Value::Object(out));
    }
    Ok(body)
}

/// Hono answers an empty search with 404.
fn search_result(search: &Search, items: Vec<Value>) -> Result<Response, ApiError> {
    let (total, page) = search.apply(items);
    if total == 0 {
        return Err(ApiError::NotFound("no resources match the search".into()));
    }
    Ok(Json(json!({ "total": total, "result": page })).into_response())
}

// ---- devices ----

async fn tenant_body(s: &AppState, tenant: &TenantId) -> Result<Value, ApiError> {
    stored_json(&s.store.get_tenant(tenant.as_str()).await?)
}

fn with_status(mut body: Value, stored: &Stored) -> Value {
    if let Value::Object(map) = &mut body {
        let mut status = Map::new();
        if let Some(c) = &stored.created {
            status.insert("created".into(), Value::String(c.clone()));
        }
        if let Some(u) = &stored.updated {
            status.insert("updated".into(), Value::String(u.clone()));
        }
        map.insert("status".into(), Value::Object(status));
    }
    body
}

fn validated_device(d: &Device) -> Result<String, ApiError> {
    d.validate()?;
    to_json(d)
}

async fn create_device(
    State(s): State<AppState>,
    path: PathParams,
    JsonBody(device): JsonBody<Device>,
) -> Result<Response, ApiError> {
    let tenant = TenantId::new(one(&path, 0))?;
    let id = match path.0.get(1) {
        Some(d) => DeviceId::new(d)?.to_string(),
        None => generated_id(),
    };
    let body = validated_device(&device)?;
    let limits = tenant_limits(&tenant_body(&s, &tenant).await?);
    let version = s
        .store
        .create_device(tenant.as_str(), &id, &body, limits)
        .await?;
    Ok(created(format!("/v1/devices/{tenant}/{id}"), &version, &id))
}

async fn get_device(State(s): State<AppState>, path: PathParams) -> Result<Response, ApiError> {
    let tenant = TenantId::new(one(&path, 0))?;
    let device = DeviceId::new(one(&path, 1))?;
    let stored = s.store.get_device(tenant.as_str(), device.as_str()).await?;
    Ok(with_etag(
        with_status(stored_json(&stored)?, &stored),
        &stored.version,
    ))
}

async fn update_device(
    State(s): State<AppState>,
    path: PathParams,
    IfMatch(if_match): IfMatch,
    JsonBody(device): JsonBody<Device>,
) -> Result<Response, ApiError> {
    let tenant = TenantId::new(one(&path, 0))?;
    let id = DeviceId::new(one(&path, 1))?;
    let body = validated_device(&device)?;
    let version = s
        .store
        .update_device(tenant.as_str(), id.as_str(), &body, if_match.as_deref())
        .await?;
    Ok(no_content(Some(&version)))
}

async fn delete_device(
    State(s): State<AppState>,
    path: PathParams,
    IfMatch(if_match): IfMatch,
) -> Result<Response, ApiError> {
    let tenant = TenantId::new(one(&path, 0))?;
    let id = DeviceId::new(one(&path, 1))?;
    s.store
        .delete_device(tenant.as_str(), id.as_str(), if_match.as_deref())
        .await?;
    Ok(no_content(None))
}

async fn delete_all_devices(
    State(s): State<AppState>,
    path: PathParams,
) -> Result<Response, ApiError> {
    let tenant = TenantId::new(one(&path, 0))?;
    s.store.delete_all_devices(tenant.as_str()).await?;
    Ok(no_content(None))
}

async fn search_devices(
    State(s): State<AppState>,
    path: PathParams,
    q: QueryPairs,
) -> Result<Response, ApiError> {
    let tenant = TenantId::new(one(&path, 0))?;
    let search = Search::from_query(&q)?;
    let is_gateway = match q.get("isGateway") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "isGateway must be true or false, not {other}"
            )))
        }
    };
    let connected = match q.get("connected") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "connected must be true or false, not {other}"
            )))
        }
    };
    // An unknown tenant is a 404 even before the search finds nothing.
    s.store.get_tenant(tenant.as_str()).await?;
    let online = match connected {
        Some(_) => Some(s.connected_devices(&tenant).await?),
        None => None,
    };
    let stored = s.store.list_devices(tenant.as_str()).await?;
    let mut items = Vec::with_capacity(stored.len());
    for d in &stored {
        items.push(with_id(with_status(stored_json(d)?, d), &d.id)?);
    }
    if let Some(want) = is_gateway {
        let gateways = gateway_ids(&items);
        items.retain(|d| {
            let id = d.get("id").and_then(Value::as_str).unwrap_or_default();
            gateways.contains(id) == want
        });
    }
    if let (Some(want), Some(online)) = (connected, &online) {
        items.retain(|d| {
            let id = d.get("id").and_then(Value::as_str).unwrap_or_default();
            online.contains(id) == want
        });
    }
    search_result(&search, items)
}

/// A device is a gateway when another device names it in `via`, or names a group it is a member of in
/// `viaGroups`.
fn gateway_ids(devices: &[Value]) -> std::collections::HashSet<String> {
    let strings = |d: &Value, key: &str| -> Vec<String> {
        d.get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let mut gateways: std::collections::HashSet<String> =
        devices.iter().flat_map(|d| strings(d, "via")).collect();
    let groups: std::collections::HashSet<String> = devices
        .iter()
        .flat_map(|d| strings(d, "viaGroups"))
        .collect();
    for d in devices {
        if strings(d, "memberOf").iter().any(|g| groups.contains(g)) {
            if let Some(id) = d.get("id").and_then(Value::as_str) {
                gateways.insert(id.to_owned());
            }
        }
    }
    gateways
}

// ---- credentials ----

pub(crate) fn parse_credentials(s: &Stored) -> Result<Vec<Credential>, ApiError> {
    serde_json::from_str(&s.body).map_err(|e| {
        ApiError::Unavailable(crate::store::StoreError::Database(sqlx::Error::Decode(
            Box::new(e),
        )))
    })
}

async fn get_credentials(
    State(s): State<AppState>,
    path: PathParams,
) -> Result<Response, ApiError> {
    let tenant = TenantId::new(one(&path, 0))?;
    let device = DeviceId::new(one(&path, 1))?;
    let stored = s
        .store
        .get_credentials(tenant.as_str(), device.as_str())
        .await?;
    let creds: Vec<Credential> = parse_credentials(&stored)?
        .iter()
        .map(Credential::redacted)
        .collect();
    let body = serde_json::to_value(&creds).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(with_etag(body, &stored.version))
}

async fn set_credentials(
    State(s): State<AppState>,
    path: PathParams,
    IfMatch(if_match): IfMatch,
    JsonBody(incoming): JsonBody<Vec<Credential>>,
) -> Result<Response, ApiError> {
    let tenant = TenantId::new(one(&path, 0))?;
    let device = DeviceId::new(one(&path, 1))?;
    let limits = tenant_limits(&tenant_body(&s, &tenant).await?);
    let existing = parse_credentials(
        &s.store
            .get_credentials(tenant.as_str(), device.as_str())
            .await?,
    )?;
    let hash = s.settings.hash.clone();
    // bcrypt is deliberately slow: keep it off the async workers.
    let prepared = tokio::task::spawn_blocking(move || {
        ferry_registry_model::prepare_for_storage(incoming, &existing, &hash)
    })
    .await
    .map_err(|_| ApiError::bad_request("credential processing was interrupted"))??;
    let body = serde_json::to_value(&prepared).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let keys = credential_keys(&body);
    let version = s
        .store
        .set_credentials(
            tenant.as_str(),
            device.as_str(),
            &body.to_string(),
            &keys,
            limits,
            if_match.as_deref(),
        )
        .await?;
    Ok(no_content(Some(&version)))
}

fn credential_keys(body: &Value) -> Vec<(String, String)> {
    body.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c.get("type")?.as_str()?.to_owned(),
                c.get("auth-id")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

// ---- application users ----

fn app_name(path: &PathParams) -> Result<UserName, ApiError> {
    Ok(UserName::new(one(path, 0))?)
}

pub(crate) fn parse_application(s: &Stored) -> Result<ApplicationUser, ApiError> {
    serde_json::from_str(&s.body).map_err(|e| {
        ApiError::Unavailable(crate::store::StoreError::Database(sqlx::Error::Decode(
            Box::new(e),
        )))
    })
}

async fn put_application(
    State(s): State<AppState>,
    path: PathParams,
    IfMatch(if_match): IfMatch,
    JsonBody(input): JsonBody<ApplicationUserInput>,
) -> Result<Response, ApiError> {
    let name = app_name(&path)?;
    let hash = s.settings.hash.clone();
    let user = tokio::task::spawn_blocking(move || input.into_stored(&hash))
        .await
        .map_err(|_| ApiError::bad_request("password hashing was interrupted"))??;
    let (version, was_created) = s
        .store
        .put_application(name.as_str(), &to_json(&user)?, if_match.as_deref())
        .await?;
    if was_created {
        Ok(created(
            format!("/v1/applications/{}", name.as_str()),
            &version,
            name.as_str(),
        ))
    } else {
        Ok(no_content(Some(&version)))
    }
}

async fn get_application(
    State(s): State<AppState>,
    path: PathParams,
) -> Result<Response, ApiError> {
    let name = app_name(&path)?;
    let stored = s.store.get_application(name.as_str()).await?;
    let view = parse_application(&stored)?.view(&name);
    let body = serde_json::to_value(view).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(with_etag(body, &stored.version))
}

async fn delete_application(
    State(s): State<AppState>,
    path: PathParams,
    IfMatch(if_match): IfMatch,
) -> Result<Response, ApiError> {
    let name = app_name(&path)?;
    s.store
        .delete_application(name.as_str(), if_match.as_deref())
        .await?;
    Ok(no_content(None))
}

async fn list_applications(State(s): State<AppState>, q: QueryPairs) -> Result<Response, ApiError> {
    let search = Search::from_query(&q)?;
    let mut items = Vec::new();
    for a in s.store.list_applications().await? {
        let name = UserName::new(&a.id)?;
        let view = serde_json::to_value(parse_application(&a)?.view(&name))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        items.push(view);
    }
    search_result(&search, items)
}
