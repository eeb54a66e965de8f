//! The `AddressSpace` reconcile: validate and build ([`crate::build`]), create the generated Secrets
//! that are missing, server-side apply every object, delete a disabled component's objects, then write
//! the status from the workloads' readiness and record an event when the phase changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt as _};
use serde_json::json;

use crate::build::{self, names, BuildError, Component, GeneratedSecret, Kind};
use crate::context::Context;
use crate::crd::{AddressSpace, AddressSpaceStatus, Phase};
use crate::error::{is_conflict, is_not_found, Error};
use crate::status::{self, Readiness};

const KIND: &str = "AddressSpace";
/// How soon to look again while components are starting.
const PENDING_REQUEUE: Duration = Duration::from_secs(10);

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
        Err(e @ BuildError::InvalidSpec(_)) => {
            let message = e.to_string();
            let status = status::address_space_failed(
                previous,
                "InvalidSpec",
                &message,
                generation,
                Timestamp::now(),
            );
            patch_status(ctx, &namespace, &name, &status).await?;
            ctx.event(space, EventType::Warning, "InvalidSpec", message)
                .await;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e.into()),
    };

    let secrets: Api<Secret> = ctx.api(&namespace);
    for wanted in &desired.secrets {
        if ensure_secret(&secrets, wanted).await? {
            ctx.event(
                space,
                EventType::Normal,
                "SecretGenerated",
                format!("generated Secret {}", wanted.name),
            )
            .await;
        }
    }

    // The user's Secrets: a missing one keeps the pods from starting; say which, and go on (the pods
    // start by themselves once it appears).
    let mut missing = Vec::new();
    for (secret, key) in &desired.referenced {
        let present = secrets
            .get_opt(secret)
            .await?
            .is_some_and(|s| crate::context::secret_value(&s, key).is_some());
        if !present {
            missing.push(format!("Secret {secret} (key {key})"));
        }
    }
    if !missing.is_empty() {
        ctx.event(
            space,
            EventType::Warning,
            "SecretMissing",
            format!("waiting for {}", missing.join(", ")),
        )
        .await;
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
    let mut status =
        status::address_space(previous, &desired, &observed, generation, Timestamp::now());
    if let Some(ready) = status.conditions.iter_mut().find(|c| c.type_ == "Ready") {
        if !missing.is_empty() && ready.status != "True" {
            ready.message = format!("{}; waiting for {}", ready.message, missing.join(", "));
        }
    }
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

/// Creates a generated Secret when it does not exist (`true` when it did not); an existing one is kept
/// as it is, but must hold the keys the pods read.
async fn ensure_secret(api: &Api<Secret>, wanted: &GeneratedSecret) -> Result<bool, Error> {
    if let Some(existing) = api.get_opt(&wanted.name).await? {
        check_keys(&existing, wanted)?;
        return Ok(false);
    }
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
        Kind::Service => ctx
            .api::<Service>(namespace)
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
