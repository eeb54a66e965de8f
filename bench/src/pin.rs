//! CPU pinning with `taskset`: the system under test on one core, the load generator on another, so that
//! neither steals the other's cycles and the figures are repeatable on a shared 2-core machine.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use anyhow::{bail, Context as _};
use clap::Args;

/// Where the system under test and the load generator run.
#[derive(Debug, Clone, Args)]
pub struct Pinning {
    /// CPUs (taskset list) for the system under test.
    #[arg(long, default_value = "0")]
    pub server_cpus: String,
    /// CPUs (taskset list) for the load generator; the process re-executes itself under taskset.
    #[arg(long, default_value = "1")]
    pub client_cpus: String,
    /// Do not pin anything (figures are then not comparable with pinned ones).
    #[arg(long)]
    pub no_pin: bool,
}

/// Set on the re-executed generator, so that a pinning that does not take is an error instead of a loop.
const REEXEC_ENV: &str = "FERRY_BENCH_PINNED";

/// Parses a CPU list as `taskset -c` and `/proc/self/status` write it (`0`, `0-3`, `0,2-3`).
pub fn parse_cpu_list(list: &str) -> anyhow::Result<BTreeSet<usize>> {
    let mut cpus = BTreeSet::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: usize = lo
            .trim()
            .parse()
            .with_context(|| format!("bad CPU list {list:?}"))?;
        let hi: usize = hi
            .trim()
            .parse()
            .with_context(|| format!("bad CPU list {list:?}"))?;
        if lo > hi {
            bail!("bad CPU list {list:?}: {lo} > {hi}");
        }
        cpus.extend(lo..=hi);
    }
    if cpus.is_empty() {
        bail!("empty CPU list");
    }
    Ok(cpus)
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> anyhow::Result<BTreeSet<usize>> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list in /proc/self/status")?;
    parse_cpu_list(list)
}

/// Returns if this process already runs on exactly `cpus`; otherwise replaces it with
/// `taskset -c cpus <this executable> <same arguments>` (and so only returns on error).
pub fn ensure_pinned(cpus: &str) -> anyhow::Result<()> {
    let wanted = parse_cpu_list(cpus)?;
    if allowed_cpus()? == wanted {
        return Ok(());
    }
    if std::env::var_os(REEXEC_ENV).is_some() {
        bail!("pinned to CPUs {cpus} with taskset, but still not running on exactly them");
    }
    let exe =
        std::env::current_exe().context("finding this executable to re-run it under taskset")?;
    let err = Command::new("taskset")
        .arg("-c")
        .arg(cpus)
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(REEXEC_ENV, "1")
        .exec();
    Err(err)
        .context("running taskset (util-linux) to pin the load generator; --no-pin skips pinning")
}

/// A command that runs `program` pinned to `cpus` (or unpinned when `cpus` is `None`).
pub fn command(cpus: Option<&str>, program: &std::path::Path) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(program);
            c
        }
        None => Command::new(program),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_taskset() {
        let set = |v: &[usize]| v.iter().copied().collect::<BTreeSet<_>>();
        assert_eq!(parse_cpu_list("1").expect("single"), set(&[1]));
        assert_eq!(
            parse_cpu_list("0-2,5\n").expect("range"),
            set(&[0, 1, 2, 5])
        );
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }
}
