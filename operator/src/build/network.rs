//! NetworkPolicies (when the operator's `network_policies` is on): each component's pods take
//! connections only on the ports they serve, and the internal ones only from Ferry's own pods:
//!
//! | pods | port | from |
//! |---|---|---|
//! | registry | 28080 (management and internal API) | this address space's router and adapter pods; the operator's pods |
//! | router | 5672 (plain AMQP, the adapters' port) | this address space's adapter pods (anyone with `spec.router.plainAmqp`) |
//! | router | 5671 (AMQPS) | anyone: applications |
//! | adapters | 1883/8883, 8080/8443 | anyone: devices |
//! | every component | 9090 (`/live`, `/ready`, `/metrics`) | anyone: Prometheus; probes come from the node, which policies never block |
//!
//! Only ingress is restricted (egress to DNS, PostgreSQL and the API server stays open). Policies add
//! up: a user's own NetworkPolicy that selects the same pods lets more in (e.g. a management client in
//! another namespace).
//!
//! Managed NATS (`<name>-nats`):
//!
//! | pods | port | from |
//! |---|---|---|
//! | NATS | 4222 (clients) | this address space's router, adapter and registry pods (the registry reads presence) |
//! | NATS | 6222 (cluster routes) | this address space's NATS pods |
//! | NATS | 8222 (monitoring) | anyone, like the components' admin port (Prometheus exporters) |

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{names, ports, Component, Ctx, Desired, Kind, OperatorPods};

pub(crate) fn build(ctx: &Ctx<'_>, desired: &mut Desired) {
    for component in Component::ALL.into_iter().chain([Component::Nats]) {
        let name = names::workload(ctx.name, component);
        let rules = match ctx.operator_pods {
            Some(operator) if enabled(ctx, component) => rules(ctx, component, operator),
            _ => {
                desired.absent.push((Kind::NetworkPolicy, name));
                continue;
            }
        };
        desired.network_policies.push(NetworkPolicy {
            metadata: ctx.meta(name, Some(component)),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(ctx.selector(component)),
                    ..LabelSelector::default()
                }),
                policy_types: Some(vec!["Ingress".to_owned()]),
                ingress: Some(rules),
                ..NetworkPolicySpec::default()
            }),
        });
    }
}

fn enabled(ctx: &Ctx<'_>, component: Component) -> bool {
    match component {
        Component::MqttAdapter => ctx.spec.adapters.mqtt.enabled,
        Component::HttpAdapter => ctx.spec.adapters.http.enabled,
        Component::Registry | Component::Router => true,
        Component::Nats => matches!(ctx.bus, super::nats::Bus::Managed(_)),
    }
}

fn rules(
    ctx: &Ctx<'_>,
    component: Component,
    operator: &OperatorPods,
) -> Vec<NetworkPolicyIngressRule> {
    let admin = rule(&[ports::ADMIN], None);
    match component {
        Component::Registry => vec![
            rule(
                &[ports::REGISTRY],
                Some(vec![
                    own_pods(
                        ctx,
                        &[
                            Component::Router,
                            Component::MqttAdapter,
                            Component::HttpAdapter,
                        ],
                    ),
                    operator_pods(operator),
                ]),
            ),
            admin,
        ],
        Component::Router => {
            let plain_from = (!ctx.spec.router.plain_amqp).then(|| {
                vec![own_pods(
                    ctx,
                    &[Component::MqttAdapter, Component::HttpAdapter],
                )]
            });
            vec![
                rule(&[ports::AMQPS], None),
                rule(&[ports::AMQP], plain_from),
                admin,
            ]
        }
        Component::MqttAdapter => vec![rule(&[ports::MQTT, ports::MQTTS, ports::ADMIN], None)],
        Component::HttpAdapter => vec![rule(&[ports::HTTP, ports::HTTPS, ports::ADMIN], None)],
        Component::Nats => vec![
            rule(
                &[ports::NATS_CLIENT],
                Some(vec![own_pods(
                    ctx,
                    &[
                        Component::Router,
                        Component::MqttAdapter,
                        Component::HttpAdapter,
                        Component::Registry,
                    ],
                )]),
            ),
            rule(
                &[ports::NATS_CLUSTER],
                Some(vec![own_pods(ctx, &[Component::Nats])]),
            ),
            rule(&[ports::NATS_MONITOR], None),
        ],
    }
}

/// An ingress rule for `numbers` (TCP) from `from` (`None`: from anywhere).
fn rule(numbers: &[i32], from: Option<Vec<NetworkPolicyPeer>>) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from,
        ports: Some(
            numbers
                .iter()
                .map(|n| NetworkPolicyPort {
                    port: Some(IntOrString::Int(*n)),
                    protocol: Some("TCP".to_owned()),
                    ..NetworkPolicyPort::default()
                })
                .collect(),
        ),
    }
}

/// The pods of `components` of this address space (same namespace, labelled by the operator).
fn own_pods(ctx: &Ctx<'_>, components: &[Component]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                ("app.kubernetes.io/instance".to_owned(), ctx.name.to_owned()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "ferry-operator".to_owned(),
                ),
            ])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app.kubernetes.io/component".to_owned(),
                operator: "In".to_owned(),
                values: Some(components.iter().map(|c| c.label().to_owned()).collect()),
            }]),
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// The operator's pods, in their namespace (both selectors in one peer: namespace AND labels).
fn operator_pods(operator: &OperatorPods) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                operator.namespace.clone(),
            )])),
            ..LabelSelector::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(operator.labels.clone()),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}
