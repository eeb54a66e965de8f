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
    /// Address to bind the registry and the AMQP endpoint to.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// Address to bind the device endpoints (MQTT, HTTP) to; devices are usually elsewhere on the network.
    #[arg(long, default_value = "0.0.0.0")]
    pub mqtt_bind: std::net::IpAddr,
}

/// Runs every component until Ctrl-C / SIGTERM.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let sources = Sources::from_env("FERRY_REGISTRY_", None)
        .flag("bind", Some(SocketAddr::new(args.bind, args.registry_port)))
        .flag("data_dir", Some(&data_dir))
        .flag("admin_token", args.admin_token.as_deref());
    let registry_config: ferry_registry::Config = config::load(&sources)?;
    registry_config.validate()?;

    let router_sources = Sources::from_env("FERRY_ROUTER_", None)
        .flag("bind", Some(SocketAddr::new(args.bind, args.amqp_port)))
        .flag("data_dir", Some(&data_dir));
    let mut router_config: ferry_router::Config = config::load(&router_sources)?;
    router_config.validate()?;

    let mqtt_sources = Sources::from_env("FERRY_MQTT_", None).flag(
        "bind",
        Some(SocketAddr::new(args.mqtt_bind, args.mqtt_port)),
    );
    let mut mqtt_config: ferry_mqtt_adapter::Config = config::load(&mqtt_sources)?;
    mqtt_config.validate()?;

    let http_sources = Sources::from_env("FERRY_HTTP_", None).flag(
        "bind",
        Some(SocketAddr::new(args.mqtt_bind, args.http_port)),
    );
    let mut http_config: ferry_http_adapter::Config = config::load(&http_sources)?;
    http_config.validate()?;

    let admin = ferry_core::admin::Admin::new();
    let shutdown = ferry_core::shutdown::on_signal();
    let started = std::time::Instant::now();
    let registry = ferry_registry::start(registry_config, admin.clone(), shutdown.clone()).await?;
    // In one process the adapters and the router share the registry's internal token:
    // it is the adapters' service credential at the router.
    router_config.registry_url = registry.url();
    router_config.registry_token = registry.internal_token.clone();
    if router_config.adapter_password.is_empty() {
        router_config.adapter_password = registry.internal_token.clone();
    }
    let router = ferry_router::start(router_config, admin.clone(), shutdown.clone()).await?;
    mqtt_config.registry_url = registry.url();
    mqtt_config.registry_token = registry.internal_token.clone();
    mqtt_config.router_address = format!("127.0.0.1:{}", router.addr.port());
    mqtt_config.router_password = registry.internal_token.clone();
    let mqtt = ferry_mqtt_adapter::start(mqtt_config, admin.clone(), shutdown.clone()).await?;
    http_config.registry_url = registry.url();
    http_config.registry_token = registry.internal_token.clone();
    http_config.router_address = format!("127.0.0.1:{}", router.addr.port());
    http_config.router_password = registry.internal_token.clone();
    // The HTTP adapter's Hono metrics share names with the MQTT adapter's; until both come from
    // ferry-adapter-core with an adapter label, it keeps its own registry here (see docs/http-adapter.md).
    let http =
        ferry_http_adapter::start(http_config, ferry_core::admin::Admin::new(), shutdown).await?;
    let token_hint = registry.admin_token_path.as_ref().map_or_else(
        || "given on the command line".to_owned(),
        |p| p.display().to_string(),
    );
    println!(
        "Ferry is up in {} ms (data in {})",
        started.elapsed().as_millis(),
        data_dir.display()
    );
    println!("  registry (Hono management API)  {}/v1", registry.url());
    println!("  admin token                     {token_hint}");
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
    println!("Press Ctrl-C to stop.");
    let (r, a, m, h) = tokio::join!(registry.join(), router.join(), mqtt.join(), http.join());
    r.and(a).and(m).and(h)
}
