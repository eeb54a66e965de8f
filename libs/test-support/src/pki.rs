//! A throwaway certificate authority for tests: a server certificate for TLS listeners and
//! client certificates for device x509 authentication, all signed by one test CA.
//!
//! Keys are ECDSA P-256 (rcgen's default), which rustls, OpenSSL (mosquitto) and Proton accept.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

const ORGANIZATION: &str = "Ferry Tests";
const CA_COMMON_NAME: &str = "Ferry Test CA";

/// A test CA and a server certificate for `localhost`, `127.0.0.1` and `::1`, as PEM strings and
/// as files in [`TestPki::dir`] (deleted when the value is dropped).
pub struct TestPki {
    /// Holds the PEM files; removed on drop.
    pub dir: TempDir,
    pub ca_cert_pem: String,
    /// `ca.crt`: the trust anchor to give clients and x509-authenticating servers.
    pub ca_cert_path: PathBuf,
    /// The CA's subject DN in RFC 4514 form (`CN=Ferry Test CA,O=Ferry Tests`), as a tenant's
    /// trusted-CA entry names it.
    pub ca_subject_dn: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// `server.crt`: the server certificate alone (the CA is the trust anchor).
    pub server_cert_path: PathBuf,
    /// `server.key`: the server's PKCS#8 private key.
    pub server_key_path: PathBuf,
    ca_cert: Certificate,
    ca_key: KeyPair,
}

impl TestPki {
    /// Generates a new CA and server certificate and writes `ca.crt`, `server.crt` and
    /// `server.key` into a new temporary directory.
    pub fn generate() -> Self {
        let ca_key = KeyPair::generate().expect("generating the test CA key");
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = distinguished_name(CA_COMMON_NAME);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .expect("self-signing the test CA");

        let server_names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let mut server_params = CertificateParams::new(server_names)
            .expect("localhost and loopback IPs are valid SANs");
        server_params.distinguished_name = distinguished_name("localhost");
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.use_authority_key_identifier_extension = true;
        let server_key = KeyPair::generate().expect("generating the test server key");
        let server_cert = server_params
            .signed_by(&server_key, &ca_cert, &ca_key)
            .expect("signing the test server certificate");

        let dir = tempfile::Builder::new()
            .prefix("ferry-test-pki-")
            .tempdir()
            .expect("creating a temporary directory for test certificates");
        // Brokers started as root (mosquitto) drop to their own user before reading the files;
        // these keys protect nothing, so let anyone read them.
        set_mode(dir.path(), 0o755);

        let ca_cert_pem = ca_cert.pem();
        let server_cert_pem = server_cert.pem();
        let server_key_pem = server_key.serialize_pem();
        let ca_cert_path = write_file(dir.path(), "ca.crt", &ca_cert_pem);
        let server_cert_path = write_file(dir.path(), "server.crt", &server_cert_pem);
        let server_key_path = write_file(dir.path(), "server.key", &server_key_pem);

        TestPki {
            dir,
            ca_cert_pem,
            ca_cert_path,
            ca_subject_dn: subject_dn(CA_COMMON_NAME),
            server_cert_pem,
            server_key_pem,
            server_cert_path,
            server_key_path,
            ca_cert,
            ca_key,
        }
    }

    /// A client certificate for `common_name` signed by the CA, as `(cert_pem, key_pem)`.
    ///
    /// Its subject DN is [`client_subject_dn`]`(common_name)`, the auth id a device registers
    /// for x509 authentication.
    pub fn client_cert(&self, common_name: &str) -> (String, String) {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generating a test client key");
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("signing a test client certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Like [`TestPki::client_cert`], written to files in [`TestPki::dir`] for external clients
    /// (`mosquitto_pub --cert --key`); returns `(cert_path, key_path)`.
    pub fn client_cert_files(&self, common_name: &str) -> (PathBuf, PathBuf) {
        let (cert_pem, key_pem) = self.client_cert(common_name);
        // A fresh name per call: two devices may share a CN, and a file name must not clash.
        let stem = format!("client-{}", uuid::Uuid::new_v4().simple());
        (
            write_file(self.dir.path(), &format!("{stem}.crt"), &cert_pem),
            write_file(self.dir.path(), &format!("{stem}.key"), &key_pem),
        )
    }
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir.path())
            .field("ca_subject_dn", &self.ca_subject_dn)
            .finish_non_exhaustive()
    }
}

/// The RFC 4514 subject DN of a certificate from [`TestPki`] with this common name:
/// `CN=<common_name>,O=Ferry Tests`, with RFC 4514 escaping.
pub fn client_subject_dn(common_name: &str) -> String {
    subject_dn(common_name)
}

fn subject_dn(common_name: &str) -> String {
    format!("CN={},O={ORGANIZATION}", escape_dn_value(common_name))
}

/// O then CN in the encoding, which RFC 4514 writes most specific first: `CN=…,O=…`.
fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    name
}

fn escape_dn_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents)
        .unwrap_or_else(|err| panic!("writing test certificate file {}: {err}", path.display()));
    set_mode(&path, 0o644);
    path
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|err| panic!("setting permissions of {}: {err}", path.display()));
}

#[cfg(test)]
mod tests;
