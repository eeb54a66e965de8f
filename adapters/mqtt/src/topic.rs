//! Hono's MQTT topic names and filters (HONO-CONTRACT.md §2.2), without I/O.
//!
//! The session hands this module the topic of every PUBLISH and the filter of every SUBSCRIBE; it gets back
//! what the device meant (endpoint, optional tenant and device, property bag) or a [`TopicError`], which the
//! session reports as Hono error 400 (or SUBACK `0x80` for filters). In the other direction this module
//! builds the topics the adapter publishes to devices: command deliveries and error reports, both mirroring
//! the form (short/long, optional segments) of the device's subscription.
//!
//! Parsing runs per message, so it borrows from the topic: nothing is allocated unless the topic carries a
//! tenant or device id (validated through `ferry_core::ids`), percent-encoded bag values, or bag keys
//! outside Hono's four.

use std::fmt::Write as _;

use ferry_core::ids::{DeviceId, IdError, TenantId};

mod bag;

pub use bag::{OnError, PropertyBag};

#[cfg(test)]
mod tests;

/// Why a topic name or filter was refused. The session reports it as Hono status 400 (bad topic) or, for a
/// subscription, as SUBACK failure `0x80`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("the topic is empty")]
    Empty,
    #[error("unknown endpoint {0:?}: expected t, telemetry, e, event, c or command")]
    UnknownEndpoint(String),
    #[error("a topic name must not contain the wildcard {0:?}")]
    Wildcard(char),
    #[error("a topic must not contain the NUL character")]
    Nul,
    #[error("malformed topic: {0}")]
    Malformed(&'static str),
    #[error("the request id of a command response must not be empty")]
    EmptyRequestId,
    #[error("command response status {0:?} is not a 3-digit code from 200 to 599")]
    BadStatus(String),
    #[error("invalid tenant in topic")]
    BadTenant(#[source] IdError),
    #[error("invalid device in topic")]
    BadDevice(#[source] IdError),
    #[error("a topic filter must not use a wildcard for the tenant")]
    TenantWildcard,
    #[error("property bag: invalid percent-encoding")]
    BadPercentEncoding,
    #[error("property bag: a percent-decoded name or value is not UTF-8")]
    NotUtf8,
    #[error("property bag: a property has an empty name")]
    EmptyPropertyName,
    #[error("property bag: hono-ttl {0:?} is not a number of seconds")]
    BadTtl(String),
    #[error("property bag: on-error {0:?} is not one of default, disconnect, ignore, skip-ack")]
    BadOnError(String),
    #[error("property bag: correlation-id must be non-empty and free of '/', '+', '#' and NUL")]
    BadCorrelationId,
}

/// Input echoed into an error message is cut here, so that a 64 KiB topic does not become a 64 KiB error
/// report (the message ends up in logs and in the error-topic payload).
const ECHO_MAX: usize = 32;

fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// What a device publishes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    Telemetry,
    Event,
    /// `c/[T]/[D]/s/REQ_ID/STATUS`: `request_id` is the opaque id from the command's delivery topic (see
    /// [`parse_request_id`]), `status` an HTTP-style code 200–599.
    CommandResponse {
        request_id: &'a str,
        status: u16,
    },
}

/// A parsed PUBLISH topic. `tenant` and `device` are `None` when the topic leaves them out or empty
/// (authenticated devices); when present they are valid ids. Whether they fit the connection (same tenant,
/// device itself or one the gateway may act for) is the session's check, not this module's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishTopic<'a> {
    pub endpoint: Endpoint<'a>,
    /// `telemetry`/`event`/`command` rather than `t`/`e`/`c`; the error topic mirrors it.
    pub long_form: bool,
    pub tenant: Option<&'a str>,
    pub device: Option<&'a str>,
    pub bag: PropertyBag<'a>,
}

impl PublishTopic<'_> {
    /// The `${endpoint}` level of an error topic about this message.
    pub fn error_endpoint(&self) -> &'static str {
        match (self.endpoint, self.long_form) {
            (Endpoint::Telemetry, true) => "telemetry",
            (Endpoint::Telemetry, false) => "t",
            (Endpoint::Event, true) => "event",
            (Endpoint::Event, false) => "e",
            (Endpoint::CommandResponse { .. }, true) => "command-response",
            (Endpoint::CommandResponse { .. }, false) => "c-s",
        }
    }
}

/// The most levels any Hono topic has (`c/T/D/s/REQ/STATUS`); one more slot detects "too many".
const MAX_LEVELS: usize = 6;

/// Splits at `/` into a fixed array, so that parsing a topic does not allocate a `Vec`. `None` if there are
/// more than `N` levels.
fn levels<const N: usize>(s: &str) -> Option<([&str; N], usize)> {
    let mut out = [""; N];
    let mut n = 0;
    for level in s.split('/') {
        *out.get_mut(n)? = level;
        n += 1;
    }
    Some((out, n))
}

