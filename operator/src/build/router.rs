//! The router: its Service of the requested type (AMQPS for applications; plain AMQP too with
//! `spec.router.plainAmqp`) and its config; and
//! - embedded mode: a StatefulSet (each replica keeps its event store on its own volume), an internal
//!   Service for the adapters (AMQPS when they can verify the router's certificate, else plain AMQP that
//!   only they may reach) and a headless Service for the pods' stable names;
//! - `nats` mode: a stateless Deployment (JetStream keeps the events), and no internal Services: the
//!   adapters publish to NATS. Switching modes deletes the other mode's workload.
//!
//! The router has no setting that switches its plain listener off. So "plain AMQP off" means: not on
//! the application-facing Service, not in the status, (NetworkPolicy) reachable only from this address
//! space's adapters, and bound to the pod's loopback when no adapter needs it.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::json;

use super::pod::{no_loss_rollout, PodBuilder, DATA_DIR, SECRETS_DIR, TLS_DIR};
use super::registry::claim_spec;
use super::{
    config_hash, config_map, names, nats, ports, secret_files, service, yaml, Component, Ctx,
    Desired, Kind,
};

/// The user name of the adapters' service credential at the router.
pub const ADAPTER_USER: &str = "ferry-adapter";

/// The router's config file (fields of `ferry_router::Config`).
pub(crate) fn config(ctx: &Ctx<'_>) -> serde_json::Value {
    let adapters = ctx.spec.adapters.mqtt.enabled || ctx.spec.adapters.http.enabled;
    let adapters_on_plain = adapters && !ctx.bus.is_nats() && !ctx.router_tls();
    let plain_host = if ctx.spec.router.plain_amqp || adapters_on_plain {
        "0.0.0.0"
    } else {
        "127.0.0.1"
    };
    let mut config = json!({
        "bind": format!("{plain_host}:{}", ports::AMQP),
        "tls_bind": format!("0.0.0.0:{}", ports::AMQPS),
        "tls": { "cert_path": format!("{TLS_DIR}/tls.crt"), "key_path": format!("{TLS_DIR}/tls.key") },
        "admin_bind": format!("0.0.0.0:{}", ports::ADMIN),
        "data_dir": DATA_DIR,
        "registry_url": ctx.registry_url(),
        "adapter_user": ADAPTER_USER,
        "registry_ca_file": format!("{SECRETS_DIR}/ca.crt"),
        "registry_token_file": format!("{SECRETS_DIR}/registry-token"),
        "adapter_password_file": format!("{SECRETS_DIR}/adapter-password"),
    });
    if let Some(messaging) = nats::messaging(ctx, Component::Router) {
        config["messaging"] = messaging;
        if let Some(c) = config.as_object_mut() {
            c.remove("data_dir");
        }
    }
    config
}

pub(crate) fn build(ctx: &Ctx<'_>, desired: &mut Desired) {
    let component = Component::Router;
    let spec = &ctx.spec.router;
    let name = names::router(ctx.name);
    let headless = names::router_headless(ctx.name);
    let config = yaml(&config(ctx));
    let hash = config_hash(&format!("{config}\ntls={}", ctx.tls_secret()));
    desired.config_maps.push(config_map(ctx, component, config));

    let mut files = nats::client_files(ctx, component);
    files.extend([
        secret_files::ca(ctx),
        secret_files::registry_token(ctx),
        (
            names::adapter_credentials(ctx.name),
            "password".to_owned(),
            "adapter-password".to_owned(),
        ),
    ]);
    let pod = PodBuilder::new(ctx, component)
        .port("amqp", ports::AMQP)
        .port("amqps", ports::AMQPS)
        .secret_files("secrets", &secret_files::unique(files), SECRETS_DIR)
        .secret_volume("tls", &ctx.tls_secret(), TLS_DIR)
        .resources(spec.resources.as_ref(), "100m", "128Mi");

    if ctx.bus.is_nats() {
        // Nothing to keep and no volume: JetStream holds the events (the router reads no data_dir).
        desired.deployments.push(Deployment {
            metadata: ctx.meta(name.clone(), Some(component)),
            spec: Some(DeploymentSpec {
                replicas: Some(spec.replicas),
                selector: LabelSelector {
                    match_labels: Some(ctx.selector(component)),
                    ..LabelSelector::default()
                },
                strategy: Some(no_loss_rollout()),
                template: pod.template(ctx, hash),
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        });
        desired.absent.extend([
            (Kind::StatefulSet, name.clone()),
            (Kind::Service, headless.clone()),
            (Kind::Service, names::router_internal(ctx.name)),
        ]);
    } else {
        let pod = pod.volume(None, "data", DATA_DIR);
        desired.stateful_sets.push(StatefulSet {
            metadata: ctx.meta(name.clone(), Some(component)),
            spec: Some(StatefulSetSpec {
                replicas: Some(spec.replicas),
                service_name: Some(headless.clone()),
                // Replicas do not depend on each other: start and stop them together.
                pod_management_policy: Some("Parallel".to_owned()),
                selector: LabelSelector {
                    match_labels: Some(ctx.selector(component)),
                    ..LabelSelector::default()
                },
                template: pod.template(ctx, hash),
                volume_claim_templates: Some(vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some("data".to_owned()),
                        labels: Some(ctx.selector(component)),
                        ..ObjectMeta::default()
                    },
                    spec: Some(claim_spec(
                        &spec.storage.size,
                        spec.storage.storage_class_name.as_deref(),
                    )),
                    ..PersistentVolumeClaim::default()
                }]),
                ..StatefulSetSpec::default()
            }),
            ..StatefulSet::default()
        });
        desired.absent.push((Kind::Deployment, name.clone()));
    }
    let public: &[(&str, i32)] = if spec.plain_amqp {
        &[("amqp", ports::AMQP), ("amqps", ports::AMQPS)]
    } else {
        &[("amqps", ports::AMQPS)]
    };
    desired.services.push(service(
        ctx,
        name.clone(),
        component,
        spec.service.kind.as_str(),
        public,
        false,
    ));
    if !ctx.bus.is_nats() {
        let internal: &[(&str, i32)] = if ctx.router_tls() {
            &[("amqps", ports::AMQPS)]
        } else {
            &[("amqp", ports::AMQP)]
        };
        desired.services.push(service(
            ctx,
            names::router_internal(ctx.name),
            component,
            "ClusterIP",
            internal,
            false,
        ));
        desired.services.push(service(
            ctx,
            headless,
            component,
            "ClusterIP",
            &[
                ("amqp", ports::AMQP),
                ("amqps", ports::AMQPS),
                ("admin", ports::ADMIN),
            ],
            true,
        ));
    }
    desired.endpoints.amqp = spec.plain_amqp.then(|| ctx.address(&name, ports::AMQP));
    desired.endpoints.amqps = Some(ctx.address(&name, ports::AMQPS));
}
