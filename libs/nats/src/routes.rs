//! Command routes: which adapter instance serves which device, held in a replicated JetStream key-value
//! bucket ([`BUCKET`]) instead of one router's memory, so that a command sent to any router reaches the
//! device on any adapter, and a router that restarts forgets nothing (it reads the bucket again).
//!
//! Adapters write their own routes; routers watch the whole bucket and route with the same rules as in
//! embedded mode (newest subscription wins, a device's own beats a gateway's subscription for all its
//! devices, the last-known gateway first):
//!
//! | key | value | written when |
//! |---|---|---|
//! | `device.T.D` | the instance id | device `D` subscribes to commands on that instance |
//! | `gateway.T.G` | the instance id | gateway `G` subscribes for all its devices (`c//+/q/#`) |
//! | `last_gateway.T.D` | the gateway id | device `D` last sent a message through that gateway |
//!
//! An adapter that unsubscribes deletes its route only while it still names that instance, so a device
//! that moved to another instance keeps the newer route. An adapter that dies leaves its routes behind;
//! a command routed to it finds no responder on [`crate::subjects::command`] and fails at once with
//! `released` (Hono's outcome for an unreachable device), and the router deletes the dead route.

use async_nats::jetstream::{self, kv, stream::StorageType};
use base64::Engine;

use crate::Error;

/// The bucket's name.
pub const BUCKET: &str = "ferry-command-routes";

/// What a key is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// A device's own subscription: the value is the instance.
    Device,
    /// A gateway's subscription for all its devices: the value is the instance.
    Gateway,
    /// A device's last-known gateway: the value is the gateway's id.
    LastGateway,
}

impl RouteKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Gateway => "gateway",
            Self::LastGateway => "last_gateway",
        }
    }
}

/// The key of `(tenant, id)`'s route of `kind`.
pub fn key(kind: RouteKind, tenant: &str, id: &str) -> String {
    format!("{}.{}.{}", kind.prefix(), key_token(tenant), key_token(id))
}

/// What a key names; `None` for keys [`key`] does not make.
pub fn parse_key(key: &str) -> Option<(RouteKind, String, String)> {
    let mut parts = key.split('.');
    let kind = match parts.next()? {
        "device" => RouteKind::Device,
        "gateway" => RouteKind::Gateway,
        "last_gateway" => RouteKind::LastGateway,
        _ => return None,
    };
    let tenant = key_id(parts.next()?)?;
    let id = key_id(parts.next()?)?;
    parts.next().is_none().then_some((kind, tenant, id))
}

/// An id as one key token: like [`crate::subjects::token`], but the encoded form starts with `=` (key
/// tokens may not hold `~`).
pub(crate) fn key_token(s: &str) -> String {
    let t = crate::subjects::token(s);
    match t.strip_prefix('~') {
        Some(encoded) => format!("={encoded}"),
        None => t.into_owned(),
    }
}

pub(crate) fn key_id(token: &str) -> Option<String> {
    match token.strip_prefix('=') {
        Some(encoded) => {
            let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())?;
            (key_token(&id) == token).then_some(id)
        }
        None => crate::subjects::id(token),
    }
}

/// Opens the bucket, creating it with `replicas` replicas if it does not exist yet.
pub async fn bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, Error> {
    crate::open_bucket(
        js,
        kv::Config {
            bucket: BUCKET.to_owned(),
            description: "Ferry: which adapter instance serves which device's commands".to_owned(),
            history: 1,
            max_value_size: 1024,
            storage: StorageType::File,
            num_replicas: replicas,
            ..kv::Config::default()
        },
    )
    .await
}

/// Deletes `key` if its value is still `value` (a newer route written meanwhile is kept).
pub async fn delete_if(store: &kv::Store, key: &str, value: &[u8]) -> Result<bool, Error> {
    let failed = |e: String| Error::Stream {
        stream: BUCKET.to_owned(),
        message: e,
    };
    let Some(entry) = store.entry(key).await.map_err(|e| failed(e.to_string()))? else {
        return Ok(false);
    };
    if entry.operation != kv::Operation::Put || entry.value.as_ref() != value {
        return Ok(false);
    }
    match store
        .delete_expect_revision(key, Some(entry.revision))
        .await
    {
        Ok(()) => Ok(true),
        // Someone wrote it meanwhile: theirs stands.
        Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(false),
        Err(e) => Err(failed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_stay_valid() {
        for (t, d) in [
            ("t1", "d1"),
            ("a.b", "*"),
            ("DEFAULT_TENANT", "dev ice/é"),
            ("x", ">"),
        ] {
            for kind in [
                RouteKind::Device,
                RouteKind::Gateway,
                RouteKind::LastGateway,
            ] {
                let k = key(kind, t, d);
                assert!(
                    k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
                    "{k} is not a valid key"
                );
                assert_eq!(k.matches('.').count(), 2, "{k}");
                assert_eq!(parse_key(&k), Some((kind, t.to_owned(), d.to_owned())));
            }
        }
    }

    #[test]
    fn foreign_keys_are_not_routes() {
        for k in [
            "device.t1",
            "device.t1.d1.x",
            "other.t1.d1",
            "device.=!!.d1",
            "device..d1",
        ] {
            assert_eq!(parse_key(k), None, "{k}");
        }
    }
}
