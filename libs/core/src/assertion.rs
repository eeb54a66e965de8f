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
//!
//! Layout: this file holds what both sides share (the [`Claims`], the published [`Jwks`]); `signing`
//! the registry's side ([`SigningKey`]); `verify` the router's ([`Verifier`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::{DeviceId, TenantId};

mod signing;
mod verify;

pub use signing::{KeyError, SigningKey};
pub use verify::{Verifier, VerifierConfig, VerifyError};

#[cfg(test)]
mod tests;

/// The JWS `alg` value of every assertion (RFC 8037).
pub const ALG: &str = "EdDSA";

/// Tokens longer than this are refused before any decoding, so a hostile client cannot make the router
/// base64-decode and parse megabytes per message. Real assertions are a few hundred bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

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
