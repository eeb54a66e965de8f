//! `ferry-router`: CLI → config → tracing → run → exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferry_core::component::CommonArgs;

/// jemalloc returns what a backlog freed to the system within seconds; glibc's allocator kept a
/// process at its peak for good (B10, docs/decisions.md 22). Its options are set at build time
/// (`.cargo/config.toml`, docs/decisions.md 23).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "ferry-router",
    version,
    about = "Ferry's AMQP 1.0 messaging router"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Address of the plain AMQP listener.
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
    /// Data directory (event store).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Base URL of the registry.
    #[arg(long)]
    registry_url: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = |s: ferry_core::config::Sources| {
        s.flag("bind", cli.bind)
            .flag("data_dir", cli.data_dir)
            .flag("registry_url", cli.registry_url)
    };
    ferry_core::component::main(
        "ferry-router",
        "FERRY_ROUTER_",
        cli.common,
        flags,
        ferry_router::run,
    )
    .await
}
