//! TLS for the adapters' device listeners: like every Ferry listener (`ferry_core::tls`), plus a client
//! certificate that is *requested, not required* (HONO-CONTRACT §2.1).
//!
//! Which CA a device certificate must chain to depends on the tenant, and the tenant is known only from
//! the certificate's issuer. So the handshake takes any well-formed certificate, as long as the client
//! proves it holds the certificate's key (the handshake signature is checked as usual); the trust
//! decision is [`crate::auth::DeviceAuthenticator::authenticate_certificate`]'s, afterwards, against the
//! tenant's `trusted-ca` entries.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Asks for a client certificate, accepts a handshake without one, and accepts any certificate that
/// parses as one; checks the client's handshake signature with the certificate's key.
#[derive(Debug)]
pub struct RequestClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl RequestClientCert {
    /// A verifier checking signatures with `provider`'s algorithms.
    pub fn new(provider: &CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: the trusted CAs are per tenant, and clients send their certificate without them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Chain and validity are checked per tenant after the handshake; here only that it is a
        // certificate at all, so that garbage ends the handshake instead of reaching the adapter.
        crate::x509::parse(end_entity.as_ref())
            .map(|_| ClientCertVerified::assertion())
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A device listener's TLS acceptor: the server certificate and key from PEM files, ALPN `alpn`, and a
/// requested client certificate ([`RequestClientCert`]).
pub fn acceptor(
    cert_path: &Path,
    key_path: &Path,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::TlsAcceptor, ferry_core::tls::TlsError> {
    // The certificate and key are loaded (and checked) the way every Ferry listener does it; the client
    // side is then replaced.
    let base = ferry_core::tls::server_config(cert_path, key_path, alpn)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(RequestClientCert::new(&provider)))
        .with_cert_resolver(base.cert_resolver.clone());
    config.alpn_protocols = base.alpn_protocols;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The device certificate of a TLS connection, if the client sent one.
pub fn peer_certificate(stream: &ferry_core::net::Stream) -> Option<CertificateDer<'static>> {
    match stream {
        ferry_core::net::Stream::Plain(_) => None,
        ferry_core::net::Stream::Tls(tls) => tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned()),
    }
}
