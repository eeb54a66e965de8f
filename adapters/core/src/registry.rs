//! The adapters' view of the registry's internal API (docs/registry.md), over `ferry-registry-client`:
//! tenants, credentials and registration assertions, each cached for as long as the registry's `Cache-Control: max-age` allows
//! (negative answers briefly), and purged as soon as the registry's change stream announces a change.
//!
//! Per-message lookups ([`RegistryClient::assertion`], [`RegistryClient::tenant`]) are answered from the
//! cache without building an owned key; a miss coalesces concurrent requests for the same key. The
//! registry being unreachable ([`RegistryError`]) is never confused with "unknown" or "not allowed":
//! adapters answer the former with 503 / CONNACK "server unavailable", the latter with 401/403/404.
//!
//! Whoever keeps other state derived from the registry's answers (the authenticator's verify caches,
//! [`crate::auth`]) registers a [`Purge`] and is told of each change after these caches were purged and
//! before the change is re-broadcast ([`RegistryClient::subscribe`]).

pub(crate) mod cache;
mod tenant;

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use ferry_core::ids::{AuthId, DeviceId, TenantId};
use ferry_core::shutdown::Shutdown;
use ferry_registry_client::{
    Answer, Client, ClientConfig, StreamConfig, StreamEvent, StreamSignal,
};
use quick_cache::Equivalent;
use tokio::sync::broadcast;

use cache::{Epoch, TtlCache};
pub use ferry_registry_client::{Change, ChangeKind, ChangeOp};
pub use tenant::{TenantInfo, TtlLimit};

/// A credential found by (tenant, type, auth-id), with the device it belongs to. The registry's full
/// form, hashes included: the adapter verifies secrets itself.
pub type FoundCredential = ferry_registry_model::DeviceCredential;

/// How to reach the registry and how long to trust its answers.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Base URL, e.g. `http://127.0.0.1:28080`.
    pub url: String,
    /// Bearer token of the internal API.
    pub token: String,
    /// Bound on one lookup (connect + answer); beyond it the registry counts as unavailable.
    pub request_timeout: Duration,
    /// How long to keep an answer that carries no `Cache-Control: max-age`.
    pub default_max_age: Duration,
    /// Upper bound on any `max-age` the registry sends.
    pub max_age_cap: Duration,
    /// How long "unknown" (404) and "not allowed" (403) answers are kept. Short, because a device that
    /// is being provisioned should not wait long; the change stream purges them earlier anyway.
    pub negative_ttl: Duration,
    /// An assertion is refreshed this long before it expires, so that a message carrying it reaches the
    /// router (which allows 10 s of clock skew) while it is still valid.
    pub assertion_margin: Duration,
    /// Entries per cache (tenants, credentials, assertions, verified passwords).
    pub cache_capacity: usize,
    /// The change stream is reconnected when nothing (not even the 15 s keep-alive) arrived this long.
    pub change_stream_idle_timeout: Duration,
    /// CA certificate (PEM) an `https` registry's certificate must chain to (`registry_ca_file`).
    pub ca_file: Option<std::path::PathBuf>,
}

impl RegistryConfig {
    /// Defaults for everything but where the registry is.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            request_timeout: Duration::from_secs(5),
            default_max_age: Duration::from_secs(60),
            max_age_cap: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(5),
            assertion_margin: Duration::from_secs(15),
            cache_capacity: 100_000,
            change_stream_idle_timeout: Duration::from_secs(45),
            ca_file: None,
        }
    }
}

/// The registry could not give an answer: unreachable, timed out, an error status, or a body this client
/// cannot read. Never a denial: adapters map it to 503 / CONNACK "server unavailable".
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// See [`UnavailableCause`] for why.
    #[error("registry unavailable: {0}")]
    Unavailable(#[source] UnavailableCause),
}

/// Why the registry counts as unavailable: connecting, sending or reading failed or timed out, an
/// unexpected status, or a body this client cannot read.
pub use ferry_registry_client::Error as UnavailableCause;

