//! Status conditions (metav1 `Condition`) and the address space status, computed without API calls from
//! what the apply step observed.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::build::{Component, Desired};
use crate::crd::{AddressSpaceStatus, Phase};

/// Sets condition `type_`, keeping its `lastTransitionTime` when the status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" };
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status.to_owned();
            c.reason = reason.to_owned();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

/// Whether condition `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// How many replicas of a workload are wanted and ready on its current spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    pub wanted: i32,
    /// Replicas both ready and updated to the current pod template.
    pub ready: i32,
    /// Whether the workload controller has seen the current spec (`observedGeneration`); until it has,
    /// the counts describe the previous one.
    pub current: bool,
}

impl Readiness {
    pub fn is_ready(self) -> bool {
        self.current && self.ready >= self.wanted
    }

    fn new(
        wanted: Option<i32>,
        generation: Option<i64>,
        observed: Option<i64>,
        ready: Option<i32>,
        updated: Option<i32>,
    ) -> Self {
        let ready = ready.unwrap_or(0);
        Self {
            wanted: wanted.unwrap_or(1),
            ready: updated.map_or(ready, |u| ready.min(u)),
            // Without an observed generation (no status yet) nothing is ready anyway.
            current: match (generation, observed) {
                (Some(g), Some(o)) => o >= g,
                _ => true,
            },
        }
    }

    pub fn of_deployment(d: &Deployment) -> Self {
        let s = d.status.as_ref();
        Self::new(
            d.spec.as_ref().and_then(|s| s.replicas),
            d.metadata.generation,
            s.and_then(|s| s.observed_generation),
            s.and_then(|s| s.ready_replicas),
            s.and_then(|s| s.updated_replicas),
        )
    }

    pub fn of_stateful_set(set: &StatefulSet) -> Self {
        let s = set.status.as_ref();
        Self::new(
            set.spec.as_ref().and_then(|s| s.replicas),
            set.metadata.generation,
            s.and_then(|s| s.observed_generation),
            s.and_then(|s| s.ready_replicas),
            s.and_then(|s| s.updated_replicas),
        )
    }
}

/// The bus as the status reports it (`MessagingReady`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Messaging {
    /// Embedded mode: nothing beyond the router to be ready; `True`, reason `Embedded`.
    Embedded,
    /// A NATS cluster run by someone else: the operator cannot see its health (the components' own
    /// readiness shows whether they reach it); `True`, reason `External`.
    External,
    /// A managed cluster: its StatefulSet's readiness.
    Managed(Readiness),
}

