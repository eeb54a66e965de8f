//! The `messaging` setting of adapters and routers, and the NATS connection settings.
//!
//! ```yaml
//! messaging:
//!   mode: nats            # or embedded (the default: one router, nothing else to run)
//!   nats:
//!     urls: ["tls://nats-0.nats:4222", "tls://nats-1.nats:4222", "tls://nats-2.nats:4222"]
//!     user: ferry-router
//!     password_file: /etc/ferry/nats/password
//!     tls_ca: /etc/ferry/ca/ca.crt
//! ```
//!
//! (`FERRY_ROUTER_MESSAGING__MODE=nats`, `FERRY_ROUTER_MESSAGING__NATS__URLS='[nats://a:4222]'`.)

use std::path::PathBuf;

use ferry_core::config::ConfigError;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Which bus a component uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessagingMode {
    /// Adapters send to one router over AMQP 1.0; the router keeps its own event store.
    #[default]
    Embedded,
    /// NATS with JetStream is the bus; routers and adapters keep no state another replica would need.
    Nats,
}

/// The `messaging` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Messaging {
    pub mode: MessagingMode,
    /// Used when `mode` is `nats`.
    pub nats: NatsConfig,
}

impl Messaging {
    /// Checks the NATS settings when they are used; errors name the field from `messaging` down.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == MessagingMode::Nats {
            self.nats.validate().map_err(|e| match e {
                ConfigError::Field { field, message } => ConfigError::Field {
                    field: format!("messaging.nats.{field}"),
                    message,
                },
                other => other,
            })?;
        }
        Ok(())
    }
}

/// How to reach NATS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`); list several (or all) nodes of a cluster,
    /// the client learns the rest from the server.
    pub urls: Vec<String>,
    /// The component's NATS user (one per component kind, with its own subject permissions).
    pub user: Option<String>,
    /// Its password; prefer `password_file` (a mounted Secret) over the environment.
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) that the servers' certificates must chain to.
    pub tls_ca: Option<PathBuf>,
    /// Refuse to talk to a server without TLS.
    pub tls_required: bool,
    /// Replicas of each JetStream stream and key-value bucket Ferry creates (3 on a three-node cluster,
    /// 1 on a single server).
    pub replicas: usize,
    /// How long the first connection may take.
    pub connect_timeout_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            urls: vec!["nats://127.0.0.1:4222".into()],
            user: None,
            password: None,
            password_file: None,
            tls_ca: None,
            tls_required: false,
            replicas: 1,
            connect_timeout_ms: 5000,
        }
    }
}

impl NatsConfig {
    /// Refuses settings that could not work; the error names the field within this section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = |field: &str, message: String| ConfigError::Field {
            field: field.to_owned(),
            message,
        };
        if self.urls.is_empty() {
            return Err(field("urls", "at least one NATS URL is needed".into()));
        }
        for u in &self.urls {
            let parsed = url::Url::parse(u)
                .map_err(|e| field("urls", format!("{u:?} is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "nats" | "tls") || parsed.host_str().is_none() {
                return Err(field(
                    "urls",
                    format!("{u:?}: expected nats://HOST:PORT or tls://HOST:PORT"),
                ));
            }
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(field(
                "password",
                "give password or password_file, not both".into(),
            ));
        }
        if self.user.is_none() && (self.password.is_some() || self.password_file.is_some()) {
            return Err(field("user", "a password needs a user".into()));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(field(
                "replicas",
                "must be 1 to 5 (JetStream's range)".into(),
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(field("connect_timeout_ms", "must be at least 1".into()));
        }
        Ok(())
    }

    /// The password, read from `password_file` when that is given (trailing newline removed).
    pub fn password(&self) -> Result<Option<String>, Error> {
        match &self.password_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|p| Some(p.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|source| Error::Read {
                    what: "NATS password file",
                    path: path.clone(),
                    source,
                }),
            None => Ok(self.password.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_is_the_default_and_needs_no_nats_settings() {
        let m = Messaging {
            nats: NatsConfig {
                urls: Vec::new(),
                ..NatsConfig::default()
            },
            ..Messaging::default()
        };
        assert_eq!(m.mode, MessagingMode::Embedded);
        m.validate().expect("embedded ignores nats");
    }

    #[test]
    fn nats_settings_are_checked_with_their_path() {
        let bad = |nats: NatsConfig| {
            Messaging {
                mode: MessagingMode::Nats,
                nats,
            }
            .validate()
            .expect_err("refused")
            .field()
            .map(str::to_owned)
        };
        let d = NatsConfig::default;
        assert_eq!(
            bad(NatsConfig {
                urls: vec![],
                ..d()
            }),
            Some("messaging.nats.urls".into())
        );
        assert_eq!(
            bad(NatsConfig {
                urls: vec!["http://x:4222".into()],
                ..d()
            }),
            Some("messaging.nats.urls".into())
        );
        assert_eq!(
            bad(NatsConfig {
                password: Some("p".into()),
                ..d()
            }),
            Some("messaging.nats.user".into())
        );
        assert_eq!(
            bad(NatsConfig { replicas: 7, ..d() }),
            Some("messaging.nats.replicas".into())
        );
        Messaging {
            mode: MessagingMode::Nats,
            nats: NatsConfig {
                urls: vec!["tls://a:4222".into(), "nats://b:4222".into()],
                user: Some("ferry-router".into()),
                password: Some("p".into()),
                replicas: 3,
                ..d()
            },
        }
        .validate()
        .expect("a cluster with a user");
    }

    #[test]
    fn the_section_loads_from_the_environment() {
        #[derive(Debug, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        struct Component {
            messaging: Messaging,
        }
        let sources = ferry_core::config::Sources {
            env_prefix: "FERRY_ROUTER_".into(),
            env: vec![
                ("FERRY_ROUTER_MESSAGING__MODE".into(), "nats".into()),
                (
                    "FERRY_ROUTER_MESSAGING__NATS__URLS".into(),
                    "[nats://a:4222, nats://b:4222]".into(),
                ),
                ("FERRY_ROUTER_MESSAGING__NATS__REPLICAS".into(), "3".into()),
            ],
            ..Default::default()
        };
        let c: Component = ferry_core::config::load(&sources).expect("load");
        assert_eq!(c.messaging.mode, MessagingMode::Nats);
        assert_eq!(c.messaging.nats.urls, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(c.messaging.nats.replicas, 3);
    }

    #[test]
    fn the_password_file_is_read_without_its_newline() {
        let dir = tempfile_dir();
        let path = dir.join("pw");
        std::fs::write(&path, "s3cret\n").expect("write");
        let c = NatsConfig {
            user: Some("u".into()),
            password_file: Some(path),
            ..NatsConfig::default()
        };
        assert_eq!(c.password().expect("read").as_deref(), Some("s3cret"));
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-nats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }
}
