//! The Secrets an address space generates when they do not exist: the admin and internal tokens, the
//! assertion signing key, the adapters' service credential, the address space's certificate
//! (`<name>-tls`: a CA of its own and a certificate it issued for every internal and public name, used
//! by the internal links always and by the public endpoints unless `spec.tls` names another one), and
//! in managed `nats` mode the NATS users' passwords with the `authorization` block rendered from them.
//! They are created once and never rewritten: a new signing key or token would lock out every pod that
//! still holds the old one.
//!
//! The CA's key is not kept: every name the certificate needs is known when it is generated (the pods
//! of StatefulSets are covered by wildcards), so nothing is ever issued again. A new certificate means
//! deleting `<name>-tls`; the operator generates a new CA and certificate, and clients that verify
//! the public endpoints need the new `ca.crt`.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use rand::RngCore as _;

use super::{names, Component, Ctx};

/// What a generated Secret holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// `token`.
    AdminToken,
    /// `token`.
    InternalToken,
    /// `signing.key`: `ed25519:<seed>` as the registry's `signing_key_file` reads it.
    SigningKey,
    /// `username`, `password`.
    AdapterCredentials,
    /// `tls.crt`, `tls.key` (type `kubernetes.io/tls`) and `ca.crt`, the CA that issued it.
    Tls,
    /// `adapter`, `router` (passwords) and `auth.conf` (nats-server's `authorization` block).
    NatsUsers,
}

/// A Secret to create when absent.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedSecret {
    pub name: String,
    pub kind: SecretKind,
    meta: ObjectMeta,
    /// DNS names of the certificate (for [`SecretKind::Tls`]); the adapter, router and registry user
    /// names (for [`SecretKind::NatsUsers`]).
    sans: Vec<String>,
}

impl GeneratedSecret {
    /// The keys the Secret must have for the pods to start. (The NATS users' `registry` password is
    /// not among them: a Secret made before the registry had a NATS user gets it added, see
    /// [`Self::stale_derived_keys`].)
    pub fn keys(&self) -> &'static [&'static str] {
        match self.kind {
            SecretKind::AdminToken | SecretKind::InternalToken => &["token"],
            SecretKind::SigningKey => &["signing.key"],
            SecretKind::AdapterCredentials => &["username", "password"],
            SecretKind::Tls => &["tls.crt", "tls.key", "ca.crt"],
            SecretKind::NatsUsers => &["adapter", "router", "auth.conf"],
        }
    }

    /// The certificate's DNS names.
    pub fn sans(&self) -> &[String] {
        &self.sans
    }

    /// A new Secret with fresh random content.
    pub fn generate(&self) -> Result<Secret, rcgen::Error> {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            data.insert(k.to_owned(), ByteString(v.into_bytes()));
        };
        let mut type_ = "Opaque";
        match self.kind {
            SecretKind::AdminToken | SecretKind::InternalToken => put("token", random_token()),
            SecretKind::SigningKey => put(
                "signing.key",
                format!(
                    "{}\n",
                    ferry_core::assertion::SigningKey::generate().to_seed_b64()
                ),
            ),
            SecretKind::AdapterCredentials => {
                put("username", super::router::ADAPTER_USER.to_owned());
                put("password", random_token());
            }
            SecretKind::Tls => {
                let issued = issue(&self.name, &self.sans)?;
                put("tls.crt", issued.cert);
                put("tls.key", issued.key);
                put("ca.crt", issued.ca);
                type_ = "kubernetes.io/tls";
            }
            SecretKind::NatsUsers => {
                let passwords = [random_token(), random_token(), random_token()];
                let block = self
                    .nats_auth(&passwords)
                    // The names are the operator's own constants and the passwords base64url.
                    .expect("user names and base64url passwords need no escaping");
                let [adapter_pw, router_pw, registry_pw] = passwords;
                put("adapter", adapter_pw);
                put("router", router_pw);
                put("registry", registry_pw);
                put("auth.conf", block);
            }
        }
        Ok(Secret {
            metadata: self.meta.clone(),
            data: Some(data),
            type_: Some(type_.to_owned()),
            ..Secret::default()
        })
    }
}

impl GeneratedSecret {
    /// nats-server's `authorization` block for the three users with these passwords (adapter, router,
    /// registry) and the permissions of `ferry_nats::permissions` ([`SecretKind::NatsUsers`]); `None`
    /// for a password it cannot quote.
    fn nats_auth(&self, [adapter_pw, router_pw, registry_pw]: &[String; 3]) -> Option<String> {
        let (adapter, router, registry) = match self.sans.as_slice() {
            [a, r, g] => (a.as_str(), r.as_str(), g.as_str()),
            _ => (
                super::nats::ADAPTER_USER,
                super::nats::ROUTER_USER,
                super::nats::REGISTRY_USER,
            ),
        };
        ferry_nats::permissions::authorization(&[
            (adapter, adapter_pw, &ferry_nats::permissions::adapter()),
            (router, router_pw, &ferry_nats::permissions::router()),
            (registry, registry_pw, &ferry_nats::permissions::registry()),
        ])
    }

