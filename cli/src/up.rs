//! `ferry up`: the whole platform in one process, on embedded defaults (SQLite, generated keys and tokens
//! in the data directory).
//!
//! The registry, the AMQP router and both protocol adapters run here, through the same `start`
//! functions their own binaries use.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use ferry_core::config::{self, Sources};

/// Options of `ferry up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Data directory (database, tokens, keys). Default: $FERRY_DATA_DIR or ~/.local/share/ferry.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Port of the registry's management API.
    #[arg(long, default_value_t = 28080)]
    pub registry_port: u16,
    /// Port of the AMQP 1.0 endpoint for applications.
    #[arg(long, default_value_t = 15672)]
    pub amqp_port: u16,
    /// Port of the MQTT adapter.
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// Port of the HTTP adapter.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Admin token for the management API; generated into the data directory when not given.
    #[arg(long, env = "FERRY_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Address every endpoint listens on: loopback by default, as Mosquitto does unconfigured;
    /// `--listen 0.0.0.0` exposes the registry, AMQP, MQTT and HTTP to the network.
    #[arg(long, default_value = "127.0.0.1", alias = "bind")]
    pub listen: std::net::IpAddr,
    /// Only the device endpoints (MQTT, HTTP) on another address than `--listen`.
    #[arg(long, hide = true)]
    pub mqtt_bind: Option<std::net::IpAddr>,
    /// Also create a demo tenant, device and application user (once; kept in the data directory) and
    /// print the commands that send and receive telemetry with them.
    #[arg(long)]
    pub demo: bool,
    /// Cluster mode on this machine, for trying it: three nats-server nodes (from PATH), two routers, two
    /// MQTT adapters, an HTTP adapter and a registry as child processes (docs/cluster.md). Ports count
    /// up from the ones given (second router on --amqp-port + 1, ...).
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: a PostgreSQL URL for the registry, which then runs two replicas.
    #[arg(long, requires = "cluster")]
    pub postgres: Option<String>,
    /// With --cluster: client port of the first NATS node (the others follow).
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    /// With --cluster: cluster (route) port of the first NATS node.
    #[arg(long, default_value_t = 6222)]
    pub nats_cluster_port: u16,
}

impl UpArgs {
    /// Where the device endpoints listen.
    pub fn device_listen(&self) -> std::net::IpAddr {
        self.mqtt_bind.unwrap_or(self.listen)
    }

    /// The line that says who can reach the endpoints.
    pub fn reach(&self) -> String {
        let (all, devices) = (self.listen, self.device_listen());
        let scope = |ip: std::net::IpAddr| {
            if ip.is_loopback() {
                "this machine only"
            } else if ip.is_unspecified() {
                "the network"
            } else {
                "that address"
            }
        };
        if all == devices {
            format!(
                "  listening on {all} ({}; --listen ADDR to change)",
                scope(all)
            )
        } else {
            format!(
                "  listening on {all} ({}), device endpoints on {devices} ({})",
                scope(all),
                scope(devices)
            )
        }
    }
}

