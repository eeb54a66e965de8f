//! Registration assertions: short-lived EdDSA-signed JWTs that say "device `sub` of tenant `ten` is
//! registered and enabled (optionally sending via gateway `via`)".
//!
//! Data flow: the registry holds a [`SigningKey`] and issues an assertion whenever a protocol adapter asks
//! for a device's registration status; it publishes the matching public keys as a [`Jwks`]. The adapter
//! attaches the token to every message it forwards (AMQP application property `reg_assertion`, see
//! [`crate::hono`]). The router builds a [`Verifier`] from the fetched JWKS and checks each message's token
//! with [`Verifier::check`], so it never has to ask the registry itself. Because one token rides on many
//! messages, verified tokens are cached: the signature is checked once per token, later messages cost a
//! hash lookup and the expiry check.
//!
//! Only the compact JWS form with `alg: EdDSA` (Ed25519) is produced or accepted; anything else is refused
//! rather than interpreted, and no input, however hostile, makes verification panic.
//!
//! Encoding, signature checks and claim decoding are the `jsonwebtoken` crate's (on `ring`, which rustls
//! already brings). What stays here is what it does not do the way Ferry needs (docs/decisions.md): the
//! size bound before any decoding, exactly one algorithm and refusing `crit` (checked on the header
//! before the crate sees the token), a signature of exactly 64 bytes, claims only as a JSON object,
//! weak (small-order) public keys refused when the JWKS is read, the clock-skew window against the
//! caller's `now`, and the verified-token cache.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::{DeviceId, TenantId};

#[cfg(test)]
mod tests;

/// The JWS `alg` value of every assertion (RFC 8037).
pub const ALG: &str = "EdDSA";

/// Tokens longer than this are refused before any decoding, so a hostile client cannot make the router
/// base64-decode and parse megabytes per message. Real assertions are a few hundred bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

const KEY_FILE_PREFIX: &str = "ed25519:";
/// A key file is one short line; anything much longer is not ours, and reading it whole is pointless.
const MAX_KEY_FILE_LEN: u64 = 1024;
/// An Ed25519 signature is 64 bytes: 86 characters of base64url without padding.
const SIGNATURE_B64_LEN: usize = 86;
/// PKCS#8 v1 (RFC 8410) of an Ed25519 private key, up to the 32-byte seed that follows: the form in which
/// `jsonwebtoken` (through ring) takes the key.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The kid is a prefix of the public key: long enough to never collide between a registry's keys, short
/// enough not to bloat every token.
const KID_KEY_BYTES: usize = 12;

/// What a registration assertion states. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The device the assertion is about.
    pub sub: DeviceId,
    /// The tenant the device belongs to.
    pub ten: TenantId,
    /// The gateway the device is allowed to send through, when it does not connect itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<DeviceId>,
    /// When the assertion was issued.
    pub iat: i64,
    /// When the assertion stops being valid.
    pub exp: i64,
}

impl Claims {
    /// Claims issued at `now` and valid for `ttl_secs`.
    pub fn new(
        ten: TenantId,
        sub: DeviceId,
        via: Option<DeviceId>,
        now: i64,
        ttl_secs: u64,
    ) -> Self {
        let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX);
        Self {
            sub,
            ten,
            via,
            iat: now,
            exp: now.saturating_add(ttl),
        }
    }
}

/// Why a signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("signing key file {}: {source}", path.display())]
    Io {
        /// The key file (or, when creating it, the directory or temporary file that failed).
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The key file exists but does not hold a key in the expected format.
    #[error("signing key file {}: {reason} (expected one line `ed25519:<base64url 32-byte seed>`)", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A seed given directly (configuration, Kubernetes Secret) is not a base64 32-byte Ed25519 seed.
    #[error(
        "signing key seed: {0} (expected base64url of 32 bytes, optionally prefixed `ed25519:`)"
    )]
    InvalidSeed(&'static str),
}

/// The registry's Ed25519 key for signing assertions, with the `kid` that names it in tokens and the JWKS.
#[derive(Clone)]
pub struct SigningKey {
    /// The key itself: generation, the seed for key files, the public half for the JWKS.
    key: ed25519_dalek::SigningKey,
    kid: String,
    /// The same key for `jsonwebtoken`, which signs.
    encoding: EncodingKey,
    /// The encoded header is the same for every token, so it is built once (and byte for byte as before
    /// the move to `jsonwebtoken`, whose `Header` would put `typ` first).
    header_b64: String,
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

impl SigningKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self::from_dalek(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
    }

