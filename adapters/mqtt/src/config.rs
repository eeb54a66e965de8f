//! The MQTT adapter's configuration (`FERRY_MQTT_*`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Plain MQTT listener.
    pub bind: SocketAddr,
    /// MQTT over TLS listener; only when `tls` is configured.
    pub tls_bind: SocketAddr,
    pub tls: TlsConfig,
    /// Separate admin server (`/live`, `/ready`, `/metrics`).
    pub admin_bind: Option<SocketAddr>,
    /// The registry's base URL (`https://...` for TLS) and internal token.
    pub registry_url: String,
    pub registry_token: String,
    /// The internal token from a file (a mounted Secret) instead of `registry_token`.
    pub registry_token_file: Option<PathBuf>,
    /// CA certificate (PEM) an `https` registry's certificate must chain to (the public web roots
    /// without one).
    pub registry_ca_file: Option<PathBuf>,
    /// The router's AMQP address (`host:port`) and the adapters' service credential there.
    pub router_address: String,
    pub router_user: String,
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
    /// Largest PUBLISH payload accepted (Hono's default is 2048); larger: discard and disconnect.
    pub max_payload_bytes: usize,
    /// Most concurrent connections of this instance (0 = no limit).
    pub max_connections: usize,
    /// Most connections that have not finished their CONNECT (TLS handshake, CONNECT, authentication)
    /// at once (0 = no limit): beyond, a new connection is closed at accept. Without it, anyone who can
    /// reach the port holds a socket and a task per connection for `connect_timeout_secs`, as many as
    /// the file descriptor limit allows.
    pub max_connecting: usize,
    /// Most open sockets of this instance, CONNECT done or not (0 = no limit): beyond, a new connection
    /// is closed at accept, as Mosquitto's `max_connections` does. Keeps descriptors for the adapter's
    /// own registry and router connections.
    pub max_sockets: usize,
    /// Longest keep-alive a client may ask for, in seconds (0 = no maximum). A CONNECT with keep-alive
    /// 0 ("never idle") or above it gets this one: MQTT 5 clients are told so in the CONNACK (Server
    /// Keep Alive), MQTT 3.1.1 ones are closed after 1.5 times it without a packet. AWS IoT Core's
    /// bound.
    pub max_keep_alive_secs: u16,
    /// Time a client has to send its CONNECT (and, on the TLS listener, before that to finish the
    /// handshake).
    pub connect_timeout_secs: u64,
    /// How long the router may take to settle a QoS 1 message, an event or a command response before
    /// the device is told it failed (at least 1).
    pub send_timeout_ms: u64,
    /// How long a device has to PUBACK a QoS 1 command (Hono's `sendMessageToDeviceTimeout`).
    pub command_ack_timeout_ms: u64,
    /// Send Hono's connection events (`application/vnd.eclipse-hono-dc-notification+json` on
    /// `event/TENANT`) when an authenticated device connects or disconnects: Hono's
    /// `hono.connectionEvents.producer=events`. Off by default, like Hono (which only logs them).
    pub connection_events: bool,
    /// Whether every device must authenticate (Hono's `HONO_MQTT_AUTHENTICATIONREQUIRED`). When false,
    /// a CONNECT without credentials is accepted and its topics name tenant and device
    /// (`telemetry/TENANT/DEVICE`), for tenants whose `hono-mqtt` entry says
    /// `device-authentication-required: false`.
    pub authentication_required: bool,
    /// Limits on password logins: failures per `auth-id@tenant` and per source address before a
    /// lockout, and verifications at once (`FERRY_MQTT_LOGIN__MAX_FAILURES`, ...).
    pub login: ferry_adapter_core::auth::LoginLimits,
    /// Embedded (to the router over AMQP 1.0, the default) or cluster mode (NATS with JetStream:
    /// `FERRY_MQTT_MESSAGING__MODE=nats`, `FERRY_MQTT_MESSAGING__NATS__URLS='[nats://a:4222]'`); in cluster
    /// mode the `router_*` settings are not used.
    pub messaging: ferry_nats::Messaging,
}

