//! What an adapter connects to before it serves devices: the registry (internal API, HTTPS when its URL
//! says so) and its downstream (the router over AMQP or AMQPS in embedded mode, NATS in cluster mode).
//!
//! Both adapters start the same way from the same settings (`registry_*`, `router_*`, `messaging`,
//! `send_timeout_ms`, `instance_id`); they fill an [`Upstream`] from their configuration and call
//! [`connect`].

use std::path::PathBuf;
use std::time::Duration;

use ferry_core::shutdown::Shutdown;
use ferry_nats::{Messaging, MessagingMode};

use crate::downstream::{Downstream, DownstreamConfig, NatsDownstreamConfig, RouterTls};
use crate::registry::{RegistryClient, RegistryConfig};

/// An adapter's upstream settings, as its configuration gives them.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `mqtt` or `http`: names the AMQP container and the NATS connection (`ferry-mqtt-INSTANCE`).
    pub adapter: &'static str,
    /// This adapter instance's id.
    pub instance_id: String,
    /// The registry's base URL (`https://` for TLS).
    pub registry_url: String,
    /// The registry's internal token.
    pub registry_token: String,
    /// The CA an `https` registry's certificate chains to (the public web roots without one).
    pub registry_ca_file: Option<PathBuf>,
    /// The router's `host:port`.
    pub router_address: String,
    /// The adapters' service credential at the router.
    pub router_user: String,
    /// Its password.
    pub router_password: String,
    /// Talk to the router over TLS (AMQPS).
    pub router_tls: bool,
    /// The CA the router's certificate must chain to (the public web roots without one).
    pub router_ca_file: Option<PathBuf>,
    /// How long the router (or NATS) may take to settle a message before the device is told it failed.
    pub send_timeout: Duration,
    /// Ask for an outcome of telemetry QoS 0 in cluster mode (HTTP answers 503 when nobody consumes).
    pub confirm_qos0: bool,
    /// Embedded (the router) or cluster mode (NATS).
    pub messaging: Messaging,
}

/// Why an adapter could not reach what it sends to.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The registry client could not be made (a bad CA file).
    #[error("registry client: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// The router's TLS settings cannot be used.
    #[error("router TLS (router_ca_file, router_address): {0}")]
    RouterTls(String),
    /// NATS could not be reached (`messaging.nats`).
    #[error("connecting to NATS (messaging.nats): {0}")]
    Nats(#[from] ferry_nats::Error),
}

/// The registry client (following the change stream, which keeps its caches honest) and the
/// downstream the settings ask for.
pub async fn connect(
    upstream: &Upstream,
    shutdown: &Shutdown,
) -> Result<(RegistryClient, Downstream), UpstreamError> {
    let mut registry = RegistryConfig::new(
        upstream.registry_url.clone(),
        upstream.registry_token.clone(),
    );
    registry.ca_file = upstream.registry_ca_file.clone();
    let registry = RegistryClient::new(registry)?;
    {
        let registry = registry.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { registry.follow_changes(shutdown).await });
    }
    let name = format!("ferry-{}-{}", upstream.adapter, upstream.instance_id);
    let downstream = match upstream.messaging.mode {
        MessagingMode::Embedded => {
            let mut config = DownstreamConfig::new(
                upstream.router_address.clone(),
                upstream.router_user.clone(),
                upstream.router_password.clone(),
            );
            config.outcome_timeout = upstream.send_timeout;
            config.container_id = name;
            if upstream.router_tls {
                config.tls = Some(router_tls(upstream)?);
            }
            Downstream::start(config, shutdown.clone())
        }
        MessagingMode::Nats => {
            let mut config = NatsDownstreamConfig::new(upstream.messaging.nats.clone(), name);
            config.outcome_timeout = upstream.send_timeout;
            config.confirm_qos0 = upstream.confirm_qos0;
            Downstream::connect_nats(config, shutdown.clone()).await?
        }
    };
    Ok((registry, downstream))
}

fn router_tls(upstream: &Upstream) -> Result<RouterTls, UpstreamError> {
    let fail = |e: &dyn std::fmt::Display| UpstreamError::RouterTls(e.to_string());
    let host = match upstream.router_address.rsplit_once(':') {
        Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => upstream.router_address.as_str(),
    };
    let server_name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| fail(&e))?;
    let connector =
        ferry_core::tls::connector(upstream.router_ca_file.as_deref()).map_err(|e| fail(&e))?;
    Ok(RouterTls {
        connector,
        server_name,
    })
}