impl From<UnavailableCause> for RegistryError {
    fn from(cause: UnavailableCause) -> Self {
        Self::Unavailable(cause)
    }
}

impl From<reqwest::Error> for RegistryError {
    fn from(e: reqwest::Error) -> Self {
        Self::Unavailable(UnavailableCause::Http(e))
    }
}

/// A registration assertion with what the registry said about the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Assertion {
    /// The device the assertion is for.
    pub device_id: DeviceId,
    /// The signed JWT, copied into every message's `reg_assertion`.
    pub token: Arc<str>,
    /// Expiry (unix seconds).
    pub expires: i64,
    /// Gateways that may act for the device (members of its via-groups included).
    pub via: Vec<DeviceId>,
    /// The device's default message properties (`content-type`, `ttl`, ...).
    pub defaults: serde_json::Map<String, serde_json::Value>,
}

/// The registry's answer to an assertion request.
#[derive(Debug, Clone, PartialEq)]
pub enum AssertionOutcome {
    /// The device is registered and enabled (and the gateway, if any, may act for it).
    Granted(Arc<Assertion>),
    /// Tenant or device unknown or disabled (HTTP 404, MQTT: disconnect).
    NotFound,
    /// The gateway is unknown, disabled or not allowed to act for the device (HTTP 403).
    Forbidden,
}

/// Counters of the requests made, for tests and metrics.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    pub tenant_requests: u64,
    pub credential_requests: u64,
    pub assertion_requests: u64,
    pub changes_seen: u64,
    pub change_stream_connects: u64,
}

#[derive(Clone, PartialEq, Eq)]
struct CredKey {
    tenant: TenantId,
    cred_type: Box<str>,
    auth_id: AuthId,
}

struct CredKeyRef<'a> {
    tenant: &'a str,
    cred_type: &'a str,
    auth_id: &'a str,
}

impl Hash for CredKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        CredKeyRef {
            tenant: self.tenant.as_str(),
            cred_type: &self.cred_type,
            auth_id: self.auth_id.as_str(),
        }
        .hash(h);
    }
}

impl Hash for CredKeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.tenant.hash(h);
        self.cred_type.hash(h);
        self.auth_id.hash(h);
    }
}

impl Equivalent<CredKey> for CredKeyRef<'_> {
    fn equivalent(&self, k: &CredKey) -> bool {
        self.tenant == k.tenant.as_str()
            && self.cred_type == &*k.cred_type
            && self.auth_id == k.auth_id.as_str()
    }
}

#[derive(Clone, PartialEq, Eq)]
struct AssertionKey {
    tenant: TenantId,
    device: DeviceId,
    gateway: Option<DeviceId>,
}

struct AssertionKeyRef<'a> {
    tenant: &'a str,
    device: &'a str,
    gateway: Option<&'a str>,
}

impl Hash for AssertionKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        AssertionKeyRef {
            tenant: self.tenant.as_str(),
            device: self.device.as_str(),
            gateway: self.gateway.as_ref().map(DeviceId::as_str),
        }
        .hash(h);
    }
}

impl Hash for AssertionKeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.tenant.hash(h);
        self.device.hash(h);
        self.gateway.hash(h);
    }
}

impl Equivalent<AssertionKey> for AssertionKeyRef<'_> {
    fn equivalent(&self, k: &AssertionKey) -> bool {
        self.tenant == k.tenant.as_str()
            && self.device == k.device.as_str()
            && self.gateway == k.gateway.as_ref().map(DeviceId::as_str)
    }
}

/// State kept outside this client that a registry change may make stale.
pub(crate) trait Purge: Send + Sync {
    /// Forgets what `change` may have made stale; called synchronously, before the change is
    /// re-broadcast and after [`RegistryClient::epoch`] advanced.
    fn purge(&self, change: &Change);
}

