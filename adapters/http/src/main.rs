//! `ferry-http-adapter`: CLI → config → tracing → run → exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferry_core::config::{self, Sources};

#[derive(Parser)]
#[command(
    name = "ferry-http-adapter",
    version,
    about = "Ferry's HTTP protocol adapter"
)]
struct Cli {
    /// YAML config file (env: FERRY_HTTP_* overrides it; flags override both).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address of the plain HTTP listener.
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
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
        print!("{}", config::default_yaml::<ferry_http_adapter::Config>());
        return ExitCode::SUCCESS;
    }
    let sources = Sources::from_env("FERRY_HTTP_", cli.config).flag("bind", cli.bind);
    let config: ferry_http_adapter::Config = config::load_or_exit("ferry-http-adapter", &sources);
    ferry_core::logs::init(cli.log_json);
    let admin = ferry_core::admin::Admin::new();
    match ferry_http_adapter::run(config, admin, ferry_core::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("ferry-http-adapter failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
