//! What every component pod has: the security context, probes on the admin port, the config volume, a
//! writable `/tmp`, resource requests, and the config-hash annotation.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ports, Component, Ctx, CONFIG_HASH_ANNOTATION, CONFIG_KEY};

/// The uid and gid of the runtime user in every Ferry image.
pub const RUNTIME_UID: i64 = 65532;
/// Where the component config is mounted.
pub const CONFIG_PATH: &str = "/etc/ferry/config.yaml";
/// The only writable data path in the images.
pub const DATA_DIR: &str = "/var/lib/ferry";
/// Where the TLS Secret is mounted.
pub const TLS_DIR: &str = "/etc/ferry/tls";
/// Where the address space's generated certificate (`<name>-tls`: `ca.crt`, `tls.crt`, `tls.key`) is
/// mounted in the pods that serve internal links over TLS (registry).
pub const INTERNAL_TLS_DIR: &str = "/etc/ferry/internal-tls";
/// Where secret files are mounted, one file per key: `ca.crt` (the address space's CA),
/// `registry-token`, `router-password`, `adapter-password`, `database-url`, `nats-password`,
/// `nats-ca.crt` (an external NATS's CA), `router-ca.crt` (the CA of the user's certificate).
pub const SECRETS_DIR: &str = "/etc/ferry/secrets";

/// A pod under construction: the container plus its volumes.
pub(crate) struct PodBuilder {
    component: Component,
    container: Container,
    volumes: Vec<Volume>,
}

