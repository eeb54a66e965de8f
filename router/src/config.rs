//! The router's configuration (`FERRY_ROUTER_*`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::events::EventLimits;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Plain AMQP listener.
    pub bind: SocketAddr,
    /// AMQPS listener (TLS from the first byte); only when `tls` is configured.
    pub tls_bind: SocketAddr,
    pub tls: TlsConfig,
    /// Separate admin server address (`/live`, `/ready`, `/metrics`); none = not served by the router.
    pub admin_bind: Option<SocketAddr>,
    /// Where the event store lives.
    pub data_dir: PathBuf,
    /// The registry's base URL (JWKS, application users, change stream).
    pub registry_url: String,
    /// Bearer token of the registry's internal API.
    pub registry_token: String,
    /// The token from a file (a mounted Secret) instead of `registry_token`.
    pub registry_token_file: Option<PathBuf>,
    /// CA certificate (PEM) an `https` registry's certificate must chain to (the public web roots
    /// without one).
    pub registry_ca_file: Option<PathBuf>,
    /// SASL PLAIN user name of the protocol adapters' service credential.
    pub adapter_user: String,
    /// Its password; empty disables adapter logins.
    pub adapter_password: String,
    /// The password from a file (a mounted Secret) instead of `adapter_password`.
    pub adapter_password_file: Option<PathBuf>,
    /// Close connections silent for twice this long; advertised to peers as idle-time-out.
    pub idle_timeout_secs: u64,
    /// Most open AMQP connections; beyond, a new one is closed at once.
    pub max_connections: usize,
    /// Most open connections of one application user; beyond, a new one gets open + close
    /// `amqp:resource-limit-exceeded` (the adapters' service credential is not limited).
    pub max_connections_per_user: usize,
    /// Most links on one connection; beyond, an attach is refused with `amqp:resource-limit-exceeded`.
    pub max_links_per_connection: usize,
    /// Most consumers (receiving links) on one address; beyond, an attach is refused likewise.
    pub max_consumers_per_address: usize,
    /// Bytes of deliveries a connection may hold unwritten (its peer reads slowly or not at all) before
    /// its consumers take no more: producers then get no credit for them.
    pub max_queued_bytes_per_connection: usize,
    /// Bytes of stored events over all tenants beyond which every tenant's event producers get no more
    /// credit (the event store's disk use stays below about twice this).
    pub max_event_store_bytes: u64,
    /// Stored events per tenant beyond which its event producers get no more credit.
    pub max_events_per_tenant: u64,
    /// Bytes of stored events per tenant beyond which its event producers get no more credit.
    pub max_event_bytes_per_tenant: u64,
    /// Free space the event store's filesystem must keep, in bytes: below it, event producers get no
    /// credit until it has room again (looked at once a second; 0 = no check). Embedded mode only.
    pub min_free_disk_bytes: u64,
    /// Time-to-live of an event without a `ttl` header, in seconds (0 = keep until accepted).
    pub default_event_ttl_secs: u64,
    /// `embedded` (this router routes in memory and keeps the event store) or `nats` (cluster mode:
    /// NATS with JetStream is the bus, this router keeps no state; docs/cluster.md).
    pub messaging: ferry_nats::Messaging,
    /// Cluster mode: how long an event handed to an application may stay unsettled before JetStream
    /// gives it to another router (when this one died), in seconds.
    pub event_redelivery_secs: u64,
}

/// The listener certificate and key: one `tls` section for every component.
pub use ferry_core::tls::TlsConfig;

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 15672)),
            tls_bind: SocketAddr::from(([0, 0, 0, 0], 15671)),
            tls: TlsConfig::default(),
            admin_bind: None,
            data_dir: PathBuf::from("ferry-data"),
            registry_url: "http://127.0.0.1:28080".into(),
            registry_token: String::new(),
            registry_token_file: None,
            registry_ca_file: None,
            adapter_user: "ferry-adapter".into(),
            adapter_password: String::new(),
            adapter_password_file: None,
            idle_timeout_secs: 60,
            max_connections: 10_000,
            max_connections_per_user: 100,
            max_links_per_connection: 1024,
            max_consumers_per_address: 1024,
            max_queued_bytes_per_connection: crate::hub::DEFAULT_MAX_QUEUED_BYTES,
            max_event_store_bytes: EventLimits::default().max_bytes,
            max_events_per_tenant: EventLimits::default().max_events_per_tenant,
            max_event_bytes_per_tenant: EventLimits::default().max_bytes_per_tenant,
            min_free_disk_bytes: 256 << 20,
            // A day: events nobody consumes do not pile up for ever (Hono bounds them only by the
            // tenant's `max-ttl`, which the adapters apply to the `ttl` they set).
            default_event_ttl_secs: 86_400,
            messaging: ferry_nats::Messaging::default(),
            event_redelivery_secs: ferry_nats::streams::EVENT_ACK_WAIT.as_secs(),
        }
    }
}

impl ferry_core::config::Settings for Config {
    fn check(&self) -> Result<(), ferry_core::config::ConfigError> {
        self.validate()
    }

    fn read_secrets(&mut self) -> Result<(), ferry_core::config::ConfigError> {
        use ferry_core::config::read_secret;
        read_secret(
            "registry_token",
            &mut self.registry_token,
            &mut self.registry_token_file,
        )?;
        read_secret(
            "adapter_password",
            &mut self.adapter_password,
            &mut self.adapter_password_file,
        )
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ferry_core::config::ConfigError> {
        let field = ferry_core::config::ConfigError::invalid;
        self.tls.validate("tls")?;
        self.messaging.validate()?;
        if self.event_redelivery_secs == 0 {
            return Err(field("event_redelivery_secs", "must be at least 1"));
        }
        if !(self.registry_url.starts_with("http://") || self.registry_url.starts_with("https://"))
        {
            return Err(field("registry_url", "must be an http:// or https:// URL"));
        }
        for (name, value) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_user", self.max_connections_per_user),
            ("max_links_per_connection", self.max_links_per_connection),
            ("max_consumers_per_address", self.max_consumers_per_address),
            (
                "max_queued_bytes_per_connection",
                self.max_queued_bytes_per_connection,
            ),
        ] {
            if value == 0 {
                return Err(field(name, "must be at least 1"));
            }
        }
        for (name, value) in [
            ("max_event_store_bytes", self.max_event_store_bytes),
            ("max_events_per_tenant", self.max_events_per_tenant),
            (
                "max_event_bytes_per_tenant",
                self.max_event_bytes_per_tenant,
            ),
        ] {
            if value == 0 {
                return Err(field(name, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The event store's limits.
    pub fn event_limits(&self) -> EventLimits {
        EventLimits {
            max_bytes: self.max_event_store_bytes,
            max_events_per_tenant: self.max_events_per_tenant,
            max_bytes_per_tenant: self.max_event_bytes_per_tenant,
        }
    }
}
