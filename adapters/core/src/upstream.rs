//! What an adapter connects to before it serves devices: the registry (internal API, HTTPS when its URL
//! says so) and its downstream (the router over AMQP or AMQPS in embedded mode, NATS in cluster mode).
//!
//! Both adapters start the same way from the same settings, the [`AdapterSettings`] section of their
//! configuration (`registry_*`, `router_*`, `messaging`, `send_timeout_ms`, `instance_id`, `login`),
//! with [`connect`].

use std::path::PathBuf;
use std::time::Duration;

use ferry_core::config::ConfigError;
use ferry_core::shutdown::Shutdown;
use ferry_nats::{Messaging, MessagingMode};
use serde::{Deserialize, Serialize};

use crate::auth::LoginLimits;

use crate::downstream::{Downstream, DownstreamConfig, NatsDownstreamConfig, RouterTls};
use crate::registry::{RegistryClient, RegistryConfig};

/// The settings both adapters have, one section of their configuration (flattened into it, so the keys
/// stay `registry_url`, `FERRY_MQTT_ROUTER_TLS`, ...): what they connect to, who they are, how long a
/// send may take and how password logins are limited.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AdapterSettings {
    /// The registry's base URL (`https://...` for TLS).
    pub registry_url: String,
    /// The registry's internal token.
    pub registry_token: String,
    /// The internal token from a file (a mounted Secret) instead of `registry_token`.
    pub registry_token_file: Option<PathBuf>,
    /// CA certificate (PEM) an `https` registry's certificate must chain to (the public web roots
    /// without one).
    pub registry_ca_file: Option<PathBuf>,
    /// The router's AMQP address (`host:port`).
    pub router_address: String,
    /// The adapters' service user at the router.
    pub router_user: String,
    /// Its password.
    pub router_password: String,
    /// The password from a file (a mounted Secret) instead of `router_password`.
    pub router_password_file: Option<PathBuf>,
    /// Talk to the router over TLS (AMQPS; its `tls_bind` port), verifying its certificate for the
    /// host of `router_address`.
    pub router_tls: bool,
    /// CA certificate (PEM) the router's certificate must chain to (the public web roots without one).
    pub router_ca_file: Option<PathBuf>,
    /// This adapter instance's id, unique among instances (its command address at the router).
    pub instance_id: String,
    /// How long the router (or NATS) may take to settle a QoS 1 message, an event or a command response
    /// before the device is told it failed (at least 1).
    pub send_timeout_ms: u64,
    /// Limits on password logins: failures per `auth-id@tenant` and per source address before a
    /// lockout, and verifications at once (`FERRY_MQTT_LOGIN__MAX_FAILURES`, ...).
    pub login: LoginLimits,
    /// Embedded (to the router over AMQP 1.0, the default) or cluster mode (NATS with JetStream:
    /// `FERRY_MQTT_MESSAGING__MODE=nats`, `FERRY_MQTT_MESSAGING__NATS__URLS='[nats://a:4222]'`); in cluster
    /// mode the `router_*` settings are not used.
    pub messaging: Messaging,
}

impl Default for AdapterSettings {
    fn default() -> Self {
        Self::for_instance("adapter-0")
    }
}

impl AdapterSettings {
    /// The defaults, for the instance `instance_id` (`mqtt-0`, `http-0`).
    pub fn for_instance(instance_id: &str) -> Self {
        Self {
            registry_url: "http://127.0.0.1:28080".into(),
            registry_token: String::new(),
            registry_token_file: None,
            registry_ca_file: None,
            router_address: "127.0.0.1:15672".into(),
            router_user: "ferry-adapter".into(),
            router_password: String::new(),
            router_password_file: None,
            router_tls: false,
            router_ca_file: None,
            instance_id: instance_id.into(),
            send_timeout_ms: 5000,
            login: LoginLimits::default(),
            messaging: Messaging::default(),
        }
    }

    /// Reads the token and password given as files (the NATS password file is read when connecting,
    /// `messaging.nats.password_file`).
    pub fn read_secrets(&mut self) -> Result<(), ConfigError> {
        use ferry_core::config::read_secret;
        read_secret(
            "registry_token",
            &mut self.registry_token,
            &mut self.registry_token_file,
        )?;
        read_secret(
            "router_password",
            &mut self.router_password,
            &mut self.router_password_file,
        )
    }

    /// Refuses settings that could not work, naming the field (`login.lockout_secs`,
    /// `messaging.nats.urls`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = ConfigError::invalid;
        if ferry_core::ids::TenantId::new(&self.instance_id).is_err() {
            return Err(field(
                "instance_id",
                "must be 1-128 characters of [A-Za-z0-9-_.]",
            ));
        }
        if self.send_timeout_ms == 0 {
            return Err(field("send_timeout_ms", "must be at least 1"));
        }
        self.login.validate().map_err(|e| match e {
            ConfigError::Field { field, message } => ConfigError::Field {
                field: format!("login.{field}"),
                message,
            },
            other => other,
        })?;
        self.messaging.validate()
    }

    /// How long a send may take before the device is told it failed.
    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }
}

/// Which adapter connects, for [`connect`].
#[derive(Debug, Clone, Copy)]
pub struct Upstream<'a> {
    /// `mqtt` or `http`: names the AMQP container and the NATS connection (`ferry-mqtt-INSTANCE`).
    pub adapter: &'static str,
    /// Its settings.
    pub settings: &'a AdapterSettings,
    /// Ask for an outcome of telemetry QoS 0 in cluster mode (HTTP answers 503 when nobody consumes).
    pub confirm_qos0: bool,
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
    upstream: Upstream<'_>,
    shutdown: &Shutdown,
) -> Result<(RegistryClient, Downstream), UpstreamError> {
    let Upstream {
        adapter,
        settings: upstream,
        confirm_qos0,
    } = upstream;
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
    let name = format!("ferry-{}-{}", adapter, upstream.instance_id);
    let downstream = match upstream.messaging.mode {
        MessagingMode::Embedded => {
            let mut config = DownstreamConfig::new(
                upstream.router_address.clone(),
                upstream.router_user.clone(),
                upstream.router_password.clone(),
            );
            config.outcome_timeout = upstream.send_timeout();
            config.container_id = name;
            if upstream.router_tls {
                config.tls = Some(router_tls(upstream)?);
            }
            Downstream::start(config, shutdown.clone())
        }
        MessagingMode::Nats => {
            let mut config = NatsDownstreamConfig::new(upstream.messaging.nats.clone(), name);
            config.outcome_timeout = upstream.send_timeout();
            config.confirm_qos0 = confirm_qos0;
            Downstream::connect_nats(config, shutdown.clone()).await?
        }
    };
    Ok((registry, downstream))
}

fn router_tls(upstream: &AdapterSettings) -> Result<RouterTls, UpstreamError> {
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
