//! Server-side TLS for every Ferry listener: a rustls configuration from PEM files.
//!
//! TLS is terminated before any protocol byte is read (HTTPS, AMQPS, MQTTS alike), so one loader serves
//! the registry, the router and the adapters.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no certificate in {0}")]
    NoCertificate(PathBuf),
    #[error("no private key in {0}")]
    NoKey(PathBuf),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn open(path: &Path) -> Result<std::io::BufReader<std::fs::File>, TlsError> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
}

/// A server configuration from a PEM certificate chain and private key, with ALPN `alpn` (may be empty).
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(cert_path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: cert_path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_owned()));
    }
    let key = rustls_pemfile::private_key(&mut open(key_path)?)
        .map_err(|source| TlsError::Read {
            path: key_path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey(key_path.to_owned()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS acceptor for [`server_config`].
pub fn acceptor(
    cert_path: &Path,
    key_path: &Path,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server_config(
        cert_path, key_path, alpn,
    )?)))
}
