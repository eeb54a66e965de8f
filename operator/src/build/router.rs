//! The router: a StatefulSet (each replica keeps its event store on its own volume), its Service of the
//! requested type (AMQPS for applications; plain AMQP too with `spec.router.plainAmqp`), an internal
//! Service with the plain port for the adapters, a headless Service for the pods' stable names, and its
//! config.
//!
//! The router has no setting that switches its plain listener off, and the adapters speak only plain
//! AMQP to it. So "plain AMQP off" means: not on the application-facing Service, not in the status,
//! and (NetworkPolicy) reachable only from this address space's adapters. With no adapter enabled at
//! all, the plain listener binds to the pod's loopback, which is as off as the router allows.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::json;

use super::pod::{PodBuilder, DATA_DIR, TLS_DIR};
use super::registry::claim_spec;
use super::{config_hash, config_map, names, ports, service, yaml, Component, Ctx, Desired};

/// The user name of the adapters' service credential at the router.
pub const ADAPTER_USER: &str = "ferry-adapter";

/// The router's config file (fields of `ferry_router::Config`).
pub(crate) fn config(ctx: &Ctx<'_>) -> serde_json::Value {
    let adapters = ctx.spec.adapters.mqtt.enabled || ctx.spec.adapters.http.enabled;
    let plain_host = if ctx.spec.router.plain_amqp || adapters {
        "0.0.0.0"
    } else {
        "127.0.0.1"
    };
    json!({
        "bind": format!("{plain_host}:{}", ports::AMQP),
        "tls_bind": format!("0.0.0.0:{}", ports::AMQPS),
        "tls": { "cert_path": format!("{TLS_DIR}/tls.crt"), "key_path": format!("{TLS_DIR}/tls.key") },
        "admin_bind": format!("0.0.0.0:{}", ports::ADMIN),
        "data_dir": DATA_DIR,
        "registry_url": ctx.registry_url(),
        "adapter_user": ADAPTER_USER,
    })
}

pub(crate) fn build(ctx: &Ctx<'_>, desired: &mut Desired) {
    let component = Component::Router;
    let spec = &ctx.spec.router;
    let name = names::router(ctx.name);
    let headless = names::router_headless(ctx.name);
    let config = yaml(&config(ctx));
    let hash = config_hash(&format!("{config}\ntls={}", ctx.tls_secret()));
    desired.config_maps.push(config_map(ctx, component, config));

    let pod = PodBuilder::new(ctx, component)
        .port("amqp", ports::AMQP)
        .port("amqps", ports::AMQPS)
        .env_secret("REGISTRY_TOKEN", &names::internal_token(ctx.name), "token")
        .env_secret(
            "ADAPTER_PASSWORD",
            &names::adapter_credentials(ctx.name),
            "password",
        )
        .secret_volume("tls", &ctx.tls_secret(), TLS_DIR)
        .volume(None, "data", DATA_DIR)
        .resources(spec.resources.as_ref(), "100m", "128Mi");

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
    desired.services.push(service(
        ctx,
        names::router_internal(ctx.name),
        component,
        "ClusterIP",
        &[("amqp", ports::AMQP)],
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
    desired.endpoints.amqp = spec.plain_amqp.then(|| ctx.address(&name, ports::AMQP));
    desired.endpoints.amqps = Some(ctx.address(&name, ports::AMQPS));
}
