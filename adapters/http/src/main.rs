//! `ferry-http-adapter`: CLI → config → tracing → run → exit code.

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
    name = "ferry-http-adapter",
    version,
    about = "Ferry's HTTP protocol adapter"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Address of the plain HTTP listener.
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = |s: ferry_core::config::Sources| s.flag("bind", cli.bind);
    ferry_core::component::main(
        "ferry-http-adapter",
        "FERRY_HTTP_",
        cli.common,
        flags,
        ferry_http_adapter::run,
    )
    .await
}