/// The listener certificate and key: one `tls` section for every component.
pub use ferry_core::tls::TlsConfig;

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 1883)),
            tls_bind: SocketAddr::from(([0, 0, 0, 0], 8883)),
            tls: TlsConfig::default(),
            admin_bind: None,
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
            instance_id: "mqtt-0".into(),
            max_payload_bytes: 2048,
            max_connections: 0,
            max_connecting: 1000,
            max_sockets: 100_000,
            max_keep_alive_secs: 1200,
            connect_timeout_secs: 10,
            send_timeout_ms: 5000,
            command_ack_timeout_ms: 1000,
            connection_events: false,
            authentication_required: true,
            login: ferry_adapter_core::auth::LoginLimits::default(),
            messaging: ferry_nats::Messaging::default(),
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
            "router_password",
            &mut self.router_password,
            &mut self.router_password_file,
        )
        // The NATS password file is read when connecting (`messaging.nats.password_file`).
    }
}

impl Config {
    /// What this adapter connects to, for [`ferry_adapter_core::upstream::connect`].
    pub fn upstream(&self) -> ferry_adapter_core::upstream::Upstream {
        ferry_adapter_core::upstream::Upstream {
            adapter: "mqtt",
            instance_id: self.instance_id.clone(),
            registry_url: self.registry_url.clone(),
            registry_token: self.registry_token.clone(),
            registry_ca_file: self.registry_ca_file.clone(),
            router_address: self.router_address.clone(),
            router_user: self.router_user.clone(),
            router_password: self.router_password.clone(),
            router_tls: self.router_tls,
            router_ca_file: self.router_ca_file.clone(),
            send_timeout: std::time::Duration::from_millis(self.send_timeout_ms),
            confirm_qos0: false,
            messaging: self.messaging.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), ferry_core::config::ConfigError> {
        let field = |field: &str, message: &str| ferry_core::config::ConfigError::Field {
            field: field.to_owned(),
            message: message.to_owned(),
        };
        self.tls.validate("tls")?;
        if ferry_core::ids::TenantId::new(&self.instance_id).is_err() {
            return Err(field(
                "instance_id",
                "must be 1-128 characters of [A-Za-z0-9-_.]",
            ));
        }
        if self.max_payload_bytes == 0 {
            return Err(field("max_payload_bytes", "must be at least 1"));
        }
        if self.send_timeout_ms == 0 {
            return Err(field("send_timeout_ms", "must be at least 1"));
        }
        self.login.validate().map_err(|e| match e {
            ferry_core::config::ConfigError::Field { field, message } => {
                ferry_core::config::ConfigError::Field {
                    field: format!("login.{field}"),
                    message,
                }
            }
            other => other,
        })?;
        // Names its fields from `messaging` down (`messaging.nats.urls`).
        self.messaging.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messaging_comes_from_the_environment_and_is_checked_with_its_path() {
        let load = |urls: &str| {
            let sources = ferry_core::config::Sources {
                env_prefix: "FERRY_MQTT_".into(),
                env: vec![
                    ("FERRY_MQTT_MESSAGING__MODE".into(), "nats".into()),
                    ("FERRY_MQTT_MESSAGING__NATS__URLS".into(), urls.into()),
                ],
                ..Default::default()
            };
            ferry_core::config::load::<Config>(&sources).expect("load")
        };
        let c = load("[\"nats://127.0.0.1:4222\"]");
        assert_eq!(c.messaging.mode, ferry_nats::MessagingMode::Nats);
        assert_eq!(c.messaging.nats.urls, ["nats://127.0.0.1:4222"]);
        c.validate().expect("valid");
        let e = load("[http://x]").validate().expect_err("not a NATS URL");
        assert_eq!(e.field(), Some("messaging.nats.urls"));
        assert_eq!(
            Config::default().messaging.mode,
            ferry_nats::MessagingMode::Embedded
        );
    }
}