    /// The key from a 32-byte seed, with its kid derived from the public key.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self::from_dalek(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The key from a base64 seed as kept in configuration or a Secret: base64url (or standard base64)
    /// of 32 bytes, padding optional, optionally prefixed `ed25519:` so a key file's line works too.
    pub fn from_seed_b64(s: &str) -> Result<Self, KeyError> {
        parse_seed(s)
            .map(|seed| Self::from_seed(&seed))
            .map_err(KeyError::InvalidSeed)
    }

    /// The seed as [`SigningKey::from_seed_b64`] reads it, for writing into a Secret. It is the private
    /// key: never log it.
    pub fn to_seed_b64(&self) -> String {
        format!(
            "{KEY_FILE_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.key.to_bytes())
        )
    }

    /// Loads the key from `path`, or creates a new one there when the file does not exist, so a registry
    /// keeps its key (and thus the validity of outstanding assertions) across restarts without any setup.
    ///
    /// The file is one line `ed25519:<base64url seed>`. It is created with mode 0600 in a directory
    /// created with mode 0700 (on unix), written to a temporary file and renamed into place so a crash never
    /// leaves a half-written key. A file that exists but cannot be parsed is an error, never replaced:
    /// overwriting it would silently invalidate every token issued with the old key.
    pub fn load_or_generate(path: &Path) -> Result<Self, KeyError> {
        match fs::File::open(path) {
            Ok(file) => Self::load(path, file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate();
                write_key_file(path, &key.to_seed_b64())?;
                tracing::info!(path = %path.display(), kid = %key.kid, "generated new assertion signing key");
                Ok(key)
            }
            Err(source) => Err(KeyError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn load(path: &Path, file: fs::File) -> Result<Self, KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let malformed = |reason| KeyError::Malformed {
            path: path.to_owned(),
            reason,
        };
        warn_if_readable_by_others(path, &file);
        let mut bytes = Vec::new();
        file.take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(malformed("file is too long"));
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| malformed("file is not UTF-8 text"))?;
        let encoded = text
            .trim()
            .strip_prefix(KEY_FILE_PREFIX)
            .ok_or_else(|| malformed("missing `ed25519:` prefix"))?;
        let seed = parse_seed(encoded).map_err(malformed)?;
        Ok(Self::from_seed(&seed))
    }

    fn from_dalek(key: ed25519_dalek::SigningKey) -> Self {
        let public = key.verifying_key().to_bytes();
        let kid = URL_SAFE_NO_PAD.encode(&public[..KID_KEY_BYTES]);
        Self::with_kid(key, kid)
    }

    /// Separate from [`Self::from_dalek`] so tests can forge a key that claims another key's kid.
    fn with_kid(key: ed25519_dalek::SigningKey, kid: String) -> Self {
        let mut pkcs8 = [0u8; 48];
        pkcs8[..16].copy_from_slice(&PKCS8_ED25519_PREFIX);
        pkcs8[16..].copy_from_slice(key.as_bytes());
        let encoding = EncodingKey::from_ed_der(&pkcs8);
        let header = HeaderOut {
            alg: ALG,
            typ: "JWT",
            kid: &kid,
        };
        // A struct of three &str always serializes.
        let header_json = serde_json::to_vec(&header).expect("JWS header serializes");
        let header_b64 = URL_SAFE_NO_PAD.encode(header_json);
        Self {
            key,
            kid,
            encoding,
            header_b64,
        }
    }

    /// The key id put in every token's header and in the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` as a compact JWS (`header.payload.signature`, base64url without padding).
    pub fn sign(&self, claims: &Claims) -> String {
        // Ids serialize as strings and times as integers: this cannot fail.
        let payload = serde_json::to_vec(claims).expect("claims serialize");
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 92);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        // The key is a well-formed PKCS#8 document built from a 32-byte seed: signing cannot fail.
        let signature =
            jsonwebtoken::crypto::sign(token.as_bytes(), &self.encoding, Algorithm::EdDSA)
                .expect("an Ed25519 key from a seed always signs");
        token.push('.');
        token.push_str(&signature);
        token
    }

