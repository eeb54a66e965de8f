//! `ferry-registry`: the device registry.
//!
//! Holds tenants, devices, credentials and application users (SQLite by default, PostgreSQL when given a
//! URL); serves Hono's management API under `/v1` and the internal API that adapters and routers use under
//! `/internal/v1` (credentials, registration assertions, tenants, JWKS, application-user authentication and
//! the change stream). In the data flow it sits beside the path: adapters ask it who a device is and get a
//! signed registration assertion; routers fetch its public keys and never call it per message.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ferry_core::admin::Admin;
use ferry_core::assertion::SigningKey;
use ferry_core::shutdown::Shutdown;
use ferry_registry_model::HashOptions;

pub mod api;
pub mod changes;
pub mod config;
pub mod error;
pub mod logins;
pub mod server;
pub mod store;

pub use config::Config;

/// A registry that is up: where it listens and where its admin token is.
#[derive(Debug)]
pub struct Started {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub tls: bool,
    /// Where the admin token was read from or written to (`None` when it came from the config).
    pub admin_token_path: Option<PathBuf>,
    pub admin_token: String,
    pub internal_token: String,
    pub backend: store::Backend,
    task: tokio::task::JoinHandle<()>,
}

impl Started {
    /// The base URL of the API (`http://` or `https://`).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let host = if self.addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", self.addr.port())
        } else {
            self.addr.to_string()
        };
        format!("{scheme}://{host}")
    }

    /// Waits until the server has stopped (after shutdown).
    pub async fn join(self) -> anyhow::Result<()> {
        self.task.await.context("registry server task failed")
    }
}

/// Runs the registry until `shutdown`.
pub async fn run(config: Config, admin: Admin, shutdown: Shutdown) -> anyhow::Result<()> {
    start(config, admin, shutdown).await?.join().await
}

/// Opens storage, binds the ports and starts serving; returns once the registry accepts requests.
pub async fn start(config: Config, admin: Admin, shutdown: Shutdown) -> anyhow::Result<Started> {
    start_with_bridge(config, admin, shutdown, None).await
}

