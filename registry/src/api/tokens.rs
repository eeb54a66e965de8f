//! Tenant-scoped tokens of the management API (docs/registry.md "Tenant tokens").
//!
//! The admin token may do everything; a tenant token only what concerns its own tenant: read the tenant,
//! manage its devices and credentials, read presence and live messages, send commands. Tokens are made,
//! listed and deleted with the admin token (`/v1/tokens/{tenant}`). A token is `ftt_<id>_<secret>`, with
//! 256 random bits of secret; the registry keeps its SHA-256 only and looks it up by id on each request,
//! so a deleted token is refused from the next request on, on every replica.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ferry_core::ids::TenantId;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::extract::{JsonBody, PathParams};
use super::AppState;
use crate::error::ApiError;
use crate::store::{NewToken, TokenRecord};

/// Most tokens one tenant may hold.
pub const MAX_TOKENS_PER_TENANT: u64 = 100;
/// Longest comment kept with a token.
const MAX_COMMENT: usize = 256;
const PREFIX: &str = "ftt_";

/// Who a management request is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The admin token.
    Admin,
    /// A token of this tenant.
    Tenant(TenantId),
}

/// Token management: admin only (the caller checks the scope).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tokens/{tenant}", post(create).get(list))
        .route("/tokens/{tenant}/{id}", delete(remove))
        .route("/whoami", get(whoami))
}

/// Who the management API takes a bearer token for: the admin, a tenant (its token valid and not
/// expired), or nobody.
pub async fn scope_of(s: &AppState, token: &str) -> Result<Option<Scope>, ApiError> {
    if super::token_is(token, &s.tokens.admin) {
        return Ok(Some(Scope::Admin));
    }
    let Some((id, _secret)) = parse(token) else {
        return Ok(None);
    };
    let Some(record) = s.store.token(id).await? else {
        return Ok(None);
    };
    let hash = hash(token);
    if !bool::from(hash.as_bytes().ct_eq(record.hash.as_bytes())) {
        return Ok(None);
    }
    if record.expires.as_deref().is_some_and(|e| {
        DateTime::parse_from_rfc3339(e).map_or(true, |at| at.with_timezone(&Utc) <= Utc::now())
    }) {
        return Ok(None);
    }
    Ok(TenantId::new(&record.tenant).ok().map(Scope::Tenant))
}

/// Whether a tenant token of `tenant` may make this request (`path` relative to `/v1`).
pub fn tenant_may(tenant: &TenantId, method: &Method, path: &str) -> bool {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let mut segments = path.trim_start_matches('/').split('/');
    let (Some(first), second) = (segments.next(), segments.next()) else {
        return false;
    };
    let own = second == Some(tenant.as_str());
    match first {
        "whoami" => second.is_none() && method == Method::GET,
        "tenants" => own && segments.next().is_none() && method == Method::GET,
        "devices" | "credentials" | "live" | "commands" | "stats" => own,
        _ => false,
    }
}

/// Admits the admin token everywhere under `/v1` and a tenant token where [`tenant_may`] says; the
/// scope is put into the request for handlers that need it.
pub async fn require_manager(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(token) = super::bearer(req.headers()).map(str::to_owned) else {
        return ApiError::Unauthorized.into_response();
    };
    let scope = match scope_of(&s, &token).await {
        Ok(Some(scope)) => scope,
        Ok(None) => return ApiError::Unauthorized.into_response(),
        Err(e) => return e.into_response(),
    };
    if let Scope::Tenant(tenant) = &scope {
        if !tenant_may(tenant, req.method(), req.uri().path()) {
            return ApiError::Forbidden(format!(
                "this token is for tenant {tenant} only: its devices, credentials, presence, live messages and commands"
            ))
            .into_response();
        }
    }
    req.extensions_mut().insert(scope);
    next.run(req).await
}

fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some((id, secret))
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn admin_only(scope: &Scope) -> Result<(), ApiError> {
    match scope {
        Scope::Admin => Ok(()),
        Scope::Tenant(_) => Err(ApiError::Forbidden(
            "tokens are managed with the admin token".into(),
        )),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct CreateToken {
    #[serde(default)]
    comment: Option<String>,
    /// RFC 3339; absent: until deleted.
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

fn view(r: &TokenRecord) -> Value {
    json!({
        "id": r.id,
        "tenant": r.tenant,
        "comment": r.comment,
        "created": r.created,
        "expires-at": r.expires,
    })
}

/// `POST /v1/tokens/{tenant}` `{"comment"?, "expires-at"?}`: 201 with the token, shown this once.
async fn create(
    State(s): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: PathParams,
    JsonBody(body): JsonBody<CreateToken>,
) -> Result<Response, ApiError> {
    admin_only(&scope)?;
    let tenant = TenantId::new(path.0.first().map_or("", String::as_str))?;
    if body.comment.as_ref().is_some_and(|c| c.len() > MAX_COMMENT) {
        return Err(ApiError::bad_request(format!(
            "comment: at most {MAX_COMMENT} bytes"
        )));
    }
    if body.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::bad_request("expires-at: must be in the future"));
    }
    let id = format!("{:016x}", rand::random::<u64>());
    let secret =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let token = format!("{PREFIX}{id}_{secret}");
    let expires = body
        .expires_at
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let record = s
        .store
        .create_token(
            &NewToken {
                id: &id,
                tenant: tenant.as_str(),
                hash: &hash(&token),
                comment: body.comment.as_deref(),
                expires: expires.as_deref(),
            },
            MAX_TOKENS_PER_TENANT,
        )
        .await?;
    let mut answer = view(&record);
    answer["token"] = Value::String(token);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `GET /v1/tokens/{tenant}`: the tenant's tokens, never their secrets.
async fn list(
    State(s): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: PathParams,
) -> Result<Response, ApiError> {
    admin_only(&scope)?;
    let tenant = TenantId::new(path.0.first().map_or("", String::as_str))?;
    let tokens: Vec<Value> = s
        .store
        .list_tokens(tenant.as_str())
        .await?
        .iter()
        .map(view)
        .collect();
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

/// `DELETE /v1/tokens/{tenant}/{id}`: 204; the token is refused from the next request on.
async fn remove(
    State(s): State<AppState>,
    Extension(scope): Extension<Scope>,
    path: PathParams,
) -> Result<Response, ApiError> {
    admin_only(&scope)?;
    let tenant = TenantId::new(path.0.first().map_or("", String::as_str))?;
    let id = path.0.get(1).map_or("", String::as_str);
    s.store.delete_token(tenant.as_str(), id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/whoami`: `{"scope": "admin"}` or `{"scope": "tenant", "tenant": T}` (the console asks
/// this after sign-in).
async fn whoami(Extension(scope): Extension<Scope>) -> Json<Value> {
    Json(match scope {
        Scope::Admin => json!({ "scope": "admin" }),
        Scope::Tenant(t) => json!({ "scope": "tenant", "tenant": t.as_str() }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_token_reaches_only_its_own_tenants_resources() {
        let t = TenantId::new("t1").expect("id");
        let get = Method::GET;
        let put = Method::PUT;
        for (method, path) in [
            (&get, "/v1/tenants/t1"),
            (&get, "/devices/t1"),
            (&put, "/v1/devices/t1/d1"),
            (&Method::DELETE, "/v1/devices/t1/d1"),
            (&put, "/v1/credentials/t1/d1"),
            (&get, "/v1/devices/t1/d1/presence"),
            (&get, "/v1/live/t1"),
            (&Method::POST, "/v1/commands/t1/d1"),
            (&get, "/v1/whoami"),
        ] {
            assert!(tenant_may(&t, method, path), "{method} {path}");
        }
        for (method, path) in [
            (&put, "/v1/tenants/t1"),
            (&Method::DELETE, "/v1/tenants/t1"),
            (&get, "/v1/tenants"),
            (&Method::POST, "/v1/tenants"),
            (&get, "/v1/tenants/t2"),
            (&get, "/v1/devices/t2"),
            (&get, "/v1/devices/t10"),
            (&get, "/v1/devices/t"),
            (&get, "/v1/devices"),
            (&put, "/v1/credentials/t2/d1"),
            (&get, "/v1/live/t2"),
            (&Method::POST, "/v1/commands/t2/d1"),
            (&get, "/v1/applications"),
            (&put, "/v1/applications/app1"),
            (&get, "/v1/tokens/t1"),
            (&Method::POST, "/v1/tokens/t1"),
            (&get, "/v1/tenants/t1/x"),
            (&get, "/v1/devices/%74%31"),
        ] {
            assert!(!tenant_may(&t, method, path), "{method} {path}");
        }
    }

    #[test]
    fn only_well_formed_tokens_are_looked_up() {
        assert_eq!(
            parse("ftt_0123456789abcdef_c2VjcmV0_x-y"),
            Some(("0123456789abcdef", "c2VjcmV0_x-y"))
        );
        for bad in [
            "",
            "ftt_",
            "ftt_0123456789abcdef_",
            "ftt_0123456789abcde_secret",
            "ftt_0123456789abcdeg_secret",
            "xtt_0123456789abcdef_secret",
            "admin-token",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(hash("x").len(), 64);
    }
}
