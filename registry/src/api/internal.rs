//! The internal API for protocol adapters and routers (documented in docs/registry.md): tenant by id or by
//! trusted CA, credentials by (tenant, type, auth-id), registration assertions, JWKS, application-user
//! authentication and the change stream.
//!
//! Responses carry `Cache-Control: max-age` so that clients may cache them; the change stream tells them
//! when to purge earlier.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_core::assertion::Claims;
use ferry_core::ids::{DeviceId, TenantId};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::extract::{JsonBody, PathParams, QueryPairs};
use super::management::{parse_application, parse_credentials, stored_json};
use super::AppState;
use crate::changes::Announcement;
use crate::error::ApiError;
use crate::logins::Refusal;
use crate::store::StoreError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tenants", get(tenant_by_ca))
        .route("/tenants/{tenant}", get(tenant))
        .route("/credentials/{tenant}", get(credentials))
        .route("/assertions/{tenant}/{device}", post(assertion))
        .route("/applications/authenticate", post(authenticate_application))
        .route("/changes", get(changes))
}

fn cached(body: Value, max_age: u64) -> Response {
    let mut r = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("max-age={max_age}")) {
        r.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    r
}

fn tenant_view(id: &str, mut body: Value) -> Value {
    if let Value::Object(map) = &mut body {
        map.insert("tenant-id".into(), Value::String(id.to_owned()));
    }
    body
}

/// `GET /internal/v1/tenants/{tenant}`: the tenant's configuration with `tenant-id`.
async fn tenant(State(s): State<AppState>, path: PathParams) -> Result<Response, ApiError> {
    let id = TenantId::new(path.0.first().map_or("", String::as_str))?;
    let stored = s.store.get_tenant(id.as_str()).await?;
    Ok(cached(
        tenant_view(&stored.id, stored_json(&stored)?),
        s.settings.cache_max_age_secs,
    ))
}

/// `GET /internal/v1/tenants?subject-dn=DN`: the tenant whose trusted CA has this subject DN. When tenants
/// of one trust anchor group share the CA, the caller must disambiguate (by SNI), so all are listed.
async fn tenant_by_ca(State(s): State<AppState>, q: QueryPairs) -> Result<Response, ApiError> {
    let dn = q
        .get("subject-dn")
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::bad_request("query parameter subject-dn is required"))?;
    let ids = s.store.tenants_by_ca(dn).await?;
    if ids.is_empty() {
        return Err(ApiError::NotFound(
            "no tenant trusts a CA with this subject DN".into(),
        ));
    }
    let mut tenants = Vec::with_capacity(ids.len());
    for id in ids {
        let stored = s.store.get_tenant(&id).await?;
        tenants.push(tenant_view(&id, stored_json(&stored)?));
    }
    Ok(cached(
        json!({ "tenants": tenants }),
        s.settings.cache_max_age_secs,
    ))
}

/// `GET /internal/v1/credentials/{tenant}?type=T&auth-id=A`: the matching credential with its secrets (hashes
/// included: the adapter verifies) and the device it belongs to.
async fn credentials(
    State(s): State<AppState>,
    path: PathParams,
    q: QueryPairs,
) -> Result<Response, ApiError> {
    let tenant = TenantId::new(path.0.first().map_or("", String::as_str))?;
    let cred_type = q
        .get("type")
        .ok_or_else(|| ApiError::bad_request("query parameter type is required"))?;
    let auth_id = ferry_core::ids::AuthId::new(
        q.get("auth-id")
            .ok_or_else(|| ApiError::bad_request("query parameter auth-id is required"))?,
    )?;
    let stored = s
        .store
        .find_credentials(tenant.as_str(), cred_type, auth_id.as_str())
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => ApiError::NotFound("no such credentials".into()),
            e => e.into(),
        })?;
    let creds = parse_credentials(&stored)?;
    let found = creds
        .iter()
        .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
        .find(|c| {
            c.get("type").and_then(Value::as_str) == Some(cred_type)
                && c.get("auth-id").and_then(Value::as_str) == Some(auth_id.as_str())
        })
        .ok_or_else(|| ApiError::NotFound("no such credentials".into()))?;
    let mut body = found;
    if let Value::Object(map) = &mut body {
        map.insert("device-id".into(), Value::String(stored.id.clone()));
    }
    Ok(cached(body, s.settings.cache_max_age_secs))
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

