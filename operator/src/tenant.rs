//! The `Tenant` reconcile: behind the finalizer `ferry.dev/tenant`, wait for the address space, build the
//! registry's tenant body ([`crate::build::tenant`]), create or update it through the registry's
//! management API, create the application users with generated passwords kept in a Secret, and report
//! `Accepted`, `Synced` and `Ready`. Deleting the resource deletes the tenant and its users first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Error as FinalizerError, Event};
use kube::{Api, Resource as _, ResourceExt as _};
use serde_json::json;

use crate::build::{self, names, BuildError};
use crate::context::{secret_value, Context};
use crate::crd::{AddressSpace, Tenant, TenantStatus};
use crate::error::Error;
use crate::registry_client::{RegistryClient, RegistryError};
use crate::status::{is_true, set_condition};

/// The finalizer that removes the tenant from the registry before the resource goes.
pub const FINALIZER: &str = "ferry.dev/tenant";
const KIND: &str = "Tenant";
/// How soon to look again while waiting for the address space or the registry.
const WAIT_REQUEUE: Duration = Duration::from_secs(15);

/// Reconciles one tenant (the controller's entry point).
pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled(KIND);
    let namespace = tenant
        .namespace()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let api: Api<Tenant> = ctx.api(&namespace);
    let result = finalizer(&api, FINALIZER, tenant.clone(), |event| async {
        match event {
            Event::Apply(t) => apply(&t, &ctx).await,
            Event::Cleanup(t) => cleanup(&t, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    if let Err(e) = &result {
        ctx.metrics.failed(KIND, e.metric_label());
        ctx.event(
            tenant.as_ref(),
            EventType::Warning,
            "ReconcileFailed",
            e.to_string(),
        )
        .await;
    }
    result
}

pub fn error_policy(tenant: Arc<Tenant>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(name = %tenant.name_any(), namespace = ?tenant.namespace(), %error, "Tenant reconcile failed");
    Action::requeue(WAIT_REQUEUE)
}

/// The three conditions at once (`Ready` = both others).
struct Outcome {
    accepted: (bool, &'static str, String),
    synced: (bool, &'static str, String),
}

async fn apply(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let namespace = tenant.namespace().unwrap_or_default();
    let space_name = &tenant.spec.address_space;
    let spaces: Api<AddressSpace> = ctx.api(&namespace);
    let Some(space) = spaces.get_opt(space_name).await? else {
        let why = format!("AddressSpace {space_name} does not exist in namespace {namespace}");
        let outcome = Outcome {
            accepted: (false, "AddressSpaceNotFound", why.clone()),
            synced: (false, "AddressSpaceNotFound", why),
        };
        write_status(ctx, tenant, outcome, None).await?;
        return Ok(Action::requeue(WAIT_REQUEUE));
    };
    let body = match build::tenant::registry_tenant(tenant) {
        Ok(b) => b,
        Err(e) => {
            let outcome = Outcome {
                accepted: (false, "InvalidSpec", e.to_string()),
                synced: (
                    false,
                    "InvalidSpec",
                    "not synced: the spec is invalid".to_owned(),
                ),
            };
            write_status(ctx, tenant, outcome, None).await?;
            return Ok(Action::await_change());
        }
    };
    let accepted = (true, "Valid", "the spec is valid".to_owned());
    let space_ready = space
        .status
        .as_ref()
        .is_some_and(|s| is_true(&s.conditions, "Ready"));
    if !space_ready || space.metadata.deletion_timestamp.is_some() {
        let outcome = Outcome {
            accepted,
            synced: (
                false,
                "AddressSpaceNotReady",
                format!("waiting for AddressSpace {space_name} to be Ready"),
            ),
        };
        write_status(ctx, tenant, outcome, None).await?;
        return Ok(Action::requeue(WAIT_REQUEUE));
    }
    let registry = ctx.registry(&space).await?;
    let (synced, secret, requeue) = match sync(tenant, &body, &registry, ctx).await {
        Ok(secret) => (
            (
                true,
                "Synced",
                format!(
                    "tenant {} is up to date in the registry",
                    tenant.registry_tenant_id()
                ),
            ),
            secret,
            Duration::from_secs(ctx.config.resync_secs),
        ),
        Err(Error::Registry(RegistryError::Unavailable(m))) => {
            ((false, "RegistryUnavailable", m), None, WAIT_REQUEUE)
        }
        Err(Error::Registry(e @ RegistryError::Rejected { .. })) => (
            (false, "RegistryRejected", e.to_string()),
            None,
            Duration::from_secs(ctx.config.resync_secs),
        ),
        Err(e) => return Err(e),
    };
    write_status(ctx, tenant, Outcome { accepted, synced }, secret).await?;
    Ok(Action::requeue(requeue))
}

/// Makes the registry match the spec; returns the name of the applications Secret when there is one.
async fn sync(
    tenant: &Tenant,
    body: &ferry_registry_model::Tenant,
    registry: &RegistryClient,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let id = tenant.registry_tenant_id();
    match registry.get_tenant(id).await? {
        None => registry.create_tenant(id, body).await?,
        Some(stored) if !build::tenant::is_owned_by(&stored, tenant) => {
            return Err(RegistryError::Rejected {
                what: format!("tenant {id}"),
                status: 409,
                message: format!(
                    "the registry already has tenant {id}, not managed by {}",
                    build::tenant::owner(tenant)
                ),
            }
            .into())
        }
        Some(stored) if !build::tenant::is_up_to_date(&stored, body) => {
            registry.update_tenant(id, body).await?;
        }
        Some(_) => {}
    }
    sync_applications(tenant, registry, ctx).await
}

async fn sync_applications(
    tenant: &Tenant,
    registry: &RegistryClient,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let id = tenant.registry_tenant_id();
    let namespace = tenant.namespace().unwrap_or_default();
    let secret_name = names::applications(&tenant.name_any());
    let secrets: Api<Secret> = ctx.api(&namespace);
    let existing = secrets.get_opt(&secret_name).await?;
    if tenant.spec.applications.is_empty() && existing.is_none() {
        return Ok(None);
    }
    let mut passwords: BTreeMap<String, String> = existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .map(|d| {
            d.keys()
                .filter_map(|k| {
                    existing
                        .as_ref()
                        .and_then(|s| secret_value(s, k))
                        .map(|v| (k.clone(), v))
                })
                .collect()
        })
        .unwrap_or_default();
    let wanted: Vec<&str> = tenant
        .spec
        .applications
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    let removed: Vec<String> = passwords
        .keys()
        .filter(|k| !wanted.contains(&k.as_str()))
        .cloned()
        .collect();
    let mut fresh = Vec::new();
    for name in &wanted {
        if !passwords.contains_key(*name) {
            passwords.insert((*name).to_owned(), build::secrets::random_token());
            fresh.push(*name);
        }
    }
    for name in &removed {
        passwords.remove(name);
    }
    // The passwords are stored before the registry knows them, so a crash in between loses none.
    if existing.is_none() || !fresh.is_empty() || !removed.is_empty() {
        ctx.apply(&applications_secret(tenant, &secret_name, &passwords))
            .await?;
    }
    for name in &removed {
        if let Some(view) = registry.get_application(name).await? {
            if scoped_to(&view, id) {
                registry.delete_application(name).await?;
            }
        }
    }
    for name in &wanted {
        let view = registry.get_application(name).await?;
        match view {
            Some(v) if !scoped_to(&v, id) => {
                return Err(RegistryError::Rejected {
                    what: format!("application user {name}"),
                    status: 409,
                    message: format!("application user {name} exists for other tenants"),
                }
                .into())
            }
            Some(_) if !fresh.contains(name) => {}
            _ => {
                let password = passwords.get(*name).map(String::as_str).unwrap_or_default();
                registry.put_application(name, password, id).await?;
            }
        }
    }
    Ok(Some(secret_name))
}

/// Whether an application user is this tenant's alone.
fn scoped_to(view: &ferry_registry_model::ApplicationUserView, tenant_id: &str) -> bool {
    serde_json::to_value(&view.tenants).ok() == Some(json!([tenant_id]))
}

/// The Secret `<tenant>-applications`, owned by the Tenant.
pub fn applications_secret(
    tenant: &Tenant,
    name: &str,
    passwords: &BTreeMap<String, String>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: tenant.namespace(),
            owner_references: tenant.controller_owner_ref(&()).map(|o| vec![o]),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "ferry-operator".to_owned(),
                ),
                ("ferry.dev/tenant".to_owned(), tenant.name_any()),
            ])),
            ..ObjectMeta::default()
        },
        data: Some(
            passwords
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }
}

