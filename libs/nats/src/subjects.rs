//! Subject names for Hono's addresses.
//!
//! | Hono address | NATS subject | who publishes | who subscribes |
//! |---|---|---|---|
//! | `telemetry/T` | `ferry.telemetry.T` | adapters | routers with a consumer of `T` (queue group [`ROUTERS`]) |
//! | `event/T` | `ferry.event.T` | adapters | stream [`crate::streams::event_stream`] (one per tenant) |
//! | `command/T` (to device `D`) | `ferry.command.INSTANCE` | routers | the adapter instance serving `D` |
//! | `command_response/T/R` | `ferry.command_response.T.R` | adapters | the router holding `R`'s receiver |
//!
//! Ids become one subject token each with [`token`]: ids made only of `[A-Za-z0-9_-]` (most tenant and
//! device ids) stay as they are, readable in `nats sub`; any other id (a `.` would split a token, and
//! `*`, `>` are wildcards) becomes `~` and its unpadded base64url, which no plain token starts with. So
//! the mapping is one-to-one and no id can reach another id's subject.

use std::borrow::Cow;

use base64::Engine;

/// The prefix of every subject Ferry uses, so that one NATS account can hold other traffic beside it.
pub const PREFIX: &str = "ferry";

/// The queue group in which the routers of one tenant's telemetry consumers compete.
pub const ROUTERS: &str = "ferry-routers";

/// `s` as a single subject token (see the module's documentation).
pub fn token(s: &str) -> Cow<'_, str> {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Cow::Borrowed(s)
    } else {
        let mut t = String::with_capacity(1 + s.len().div_ceil(3) * 4);
        t.push('~');
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(s, &mut t);
        Cow::Owned(t)
    }
}

/// The id a [`token`] stands for; `None` for what [`token`] never produces.
pub fn id(token: &str) -> Option<String> {
    match token.strip_prefix('~') {
        Some(encoded) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| self::token(s).as_ref() == token),
        None => (!token.is_empty() && self::token(token).as_ref() == token).then(|| token.into()),
    }
}

/// `ferry.telemetry.TENANT`.
pub fn telemetry(tenant: &str) -> String {
    format!("{PREFIX}.telemetry.{}", token(tenant))
}

/// `ferry.event.TENANT`.
pub fn event(tenant: &str) -> String {
    format!("{PREFIX}.event.{}", token(tenant))
}

/// `ferry.tap.telemetry.TENANT`: copies of the tenant's telemetry that routers forwarded, published
/// only while a console watches the tenant ([`TAP_WATCHING`]). The live view reads these rather than
/// `ferry.telemetry.TENANT`, where its subscription would count as a responder and turn an adapter's
/// "nobody consumes" (no responders: 503 at once) into a wait for the send timeout.
pub fn tap_telemetry(tenant: &str) -> String {
    format!("{PREFIX}.tap.telemetry.{}", token(tenant))
}

/// Where a registry says, with the tenant id as payload, that it watches a tenant's telemetry; repeated
/// while it does (`tap::ANNOUNCE_EVERY`).
pub const TAP_WATCHING: &str = "ferry.tap.watching";

/// `ferry.command.INSTANCE`: the commands for the devices an adapter instance serves.
pub fn command(instance: &str) -> String {
    format!("{PREFIX}.command.{}", token(instance))
}

/// `ferry.command_response.TENANT.REPLY`.
pub fn command_response(tenant: &str, reply_id: &str) -> String {
    format!(
        "{PREFIX}.command_response.{}.{}",
        token(tenant),
        token(reply_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_stay_readable() {
        assert_eq!(
            telemetry("DEFAULT_TENANT"),
            "ferry.telemetry.DEFAULT_TENANT"
        );
        assert_eq!(event("t-1"), "ferry.event.t-1");
        assert_eq!(command_response("t1", "r9"), "ferry.command_response.t1.r9");
    }

    #[test]
    fn dots_and_wildcards_cannot_reach_another_subject() {
        // `a.b` must not become the two tokens `a`, `b`; `*` and `>` must not be wildcards.
        for id in ["a.b", "*", ">", "a b", "~x", "", "é"] {
            let t = token(id);
            assert!(t.starts_with('~'), "{id:?} -> {t}");
            assert!(
                !t.contains(['.', '*', '>', ' ']),
                "{id:?} -> {t} is not one token"
            );
            assert_eq!(super::id(&t).as_deref(), Some(id), "round trip of {id:?}");
        }
        assert_ne!(token("a.b"), token("a_b"));
        assert_eq!(
            telemetry("a.b").matches('.').count(),
            2,
            "{}",
            telemetry("a.b")
        );
    }

    #[test]
    fn only_tokens_that_token_makes_are_ids() {
        assert_eq!(id("plain").as_deref(), Some("plain"));
        // `~` followed by the encoding of a plain id is not what `token` makes for it.
        let fake = format!(
            "~{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("plain")
        );
        assert_eq!(id(&fake), None);
        assert_eq!(id("~!!"), None);
        assert_eq!(id("a.b"), None);
    }
}
