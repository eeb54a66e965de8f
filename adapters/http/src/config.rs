//! The HTTP adapter's configuration (`FERRY_HTTP_*`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Plain HTTP listener.
    pub bind: SocketAddr,
    /// HTTPS listener; only when `tls` is configured.
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
    /// Largest request body accepted (Hono's `maxPayloadSize`, 2048 as in the MQTT adapter); larger: 413.
    pub max_payload_bytes: usize,
    /// A keep-alive connection idle this long is closed, and a client has this long to send a request's
    /// headers (Hono's `idleTimeout`).
    pub idle_timeout_secs: u64,
    /// Time a client has to send a request's whole body; slower: 408 and the connection is closed.
    pub body_timeout_secs: u64,
    /// Longest a request with `hono-ttd` waits for a command, whatever the device or the tenant's
    /// `max-ttd` ask for.
    pub max_ttd_secs: u64,
    /// How long the router may take to settle a QoS 1 message or an event before the device gets 503.
    pub send_timeout_ms: u64,
    /// Whether every device must authenticate (Hono's `HONO_HTTP_AUTHENTICATIONREQUIRED`). When false,
    /// `PUT /telemetry/TENANT/DEVICE` (and `/event`, `/command/res`) without credentials is accepted for
    /// tenants whose `hono-http` entry says `device-authentication-required: false`.
    pub authentication_required: bool,
    /// Limits on password logins: failures per `auth-id@tenant` and per source address before a
    /// lockout, and verifications at once (`FERRY_HTTP_LOGIN__MAX_FAILURES`, ...).
    pub login: ferry_adapter_core::auth::LoginLimits,
    /// Embedded (to the router over AMQP 1.0, the default) or cluster mode (NATS with JetStream:
    /// `FERRY_HTTP_MESSAGING__MODE=nats`, `FERRY_HTTP_MESSAGING__NATS__URLS='[nats://a:4222]'`); in cluster
    /// mode the `router_*` settings are not used.
    pub messaging: ferry_nats::Messaging,
}

/// The listener certificate and key: one `tls` section for every component.
pub use ferry_core::tls::TlsConfig;

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls_bind: SocketAddr::from(([0, 0, 0, 0], 8443)),
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
            instance_id: "http-0".into(),
            max_payload_bytes: 2048,
            idle_timeout_secs: 75,
            body_timeout_secs: 10,
            max_ttd_secs: 60,
            send_timeout_ms: 5000,
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
            adapter: "http",
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
            confirm_qos0: true,
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
        if self.idle_timeout_secs == 0 {
            return Err(field("idle_timeout_secs", "must be at least 1"));
        }
        if self.body_timeout_secs == 0 {
            return Err(field("body_timeout_secs", "must be at least 1"));
        }
        // A wait longer than a day is a leak, not a long poll.
        if self.max_ttd_secs > 86_400 {
            return Err(field("max_ttd_secs", "must be at most 86400"));
        }
        if self.send_timeout_ms == 0 {
            return Err(field("send_timeout_ms", "must be at least 1"));
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
                env_prefix: "FERRY_HTTP_".into(),
                env: vec![
                    ("FERRY_HTTP_MESSAGING__MODE".into(), "nats".into()),
                    ("FERRY_HTTP_MESSAGING__NATS__URLS".into(), urls.into()),
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

    #[test]
    fn defaults_are_valid_and_env_overrides_them() {
        Config::default().validate().expect("defaults");
        let sources = ferry_core::config::Sources {
            env_prefix: "FERRY_HTTP_".into(),
            env: vec![
                ("FERRY_HTTP_MAX_PAYLOAD_BYTES".into(), "65536".into()),
                ("FERRY_HTTP_TLS__CERT_PATH".into(), "/c.pem".into()),
            ],
            ..Default::default()
        };
        let c: Config = ferry_core::config::load(&sources).expect("load");
        assert_eq!(c.max_payload_bytes, 65536);
        let e = c.validate().expect_err("key missing");
        assert_eq!(e.field(), Some("tls"));
    }

    #[test]
    fn login_limits_come_from_the_environment_and_are_checked() {
        let sources = ferry_core::config::Sources {
            env_prefix: "FERRY_HTTP_".into(),
            env: vec![
                ("FERRY_HTTP_LOGIN__MAX_FAILURES".into(), "3".into()),
                ("FERRY_HTTP_LOGIN__LOCKOUT_SECS".into(), "0".into()),
            ],
            ..Default::default()
        };
        let c: Config = ferry_core::config::load(&sources).expect("load");
        assert_eq!(c.login.max_failures, 3);
        let e = c.validate().expect_err("a lockout of 0 s disables it");
        assert_eq!(e.field(), Some("login.lockout_secs"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let sources = ferry_core::config::Sources {
            env_prefix: "FERRY_HTTP_".into(),
            env: vec![("FERRY_HTTP_MAX_TTD".into(), "5".into())],
            ..Default::default()
        };
        assert!(ferry_core::config::load::<Config>(&sources).is_err());
    }
}