async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let namespace = tenant.namespace().unwrap_or_default();
    let spaces: Api<AddressSpace> = ctx.api(&namespace);
    // Without its address space (or with it going away) there is no registry left to clean.
    let space = match spaces.get_opt(&tenant.spec.address_space).await? {
        Some(s) if s.metadata.deletion_timestamp.is_none() => s,
        _ => return Ok(Action::await_change()),
    };
    let registry = ctx.registry(&space).await?;
    let id = tenant.registry_tenant_id();
    let secrets: Api<Secret> = ctx.api(&namespace);
    let mut users: Vec<String> = tenant
        .spec
        .applications
        .iter()
        .map(|a| a.name.clone())
        .collect();
    if let Some(secret) = secrets
        .get_opt(&names::applications(&tenant.name_any()))
        .await?
    {
        users.extend(secret.data.unwrap_or_default().into_keys());
    }
    users.sort();
    users.dedup();
    for name in &users {
        if let Some(view) = registry.get_application(name).await? {
            if scoped_to(&view, id) {
                registry.delete_application(name).await?;
            }
        }
    }
    if let Some(stored) = registry.get_tenant(id).await? {
        if build::tenant::is_owned_by(&stored, tenant) {
            registry.delete_tenant(id).await?;
        }
    }
    ctx.event(
        tenant,
        EventType::Normal,
        "Deleted",
        format!("tenant {id} removed from the registry"),
    )
    .await;
    Ok(Action::await_change())
}

