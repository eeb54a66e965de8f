//! What a report says about where and on what it was measured: the machine, the commit, the date.

use std::process::Command;

/// The machine the figures come from.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub ram_gib: f64,
}

impl Machine {
    /// Reads `/proc/cpuinfo` and `/proc/meminfo`; unknowns stay visible as "unknown" or 0.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let ram_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism()
                .map_or(0, usize::from)
                .max(online_cpus()),
            cpu_model,
            ram_gib: ram_kib / (1024.0 * 1024.0),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), {:.1} GiB RAM",
            self.cpus, self.cpu_model, self.ram_gib
        )
    }
}

/// `nproc --all`-like: the pinned generator's own affinity would say 1.
fn online_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|list| crate::pin::parse_cpu_list(&list).ok())
        .map_or(0, |set| set.len())
}

/// The commit measured: the short hash, marked when the working tree has changes.
pub fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match (
        git(&["rev-parse", "--short", "HEAD"]),
        git(&["status", "--porcelain"]),
    ) {
        (Some(head), Some(status)) if status.is_empty() => head,
        (Some(head), _) => format!("uncommitted (changes on top of {head})"),
        (None, _) => "unknown (not a git checkout)".to_owned(),
    }
}

/// Today's date and time in UTC, to the minute.
pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string()
}
