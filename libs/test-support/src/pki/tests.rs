//! The test PKI must be accepted by a real TLS stack, not merely look like PEM: these tests run
//! rustls' own certificate verification over it.

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::*;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("the PEM should hold certificates")
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .expect("the PEM should be readable")
        .expect("the PEM should hold a private key")
}

fn roots(pki: &TestPki) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs(&pki.ca_cert_pem) {
        roots
            .add(cert)
            .expect("the CA should be a valid trust anchor");
    }
    Arc::new(roots)
}

#[test]
fn files_hold_the_same_pem_as_the_fields() {
    let pki = TestPki::generate();
    assert_eq!(
        fs::read_to_string(&pki.ca_cert_path).expect("reading ca.crt"),
        pki.ca_cert_pem
    );
    assert_eq!(
        fs::read_to_string(&pki.server_cert_path).expect("reading server.crt"),
        pki.server_cert_pem
    );
    assert_eq!(
        fs::read_to_string(&pki.server_key_path).expect("reading server.key"),
        pki.server_key_pem
    );
    assert_eq!(certs(&pki.ca_cert_pem).len(), 1);
    assert!(pki
        .server_key_pem
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(pki.ca_cert_path.starts_with(pki.dir.path()));
}

#[test]
fn server_certificate_verifies_for_localhost_and_loopback() {
    let pki = TestPki::generate();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&pki), provider())
        .build()
        .expect("building a server verifier");
    let server = certs(&pki.server_cert_pem);
    for name in ["localhost", "127.0.0.1", "::1"] {
        let name = ServerName::try_from(name).expect("a valid server name");
        verifier
            .verify_server_cert(&server[0], &[], &name, &[], UnixTime::now())
            .unwrap_or_else(|err| panic!("{name:?}: {err}"));
    }
    let other = ServerName::try_from("example.com").expect("a valid server name");
    assert!(verifier
        .verify_server_cert(&server[0], &[], &other, &[], UnixTime::now())
        .is_err());
}

#[test]
fn server_key_matches_its_certificate() {
    let pki = TestPki::generate();
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS 1.2 and 1.3 are supported")
        .with_no_client_auth()
        .with_single_cert(certs(&pki.server_cert_pem), key(&pki.server_key_pem))
        .expect("the server key should match its certificate");
}

#[test]
fn client_certificate_verifies_against_the_ca_only() {
    let pki = TestPki::generate();
    let (cert_pem, key_pem) = pki.client_cert("device-1");
    key(&key_pem);
    let client = certs(&cert_pem);

    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&pki), provider())
        .build()
        .expect("building a client verifier");
    verifier
        .verify_client_cert(&client[0], &[], UnixTime::now())
        .expect("the client certificate should verify against its CA");

    let stranger = TestPki::generate();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&stranger), provider())
        .build()
        .expect("building a client verifier");
    assert!(verifier
        .verify_client_cert(&client[0], &[], UnixTime::now())
        .is_err());
}

#[test]
fn client_cert_files_are_written_into_the_pki_dir() {
    let pki = TestPki::generate();
    let (cert_path, key_path) = pki.client_cert_files("device-1");
    let (other_cert, _) = pki.client_cert_files("device-1");
    assert_ne!(cert_path, other_cert);
    assert!(cert_path.starts_with(pki.dir.path()));
    assert_eq!(
        certs(&fs::read_to_string(cert_path).expect("reading the client certificate")).len(),
        1
    );
    key(&fs::read_to_string(key_path).expect("reading the client key"));
}

#[test]
fn subject_dns_are_rfc4514_most_specific_first() {
    let pki = TestPki::generate();
    assert_eq!(pki.ca_subject_dn, "CN=Ferry Test CA,O=Ferry Tests");
    assert_eq!(client_subject_dn("device-1"), "CN=device-1,O=Ferry Tests");
    assert_eq!(client_subject_dn("a,b+c"), r"CN=a\,b\+c,O=Ferry Tests");
    assert_eq!(client_subject_dn(" x "), r"CN=\ x\ ,O=Ferry Tests");
}