/// Runs every component until Ctrl-C / SIGTERM.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    if args.cluster {
        return crate::cluster::up(args).await;
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let sources = Sources::from_env("FERRY_REGISTRY_", None)
        .flag(
            "bind",
            Some(SocketAddr::new(args.listen, args.registry_port)),
        )
        .flag("data_dir", Some(&data_dir))
        .flag("admin_token", args.admin_token.as_deref())
        // The console is on under `ferry up` unless FERRY_REGISTRY_CONSOLE says otherwise.
        .flag(
            "console",
            std::env::var_os("FERRY_REGISTRY_CONSOLE")
                .is_none()
                .then_some(true),
        );
    let registry_config: ferry_registry::Config = config::load_checked(&sources)?;

    let router_sources = Sources::from_env("FERRY_ROUTER_", None)
        .flag("bind", Some(SocketAddr::new(args.listen, args.amqp_port)))
        .flag("data_dir", Some(&data_dir));
    let mut router_config: ferry_router::Config = config::load_checked(&router_sources)?;

    let mqtt_sources = Sources::from_env("FERRY_MQTT_", None).flag(
        "bind",
        Some(SocketAddr::new(args.device_listen(), args.mqtt_port)),
    );
    let mut mqtt_config: ferry_mqtt_adapter::Config = config::load_checked(&mqtt_sources)?;

    let http_sources = Sources::from_env("FERRY_HTTP_", None).flag(
        "bind",
        Some(SocketAddr::new(args.device_listen(), args.http_port)),
    );
    let mut http_config: ferry_http_adapter::Config = config::load_checked(&http_sources)?;

    let admin = ferry_core::admin::Admin::new();
    let shutdown = ferry_core::shutdown::on_signal();
    let started = std::time::Instant::now();
    // Presence, live messages and console commands: held and served by the router, read and asked for
    // by the registry's API (docs/console.md).
    let bridge = ferry_core::console::RouterBridge::new(std::sync::Arc::new(
        ferry_core::console::MemoryPresence::default(),
    ));
    let console = registry_config.console;
    let registry = ferry_registry::start_with_bridge(
        registry_config,
        admin.clone(),
        shutdown.clone(),
        Some(bridge.clone()),
    )
    .await?;
    // In one process the adapters and the router share the registry's internal token:
    // it is the adapters' service credential at the router.
    router_config.registry_url = registry.url();
    router_config.registry_token = registry.internal_token.clone();
    if router_config.adapter_password.is_empty() {
        router_config.adapter_password = registry.internal_token.clone();
    }
    let router =
        ferry_router::start_with_bridge(router_config, admin.clone(), shutdown.clone(), bridge)
            .await?;
    mqtt_config.registry_url = registry.url();
    mqtt_config.registry_token = registry.internal_token.clone();
    mqtt_config.router_address = format!("127.0.0.1:{}", router.addr.port());
    mqtt_config.router_password = registry.internal_token.clone();
    // Both adapters report Hono's metric families into one set, told apart by `component_name`.
    let hono_metrics = ferry_mqtt_adapter::metrics::HonoMetrics::new(&admin);
    let mqtt = ferry_mqtt_adapter::start_with_metrics(
        mqtt_config,
        admin.clone(),
        &hono_metrics,
        shutdown.clone(),
    )
    .await?;
    http_config.registry_url = registry.url();
    http_config.registry_token = registry.internal_token.clone();
    http_config.router_address = format!("127.0.0.1:{}", router.addr.port());
    http_config.router_password = registry.internal_token.clone();
    let http =
        ferry_http_adapter::start_with_metrics(http_config, admin.clone(), &hono_metrics, shutdown)
            .await?;
    let token_hint = registry.admin_token_path.as_ref().map_or_else(
        || "given on the command line".to_owned(),
        |p| p.display().to_string(),
    );
    println!(
        "Ferry is up in {} ms (data in {})",
        started.elapsed().as_millis(),
        data_dir.display()
    );
    println!("{}", args.reach());
    println!("  registry (Hono management API)  {}/v1", registry.url());
    println!("  admin token                     {token_hint}");
    if console {
        println!(
            "  web console                     {}/console  (sign in with the admin token)",
            registry.url()
        );
    }
    println!(
        "  AMQP 1.0 for applications       amqp://{}  (SASL PLAIN, application users)",
        router.addr
    );
    println!(
        "  health and metrics              {}/ready  {}/metrics",
        registry.url(),
        registry.url()
    );
    println!(
        "  MQTT for devices                mqtt://{}  (user auth-id@tenant)",
        mqtt.addr
    );
    println!(
        "  HTTP for devices                http://{}  (Basic auth-id@tenant)",
        http.addr
    );
    if args.demo {
        let demo = demo::ensure(&registry.url(), &registry.admin_token, &data_dir).await?;
        let device_host = if mqtt.addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            mqtt.addr.ip().to_string()
        };
        let http_host = if http.addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            http.addr.ip().to_string()
        };
        println!(
            "{}",
            demo.instructions(
                router.addr,
                &device_host,
                mqtt.addr.port(),
                &http_host,
                http.addr.port()
            )
        );
    }
    println!("Press Ctrl-C to stop.");
    let (r, a, m, h) = tokio::join!(registry.join(), router.join(), mqtt.join(), http.join());
    r.and(a).and(m).and(h)
}

/// `ferry up --demo`: a tenant, a device with a password and an application user to try Ferry with.
pub(crate) mod demo {
    use std::net::SocketAddr;
    use std::path::Path;

    use anyhow::{bail, Context as _};
    use reqwest::{Method, StatusCode};
    use serde_json::{json, Value};

    pub const TENANT: &str = "demo";
    pub const DEVICE: &str = "demo-device";
    pub const AUTH_ID: &str = "demo-device";
    pub const APPLICATION: &str = "demo-app";
    /// Where the generated passwords are kept, so that a second `ferry up --demo` reuses everything.
    pub const FILE: &str = "demo-passwords.json";

    /// The demo's passwords (generated once, kept in the data directory).
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    pub struct Demo {
        pub device_password: String,
        pub application_password: String,
    }