    /// The public half as a JWKS with this one key, for the registry to publish.
    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: vec![self.jwk()],
        }
    }

    /// The public half as a single JWK, for a registry that publishes several keys during rotation.
    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".to_owned(),
            crv: Some("Ed25519".to_owned()),
            alg: Some(ALG.to_owned()),
            use_: Some("sig".to_owned()),
            kid: Some(self.kid.clone()),
            x: Some(URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes())),
        }
    }
}

impl fmt::Debug for SigningKey {
    // The derived Debug would print the private key into logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn parse_seed(s: &str) -> Result<[u8; 32], &'static str> {
    let s = s.trim();
    let s = s.strip_prefix(KEY_FILE_PREFIX).unwrap_or(s);
    let s = s.trim_end_matches('=');
    // 32 bytes are 43 base64 characters; checking first keeps the decoder away from arbitrary input.
    if s.len() != 43 {
        return Err("seed is not 32 bytes");
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .map_err(|_| "seed is not valid base64")?;
    bytes.try_into().map_err(|_| "seed is not 32 bytes")
}

fn write_key_file(path: &Path, contents: &str) -> Result<(), KeyError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| KeyError::Io { path, source }
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_err(dir))?;

    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{nanos}", std::process::id()));

    let write = || -> io::Result<()> {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    // Without syncing the directory the rename itself may not survive a power loss; best effort only,
    // since some platforms cannot open directories.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path, file: &fs::File) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = file.metadata() {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "assertion signing key file is accessible by group or others");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path, _file: &fs::File) {}

/// A JSON Web Key Set (RFC 7517), as published by the registry and fetched by the router.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys. When parsing, entries that are not even a JWK object are dropped rather than failing
    /// the whole set, so one odd key published by someone else does not lock the router out.
    #[serde(deserialize_with = "lenient_keys")]
    pub keys: Vec<Jwk>,
}

fn lenient_keys<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Jwk>, D::Error> {
    let raw = Vec::<serde_json::Value>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|v| match Jwk::deserialize(v) {
            Ok(jwk) => Some(jwk),
            Err(e) => {
                tracing::debug!(error = %e, "skipping unparseable JWK");
                None
            }
        })
        .collect())
}

/// One JSON Web Key. Fields other than `kty` are optional so that keys of other types (RSA, EC) parse and
/// can then be skipped by [`Verifier::new`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type; `OKP` for Ed25519.
    pub kty: String,
    /// Curve; `Ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// Algorithm the key is meant for; `EdDSA` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Intended use; `sig` when present.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// Key id, matched against a token's header `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The 32-byte public key, base64url without padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
}

impl Jwk {
    /// The kid and Ed25519 public key, or why this key is unusable for verifying assertions.
    fn ed25519(&self) -> Result<(&str, DecodingKey), &'static str> {
        if self.kty != "OKP" || self.crv.as_deref() != Some("Ed25519") {
            return Err("not an Ed25519 key");
        }
        if self.alg.as_deref().is_some_and(|a| a != ALG) {
            return Err("alg is not EdDSA");
        }
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err("use is not sig");
        }
        let kid = self.kid.as_deref().ok_or("no kid")?;
        let x = self.x.as_deref().ok_or("no x")?;
        let bytes: [u8; 32] = URL_SAFE_NO_PAD
            .decode(x)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("x is not base64url of 32 bytes")?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| "x is not a valid Ed25519 point")?;
        // ring's check (under jsonwebtoken) accepts signatures under a small-order key, which anyone can
        // forge; ed25519-dalek's `verify_strict`, used before, refused them. Such a key is never used.
        if key.is_weak() {
            return Err("x is a small-order (weak) Ed25519 key");
        }
        Ok((kid, DecodingKey::from_ed_der(&bytes)))
    }
}

/// Why an assertion was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a well-formed assertion: size, structure, base64, JSON or claim schema.
    #[error("malformed registration assertion: {0}")]
    Malformed(Cow<'static, str>),
    /// Signed with a key the verifier does not know; the registry may have rotated its key, so a caller
    /// can refetch the JWKS (if `kid` is new to it) and retry.
    #[error("registration assertion signed with unknown key {kid:?}")]
    UnknownKey {
        /// The token header's `kid`.
        kid: String,
    },
    /// The header names an algorithm other than EdDSA (including `none`).
    #[error("registration assertion uses an unsupported algorithm (only EdDSA is accepted)")]
    UnsupportedAlgorithm,
    /// The signature does not match the header and claims.
    #[error("registration assertion has a bad signature")]
    BadSignature,
    /// `exp` (plus leeway) has passed.
    #[error("registration assertion has expired")]
    Expired,
    /// `iat` (minus leeway) is in the future.
    #[error("registration assertion is not yet valid")]
    NotYetValid,
    /// Valid, but for another tenant than the message's.
    #[error("registration assertion is for another tenant")]
    WrongTenant,
    /// Valid, but for another device than the message's.
    #[error("registration assertion is for another device")]
    WrongDevice,
}

