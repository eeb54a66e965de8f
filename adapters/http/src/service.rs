//! One device request, from its head to the response: route, authenticate, check, read the body, send
//! downstream, and (with `hono-ttd`) wait for a command. Every refusal is a [`Failure`], mapped to its
//! HTTP status in [`Failure::response`] and nowhere else.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_adapter_core::auth::Device;
use ferry_adapter_core::downstream::MessageKind;
use ferry_adapter_core::pipeline::{self, Pipeline, Refused, Subject, TenantCheck, Upload};
use ferry_adapter_core::registry::TenantInfo;
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
    let (device, tenant) = pipeline(shared).login(login).await?;
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

fn status(code: StatusCode) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::empty());
    *r.status_mut() = code;
    r
}

impl From<Refused> for Failure {
    /// The pipeline's refusals on HTTP's wire (HONO-CONTRACT §2.3): the one place where a [`Refused`]
    /// becomes a status code (an accepted message is 202, or 200 with a command).
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Unauthorized => Self::Unauthorized,
            Refused::TenantDisabled => Self::Forbidden("tenant disabled"),
            Refused::AdapterDisabled => {
                Self::Forbidden("the HTTP adapter is not enabled for this tenant")
            }
            Refused::GatewayForbidden => Self::Forbidden("the gateway may not act for this device"),
            Refused::NotFound => Self::NotFound("device unknown or disabled"),
            Refused::QuotaExceeded => Self::TooManyRequests,
            Refused::RegistryUnavailable => Self::Unavailable("device registry unavailable"),
            Refused::CommandsUnavailable => Self::Unavailable("cannot subscribe to commands"),
            Refused::NoConsumer => Self::Unavailable("no consumer accepted the message"),
            Refused::NoResponseReceiver => {
                Self::Unavailable("no application waits for this response")
            }
        }
    }
}

fn pipeline(shared: &Shared) -> Pipeline<'_> {
    Pipeline {
        adapter: ADAPTER_TYPE,
        registry: &shared.registry,
        downstream: &shared.downstream,
        volume: &shared.volume,
        metrics: shared.metrics.hono(),
        command_link: None,
    }
}

/// The tenant's `max-ttd` (HONO-CONTRACT §2.3), [`DEFAULT_MAX_TTD_SECS`] when its adapter entry sets none.
fn max_ttd(tenant: &TenantInfo) -> u64 {
    tenant
        .adapter_option(ADAPTER_TYPE, "max-ttd")
        .and_then(|v| v.as_u64())
        .unwrap_or(DEFAULT_MAX_TTD_SECS)
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
    let kind = match target.kind {
        Kind::Event => MessageKind::Event,
        _ => MessageKind::Telemetry,
    };
    let qos = options.qos;
    let size = payload.len();
    let subject = Subject {
        tenant: who.device.tenant.clone(),
        device: device.clone(),
        gateway: gateway.clone(),
    };
    let upload = Upload {
        kind,
        qos,
        content_type,
        payload,
        orig_address: path.to_owned(),
        ttl_secs: options.ttl,
        extra_properties: Vec::new(),
        tell_last_gateway: false,
    };
    let commands = &shared.commands;
    let max_ttd_secs = shared.config.max_ttd_secs;
    let by_gateway = gateway.is_some();
    // Subscribed before the message leaves: an application that reacts to its `ttd` at once must find
    // the device reachable.
    let subscribe = |tenant: &TenantInfo| {
        let ttd = options
            .ttd
            .map(|requested| requested.min(max_ttd(tenant)).min(max_ttd_secs))
            .filter(|t| *t > 0);
        let (tenant_id, device) = (&who.device.tenant, &device);
        async move {
            let Some(ttd) = ttd else {
                return Ok((None, None));
            };
            let waiter = commands
                .wait_for(tenant_id, device, by_gateway)
                .await
                .map_err(|_| Refused::CommandsUnavailable)?;
            Ok((
                Some(i32::try_from(ttd).unwrap_or(i32::MAX)),
                Some((waiter, ttd)),
            ))
        }
    };
    let sent = pipeline(shared)
        .forward(
            TenantCheck::Checked(who.tenant.clone()),
            subject,
            upload,
            subscribe,
        )
        .await;
    let mut waiting = sent?;
    // A forwarded message with a `ttd` is counted here, once the wait is over.
    let record = |outcome| {
        shared.metrics.telemetry(
            &who.device.tenant,
            kind,
            qos,
            Status::Forwarded,
            outcome,
            size,
        );
    };
    let Some((waiter, ttd)) = waiting.as_mut() else {
        return Ok(status(StatusCode::ACCEPTED));
    };
    match waiter.next(Duration::from_secs(*ttd)).await {
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
    let tenant = &who.device.tenant;
    let response = pipeline::Response {
        reply_to: response_address(tenant, &device, reply, stripped),
        correlation_id: correlation.to_owned(),
        status: status_code,
        content_type,
        payload,
        metered: true,
    };
    let subject = Subject {
        tenant: tenant.clone(),
        device,
        gateway,
    };
    pipeline(shared)
        .respond(TenantCheck::Checked(who.tenant.clone()), subject, response)
        .await?;
    Ok(status(StatusCode::ACCEPTED))
}
