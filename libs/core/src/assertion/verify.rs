//! The router's side of assertions: the [`Verifier`], built from the fetched JWKS, that checks each
//! token once and keeps it while it is valid.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Deserializer, Serialize};

use super::{Claims, Jwks, ALG, MAX_TOKEN_LEN};
use crate::ids::{DeviceId, TenantId};

/// An Ed25519 signature is 64 bytes: 86 characters of base64url without padding.
const SIGNATURE_B64_LEN: usize = 86;

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

    pub(super) fn malformed(reason: &'static str) -> Self {
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
