//! `ferry-router`: CLI → config → tracing → run → exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferry_core::config::{self, Sources};

#[derive(Parser)]
#[command(
    name = "ferry-router",
    version,
    about = "Ferry's AMQP 1.0 messaging router"
)]
struct Cli {
    /// YAML config file (env: FERRY_ROUTER_* overrides it; flags override both).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address of the plain AMQP listener.
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
    /// Data directory (event store).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Base URL of the registry.
    #[arg(long)]
    registry_url: Option<String>,
    /// Log JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Print the default configuration as YAML and exit.
    #[arg(long)]
    print_default_config: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", config::default_yaml::<ferry_router::Config>());
        return ExitCode::SUCCESS;
    }
    let sources = Sources::from_env("FERRY_ROUTER_", cli.config)
        .flag("bind", cli.bind)
        .flag("data_dir", cli.data_dir)
        .flag("registry_url", cli.registry_url);
    let config: ferry_router::Config = config::load_or_exit("ferry-router", &sources);
    ferry_core::logs::init(cli.log_json);
    let admin = ferry_core::admin::Admin::new();
    match ferry_router::run(config, admin, ferry_core::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("ferry-router failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
