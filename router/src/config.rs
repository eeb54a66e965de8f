//! The router's configuration (`FERRY_ROUTER_*`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    /// SASL PLAIN user name of the protocol adapters' service credential.
    pub adapter_user: String,
    /// Its password; empty disables adapter logins.
    pub adapter_password: String,
    /// Close connections silent for twice this long; advertised to peers as idle-time-out.
    pub idle_timeout_secs: u64,
    /// Stored events per tenant beyond which producers get no more credit.
    pub max_events_per_tenant: u64,
    /// Time-to-live of an event without a `ttl` header, in seconds (0 = keep until accepted).
    pub default_event_ttl_secs: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
}

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
            adapter_user: "ferry-adapter".into(),
            adapter_password: String::new(),
            idle_timeout_secs: 60,
            max_events_per_tenant: 100_000,
            default_event_ttl_secs: 0,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ferry_core::config::ConfigError> {
        let field = |field: &str, message: &str| ferry_core::config::ConfigError::Field {
            field: field.to_owned(),
            message: message.to_owned(),
        };
        if self.tls.cert_path.is_some() != self.tls.key_path.is_some() {
            return Err(field(
                "tls",
                "cert_path and key_path must be given together",
            ));
        }
        if !(self.registry_url.starts_with("http://") || self.registry_url.starts_with("https://"))
        {
            return Err(field("registry_url", "must be an http:// or https:// URL"));
        }
        if self.max_events_per_tenant == 0 {
            return Err(field("max_events_per_tenant", "must be at least 1"));
        }
        Ok(())
    }
}
