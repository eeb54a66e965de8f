//! Names of the objects an `AddressSpace` named `space` owns (documented in docs/operator.md).

use super::Component;

/// The Deployment or StatefulSet and the Service of a component: `<space>-<component>`.
pub fn workload(space: &str, component: Component) -> String {
    format!("{space}-{}", component.label())
}

pub fn registry(space: &str) -> String {
    workload(space, Component::Registry)
}

pub fn router(space: &str) -> String {
    workload(space, Component::Router)
}

/// The router's adapter-facing Service: plain AMQP 5672, for the adapters only (NetworkPolicy).
pub fn router_internal(space: &str) -> String {
    format!("{space}-router-internal")
}

/// The router's headless Service (stable pod DNS names for the StatefulSet).
pub fn router_headless(space: &str) -> String {
    format!("{space}-router-headless")
}

pub fn config(space: &str, component: Component) -> String {
    format!("{space}-{}-config", component.label())
}

/// The registry's SQLite volume.
pub fn registry_data(space: &str) -> String {
    format!("{space}-registry-data")
}

/// Key `token`: the management API's bearer token.
pub fn admin_token(space: &str) -> String {
    format!("{space}-admin-token")
}

/// Key `token`: the internal API's bearer token (router and adapters).
pub fn internal_token(space: &str) -> String {
    format!("{space}-internal-token")
}

/// Key `signing.key`: the Ed25519 seed that signs registration assertions.
pub fn signing_key(space: &str) -> String {
    format!("{space}-signing-key")
}

/// Keys `username`, `password`: the adapters' service credential at the router.
pub fn adapter_credentials(space: &str) -> String {
    format!("{space}-adapter-credentials")
}

/// Managed NATS: the StatefulSet and its client Service (4222).
pub fn nats(space: &str) -> String {
    workload(space, Component::Nats)
}

/// Managed NATS: the headless Service of the nodes' names and cluster routes.
pub fn nats_headless(space: &str) -> String {
    format!("{space}-nats-headless")
}

/// Managed NATS: the ConfigMap with `nats.conf`.
pub fn nats_config(space: &str) -> String {
    config(space, Component::Nats)
}

/// Managed NATS: keys `adapter`, `router` (passwords) and `auth.conf`.
pub fn nats_users(space: &str) -> String {
    format!("{space}-nats-users")
}

/// The generated certificate: `tls.crt`, `tls.key` and `ca.crt` (the address space's CA).
pub fn tls(space: &str) -> String {
    format!("{space}-tls")
}

/// The Secret with a tenant's application passwords.
pub fn applications(tenant: &str) -> String {
    format!("{tenant}-applications")
}
