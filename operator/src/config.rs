//! The operator's configuration (`FERRY_OPERATOR_*`, see docs/operator.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The admin server (`/live`, `/ready`, `/metrics`).
    pub admin_bind: SocketAddr,
    /// Image registry and path prefix of the components an `AddressSpace` does not name one for.
    pub image_registry: String,
    /// Image tag of the components an `AddressSpace` does not name one for.
    pub image_tag: String,
    /// Take a `coordination.k8s.io` Lease before reconciling, so only one replica acts.
    pub leader_election: bool,
    /// The Lease's name (in `lease_namespace`).
    pub lease_name: String,
    /// Where the Lease lives; the chart sets it from the pod's namespace (`POD_NAMESPACE`).
    pub lease_namespace: String,
    /// This replica's identity in the Lease; the pod name (`POD_NAME`) when empty.
    pub identity: String,
    /// Watch one namespace only; all namespaces when absent.
    pub watch_namespace: Option<String>,
    /// Reach every address space's registry at this base URL instead of its in-cluster Service
    /// (`http://<name>-registry.<namespace>.svc:28080`): for running the operator outside the cluster and
    /// for tests.
    pub registry_url: Option<String>,
    /// Seconds between reconciles of a healthy resource (drift repair, readiness polling).
    pub resync_secs: u64,
    /// Image registries (and path prefixes) an `AddressSpace` may name in `spec.image.registry`, besides
    /// `image_registry`, which is always allowed. An entry allows itself and the paths below it
    /// (`registry.example.com/iot` allows `registry.example.com/iot/ferry`, not `.../iot-x`).
    pub allowed_image_registries: Vec<String>,
    /// Secrets an `AddressSpace` may have mounted although they lack the label `ferry.dev/allow: "true"`:
    /// `namespace/name`, or `name` for that name in any namespace.
    pub allowed_secrets: Vec<String>,
    /// Build a NetworkPolicy per component of every address space (docs/kubernetes.md).
    pub network_policies: bool,
    /// The namespace of the operator's pods, which the registry's NetworkPolicy lets in (the chart sets
    /// it from the pod's namespace, `POD_NAMESPACE`).
    pub operator_namespace: String,
    /// Labels of the operator's pods, which the registry's NetworkPolicy lets in.
    pub operator_pod_labels: BTreeMap<String, String>,
    /// The image of managed NATS nodes (`spec.messaging.nats.managed`); its registry is allowed.
    pub nats_image: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin_bind: SocketAddr::from(([0, 0, 0, 0], 9090)),
            image_registry: "ghcr.io/ferry-iot".into(),
            image_tag: env!("CARGO_PKG_VERSION").into(),
            leader_election: true,
            lease_name: "ferry-operator".into(),
            lease_namespace: "default".into(),
            identity: String::new(),
            watch_namespace: None,
            registry_url: None,
            resync_secs: 300,
            allowed_image_registries: Vec::new(),
            allowed_secrets: Vec::new(),
            network_policies: true,
            operator_namespace: "default".into(),
            operator_pod_labels: BTreeMap::from([
                ("app.kubernetes.io/part-of".into(), "ferry".into()),
                ("app.kubernetes.io/component".into(), "operator".into()),
            ]),
            nats_image: crate::build::DEFAULT_NATS_IMAGE.into(),
        }
    }
}

impl Config {
    /// Refuses combinations serde cannot see; the error names the field.
    pub fn validate(&self) -> Result<(), ferry_core::config::ConfigError> {
        let field = ferry_core::config::ConfigError::invalid;
        if self.image_registry.is_empty() {
            return Err(field("image_registry", "must not be empty"));
        }
        if self.image_tag.is_empty() {
            return Err(field("image_tag", "must not be empty"));
        }
        if self.nats_image.is_empty() || self.nats_image.contains(char::is_whitespace) {
            return Err(field(
                "nats_image",
                "must be an image reference, e.g. docker.io/library/nats:2.11",
            ));
        }
        if self.leader_election && (self.lease_name.is_empty() || self.lease_namespace.is_empty()) {
            return Err(field(
                "lease_name",
                "lease_name and lease_namespace must be set when leader_election is on",
            ));
        }
        if let Some(url) = &self.registry_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(field("registry_url", "must be an http:// or https:// URL"));
            }
        }
        if self.resync_secs == 0 {
            return Err(field("resync_secs", "must be at least 1"));
        }
        if self
            .allowed_image_registries
            .iter()
            .any(|r| r.trim_end_matches('/').is_empty() || r.contains(char::is_whitespace))
        {
            return Err(field(
                "allowed_image_registries",
                "entries must be registries or path prefixes without spaces, e.g. registry.example.com/ferry",
            ));
        }
        if self
            .allowed_secrets
            .iter()
            .any(|s| s.is_empty() || s.split('/').count() > 2 || s.split('/').any(str::is_empty))
        {
            return Err(field(
                "allowed_secrets",
                "entries must be `namespace/name` or `name`",
            ));
        }
        if self.network_policies
            && (self.operator_namespace.is_empty() || self.operator_pod_labels.is_empty())
        {
            return Err(field(
                "operator_pod_labels",
                "operator_namespace and operator_pod_labels must be set when network_policies is on (the registry's NetworkPolicy lets the operator in by them)",
            ));
        }
        Ok(())
    }
}