/// The status of an address space whose objects were applied: one condition per component (a disabled
/// adapter counts as ready), `MessagingReady`, `Ready` when all are, and the phase.
pub fn address_space(
    previous: Option<&AddressSpaceStatus>,
    desired: &Desired,
    observed: &[(Component, Option<Readiness>)],
    messaging: Messaging,
    generation: Option<i64>,
    now: Timestamp,
) -> AddressSpaceStatus {
    let mut conditions = previous.map(|s| s.conditions.clone()).unwrap_or_default();
    let mut not_ready = Vec::new();
    let (ok, reason, message) = match messaging {
        Messaging::Embedded => (
            true,
            "Embedded",
            "adapters send to the router over AMQP".to_owned(),
        ),
        Messaging::External => (
            true,
            "External",
            "NATS is run outside the operator".to_owned(),
        ),
        Messaging::Managed(r) if r.is_ready() => (
            true,
            "ReplicasReady",
            format!("{}/{} NATS nodes ready", r.ready, r.wanted),
        ),
        Messaging::Managed(r) if !r.current => (
            false,
            "RolloutPending",
            format!(
                "{}/{} NATS nodes ready; the new spec is not rolled out yet",
                r.ready, r.wanted
            ),
        ),
        Messaging::Managed(r) => (
            false,
            "ReplicasNotReady",
            format!("{}/{} NATS nodes ready", r.ready, r.wanted),
        ),
    };
    if !ok {
        not_ready.push("messaging");
    }
    set_condition(
        &mut conditions,
        Component::Nats.condition(),
        ok,
        reason,
        message,
        generation,
        now,
    );
    for (component, readiness) in observed {
        let (ok, reason, message) = match readiness {
            None => (
                true,
                "Disabled",
                format!("{} is disabled", component.label()),
            ),
            Some(r) if r.is_ready() => (
                true,
                "ReplicasReady",
                format!("{}/{} replicas ready", r.ready, r.wanted),
            ),
            Some(r) if !r.current => (
                false,
                "RolloutPending",
                format!(
                    "{}/{} replicas ready; the new spec is not rolled out yet",
                    r.ready, r.wanted
                ),
            ),
            Some(r) => (
                false,
                "ReplicasNotReady",
                format!("{}/{} replicas ready", r.ready, r.wanted),
            ),
        };
        if !ok {
            not_ready.push(component.label());
        }
        set_condition(
            &mut conditions,
            component.condition(),
            ok,
            reason,
            message,
            generation,
            now,
        );
    }
    let all = not_ready.is_empty();
    let phase = if all {
        Phase::Ready
    } else if previous
        .and_then(|s| s.phase)
        .is_none_or(|p| matches!(p, Phase::Pending | Phase::Failed))
    {
        Phase::Pending
    } else {
        Phase::Degraded
    };
    set_condition(
        &mut conditions,
        "Ready",
        all,
        if all {
            "AllComponentsReady"
        } else {
            "ComponentsNotReady"
        },
        if all {
            "every component is ready".to_owned()
        } else {
            format!("not ready: {}", not_ready.join(", "))
        },
        generation,
        now,
    );
    AddressSpaceStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions,
        endpoints: Some(desired.endpoints.clone()),
        admin_token_secret: Some(desired.admin_token_secret.clone()),
    }
}

