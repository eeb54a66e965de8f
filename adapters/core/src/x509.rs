//! Just enough X.509 for client-certificate authentication (HONO-CONTRACT §2.1, §3.1): the issuer and
//! subject DNs of a device certificate in RFC 2253 form (as Hono's Java `X500Principal.getName()` writes
//! them, which is how tenants name their trusted CAs and devices their `x509-cert` auth ids), the
//! certificate's validity window, and the check that a tenant's CA key signed it (rustls-webpki:
//! signature, validity period, key usage).
//!
//! The TLS handshake takes any client certificate (the adapter cannot know the tenant before it has the
//! certificate); the trust decision happens here, per tenant.

use std::fmt::Write as _;

use base64::Engine as _;
use ferry_registry_model::TrustedCa;
use rustls::pki_types::{CertificateDer, Der, TrustAnchor, UnixTime};

/// Why a certificate is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not a DER certificate this parser understands.
    #[error("malformed certificate")]
    Malformed,
    /// The tenant's CA entry holds neither a readable public key nor a readable certificate.
    #[error("the trusted CA has no usable key")]
    BadTrustAnchor,
    /// Signature, validity period or key usage check failed.
    #[error("certificate not valid for this CA: {0}")]
    NotValid(String),
}

/// What the adapters read from a device certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert<'a> {
    /// The whole certificate.
    pub der: &'a [u8],
    /// The issuer name's DER contents (what a trust anchor's subject must equal).
    pub issuer_raw: &'a [u8],
    /// The issuer DN, RFC 2253.
    pub issuer_dn: String,
    /// The subject DN, RFC 2253: a device's `x509-cert` auth id.
    pub subject_dn: String,
    /// `notAfter`, unix seconds.
    pub not_after: i64,
}

/// A DER tag, its contents and what follows.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, content, rest) = tlv(input)?;
    (tag == want).then_some((content, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The contents of the TBS fields up to the subject public key info.
struct Tbs<'a> {
    issuer: &'a [u8],
    validity: &'a [u8],
    subject: &'a [u8],
    spki: &'a [u8],
}

fn tbs_fields(der: &[u8]) -> Option<Tbs<'_>> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    if rest.first() == Some(&0xA0) {
        rest = tlv(rest)?.2;
    }
    let (_serial, r) = expect(rest, 0x02)?;
    let (_alg, r) = expect(r, SEQUENCE)?;
    let (issuer, r) = expect(r, SEQUENCE)?;
    let (validity, r) = expect(r, SEQUENCE)?;
    let (subject, r) = expect(r, SEQUENCE)?;
    let (spki, _) = expect(r, SEQUENCE)?;
    Some(Tbs {
        issuer,
        validity,
        subject,
        spki,
    })
}

/// Parses the parts of a device certificate that authentication needs.
pub fn parse(der: &[u8]) -> Result<ClientCert<'_>, CertError> {
    let Tbs {
        issuer,
        validity,
        subject,
        ..
    } = tbs_fields(der).ok_or(CertError::Malformed)?;
    let (_, _not_before, after_nb) = tlv(validity).ok_or(CertError::Malformed)?;
    let (tag, na, _) = tlv(after_nb).ok_or(CertError::Malformed)?;
    Ok(ClientCert {
        der,
        issuer_raw: issuer,
        issuer_dn: rfc2253(issuer).ok_or(CertError::Malformed)?,
        subject_dn: rfc2253(subject).ok_or(CertError::Malformed)?,
        not_after: time(tag, na).ok_or(CertError::Malformed)?,
    })
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as unix seconds.
fn time(tag: u8, s: &[u8]) -> Option<i64> {
    // Digits only (and the `Z`), so that slicing below stays on character boundaries.
    let s = std::str::from_utf8(s).ok()?.strip_suffix('Z')?;
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| rest.get(i..i + 2)?.parse::<u32>().ok();
    let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, n(0)?, n(2)?)?;
    let t = date.and_hms_opt(n(4)?, n(6)?, n(8)?)?;
    Some(t.and_utc().timestamp())
}

