//! CPU time of a process from `/proc/<pid>/stat` (user + system, all threads, in clock ticks).
//!
//! Tick resolution (normally 10 ms) is plenty over runs of several seconds at thousands of requests.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;

/// User + system CPU time consumed so far by process `pid` (all its threads, living or exited).
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_ticks(&stat).with_context(|| format!("parsing {path}"))?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second() as f64,
    ))
}

/// CPU time of this process.
pub fn own_cpu() -> anyhow::Result<Duration> {
    process_cpu(std::process::id())
}

/// CPU time all processes on the machine have used since boot (every core, idle and I/O wait excluded):
/// minus what the benchmark's own processes used, it is the background load that skews a run.
pub fn machine_busy() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks = parse_machine_busy_ticks(&stat).context("parsing /proc/stat")?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second() as f64,
    ))
}

/// user + nice + system + irq + softirq + steal of the `cpu` line of `/proc/stat` (guest time is already
/// inside user).
pub fn parse_machine_busy_ticks(stat: &str) -> anyhow::Result<u64> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no `cpu` line")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("not a number")?;
    let field = |i: usize| fields.get(i).copied().context("`cpu` line too short");
    // user nice system idle iowait irq softirq steal
    Ok(field(0)? + field(1)? + field(2)? + field(5)? + field(6)? + field(7)?)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> anyhow::Result<u64> {
    let rest = stat
        .rsplit_once(')')
        .context("no `)` after the command name")?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, index 11.
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("stat line too short")?
            .parse()
            .context("not a number")
    };
    Ok(field(11)? + field(12)?)
}

/// `CLK_TCK` (from `getconf`, as reading it needs no unsafe code); 100 on every Linux we know of.
fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line =
            "4242 (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat_ticks(line).expect("parses"), 325);
        assert!(parse_stat_ticks("4242 (x) S 1").is_err());
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 2 30 5000 40 5 6 7 0 0\ncpu0 50 1 15 2500 20 2 3 3 0 0\n";
        assert_eq!(parse_machine_busy_ticks(stat).expect("parses"), 150);
        assert!(parse_machine_busy_ticks("cpu0 1 2 3\n").is_err());
    }

    #[test]
    fn own_cpu_is_readable() {
        own_cpu().expect("reading /proc/self/stat");
    }
}