async fn write_status(
    ctx: &Context,
    tenant: &Tenant,
    outcome: Outcome,
    applications_secret: Option<String>,
) -> Result<(), Error> {
    let now = Timestamp::now();
    let generation = tenant.metadata.generation;
    let previous = tenant.status.clone().unwrap_or_default();
    let was_ready = is_true(&previous.conditions, "Ready");
    let mut conditions = previous.conditions;
    let (a, a_reason, a_msg) = outcome.accepted;
    let (s, s_reason, s_msg) = outcome.synced;
    let ready = a && s;
    let ready_reason = if ready {
        "Ready"
    } else if a {
        s_reason
    } else {
        a_reason
    };
    let ready_msg = if ready {
        "the tenant is ready".to_owned()
    } else if a {
        s_msg.clone()
    } else {
        a_msg.clone()
    };
    set_condition(
        &mut conditions,
        "Accepted",
        a,
        a_reason,
        a_msg,
        generation,
        now,
    );
    set_condition(
        &mut conditions,
        "Synced",
        s,
        s_reason,
        s_msg,
        generation,
        now,
    );
    set_condition(
        &mut conditions,
        "Ready",
        ready,
        ready_reason,
        ready_msg.clone(),
        generation,
        now,
    );
    let status = TenantStatus {
        observed_generation: generation,
        conditions,
        applications_secret: applications_secret.or(previous.applications_secret),
        registry_tenant_id: Some(tenant.registry_tenant_id().to_owned()),
    };
    let api: Api<Tenant> = ctx.api(&tenant.namespace().unwrap_or_default());
    api.patch_status(
        &tenant.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    if ready != was_ready {
        let (type_, reason) = if ready {
            (EventType::Normal, "Ready")
        } else {
            (EventType::Warning, ready_reason)
        };
        ctx.event(tenant, type_, reason, ready_msg).await;
    }
    Ok(())
}
