//! The binary starts jemalloc with the workspace's build-time options (`.cargo/config.toml`,
//! docs/decisions.md 23): jemalloc was configured with them and reads them at start.

use std::process::Command;

#[test]
fn the_binary_starts_jemalloc_with_a_two_second_decay() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--version")
        // Asks jemalloc to print its options at exit; it sets no decay of its own.
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("ferry runs");
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(
        stats.contains("opt.dirty_decay_ms: 2000"),
        "jemalloc did not take Ferry's options:\n{}",
        stats
            .lines()
            .filter(|l| l.contains("decay"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
