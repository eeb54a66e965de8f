//! Device authentication with `auth-id@tenant` and a password (MQTT CONNECT, HTTP Basic;
//! HONO-CONTRACT §2.1) or with a client certificate, over the [`RegistryClient`].
//!
//! Hono stores passwords as bcrypt (or salted SHA-2) hashes, and bcrypt costs tens of milliseconds of CPU
//! on purpose. Devices reconnect often, so a successful verification is remembered, keyed by tenant,
//! auth id and a salted SHA-256 of the password (the clear password is never kept), and the registry's
//! change stream forgets it as soon as the credential, the device or the tenant changes. Verifications
//! run on the blocking pool, at most one per core at a time, so a reconnect storm cannot starve the
//! runtime or spawn hundreds of threads; the `guard` module makes unknown names cost the same, locks out
//! names and addresses that keep failing, and keeps part of that capacity for devices that logged in
//! before.
//!
//! The verify caches live here, not in the registry client: the authenticator registers itself with the
//! client ([`crate::registry::RegistryClient`]) to be told of every change before it is re-broadcast, so
//! the dependency runs one way (auth uses the registry client, never the reverse).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ferry_core::hono::credential_type;
use ferry_core::ids::{split_login, AuthId, DeviceId, TenantId};
use sha2::{Digest, Sha256};

use crate::registry::cache::TtlCache;
use crate::registry::{Change, ChangeKind, Purge, RegistryClient, RegistryError};

mod guard;

use guard::Guard;
pub use guard::LoginLimits;

/// An authenticated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The tenant from the login.
    pub tenant: TenantId,
    /// The device the credential belongs to.
    pub device_id: DeviceId,
    /// The auth id from the login.
    pub auth_id: AuthId,
}

/// Why a login was refused. All but [`AuthError::Unavailable`] are the device's problem (MQTT CONNACK
/// "bad user name or password" / "not authorized", HTTP 401); `Unavailable` is ours (CONNACK "server
/// unavailable", HTTP 503).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Malformed login, unknown auth id, disabled or expired credential, or wrong password.
    #[error("bad credentials")]
    BadCredentials,
    /// The registry does not know the login's tenant.
    #[error("unknown tenant")]
    UnknownTenant,
    /// The tenant exists but is disabled.
    #[error("tenant disabled")]
    TenantDisabled,
    /// The registry could not be asked.
    #[error(transparent)]
    Unavailable(#[from] RegistryError),
}

/// Counters for tests and metrics.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthStats {
    /// Passwords checked against a stored hash (bcrypt or SHA-2) or the dummy hash, and certificates
    /// checked against a CA.
    pub verifications: u64,
    /// Logins answered from the verify cache.
    pub cache_hits: u64,
    /// Password logins refused without a check because their name or source address was locked out.
    pub locked_out: u64,
    /// Password logins waiting for a verification slot now.
    pub waiting: u64,
}

/// Authenticates devices; cheap to clone.
#[derive(Clone)]
pub struct DeviceAuthenticator {
    registry: RegistryClient,
    inner: Arc<AuthInner>,
}

/// Key of the verified-password cache: the password only as a salted SHA-256, never in clear.
#[derive(Clone, PartialEq, Eq, Hash)]
struct VerifyKey {
    tenant: TenantId,
    auth_id: AuthId,
    digest: [u8; 32],
}

struct AuthInner {
    /// Passwords already verified, with their device.
    verified: TtlCache<VerifyKey, DeviceId>,
    /// Client certificates (by SHA-256 of their DER) already verified, with their device.
    certs: TtlCache<[u8; 32], Device>,
    /// Per-process salt of the verify cache's password digests, so a memory dump does not yield
    /// unsalted password hashes.
    salt: [u8; 16],
    guard: Guard,
    cache_hits: AtomicU64,
}

impl std::fmt::Debug for DeviceAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuthenticator")
            .finish_non_exhaustive()
    }
}

impl DeviceAuthenticator {
    /// An authenticator asking `registry`, whose change stream also purges the verify cache, with the
    /// default [`LoginLimits`].
    pub fn new(registry: RegistryClient) -> Self {
        Self::with_limits(registry, LoginLimits::default())
    }

