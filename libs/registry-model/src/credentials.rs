//! Device credentials (HONO-CONTRACT.md §3.1, §3.2): the wire types, their validation, redaction for the
//! management GET, and secret verification for adapters.
//!
//! A credential is tagged by `type`; each type has its own secret payload (`PasswordData`, `PskData`,
//! `X509Data`, `RpkData`) flattened next to the metadata every secret shares (`id`, `enabled`,
//! `not-before`, `not-after`, `comment`). The same types serve three audiences: the management PUT body
//! (may carry write-only `pwd-plain`, secrets may refer to stored ones by `id`), the management GET body
//! ([`Credential::redacted`]: metadata and ids only) and the internal Credentials API that adapters use
//! ([`DeviceCredential`]: full hashes and keys).

use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, Utc};
use ferry_core::hono::credential_type;
use ferry_core::ids::{AuthId, DeviceId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{check_base64, check_window, decode_base64, join, ValidationError};
use crate::hashing::{self, HashFunction, HashOptions};
use crate::tenant::KeyAlgorithm;
use crate::JsonObject;

mod update;

pub use update::prepare_for_storage;

/// One credential of a device, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum Credential {
    #[serde(rename = "hashed-password")]
    HashedPassword(TypedCredential<PasswordData>),
    #[serde(rename = "psk")]
    Psk(TypedCredential<PskData>),
    /// The auth id is the certificate's subject DN (RFC 2253) or derived from the CA's template.
    #[serde(rename = "x509-cert")]
    X509Cert(TypedCredential<X509Data>),
    /// A raw public key for JWT authentication.
    #[serde(rename = "rpk")]
    Rpk(TypedCredential<RpkData>),
}

/// The fields every credential type shares, with the type's secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(rename = "{D}Credentials")]
pub struct TypedCredential<D> {
    /// The name the device authenticates with; `(type, auth-id)` is unique within a tenant.
    #[schemars(with = "crate::schema::AuthIdSchema")]
    pub auth_id: AuthId,
    #[serde(default = "crate::default_true")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    pub ext: JsonObject,
    /// At least one secret.
    pub secrets: Vec<Secret<D>>,
}

/// A secret: shared metadata plus the type's confidential data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(rename = "{D}Secret")]
pub struct Secret<D> {
    /// Assigned by the registry; sending a stored secret's id back keeps its confidential data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default = "crate::default_true")]
    pub enabled: bool,
    /// Start of validity; absent or null = unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::schema::Rfc3339>")]
    pub not_before: Option<DateTime<Utc>>,
    /// End of validity; absent or null = unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::schema::Rfc3339>")]
    pub not_after: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(flatten)]
    pub data: D,
}

/// Confidential part of a `hashed-password` secret.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(rename = "Password")]
pub struct PasswordData {
    /// `sha-256` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_function: Option<HashFunction>,
    /// Base64 digest for the SHA functions, the full `$2a$...` string for bcrypt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pwd_hash: Option<String>,
    /// Base64 salt prepended to the password before a SHA digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Clear text the registry hashes with bcrypt; never stored, never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("writeOnly" = true))]
    pub pwd_plain: Option<String>,
}

