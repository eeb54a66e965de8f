//! `ferry-registry`: CLI → config → tracing → run → exit code.

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
#[command(name = "ferry-registry", version, about = "Ferry's device registry")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Address of the HTTP API.
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
    /// Data directory (SQLite database, generated tokens and keys).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL; SQLite in the data directory when absent.
    #[arg(long)]
    database_url: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = |s: ferry_core::config::Sources| {
        s.flag("bind", cli.bind)
            .flag("data_dir", cli.data_dir)
            .flag("database_url", cli.database_url)
    };
    ferry_core::component::main(
        "ferry-registry",
        "FERRY_REGISTRY_",
        cli.common,
        flags,
        ferry_registry::run,
    )
    .await
}