    /// A password safe to paste unquoted into a shell: 32 hex digits (122 random bits).
    fn password() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    struct Api<'a> {
        http: reqwest::Client,
        base: &'a str,
        token: &'a str,
    }

    impl Api<'_> {
        async fn call(
            &self,
            method: Method,
            path: &str,
            body: Option<Value>,
        ) -> anyhow::Result<(StatusCode, Value)> {
            let url = format!("{}/v1{path}", self.base);
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(self.token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("demo: {method} {url}"))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            Ok((status, value))
        }

        /// POST that may find the resource there already (409): both are fine.
        async fn create(&self, path: &str) -> anyhow::Result<()> {
            let (status, body) = self.call(Method::POST, path, Some(json!({}))).await?;
            if status.is_success() || status == StatusCode::CONFLICT {
                return Ok(());
            }
            bail!("demo: creating {path} failed with {status}: {body}")
        }

        async fn put(&self, path: &str, body: Value) -> anyhow::Result<()> {
            let (status, answer) = self.call(Method::PUT, path, Some(body)).await?;
            if !status.is_success() {
                bail!("demo: updating {path} failed with {status}: {answer}");
            }
            Ok(())
        }
    }

    /// Creates what is missing of the demo tenant, device, credential and application user.
    pub async fn ensure(registry: &str, token: &str, data_dir: &Path) -> anyhow::Result<Demo> {
        let file = data_dir.join(FILE);
        let (demo, fresh) = match std::fs::read_to_string(&file) {
            Ok(text) => (
                serde_json::from_str::<Demo>(&text)
                    .with_context(|| format!("{} is not what `ferry up --demo` wrote; delete it to start the demo afresh", file.display()))?,
                false,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                Demo {
                    device_password: password(),
                    application_password: password(),
                },
                true,
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        let api = Api {
            http: reqwest::Client::new(),
            base: registry.trim_end_matches('/'),
            token,
        };
        api.create(&format!("/tenants/{TENANT}")).await?;
        api.create(&format!("/devices/{TENANT}/{DEVICE}")).await?;

        // The device's password: set unless it is there from an earlier `ferry up --demo`.
        let creds_path = format!("/credentials/{TENANT}/{DEVICE}");
        let (status, mut creds) = api.call(Method::GET, &creds_path, None).await?;
        if !status.is_success() {
            bail!("demo: reading {creds_path} failed with {status}: {creds}");
        }
        let list = creds
            .as_array_mut()
            .context("demo: the registry returned no credentials list")?;
        let is_demo = |c: &Value| {
            c.get("type").and_then(Value::as_str) == Some("hashed-password")
                && c.get("auth-id").and_then(Value::as_str) == Some(AUTH_ID)
        };
        if fresh || !list.iter().any(is_demo) {
            // Secret ids without secret data keep the device's other stored secrets as they are.
            list.retain(|c| !is_demo(c));
            list.push(json!({
                "type": "hashed-password",
                "auth-id": AUTH_ID,
                "secrets": [{ "pwd-plain": demo.device_password }],
            }));
            api.put(&creds_path, creds).await?;
        }

        let app_path = format!("/applications/{APPLICATION}");
        let (status, app) = api.call(Method::GET, &app_path, None).await?;
        let grants_demo = status.is_success()
            && app["tenants"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == TENANT));
        if fresh || !grants_demo {
            api.put(
                &app_path,
                json!({ "password": demo.application_password, "tenants": [TENANT] }),
            )
            .await?;
        }

        if fresh {
            write_private(&file, &serde_json::to_string_pretty(&demo)?)
                .with_context(|| format!("writing {}", file.display()))?;
        }
        Ok(demo)
    }

    #[cfg(unix)]
    pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(text.as_bytes())
    }

    #[cfg(not(unix))]
    pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
        std::fs::write(path, text)
    }

    impl Demo {
        /// The commands to paste, one a line, each indented by two spaces.
        pub fn instructions(
            &self,
            amqp: SocketAddr,
            mqtt_host: &str,
            mqtt_port: u16,
            http_host: &str,
            http_port: u16,
        ) -> String {
            let amqp_host = if amqp.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                amqp.ip().to_string()
            };
            let (dev_pw, app_pw) = (&self.device_password, &self.application_password);
            format!(
                "Demo: tenant {TENANT}, device {DEVICE} (logs in as {AUTH_ID}@{TENANT}), application user \
                 {APPLICATION}; passwords in {FILE} in the data directory.\n\
                 In a second terminal, watch the tenant's telemetry (`ferry` is `cargo run --release -p ferry --` \
                 until you `cargo install --path cli`):\n\
                 \x20 ferry consume --amqp amqp://{amqp_host}:{port} --tenant {TENANT} --user {APPLICATION} --password {app_pw}\n\
                 In a third, send telemetry as the device over MQTT and over HTTP:\n\
                 \x20 mosquitto_pub -h {mqtt_host} -p {mqtt_port} -u {AUTH_ID}@{TENANT} -P {dev_pw} -t telemetry -m '{{\"temp\": 21}}'\n\
                 \x20 curl -i -u {AUTH_ID}@{TENANT}:{dev_pw} -H 'content-type: application/json' --data-binary '{{\"temp\": 22}}' http://{http_host}:{http_port}/telemetry",
                port = amqp.port(),
            )
        }
    }
}