impl VerifyError {
    /// Whether the token could not even be decoded. The router answers these with `amqp:decode-error` and
    /// every other refusal with `amqp:precondition-failed`.
    pub fn is_decode_error(&self) -> bool {
        matches!(self, Self::Malformed(_))
    }

    fn malformed(reason: &'static str) -> Self {
        Self::Malformed(Cow::Borrowed(reason))
    }
}

/// Tuning for a [`Verifier`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifierConfig {
    /// Clock skew tolerated between registry and router, in seconds, for both `exp` and `iat`.
    pub leeway_secs: u64,
    /// How many verified tokens to remember. Roughly one per active device; each entry is a few hundred
    /// bytes.
    pub cache_capacity: usize,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            leeway_secs: 10,
            cache_capacity: 100_000,
        }
    }
}

/// Verifies assertions against the keys of one JWKS and caches the verified ones.
///
/// Cheap to share (`Arc<Verifier>`), safe to use from many tasks. To take up a new JWKS, build a new
/// verifier; its cache starts empty, which also drops tokens signed with keys the new set no longer has.
pub struct Verifier {
    keys: HashMap<Box<str>, DecodingKey>,
    /// EdDSA only; no claim required or checked by `jsonwebtoken` (the time window is checked here,
    /// against the caller's `now`, and tenant and device by [`Verifier::check`]).
    validation: Validation,
    leeway: i64,
    /// Keyed by the whole token: the token string determines its claims, so a hit needs no re-check of
    /// the signature, only of the time window.
    cache: quick_cache::sync::Cache<Box<str>, Arc<Claims>>,
}

#[derive(Deserialize)]
struct HeaderIn<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    /// RFC 7515 requires refusing tokens with critical extensions one does not understand, and we
    /// understand none.
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

impl Verifier {
    /// Whether any key is trusted (a verifier without one refuses every assertion).
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// A verifier trusting the usable Ed25519 keys of `jwks`. Keys of other types or curves, keys without
    /// a kid and undecodable keys are skipped (and logged), not errors: a JWKS may legitimately carry keys
    /// for other purposes.
    pub fn new(jwks: &Jwks, config: VerifierConfig) -> Self {
        let mut keys = HashMap::new();
        for jwk in &jwks.keys {
            match jwk.ed25519() {
                Ok((kid, key)) => {
                    if keys.contains_key(kid) {
                        tracing::warn!(kid, "JWKS has the same kid twice; using the first key");
                    } else {
                        keys.insert(Box::from(kid), key);
                    }
                }
                Err(reason) => {
                    tracing::debug!(kid = ?jwk.kid, kty = %jwk.kty, reason, "skipping JWK")
                }
            }
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Self {
            keys,
            validation,
            leeway: i64::try_from(config.leeway_secs).unwrap_or(i64::MAX),
            cache: quick_cache::sync::Cache::new(config.cache_capacity),
        }
    }

    /// Whether the verifier knows the key `kid`; with [`VerifyError::UnknownKey`] this tells a caller
    /// whether refetching the JWKS could help.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The kids of all usable keys.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(|k| &**k)
    }

