//! The `AddressSpace` reconcile: validate and build ([`crate::build`]), check every Secret the pods would
//! mount (allowed for Ferry, present), create the generated Secrets that are missing, server-side apply
//! every object, delete a disabled component's objects, then write the status from the workloads'
//! readiness and record an event when the phase changes. A refused spec or Secret gets `Ready=False`
//! with the reason, and nothing is applied.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt as _};
use serde_json::json;

use crate::build::{self, names, policy, BuildError, Component, GeneratedSecret, Kind};
use crate::context::Context;
use crate::crd::{AddressSpace, AddressSpaceStatus, Phase};
use crate::error::{is_conflict, is_not_found, Error};
use crate::status::{self, Readiness};

const KIND: &str = "AddressSpace";
/// How soon to look again while components are starting.
const PENDING_REQUEUE: Duration = Duration::from_secs(10);
/// How soon to look again at an address space refused for a Secret (labels are not watched).
const REFUSED_REQUEUE: Duration = Duration::from_secs(60);

/// Reconciles one address space (the controller's entry point).
pub async fn reconcile(space: Arc<AddressSpace>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled(KIND);
    let result = reconcile_inner(&space, &ctx).await;
    if let Err(e) = &result {
        ctx.metrics.failed(KIND, e.metric_label());
        ctx.event(
            space.as_ref(),
            EventType::Warning,
            "ReconcileFailed",
            e.to_string(),
        )
        .await;
    }
    result
}

/// Retry a failed reconcile after a short pause (the error was counted and recorded in `reconcile`).
pub fn error_policy(space: Arc<AddressSpace>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(name = %space.name_any(), namespace = ?space.namespace(), %error, "AddressSpace reconcile failed");
    Action::requeue(Duration::from_secs(15))
}

async fn reconcile_inner(space: &AddressSpace, ctx: &Context) -> Result<Action, Error> {
    let namespace = space
        .namespace()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let name = space.name_any();
    let generation = space.metadata.generation;
    let previous = space.status.as_ref();

    let desired = match build::address_space(space, &ctx.defaults()) {
        Ok(d) => d,
        Err(e) => {
            let Some(reason) = e.refusal_reason() else {
                return Err(e.into());
            };
            refuse(ctx, space, Phase::Failed, reason, e.to_string()).await?;
            return Ok(Action::await_change());
        }
    };

    // Every Secret the pods would mount, generated or the user's, before anything is written: one that
    // is not made for Ferry refuses the whole address space; a missing one of the user's holds it back
    // (the pods would mount whatever appears under that name later, unchecked).
    let secrets: Api<Secret> = ctx.api(&namespace);
    let owner_uid = space.metadata.uid.as_deref().unwrap_or_default();
    let allowed = &ctx.config.allowed_secrets;
    let mut refused = Vec::new();
    let mut to_generate = Vec::new();
    for wanted in &desired.secrets {
        match secrets.get_opt(&wanted.name).await? {
            Some(existing) => {
                if let Err(why) = policy::secret_allowed(&existing.metadata, owner_uid, allowed) {
                    refused.push(why);
                }
                check_keys(&existing, wanted)?;
                let stale = wanted.stale_derived_keys(&existing);
                if !stale.is_empty()
                    && policy::secret_allowed(&existing.metadata, owner_uid, allowed).is_ok()
                {
                    refresh_derived(&secrets, &wanted.name, stale).await?;
                }
            }
            None => to_generate.push(wanted),
        }
    }
    let mut missing = Vec::new();
    for (secret, key) in &desired.referenced {
        match secrets.get_opt(secret).await? {
            Some(s) => {
                if let Err(why) = policy::secret_allowed(&s.metadata, owner_uid, allowed) {
                    if !refused.contains(&why) {
                        refused.push(why);
                    }
                }
                if crate::context::secret_value(&s, key).is_none() {
                    missing.push(format!("Secret {secret} (key {key})"));
                }
            }
            None => missing.push(format!("Secret {secret} (key {key})")),
        }
    }
    if !refused.is_empty() {
        refuse(
            ctx,
            space,
            Phase::Failed,
            "SecretNotAllowed",
            refused.join("; "),
        )
        .await?;
        // A label added to the Secret changes nothing the controller watches: look again later.
        return Ok(Action::requeue(REFUSED_REQUEUE));
    }
    for wanted in to_generate {
        if create_secret(&secrets, wanted).await? {
            ctx.event(
                space,
                EventType::Normal,
                "SecretGenerated",
                format!("generated Secret {}", wanted.name),
            )
            .await;
        }
    }
    if !missing.is_empty() {
        refuse(
            ctx,
            space,
            Phase::Pending,
            "SecretMissing",
            format!(
                "waiting for {}; nothing is deployed until it exists",
                missing.join(", ")
            ),
        )
        .await?;
        return Ok(Action::requeue(PENDING_REQUEUE));
    }

    for o in &desired.config_maps {
        ctx.apply(o).await?;
    }
    for o in &desired.pvcs {
        ctx.apply(o).await?;
    }
    for o in &desired.services {
        ctx.apply(o).await?;
    }
    for o in &desired.network_policies {
        ctx.apply(o).await?;
    }
    for o in &desired.pod_disruption_budgets {
        ctx.apply(o).await?;
    }
    let mut readiness: HashMap<String, Readiness> = HashMap::new();
    for o in &desired.deployments {
        let applied = ctx.apply(o).await?;
        readiness.insert(applied.name_any(), Readiness::of_deployment(&applied));
    }
    for o in &desired.stateful_sets {
        let applied = ctx.apply(o).await?;
        readiness.insert(applied.name_any(), Readiness::of_stateful_set(&applied));
    }
    for (kind, object) in &desired.absent {
        delete_if_present(ctx, &namespace, *kind, object).await?;
    }

    let observed: Vec<(Component, Option<Readiness>)> = Component::ALL
        .iter()
        .map(|c| (*c, readiness.get(&names::workload(&name, *c)).copied()))
        .collect();
    let messaging = match build::nats::Bus::of(&space.spec) {
        build::nats::Bus::Embedded => status::Messaging::Embedded,
        build::nats::Bus::External(_) => status::Messaging::External,
        build::nats::Bus::Managed(_) => status::Messaging::Managed(
            readiness
                .get(&names::nats(&name))
                .copied()
                .unwrap_or_default(),
        ),
    };
    let status = status::address_space(
        previous,
        &desired,
        &observed,
        messaging,
        generation,
        Timestamp::now(),
    );
    patch_status(ctx, &namespace, &name, &status).await?;
    let phase = status.phase.unwrap_or(Phase::Pending);
    if previous.and_then(|s| s.phase) != Some(phase) {
        let not_ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ctx.event(
            space,
            if phase == Phase::Ready {
                EventType::Normal
            } else {
                EventType::Warning
            },
            phase.as_str(),
            format!("phase {}: {not_ready}", phase.as_str()),
        )
        .await;
    }
    Ok(if phase == Phase::Ready {
        Action::requeue(Duration::from_secs(ctx.config.resync_secs))
    } else {
        Action::requeue(PENDING_REQUEUE)
    })
}

