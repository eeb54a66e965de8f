//! The MQTT adapter's configuration (`FERRY_MQTT_*`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Plain MQTT listener.
    pub bind: SocketAddr,
    /// MQTT over TLS listener; only when `tls` is configured.
    pub tls_bind: SocketAddr,
    pub tls: TlsConfig,
    /// Separate admin server (`/live`, `/ready`, `/metrics`).
    pub admin_bind: Option<SocketAddr>,
    /// What the adapter connects to, who it is, how long a send may take, login limits and messaging
    /// mode: the settings every adapter shares (their keys are this config's own: `registry_url`, ...).
    #[serde(flatten)]
    pub adapter: AdapterSettings,
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
    /// Keys no field took: refused (`deny_unknown_fields` does not work beside `flatten`).
    #[serde(flatten)]
    pub unknown: ferry_core::config::NoUnknownFields,
}

/// The listener certificate and key: one `tls` section for every component.
pub use ferry_core::tls::TlsConfig;

/// The settings every adapter shares (flattened into [`Config`]).
pub use ferry_adapter_core::upstream::AdapterSettings;

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 1883)),
            tls_bind: SocketAddr::from(([0, 0, 0, 0], 8883)),
            tls: TlsConfig::default(),
            admin_bind: None,
            adapter: AdapterSettings::for_instance("mqtt-0"),
            max_payload_bytes: 2048,
            max_connections: 0,
            max_connecting: 1000,
            max_sockets: 100_000,
            max_keep_alive_secs: 1200,
            connect_timeout_secs: 10,
            command_ack_timeout_ms: 1000,
            connection_events: false,
            authentication_required: true,
            unknown: ferry_core::config::NoUnknownFields,
        }
    }
}

impl ferry_core::config::Settings for Config {
    fn check(&self) -> Result<(), ferry_core::config::ConfigError> {
        self.validate()
    }

    fn read_secrets(&mut self) -> Result<(), ferry_core::config::ConfigError> {
        self.adapter.read_secrets()
    }
}

impl Config {
    /// What this adapter connects to, for [`ferry_adapter_core::upstream::connect`].
    pub fn upstream(&self) -> ferry_adapter_core::upstream::Upstream<'_> {
        ferry_adapter_core::upstream::Upstream {
            adapter: "mqtt",
            settings: &self.adapter,
            confirm_qos0: false,
        }
    }

    pub fn validate(&self) -> Result<(), ferry_core::config::ConfigError> {
        let field = ferry_core::config::ConfigError::invalid;
        self.tls.validate("tls")?;
        self.adapter.validate()?;
        if self.max_payload_bytes == 0 {
            return Err(field("max_payload_bytes", "must be at least 1"));
        }
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
        assert_eq!(c.adapter.messaging.mode, ferry_nats::MessagingMode::Nats);
        assert_eq!(c.adapter.messaging.nats.urls, ["nats://127.0.0.1:4222"]);
        c.validate().expect("valid");
        let e = load("[http://x]").validate().expect_err("not a NATS URL");
        assert_eq!(e.field(), Some("messaging.nats.urls"));
        assert_eq!(
            Config::default().adapter.messaging.mode,
            ferry_nats::MessagingMode::Embedded
        );
    }

    #[test]
    fn a_bad_value_in_the_shared_section_is_named() {
        let sources = ferry_core::config::Sources {
            env_prefix: "FERRY_MQTT_".into(),
            env: vec![("FERRY_MQTT_SEND_TIMEOUT_MS".into(), "soon".into())],
            ..Default::default()
        };
        let e = ferry_core::config::load::<Config>(&sources).expect_err("not a number");
        assert_eq!(e.field(), Some("send_timeout_ms"), "{e}");
    }
}
