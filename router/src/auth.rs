//! Who is on a connection, and what they may attach to.
//!
//! Applications authenticate with SASL PLAIN as an application user of the registry (checked there once,
//! then cached until the change stream says the user changed); protocol adapters authenticate with the
//! service credential from the router's config. Authorization happens per link at attach time: an
//! application reaches only the addresses of its own tenants, and only for the operations it was granted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferry_core::ids::TenantId;
use sha2::{Digest, Sha256};

use crate::registry::{AppUser, RegistryClient};

/// An authenticated peer.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A protocol adapter (the service credential): may send telemetry, events and command responses for
    /// any tenant, since every message it sends carries a registration assertion the router verifies.
    Adapter { name: String },
    /// A business application.
    Application(Arc<AppUser>),
}

/// Longest reply id of `command_response/T/REPLY` (Hono's applications use a UUID or similar); longer
/// ones are refused as unknown addresses, so a reply address costs the router a bounded amount.
pub const MAX_REPLY_ID_LEN: usize = 256;

/// The addresses of HONO-CONTRACT §1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Telemetry(TenantId),
    Event(TenantId),
    Command(TenantId),
    CommandResponse(TenantId, String),
    /// `command_response`: an adapter's one sender for all responses (each message names its `to`).
    CommandResponses,
    /// `command_internal/INSTANCE`: an adapter instance's command link and subscription channel.
    CommandInternal(TenantId),
}

impl Address {
    /// Parses `telemetry/T`, `event/T`, `command/T`, `command_response/T/REPLY` (and Hono's short forms
    /// `t/T`, `e/T`).
    pub fn parse(s: &str) -> Option<Self> {
        if s == "command_response" {
            return Some(Self::CommandResponses);
        }
        let (prefix, rest) = s.split_once('/')?;
        match prefix {
            "telemetry" | "t" => Some(Self::Telemetry(TenantId::new(rest).ok()?)),
            "event" | "e" => Some(Self::Event(TenantId::new(rest).ok()?)),
            "command" => Some(Self::Command(TenantId::new(rest).ok()?)),
            // Instance ids follow the tenant id alphabet.
            "command_internal" => Some(Self::CommandInternal(TenantId::new(rest).ok()?)),
            "command_response" => {
                let (tenant, reply) = rest.split_once('/')?;
                if reply.is_empty() || reply.len() > MAX_REPLY_ID_LEN {
                    return None;
                }
                Some(Self::CommandResponse(
                    TenantId::new(tenant).ok()?,
                    reply.to_owned(),
                ))
            }
            _ => None,
        }
    }

    /// The tenant (or, for `command_internal`, the adapter instance) that scopes the address.
    pub fn scope(&self) -> Option<&TenantId> {
        match self {
            Self::Telemetry(t)
            | Self::Event(t)
            | Self::Command(t)
            | Self::CommandResponse(t, _)
            | Self::CommandInternal(t) => Some(t),
            Self::CommandResponses => None,
        }
    }
}

/// Which way messages flow on a link, from the router's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The peer sends to the router (the peer's link is a sender).
    In,
    /// The router sends to the peer.
    Out,
}

impl Principal {
    /// Whether this peer may attach a link on `address` in `direction`.
    pub fn may_attach(&self, address: &Address, direction: Direction) -> bool {
        match self {
            Self::Adapter { .. } => matches!(
                (address, direction),
                (Address::Telemetry(_) | Address::Event(_), Direction::In)
                    | (Address::CommandResponses, Direction::In)
                    | (Address::CommandInternal(_), _)
            ),
            Self::Application(user) => {
                if !address.scope().is_some_and(|t| user.allows_tenant(t)) {
                    return false;
                }
                match (address, direction) {
                    (Address::Telemetry(_), Direction::Out) => user.allows("telemetry"),
                    (Address::Event(_), Direction::Out) => user.allows("event"),
                    (Address::Command(_), Direction::In)
                    | (Address::CommandResponse(..), Direction::Out) => user.allows("command"),
                    _ => false,
                }
            }
        }
    }
}

/// Logins already checked: (user, password) → when, and who.
/// (user, salted SHA-256 of the password) → when the registry said yes, and the user.
type LoginCache = HashMap<(String, [u8; 32]), (Instant, Arc<AppUser>)>;

/// Checks SASL PLAIN credentials, caching the registry's answers.
#[derive(Debug)]
pub struct Authenticator {
    adapter_user: String,
    adapter_password: String,
    registry: Option<RegistryClient>,
    /// (user, password digest) → the user, for `ttl`; purged by the change stream. The clear password is
    /// never kept: a memory dump yields only digests salted per process.
    cache: Mutex<LoginCache>,
    salt: [u8; 16],
    ttl: Duration,
}

impl Authenticator {
    pub fn new(
        adapter_user: String,
        adapter_password: String,
        registry: Option<RegistryClient>,
    ) -> Self {
        Self {
            adapter_user,
            adapter_password,
            registry,
            cache: Mutex::new(HashMap::new()),
            salt: rand::random(),
            ttl: Duration::from_secs(300),
        }
    }

