//! PodDisruptionBudgets: at most one pod of a component away at a time during voluntary disruptions
//! (node drains, cluster upgrades), for components with more than one replica.
//!
//! `maxUnavailable: 1`, not `minAvailable`: it follows the replica count without being rewritten, and it
//! never blocks a drain for good while the pods are healthy. One replica gets no budget at all: a budget
//! of `maxUnavailable: 1` would allow what no budget allows, and `minAvailable: 1` (or
//! `maxUnavailable: 0`) would block every drain of that node until someone deletes the budget. A single
//! pod is simply moved, and its clients reconnect (scale to 2 to drain without an outage). The budget of a
//! component scaled back to one replica (or disabled) is deleted.
//!
//! Managed NATS gets the same budget: with streams on three nodes, one node away keeps a majority of
//! every stream, so accepted events stay readable and new ones are still acknowledged.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{names, Component, Ctx, Desired, Kind};

/// Replicas of a component, 0 when it is disabled.
fn replicas(ctx: &Ctx<'_>, component: Component) -> i32 {
    let spec = ctx.spec;
    match component {
        Component::Registry => spec.registry.replicas,
        Component::Router => spec.router.replicas,
        Component::MqttAdapter if spec.adapters.mqtt.enabled => spec.adapters.mqtt.replicas,
        Component::HttpAdapter if spec.adapters.http.enabled => spec.adapters.http.replicas,
        Component::MqttAdapter | Component::HttpAdapter => 0,
        Component::Nats => match &ctx.bus {
            super::nats::Bus::Managed(m) => m.replicas,
            _ => 0,
        },
    }
}

pub(crate) fn build(ctx: &Ctx<'_>, desired: &mut Desired) {
    for component in Component::ALL.into_iter().chain([Component::Nats]) {
        let name = names::workload(ctx.name, component);
        if replicas(ctx, component) < 2 {
            desired.absent.push((Kind::PodDisruptionBudget, name));
            continue;
        }
        desired.pod_disruption_budgets.push(PodDisruptionBudget {
            metadata: ctx.meta(name, Some(component)),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(ctx.selector(component)),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        });
    }
}
