//! One device request, from its head to the response: route, authenticate, check, read the body, send
//! downstream, and (with `hono-ttd`) wait for a command. Every refusal is a [`Failure`], mapped to its
//! HTTP status in [`Failure::response`] and nowhere else.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_adapter_core::auth::{AuthError, Device};
use ferry_adapter_core::downstream::{CommandResponse, DeviceMessage, MessageKind, SendOutcome};
use ferry_adapter_core::registry::{Assertion, AssertionOutcome, TenantInfo, TtlLimit};
use ferry_core::ids::{AuthId, DeviceId};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use rustls::pki_types::CertificateDer;

use crate::body::{self, BodyError, ResponseBody};
use crate::commands::{response_address, Delivered};
use crate::metrics::{Status, TtdOutcome};
use crate::request::{self, name, Kind, Options, RequestError, Target};
use crate::request_id::parse_request_id;
use crate::Shared;

/// The adapter type name of HONO-CONTRACT §0.
pub const ADAPTER_TYPE: &str = ferry_core::hono::adapter_type::HTTP;

/// The tenant's `max-ttd` when its adapter entry sets none (HONO-CONTRACT §2.3).
pub const DEFAULT_MAX_TTD_SECS: u64 = 60;

/// Why a request is refused. Denials (401/403/404) stay apart from our own trouble (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("authentication required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("the payload is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the tenant's data volume is used up")]
    TooManyRequests,
    #[error("{0}")]
    Unavailable(&'static str),
}

impl Failure {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn response(&self) -> Response<ResponseBody> {
        let mut r = Response::new(ResponseBody::text(format!("{self}\n")));
        *r.status_mut() = self.status();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            Self::Unauthorized => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"Hono\""),
                );
            }
            Self::MethodNotAllowed(allow) => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            // The rest of the body may still be on its way: the connection cannot carry another request.
            Self::BodyTimeout | Self::TooLarge(_) => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        r
    }
}

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::NotFound => Self::NotFound("no such resource"),
            RequestError::MethodNotAllowed(allow) => Self::MethodNotAllowed(allow),
            RequestError::BadRequest(why) => Self::BadRequest(why),
        }
    }
}

impl From<BodyError> for Failure {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge(max) => Self::TooLarge(max),
            BodyError::TooSlow => Self::BodyTimeout,
            BodyError::Broken(why) => Self::BadRequest(why),
        }
    }
}

/// Serves one request; never fails (a failure is a response).
pub async fn handle<B>(
    shared: Arc<Shared>,
    client_cert: Option<&CertificateDer<'static>>,
    req: Request<B>,
) -> Response<ResponseBody>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let response = match serve(&shared, client_cert, req).await {
        Ok(r) => r,
        Err(f) => {
            tracing::debug!(status = %f.status(), reason = %f, "request refused");
            f.response()
        }
    };
    shared.metrics.request(response.status().as_u16());
    response
}

/// The authenticated device and its tenant.
struct Who {
    device: Device,
    tenant: Arc<TenantInfo>,
}

async fn serve<B>(
    shared: &Shared,
    client_cert: Option<&CertificateDer<'static>>,
    req: Request<B>,
) -> Result<Response<ResponseBody>, Failure>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let target = request::route(&parts.method, path)?;
    let max = shared.config.max_payload_bytes;
    // Refused before anything is read, so an honest client with a big body learns it at once.
    if body::declared_length(&parts.headers).is_some_and(|l| l > max as u64) {
        return Err(Failure::TooLarge(max));
    }
    let source = parts.extensions.get::<SocketAddr>().map(SocketAddr::ip);
    let who = authenticate(shared, &parts.headers, client_cert, &target, source).await?;
    let options = request::options(target.kind, &parts.headers, parts.uri.query())?;
    let content_type = content_type(&parts.headers)?;
    let payload = body::read_bounded(
        body,
        max,
        Duration::from_secs(shared.config.body_timeout_secs),
    )
    .await?;
    match target.kind {
        Kind::Telemetry | Kind::Event => {
            upload(shared, &who, &target, path, options, content_type, payload).await
        }
        Kind::CommandResponse => {
            respond(shared, &who, &target, options, content_type, payload).await
        }
    }
}

