//! What every component's `main.rs` does, once: the flags they all take ([`CommonArgs`]), then config
//! (defaults, YAML file, `FERRY_<COMPONENT>_*` env, flags; bad configuration exits 64 before anything is
//! bound), logging, `run` with the process's admin server and a shutdown on SIGTERM/SIGINT, and the exit
//! code. A `main.rs` keeps only its own flags.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::admin::Admin;
use crate::config::{self, Settings, Sources};
use crate::shutdown::Shutdown;

/// The flags of every component binary.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// YAML config file (env: FERRY_<COMPONENT>_* overrides it; flags override both).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Log JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// Print the default configuration as YAML and exit.
    #[arg(long)]
    pub print_default_config: bool,
}

/// Runs the component `program` (e.g. `ferry-router`) whose settings are read from `FERRY_…` variables
/// starting with `env_prefix`, the file of `--config`, then the component's own flags (`flags` adds
/// them to the sources); answers the process's exit code.
pub async fn main<C, F, Fut, E>(
    program: &str,
    env_prefix: &str,
    common: CommonArgs,
    flags: impl FnOnce(Sources) -> Sources,
    run: F,
) -> ExitCode
where
    C: Settings,
    F: FnOnce(C, Admin, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    if common.print_default_config {
        print!("{}", config::default_yaml::<C>());
        return ExitCode::SUCCESS;
    }
    let sources = flags(Sources::from_env(env_prefix, common.config));
    let config: C = config::load_or_exit(program, &sources);
    crate::logs::init(common.log_json);
    match run(config, Admin::new(), crate::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{program} failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