/// An empty level means "taken from the connection"; otherwise it must be a valid id.
fn tenant_level(s: &str) -> Result<Option<&str>, TopicError> {
    if s.is_empty() {
        return Ok(None);
    }
    // TenantId::new allocates an Arc that is dropped at once; ferry-core offers no borrowing validator.
    TenantId::new(s).map_err(TopicError::BadTenant)?;
    Ok(Some(s))
}

fn device_level(s: &str) -> Result<Option<&str>, TopicError> {
    if s.is_empty() {
        return Ok(None);
    }
    DeviceId::new(s).map_err(TopicError::BadDevice)?;
    Ok(Some(s))
}

/// Parses the topic of a device's PUBLISH.
///
/// Accepted (each optionally followed by a property bag `/?k=v&k=v`, which starts at the last `/?` as in
/// Hono, so a bag value may contain a raw `/`):
/// * `t`, `telemetry`, `e`, `event` (authenticated device);
/// * `t/TENANT/DEVICE`, `t//DEVICE`, `t/TENANT/`, `t//` and the same for `e` and the long forms;
/// * `t/TENANT` (tenant only): not in the contract's table, but Hono accepts it, so devices written for Hono
///   may use it;
/// * `c/[TENANT]/[DEVICE]/s/REQ_ID/STATUS` and `command/[TENANT]/[DEVICE]/res/REQ_ID/STATUS`; the response
///   part must match the endpoint's form (`c` with `s`, `command` with `res`).
pub fn parse_publish(topic: &str) -> Result<PublishTopic<'_>, TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    // MQTT forbids wildcards in topic names; checking the whole string also covers the bag, where a raw `+`
    // would otherwise be ambiguous (space in form encoding, literal in percent encoding).
    if let Some(c) = topic.chars().find(|c| matches!(c, '+' | '#' | '\0')) {
        return Err(if c == '\0' {
            TopicError::Nul
        } else {
            TopicError::Wildcard(c)
        });
    }
    let (path, bag) = match topic.rfind("/?") {
        Some(i) => (&topic[..i], PropertyBag::parse(&topic[i + 2..])?),
        None => (topic, PropertyBag::default()),
    };
    let (lv, n) = levels::<MAX_LEVELS>(path).ok_or(TopicError::Malformed("too many levels"))?;
    let (endpoint, long_form) = match lv[0] {
        "t" => (Endpoint::Telemetry, false),
        "telemetry" => (Endpoint::Telemetry, true),
        "e" => (Endpoint::Event, false),
        "event" => (Endpoint::Event, true),
        "c" | "command" => return parse_response(lv, n, lv[0] == "command", bag),
        other => return Err(TopicError::UnknownEndpoint(echo(other))),
    };
    if n > 3 {
        return Err(TopicError::Malformed(
            "telemetry and event topics have at most 3 levels: ENDPOINT/TENANT/DEVICE",
        ));
    }
    // Unused slots of `lv` are "", which reads as "not given".
    Ok(PublishTopic {
        endpoint,
        long_form,
        tenant: tenant_level(lv[1])?,
        device: device_level(lv[2])?,
        bag,
    })
}

fn parse_response<'a>(
    lv: [&'a str; MAX_LEVELS],
    n: usize,
    long_form: bool,
    bag: PropertyBag<'a>,
) -> Result<PublishTopic<'a>, TopicError> {
    if n != 6 {
        return Err(TopicError::Malformed(
            "a command response topic is c/[TENANT]/[DEVICE]/s/REQ_ID/STATUS",
        ));
    }
    let part = if long_form { "res" } else { "s" };
    if lv[3] != part {
        return Err(TopicError::Malformed(
            "the response level must be `s` after `c` and `res` after `command`",
        ));
    }
    if lv[4].is_empty() {
        return Err(TopicError::EmptyRequestId);
    }
    Ok(PublishTopic {
        endpoint: Endpoint::CommandResponse {
            request_id: lv[4],
            status: parse_status(lv[5])?,
        },
        long_form,
        tenant: tenant_level(lv[1])?,
        device: device_level(lv[2])?,
        bag,
    })
}

fn parse_status(s: &str) -> Result<u16, TopicError> {
    // Exactly three digits: `u16::from_str` alone would accept `+200` or `0200`.
    let ok = s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit());
    match s.parse::<u16>() {
        Ok(code) if ok && (200..=599).contains(&code) => Ok(code),
        _ => Err(TopicError::BadStatus(echo(s))),
    }
}