impl PodBuilder {
    pub fn new(ctx: &Ctx<'_>, component: Component) -> Self {
        let container = Container {
            name: component.label().to_owned(),
            image: Some(ctx.image(component)),
            image_pull_policy: Some(ctx.spec.image.pull_policy.as_str().to_owned()),
            command: Some(vec![format!("/usr/local/bin/{}", component.binary())]),
            args: Some(vec!["--config".to_owned(), CONFIG_PATH.to_owned()]),
            ports: Some(vec![port("admin", ports::ADMIN)]),
            security_context: Some(container_security()),
            liveness_probe: Some(probe("/live", 3)),
            readiness_probe: Some(probe("/ready", 1)),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "config".to_owned(),
                    mount_path: CONFIG_PATH.to_owned(),
                    sub_path: Some(CONFIG_KEY.to_owned()),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
                mount("tmp", "/tmp", false),
            ]),
            ..Container::default()
        };
        let volumes = vec![
            Volume {
                name: "config".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: super::names::config(ctx.name, component),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "tmp".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ];
        Self {
            component,
            container,
            volumes,
        }
    }

    pub fn port(mut self, name: &str, number: i32) -> Self {
        self.container
            .ports
            .get_or_insert_with(Vec::new)
            .push(port(name, number));
        self
    }

    /// `FERRY_<COMPONENT>_<key>` from a field of the pod (e.g. `metadata.name`).
    pub fn env_field(mut self, key: &str, field_path: &str) -> Self {
        self.container
            .env
            .get_or_insert_with(Vec::new)
            .push(EnvVar {
                name: format!("{}{key}", self.component.env_prefix()),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: field_path.to_owned(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        self
    }

    /// Mounts a Secret read-only at `dir`; the files are readable by the runtime group (the pod's
    /// `fsGroup`) and no one else.
    pub fn secret_volume(mut self, volume: &str, secret: &str, dir: &str) -> Self {
        self.volumes.push(Volume {
            name: volume.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_owned()),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        self.mount(volume, dir, true)
    }

    /// Mounts the given keys of Secrets as files in one read-only projected volume at `dir`:
    /// (Secret, key, file name).
    pub fn secret_files(
        mut self,
        volume: &str,
        files: &[(String, String, String)],
        dir: &str,
    ) -> Self {
        use k8s_openapi::api::core::v1::{
            KeyToPath, ProjectedVolumeSource, SecretProjection, VolumeProjection,
        };
        if files.is_empty() {
            return self;
        }
        let sources = files
            .iter()
            .map(|(secret, key, file)| VolumeProjection {
                secret: Some(SecretProjection {
                    name: secret.clone(),
                    items: Some(vec![KeyToPath {
                        key: key.clone(),
                        path: file.clone(),
                        mode: None,
                    }]),
                    optional: Some(false),
                }),
                ..VolumeProjection::default()
            })
            .collect();
        self.volumes.push(Volume {
            name: volume.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(sources),
                default_mode: Some(0o440),
            }),
            ..Volume::default()
        });
        self.mount(volume, dir, true)
    }

    /// A writable emptyDir at `dir`.
    pub fn empty_dir(mut self, volume: &str, dir: &str) -> Self {
        self.volumes.push(Volume {
            name: volume.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        self.mount(volume, dir, false)
    }

    /// A volume defined elsewhere (a PVC, or a StatefulSet's claim template) mounted at `dir`.
    pub fn volume(mut self, volume: Option<Volume>, name: &str, dir: &str) -> Self {
        if let Some(v) = volume {
            self.volumes.push(v);
        }
        self.mount(name, dir, false)
    }

    pub fn mount(mut self, volume: &str, dir: &str, read_only: bool) -> Self {
        self.container
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(mount(volume, dir, read_only));
        self
    }

    pub fn resources(
        mut self,
        given: Option<&ResourceRequirements>,
        cpu: &str,
        memory: &str,
    ) -> Self {
        self.container.resources = Some(match given {
            Some(r) => r.clone(),
            None => ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_owned(), Quantity(cpu.to_owned())),
                    ("memory".to_owned(), Quantity(memory.to_owned())),
                ])),
                ..ResourceRequirements::default()
            },
        });
        self
    }

    /// The pod template, labelled for `ctx.selector(component)` and annotated with the config hash.
    pub fn template(self, ctx: &Ctx<'_>, config_hash: String) -> PodTemplateSpec {
        let mut labels = ctx.labels(Some(self.component));
        labels.extend(ctx.selector(self.component));
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                annotations: Some(BTreeMap::from([(
                    CONFIG_HASH_ANNOTATION.to_owned(),
                    config_hash,
                )])),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![self.container],
                volumes: Some(self.volumes),
                security_context: Some(pod_security()),
                automount_service_account_token: Some(false),
                // Service links would put `FERRY_REGISTRY_PORT=tcp://…` into the pods of an address
                // space named `ferry`: an unknown config key, and the component would exit 64.
                enable_service_links: Some(false),
                termination_grace_period_seconds: Some(30),
                topology_spread_constraints: Some(spread(ctx, self.component)),
                ..PodSpec::default()
            }),
        }
    }
}

/// Replicas of a component spread over zones and nodes, softly (`ScheduleAnyway`): a cluster with one
/// zone, or fewer nodes than replicas, still schedules them all, only less spread. Zone first, so one
/// zone going away takes as few replicas as possible.
pub(crate) fn spread(ctx: &Ctx<'_>, component: Component) -> Vec<TopologySpreadConstraint> {
    ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(LabelSelector {
                match_labels: Some(ctx.selector(component)),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// A rolling update that starts each new pod, and waits for it to be ready, before it stops an old one:
/// the replicas ready never fall below the ones wanted during a roll (the PodDisruptionBudget covers
/// drains, not rollouts).
pub(crate) fn no_loss_rollout() -> DeploymentStrategy {
    DeploymentStrategy {
        type_: Some("RollingUpdate".to_owned()),
        rolling_update: Some(RollingUpdateDeployment {
            max_unavailable: Some(IntOrString::Int(0)),
            max_surge: Some(IntOrString::Int(1)),
        }),
    }
}

pub(crate) fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: number,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

pub(crate) fn mount(volume: &str, dir: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: dir.to_owned(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn probe(path: &str, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

pub(crate) fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUNTIME_UID),
        run_as_group: Some(RUNTIME_UID),
        fs_group: Some(RUNTIME_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

pub(crate) fn container_security() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUNTIME_UID),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}
