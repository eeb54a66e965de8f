//! Ferry's extensions of the management API for the console (docs/console.md): a device's presence, a
//! tenant's live messages (server-sent events) and commands sent to a device; and the console itself,
//! static files embedded in the binary, under `/console`.
//!
//! Presence, live messages and commands come from the messaging side: through a
//! [`RouterBridge`](ferry_core::console::RouterBridge) when `ferry up` runs the router in this process,
//! or, with `messaging.mode: nats` (cluster mode), through NATS ([`ClusterConsole`]: the tenants'
//! subjects watched with plain subscriptions, commands sent to the adapter instances as a router sends
//! them). A registry with neither answers those calls 503.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_core::console::{CommandRequest, Presence, TapMessage, TapSubscription};
use ferry_core::ids::{DeviceId, TenantId};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::extract::{JsonBody, PathParams};
use super::AppState;
use crate::error::ApiError;

/// Live messages sent to one watcher per second at most; the rest are counted and reported.
pub const LIVE_MAX_PER_SEC: u32 = 50;

/// Longest a console command may wait for its response.
/// (Below the registry's request timeout, 30 s by default.)
const MAX_COMMAND_TIMEOUT_MS: u64 = 20_000;
const DEFAULT_COMMAND_TIMEOUT_MS: u64 = 10_000;
/// Largest command payload the console may send.
const MAX_COMMAND_PAYLOAD: usize = 8 * 1024;

/// The management-API routes (mounted under `/v1`, behind the admin token).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/devices/{tenant}/{device}/presence", get(presence))
        .route("/live/{tenant}", get(live))
        .route("/commands/{tenant}/{device}", post(command))
}

/// The console's files (public: they hold nothing secret; every call they make carries the token).
pub fn pages() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { asset("index.html") }))
        .route("/console/", get(|| async { asset("index.html") }))
        .route("/console/console.js", get(|| async { asset("console.js") }))
        .route("/console/limits.js", get(|| async { asset("limits.js") }))
        .route(
            "/console/gateways.js",
            get(|| async { asset("gateways.js") }),
        )
        .route("/console/charts.js", get(|| async { asset("charts.js") }))
        .route(
            "/console/console.css",
            get(|| async { asset("console.css") }),
        )
}