/// Drops the variables Kubernetes injects for Services (`<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT`,
/// `<SERVICE>_PORT_9090_TCP_ADDR`, ...). A Service named `ferry-operator-metrics` in the operator's
/// namespace becomes `FERRY_OPERATOR_METRICS_SERVICE_HOST` and the like, which the layered config would
/// take for unknown fields and refuse (exit 64). No config field ends like these.
pub fn without_service_links(env: Vec<(String, String)>) -> Vec<(String, String)> {
    env.into_iter()
        .filter(|(k, _)| !is_service_link(k))
        .collect()
}

fn is_service_link(key: &str) -> bool {
    if key.ends_with("_SERVICE_HOST") || key.ends_with("_PORT") || key.contains("_SERVICE_PORT") {
        return true;
    }
    // `<SERVICE>_PORT_<number>_<PROTO>[_PROTO|_PORT|_ADDR]`
    let Some((_, rest)) = key.rsplit_once("_PORT_") else {
        return false;
    };
    let mut parts = rest.split('_');
    let number = parts
        .next()
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let proto = parts
        .next()
        .is_some_and(|p| matches!(p, "TCP" | "UDP" | "SCTP"));
    let tail = parts
        .next()
        .is_none_or(|t| matches!(t, "PROTO" | "PORT" | "ADDR"));
    number && proto && tail && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardening_settings_are_checked_and_load_from_the_environment() {
        let sources = ferry_core::config::Sources {
            env_prefix: "FERRY_OPERATOR_".into(),
            env: vec![
                (
                    "FERRY_OPERATOR_ALLOWED_IMAGE_REGISTRIES".into(),
                    r#"["registry.example.com/iot"]"#.into(),
                ),
                (
                    "FERRY_OPERATOR_ALLOWED_SECRETS".into(),
                    r#"["prod/corp-cert", "pg"]"#.into(),
                ),
                ("FERRY_OPERATOR_NETWORK_POLICIES".into(), "false".into()),
                (
                    "FERRY_OPERATOR_OPERATOR_POD_LABELS".into(),
                    r#"{"app.kubernetes.io/name": "ferry", "app.kubernetes.io/component": "operator"}"#
                        .into(),
                ),
            ],
            ..Default::default()
        };
        let c: Config = ferry_core::config::load(&sources).expect("loads");
        c.validate().expect("valid");
        assert_eq!(c.allowed_image_registries, ["registry.example.com/iot"]);
        assert_eq!(c.allowed_secrets, ["prod/corp-cert", "pg"]);
        assert!(!c.network_policies);
        assert_eq!(c.operator_pod_labels["app.kubernetes.io/name"], "ferry");
        assert!(Config::default().network_policies, "on by default");

        for (bad, field) in [
            (
                Config {
                    allowed_image_registries: vec!["/".into()],
                    ..Config::default()
                },
                "allowed_image_registries",
            ),
            (
                Config {
                    allowed_secrets: vec!["a/b/c".into()],
                    ..Config::default()
                },
                "allowed_secrets",
            ),
            (
                Config {
                    allowed_secrets: vec!["prod/".into()],
                    ..Config::default()
                },
                "allowed_secrets",
            ),
            (
                Config {
                    operator_pod_labels: BTreeMap::new(),
                    ..Config::default()
                },
                "operator_pod_labels",
            ),
        ] {
            assert_eq!(bad.validate().expect_err(field).field(), Some(field));
        }
        // Without NetworkPolicies the operator's pods need not be known.
        let off = Config {
            network_policies: false,
            operator_pod_labels: BTreeMap::new(),
            ..Config::default()
        };
        off.validate().expect("valid");
    }

    #[test]
    fn service_link_variables_are_not_config() {
        let env: Vec<(String, String)> = [
            "FERRY_OPERATOR_METRICS_SERVICE_HOST",
            "FERRY_OPERATOR_METRICS_SERVICE_PORT",
            "FERRY_OPERATOR_METRICS_SERVICE_PORT_METRICS",
            "FERRY_OPERATOR_METRICS_PORT",
            "FERRY_OPERATOR_METRICS_PORT_9090_TCP",
            "FERRY_OPERATOR_METRICS_PORT_9090_TCP_ADDR",
            "FERRY_OPERATOR_METRICS_PORT_9090_TCP_PROTO",
            "FERRY_OPERATOR_LEASE_NAME",
            "FERRY_OPERATOR_IMAGE_TAG",
        ]
        .iter()
        .map(|k| ((*k).to_owned(), "10.0.0.1".to_owned()))
        .collect();
        let kept: Vec<String> = without_service_links(env)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            kept,
            ["FERRY_OPERATOR_LEASE_NAME", "FERRY_OPERATOR_IMAGE_TAG"]
        );

        // With the links removed the operator's config loads.
        let sources = ferry_core::config::Sources {
            env_prefix: "FERRY_OPERATOR_".into(),
            env: without_service_links(vec![
                (
                    "FERRY_OPERATOR_METRICS_PORT".into(),
                    "tcp://10.0.0.1:9090".into(),
                ),
                ("FERRY_OPERATOR_LEASE_NAME".into(), "lease".into()),
            ]),
            ..Default::default()
        };
        let c: Config = ferry_core::config::load(&sources).expect("loads");
        assert_eq!(c.lease_name, "lease");
        // A real unknown key is still refused.
        let sources = ferry_core::config::Sources {
            env_prefix: "FERRY_OPERATOR_".into(),
            env: without_service_links(vec![("FERRY_OPERATOR_LEASE_NAM".into(), "x".into())]),
            ..Default::default()
        };
        assert!(ferry_core::config::load::<Config>(&sources).is_err());
    }
}