/// The device of a request (HONO-CONTRACT §2.3): a client certificate (HTTPS) decides when there is one;
/// otherwise HTTP Basic with `auth-id@tenant`; otherwise, when neither the adapter nor the URI's tenant
/// requires authentication, the device the URI names. Then the tenant and adapter checks of §2.1.
async fn authenticate(
    shared: &Shared,
    headers: &HeaderMap,
    client_cert: Option<&CertificateDer<'static>>,
    target: &Target<'_>,
    source: Option<IpAddr>,
) -> Result<Who, Failure> {
    let login = match (client_cert, request::basic_credentials(headers)) {
        (Some(cert), _) => shared.auth.authenticate_certificate(cert.as_ref()).await,
        (None, Some((user, password))) => {
            shared
                .auth
                .authenticate_password(&user, &password, source)
                .await
        }
        (None, None) => return unauthenticated(shared, target).await,
    };
    let device = match login {
        Ok(d) => d,
        // An unknown tenant looks like bad credentials, so a device cannot probe for tenants.
        Err(AuthError::BadCredentials | AuthError::UnknownTenant) => {
            return Err(Failure::Unauthorized)
        }
        Err(AuthError::TenantDisabled) => return Err(Failure::Forbidden("tenant disabled")),
        Err(AuthError::Unavailable(_)) => {
            return Err(Failure::Unavailable("device registry unavailable"))
        }
    };
    let tenant = match shared.registry.tenant(&device.tenant).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(Failure::Unauthorized),
        Err(_) => return Err(Failure::Unavailable("device registry unavailable")),
    };
    if !tenant.is_enabled() {
        return Err(Failure::Forbidden("tenant disabled"));
    }
    if !tenant.is_adapter_enabled(ADAPTER_TYPE) {
        return Err(Failure::Forbidden(
            "the HTTP adapter is not enabled for this tenant",
        ));
    }
    Ok(Who { device, tenant })
}

/// A request without credentials: only `PUT` forms naming tenant and device, only when the adapter does
/// not require authentication, and only for a tenant whose `hono-http` entry allows it. Unknown tenants
/// and tenants that require authentication look alike (401), so tenants cannot be probed.
async fn unauthenticated(shared: &Shared, target: &Target<'_>) -> Result<Who, Failure> {
    let (Some(tenant), Some(device)) = (&target.tenant, &target.device) else {
        return Err(Failure::Unauthorized);
    };
    if shared.config.authentication_required {
        return Err(Failure::Unauthorized);
    }
    let info = match shared.registry.tenant(tenant).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(Failure::Unauthorized),
        Err(_) => return Err(Failure::Unavailable("device registry unavailable")),
    };
    if info.is_device_authentication_required(ADAPTER_TYPE) {
        return Err(Failure::Unauthorized);
    }
    if !info.is_enabled() {
        return Err(Failure::Forbidden("tenant disabled"));
    }
    if !info.is_adapter_enabled(ADAPTER_TYPE) {
        return Err(Failure::Forbidden(
            "the HTTP adapter is not enabled for this tenant",
        ));
    }
    let auth_id = AuthId::new(device.as_str()).map_err(|_| Failure::Unauthorized)?;
    Ok(Who {
        device: Device {
            tenant: tenant.clone(),
            device_id: device.clone(),
            auth_id,
        },
        tenant: info,
    })
}

fn content_type(headers: &HeaderMap) -> Result<Option<String>, Failure> {
    match headers.get(header::CONTENT_TYPE) {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| Failure::BadRequest("content-type is not visible ASCII"))?
                .trim();
            Ok((!s.is_empty()).then(|| s.to_owned()))
        }
    }
}

/// The device a request is about, and the gateway when the authenticated device acts for another one.
/// Another tenant's URI is refused here, before the registry is asked.
fn subject(who: &Who, target: &Target<'_>) -> Result<(DeviceId, Option<DeviceId>), Failure> {
    if target
        .tenant
        .as_ref()
        .is_some_and(|t| *t != who.device.tenant)
    {
        return Err(Failure::Forbidden("another tenant's resource"));
    }
    Ok(match &target.device {
        Some(d) if *d != who.device.device_id => (d.clone(), Some(who.device.device_id.clone())),
        _ => (who.device.device_id.clone(), None),
    })
}

