//! The registry: a Deployment (one replica on SQLite with its PVC; any number on PostgreSQL, whose URL
//! comes from a Secret), its Service and its config.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Volume,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::json;

use super::pod::{PodBuilder, DATA_DIR, INTERNAL_TLS_DIR, SECRETS_DIR};
use super::{config_hash, config_map, names, ports, service, yaml, Component, Ctx, Desired};
use crate::crd::DatabaseKind;

const ADMIN_TOKEN_DIR: &str = "/etc/ferry/admin-token";
const INTERNAL_TOKEN_DIR: &str = "/etc/ferry/internal-token";
const SIGNING_KEY_DIR: &str = "/etc/ferry/signing-key";

/// The registry's config file (fields of `ferry_registry::Config`): it serves its API over TLS with the
/// address space's certificate and reads its secrets, the PostgreSQL URL too, from files.
pub(crate) fn config(ctx: &Ctx<'_>) -> serde_json::Value {
    let mut config = json!({
        "bind": format!("0.0.0.0:{}", ports::REGISTRY),
        "admin_bind": format!("0.0.0.0:{}", ports::ADMIN),
        "data_dir": DATA_DIR,
        "admin_token_file": format!("{ADMIN_TOKEN_DIR}/token"),
        "internal_token_file": format!("{INTERNAL_TOKEN_DIR}/token"),
        "signing_key_file": format!("{SIGNING_KEY_DIR}/signing.key"),
        "tls": {
            "cert_path": format!("{INTERNAL_TLS_DIR}/tls.crt"),
            "key_path": format!("{INTERNAL_TLS_DIR}/tls.key"),
        },
    });
    if ctx.spec.registry.database.kind == DatabaseKind::Postgresql {
        config["database_url_file"] = json!(format!("{SECRETS_DIR}/database-url"));
    }
    // In nats mode device presence lives in NATS, where the routers keep it; the registry reads it
    // from there for the presence API and the console.
    if let Some(messaging) = super::nats::messaging(ctx, Component::Registry) {
        config["messaging"] = messaging;
    }
    config
}

pub(crate) fn build(ctx: &Ctx<'_>, desired: &mut Desired) {
    let component = Component::Registry;
    let spec = &ctx.spec.registry;
    let name = names::registry(ctx.name);
    let config = yaml(&config(ctx));
    let hash = config_hash(&config);
    desired.config_maps.push(config_map(ctx, component, config));

    let mut pod = PodBuilder::new(ctx, component)
        .port("http", ports::REGISTRY)
        .secret_volume(
            "admin-token",
            &names::admin_token(ctx.name),
            ADMIN_TOKEN_DIR,
        )
        .secret_volume(
            "internal-token",
            &names::internal_token(ctx.name),
            INTERNAL_TOKEN_DIR,
        )
        .secret_volume(
            "signing-key",
            &names::signing_key(ctx.name),
            SIGNING_KEY_DIR,
        )
        .secret_volume("internal-tls", &names::tls(ctx.name), INTERNAL_TLS_DIR)
        .resources(spec.resources.as_ref(), "50m", "64Mi");
    let sqlite = spec.database.kind == DatabaseKind::Sqlite;
    // One directory of secret files: the NATS password and CA (nats mode), the PostgreSQL URL.
    let mut files = super::nats::client_files(ctx, component);
    if let (DatabaseKind::Postgresql, Some(pg)) = (&spec.database.kind, &spec.database.postgresql) {
        files.push((
            pg.secret_name.clone(),
            pg.key.clone(),
            "database-url".to_owned(),
        ));
    }
    if !files.is_empty() {
        pod = pod.secret_files("secrets", &super::secret_files::unique(files), SECRETS_DIR);
    }
    match (&spec.database.kind, &spec.database.postgresql) {
        (DatabaseKind::Postgresql, Some(pg)) => {
            desired
                .referenced
                .push((pg.secret_name.clone(), pg.key.clone()));
            pod = pod.empty_dir("data", DATA_DIR);
        }
        _ => {
            let claim = names::registry_data(ctx.name);
            desired.pvcs.push(pvc(
                ctx,
                claim.clone(),
                &spec.database.storage.size,
                spec.database.storage.storage_class_name.as_deref(),
            ));
            pod = pod.volume(
                Some(Volume {
                    name: "data".to_owned(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim,
                        read_only: Some(false),
                    }),
                    ..Volume::default()
                }),
                "data",
                DATA_DIR,
            );
        }
    }

    desired.deployments.push(Deployment {
        metadata: ctx.meta(name.clone(), Some(component)),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(ctx.selector(component)),
                ..LabelSelector::default()
            },
            // One writer on the SQLite volume: the old pod must be gone before the new one opens it.
            strategy: Some(if sqlite {
                DeploymentStrategy {
                    type_: Some("Recreate".to_owned()),
                    ..DeploymentStrategy::default()
                }
            } else {
                super::pod::no_loss_rollout()
            }),
            template: pod.template(ctx, hash),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    });
    desired.services.push(service(
        ctx,
        name.clone(),
        component,
        "ClusterIP",
        &[("http", ports::REGISTRY), ("admin", ports::ADMIN)],
        false,
    ));
    desired.endpoints.registry = Some(ctx.address(&name, ports::REGISTRY));
}

/// A ReadWriteOnce claim of `size`.
pub(crate) fn pvc(
    ctx: &Ctx<'_>,
    name: String,
    size: &str,
    storage_class: Option<&str>,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ctx.meta(name, Some(Component::Registry)),
        spec: Some(claim_spec(size, storage_class)),
        ..PersistentVolumeClaim::default()
    }
}

pub(crate) fn claim_spec(size: &str, storage_class: Option<&str>) -> PersistentVolumeClaimSpec {
    PersistentVolumeClaimSpec {
        access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
        resources: Some(VolumeResourceRequirements {
            requests: Some(BTreeMap::from([(
                "storage".to_owned(),
                Quantity(size.to_owned()),
            )])),
            ..VolumeResourceRequirements::default()
        }),
        storage_class_name: storage_class.map(str::to_owned),
        ..PersistentVolumeClaimSpec::default()
    }
}
