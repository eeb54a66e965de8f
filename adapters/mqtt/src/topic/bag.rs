//! The property bag: the optional last level `?k=v&k=v` of a PUBLISH topic (HONO-CONTRACT.md §2.2).

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use super::TopicError;

/// What the device asks the adapter to do when its message fails (bag key `on-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Report on the error topic if subscribed (and keep the connection), else disconnect.
    #[default]
    Default,
    /// Always disconnect.
    Disconnect,
    /// Go on as if the message succeeded: PUBACK a QoS 1 message.
    Ignore,
    /// Go on, but send no PUBACK.
    SkipAck,
}

/// The decoded property bag. Keys are matched case-insensitively, and for Hono's four keys the first
/// occurrence wins, both as in Hono. Values borrow from the topic unless they were percent-encoded.
///
/// Unlike Hono, a `hono-ttl` that is not a number of seconds or an unknown `on-error` value is refused
/// rather than silently ignored: the device learns about its mistake (400) instead of getting defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropertyBag<'a> {
    pub content_type: Option<Cow<'a, str>>,
    /// `hono-ttl`, in seconds.
    pub ttl_secs: Option<u64>,
    /// `correlation-id`; it is echoed as a level of the error topic, so it never contains `/`, `+`, `#`
    /// or NUL.
    pub correlation_id: Option<Cow<'a, str>>,
    pub on_error: OnError,
    /// Any other key, in order of appearance and with repeats kept; they become application properties.
    /// The session must not let them override properties it sets itself (`device_id`, `reg_assertion`, …).
    pub extra: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> PropertyBag<'a> {
    /// Parses the bag without its leading `?`. An empty bag (topic ending in `/?`) and empty pairs (`&&`)
    /// are fine; a key without `=` has an empty value, as in a URL query.
    pub(super) fn parse(raw: &'a str) -> Result<Self, TopicError> {
        let mut bag = PropertyBag::default();
        let mut on_error = None;
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(k)?;
            let value = decode(v)?;
            if key.is_empty() {
                return Err(TopicError::EmptyPropertyName);
            }
            if key.eq_ignore_ascii_case("content-type") {
                bag.content_type.get_or_insert(value);
            } else if key.eq_ignore_ascii_case("hono-ttl") {
                let ttl = value
                    .parse::<u64>()
                    .map_err(|_| TopicError::BadTtl(super::echo(&value)))?;
                bag.ttl_secs.get_or_insert(ttl);
            } else if key.eq_ignore_ascii_case("correlation-id") {
                if value.is_empty() || value.chars().any(super::breaks_level) {
                    return Err(TopicError::BadCorrelationId);
                }
                bag.correlation_id.get_or_insert(value);
            } else if key.eq_ignore_ascii_case("on-error") {
                let mode = match &*value {
                    "default" => OnError::Default,
                    "disconnect" => OnError::Disconnect,
                    "ignore" => OnError::Ignore,
                    "skip-ack" => OnError::SkipAck,
                    other => return Err(TopicError::BadOnError(super::echo(other))),
                };
                on_error.get_or_insert(mode);
            } else {
                bag.extra.push((key, value));
            }
        }
        bag.on_error = on_error.unwrap_or_default();
        Ok(bag)
    }

    /// Whether the bag carries nothing.
    pub fn is_empty(&self) -> bool {
        *self == PropertyBag::default()
    }
}

/// Percent-decodes, refusing a `%` not followed by two hex digits (which `percent_decode_str` would pass
/// through as is) and results that are not UTF-8. Borrows when there is nothing to decode.
fn decode(s: &str) -> Result<Cow<'_, str>, TopicError> {
    let bytes = s.as_bytes();
    let mut escaped = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(TopicError::BadPercentEncoding)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(TopicError::BadPercentEncoding);
            }
            escaped = true;
            i += 3;
        } else {
            i += 1;
        }
    }
    if !escaped {
        return Ok(Cow::Borrowed(s));
    }
    percent_decode_str(s)
        .decode_utf8()
        .map_err(|_| TopicError::NotUtf8)
}