/// The RFC 2253 string of a Name's DER contents (RDNs last to first, multi-valued RDNs joined by `+`).
pub fn rfc2253(name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let (set, r) = expect(rest, SET)?;
        rest = r;
        let mut avas = Vec::new();
        let mut s = set;
        while !s.is_empty() {
            let (ava, r) = expect(s, SEQUENCE)?;
            s = r;
            let (oid, value) = expect(ava, OID)?;
            let (tag, content, end) = tlv(value)?;
            if !end.is_empty() {
                return None;
            }
            avas.push(attribute(oid, tag, content, value)?);
        }
        rdns.push(avas.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// `TYPE=value` of one attribute.
fn attribute(oid: &[u8], tag: u8, content: &[u8], whole: &[u8]) -> Option<String> {
    let keyword = match oid {
        [0x55, 0x04, 0x03] => Some("CN"),
        [0x55, 0x04, 0x06] => Some("C"),
        [0x55, 0x04, 0x07] => Some("L"),
        [0x55, 0x04, 0x08] => Some("ST"),
        [0x55, 0x04, 0x09] => Some("STREET"),
        [0x55, 0x04, 0x0a] => Some("O"),
        [0x55, 0x04, 0x0b] => Some("OU"),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => Some("DC"),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => Some("UID"),
        _ => None,
    };
    let text = match tag {
        // UTF8String, PrintableString, IA5String, NumericString, VisibleString.
        0x0c | 0x13 | 0x16 | 0x12 | 0x1a => std::str::from_utf8(content).ok().map(str::to_owned),
        // TeletexString: read as Latin-1, as most decoders do.
        0x14 => Some(content.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE.
        0x1e if content.len() % 2 == 0 => {
            let units: Vec<u16> = content
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    };
    let mut out = String::new();
    match (keyword, text) {
        (Some(k), Some(t)) => {
            out.push_str(k);
            out.push('=');
            escape_into(&t, &mut out);
        }
        // Unknown attribute types and non-string values: dotted OID and the value's DER in hex.
        (k, _) => {
            match k {
                Some(k) => out.push_str(k),
                None => out.push_str(&dotted(oid)?),
            }
            out.push_str("=#");
            for b in whole {
                let _ = write!(out, "{b:02x}");
            }
        }
    }
    Some(out)
}

fn dotted(oid: &[u8]) -> Option<String> {
    let (&first, rest) = oid.split_first()?;
    let mut out = format!("{}.{}", first / 40, first % 40);
    let mut acc: u64 = 0;
    for &b in rest {
        acc = acc.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            let _ = write!(out, ".{acc}");
            acc = 0;
        }
    }
    Some(out)
}

/// RFC 2253 §2.4 escaping (and `=`, as Java does).
fn escape_into(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

/// The SubjectPublicKeyInfo contents of a trusted CA: from `public-key` (base64 DER
/// SubjectPublicKeyInfo) or from `cert` (base64 DER certificate).
fn ca_public_key(ca: &TrustedCa) -> Result<Vec<u8>, CertError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(key) = &ca.public_key {
        let der = b64.decode(key).map_err(|_| CertError::BadTrustAnchor)?;
        let (spki, _) = expect(&der, SEQUENCE).ok_or(CertError::BadTrustAnchor)?;
        return Ok(spki.to_vec());
    }
    if let Some(cert) = &ca.cert {
        let der = b64.decode(cert).map_err(|_| CertError::BadTrustAnchor)?;
        let tbs = tbs_fields(&der).ok_or(CertError::BadTrustAnchor)?;
        return Ok(tbs.spki.to_vec());
    }
    Err(CertError::BadTrustAnchor)
}

/// Checks that `cert` was signed by `ca`'s key and is valid at `now` for client authentication.
pub fn verify(cert: &ClientCert<'_>, ca: &TrustedCa, now: UnixTime) -> Result<(), CertError> {
    let spki = ca_public_key(ca)?;
    let anchor = TrustAnchor {
        // The DN strings matched already; the anchor takes the certificate's own issuer bytes so that
        // encodings that differ only in string type still chain.
        subject: Der::from_slice(cert.issuer_raw),
        subject_public_key_info: Der::from_slice(&spki),
        name_constraints: None,
    };
    let der = CertificateDer::from(cert.der);
    let end_entity =
        webpki::EndEntityCert::try_from(&der).map_err(|e| CertError::NotValid(e.to_string()))?;
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    end_entity
        .verify_for_usage(
            algs,
            &[anchor],
            &[],
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| CertError::NotValid(e.to_string()))
}

/// Applies a CA's `auth-id-template` (`{{subject-dn}}`, `{{subject-cn}}`, `{{subject-ou}}`,
/// `{{subject-o}}`) to a certificate's subject; without a template the auth id is the subject DN.
pub fn auth_id(template: Option<&str>, subject_dn: &str) -> String {
    let Some(t) = template else {
        return subject_dn.to_owned();
    };
    let part = |key: &str| -> String {
        split_dn(subject_dn)
            .into_iter()
            .find_map(|(k, v)| k.eq_ignore_ascii_case(key).then_some(v))
            .unwrap_or_default()
    };
    t.replace("{{subject-dn}}", subject_dn)
        .replace("{{subject-cn}}", &part("CN"))
        .replace("{{subject-ou}}", &part("OU"))
        .replace("{{subject-o}}", &part("O"))
}

/// `(type, unescaped value)` pairs of an RFC 2253 string.
fn split_dn(dn: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let (mut key, mut value, mut in_value, mut escaped) =
        (String::new(), String::new(), false, false);
    for c in dn.chars() {
        if escaped {
            value.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_value => escaped = true,
            '=' if !in_value => in_value = true,
            ',' | '+' if in_value => {
                out.push((std::mem::take(&mut key), std::mem::take(&mut value)));
                in_value = false;
            }
            c if in_value => value.push(c),
            c => key.push(c),
        }
    }
    if in_value {
        out.push((key, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("base64")
    }

    fn ca_entry(pki: &ferry_test_support::TestPki) -> TrustedCa {
        serde_json::from_value(serde_json::json!({
            "subject-dn": pki.ca_subject_dn,
            "cert": base64::engine::general_purpose::STANDARD.encode(pem_der(&pki.ca_cert_pem)),
        }))
        .expect("trusted CA")
    }

    #[test]
    fn names_read_as_rfc_2253() {
        let pki = ferry_test_support::TestPki::generate();
        let (cert, _) = pki.client_cert("dev,1 +x");
        let der = pem_der(&cert);
        let c = parse(&der).expect("parse");
        assert_eq!(c.issuer_dn, pki.ca_subject_dn);
        assert_eq!(
            c.subject_dn,
            ferry_test_support::client_subject_dn("dev,1 +x")
        );
        assert!(c.not_after > chrono::Utc::now().timestamp());
        assert_eq!(parse(&der[..der.len() - 3]), Err(CertError::Malformed));
        assert_eq!(
            parse(b"\x30\x84\xff\xff\xff\xff"),
            Err(CertError::Malformed)
        );
    }

    #[test]
    fn only_the_tenant_ca_key_verifies() {
        let pki = ferry_test_support::TestPki::generate();
        let other = ferry_test_support::TestPki::generate();
        let (cert, _) = pki.client_cert("dev1");
        let der = pem_der(&cert);
        let c = parse(&der).expect("parse");
        let now = UnixTime::now();
        assert_eq!(verify(&c, &ca_entry(&pki), now), Ok(()));
        // Same subject DN, another key: refused.
        assert!(matches!(
            verify(&c, &ca_entry(&other), now),
            Err(CertError::NotValid(_))
        ));
        // The CA given as its public key works as well as the certificate.
        let spki = {
            let ca_der = pem_der(&pki.ca_cert_pem);
            let spki = tbs_fields(&ca_der).expect("ca").spki;
            let mut full = vec![SEQUENCE, u8::try_from(spki.len()).expect("short key")];
            full.extend_from_slice(spki);
            full
        };
        let by_key: TrustedCa = serde_json::from_value(serde_json::json!({
            "subject-dn": pki.ca_subject_dn,
            "public-key": base64::engine::general_purpose::STANDARD.encode(spki),
            "algorithm": "EC",
        }))
        .expect("trusted CA");
        assert_eq!(verify(&c, &by_key, now), Ok(()));
        // Ten years on, the certificate has expired.
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(c.not_after).expect("positive") + 10,
        ));
        assert!(verify(&c, &ca_entry(&pki), later).is_err());
    }

    #[test]
    fn arbitrary_and_mangled_bytes_never_panic() {
        let pki = ferry_test_support::TestPki::generate();
        let good = pem_der(&pki.client_cert("dev1").0);
        let ca = ca_entry(&pki);
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..5_000 {
            let mut bytes = good.clone();
            match round % 3 {
                // Flip a few bytes of a real certificate.
                0 => {
                    for _ in 0..1 + next() % 4 {
                        let i = usize::try_from(next() % bytes.len() as u64).expect("index");
                        bytes[i] ^= u8::try_from(next() % 255 + 1).expect("byte");
                    }
                }
                // Cut it short.
                1 => bytes.truncate(usize::try_from(next() % bytes.len() as u64).expect("len")),
                // Noise.
                _ => {
                    let len = usize::try_from(next() % 600).expect("len");
                    bytes = (0..len).map(|_| (next() & 0xff) as u8).collect();
                }
            }
            if let Ok(c) = parse(&bytes) {
                let _ = verify(&c, &ca, UnixTime::now());
                let _ = auth_id(Some("{{subject-cn}}"), &c.subject_dn);
            }
            let _ = rfc2253(&bytes);
        }
    }

    #[test]
    fn auth_id_templates_pick_subject_parts() {
        let dn = "CN=dev\\,1,OU=plant,O=Acme";
        assert_eq!(auth_id(None, dn), dn);
        assert_eq!(auth_id(Some("{{subject-cn}}"), dn), "dev,1");
        assert_eq!(
            auth_id(Some("{{subject-o}}/{{subject-ou}}/{{subject-cn}}"), dn),
            "Acme/plant/dev,1"
        );
        // Multi-byte characters where digits belong are refused, not sliced through.
        assert_eq!(time(0x17, "2é101000000Z".as_bytes()), None);
        assert_eq!(time(0x17, b"260101000000Z"), Some(1_767_225_600));
        assert_eq!(
            dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]),
            Some("1.2.840.113549".into())
        );
    }
}