/// The status of an address space whose spec is refused or whose objects could not be applied.
pub fn address_space_failed(
    previous: Option<&AddressSpaceStatus>,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> AddressSpaceStatus {
    address_space_blocked(previous, Phase::Failed, reason, message, generation, now)
}

/// The status of an address space whose objects were not applied this time: `Ready` is false with
/// `reason` and `message`, the phase is `phase`, the rest is kept.
pub fn address_space_blocked(
    previous: Option<&AddressSpaceStatus>,
    phase: Phase,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> AddressSpaceStatus {
    let mut status = previous.cloned().unwrap_or_default();
    set_condition(
        &mut status.conditions,
        "Ready",
        false,
        reason,
        message,
        generation,
        now,
    );
    status.phase = Some(phase);
    status.observed_generation = generation;
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::Desired;

    fn observed(
        registry: (i32, i32),
        router: (i32, i32),
        mqtt: Option<(i32, i32)>,
    ) -> Vec<(Component, Option<Readiness>)> {
        let r = |(wanted, ready)| Readiness {
            wanted,
            ready,
            current: true,
        };
        vec![
            (Component::Registry, Some(r(registry))),
            (Component::Router, Some(r(router))),
            (Component::MqttAdapter, mqtt.map(r)),
            (Component::HttpAdapter, Some(r((0, 0)))),
        ]
    }

    fn condition<'a>(s: &'a AddressSpaceStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition")
    }

    #[test]
    fn readiness_counts_updated_replicas_of_the_observed_generation() {
        use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
        let mut d = Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        };
        d.metadata.generation = Some(3);
        assert!(!Readiness::of_deployment(&d).is_ready(), "no status yet");
        d.status = Some(DeploymentStatus {
            observed_generation: Some(3),
            ready_replicas: Some(2),
            updated_replicas: Some(1),
            ..DeploymentStatus::default()
        });
        assert_eq!(
            Readiness::of_deployment(&d).ready,
            1,
            "one pod still runs the old template"
        );
        assert!(!Readiness::of_deployment(&d).is_ready());
        d.status.as_mut().expect("status").updated_replicas = Some(2);
        assert!(Readiness::of_deployment(&d).is_ready());
        d.metadata.generation = Some(4);
        assert!(
            !Readiness::of_deployment(&d).is_ready(),
            "new spec not observed"
        );
    }

    #[test]
    fn messaging_readiness_feeds_ready() {
        let now = Timestamp::now();
        let d = Desired::default();
        let nodes = |ready| {
            Messaging::Managed(Readiness {
                wanted: 3,
                ready,
                current: true,
            })
        };
        let all = observed((1, 1), (2, 2), Some((2, 2)));
        let starting = address_space(None, &d, &all, nodes(2), Some(1), now);
        assert_eq!(
            condition(&starting, "MessagingReady").message,
            "2/3 NATS nodes ready"
        );
        assert_eq!(
            condition(&starting, "Ready").message,
            "not ready: messaging"
        );
        assert_eq!(starting.phase, Some(Phase::Pending));
        let ready = address_space(Some(&starting), &d, &all, nodes(3), Some(1), now);
        assert!(is_true(&ready.conditions, "MessagingReady"));
        assert_eq!(ready.phase, Some(Phase::Ready));
        let external = address_space(None, &d, &all, Messaging::External, Some(1), now);
        assert_eq!(condition(&external, "MessagingReady").reason, "External");
        assert!(is_true(&external.conditions, "Ready"));
    }

    #[test]
    fn phase_and_conditions_follow_readiness() {
        let now = Timestamp::now();
        let d = Desired::default();
        let starting = address_space(
            None,
            &d,
            &observed((1, 0), (2, 1), Some((1, 1))),
            Messaging::Embedded,
            Some(1),
            now,
        );
        assert_eq!(starting.phase, Some(Phase::Pending));
        assert_eq!(condition(&starting, "Ready").status, "False");
        assert_eq!(
            condition(&starting, "RegistryReady").message,
            "0/1 replicas ready"
        );
        assert_eq!(condition(&starting, "MqttAdapterReady").status, "True");
        assert_eq!(
            condition(&starting, "HttpAdapterReady").status,
            "True",
            "0 of 0 is ready"
        );

        let later = now + k8s_openapi::jiff::SignedDuration::from_secs(30);
        let ready = address_space(
            Some(&starting),
            &d,
            &observed((1, 1), (2, 2), None),
            Messaging::Embedded,
            Some(1),
            later,
        );
        assert_eq!(ready.phase, Some(Phase::Ready));
        assert_eq!(condition(&ready, "Ready").status, "True");
        assert_eq!(condition(&ready, "MqttAdapterReady").reason, "Disabled");
        assert_eq!(condition(&ready, "Ready").last_transition_time.0, later);
        // An unchanged condition keeps its transition time.
        assert_eq!(
            condition(&ready, "MqttAdapterReady").last_transition_time.0,
            now
        );

        let degraded = address_space(
            Some(&ready),
            &d,
            &observed((1, 1), (2, 1), None),
            Messaging::Embedded,
            Some(2),
            later,
        );
        assert_eq!(degraded.phase, Some(Phase::Degraded));
        assert_eq!(condition(&degraded, "Ready").message, "not ready: router");
        assert_eq!(degraded.observed_generation, Some(2));

        let rolling = vec![(
            Component::Registry,
            Some(Readiness {
                wanted: 1,
                ready: 1,
                current: false,
            }),
        )];
        let s = address_space(
            Some(&ready),
            &d,
            &rolling,
            Messaging::Embedded,
            Some(2),
            later,
        );
        assert_eq!(condition(&s, "RegistryReady").reason, "RolloutPending");

        assert_eq!(condition(&ready, "MessagingReady").reason, "Embedded");

        let failed = address_space_failed(Some(&degraded), "InvalidSpec", "bad", Some(3), later);
        assert_eq!(failed.phase, Some(Phase::Failed));
        assert_eq!(condition(&failed, "Ready").reason, "InvalidSpec");
        assert!(is_true(&failed.conditions, "RegistryReady"));
        assert!(!is_true(&failed.conditions, "Ready"));
    }
}