/// The registration assertion for `device` (through `gateway`): 404 unknown or disabled, 403 a gateway
/// that may not act for it.
async fn assertion(
    shared: &Shared,
    who: &Who,
    device: &DeviceId,
    gateway: Option<&DeviceId>,
) -> Result<Arc<Assertion>, Failure> {
    match shared
        .registry
        .assertion(&who.device.tenant, device, gateway)
        .await
    {
        Ok(AssertionOutcome::Granted(a)) => Ok(a),
        Ok(AssertionOutcome::NotFound) => Err(Failure::NotFound("device unknown or disabled")),
        Ok(AssertionOutcome::Forbidden) => Err(Failure::Forbidden(
            "the gateway may not act for this device",
        )),
        Err(_) => Err(Failure::Unavailable("device registry unavailable")),
    }
}

fn status(code: StatusCode) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::empty());
    *r.status_mut() = code;
    r
}

/// Telemetry or an event: downstream, then the wait for a command when the device asked for one.
#[allow(clippy::too_many_arguments)]
async fn upload(
    shared: &Shared,
    who: &Who,
    target: &Target<'_>,
    path: &str,
    options: Options,
    content_type: Option<String>,
    payload: Bytes,
) -> Result<Response<ResponseBody>, Failure> {
    use ferry_core::hono::content_type::EMPTY_NOTIFICATION;
    let (device, gateway) = subject(who, target)?;
    // HONO-CONTRACT §2.1: an empty body says nothing without a type, and an empty notification is empty.
    match content_type.as_deref() {
        None if payload.is_empty() => {
            return Err(Failure::BadRequest("an empty body needs a content-type"))
        }
        Some(EMPTY_NOTIFICATION) if !payload.is_empty() => {
            return Err(Failure::BadRequest(
                "an empty notification must have no body",
            ))
        }
        _ => {}
    }
    let assertion = assertion(shared, who, &device, gateway.as_ref()).await?;
    let kind = match target.kind {
        Kind::Event => MessageKind::Event,
        _ => MessageKind::Telemetry,
    };
    let tenant = &who.tenant;
    let size = payload.len();
    // The tenant's data volume (HONO-CONTRACT §5): this instance's count, no registry call.
    if !shared
        .volume
        .tenant(&who.device.tenant)
        .admit(tenant, size, chrono::Utc::now())
    {
        shared.metrics.telemetry(
            &who.device.tenant,
            kind,
            options.qos,
            Status::Unprocessable,
            TtdOutcome::None,
            size,
        );
        return Err(Failure::TooManyRequests);
    }
    let ttd = options.ttd.map(|requested| {
        let tenant_max = tenant
            .adapter_option(ADAPTER_TYPE, "max-ttd")
            .and_then(|v| v.as_u64())
            .unwrap_or(DEFAULT_MAX_TTD_SECS);
        requested.min(tenant_max).min(shared.config.max_ttd_secs)
    });
    let ttd = ttd.filter(|t| *t > 0);
    // Subscribed before the message leaves: an application that reacts to its `ttd` at once must find
    // the device reachable.
    let mut waiter = match ttd {
        None => None,
        Some(_) => Some(
            shared
                .commands
                .wait_for(&who.device.tenant, &device, gateway.is_some())
                .await
                .map_err(|_| Failure::Unavailable("cannot subscribe to commands"))?,
        ),
    };
    let mut msg = DeviceMessage {
        kind,
        tenant: who.device.tenant.clone(),
        device_id: device.clone(),
        qos: options.qos,
        content_type,
        payload,
        assertion: assertion.token.clone(),
        orig_adapter: ADAPTER_TYPE,
        orig_address: path.to_owned(),
        ttl_ms: None,
        ttd: ttd.map(|t| i32::try_from(t).unwrap_or(i32::MAX)),
        extra_properties: Vec::new(),
    };
    // Message value > device defaults > tenant defaults; TTL capped by the tenant (HONO-CONTRACT §2.1).
    msg.apply_defaults(tenant, &assertion.defaults, options.ttl);
    let forwarded = matches!(shared.downstream.send(msg).await, Ok(o) if o.is_accepted());
    let record = |outcome| {
        shared.metrics.telemetry(
            &who.device.tenant,
            kind,
            options.qos,
            if forwarded {
                Status::Forwarded
            } else {
                Status::Undeliverable
            },
            outcome,
            size,
        );
    };
    if !forwarded {
        record(TtdOutcome::None);
        return Err(Failure::Unavailable("no consumer accepted the message"));
    }
    let (Some(waiter), Some(ttd)) = (waiter.as_mut(), ttd) else {
        record(TtdOutcome::None);
        return Ok(status(StatusCode::ACCEPTED));
    };
    match waiter.next(Duration::from_secs(ttd)).await {
        None => {
            record(TtdOutcome::Expired);
            Ok(status(StatusCode::ACCEPTED))
        }
        Some(delivered) => {
            record(TtdOutcome::Command);
            Ok(command_response(
                shared,
                who,
                gateway.is_some().then_some(&device),
                delivered,
            ))
        }
    }
}

