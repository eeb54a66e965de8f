//! Password hashing and verification (HONO-CONTRACT.md §3.1, `hashed-password`).
//!
//! Hono's `sha-256` / `sha-512` hashes are `base64(H(salt ‖ utf8(password)))`; `bcrypt` stores the full
//! modular-crypt string. The registry hashes `pwd-plain` with bcrypt and writes `$2a$` strings, the prefix
//! Hono's own verifier accepts, so stored credentials stay portable. Verification runs on data an adapter
//! read from the registry, so it never panics: anything malformed simply does not verify.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

use crate::error::{decode_base64, ValidationError};

/// bcrypt's own bounds on the cost factor.
const BCRYPT_MIN_COST: u32 = 4;
const BCRYPT_MAX_COST: u32 = 31;

/// bcrypt reads at most 72 bytes; longer passwords would be silently truncated.
pub(crate) const BCRYPT_MAX_PASSWORD_BYTES: usize = 72;

/// The hash function of a `hashed-password` secret.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum HashFunction {
    #[default]
    #[serde(rename = "sha-256")]
    Sha256,
    #[serde(rename = "sha-512")]
    Sha512,
    #[serde(rename = "bcrypt")]
    Bcrypt,
}

impl HashFunction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha-256",
            Self::Sha512 => "sha-512",
            Self::Bcrypt => "bcrypt",
        }
    }

    /// Length of the raw digest, for the SHA functions.
    fn digest_len(self) -> Option<usize> {
        match self {
            Self::Sha256 => Some(32),
            Self::Sha512 => Some(64),
            Self::Bcrypt => None,
        }
    }
}

/// How the registry hashes and which hashes it accepts on write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashOptions {
    /// bcrypt cost for `pwd-plain` and application user passwords (capped by `max_bcrypt_cost`).
    pub bcrypt_cost: u32,
    /// Highest bcrypt cost accepted in a pre-hashed `pwd-hash` (Hono's `maxBcryptCostFactor`, default 10):
    /// every authentication pays this cost, so an unbounded one lets a tenant slow adapters down.
    pub max_bcrypt_cost: u32,
    /// Hash functions accepted for pre-hashed passwords; empty means all (Hono's algorithm whitelist).
    pub allowed_hash_functions: Vec<HashFunction>,
}

impl Default for HashOptions {
    fn default() -> Self {
        Self {
            bcrypt_cost: 10,
            max_bcrypt_cost: 10,
            allowed_hash_functions: Vec::new(),
        }
    }
}

impl HashOptions {
    /// The cost actually used for new hashes.
    pub fn effective_bcrypt_cost(&self) -> u32 {
        self.bcrypt_cost
            .min(self.max_bcrypt_cost)
            .clamp(BCRYPT_MIN_COST, BCRYPT_MAX_COST)
    }

    pub(crate) fn allows(&self, function: HashFunction) -> bool {
        self.allowed_hash_functions.is_empty() || self.allowed_hash_functions.contains(&function)
    }
}

/// Checks a clear-text password before it is hashed with bcrypt.
pub(crate) fn check_plain_password(path: &str, password: &str) -> Result<(), ValidationError> {
    if password.is_empty() {
        return Err(ValidationError::at(path, "must not be empty"));
    }
    if password.len() > BCRYPT_MAX_PASSWORD_BYTES {
        return Err(ValidationError::at(
            path,
            format!("is longer than {BCRYPT_MAX_PASSWORD_BYTES} bytes, which bcrypt would silently truncate"),
        ));
    }
    Ok(())
}

/// Hashes a password with bcrypt into a `$2a$` string.
pub(crate) fn bcrypt_hash(password: &str, opts: &HashOptions) -> Result<String, ValidationError> {
    bcrypt::hash_with_result(password, opts.effective_bcrypt_cost())
        .map(|parts| parts.format_for_version(bcrypt::Version::TwoA))
        .map_err(|e| ValidationError::new(format!("cannot hash password: {e}")))
}

/// The cost of a `$2a$`/`$2b$`/`$2y$` bcrypt string, or `None` when it is not one.
pub(crate) fn bcrypt_cost(hash: &str) -> Option<u32> {
    let rest = hash
        .strip_prefix("$2a$")
        .or_else(|| hash.strip_prefix("$2b$"))
        .or_else(|| hash.strip_prefix("$2y$"))?;
    let (cost, salt_and_hash) = rest.split_once('$')?;
    // 22 characters of salt and 31 of hash, in bcrypt's base64 alphabet.
    let well_formed = cost.len() == 2
        && salt_and_hash.len() == 53
        && salt_and_hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    let cost: u32 = cost.parse().ok()?;
    (well_formed && (BCRYPT_MIN_COST..=BCRYPT_MAX_COST).contains(&cost)).then_some(cost)
}

