//! `ferry`: the command a user meets first. `ferry up` composes every component's `run` in one process on
//! embedded defaults; the management subcommands call the registry's management API; `ferry consume` and
//! `ferry command` are a business application's side of the AMQP API.

use std::path::PathBuf;

pub mod command;
pub mod consume;
pub mod manage;
pub mod up;

/// Where `ferry up` keeps its state and where the other subcommands look for the admin token:
/// `$FERRY_DATA_DIR`, else `$XDG_DATA_HOME/ferry`, else `~/.local/share/ferry`, else `./ferry-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERRY_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("ferry");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".local/share/ferry");
    }
    PathBuf::from("ferry-data")
}