/// The status (`Ready` false with `reason`, phase `phase`) and a warning event of an address space whose
/// objects are not applied.
async fn refuse(
    ctx: &Context,
    space: &AddressSpace,
    phase: Phase,
    reason: &str,
    message: String,
) -> Result<(), Error> {
    let namespace = space.namespace().unwrap_or_default();
    let status = status::address_space_blocked(
        space.status.as_ref(),
        phase,
        reason,
        &message,
        space.metadata.generation,
        Timestamp::now(),
    );
    patch_status(ctx, &namespace, &space.name_any(), &status).await?;
    ctx.event(space, EventType::Warning, reason, message).await;
    Ok(())
}

/// Creates a generated Secret that did not exist (`true` when this call created it). An existing one is
/// kept as it is: it must be allowed and hold the keys the pods read (checked before).
async fn create_secret(api: &Api<Secret>, wanted: &GeneratedSecret) -> Result<bool, Error> {
    match api
        .create(&PostParams::default(), &wanted.generate()?)
        .await
    {
        Ok(_) => Ok(true),
        // Created in between (another reconcile, or a user): keep theirs.
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Rewrites keys of a generated Secret that are derived from its other keys (the NATS `auth.conf`).
async fn refresh_derived(
    api: &Api<Secret>,
    name: &str,
    keys: Vec<(String, String)>,
) -> Result<(), Error> {
    use base64::Engine as _;
    let data: serde_json::Map<String, serde_json::Value> = keys
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": data })),
    )
    .await?;
    Ok(())
}

fn check_keys(secret: &Secret, wanted: &GeneratedSecret) -> Result<(), Error> {
    for key in wanted.keys() {
        if crate::context::secret_value(secret, key).is_none_or(|v| v.is_empty()) {
            return Err(Error::SecretIncomplete {
                name: wanted.name.clone(),
                key: (*key).to_owned(),
            });
        }
    }
    Ok(())
}

async fn delete_if_present(
    ctx: &Context,
    namespace: &str,
    kind: Kind,
    name: &str,
) -> Result<(), Error> {
    let dp = DeleteParams::background();
    let result = match kind {
        Kind::ConfigMap => ctx
            .api::<ConfigMap>(namespace)
            .delete(name, &dp)
            .await
            .map(drop),
        Kind::Deployment => ctx
            .api::<Deployment>(namespace)
            .delete(name, &dp)
            .await
            .map(drop),
        Kind::StatefulSet => ctx
            .api::<StatefulSet>(namespace)
            .delete(name, &dp)
            .await
            .map(drop),
        Kind::Service => ctx
            .api::<Service>(namespace)
            .delete(name, &dp)
            .await
            .map(drop),
        Kind::PodDisruptionBudget => ctx
            .api::<PodDisruptionBudget>(namespace)
            .delete(name, &dp)
            .await
            .map(drop),
        Kind::NetworkPolicy => ctx
            .api::<NetworkPolicy>(namespace)
            .delete(name, &dp)
            .await
            .map(drop),
    };
    match result {
        Err(e) if is_not_found(&e) => Ok(()),
        other => other.map_err(Error::from),
    }
}

async fn patch_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &AddressSpaceStatus,
) -> Result<(), Error> {
    let api: Api<AddressSpace> = ctx.api(namespace);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}