    /// How many verified tokens are cached, for metrics.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Verifies `token` at time `now` (unix seconds) and returns its claims.
    ///
    /// A token verified before is answered from the cache: no signature check and no allocation, but the
    /// time window is checked again, so a cached token still expires.
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<Claims>, VerifyError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(VerifyError::malformed("token is longer than 4096 bytes"));
        }
        if let Some(claims) = self.cache.get(token) {
            if let Err(e) = self.check_time(&claims, now) {
                if e == VerifyError::Expired {
                    // It can never become valid again; free the slot for a live token.
                    self.cache.remove(token);
                }
                return Err(e);
            }
            return Ok(claims);
        }
        let claims = Arc::new(self.verify_uncached(token)?);
        self.check_time(&claims, now)?;
        self.cache.insert(Box::from(token), Arc::clone(&claims));
        Ok(claims)
    }

    /// [`Verifier::verify`], then checks that the assertion is about `device` of `tenant`, i.e. the
    /// device the message claims to come from.
    pub fn check(
        &self,
        token: &str,
        tenant: &TenantId,
        device: &DeviceId,
        now: i64,
    ) -> Result<Arc<Claims>, VerifyError> {
        let claims = self.verify(token, now)?;
        if claims.ten != *tenant {
            return Err(VerifyError::WrongTenant);
        }
        if claims.sub != *device {
            return Err(VerifyError::WrongDevice);
        }
        Ok(claims)
    }

    fn check_time(&self, claims: &Claims, now: i64) -> Result<(), VerifyError> {
        if claims.exp.saturating_add(self.leeway) < now {
            return Err(VerifyError::Expired);
        }
        if claims.iat.saturating_sub(self.leeway) > now {
            return Err(VerifyError::NotYetValid);
        }
        Ok(())
    }

    fn verify_uncached(&self, token: &str) -> Result<Claims, VerifyError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(_payload), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::malformed(
                "token does not have three dot-separated parts",
            ));
        };

        let header_json = decode_b64(header_b64, "header is not base64url")?;
        let header: HeaderIn<'_> = from_json_object(&header_json)
            .map_err(|_| VerifyError::malformed("header is not a JSON object with a string alg"))?;
        // Before the key lookup, so a token we could never accept does not trigger a JWKS refetch.
        if header.alg != ALG {
            return Err(VerifyError::UnsupportedAlgorithm);
        }
        if header.crit.is_some() {
            return Err(VerifyError::malformed("header has critical extensions"));
        }
        let kid = header
            .kid
            .ok_or_else(|| VerifyError::malformed("header has no kid"))?;
        let key = self
            .keys
            .get(&*kid)
            .ok_or_else(|| VerifyError::UnknownKey {
                kid: kid.into_owned(),
            })?;

        // A signature of another length would only fail the check, and the caller should hear
        // "malformed" (amqp:decode-error), as it did before, rather than "bad signature".
        if signature_b64.len() != SIGNATURE_B64_LEN {
            return Err(VerifyError::malformed("signature is not 64 bytes"));
        }
        // ring refuses non-canonical signatures (S ≥ L), and weak keys never got into `keys`, so no second
        // valid encoding of a token exists to slip past anything keyed on the token string.
        match jsonwebtoken::decode::<ObjectClaims>(token, key, &self.validation) {
            Ok(data) => Ok(data.claims.0),
            Err(e) => Err(verify_error(e.into_kind())),
        }
    }
}

/// What a `jsonwebtoken` refusal means here. The header was checked before, so a refusal is about the
/// signature or the parts' encoding.
fn verify_error(kind: jsonwebtoken::errors::ErrorKind) -> VerifyError {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::InvalidSignature => VerifyError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            VerifyError::UnsupportedAlgorithm
        }
        ErrorKind::Base64(_) => VerifyError::malformed("token part is not base64url"),
        ErrorKind::Json(e) => VerifyError::Malformed(Cow::Owned(format!("claims: {e}"))),
        ErrorKind::Utf8(_) => VerifyError::malformed("token part is not UTF-8"),
        _ => VerifyError::malformed("token is not a compact JWS"),
    }
}

/// [`Claims`], read only from a JSON object: derived `Deserialize` also accepts an array of the fields in
/// order, and claims are an object by definition; accepting other shapes would only widen what a forger
/// can try.
struct ObjectClaims(Claims);

impl<'de> Deserialize<'de> for ObjectClaims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = Claims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Claims, A::Error> {
                Claims::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object).map(ObjectClaims)
    }
}

/// Derived `Deserialize` also accepts a JSON array of the fields in order; a JWS header is an object by
/// definition, and accepting other shapes would only widen what a forger can try.
fn from_json_object<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Result<T, serde_json::Error> {
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(serde::de::Error::custom("not a JSON object"));
    }
    serde_json::from_slice(json)
}

fn decode_b64(s: &str, what: &'static str) -> Result<Vec<u8>, VerifyError> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| VerifyError::malformed(what))
}
