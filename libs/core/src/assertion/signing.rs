//! The registry's side of assertions: the [`SigningKey`], kept in a key file of its own, that issues
//! them and publishes its public keys.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::{fmt, fs};

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde::Serialize;

use super::{Claims, Jwk, Jwks, ALG};

const KEY_FILE_PREFIX: &str = "ed25519:";
/// A key file is one short line; anything much longer is not ours, and reading it whole is pointless.
const MAX_KEY_FILE_LEN: u64 = 1024;

/// PKCS#8 v1 (RFC 8410) of an Ed25519 private key, up to the 32-byte seed that follows: the form in which
/// `jsonwebtoken` (through ring) takes the key.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The kid is a prefix of the public key: long enough to never collide between a registry's keys, short
/// enough not to bloat every token.
const KID_KEY_BYTES: usize = 12;

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
    pub(super) key: ed25519_dalek::SigningKey,
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
    pub(super) fn with_kid(key: ed25519_dalek::SigningKey, kid: String) -> Self {
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