/// The `${endpoint}` level of an error topic for a raw topic, parsed or not: the first level mapped as in
/// Hono, `unknown` for anything else (e.g. the topic that failed to parse).
pub fn error_endpoint(topic: &str) -> &'static str {
    match topic.split('/').next() {
        Some("telemetry") => "telemetry",
        Some("t") => "t",
        Some("event") => "event",
        Some("e") => "e",
        Some("command") => "command-response",
        Some("c") => "c-s",
        _ => "unknown",
    }
}

/// What a subscription is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionKind {
    Command,
    Error,
}

/// The device level of a subscription filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceFilter {
    /// Empty level: the connected device itself.
    Own,
    /// `+`: a gateway's subscription for all devices it may act for (and itself).
    All,
    /// A named device: the device itself (unauthenticated devices must name it) or one of a gateway's.
    One(DeviceId),
}

/// A parsed SUBSCRIBE filter. As with [`PublishTopic`], matching tenant and device against the connection
/// is the session's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub kind: SubscriptionKind,
    /// `None` if the filter's tenant level was empty.
    pub tenant: Option<TenantId>,
    pub device: DeviceFilter,
    /// `command`/`error` rather than `c`/`e`; the topics published for this subscription mirror it.
    pub long_form: bool,
}

/// Parses a SUBSCRIBE filter. Accepted:
/// * commands: `c/[TENANT]/[DEVICE|+]/q/#`, `command/[TENANT]/[DEVICE|+]/req/#`;
/// * errors: `e/[TENANT]/[DEVICE|+]/#`, `error/[TENANT]/[DEVICE|+]/#`.
///
/// `+` only as the device level and `#` only as the last level. Unlike Hono, `c` with `req` (or `command`
/// with `q`) is refused: the delivery topic mirrors one form, so a mixed filter would never match it.
pub fn parse_subscription(filter: &str) -> Result<Subscription, TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::Nul);
    }
    let (lv, n) = levels::<5>(filter).ok_or(TopicError::Malformed("too many levels"))?;
    let (kind, long_form) = match lv[0] {
        "c" => (SubscriptionKind::Command, false),
        "command" => (SubscriptionKind::Command, true),
        "e" => (SubscriptionKind::Error, false),
        "error" => (SubscriptionKind::Error, true),
        other => return Err(TopicError::UnknownEndpoint(echo(other))),
    };
    match kind {
        SubscriptionKind::Command => {
            let part = if long_form { "req" } else { "q" };
            if n != 5 || lv[3] != part || lv[4] != "#" {
                return Err(TopicError::Malformed(
                    "a command filter is c/[TENANT]/[DEVICE|+]/q/# or command/[TENANT]/[DEVICE|+]/req/#",
                ));
            }
        }
        SubscriptionKind::Error => {
            if n != 4 || lv[3] != "#" {
                return Err(TopicError::Malformed(
                    "an error filter is e/[TENANT]/[DEVICE|+]/# or error/[TENANT]/[DEVICE|+]/#",
                ));
            }
        }
    }
    let tenant = match lv[1] {
        "" => None,
        "+" => return Err(TopicError::TenantWildcard),
        t => Some(TenantId::new(t).map_err(TopicError::BadTenant)?),
    };
    let device = match lv[2] {
        "" => DeviceFilter::Own,
        "+" => DeviceFilter::All,
        d => DeviceFilter::One(DeviceId::new(d).map_err(TopicError::BadDevice)?),
    };
    Ok(Subscription {
        kind,
        tenant,
        device,
        long_form,
    })
}

/// The device level of a topic published for `sub`, as Hono picks it: the message's device when it is not
/// the subscriber itself (gateway case), else the device the filter named, else empty.
fn device_segment<'a>(sub: &'a Subscription, device_in_topic: Option<&'a str>) -> &'a str {
    match (device_in_topic, &sub.device) {
        (Some(d), _) if !d.is_empty() => d,
        (_, DeviceFilter::One(d)) => d.as_str(),
        _ => "",
    }
}

fn join(levels: &[&str]) -> String {
    let len = levels.iter().map(|l| l.len() + 1).sum();
    let mut out = String::with_capacity(len);
    for (i, level) in levels.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(level);
    }
    out
}

/// The topic a command is delivered on for subscription `sub`:
/// `c/[TENANT]/[DEVICE]/q/[REQ_ID]/COMMAND` (`command/…/req/…` for a long-form filter).
///
/// * `device_in_topic`: the command's target device when the subscriber receives it on that device's
///   behalf (a gateway); `None` for a command to the subscriber itself. Gateways therefore always see the
///   device level, except for their own commands, which get the filter's device level (empty or named).
/// * `request_id`: `None` for a one-way command (empty level), else the id from [`request_id`].
/// * `command`: the command name, used verbatim as the last level; the caller refuses names a device
///   could not receive (containing `+`, `#` or NUL).
///
/// The tenant level is present exactly when the filter named the tenant.
pub fn command_topic(
    sub: &Subscription,
    device_in_topic: Option<&str>,
    request_id: Option<&str>,
    command: &str,
) -> String {
    let (endpoint, part) = if sub.long_form {
        ("command", "req")
    } else {
        ("c", "q")
    };
    join(&[
        endpoint,
        sub.tenant.as_ref().map_or("", TenantId::as_str),
        device_segment(sub, device_in_topic),
        part,
        request_id.unwrap_or(""),
        command,
    ])
}

