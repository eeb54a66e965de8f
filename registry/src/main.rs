//! `ferry-registry`: CLI → config → tracing → run → exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferry_core::config::{self, Sources};

#[derive(Parser)]
#[command(name = "ferry-registry", version, about = "Ferry's device registry")]
struct Cli {
    /// YAML config file (env: FERRY_REGISTRY_* overrides it; flags override both).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address of the HTTP API.
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
    /// Data directory (SQLite database, generated tokens and keys).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL; SQLite in the data directory when absent.
    #[arg(long)]
    database_url: Option<String>,
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
        print!("{}", config::default_yaml::<ferry_registry::Config>());
        return ExitCode::SUCCESS;
    }
    let sources = Sources::from_env("FERRY_REGISTRY_", cli.config)
        .flag("bind", cli.bind)
        .flag("data_dir", cli.data_dir)
        .flag("database_url", cli.database_url);
    let config: ferry_registry::Config = config::load_or_exit("ferry-registry", &sources);
    ferry_core::logs::init(cli.log_json);
    let admin = ferry_core::admin::Admin::new();
    match ferry_registry::run(config, admin, ferry_core::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("ferry-registry failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
