//! TLS for every Ferry listener and internal client: rustls configurations from PEM files.
//!
//! TLS is terminated before any protocol byte is read (HTTPS, AMQPS, MQTTS alike), so one loader serves
//! the registry, the router and the adapters; [`TlsConfig`] is the `tls` section they all share. The
//! client side ([`client_config`]) is what an adapter uses towards the router (AMQPS) and every component
//! towards the registry (HTTPS): the servers' certificates must chain to a CA the component is given
//! (in Kubernetes the operator's), or else to the public web roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// A listener's certificate chain and private key (PEM files): the `tls` section of every component.
/// Without both, the component serves no TLS listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
}

impl TlsConfig {
    /// Refuses a certificate without its key and the other way round; `field` names the section.
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.cert_path.is_some() != self.key_path.is_some() {
            return Err(ConfigError::Field {
                field: field.to_owned(),
                message: "cert_path and key_path must be given together".into(),
            });
        }
        Ok(())
    }

    /// The certificate and key files, when both are set.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        match (&self.cert_path, &self.key_path) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        }
    }
}

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
    #[error("no CA certificate in {0}")]
    NoCa(PathBuf),
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

/// The CA certificates in a PEM file, for clients that verify a server against them.
pub fn ca_certificates(
    ca_file: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(ca_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: ca_file.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCa(ca_file.to_owned()));
    }
    Ok(certs)
}

/// A client configuration that trusts only the CAs in `ca_file`, or the public web roots without one.
pub fn client_config(
    ca_file: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in ca_certificates(path)? {
                roots.add(cert)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS connector for [`client_config`].
pub fn connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, TlsError> {
    Ok(tokio_rustls::TlsConnector::from(Arc::new(client_config(
        ca_file,
        &[],
    )?)))
}