/// Checks a pre-hashed password (`pwd-hash` with its `hash-function` and `salt`) on write.
pub(crate) fn check_hash(
    path: &str,
    function: HashFunction,
    pwd_hash: &str,
    salt: Option<&str>,
    opts: &HashOptions,
) -> Result<(), ValidationError> {
    if !opts.allows(function) {
        let allowed: Vec<&str> = opts
            .allowed_hash_functions
            .iter()
            .map(|f| f.as_str())
            .collect();
        return Err(ValidationError::at(
            &crate::error::join(path, "hash-function"),
            format!(
                "{} is not allowed here; use one of: {}",
                function.as_str(),
                allowed.join(", ")
            ),
        ));
    }
    let hash_path = crate::error::join(path, "pwd-hash");
    match function.digest_len() {
        None => {
            if salt.is_some() {
                return Err(ValidationError::at(
                    &crate::error::join(path, "salt"),
                    "must be absent for bcrypt, whose hash string carries its own salt",
                ));
            }
            let cost = bcrypt_cost(pwd_hash).ok_or_else(|| {
                ValidationError::at(
                    &hash_path,
                    "is not a bcrypt hash ($2a$, $2b$ or $2y$, two-digit cost, 53 characters of salt and hash)",
                )
            })?;
            if cost > opts.max_bcrypt_cost {
                return Err(ValidationError::at(
                    &hash_path,
                    format!(
                        "bcrypt cost {cost} exceeds the maximum of {}",
                        opts.max_bcrypt_cost
                    ),
                ));
            }
        }
        Some(len) => {
            crate::error::check_base64(path, "salt", salt)?;
            match decode_base64(pwd_hash) {
                None => {
                    return Err(ValidationError::at(
                        &hash_path,
                        "is not valid base64 (standard alphabet, padded)",
                    ))
                }
                Some(bytes) if bytes.len() != len => {
                    return Err(ValidationError::at(
                        &hash_path,
                        format!(
                            "decodes to {} bytes, but a {} digest has {len}",
                            bytes.len(),
                            function.as_str()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Verifies `password` against a stored hash. Malformed stored data never verifies.
pub(crate) fn verify_hash(
    function: HashFunction,
    pwd_hash: &str,
    salt: Option<&str>,
    password: &str,
) -> bool {
    match function {
        HashFunction::Bcrypt => {
            // The prefix check keeps `$2x$` (a known-broken variant) out, which the bcrypt crate would accept;
            // bcrypt reads only the first 72 bytes, so a longer password would verify by its start alone:
            // refuse it (writes refuse a longer `pwd-plain` too).
            password.len() <= 72
                && bcrypt_cost(pwd_hash).is_some()
                && bcrypt::verify(password, pwd_hash).unwrap_or(false)
        }
        HashFunction::Sha256 | HashFunction::Sha512 => {
            let salt = match salt {
                Some(s) => match decode_base64(s) {
                    Some(bytes) => bytes,
                    None => return false,
                },
                None => Vec::new(),
            };
            let Some(expected) = decode_base64(pwd_hash) else {
                return false;
            };
            let actual = if function == HashFunction::Sha256 {
                salted_digest::<Sha256>(&salt, password)
            } else {
                salted_digest::<Sha512>(&salt, password)
            };
            constant_time_eq(&actual, &expected)
        }
    }
}

/// `H(salt ‖ utf8(password))`, Hono's salted SHA scheme (stored base64-encoded).
pub(crate) fn salted_digest<D: Digest>(salt: &[u8], password: &str) -> Vec<u8> {
    let mut hasher = D::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    hasher.finalize().to_vec()
}

/// Compares two byte strings in time that depends only on their lengths, so a mismatch does not leak how
/// many leading bytes of a hash were right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn effective_cost_is_capped_and_within_bcrypt_bounds() {
        let opts = HashOptions {
            bcrypt_cost: 12,
            max_bcrypt_cost: 10,
            ..HashOptions::default()
        };
        assert_eq!(opts.effective_bcrypt_cost(), 10);
        let opts = HashOptions {
            bcrypt_cost: 1,
            max_bcrypt_cost: 10,
            ..HashOptions::default()
        };
        assert_eq!(opts.effective_bcrypt_cost(), 4);
    }

    #[test]
    fn bcrypt_cost_parses_only_known_prefixes() {
        let hash = bcrypt_hash(
            "secret",
            &HashOptions {
                bcrypt_cost: 4,
                ..HashOptions::default()
            },
        )
        .expect("hashing works");
        assert!(hash.starts_with("$2a$04$"));
        assert_eq!(bcrypt_cost(&hash), Some(4));
        assert_eq!(bcrypt_cost(&hash.replacen("$2a$", "$2b$", 1)), Some(4));
        assert_eq!(bcrypt_cost(&hash.replacen("$2a$", "$2y$", 1)), Some(4));
        assert_eq!(bcrypt_cost(&hash.replacen("$2a$", "$2x$", 1)), None);
        assert_eq!(bcrypt_cost("$2a$04$short"), None);
        assert_eq!(bcrypt_cost("not a hash"), None);
    }

    #[test]
    fn sha_verification_uses_salt_then_password() {
        let salt = b"\x01\x02salt";
        let digest = salted_digest::<Sha256>(salt, "pw");
        let stored = b64(&digest);
        assert!(verify_hash(
            HashFunction::Sha256,
            &stored,
            Some(&b64(salt)),
            "pw"
        ));
        assert!(!verify_hash(HashFunction::Sha256, &stored, None, "pw"));
        assert!(!verify_hash(
            HashFunction::Sha256,
            &stored,
            Some("!!"),
            "pw"
        ));
        assert!(!verify_hash(
            HashFunction::Sha256,
            "%%%",
            Some(&b64(salt)),
            "pw"
        ));
        // Known vector: SHA-512 of "password" without salt.
        let expected = "sQnzu7wkTrgkQZF+0G1hi5AI3Qmzvv0bXgc5THBqi7mAsdd4Xll27ASbRt9fEyavWi6m0QP9B8lThf+rDKy8hg==";
        assert!(verify_hash(
            HashFunction::Sha512,
            expected,
            None,
            "password"
        ));
    }

    #[test]
    fn malformed_bcrypt_does_not_verify_or_panic() {
        assert!(!verify_hash(
            HashFunction::Bcrypt,
            "$2a$99$xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            None,
            "pw"
        ));
        assert!(!verify_hash(HashFunction::Bcrypt, "", None, "pw"));
    }
}
