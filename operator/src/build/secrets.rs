//! The Secrets an address space generates when they do not exist: the admin and internal tokens, the
//! assertion signing key, the adapters' service credential and (without `spec.tls`) a self-signed
//! certificate. They are created once and never rewritten: a new signing key or token would lock out
//! every pod that still holds the old one.

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
    /// `tls.crt`, `tls.key` (type `kubernetes.io/tls`).
    Tls,
}

/// A Secret to create when absent.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedSecret {
    pub name: String,
    pub kind: SecretKind,
    meta: ObjectMeta,
    /// DNS names of the certificate (for [`SecretKind::Tls`]).
    sans: Vec<String>,
}

impl GeneratedSecret {
    /// The keys the Secret must have for the pods to start.
    pub fn keys(&self) -> &'static [&'static str] {
        match self.kind {
            SecretKind::AdminToken | SecretKind::InternalToken => &["token"],
            SecretKind::SigningKey => &["signing.key"],
            SecretKind::AdapterCredentials => &["username", "password"],
            SecretKind::Tls => &["tls.crt", "tls.key"],
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
                let certified = rcgen::generate_simple_self_signed(self.sans.clone())?;
                put("tls.crt", certified.cert.pem());
                put("tls.key", certified.key_pair.serialize_pem());
                type_ = "kubernetes.io/tls";
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
    if ctx.spec.tls.is_none() {
        out.push(secret(
            names::tls(ctx.name),
            SecretKind::Tls,
            tls_names(ctx),
        ));
    }
    out
}

/// The names clients use for the TLS endpoints: each Service's short, namespaced and `svc` forms, and
/// the router pods' names under the headless Service.
fn tls_names(ctx: &Ctx<'_>) -> Vec<String> {
    let mut sans = Vec::with_capacity(13);
    for component in [
        Component::Router,
        Component::MqttAdapter,
        Component::HttpAdapter,
    ] {
        let service = names::workload(ctx.name, component);
        sans.push(format!("{service}.{}.svc", ctx.namespace));
        sans.push(format!("{service}.{}", ctx.namespace));
        sans.push(service);
    }
    sans.push(format!(
        "*.{}.{}.svc",
        names::router_headless(ctx.name),
        ctx.namespace
    ));
    sans.push("localhost".to_owned());
    sans
}