/// The topic an error is reported on for error subscription `sub`:
/// `e/[TENANT]/[DEVICE]/ENDPOINT/CORRELATION_ID/STATUS` (`error/…` for a long-form filter).
///
/// * `device_in_topic`: as for [`command_topic`]: the message's device when a gateway published it for
///   another device, `None` for the subscriber's own messages.
/// * `endpoint`: [`PublishTopic::error_endpoint`], or [`error_endpoint`] of a topic that did not parse.
/// * `correlation_id`: the bag's `correlation-id`, else the QoS 1 packet id; `None` or empty becomes `-1`.
pub fn error_topic(
    sub: &Subscription,
    device_in_topic: Option<&str>,
    endpoint: &str,
    correlation_id: Option<&str>,
    status: u16,
) -> String {
    debug_assert_eq!(sub.kind, SubscriptionKind::Error);
    let status = status.to_string();
    join(&[
        if sub.long_form { "error" } else { "e" },
        sub.tenant.as_ref().map_or("", TenantId::as_str),
        device_segment(sub, device_in_topic),
        endpoint,
        correlation_id.filter(|c| !c.is_empty()).unwrap_or("-1"),
        &status,
    ])
}

/// The JSON body of an error report:
/// `{"code":400,"message":"…","timestamp":"2024-01-01T00:00:00Z","correlation-id":"…"}`.
/// `timestamp` is passed in (ISO 8601) so that this module stays free of clocks.
pub fn error_payload(code: u16, message: &str, correlation_id: &str, timestamp: &str) -> String {
    serde_json::json!({
        "code": code,
        "message": message,
        "timestamp": timestamp,
        "correlation-id": correlation_id,
    })
    .to_string()
}

/// Characters that would break the request id out of its single topic level, or make the topic name
/// invalid MQTT, when the device sees it in the delivery topic and echoes it in `c///s/REQ_ID/STATUS`.
fn breaks_level(c: char) -> bool {
    matches!(c, '/' | '+' | '#' | '\0')
}

/// Encodes the request id a device sees in a command's delivery topic and echoes in its response, in
/// Hono's format, so that the adapter needs no per-command state to route the response:
///
/// ```text
/// F LL CORRELATION_ID REPLY_ID
/// ```
/// * `F`: `1` if the device id (and its `/`) was stripped from the front of the reply id, else `0`;
/// * `LL`: the correlation id's length in bytes, two lower-case hex digits;
/// * the correlation id, then the (stripped) reply id, the part of the application's `reply-to`
///   (`command_response/TENANT/REPLY_ID`) after the tenant, up to the end of the request id.
///
/// E.g. correlation id `abc`, reply id `4711/r1` for device `4711` → `103abcr1`.
///
/// `None` if the id cannot be represented: a correlation id longer than 255 bytes, or either part holding
/// `/`, `+`, `#` or NUL. The caller then refuses the command instead of delivering one whose response
/// could not be routed back.
pub fn request_id(correlation_id: &str, reply_id: &str, device_stripped: bool) -> Option<String> {
    if correlation_id.len() > 0xff
        || correlation_id.chars().any(breaks_level)
        || reply_id.chars().any(breaks_level)
    {
        return None;
    }
    let mut out = String::with_capacity(3 + correlation_id.len() + reply_id.len());
    out.push(if device_stripped { '1' } else { '0' });
    // Writing to a String cannot fail.
    let _ = write!(out, "{:02x}", correlation_id.len());
    out.push_str(correlation_id);
    out.push_str(reply_id);
    Some(out)
}

/// Splits a request id from a device's command response into (correlation id, reply id, device stripped);
/// the inverse of [`request_id`] (hex digits are accepted in either case). `None` if it is not one.
pub fn parse_request_id(id: &str) -> Option<(&str, &str, bool)> {
    let bytes = id.as_bytes();
    let stripped = match bytes.first()? {
        b'0' => false,
        b'1' => true,
        _ => return None,
    };
    let len_hex = id.get(1..3)?;
    if !len_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let len = usize::from_str_radix(len_hex, 16).ok()?;
    // `get` also refuses a length that ends inside a multi-byte character.
    let correlation_id = id.get(3..3 + len)?;
    let reply_id = id.get(3 + len..)?;
    Some((correlation_id, reply_id, stripped))
}