/// [`start`], with the router's [`RouterBridge`](ferry_core::console::RouterBridge) for the presence
/// API and the console (`ferry up` runs both in one process; docs/console.md).
pub async fn start_with_bridge(
    config: Config,
    admin: Admin,
    shutdown: Shutdown,
    bridge: Option<Arc<ferry_core::console::RouterBridge>>,
) -> anyhow::Result<Started> {
    let readiness = admin.readiness("registry");
    // Cluster mode: the adapters and routers keep presence in NATS and the registry reads it; the
    // console's live view and commands go through NATS too (docs/console.md "Cluster mode").
    let nats = match (&bridge, config.messaging.mode) {
        (None, ferry_nats::MessagingMode::Nats) => Some(
            ferry_nats::connect_with(&config.messaging.nats, "ferry-registry", |o| {
                o.custom_inbox_prefix(ferry_nats::permissions::REGISTRY_INBOX)
            })
            .await
            .context("connecting to NATS (messaging.nats)")?,
        ),
        _ => None,
    };
    let presence: Option<Arc<dyn ferry_core::console::PresenceStore>> = match (&bridge, &nats) {
        (Some(b), _) => Some(b.presence.clone()),
        (None, Some(client)) => {
            let js = async_nats::jetstream::new(client.clone());
            let presence =
                ferry_nats::presence::NatsPresence::open(&js, config.messaging.nats.replicas)
                    .await
                    .context("opening the presence bucket (messaging.nats)")?;
            Some(Arc::new(presence))
        }
        (None, None) => None,
    };
    let store = store::Store::open(config.database_url.as_deref(), &config.data_dir)
        .await
        .context("opening the registry database")?;
    if store.backend() == store::Backend::Postgres {
        // Every replica hears every replica's writes (changes.rs); listening before serving means a
        // subscriber never misses a change committed after its `hello`.
        let listener = changes::listen_postgres(store.url())
            .await
            .context("listening for registry changes on PostgreSQL")?;
        tokio::spawn(changes::relay(
            listener,
            store.changes().clone(),
            shutdown.clone(),
        ));
    }
    let (admin_token, admin_token_path) = token(
        config.admin_token.as_deref(),
        config.admin_token_file.as_deref(),
        &config.data_dir.join("admin-token"),
    )?;
    let (internal_token, _) = token(
        config.internal_token.as_deref(),
        config.internal_token_file.as_deref(),
        &config.data_dir.join("internal-token"),
    )?;
    let signer = match &config.signing_key {
        Some(seed) => SigningKey::from_seed_b64(seed).context("config field `signing_key`")?,
        None => {
            let path = config
                .signing_key_file
                .clone()
                .unwrap_or_else(|| config.data_dir.join("assertion-signing.key"));
            SigningKey::load_or_generate(&path)?
        }
    };
    let cluster = match nats {
        Some(client) => Some(Arc::new(
            api::ClusterConsole::open(client, &config.messaging.nats, &signer).await?,
        )),
        None => None,
    };
    let tls = match (&config.tls.cert_path, &config.tls.key_path) {
        (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
        _ => None,
    };

    let hash = HashOptions {
        bcrypt_cost: config.bcrypt_cost,
        max_bcrypt_cost: config.max_bcrypt_cost,
        ..HashOptions::default()
    };
    let metrics = api::Metrics::new(&admin);
    metrics.tenants.set(store.count_tenants().await?);
    let login_limits = logins::LoginLimits {
        max_failures: config.login_max_failures,
        lockout: Duration::from_secs(config.login_lockout_secs),
        tracked_max: config.login_tracked_max,
        verify_concurrency: config
            .password_verify_concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from)),
    };
    let login_guard = {
        let (hash, counters) = (hash.clone(), metrics.logins.clone());
        // One bcrypt for the dummy hash: off the async workers.
        tokio::task::spawn_blocking(move || logins::LoginGuard::new(login_limits, &hash, counters))
            .await
            .context("preparing the login guard")?
            .context("hashing the dummy password")?
    };
    let state = api::AppState {
        store: store.clone(),
        changes: store.changes().clone(),
        signer: Arc::new(signer),
        tokens: Arc::new(api::Tokens {
            admin: admin_token.clone(),
            internal: internal_token.clone(),
        }),
        settings: Arc::new(api::Settings {
            assertion_lifetime_secs: config.assertion_lifetime_secs,
            cache_max_age_secs: config.cache_max_age_secs,
            max_body_bytes: config.max_body_bytes,
            request_timeout: Duration::from_secs(config.request_timeout_secs),
            hash,
            console: config.console,
        }),
        metrics,
        logins: login_guard,
        shutdown: shutdown.clone(),
        presence,
        // With the router in this process (`ferry up`), the adapters are here too and report into
        // the same metrics.
        stats: bridge
            .as_ref()
            .map(|_| api::stats::StatsSource::new(admin.clone())),
        bridge,
        cluster,
    };

    let listeners =
        ferry_core::net::Listeners::bind_one("the registry", config.bind, tls.clone()).await?;
    let addr = listeners.addr();
    let mut app = api::router(state);
    let admin_addr = ferry_core::admin::serve_admin(config.admin_bind, &admin, &shutdown).await?;
    if admin_addr.is_none() {
        app = app.merge(admin.router());
    }
    let limits = server::Limits {
        max_connections: config.max_connections,
        header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
    };
    let task = tokio::spawn(server::serve(listeners, app, limits, shutdown.clone()));
    readiness.set(store.ping().await);
    tracing::info!(%addr, backend = ?store.backend(), tls = tls.is_some(), "registry listening");
    Ok(Started {
        addr,
        admin_addr,
        tls: tls.is_some(),
        admin_token_path,
        admin_token,
        internal_token,
        backend: store.backend(),
        task,
    })
}

/// A token from the config, else from a file, else generated into `default_path` (mode 0600).
fn token(
    value: Option<&str>,
    file: Option<&Path>,
    default_path: &Path,
) -> anyhow::Result<(String, Option<PathBuf>)> {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        return Ok((v.to_owned(), None));
    }
    let path = file.unwrap_or(default_path);
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let t = text.trim().to_owned();
            anyhow::ensure!(!t.is_empty(), "token file {} is empty", path.display());
            Ok((t, Some(path.to_owned())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.is_none() => {
            use base64::Engine as _;
            use rand::RngCore as _;
            let mut bytes = [0u8; 24];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            write_private(path, &format!("{t}\n"))?;
            Ok((t, Some(path.to_owned())))
        }
        Err(e) => Err(e).with_context(|| format!("reading token file {}", path.display())),
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
