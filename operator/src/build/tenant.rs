//! The pure step of the `Tenant` reconcile: the registry's tenant body from the resource's spec.

use base64::Engine as _;
use ferry_registry_model::{
    Adapter, AdapterType, ResourceLimits, Tenant as RegistryTenant, TrustedCa,
};
use serde_json::Value;

use super::BuildError;
use crate::crd::{Tenant, TenantAdapterType, TrustedCaSpec};

/// The `ext` key that marks a registry tenant as managed by a `Tenant` resource (`<namespace>/<name>`),
/// so the operator never takes over or deletes a tenant someone else created.
pub const OWNER_EXT: &str = "ferry-operator-owner";

/// `<namespace>/<name>` of the resource.
pub fn owner(tenant: &Tenant) -> String {
    format!(
        "{}/{}",
        tenant.metadata.namespace.as_deref().unwrap_or_default(),
        tenant.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether a registry tenant carries this resource's owner mark.
pub fn is_owned_by(registry: &RegistryTenant, tenant: &Tenant) -> bool {
    registry.ext.get(OWNER_EXT).and_then(Value::as_str) == Some(owner(tenant).as_str())
}

/// The registry body for `tenant`, validated by the registry model's own rules.
pub fn registry_tenant(tenant: &Tenant) -> Result<RegistryTenant, BuildError> {
    let spec = &tenant.spec;
    let invalid = |m: String| BuildError::InvalidSpec(m);
    ferry_core::ids::TenantId::new(tenant.registry_tenant_id())
        .map_err(|e| invalid(format!("tenantId: {e}")))?;
    let mut out = RegistryTenant {
        enabled: spec.enabled,
        ..RegistryTenant::default()
    };
    out.ext
        .insert(OWNER_EXT.to_owned(), Value::String(owner(tenant)));
    if let Some(defaults) = &spec.defaults {
        out.defaults = defaults.clone();
    }
    let max_ttd = spec
        .resource_limits
        .as_ref()
        .map(|l| l.max_ttd)
        .filter(|t| *t >= 0);
    let mut adapters: Vec<Adapter> = spec
        .adapters
        .iter()
        .map(|a| {
            let mut entry = Adapter::new(adapter_type(a.kind)?);
            entry.enabled = a.enabled;
            entry.device_authentication_required = a.device_authentication_required;
            Ok(entry)
        })
        .collect::<Result<_, BuildError>>()?;
    // `max-ttd` is a property of an adapter entry in Hono's tenant model. Without a list every adapter
    // is enabled; listing Ferry's two adapters enabled keeps that meaning.
    if let Some(ttd) = max_ttd {
        if adapters.is_empty() {
            for kind in [TenantAdapterType::Mqtt, TenantAdapterType::Http] {
                let mut entry = Adapter::new(adapter_type(kind)?);
                entry.enabled = true;
                adapters.push(entry);
            }
        }
        for entry in &mut adapters {
            entry.extra.insert("max-ttd".to_owned(), Value::from(ttd));
        }
    }
    if !adapters.is_empty() {
        out.adapters = Some(adapters);
    }
    if let Some(limits) = &spec.resource_limits {
        out.resource_limits = Some(ResourceLimits {
            max_connections: limits.max_connections,
            max_ttl: limits.max_ttl,
            max_stored_events: limits.max_stored_events,
            max_stored_event_bytes: limits.max_stored_event_bytes,
            ..ResourceLimits::default()
        });
    }
    out.trusted_ca = spec
        .trusted_ca
        .iter()
        .enumerate()
        .map(|(i, ca)| trusted_ca(i, ca))
        .collect::<Result<_, _>>()?;
    for (i, app) in spec.applications.iter().enumerate() {
        let valid = (1..=128).contains(&app.name.len())
            && app
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(invalid(format!(
                "applications[{i}].name `{}` must be 1-128 characters of [A-Za-z0-9-_.] (it is a Secret key)",
                app.name
            )));
        }
    }
    out.validate()
        .map_err(|e| invalid(format!("the registry would refuse the tenant: {e}")))?;
    Ok(out)
}

fn adapter_type(kind: TenantAdapterType) -> Result<AdapterType, BuildError> {
    AdapterType::new(kind.as_str()).map_err(|e| BuildError::InvalidSpec(e.to_string()))
}

/// A trusted CA in the registry's form: the PEM certificate becomes base64 DER.
fn trusted_ca(i: usize, ca: &TrustedCaSpec) -> Result<TrustedCa, BuildError> {
    let mut body = serde_json::Map::new();
    body.insert("subject-dn".into(), Value::String(ca.subject_dn.clone()));
    if let Some(pem) = &ca.cert {
        let der = pem_to_der_b64(pem).ok_or_else(|| {
            BuildError::InvalidSpec(format!("trustedCa[{i}].cert is not a PEM certificate"))
        })?;
        body.insert("cert".into(), Value::String(der));
    }
    if let Some(key) = &ca.public_key {
        body.insert("public-key".into(), Value::String(key.clone()));
    }
    if let Some(alg) = ca.algorithm {
        body.insert(
            "algorithm".into(),
            serde_json::to_value(alg).unwrap_or(Value::Null),
        );
    }
    for (k, v) in [("not-before", &ca.not_before), ("not-after", &ca.not_after)] {
        if let Some(v) = v {
            body.insert(k.into(), Value::String(v.clone()));
        }
    }
    serde_json::from_value(Value::Object(body))
        .map_err(|e| BuildError::InvalidSpec(format!("trustedCa[{i}]: {e}")))
}

/// The base64 of the DER inside the first `CERTIFICATE` block of `pem`, re-encoded after a decode so
/// that garbage is refused here rather than by the registry.
fn pem_to_der_b64(pem: &str) -> Option<String> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN CERTIFICATE-----")
        .skip(1)
        .take_while(|l| *l != "-----END CERTIFICATE-----")
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    (!der.is_empty()).then(|| base64::engine::general_purpose::STANDARD.encode(der))
}

/// Whether the stored tenant says what `desired` says, ignoring what the registry adds (trusted CA ids).
pub fn is_up_to_date(stored: &RegistryTenant, desired: &RegistryTenant) -> bool {
    let mut stored = stored.clone();
    for ca in &mut stored.trusted_ca {
        ca.id = None;
    }
    stored == *desired
}