struct Inner {
    config: RegistryConfig,
    client: Client,
    tenants: TtlCache<TenantId, Option<Arc<TenantInfo>>>,
    credentials: TtlCache<CredKey, Option<Arc<FoundCredential>>>,
    assertions: TtlCache<AssertionKey, AssertionOutcome>,
    /// Tenants by the subject DN of a CA they trust.
    tenants_by_ca: TtlCache<String, Arc<[Arc<TenantInfo>]>>,
    epoch: Epoch,
    /// Other holders of registry-derived state ([`Purge`]); dropped ones are pruned on the next change.
    purgers: Mutex<Vec<Weak<dyn Purge>>>,
    changes: broadcast::Sender<Change>,
    following: AtomicBool,
    tenant_requests: AtomicU64,
    credential_requests: AtomicU64,
    assertion_requests: AtomicU64,
    changes_seen: AtomicU64,
    change_stream_connects: AtomicU64,
}

/// The registry client; cheap to clone (one shared set of caches).
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.inner.client.base_url())
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client with empty caches. Call [`Self::follow_changes`] (in a task) to keep them honest.
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        let client = Client::new(&ClientConfig {
            url: config.url.clone(),
            token: config.token.clone(),
            request_timeout: config.request_timeout,
            ca_file: config.ca_file.clone(),
        })?;
        let capacity = config.cache_capacity;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                client,
                tenants: TtlCache::new(capacity.min(10_000)),
                credentials: TtlCache::new(capacity),
                assertions: TtlCache::new(capacity),
                tenants_by_ca: TtlCache::new(capacity.min(10_000)),
                epoch: Epoch::default(),
                purgers: Mutex::new(Vec::new()),
                changes: broadcast::channel(1024).0,
                following: AtomicBool::new(false),
                tenant_requests: AtomicU64::new(0),
                credential_requests: AtomicU64::new(0),
                assertion_requests: AtomicU64::new(0),
                changes_seen: AtomicU64::new(0),
                change_stream_connects: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration the client was made with.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// Registers `purger` to be told of every change (for as long as it lives).
    pub(crate) fn add_purger(&self, purger: Weak<dyn Purge>) {
        self.purgers().push(purger);
    }

    fn purgers(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn Purge>>> {
        self.inner
            .purgers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How long an answer with this `max-age` is kept.
    fn ttl(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .unwrap_or(self.inner.config.default_max_age)
            .min(self.inner.config.max_age_cap)
    }

    /// The tenants that trust a CA with this subject DN (RFC 2253), in the registry's order; empty when
    /// none does. Several only when tenants of one trust anchor group share the CA.
    pub async fn tenants_by_ca(
        &self,
        subject_dn: &str,
    ) -> Result<Arc<[Arc<TenantInfo>]>, RegistryError> {
        if let Some(v) = self.inner.tenants_by_ca.get(subject_dn) {
            return Ok(v);
        }
        let load = async {
            self.inner.tenant_requests.fetch_add(1, Ordering::Relaxed);
            Ok(match self.inner.client.tenants_by_ca(subject_dn).await? {
                Answer::Found(found, max_age) => {
                    let mut tenants = Vec::with_capacity(found.len());
                    for mut value in found {
                        tenants.push(Arc::new(tenant_info(&mut value, None)?));
                    }
                    (Arc::from(tenants), self.ttl(max_age))
                }
                Answer::NotFound | Answer::Forbidden => {
                    (Arc::from(Vec::new()), self.inner.config.negative_ttl)
                }
            })
        };
        self.inner
            .tenants_by_ca
            .get_or_load(&subject_dn.to_owned(), &self.inner.epoch, load)
            .await
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.inner.epoch.current()
    }

    /// The tenant as cached, without asking the registry: `None` when it is not cached (or expired),
    /// `Some(None)` when the registry said it does not know it.
    pub fn cached_tenant(
        &self,
        id: &TenantId,
        now: std::time::Instant,
    ) -> Option<Option<Arc<TenantInfo>>> {
        self.inner.tenants.get_at(id, now).map(|(v, _)| v)
    }

    /// The registration assertion as cached, without asking the registry; `None` when it is not cached.
    pub fn cached_assertion(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        gateway: Option<&DeviceId>,
        now: std::time::Instant,
    ) -> Option<AssertionOutcome> {
        let gateway = gateway.filter(|g| *g != device);
        self.inner
            .assertions
            .get_at(
                &AssertionKeyRef {
                    tenant: tenant.as_str(),
                    device: device.as_str(),
                    gateway: gateway.map(DeviceId::as_str),
                },
                now,
            )
            .map(|(v, _)| v)
    }

    /// The tenant, `None` when the registry does not know it.
    pub async fn tenant(&self, id: &TenantId) -> Result<Option<Arc<TenantInfo>>, RegistryError> {
        if let Some(v) = self.inner.tenants.get(id) {
            return Ok(v);
        }
        let load = async {
            self.inner.tenant_requests.fetch_add(1, Ordering::Relaxed);
            Ok(match self.inner.client.tenant(id).await? {
                Answer::Found(mut value, max_age) => (
                    Some(Arc::new(tenant_info(&mut value, Some(id))?)),
                    self.ttl(max_age),
                ),
                Answer::NotFound | Answer::Forbidden => (None, self.inner.config.negative_ttl),
            })
        };
        self.inner
            .tenants
            .get_or_load(id, &self.inner.epoch, load)
            .await
    }

    /// The credential of `cred_type` (`hashed-password`, `psk`, `x509-cert`, `rpk`) with this auth id,
    /// with its device; `None` when there is none. Disabled credentials are returned too (the caller's
    /// verification refuses them).
    pub async fn credentials(
        &self,
        tenant: &TenantId,
        cred_type: &str,
        auth_id: &AuthId,
    ) -> Result<Option<Arc<FoundCredential>>, RegistryError> {
        Ok(self.credentials_timed(tenant, cred_type, auth_id).await?.0)
    }

    /// [`Self::credentials`] and until when the answer may be trusted (the verify cache keeps no
    /// result longer than the credential it was checked against).
    pub(crate) async fn credentials_timed(
        &self,
        tenant: &TenantId,
        cred_type: &str,
        auth_id: &AuthId,
    ) -> Result<(Option<Arc<FoundCredential>>, Instant), RegistryError> {
        let key_ref = CredKeyRef {
            tenant: tenant.as_str(),
            cred_type,
            auth_id: auth_id.as_str(),
        };
        if let Some(hit) = self.inner.credentials.get_until(&key_ref) {
            return Ok(hit);
        }
        let key = CredKey {
            tenant: tenant.clone(),
            cred_type: cred_type.into(),
            auth_id: auth_id.clone(),
        };
        let load = async {
            self.inner
                .credential_requests
                .fetch_add(1, Ordering::Relaxed);
            let answer = self
                .inner
                .client
                .credentials(tenant, cred_type, auth_id)
                .await?;
            Ok(match answer {
                Answer::Found(found, max_age) => (Some(Arc::new(found)), self.ttl(max_age)),
                Answer::NotFound | Answer::Forbidden => (None, self.inner.config.negative_ttl),
            })
        };
        self.inner
            .credentials
            .get_or_load_until(&key, &self.inner.epoch, load)
            .await
    }

    /// A registration assertion for `device`, or for `device` through `gateway` (the gateway publishes on
    /// the device's behalf). Cached until shortly before it expires; called per message.
    pub async fn assertion(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        gateway: Option<&DeviceId>,
    ) -> Result<AssertionOutcome, RegistryError> {
        // A gateway asking for itself is the device itself, and the registry treats it so.
        let gateway = gateway.filter(|g| *g != device);
        let key_ref = AssertionKeyRef {
            tenant: tenant.as_str(),
            device: device.as_str(),
            gateway: gateway.map(DeviceId::as_str),
        };
        if let Some(v) = self.inner.assertions.get(&key_ref) {
            return Ok(v);
        }
        let key = AssertionKey {
            tenant: tenant.clone(),
            device: device.clone(),
            gateway: gateway.cloned(),
        };
        let load = async {
            self.inner
                .assertion_requests
                .fetch_add(1, Ordering::Relaxed);
            Ok(
                match self.inner.client.assertion(tenant, device, gateway).await? {
                    Answer::Found(wire, max_age) => {
                        let ttl = self.assertion_ttl(wire.expires, self.ttl(max_age));
                        let assertion = Assertion {
                            device_id: wire.device_id,
                            token: wire.assertion.into(),
                            expires: wire.expires,
                            via: wire.via,
                            defaults: wire.defaults,
                        };
                        (AssertionOutcome::Granted(Arc::new(assertion)), ttl)
                    }
                    Answer::NotFound => {
                        (AssertionOutcome::NotFound, self.inner.config.negative_ttl)
                    }
                    Answer::Forbidden => {
                        (AssertionOutcome::Forbidden, self.inner.config.negative_ttl)
                    }
                },
            )
        };
        self.inner
            .assertions
            .get_or_load(&key, &self.inner.epoch, load)
            .await
    }

    /// How long an assertion expiring at `expires` may be handed out.
    fn assertion_ttl(&self, expires: i64, max_age: Duration) -> Duration {
        let now = chrono::Utc::now().timestamp();
        let left = u64::try_from(expires.saturating_sub(now)).unwrap_or(0);
        let usable = Duration::from_secs(left).saturating_sub(self.inner.config.assertion_margin);
        usable.min(max_age)
    }

    /// A receiver of every change, after the caches were purged for it. A receiver that lags (more than
    /// 1024 changes behind) gets `Lagged` and should treat it as [`ChangeKind::Reset`].
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Whether the change stream is connected (until it is, caches may miss changes made meanwhile).
    pub fn is_following_changes(&self) -> bool {
        self.inner.following.load(Ordering::Acquire)
    }

    #[doc(hidden)]
    pub fn stats(&self) -> RegistryStats {
        let i = &self.inner;
        RegistryStats {
            tenant_requests: i.tenant_requests.load(Ordering::Relaxed),
            credential_requests: i.credential_requests.load(Ordering::Relaxed),
            assertion_requests: i.assertion_requests.load(Ordering::Relaxed),
            changes_seen: i.changes_seen.load(Ordering::Relaxed),
            change_stream_connects: i.change_stream_connects.load(Ordering::Relaxed),
        }
    }

    /// Follows the registry's change stream until `shutdown`: purges the affected cache entries and
    /// re-broadcasts every change ([`Self::subscribe`]). Reconnects with backoff (100 ms doubling to
    /// 5 s); every (re)connect and `reset` purges everything, since changes may have been missed.
    pub async fn follow_changes(&self, shutdown: Shutdown) {
        let config = StreamConfig {
            idle_timeout: self.inner.config.change_stream_idle_timeout,
            ..StreamConfig::default()
        };
        self.inner
            .client
            .follow_changes(shutdown, &config, |signal| match signal {
                StreamSignal::Connected => {
                    // The registry subscribed us before answering, so nothing after this purge is missed.
                    self.inner
                        .change_stream_connects
                        .fetch_add(1, Ordering::Relaxed);
                    self.inner.following.store(true, Ordering::Release);
                    self.apply(StreamEvent::Reset);
                }
                StreamSignal::Event(event) => self.apply(event),
                StreamSignal::Lost => self.inner.following.store(false, Ordering::Release),
            })
            .await;
    }

    fn apply(&self, event: StreamEvent) {
        let change = match event {
            StreamEvent::Hello => return,
            StreamEvent::Reset => Change::reset(),
            StreamEvent::Change(c) => c,
        };
        self.inner.changes_seen.fetch_add(1, Ordering::Relaxed);
        self.purge(&change);
        // No subscribers is fine: nobody holds state that needs re-checking.
        let _ = self.inner.changes.send(change);
    }

    /// Drops every cache entry the change may have made stale.
    fn purge(&self, change: &Change) {
        let i = &self.inner;
        // First, so that a lookup already in flight does not cache a pre-change answer.
        i.epoch.advance();
        self.purge_own(change);
        self.purgers().retain(|p| match p.upgrade() {
            Some(p) => {
                p.purge(change);
                true
            }
            None => false,
        });
    }

    fn purge_own(&self, change: &Change) {
        let i = &self.inner;
        match (change.kind, &change.tenant, &change.device) {
            (ChangeKind::Application, ..) => {}
            (ChangeKind::Tenant, Some(t), _) => {
                i.tenants.remove(t);
                // Trusted CAs may have moved between tenants: rare enough to forget them all.
                i.tenants_by_ca.clear();
                i.credentials.purge_where(|k, _| &k.tenant == t);
                i.assertions.purge_where(|k, _| &k.tenant == t);
            }
            (ChangeKind::Device, Some(t), Some(d)) => {
                i.assertions.purge_where(|k, v| {
                    &k.tenant == t
                        && (&k.device == d
                            || k.gateway.as_ref() == Some(d)
                            || matches!(v, AssertionOutcome::Granted(a) if a.via.contains(d)))
                });
                i.credentials.purge_where(|k, v| {
                    &k.tenant == t && v.as_ref().is_none_or(|c| &c.device_id == d)
                });
            }
            (ChangeKind::Credentials, Some(t), Some(d)) => {
                // Negative entries too: the change may have added the auth id someone looked for.
                i.credentials.purge_where(|k, v| {
                    &k.tenant == t && v.as_ref().is_none_or(|c| &c.device_id == d)
                });
            }
            // A reset, or a change this client cannot place: everything may be stale.
            _ => {
                i.tenants.clear();
                i.credentials.clear();
                i.assertions.clear();
                i.tenants_by_ca.clear();
            }
        }
    }
}

/// A tenant from the internal API's body (the management body plus `tenant-id`).
fn tenant_info(
    value: &mut serde_json::Value,
    known: Option<&TenantId>,
) -> Result<TenantInfo, RegistryError> {
    let malformed = |source| UnavailableCause::Malformed {
        what: "tenant",
        source,
    };
    // The management body refuses unknown fields, so the id comes out first.
    let id = value.as_object_mut().and_then(|m| m.remove("tenant-id"));
    let id: TenantId = match (known, id) {
        (Some(known), _) => known.clone(),
        (None, id) => serde_json::from_value(id.unwrap_or_default()).map_err(malformed)?,
    };
    let config = serde_json::from_value(value.take()).map_err(malformed)?;
    Ok(TenantInfo { id, config })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn borrowed_keys_hash_like_owned_ones() {
        let s = std::hash::RandomState::new();
        let owned = AssertionKey {
            tenant: TenantId::new("t").expect("id"),
            device: DeviceId::new("d").expect("id"),
            gateway: Some(DeviceId::new("g").expect("id")),
        };
        let borrowed = AssertionKeyRef {
            tenant: "t",
            device: "d",
            gateway: Some("g"),
        };
        assert_eq!(s.hash_one(&owned), s.hash_one(&borrowed));
        assert!(borrowed.equivalent(&owned));
        let owned = CredKey {
            tenant: TenantId::new("t").expect("id"),
            cred_type: "hashed-password".into(),
            auth_id: AuthId::new("a b").expect("id"),
        };
        let borrowed = CredKeyRef {
            tenant: "t",
            cred_type: "hashed-password",
            auth_id: "a b",
        };
        assert_eq!(s.hash_one(&owned), s.hash_one(&borrowed));
        assert!(borrowed.equivalent(&owned));
    }

    #[test]
    fn assertions_are_kept_until_shortly_before_expiry() {
        let client =
            RegistryClient::new(RegistryConfig::new("http://127.0.0.1:1", "x")).expect("client");
        let now = chrono::Utc::now().timestamp();
        let ttl = client.assertion_ttl(now + 600, Duration::from_secs(300));
        assert_eq!(ttl, Duration::from_secs(300));
        let ttl = client.assertion_ttl(now + 60, Duration::from_secs(300));
        assert!(ttl <= Duration::from_secs(45) && ttl >= Duration::from_secs(43));
        assert_eq!(
            client.assertion_ttl(now + 5, Duration::from_secs(300)),
            Duration::ZERO
        );
    }
}