// Written by hand so that a logged request never shows a clear-text password or a hash.
impl fmt::Debug for PasswordData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordData")
            .field("hash_function", &self.hash_function)
            .field("pwd_hash", &self.pwd_hash.as_ref().map(|_| "<redacted>"))
            .field("salt", &self.salt.as_ref().map(|_| "<redacted>"))
            .field("pwd_plain", &self.pwd_plain.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl PasswordData {
    /// The hash function in effect (Hono's default is `sha-256`).
    pub fn hash_function(&self) -> HashFunction {
        self.hash_function.unwrap_or_default()
    }

    /// Whether `password` matches the stored hash; false when there is none or it is malformed.
    pub fn verify(&self, password: &str) -> bool {
        self.pwd_hash.as_deref().is_some_and(|hash| {
            hashing::verify_hash(self.hash_function(), hash, self.salt.as_deref(), password)
        })
    }
}

/// Confidential part of a `psk` secret.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(rename = "Psk")]
pub struct PskData {
    /// Base64 pre-shared key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl fmt::Debug for PskData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskData")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// An `x509-cert` secret has no confidential part: the CA's signature is the proof. Its metadata bounds
/// the certificate's validity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "X509Certificate")]
pub struct X509Data {}

/// Confidential part of an `rpk` secret: a public key or a certificate holding one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(rename = "Rpk")]
pub struct RpkData {
    /// Base64 DER public key; exclusive with `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Base64 DER certificate; exclusive with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// Algorithm of `key` (RSA when absent). Describes the stored key, so a patch without new key data
    /// keeps the stored algorithm too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<KeyAlgorithm>,
}

/// What the generic credential code needs from each type's confidential data.
pub(crate) trait SecretData: Clone + Default {
    /// The credential variant holding this data type, for matching stored credentials.
    fn of(credential: &Credential) -> Option<&TypedCredential<Self>>;

    /// Whether the secret carries confidential data (as opposed to referring to a stored secret by id).
    fn has_data(&self) -> bool;

    /// Checks the data of an incoming secret; `has_id` secrets may omit it (patch mode).
    fn check(&self, path: &str, has_id: bool, opts: &HashOptions) -> Result<(), ValidationError>;

    /// Turns write-only input into its stored form.
    fn finalize(&mut self, _path: &str, _opts: &HashOptions) -> Result<(), ValidationError> {
        Ok(())
    }

    /// Removes everything confidential, for the management GET.
    fn redact(&mut self);
}

impl SecretData for PasswordData {
    fn of(credential: &Credential) -> Option<&TypedCredential<Self>> {
        match credential {
            Credential::HashedPassword(c) => Some(c),
            _ => None,
        }
    }

    fn has_data(&self) -> bool {
        self.pwd_hash.is_some() || self.pwd_plain.is_some()
    }

    fn check(&self, path: &str, has_id: bool, opts: &HashOptions) -> Result<(), ValidationError> {
        match (&self.pwd_plain, &self.pwd_hash) {
            (Some(_), Some(_)) => Err(ValidationError::at(
                path,
                "pwd-plain and pwd-hash are exclusive",
            )),
            // Hono ignores hash-function and salt next to pwd-plain: the registry picks the hash.
            (Some(plain), None) => hashing::check_plain_password(&join(path, "pwd-plain"), plain),
            (None, Some(hash)) => {
                hashing::check_hash(path, self.hash_function(), hash, self.salt.as_deref(), opts)
            }
            (None, None) if !has_id => Err(ValidationError::at(
                path,
                "a new secret needs pwd-plain or pwd-hash (or the id of a stored secret to keep)",
            )),
            (None, None) if self.salt.is_some() || self.hash_function.is_some() => {
                Err(ValidationError::at(
                    path,
                    "salt and hash-function describe a pwd-hash; send them with one or not at all",
                ))
            }
            (None, None) => Ok(()),
        }
    }

    fn finalize(&mut self, path: &str, opts: &HashOptions) -> Result<(), ValidationError> {
        if let Some(plain) = self.pwd_plain.take() {
            let hash = hashing::bcrypt_hash(&plain, opts)
                .map_err(|e| ValidationError::at(&join(path, "pwd-plain"), e))?;
            *self = Self {
                hash_function: Some(HashFunction::Bcrypt),
                pwd_hash: Some(hash),
                salt: None,
                pwd_plain: None,
            };
        }
        Ok(())
    }

    fn redact(&mut self) {
        *self = Self::default();
    }
}

impl SecretData for PskData {
    fn of(credential: &Credential) -> Option<&TypedCredential<Self>> {
        match credential {
            Credential::Psk(c) => Some(c),
            _ => None,
        }
    }

    fn has_data(&self) -> bool {
        self.key.is_some()
    }

    fn check(&self, path: &str, has_id: bool, _: &HashOptions) -> Result<(), ValidationError> {
        match &self.key {
            None if !has_id => Err(ValidationError::at(
                path,
                "a new secret needs a key (or the id of a stored secret to keep)",
            )),
            None => Ok(()),
            Some(key) => match decode_base64(key) {
                None => Err(ValidationError::at(
                    &join(path, "key"),
                    "is not valid base64 (standard alphabet, padded)",
                )),
                Some(bytes) if bytes.is_empty() => {
                    Err(ValidationError::at(&join(path, "key"), "must not be empty"))
                }
                Some(_) => Ok(()),
            },
        }
    }

    fn redact(&mut self) {
        self.key = None;
    }
}

impl SecretData for X509Data {
    fn of(credential: &Credential) -> Option<&TypedCredential<Self>> {
        match credential {
            Credential::X509Cert(c) => Some(c),
            _ => None,
        }
    }

    fn has_data(&self) -> bool {
        false
    }

    fn check(&self, _: &str, _: bool, _: &HashOptions) -> Result<(), ValidationError> {
        Ok(())
    }

    fn redact(&mut self) {}
}

impl SecretData for RpkData {
    fn of(credential: &Credential) -> Option<&TypedCredential<Self>> {
        match credential {
            Credential::Rpk(c) => Some(c),
            _ => None,
        }
    }

    fn has_data(&self) -> bool {
        self.key.is_some() || self.cert.is_some()
    }

    fn check(&self, path: &str, has_id: bool, _: &HashOptions) -> Result<(), ValidationError> {
        match (&self.key, &self.cert) {
            (Some(_), Some(_)) => Err(ValidationError::at(path, "key and cert are exclusive")),
            (None, None) if !has_id => Err(ValidationError::at(
                path,
                "a new secret needs a key or a cert (or the id of a stored secret to keep)",
            )),
            _ => {
                check_base64(path, "key", self.key.as_deref())?;
                check_base64(path, "cert", self.cert.as_deref())
            }
        }
    }

    fn redact(&mut self) {
        self.key = None;
        self.cert = None;
    }
}

impl<D> Secret<D> {
    /// Whether the secret may be used at `now`: enabled and inside `[not-before, not-after]`.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.enabled
            && self.not_before.is_none_or(|nb| nb <= now)
            && self.not_after.is_none_or(|na| now <= na)
    }
}

impl<D: Default> Secret<D> {
    /// An enabled, unbounded secret without id.
    pub fn new(data: D) -> Self {
        Self {
            id: None,
            enabled: true,
            not_before: None,
            not_after: None,
            comment: None,
            data,
        }
    }
}

impl<D> TypedCredential<D> {
    /// An enabled credential with the given secrets.
    pub fn new(auth_id: AuthId, secrets: Vec<Secret<D>>) -> Self {
        Self {
            auth_id,
            enabled: true,
            ext: JsonObject::new(),
            secrets,
        }
    }

    /// The secrets an adapter may use at `now`: none if the credential is disabled, otherwise the enabled
    /// secrets whose validity window contains `now`.
    pub fn active_secrets(&self, now: DateTime<Utc>) -> impl Iterator<Item = &Secret<D>> {
        self.secrets
            .iter()
            .filter(move |s| self.enabled && s.is_valid_at(now))
    }
}

fn validate_typed<D: SecretData>(
    credential: &TypedCredential<D>,
    path: &str,
    opts: &HashOptions,
) -> Result<(), ValidationError> {
    if credential.secrets.is_empty() {
        return Err(ValidationError::at(
            &join(path, "secrets"),
            "at least one secret is required",
        ));
    }
    let mut ids = HashSet::new();
    for (j, secret) in credential.secrets.iter().enumerate() {
        let spath = join(path, &format!("secrets[{j}]"));
        if let Some(id) = &secret.id {
            if id.trim().is_empty() {
                return Err(ValidationError::at(
                    &join(&spath, "id"),
                    "must not be empty; omit it for a new secret",
                ));
            }
            if !ids.insert(id.as_str()) {
                return Err(ValidationError::at(
                    &join(&spath, "id"),
                    format!("`{id}` is used by another secret of this credential"),
                ));
            }
        }
        check_window(
            &spath,
            secret.not_before.as_ref(),
            secret.not_after.as_ref(),
        )?;
        secret.data.check(&spath, secret.id.is_some(), opts)?;
    }
    Ok(())
}

fn redact_typed<D: SecretData>(credential: &TypedCredential<D>) -> TypedCredential<D> {
    let mut copy = credential.clone();
    for secret in &mut copy.secrets {
        secret.data.redact();
    }
    copy
}

/// Applies `$body` to the typed credential inside any variant.
macro_rules! each_variant {
    ($credential:expr, $c:ident => $body:expr) => {
        match $credential {
            Credential::HashedPassword($c) => $body,
            Credential::Psk($c) => $body,
            Credential::X509Cert($c) => $body,
            Credential::Rpk($c) => $body,
        }
    };
}

impl Credential {
    /// A `hashed-password` credential carrying a clear-text password for the registry to hash.
    pub fn password(auth_id: AuthId, pwd_plain: &str) -> Self {
        Self::HashedPassword(TypedCredential::new(
            auth_id,
            vec![Secret::new(PasswordData {
                pwd_plain: Some(pwd_plain.to_owned()),
                ..PasswordData::default()
            })],
        ))
    }

    /// A `psk` credential with the given key.
    pub fn psk(auth_id: AuthId, key: &[u8]) -> Self {
        use base64::Engine as _;
        Self::Psk(TypedCredential::new(
            auth_id,
            vec![Secret::new(PskData {
                key: Some(base64::engine::general_purpose::STANDARD.encode(key)),
            })],
        ))
    }

    /// The `type` value (`hashed-password`, `psk`, `x509-cert`, `rpk`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::HashedPassword(_) => credential_type::HASHED_PASSWORD,
            Self::Psk(_) => credential_type::PSK,
            Self::X509Cert(_) => credential_type::X509_CERT,
            Self::Rpk(_) => credential_type::RPK,
        }
    }

    pub fn auth_id(&self) -> &AuthId {
        each_variant!(self, c => &c.auth_id)
    }

    pub fn is_enabled(&self) -> bool {
        each_variant!(self, c => c.enabled)
    }

    pub fn ext(&self) -> &JsonObject {
        each_variant!(self, c => &c.ext)
    }

    pub fn secret_count(&self) -> usize {
        each_variant!(self, c => c.secrets.len())
    }

    /// Whether this is the credential with the given `(type, auth-id)` key.
    pub fn has_key(&self, type_name: &str, auth_id: &str) -> bool {
        self.type_name() == type_name && self.auth_id().as_str() == auth_id
    }

    /// Checks one incoming credential (error paths start at `secrets`). Use [`validate_credentials`] for
    /// a whole PUT body, which also checks that `(type, auth-id)` is unique.
    pub fn validate(&self, opts: &HashOptions) -> Result<(), ValidationError> {
        self.validate_at("", opts)
    }

    fn validate_at(&self, path: &str, opts: &HashOptions) -> Result<(), ValidationError> {
        each_variant!(self, c => validate_typed(c, path, opts))
    }

    /// The credential without its confidential data (hashes, salts, keys, certificates, clear text):
    /// what the management GET returns. Ids and metadata stay, so a client can PUT it back to keep the
    /// stored secrets (Hono's patch mode).
    pub fn redacted(&self) -> Credential {
        match self {
            Self::HashedPassword(c) => Self::HashedPassword(redact_typed(c)),
            Self::Psk(c) => Self::Psk(redact_typed(c)),
            Self::X509Cert(c) => Self::X509Cert(redact_typed(c)),
            Self::Rpk(c) => Self::Rpk(redact_typed(c)),
        }
    }

    /// Whether `password` matches one of the credential's secrets usable at `now`. False for other
    /// credential types, a disabled credential, and any malformed stored hash.
    pub fn verify_password(&self, password: &str, now: DateTime<Utc>) -> bool {
        match self {
            Self::HashedPassword(c) => c.active_secrets(now).any(|s| s.data.verify(password)),
            _ => false,
        }
    }

    /// The pre-shared key of the first secret usable at `now`; `None` for other credential types, a
    /// disabled credential, or when no usable secret has a decodable key.
    pub fn psk_key(&self, now: DateTime<Utc>) -> Option<Vec<u8>> {
        match self {
            Self::Psk(c) => c
                .active_secrets(now)
                .find_map(|s| s.data.key.as_deref().and_then(decode_base64))
                .filter(|key| !key.is_empty()),
            _ => None,
        }
    }
}