    /// An authenticator asking `registry`, with `limits` on password logins.
    pub fn with_limits(registry: RegistryClient, limits: LoginLimits) -> Self {
        let salt = rand::random();
        let capacity = registry.config().cache_capacity;
        let inner = Arc::new(AuthInner {
            verified: TtlCache::new(capacity),
            certs: TtlCache::new(capacity),
            salt,
            guard: Guard::new(limits, salt),
            cache_hits: AtomicU64::new(0),
        });
        let purger: std::sync::Weak<dyn Purge> = Arc::downgrade(&inner) as _;
        registry.add_purger(purger);
        Self { registry, inner }
    }

    /// The registry client this authenticator asks.
    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// Checks `username` (`auth-id@tenant`, split at the last `@`) and `password` against the tenant's
    /// `hashed-password` credential with that auth id. Checks that the tenant exists and is enabled;
    /// whether this adapter type is enabled for it is the caller's check ([`crate::registry::TenantInfo`]).
    /// `source` is the peer's address, for counting failures per address ([`LoginLimits`]); a name or
    /// address locked out after too many failures is refused as [`AuthError::BadCredentials`].
    pub async fn authenticate_password(
        &self,
        username: &str,
        password: &[u8],
        source: Option<IpAddr>,
    ) -> Result<Device, AuthError> {
        let (auth_id, tenant) = split_login(username).map_err(|_| AuthError::BadCredentials)?;
        let guard = &self.inner.guard;
        let keys = guard.keys(&tenant, &auth_id, source);
        // Before the cache too: otherwise a locked-out guesser could go on trying against it.
        if guard.is_locked(&keys) {
            return Err(AuthError::BadCredentials);
        }
        let Some(info) = self.registry.tenant(&tenant).await? else {
            // Costs what a wrong password costs, so the time of the answer does not tell which tenants
            // exist.
            guard.verify(&keys, None, lossy(password)).await;
            return Err(AuthError::UnknownTenant);
        };
        if !info.is_enabled() {
            return Err(AuthError::TenantDisabled);
        }
        let key = VerifyKey {
            tenant,
            auth_id,
            digest: self.digest(password),
        };
        let verified = &self.inner.verified;
        if let Some(device_id) = verified.get(&key) {
            self.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
            guard.succeeded(&keys);
            return Ok(Device {
                tenant: key.tenant,
                device_id,
                auth_id: key.auth_id,
            });
        }
        let epoch = self.registry.epoch();
        let (found, until) = self
            .registry
            .credentials_timed(&key.tenant, credential_type::HASHED_PASSWORD, &key.auth_id)
            .await?;
        // A password that is not UTF-8 matches no stored one; it is checked against the dummy, so that
        // it costs (and counts) what any wrong password does.
        let (usable, password) = match std::str::from_utf8(password) {
            Ok(p) => (
                found.filter(|f| guard::has_usable_password(&f.credential, chrono::Utc::now())),
                p.to_owned(),
            ),
            Err(_) => (None, lossy(password)),
        };
        let credential = usable.as_ref().map(|f| f.credential.clone());
        if !guard.verify(&keys, credential, password).await {
            return Err(AuthError::BadCredentials);
        }
        let Some(found) = usable else {
            return Err(AuthError::BadCredentials);
        };
        // Not if a change arrived meanwhile: the credential we checked may be the stale one.
        if self.registry.epoch() == epoch && until > Instant::now() {
            verified.insert(key.clone(), found.device_id.clone(), until);
        }
        Ok(Device {
            tenant: key.tenant,
            device_id: found.device_id.clone(),
            auth_id: key.auth_id,
        })
    }