fn asset(name: &str) -> Response {
    let (body, kind): (&'static str, &str) = match name {
        "index.html" => (
            include_str!("../console/index.html"),
            "text/html; charset=utf-8",
        ),
        "console.js" => (
            include_str!("../console/console.js"),
            "text/javascript; charset=utf-8",
        ),
        "limits.js" => (
            include_str!("../console/limits.js"),
            "text/javascript; charset=utf-8",
        ),
        "gateways.js" => (
            include_str!("../console/gateways.js"),
            "text/javascript; charset=utf-8",
        ),
        "charts.js" => (
            include_str!("../console/charts.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => (
            include_str!("../console/console.css"),
            "text/css; charset=utf-8",
        ),
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Everything the page loads comes from here; no inline script, nothing from elsewhere.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The console's live view and commands through NATS (cluster mode): one connection for commands (and
/// presence), one for the live view's subscriptions, whose small capacity bounds what NATS holds for
/// a watched tenant.
#[derive(Debug)]
pub struct ClusterConsole {
    pub taps: ferry_nats::tap::Taps,
    pub commands: ferry_nats::commands::Sender,
    /// The registry's NATS connection (the charts' stats requests, `ferry_nats::stats`).
    pub client: async_nats::Client,
}

impl ClusterConsole {
    /// Opens the route bucket over `client` and a second connection for the live view; messages are
    /// shown only with an assertion `signer`'s keys verify.
    pub async fn open(
        client: async_nats::Client,
        config: &ferry_nats::NatsConfig,
        signer: &ferry_core::assertion::SigningKey,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let commands = ferry_nats::commands::Sender::open(client.clone(), config.replicas)
            .await
            .context("opening the command routes (messaging.nats)")?;
        let live = ferry_nats::connect_with(config, "ferry-registry-live", |o| {
            o.custom_inbox_prefix(ferry_nats::permissions::REGISTRY_INBOX)
                .subscription_capacity(ferry_nats::tap::SUBSCRIPTION_CAPACITY)
        })
        .await
        .context("connecting to NATS for the live view (messaging.nats)")?;
        let verifier = ferry_core::assertion::Verifier::new(
            &signer.jwks(),
            ferry_core::assertion::VerifierConfig {
                leeway_secs: 10,
                cache_capacity: 10_000,
            },
        );
        Ok(Self {
            taps: ferry_nats::tap::Taps::new(live, Some(Arc::new(verifier))),
            commands,
            client,
        })
    }
}

const NO_MESSAGING: &str =
    "live messages and commands need the router in the same process (ferry up) or messaging.mode nats";

/// Where a watcher's messages come from.
enum Feed {
    Router(TapSubscription),
    Nats(ferry_nats::tap::Watch),
}

impl Feed {
    fn messages(&mut self) -> &mut broadcast::Receiver<Arc<TapMessage>> {
        match self {
            Self::Router(s) => &mut s.messages,
            Self::Nats(w) => &mut w.messages,
        }
    }

    /// Messages not shown to anyone since the last call (cluster mode's per-tenant rate).
    fn skipped(&mut self) -> u64 {
        match self {
            Self::Router(_) => 0,
            Self::Nats(w) => w.skipped(),
        }
    }
}

fn ids(path: &PathParams) -> Result<(TenantId, DeviceId), ApiError> {
    let tenant = TenantId::new(path.0.first().map_or("", String::as_str))?;
    let device = DeviceId::new(path.0.get(1).map_or("", String::as_str))?;
    Ok((tenant, device))
}

/// `GET /v1/devices/{tenant}/{device}/presence`: 404 for an unknown tenant or device; a device nothing
/// is known of (not seen since the router started) is `{"connected": false}`.
async fn presence(State(s): State<AppState>, path: PathParams) -> Result<Response, ApiError> {
    let (tenant, device) = ids(&path)?;
    s.store.get_device(tenant.as_str(), device.as_str()).await?;
    let found = s
        .presence_store()?
        .get(&tenant, &device)
        .await
        .map_err(|e| ApiError::NotAvailable(e.to_string()))?;
    Ok(Json(found.unwrap_or_else(Presence::unknown)).into_response())
}

/// `GET /v1/live/{tenant}`: the tenant's telemetry and events as they pass the router, as server-sent
/// events `message` (a JSON object per device message) and `dropped` (`{"count": n}`: messages not
/// shown because the watcher fell behind or the rate limit was reached). A copy of each message is
/// taken; applications get theirs as before.
async fn live(
    State(s): State<AppState>,
    path: PathParams,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let tenant = TenantId::new(path.0.first().map_or("", String::as_str))?;
    s.store.get_tenant(tenant.as_str()).await?;
    let too_many = |e: ferry_core::console::TapError| ApiError::TooManyRequests(e.to_string());
    let feed = match (&s.bridge, &s.cluster) {
        (Some(bridge), _) => Feed::Router(bridge.watch(&tenant).map_err(too_many)?),
        (None, Some(cluster)) => {
            let mut watch = cluster.taps.watch(&tenant).map_err(too_many)?;
            // `hello` once the subscriptions are in place: what is published after it is seen.
            if !watch.ready(Duration::from_secs(5)).await {
                return Err(ApiError::NotAvailable(
                    "cannot subscribe to the tenant's messages on NATS".into(),
                ));
            }
            Feed::Nats(watch)
        }
        (None, None) => return Err(ApiError::NotAvailable(NO_MESSAGING.into())),
    };
    struct Watch {
        feed: Feed,
        window: tokio::time::Instant,
        sent: u32,
        dropped: u64,
    }
    let start = Watch {
        feed,
        window: tokio::time::Instant::now(),
        sent: 0,
        dropped: 0,
    };
    let hello = Event::default()
        .event("hello")
        .data(serde_json::json!({ "tenant": tenant.as_str() }).to_string());
    let updates = stream::unfold(start, |mut w| async move {
        loop {
            let message = match w.feed.messages().recv().await {
                Ok(m) => m,
                Err(RecvError::Lagged(n)) => {
                    w.dropped += n;
                    continue;
                }
                Err(RecvError::Closed) => return None,
            };
            w.dropped += w.feed.skipped();
            let now = tokio::time::Instant::now();
            if now.duration_since(w.window) >= Duration::from_secs(1) {
                w.window = now;
                w.sent = 0;
            }
            if w.sent >= LIVE_MAX_PER_SEC {
                w.dropped += 1;
                continue;
            }
            w.sent += 1;
            if w.dropped > 0 {
                let count = std::mem::take(&mut w.dropped);
                // The dropped notice goes first; this message follows in the next turn.
                let notice = Event::default()
                    .event("dropped")
                    .data(serde_json::json!({ "count": count }).to_string());
                let event = Event::default()
                    .event("message")
                    .data(serde_json::to_string(&*message).unwrap_or_default());
                return Some((stream::iter(vec![Ok(notice), Ok(event)]), w));
            }
            let event = Event::default()
                .event("message")
                .data(serde_json::to_string(&*message).unwrap_or_default());
            return Some((stream::iter(vec![Ok(event)]), w));
        }
    })
    .flatten();
    let stream = stream::once(async move { Ok(hello) })
        .chain(updates)
        .take_until(s.shutdown.clone().wait());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CommandBody {
    /// The command name (AMQP `subject`).
    name: String,
    #[serde(default)]
    payload: String,
    content_type: Option<String>,
    /// `true`: no response is awaited (no `reply-to`).
    #[serde(default)]
    one_way: bool,
    timeout_ms: Option<u64>,
}

/// `POST /v1/commands/{tenant}/{device}`: sends a command as an application would and answers 200 with
/// what became of it: `{"outcome": "accepted"|"released"|"rejected"|"modified"|"timeout", "error"?,
/// "response"?: {"status", "content-type", "payload"}}`.
async fn command(
    State(s): State<AppState>,
    path: PathParams,
    JsonBody(body): JsonBody<CommandBody>,
) -> Result<Response, ApiError> {
    let (tenant, device) = ids(&path)?;
    if body.name.is_empty() || body.name.len() > 256 || body.name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name must be 1-256 characters without control characters",
        ));
    }
    if body.payload.len() > MAX_COMMAND_PAYLOAD {
        return Err(ApiError::bad_request(format!(
            "payload must be at most {MAX_COMMAND_PAYLOAD} bytes"
        )));
    }
    if body
        .content_type
        .as_deref()
        .is_some_and(|c| c.len() > 256 || c.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request("content-type is invalid"));
    }
    let timeout_ms = body.timeout_ms.unwrap_or(DEFAULT_COMMAND_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > MAX_COMMAND_TIMEOUT_MS {
        return Err(ApiError::bad_request(format!(
            "timeout-ms must be 1-{MAX_COMMAND_TIMEOUT_MS}"
        )));
    }
    let stored = s.store.get_device(tenant.as_str(), device.as_str()).await?;
    let timeout = Duration::from_millis(timeout_ms);
    let busy = || ApiError::NotAvailable("too many console commands in flight; try again".into());
    let result = match (&s.bridge, &s.cluster) {
        (Some(bridge), _) => {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let request = CommandRequest {
                tenant,
                device,
                name: body.name,
                content_type: body.content_type,
                payload: body.payload.into_bytes(),
                expect_response: !body.one_way,
                timeout,
                reply,
            };
            if !bridge.send_command(request) {
                return Err(busy());
            }
            rx.await
                .map_err(|_| ApiError::NotAvailable("the router did not answer".into()))?
        }
        (None, Some(cluster)) => {
            // The device's gateways, read from this registry's store only when it has no route of
            // its own.
            let via = async {
                let body = super::management::stored_json(&stored).ok()?;
                super::internal::gateways_of(&s, &tenant, &body).await.ok()
            };
            let command = ferry_nats::commands::Command {
                tenant: tenant.clone(),
                device,
                name: body.name,
                content_type: body.content_type,
                payload: body.payload.into_bytes(),
                expect_response: !body.one_way,
                timeout,
            };
            let via = async { via.await.unwrap_or_default() };
            cluster.commands.send(command, via).await.ok_or_else(busy)?
        }
        (None, None) => return Err(ApiError::NotAvailable(NO_MESSAGING.into())),
    };
    Ok((StatusCode::OK, Json(result)).into_response())
}
