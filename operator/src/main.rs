//! `ferry-operator`: CLI → config → tracing → run → exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_core::config::{self, Sources, EXIT_CONFIG};

#[derive(Parser)]
#[command(
    name = "ferry-operator",
    version,
    about = "Ferry's Kubernetes operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the AddressSpace and Tenant CRDs as one multi-document YAML.
    Crd,
    /// Reconcile AddressSpaces and Tenants.
    Run {
        /// YAML config file (env: FERRY_OPERATOR_* overrides it).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log JSON lines.
        #[arg(long)]
        log_json: bool,
        /// Print the default configuration as YAML and exit.
        #[arg(long)]
        print_default_config: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let (config_file, log_json) = match Cli::parse().command {
        Command::Crd => {
            return match ferry_operator::crd::crds_yaml() {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ferry-operator: cannot render the CRDs: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Run {
            print_default_config: true,
            ..
        } => {
            print!("{}", config::default_yaml::<ferry_operator::Config>());
            return ExitCode::SUCCESS;
        }
        Command::Run {
            config, log_json, ..
        } => (config, log_json),
    };
    let mut sources = Sources::from_env("FERRY_OPERATOR_", config_file);
    sources.env = ferry_operator::config::without_service_links(sources.env);
    // The pod's own name and namespace (downward API) unless the operator's env says otherwise.
    for (from, to) in [
        ("POD_NAMESPACE", "LEASE_NAMESPACE"),
        ("POD_NAMESPACE", "OPERATOR_NAMESPACE"),
        ("POD_NAME", "IDENTITY"),
    ] {
        let key = format!("FERRY_OPERATOR_{to}");
        if let (Ok(v), false) = (
            std::env::var(from),
            sources.env.iter().any(|(k, _)| *k == key),
        ) {
            sources.env.push((key, v));
        }
    }
    let config = match config::load::<ferry_operator::Config>(&sources)
        .and_then(|c| c.validate().map(|()| c))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry-operator: bad configuration: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    ferry_core::logs::init(log_json);
    let admin = ferry_core::admin::Admin::new();
    match ferry_operator::run(config, admin, ferry_core::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("ferry-operator failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
