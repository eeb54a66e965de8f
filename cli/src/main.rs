//! `ferry`: CLI → subcommand → exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry::manage::{self, ApplicationCmd, CredentialsCmd, DeviceCmd, Target, TenantCmd, TokenCmd};

/// jemalloc returns what a backlog freed to the system within seconds; glibc's allocator kept a
/// process at its peak for good (B10, docs/decisions.md 22). Its options are set at build time
/// (`.cargo/config.toml`, docs/decisions.md 23).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ferry: IoT connectivity in the style of Eclipse Hono"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole platform in one process on embedded defaults.
    Up(ferry::up::UpArgs),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Manage devices.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Manage device credentials.
    #[command(subcommand)]
    Credentials(CredentialsCmd),
    /// Manage application users (AMQP consumers).
    #[command(subcommand)]
    Application(ApplicationCmd),
    /// Manage tenant tokens: bearer tokens good for one tenant's devices and credentials only.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Print a tenant's telemetry or events as they arrive (AMQP, as an application user).
    Consume(ferry::consume::ConsumeArgs),
    /// Send a command to a device, optionally waiting for its response (AMQP, as an application user).
    #[command(name = "command")]
    Cmd(ferry::command::CommandArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Up(_)) {
        ferry_core::logs::init(false);
    }
    let result = match cli.command {
        Command::Up(args) => ferry::up::up(args).await,
        Command::Tenant(c) => manage::tenant(&cli.target, c).await,
        Command::Device(c) => manage::device(&cli.target, c).await,
        Command::Credentials(c) => manage::credentials(&cli.target, c).await,
        Command::Application(c) => manage::application(&cli.target, c).await,
        Command::Token(c) => manage::tenant_token(&cli.target, c).await,
        Command::Consume(args) => ferry::consume::consume(args).await,
        Command::Cmd(args) => ferry::command::command(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            if e.downcast_ref::<ferry_core::config::ConfigError>()
                .is_some()
            {
                return ExitCode::from(ferry_core::config::EXIT_CONFIG as u8);
            }
            ExitCode::FAILURE
        }
    }
}
