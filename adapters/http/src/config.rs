//! The HTTP adapter's configuration (`FERRY_HTTP_*`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Plain HTTP listener.
    pub bind: SocketAddr,
    /// HTTPS listener; only when `tls` is configured.
    pub tls_bind: SocketAddr,
    pub tls: TlsConfig,
    /// Separate admin server (`/live`, `/ready`, `/metrics`).
    pub admin_bind: Option<SocketAddr>,
    /// What the adapter connects to, who it is, how long a send may take, login limits and messaging
    /// mode: the settings every adapter shares (their keys are this config's own: `registry_url`, ...).
    #[serde(flatten)]
    pub adapter: AdapterSettings,
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
    /// Whether every device must authenticate (Hono's `HONO_HTTP_AUTHENTICATIONREQUIRED`). When false,
    /// `PUT /telemetry/TENANT/DEVICE` (and `/event`, `/command/res`) without credentials is accepted for
    /// tenants whose `hono-http` entry says `device-authentication-required: false`.
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
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls_bind: SocketAddr::from(([0, 0, 0, 0], 8443)),
            tls: TlsConfig::default(),
            admin_bind: None,
            adapter: AdapterSettings::for_instance("http-0"),
            max_payload_bytes: 2048,
            idle_timeout_secs: 75,
            body_timeout_secs: 10,
            max_ttd_secs: 60,
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
            adapter: "http",
            settings: &self.adapter,
            confirm_qos0: true,
        }
    }

    pub fn validate(&self) -> Result<(), ferry_core::config::ConfigError> {
        let field = ferry_core::config::ConfigError::invalid;
        self.tls.validate("tls")?;
        self.adapter.validate()?;
        if self.max_payload_bytes == 0 {
            return Err(field("max_payload_bytes", "must be at least 1"));
        }
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
        assert_eq!(c.adapter.login.max_failures, 3);
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
        let e = ferry_core::config::load::<Config>(&sources).expect_err("unknown key");
        assert_eq!(e.field(), Some("max_ttd"), "{e}");
        // The shared section's keys are this config's own, flat.
        let sources = ferry_core::config::Sources {
            env_prefix: "FERRY_HTTP_".into(),
            env: vec![("FERRY_HTTP_ROUTER_TLS".into(), "true".into())],
            ..Default::default()
        };
        let c: Config = ferry_core::config::load(&sources).expect("load");
        assert!(c.adapter.router_tls);
        let yaml = ferry_core::config::default_yaml::<Config>();
        assert!(yaml.contains("\nrouter_tls: false"), "{yaml}");
        assert!(!yaml.contains("unknown"), "{yaml}");
    }
}
