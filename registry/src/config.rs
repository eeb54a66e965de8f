//! The registry's configuration (`FERRY_REGISTRY_*`, see docs/registry.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything the registry needs to start. Defaults run it on embedded SQLite in `./ferry-data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the management and internal HTTP API.
    pub bind: SocketAddr,
    /// Address of the admin server (`/live`, `/ready`, `/metrics`); `null` serves them on `bind` only.
    pub admin_bind: Option<SocketAddr>,
    /// Where the SQLite database, generated tokens and the signing key live.
    pub data_dir: PathBuf,
    /// `postgres://…` for PostgreSQL (or `sqlite://…`); unset = SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// The database URL from a file (a mounted Secret: it holds the database password).
    pub database_url_file: Option<PathBuf>,
    /// Cluster mode (`mode: nats`): the presence API reads the devices' presence from NATS, where the
    /// adapters and routers keep it (docs/console.md). Embedded (the default): from the router in the
    /// same process, if any.
    pub messaging: ferry_nats::Messaging,
    /// Bearer token for the management API; else read from `admin_token_file`; else generated into
    /// `data_dir/admin-token`.
    pub admin_token: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    /// Bearer token for the internal API (adapters, routers); else `internal_token_file`; else generated
    /// into `data_dir/internal-token`. The admin token is accepted there too.
    pub internal_token: Option<String>,
    pub internal_token_file: Option<PathBuf>,
    /// The Ed25519 key that signs registration assertions; generated when the file is absent.
    /// Default: `data_dir/assertion-signing.key`.
    pub signing_key_file: Option<PathBuf>,
    /// The signing key's 32-byte seed (base64), e.g. from a Kubernetes Secret; wins over the file.
    pub signing_key: Option<String>,
    /// Lifetime of a registration assertion, in seconds.
    pub assertion_lifetime_secs: u64,
    /// `max-age` the internal API gives caching clients, in seconds (the change stream purges earlier).
    pub cache_max_age_secs: u64,
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// bcrypt cost for `pwd-plain` and application passwords; capped by `max_bcrypt_cost`.
    pub bcrypt_cost: u32,
    /// The highest bcrypt cost accepted in stored hashes (Hono's `maxBcryptCostFactor`).
    pub max_bcrypt_cost: u32,
    /// HTTPS when both are set (PEM files).
    pub tls: TlsConfig,
    /// Most connections served at once; further clients wait in the listen queue until one closes.
    pub max_connections: usize,
    /// A client must send a request's complete header within this many seconds of starting it (or of
    /// the previous response, on a kept-alive connection), else the connection is closed.
    pub header_read_timeout_secs: u64,
    /// A request (body included) must be answered within this many seconds, else 503.
    pub request_timeout_secs: u64,
    /// Application-user logins: failed attempts per name (and per source address, when the caller gives
    /// one) within `login_lockout_secs` after which further attempts are refused without checking.
    pub login_max_failures: u32,
    /// Application-user logins: the window that counts failures, and how long a lockout lasts.
    pub login_lockout_secs: u64,
    /// Application-user logins: most names and sources whose failures (or past success) are remembered.
    pub login_tracked_max: usize,
    /// Password verifications (bcrypt) run at once; unset = one per core. Half of them (rounded down)
    /// are kept for names that have logged in successfully before.
    pub password_verify_concurrency: Option<usize>,
    /// Serve the web console under `/console` (docs/console.md). `ferry up` turns it on.
    pub console: bool,
}

/// The listener certificate and key: one `tls` section for every component.
pub use ferry_core::tls::TlsConfig;

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 28080)),
            admin_bind: None,
            data_dir: PathBuf::from("ferry-data"),
            database_url: None,
            database_url_file: None,
            messaging: ferry_nats::Messaging::default(),
            admin_token: None,
            admin_token_file: None,
            internal_token: None,
            internal_token_file: None,
            signing_key_file: None,
            signing_key: None,
            assertion_lifetime_secs: 600,
            cache_max_age_secs: 300,
            max_body_bytes: 64 * 1024,
            bcrypt_cost: 10,
            max_bcrypt_cost: 10,
            tls: TlsConfig::default(),
            max_connections: 1024,
            header_read_timeout_secs: 30,
            request_timeout_secs: 30,
            login_max_failures: 5,
            login_lockout_secs: 60,
            login_tracked_max: 10_000,
            password_verify_concurrency: None,
            console: false,
        }
    }
}

impl ferry_core::config::Settings for Config {
    fn check(&self) -> Result<(), ferry_core::config::ConfigError> {
        self.validate()
    }

    fn read_secrets(&mut self) -> Result<(), ferry_core::config::ConfigError> {
        // The tokens and the signing key are read (or generated) by the registry itself at start.
        if let Some(path) = self.database_url_file.take() {
            let url = ferry_core::config::secret(
                "database_url",
                self.database_url.as_deref().unwrap_or_default(),
                Some(&path),
            )?;
            self.database_url = Some(url);
        }
        Ok(())
    }
}

impl Config {
    /// Refuses combinations serde cannot see; the error names the field.
    pub fn validate(&self) -> Result<(), ferry_core::config::ConfigError> {
        let field = ferry_core::config::ConfigError::invalid;
        self.tls.validate("tls")?;
        self.messaging.validate()?;
        if !(4..=31).contains(&self.max_bcrypt_cost) {
            return Err(field("max_bcrypt_cost", "must be between 4 and 31"));
        }
        if self.bcrypt_cost < 4 || self.bcrypt_cost > self.max_bcrypt_cost {
            return Err(field(
                "bcrypt_cost",
                "must be between 4 and max_bcrypt_cost",
            ));
        }
        if self.assertion_lifetime_secs < 10 {
            return Err(field("assertion_lifetime_secs", "must be at least 10"));
        }
        if self.max_body_bytes < 1024 {
            return Err(field("max_body_bytes", "must be at least 1024"));
        }
        let positive = [
            ("max_connections", self.max_connections as u64),
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("request_timeout_secs", self.request_timeout_secs),
            ("login_max_failures", u64::from(self.login_max_failures)),
            ("login_lockout_secs", self.login_lockout_secs),
            ("login_tracked_max", self.login_tracked_max as u64),
            (
                "password_verify_concurrency",
                self.password_verify_concurrency.map_or(1, |n| n as u64),
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(field(name, "must be at least 1"));
        }
        if let Some(url) = &self.database_url {
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                return Err(field(
                    "database_url",
                    "must start with postgres://, postgresql:// or sqlite:",
                ));
            }
        }
        Ok(())
    }
}