    /// Authenticates a device by the client certificate it presented in the TLS handshake (HONO-CONTRACT
    /// §2.1): the tenants trusting a CA with the certificate's issuer DN are asked for in the registry;
    /// the first enabled one whose CA (valid now) verifies the certificate's signature and validity
    /// period is the device's tenant, and its `x509-cert` credential with auth id = the certificate's
    /// subject DN (RFC 2253, or the CA's `auth-id-template` applied to it) names the device. A verified
    /// certificate is remembered (by its SHA-256) until the credential's cache entry or the certificate
    /// expires, or the registry announces a change of the tenant or device.
    pub async fn authenticate_certificate(&self, der: &[u8]) -> Result<Device, AuthError> {
        let digest: [u8; 32] = Sha256::digest(der).into();
        let cache = &self.inner.certs;
        if let Some(device) = cache.get(&digest) {
            self.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(device);
        }
        let cert = crate::x509::parse(der).map_err(|_| AuthError::BadCredentials)?;
        let epoch = self.registry.epoch();
        let tenants = self.registry.tenants_by_ca(&cert.issuer_dn).await?;
        let now = chrono::Utc::now();
        let unix_now = rustls::pki_types::UnixTime::now();
        let mut refusal = AuthError::UnknownTenant;
        for tenant in tenants.iter() {
            if !tenant.is_enabled() {
                refusal = AuthError::TenantDisabled;
                continue;
            }
            self.inner
                .guard
                .counters
                .verifications
                .fetch_add(1, Ordering::Relaxed);
            let Some(ca) = tenant
                .config
                .trusted_cas_for(&cert.issuer_dn)
                .filter(|ca| ca.is_valid_at(now))
                .find(|ca| crate::x509::verify(&cert, ca, unix_now).is_ok())
            else {
                refusal = AuthError::BadCredentials;
                continue;
            };
            let auth_id = crate::x509::auth_id(ca.auth_id_template.as_deref(), &cert.subject_dn);
            let auth_id = AuthId::new(&auth_id).map_err(|_| AuthError::BadCredentials)?;
            let (found, until) = self
                .registry
                .credentials_timed(&tenant.id, credential_type::X509_CERT, &auth_id)
                .await?;
            let usable = found.as_ref().filter(|f| match &f.credential {
                ferry_registry_model::Credential::X509Cert(c) => {
                    c.active_secrets(now).next().is_some()
                }
                _ => false,
            });
            let Some(found) = usable else {
                refusal = AuthError::BadCredentials;
                continue;
            };
            let device = Device {
                tenant: tenant.id.clone(),
                device_id: found.device_id.clone(),
                auth_id,
            };
            let expires_in = u64::try_from(cert.not_after - now.timestamp()).unwrap_or(0);
            let until = until.min(Instant::now() + std::time::Duration::from_secs(expires_in));
            if self.registry.epoch() == epoch && until > Instant::now() {
                cache.insert(digest, device.clone(), until);
            }
            return Ok(device);
        }
        Err(refusal)
    }

    fn digest(&self, password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.inner.salt);
        h.update(password);
        h.finalize().into()
    }

    #[doc(hidden)]
    pub fn stats(&self) -> AuthStats {
        let counters = &self.inner.guard.counters;
        AuthStats {
            verifications: counters.verifications.load(Ordering::Relaxed),
            cache_hits: self.inner.cache_hits.load(Ordering::Relaxed),
            locked_out: counters.locked_out.load(Ordering::Relaxed),
            waiting: counters.waiting.load(Ordering::Relaxed),
        }
    }
}

impl Purge for AuthInner {
    /// Drops every verified password and certificate the change may have made stale.
    fn purge(&self, change: &Change) {
        match (change.kind, &change.tenant, &change.device) {
            (ChangeKind::Application, ..) => {}
            (ChangeKind::Tenant, Some(t), _) => {
                self.certs.purge_where(|_, v| &v.tenant == t);
                self.verified.purge_where(|k, _| &k.tenant == t);
            }
            (ChangeKind::Device | ChangeKind::Credentials, Some(t), Some(d)) => {
                self.verified.purge_where(|k, v| &k.tenant == t && v == d);
                self.certs
                    .purge_where(|_, v| &v.tenant == t && &v.device_id == d);
            }
            // A reset, or a change that cannot be placed: everything may be stale.
            _ => {
                self.verified.clear();
                self.certs.clear();
            }
        }
    }
}

fn lossy(password: &[u8]) -> String {
    String::from_utf8_lossy(password).into_owned()
}
