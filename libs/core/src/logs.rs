//! Log output through `tracing`: human-readable by default, JSON lines on request (`--log-json` or
//! `FERRY_LOG_JSON=1`), filtered by `RUST_LOG` (default `info`), in colour only when stderr is a terminal.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored), which lets
/// `ferry up` and tests compose components that each think they own the process.
pub fn init(json: bool) {
    let json = json || std::env::var("FERRY_LOG_JSON").is_ok_and(|v| v == "1" || v == "true");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a log sent to a file or a pipe carries no escape codes.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
