//! `ferry up`: the whole platform in one process, on embedded defaults (SQLite, generated keys and tokens
//! in the data directory).
//!
//! The registry, the AMQP router and both protocol adapters run here, through the same `start`
//! functions their own binaries use.

//!
//! Layout: this file runs the platform in one process; `args` holds the options both modes share,
//! `demo` what `--demo` creates, `cluster` the local cluster (`--cluster`) of child processes. Both
//! modes use `args` and `demo`; neither knows the other, and only [`up`] chooses between them.

mod args;
mod cluster;
mod demo;

use std::net::SocketAddr;

use anyhow::Context as _;
use ferry_core::config::{self, Sources};

pub use args::UpArgs;

/// Runs every component until Ctrl-C / SIGTERM.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    if args.cluster {
        return cluster::up(args).await;
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
    mqtt_config.adapter.registry_url = registry.url();
    mqtt_config.adapter.registry_token = registry.internal_token.clone();
    mqtt_config.adapter.router_address = format!("127.0.0.1:{}", router.addr.port());
    mqtt_config.adapter.router_password = registry.internal_token.clone();
    // Both adapters report Hono's metric families into one set, told apart by `component_name`.
    let hono_metrics = ferry_mqtt_adapter::metrics::HonoMetrics::new(&admin);
    let mqtt = ferry_mqtt_adapter::start_with_metrics(
        mqtt_config,
        admin.clone(),
        &hono_metrics,
        shutdown.clone(),
    )
    .await?;
    http_config.adapter.registry_url = registry.url();
    http_config.adapter.registry_token = registry.internal_token.clone();
    http_config.adapter.router_address = format!("127.0.0.1:{}", router.addr.port());
    http_config.adapter.router_password = registry.internal_token.clone();
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
    r.and(a)
        .and(m.map_err(anyhow::Error::from))
        .and(h.map_err(anyhow::Error::from))
}
