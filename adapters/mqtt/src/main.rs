//! `ferry-mqtt-adapter`: CLI → config → tracing → run → exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferry_core::config::{self, Sources};

#[derive(Parser)]
#[command(
    name = "ferry-mqtt-adapter",
    version,
    about = "Ferry's MQTT protocol adapter"
)]
struct Cli {
    /// YAML config file (env: FERRY_MQTT_* overrides it; flags override both).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address of the plain MQTT listener.
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
        print!("{}", config::default_yaml::<ferry_mqtt_adapter::Config>());
        return ExitCode::SUCCESS;
    }
    let sources = Sources::from_env("FERRY_MQTT_", cli.config).flag("bind", cli.bind);
    let config: ferry_mqtt_adapter::Config = config::load_or_exit("ferry-mqtt-adapter", &sources);
    ferry_core::logs::init(cli.log_json);
    let admin = ferry_core::admin::Admin::new();
    match ferry_mqtt_adapter::run(config, admin, ferry_core::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("ferry-mqtt-adapter failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
