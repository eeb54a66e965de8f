//! A protocol adapter (MQTT or HTTP): a Deployment, its Service of the requested type and its config;
//! or, when disabled, the names of those objects to delete.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};

use super::pod::no_loss_rollout;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::json;

use super::pod::{PodBuilder, SECRETS_DIR, TLS_DIR};
use super::router::ADAPTER_USER;
use super::{
    config_hash, config_map, names, nats, ports, secret_files, service, yaml, Component, Ctx,
    Desired, Kind,
};
use crate::crd::AdapterSpec;

/// The plain and TLS ports and their names.
fn endpoints(component: Component) -> [(&'static str, i32); 2] {
    match component {
        Component::HttpAdapter => [("http", ports::HTTP), ("https", ports::HTTPS)],
        _ => [("mqtt", ports::MQTT), ("mqtts", ports::MQTTS)],
    }
}

fn spec<'a>(ctx: &'a Ctx<'_>, component: Component) -> &'a AdapterSpec {
    match component {
        Component::HttpAdapter => &ctx.spec.adapters.http,
        _ => &ctx.spec.adapters.mqtt,
    }
}

/// The adapter's config file (fields of `ferry_mqtt_adapter::Config` / `ferry_http_adapter::Config`).
/// `instance_id` comes from the pod name (env); the secrets from Secret files. In `nats` mode the
/// adapter talks to NATS, not to the router.
pub(crate) fn config(ctx: &Ctx<'_>, component: Component) -> serde_json::Value {
    let [(_, plain), (_, tls)] = endpoints(component);
    let mut config = json!({
        "bind": format!("0.0.0.0:{plain}"),
        "tls_bind": format!("0.0.0.0:{tls}"),
        "tls": { "cert_path": format!("{TLS_DIR}/tls.crt"), "key_path": format!("{TLS_DIR}/tls.key") },
        "admin_bind": format!("0.0.0.0:{}", ports::ADMIN),
        "registry_url": ctx.registry_url(),
        "registry_ca_file": format!("{SECRETS_DIR}/ca.crt"),
        "registry_token_file": format!("{SECRETS_DIR}/registry-token"),
    });
    match nats::messaging(ctx, component) {
        Some(messaging) => config["messaging"] = messaging,
        None => {
            let router_tls = ctx.router_tls();
            let port = if router_tls {
                ports::AMQPS
            } else {
                ports::AMQP
            };
            config["router_address"] = json!(ctx.address(&names::router_internal(ctx.name), port));
            config["router_user"] = json!(ADAPTER_USER);
            config["router_tls"] = json!(router_tls);
            config["router_password_file"] = json!(format!("{SECRETS_DIR}/router-password"));
            if router_tls {
                config["router_ca_file"] = json!(format!("{SECRETS_DIR}/{}", router_ca(ctx).2));
            }
        }
    }
    config
}

/// The CA that the router's certificate chains to: the address space's, or the one named with the
/// user's certificate (`spec.tls.caKey`).
fn router_ca(ctx: &Ctx<'_>) -> secret_files::File {
    match ctx
        .spec
        .tls
        .as_ref()
        .and_then(|t| Some((t, t.ca_key.as_ref()?)))
    {
        Some((tls, key)) => (
            tls.secret_name.clone(),
            key.clone(),
            "router-ca.crt".to_owned(),
        ),
        None => secret_files::ca(ctx),
    }
}

pub(crate) fn build(ctx: &Ctx<'_>, component: Component, desired: &mut Desired) {
    let spec = spec(ctx, component);
    let name = names::workload(ctx.name, component);
    if !spec.enabled {
        desired.absent.extend([
            (Kind::Deployment, name.clone()),
            (Kind::Service, name),
            (Kind::ConfigMap, names::config(ctx.name, component)),
        ]);
        return;
    }
    let config = yaml(&config(ctx, component));
    let hash = config_hash(&format!("{config}\ntls={}", ctx.tls_secret()));
    desired.config_maps.push(config_map(ctx, component, config));
    let [(plain_name, plain), (tls_name, tls)] = endpoints(component);
    let embedded = !ctx.bus.is_nats();
    let mut files = nats::client_files(ctx, component);
    files.extend([secret_files::ca(ctx), secret_files::registry_token(ctx)]);
    if embedded {
        files.push((
            names::adapter_credentials(ctx.name),
            "password".to_owned(),
            "router-password".to_owned(),
        ));
        if ctx.router_tls() {
            files.push(router_ca(ctx));
        }
    }
    let pod = PodBuilder::new(ctx, component)
        .port(plain_name, plain)
        .port(tls_name, tls)
        .env_field("INSTANCE_ID", "metadata.name")
        .secret_files("secrets", &secret_files::unique(files), SECRETS_DIR)
        .secret_volume("tls", &ctx.tls_secret(), TLS_DIR)
        .resources(spec.resources.as_ref(), "50m", "64Mi");
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
    desired.services.push(service(
        ctx,
        name.clone(),
        component,
        spec.service.kind.as_str(),
        &[(plain_name, plain), (tls_name, tls)],
        false,
    ));
    let (plain_ep, tls_ep) = (
        Some(ctx.address(&name, plain)),
        Some(ctx.address(&name, tls)),
    );
    match component {
        Component::HttpAdapter => {
            desired.endpoints.http = plain_ep;
            desired.endpoints.https = tls_ep;
        }
        _ => {
            desired.endpoints.mqtt = plain_ep;
            desired.endpoints.mqtts = tls_ep;
        }
    }
}