/// Checks a device's whole credentials set as sent in a PUT: every credential, and `(type, auth-id)`
/// unique within the set.
pub fn validate_credentials(
    credentials: &[Credential],
    opts: &HashOptions,
) -> Result<(), ValidationError> {
    for (i, credential) in credentials.iter().enumerate() {
        let path = format!("credentials[{i}]");
        if let Some(first) = credentials[..i]
            .iter()
            .position(|c| c.has_key(credential.type_name(), credential.auth_id().as_str()))
        {
            return Err(ValidationError::at(
                &path,
                format!(
                    "duplicates credentials[{first}]: type {} with auth-id `{}` may appear once",
                    credential.type_name(),
                    credential.auth_id()
                ),
            ));
        }
        credential.validate_at(&path, opts)?;
    }
    Ok(())
}

/// [`Credential::redacted`] over a whole set.
pub fn redact_all(credentials: &[Credential]) -> Vec<Credential> {
    credentials.iter().map(Credential::redacted).collect()
}

/// A credential with its device id: the full, unredacted form the internal Credentials API returns to
/// adapters (`{"device-id", "type", "auth-id", "secrets", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceCredential {
    #[serde(rename = "device-id")]
    #[schemars(with = "crate::schema::DeviceIdSchema")]
    pub device_id: DeviceId,
    #[serde(flatten)]
    pub credential: Credential,
}

#[cfg(test)]
mod tests;