fn enabled(v: &Value) -> bool {
    v.get("enabled").and_then(Value::as_bool).unwrap_or(true)
}

/// `POST /internal/v1/assertions/{tenant}/{device}[?gateway=GW]`: a signed registration assertion for the
/// device, with its `via` gateways and `defaults`. 404 unknown or disabled tenant/device; 403 gateway not
/// allowed to act for the device.
async fn assertion(
    State(s): State<AppState>,
    path: PathParams,
    q: QueryPairs,
) -> Result<Response, ApiError> {
    let tenant = TenantId::new(path.0.first().map_or("", String::as_str))?;
    let device = DeviceId::new(path.0.get(1).map_or("", String::as_str))?;
    let gateway = q
        .get("gateway")
        .filter(|g| !g.is_empty())
        .map(DeviceId::new)
        .transpose()?;
    let not_found = || ApiError::NotFound("device unknown or disabled".into());

    let tenant_body = match s.store.get_tenant(tenant.as_str()).await {
        Ok(t) => stored_json(&t)?,
        Err(StoreError::NotFound(_)) => {
            return Err(ApiError::NotFound("tenant unknown or disabled".into()))
        }
        Err(e) => return Err(e.into()),
    };
    if !enabled(&tenant_body) {
        return Err(ApiError::NotFound("tenant unknown or disabled".into()));
    }
    let device_body = match s.store.get_device(tenant.as_str(), device.as_str()).await {
        Ok(d) => stored_json(&d)?,
        Err(StoreError::NotFound(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    if !enabled(&device_body) {
        return Err(not_found());
    }
    let via_ids = strings(&device_body, "via");
    let via_groups = strings(&device_body, "viaGroups");

    let via = match &gateway {
        Some(gw) if gw != &device => {
            let forbidden =
                || ApiError::Forbidden("gateway is not allowed to act for this device".into());
            let gw_body = match s.store.get_device(tenant.as_str(), gw.as_str()).await {
                Ok(g) => stored_json(&g)?,
                Err(StoreError::NotFound(_)) => return Err(forbidden()),
                Err(e) => return Err(e.into()),
            };
            if !enabled(&gw_body) {
                return Err(forbidden());
            }
            let member_of = strings(&gw_body, "memberOf");
            let allowed = via_ids.iter().any(|v| v == gw.as_str())
                || member_of.iter().any(|g| via_groups.contains(g));
            if !allowed {
                return Err(forbidden());
            }
            Some(gw.clone())
        }
        _ => None,
    };

    // `via` in the answer lists every gateway that may act for the device, members of viaGroups included.
    let all_via = gateways_of(&s, &tenant, &device_body).await?;

    let now = chrono::Utc::now().timestamp();
    let claims = Claims::new(
        tenant.clone(),
        device.clone(),
        via,
        now,
        s.settings.assertion_lifetime_secs,
    );
    let token = s.signer.sign(&claims);
    s.metrics.assertions_issued.inc();
    let defaults = device_body
        .get("defaults")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let body = json!({
        "device-id": device.as_str(),
        "assertion": token,
        "expires": claims.exp,
        "via": all_via,
        "defaults": defaults,
    });
    // Cache until shortly before the token expires, so a cached assertion is never handed out stale.
    let max_age = s
        .settings
        .assertion_lifetime_secs
        .saturating_sub(s.settings.assertion_lifetime_secs / 10 + 5);
    Ok(cached(body, max_age.min(s.settings.cache_max_age_secs)))
}

/// Every gateway that may act for a device (its stored body `device_body`): its `via`, and the members
/// of its `viaGroups`.
pub(crate) async fn gateways_of(
    s: &AppState,
    tenant: &TenantId,
    device_body: &Value,
) -> Result<Vec<String>, ApiError> {
    let mut all_via = strings(device_body, "via");
    let via_groups = strings(device_body, "viaGroups");
    if !via_groups.is_empty() {
        for d in s.store.list_devices(tenant.as_str()).await? {
            let body = stored_json(&d)?;
            if strings(&body, "memberOf")
                .iter()
                .any(|g| via_groups.contains(g))
                && !all_via.contains(&d.id)
            {
                all_via.push(d.id.clone());
            }
        }
    }
    Ok(all_via)
}

/// `GET /internal/v1/jwks` and `/.well-known/jwks.json`: the public keys that verify assertions.
pub async fn jwks(State(s): State<AppState>) -> Response {
    cached(
        serde_json::to_value(s.signer.jwks()).unwrap_or_else(|_| json!({ "keys": [] })),
        300,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppLogin {
    name: String,
    password: String,
    /// The address the login came from, when the caller knows it: failures are also counted per source.
    #[serde(default)]
    source: Option<std::net::IpAddr>,
}

// Written by hand so that a logged request never shows the password.
impl std::fmt::Debug for AppLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppLogin")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// `POST /internal/v1/applications/authenticate`: checks an application user's password (SASL PLAIN at the
/// router). 200 with the user's tenants and operations, 403 otherwise: unknown names, wrong passwords and
/// names locked after too many failures look the same, and unknown names cost a bcrypt like known ones
/// ([`crate::logins`]).
/// Authenticated by the internal token like the rest of the internal API; routed outside the nest only so
/// the handler can stay here beside its peers.
pub async fn authenticate_application(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    JsonBody(login): JsonBody<AppLogin>,
) -> Result<Response, ApiError> {
    match super::bearer(&headers) {
        Some(t)
            if super::token_is(t, &s.tokens.internal) || super::token_is(t, &s.tokens.admin) => {}
        _ => return Err(ApiError::Unauthorized),
    }
    let denied = || ApiError::Forbidden("unknown application or wrong password".into());
    // A malformed name cannot exist, so refusing it at once tells nothing.
    let name = match ferry_registry_model::UserName::new(&login.name) {
        Ok(n) => n,
        Err(_) => return Err(denied()),
    };
    let user = match s.store.get_application(name.as_str()).await {
        Ok(stored) => Some(parse_application(&stored)?),
        Err(StoreError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let user = match s
        .logins
        .login(&name, login.source, user, login.password)
        .await
    {
        Ok(user) => user,
        Err(Refusal::Denied | Refusal::LockedOut) => return Err(denied()),
        Err(Refusal::Interrupted) => {
            return Err(ApiError::bad_request("verification was interrupted"))
        }
    };
    let view =
        serde_json::to_value(user.view(&name)).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(view).into_response())
}

/// `GET /internal/v1/changes`: server-sent events. First a `hello` event with the current sequence number
/// (so a client knows it is subscribed), then a `change` event per change; `reset` when the client fell
/// behind and must purge everything. Ends on shutdown so that draining does not wait for it.
async fn changes(State(s): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = s.changes.subscribe();
    let hello = Event::default()
        .event("hello")
        .data(json!({ "seq": s.changes.last_seq() }).to_string());
    let updates = stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(Announcement::Change(change)) => Event::default()
                .event("change")
                .id(change.seq.to_string())
                .data(serde_json::to_string(&change).unwrap_or_default()),
            Ok(Announcement::Reset) | Err(RecvError::Lagged(_)) => {
                Event::default().event("reset").data("{}")
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    let stream = stream::once(async move { Ok(hello) })
        .chain(updates)
        .take_until(s.shutdown.clone().wait());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