    /// The keys of an existing Secret that are derived from its other keys and no longer match them,
    /// or are missing: the NATS `auth.conf`, re-rendered from the kept passwords when the permissions
    /// changed (an operator upgrade), and the `registry` password, generated when a Secret made by an
    /// older operator lacks it. Passwords and keys are never replaced.
    pub fn stale_derived_keys(&self, existing: &Secret) -> Vec<(String, String)> {
        if self.kind != SecretKind::NatsUsers {
            return Vec::new();
        }
        let value = |k: &str| {
            existing
                .data
                .as_ref()
                .and_then(|d| d.get(k))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        let (Some(adapter_pw), Some(router_pw)) = (value("adapter"), value("router")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let registry_pw = match value("registry").filter(|v| !v.trim().is_empty()) {
            Some(pw) => pw,
            None => {
                let pw = random_token();
                out.push(("registry".to_owned(), pw.clone()));
                pw
            }
        };
        let passwords = [
            adapter_pw.trim().to_owned(),
            router_pw.trim().to_owned(),
            registry_pw.trim().to_owned(),
        ];
        match self.nats_auth(&passwords) {
            Some(wanted) if value("auth.conf").as_deref() != Some(wanted.as_str()) => {
                out.push(("auth.conf".to_owned(), wanted));
            }
            _ => {}
        }
        out
    }
}

/// A certificate (PEM) for `sans` issued by a new CA, its key, and the CA's certificate.
pub struct Issued {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

/// Generates a CA named after `label` and a certificate for `sans` it signed (usable by servers and,
/// for NATS routes, as a client). The CA's key is dropped.
pub fn issue(label: &str, sans: &[String]) -> Result<Issued, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, format!("{label} CA (ferry-operator)"));
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(sans.to_vec())?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        sans.first().cloned().unwrap_or_else(|| label.to_owned()),
    );
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    Ok(Issued {
        cert: cert.pem(),
        key: key.serialize_pem(),
        ca: ca_cert.pem(),
    })
}

/// 32 random bytes, base64url: a token or password.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn wanted(ctx: &Ctx<'_>) -> Vec<GeneratedSecret> {
    let secret = |name: String, kind: SecretKind, sans: Vec<String>| GeneratedSecret {
        meta: ctx.meta(name.clone(), None),
        name,
        kind,
        sans,
    };
    let mut out = vec![
        secret(names::admin_token(ctx.name), SecretKind::AdminToken, vec![]),
        secret(
            names::internal_token(ctx.name),
            SecretKind::InternalToken,
            vec![],
        ),
        secret(names::signing_key(ctx.name), SecretKind::SigningKey, vec![]),
        secret(
            names::adapter_credentials(ctx.name),
            SecretKind::AdapterCredentials,
            vec![],
        ),
    ];
    // Generated also beside a user's certificate: the internal links (registry, NATS) use it.
    out.push(secret(
        names::tls(ctx.name),
        SecretKind::Tls,
        tls_names(ctx),
    ));
    if let super::nats::Bus::Managed(_) = ctx.bus {
        let users = super::nats::users(ctx);
        out.push(secret(
            names::nats_users(ctx.name),
            SecretKind::NatsUsers,
            vec![
                users.adapter.to_owned(),
                users.router.to_owned(),
                users.registry.to_owned(),
            ],
        ));
    }
    out
}

/// The names clients use for the TLS endpoints: each Service's short, namespaced and `svc` forms, and
/// the router's and NATS nodes' pod names under their headless Services. NATS names are in whatever
/// the mode, so that switching to managed NATS later needs no new certificate.
fn tls_names(ctx: &Ctx<'_>) -> Vec<String> {
    let mut sans = Vec::with_capacity(24);
    for service in [
        names::router(ctx.name),
        names::router_internal(ctx.name),
        names::workload(ctx.name, Component::MqttAdapter),
        names::workload(ctx.name, Component::HttpAdapter),
        names::registry(ctx.name),
        names::nats(ctx.name),
    ] {
        sans.push(format!("{service}.{}.svc", ctx.namespace));
        sans.push(format!("{service}.{}", ctx.namespace));
        sans.push(service);
    }
    for headless in [
        names::router_headless(ctx.name),
        names::nats_headless(ctx.name),
    ] {
        sans.push(format!("*.{headless}.{}.svc", ctx.namespace));
    }
    sans.push("localhost".to_owned());
    sans
}