    fn digest(&self, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    fn remember(&self, user: &str, password: &str, app: Arc<AppUser>) {
        let key = (user.to_owned(), self.digest(password));
        self.lock().insert(key, (Instant::now(), app));
    }

    /// The principal for these credentials, or `None` when they are wrong (or the registry cannot say).
    pub async fn authenticate(
        &self,
        user: &str,
        password: &str,
        source: Option<std::net::IpAddr>,
    ) -> Option<Principal> {
        if !self.adapter_password.is_empty()
            && constant_time_eq(user.as_bytes(), self.adapter_user.as_bytes())
            && constant_time_eq(password.as_bytes(), self.adapter_password.as_bytes())
        {
            return Some(Principal::Adapter {
                name: user.to_owned(),
            });
        }
        let key = (user.to_owned(), self.digest(password));
        if let Some((at, u)) = self.lock().get(&key) {
            if at.elapsed() < self.ttl {
                return Some(Principal::Application(u.clone()));
            }
        }
        let registry = self.registry.as_ref()?;
        match registry
            .authenticate_application(user, password, source)
            .await
        {
            Ok(Some(u)) => {
                let u = Arc::new(u);
                self.remember(user, password, u.clone());
                Some(Principal::Application(u))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "registry unavailable for application authentication");
                None
            }
        }
    }

    /// Forgets cached logins of `name` (all of them when `None`).
    pub fn purge(&self, name: Option<&str>) {
        let mut c = self.lock();
        match name {
            Some(n) => c.retain(|(u, _), _| u != n),
            None => c.clear(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LoginCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::new(s).expect("tenant")
    }

    /// The login cache used to key on the clear-text (user, password): anything that could read the
    /// router's memory (a core dump, a debug print) learnt every application's password.
    #[tokio::test]
    async fn the_login_cache_keeps_no_clear_password() {
        let auth = Authenticator::new("adapter".into(), "adapter-pw".into(), None);
        let app = Arc::new(AppUser {
            name: "app1".into(),
            tenants: vec!["t1".into()],
            operations: vec!["telemetry".into()],
        });
        auth.remember("app1", "s3cret-password", app);
        let dump = format!("{:?}", auth.lock());
        assert!(!dump.contains("s3cret-password"), "{dump}");
        assert!(matches!(
            auth.authenticate("app1", "s3cret-password", None).await,
            Some(Principal::Application(u)) if u.name == "app1"
        ));
        assert!(auth.authenticate("app1", "wrong", None).await.is_none());
        assert!(auth
            .authenticate("app2", "s3cret-password", None)
            .await
            .is_none());
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Address::parse("telemetry/t1"),
            Some(Address::Telemetry(t("t1")))
        );
        assert_eq!(Address::parse("t/t1"), Some(Address::Telemetry(t("t1"))));
        assert_eq!(Address::parse("event/t1"), Some(Address::Event(t("t1"))));
        assert_eq!(
            Address::parse("command_response/t1/abc/def"),
            Some(Address::CommandResponse(t("t1"), "abc/def".into()))
        );
        let longest = format!("command_response/t1/{}", "r".repeat(MAX_REPLY_ID_LEN));
        assert!(Address::parse(&longest).is_some());
        let too_long = format!("command_response/t1/{}", "r".repeat(MAX_REPLY_ID_LEN + 1));
        assert_eq!(Address::parse(&too_long), None, "a reply id above the cap");
        for bad in [
            "telemetry",
            "telemetry/",
            "telemetry/a/b",
            "queue/t1",
            "command_response/t1/",
            "",
        ] {
            assert_eq!(Address::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn applications_reach_only_their_tenants_and_operations() {
        let user = Principal::Application(Arc::new(AppUser {
            name: "app".into(),
            tenants: vec!["t1".into()],
            operations: vec!["telemetry".into()],
        }));
        assert!(user.may_attach(&Address::Telemetry(t("t1")), Direction::Out));
        assert!(!user.may_attach(&Address::Telemetry(t("t2")), Direction::Out));
        assert!(
            !user.may_attach(&Address::Event(t("t1")), Direction::Out),
            "no event operation"
        );
        assert!(
            !user.may_attach(&Address::Telemetry(t("t1")), Direction::In),
            "apps do not produce telemetry"
        );
        let all = Principal::Application(Arc::new(AppUser {
            name: "all".into(),
            tenants: vec!["*".into()],
            operations: vec!["telemetry".into(), "event".into(), "command".into()],
        }));
        assert!(all.may_attach(&Address::Event(t("x")), Direction::Out));
        assert!(all.may_attach(&Address::Command(t("x")), Direction::In));
        assert!(all.may_attach(
            &Address::CommandResponse(t("x"), "r".into()),
            Direction::Out
        ));
        let adapter = Principal::Adapter { name: "a".into() };
        assert!(adapter.may_attach(&Address::Telemetry(t("x")), Direction::In));
        assert!(
            !adapter.may_attach(&Address::Telemetry(t("x")), Direction::Out),
            "adapters do not consume"
        );
    }
}