/// 200 with the command in headers and body (HONO-CONTRACT §2.3).
fn command_response(
    shared: &Shared,
    who: &Who,
    target_device: Option<&DeviceId>,
    delivered: Delivered,
) -> Response<ResponseBody> {
    let Delivered {
        command,
        request_id,
    } = delivered;
    shared.metrics.command(
        &who.device.tenant,
        if request_id.is_some() {
            "request"
        } else {
            "one-way"
        },
        Status::Forwarded,
        command.payload.len(),
    );
    // The dispatcher checked that name, content type and request id are valid header values.
    let mut headers = HeaderMap::new();
    let values = [
        (name::COMMAND, Some(command.name.as_str())),
        (name::CMD_REQ_ID, request_id.as_deref()),
        (name::CMD_TARGET_DEVICE, target_device.map(DeviceId::as_str)),
        ("content-type", command.content_type.as_deref()),
    ];
    for (key, value) in values {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(key, v);
        }
    }
    let mut r = Response::new(ResponseBody::command(command));
    *r.headers_mut() = headers;
    r
}

/// A command response: back to the application waiting on the command's reply-to.
async fn respond(
    shared: &Shared,
    who: &Who,
    target: &Target<'_>,
    options: Options,
    content_type: Option<String>,
    payload: Bytes,
) -> Result<Response<ResponseBody>, Failure> {
    let (device, gateway) = subject(who, target)?;
    let (correlation, reply, stripped) = target
        .request_id
        .and_then(parse_request_id)
        .ok_or(Failure::BadRequest("malformed command request id"))?;
    let status_code = options
        .status
        .ok_or(Failure::BadRequest("hono-cmd-status is missing"))?;
    assertion(shared, who, &device, gateway.as_ref()).await?;
    let tenant = &who.device.tenant;
    let size = payload.len();
    if !shared
        .volume
        .tenant(tenant)
        .admit(&who.tenant, size, chrono::Utc::now())
    {
        shared
            .metrics
            .command(tenant, "response", Status::Unprocessable, size);
        return Err(Failure::TooManyRequests);
    }
    let response = CommandResponse {
        tenant: tenant.clone(),
        reply_to: response_address(tenant, &device, reply, stripped),
        device,
        correlation_id: correlation.to_owned(),
        status: status_code,
        content_type,
        payload,
        ttl_ms: who
            .tenant
            .max_ttl_secs(TtlLimit::CommandResponse)
            .map(|s| u32::try_from(s.saturating_mul(1000)).unwrap_or(u32::MAX)),
    };
    let accepted = matches!(
        shared.downstream.send_response(response).await,
        Ok(SendOutcome::Accepted)
    );
    let outcome = if accepted {
        Status::Forwarded
    } else {
        Status::Undeliverable
    };
    shared.metrics.command(tenant, "response", outcome, size);
    if accepted {
        Ok(status(StatusCode::ACCEPTED))
    } else {
        Err(Failure::Unavailable(
            "no application waits for this response",
        ))
    }
}
