//! The registry's HTTP API: Hono's management API under `/v1` ([`management`]), the internal API for
//! adapters and routers under `/internal/v1` ([`internal`]), and the OpenAPI document ([`openapi`]).
//!
//! Authentication is a bearer token per audience: the admin token (or, for its own tenant's resources, a
//! tenant token: [`tokens`]) for `/v1`, the internal token (or the admin token) for `/internal/v1`. The JWKS and the OpenAPI document are public: they hold nothing secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ferry_core::assertion::SigningKey;
use ferry_core::shutdown::Shutdown;
use ferry_registry_model::HashOptions;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use subtle::ConstantTimeEq;

use crate::changes::Changes;
use crate::error::ApiError;
use crate::logins::{LoginCounters, LoginGuard};
use crate::store::Store;

pub mod console;
pub mod extract;
pub mod internal;
pub mod management;
pub mod openapi;
mod search;
pub mod stats;
pub mod tokens;

pub use console::ClusterConsole;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub changes: Changes,
    pub signer: Arc<SigningKey>,
    pub tokens: Arc<Tokens>,
    pub settings: Arc<Settings>,
    pub metrics: Metrics,
    pub logins: LoginGuard,
    pub shutdown: Shutdown,
    /// Presence, live messages and commands (docs/console.md); `None` when no router runs in this
    /// process.
    pub bridge: Option<Arc<ferry_core::console::RouterBridge>>,
    /// Where presence is read: the bridge's (embedded), NATS's presence bucket (cluster mode), or
    /// nowhere.
    pub presence: Option<Arc<dyn ferry_core::console::PresenceStore>>,
    /// The live view and commands through NATS (cluster mode, no router in this process).
    pub cluster: Option<Arc<ClusterConsole>>,
    /// The process's metrics, when the adapters and the router report into them too (`ferry up`):
    /// the per-tenant figures of `GET /v1/stats/{tenant}`.
    pub stats: Option<stats::StatsSource>,
}

impl AppState {
    /// Where presence is read; 503 when nowhere.
    pub fn presence_store(&self) -> Result<&Arc<dyn ferry_core::console::PresenceStore>, ApiError> {
        self.presence.as_ref().ok_or_else(|| {
            ApiError::NotAvailable(
                "presence needs the router in the same process (ferry up) or messaging.mode nats"
                    .into(),
            )
        })
    }

    /// The devices of `tenant` connected now (for the device search's `connected` filter).
    pub async fn connected_devices(
        &self,
        tenant: &ferry_core::ids::TenantId,
    ) -> Result<std::collections::HashSet<String>, ApiError> {
        let list = self
            .presence_store()?
            .connected(tenant)
            .await
            .map_err(|e| ApiError::NotAvailable(e.to_string()))?;
        Ok(list.into_iter().map(|d| d.as_str().to_owned()).collect())
    }
}

/// The bearer tokens the API accepts.
#[derive(Debug)]
pub struct Tokens {
    pub admin: String,
    pub internal: String,
}

/// Settings the handlers need from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub assertion_lifetime_secs: u64,
    pub cache_max_age_secs: u64,
    pub max_body_bytes: usize,
    /// A request not answered within this time gets 503.
    pub request_timeout: Duration,
    pub hash: HashOptions,
    /// Serve the console under `/console`.
    pub console: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// The registry's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub tenants: Gauge,
    pub assertions_issued: Counter,
    pub logins: LoginCounters,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

impl Metrics {
    pub fn new(admin: &ferry_core::admin::Admin) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            tenants: Gauge::default(),
            assertions_issued: Counter::default(),
            logins: LoginCounters::default(),
        };
        admin.register(
            "ferry_registry_requests",
            "HTTP requests by method, route and status",
            m.requests.clone(),
        );
        admin.register(
            "ferry_registry_request_duration_seconds",
            "HTTP request duration by method, route and status",
            m.duration.clone(),
        );
        admin.register(
            "hono_tenants_total",
            "Number of tenants in the registry",
            m.tenants.clone(),
        );
        admin.register(
            "ferry_registry_assertions_issued",
            "Registration assertions signed",
            m.assertions_issued.clone(),
        );
        admin.register(
            "ferry_registry_password_verifications",
            "Application-user passwords checked with bcrypt (unknown names against a dummy hash)",
            m.logins.verifications.clone(),
        );
        admin.register(
            "ferry_registry_logins_locked_out",
            "Application-user logins refused unchecked after too many failures for the name or source",
            m.logins.locked_out.clone(),
        );
        m
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    let timeout = state.settings.request_timeout;
    let management = management::routes()
        .merge(console::routes())
        .merge(stats::routes())
        .merge(tokens::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            tokens::require_manager,
        ));
    let internal = internal::routes().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        require_internal,
    ));
    let pages = if state.settings.console {
        console::pages()
    } else {
        Router::new()
    };
    Router::new()
        .nest("/v1", management)
        .merge(pages)
        .nest("/internal/v1", internal)
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/internal/v1/jwks", get(internal::jwks))
        .route("/.well-known/jwks.json", get(internal::jwks))
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Inside `observe`, so timed-out requests are counted. Covers reading the body (extractors run in
        // the handler) but not streaming a response, so the change stream is not cut.
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| async move {
                tokio::time::timeout(timeout, next.run(req))
                    .await
                    .unwrap_or_else(|_| ApiError::Timeout(timeout.as_secs()).into_response())
            },
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(axum::middleware::from_fn(
            move |mut req: Request, next: Next| async move {
                req.extensions_mut().insert(extract::BodyLimit(limit));
                next.run(req).await
            },
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn token_is(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

async fn require_internal(State(s): State<AppState>, req: Request, next: Next) -> Response {
    match bearer(req.headers()) {
        Some(t) if token_is(t, &s.tokens.internal) || token_is(t, &s.tokens.admin) => {
            next.run(req).await
        }
        _ => ApiError::Unauthorized.into_response(),
    }
}

/// Counts and times every request by its route template (never the raw path, which would let clients
/// mint unbounded label values).
async fn observe(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    let labels = RequestLabels {
        method,
        path,
        status: response.status().as_u16(),
    };
    s.metrics.requests.get_or_create(&labels).inc();
    s.metrics
        .duration
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    response
}
