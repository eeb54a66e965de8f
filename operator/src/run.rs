//! `ferry-operator run`: the admin server, leader election, and one controller per kind.

use std::sync::Arc;

use anyhow::Context as _;
use ferry_core::admin::Admin;
use ferry_core::shutdown::Shutdown;
use futures_util::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt as _};

use crate::crd::{AddressSpace, Tenant};
use crate::leader::LeaseLock;
use crate::metrics::Metrics;
use crate::{address_space, tenant, Config, Context};

/// How long running reconciles may take to finish after a shutdown.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the operator until `shutdown` (or until it loses the leader lease, which is an error: the pod
/// restarts and becomes a candidate again).
pub async fn run(config: Config, admin: Admin, shutdown: Shutdown) -> anyhow::Result<()> {
    let readiness = admin.readiness("operator");
    let metrics = Metrics::new(&admin);
    let listener = tokio::net::TcpListener::bind(config.admin_bind)
        .await
        .with_context(|| format!("binding the admin server to {}", config.admin_bind))?;
    tracing::info!(addr = %listener.local_addr()?, "admin server listening");
    tokio::spawn(admin.clone().serve(listener, shutdown.clone()));

    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    run_with_client(client, config, metrics, readiness, shutdown).await
}

/// [`run`] with a given client (tests hand in a mocked API server).
pub async fn run_with_client(
    client: Client,
    mut config: Config,
    metrics: Metrics,
    readiness: ferry_core::admin::Readiness,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    if config.identity.is_empty() {
        config.identity = format!("ferry-operator-{}", crate::build::secrets::random_token());
    }
    let lock = config.leader_election.then(|| {
        LeaseLock::new(
            client.clone(),
            &config.lease_namespace,
            &config.lease_name,
            &config.identity,
        )
    });
    // A standby replica is healthy: ready means "the process works", not "leads".
    readiness.set(true);
    if let Some(lock) = &lock {
        tracing::info!(identity = lock.identity(), "waiting for the leader lease");
        tokio::select! {
            () = lock.acquire() => {}
            () = shutdown.clone().wait() => return Ok(()),
        }
        tracing::info!(identity = lock.identity(), "leading");
        metrics.set_leader(true);
    }

    let ctx = Arc::new(Context::new(
        client.clone(),
        config.clone(),
        metrics.clone(),
    ));
    let controllers = controllers(client, &config, ctx, shutdown.clone());
    // The controllers finish their running reconciles after the shutdown; one that hangs on an
    // unreachable registry is cut off after a grace period (reconciles are idempotent).
    let deadline = async {
        shutdown.clone().wait().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let keep = async {
        match &lock {
            Some(lock) => lock.keep().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        () = controllers => Ok(()),
        () = deadline => {
            tracing::warn!("reconciles still running after the grace period; stopping anyway");
            Ok(())
        }
        () = keep => Err(anyhow::anyhow!("lost the leader lease")),
    };
    metrics.set_leader(false);
    if let (Some(lock), Ok(())) = (&lock, &result) {
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "cannot release the leader lease");
        }
    }
    result
}

async fn controllers(client: Client, config: &Config, ctx: Arc<Context>, shutdown: Shutdown) {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = config.watch_namespace.as_deref();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=ferry-operator");

    let spaces = Controller::new(api::<AddressSpace>(&client, ns), watcher::Config::default())
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<StatefulSet>(&client, ns), owned)
        .graceful_shutdown_on(shutdown.clone().wait())
        .run(
            address_space::reconcile,
            address_space::error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "AddressSpace controller");
            }
        });

    let tenants = Controller::new(api::<Tenant>(&client, ns), watcher::Config::default());
    let store = tenants.store();
    // A tenant waiting for its address space goes as soon as the address space changes.
    let tenants = tenants
        .watches(
            api::<AddressSpace>(&client, ns),
            watcher::Config::default(),
            move |space: AddressSpace| {
                let namespace = space.namespace();
                let name = space.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|t| t.namespace() == namespace && t.spec.address_space == name)
                    .map(|t| ObjectRef::from_obj(t.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown.wait())
        .run(tenant::reconcile, tenant::error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "Tenant controller");
            }
        });
    futures_util::future::join(spaces, tenants).await;
}
