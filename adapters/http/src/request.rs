//! What a device's request says, read from its head alone (no I/O): which endpoint and device the URI
//! names (HONO-CONTRACT §2.3's table), the options in headers and query (`qos-level`, `hono-ttd`,
//! `hono-ttl`, `hono-cmd-status`) and the Basic credentials. Everything malformed becomes a
//! [`RequestError`], which the service maps to 400, 404 or 405.

use base64::Engine as _;
use ferry_core::ids::{DeviceId, TenantId};
use http::{HeaderMap, Method};

/// Header (and query parameter) names of HONO-CONTRACT §2.3.
pub mod name {
    pub const QOS_LEVEL: &str = "qos-level";
    pub const TTD: &str = "hono-ttd";
    pub const TTL: &str = "hono-ttl";
    pub const CMD_STATUS: &str = "hono-cmd-status";
    pub const COMMAND: &str = "hono-command";
    pub const CMD_REQ_ID: &str = "hono-cmd-req-id";
    pub const CMD_TARGET_DEVICE: &str = "hono-cmd-target-device";
}

/// The three things a device can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Telemetry,
    Event,
    CommandResponse,
}

/// Where a request goes: the endpoint, and the tenant and device when the URI names them (`PUT` forms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub kind: Kind,
    /// `None` when the URI leaves it out (`POST /telemetry`) or empty (`PUT /telemetry//DEVICE`).
    pub tenant: Option<TenantId>,
    /// `None` for the authenticated device itself (`POST` forms).
    pub device: Option<DeviceId>,
    /// The command response's request id.
    pub request_id: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no such resource")]
    NotFound,
    /// A known resource with another method; the value lists the allowed one.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("{0}")]
    BadRequest(&'static str),
}

/// Maps method and path to a [`Target`] (HONO-CONTRACT §2.3).
pub fn route<'a>(method: &Method, path: &'a str) -> Result<Target<'a>, RequestError> {
    let rest = path.strip_prefix('/').ok_or(RequestError::NotFound)?;
    let mut parts = rest.split('/');
    let first = parts.next().unwrap_or_default();
    let parts: Vec<&str> = parts.collect();
    let (kind, parts) = match (first, parts.as_slice()) {
        ("telemetry", p) => (Kind::Telemetry, p),
        ("event", p) => (Kind::Event, p),
        ("command", ["res", p @ ..]) => (Kind::CommandResponse, p),
        _ => return Err(RequestError::NotFound),
    };
    let need = |m: &'static str| {
        if method.as_str() == m {
            Ok(())
        } else {
            Err(RequestError::MethodNotAllowed(m))
        }
    };
    match (kind, parts) {
        (Kind::Telemetry | Kind::Event, []) => {
            need("POST")?;
            Ok(Target {
                kind,
                tenant: None,
                device: None,
                request_id: None,
            })
        }
        (Kind::Telemetry | Kind::Event, [tenant, device]) if !device.is_empty() => {
            need("PUT")?;
            Ok(Target {
                kind,
                tenant: tenant_segment(tenant)?,
                device: Some(device_segment(device)?),
                request_id: None,
            })
        }
        (Kind::CommandResponse, [request_id]) if !request_id.is_empty() => {
            need("POST")?;
            Ok(Target {
                kind,
                tenant: None,
                device: None,
                request_id: Some(request_id),
            })
        }
        (Kind::CommandResponse, [tenant, device, request_id])
            if !device.is_empty() && !request_id.is_empty() =>
        {
            need("PUT")?;
            Ok(Target {
                kind,
                tenant: tenant_segment(tenant)?,
                device: Some(device_segment(device)?),
                request_id: Some(request_id),
            })
        }
        _ => Err(RequestError::NotFound),
    }
}

fn tenant_segment(s: &str) -> Result<Option<TenantId>, RequestError> {
    if s.is_empty() {
        return Ok(None);
    }
    TenantId::new(s)
        .map(Some)
        .map_err(|_| RequestError::BadRequest("invalid tenant id in the URI"))
}

fn device_segment(s: &str) -> Result<DeviceId, RequestError> {
    DeviceId::new(s).map_err(|_| RequestError::BadRequest("invalid device id in the URI"))
}

/// The options of HONO-CONTRACT §2.3 that apply to `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// 0 or 1 (events: always 1).
    pub qos: u8,
    /// Seconds the device waits for a command (`hono-ttd`), as requested.
    pub ttd: Option<u64>,
    /// Seconds an event lives (`hono-ttl`), as requested.
    pub ttl: Option<u64>,
    /// The command response's status (`hono-cmd-status`).
    pub status: Option<u16>,
}

/// Reads the options from the headers, falling back to the query where Hono allows it.
pub fn options(
    kind: Kind,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Options, RequestError> {
    let header = |n: &str| -> Result<Option<&str>, RequestError> {
        headers
            .get(n)
            .map(|v| {
                v.to_str()
                    .map_err(|_| RequestError::BadRequest("header is not visible ASCII"))
            })
            .transpose()
    };
    let either = |n: &str| -> Result<Option<&str>, RequestError> {
        Ok(header(n)?.or_else(|| query_param(query, n)))
    };
    let mut o = Options::default();
    match kind {
        Kind::Telemetry | Kind::Event => {
            o.qos = match header(name::QOS_LEVEL)? {
                None | Some("0") => 0,
                Some("1") => 1,
                Some(_) => return Err(RequestError::BadRequest("qos-level must be 0 or 1")),
            };
            if kind == Kind::Event {
                o.qos = 1;
                o.ttl = either(name::TTL)?
                    .map(|v| seconds(v).ok_or(RequestError::BadRequest("hono-ttl must be seconds")))
                    .transpose()?;
            }
            o.ttd = either(name::TTD)?
                .map(|v| match seconds(v) {
                    Some(s) if s > 0 => Ok(s),
                    _ => Err(RequestError::BadRequest(
                        "hono-ttd must be a positive number of seconds",
                    )),
                })
                .transpose()?;
        }
        Kind::CommandResponse => {
            let status = either(name::CMD_STATUS)?
                .ok_or(RequestError::BadRequest("hono-cmd-status is missing"))?;
            o.status = Some(
                parse_status(status)
                    .ok_or(RequestError::BadRequest("hono-cmd-status must be 200-599"))?,
            );
        }
    }
    Ok(o)
}

/// A non-negative integer of at most 10 digits (so that it fits and a device cannot make us parse a
/// megabyte of digits).
fn seconds(v: &str) -> Option<u64> {
    (!v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
        .then(|| v.parse().ok())
        .flatten()
}

fn parse_status(s: &str) -> Option<u16> {
    // Exactly three digits: `u16::from_str` alone would accept `+200` or `0200`.
    if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|c| (200..=599).contains(c))
}

/// The value of `key` in a query string. Values of the parameters read here are plain numbers, so no
/// percent-decoding is needed; an encoded value simply fails to parse as one.
pub fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `Authorization: Basic base64(user:password)`: the user (`auth-id@tenant`) and password, split at the
/// first `:` (auth ids contain none). `None` when absent or malformed: both are a 401.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, Vec<u8>)> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, encoded) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let user = std::str::from_utf8(&decoded[..colon]).ok()?.to_owned();
    Some((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests;
