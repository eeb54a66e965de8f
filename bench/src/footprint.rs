//! Scenario B9, footprint: idle resident memory and time to ready of every Ferry binary.
//!
//! Each binary is started on its own, release build, pinned to the measured CPUs, with what it needs
//! running beside it (the router and the adapters need a registry, the adapters a router too; those run
//! on the support CPUs and are not counted). Time to ready: from `spawn` to the first 200 of `/ready` (for
//! `ferry up`, of its `/ready` and every listener accepting). Idle RSS: `VmRSS` of `/proc/PID/status`
//! after ready plus an idle pause, no client connected. Each run starts the binary twice: first on an
//! empty data directory (first start: keys, tokens, database created), then again on what the first
//! start left (a restart).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::machine::{self, Machine};
use crate::platform::{self, BinArgs, Platform, Proc};
use crate::report;
use crate::summary::SummaryRow;

/// The report section this scenario owns.
pub const SECTION: &str = "b9";
/// BENCHMARKS.md: ≤ 20 MiB idle RSS each.
pub const RSS_GOAL_KIB: u64 = 20 * 1024;
/// BENCHMARKS.md: ready in ≤ 200 ms.
pub const READY_GOAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Args)]
pub struct FootprintArgs {
    /// Runs per binary; the row shows medians.
    #[arg(long, short = 'r', default_value_t = 3)]
    pub runs: usize,
    /// Seconds to leave the binary idle after ready before reading its RSS.
    #[arg(long, default_value_t = 2)]
    pub idle_secs: u64,
    /// CPUs (taskset list) of the measured binary; unpinned when not given.
    #[arg(long, default_value = "0")]
    pub cpus: Option<String>,
    /// CPUs of the processes it needs (registry, router), not counted.
    #[arg(long, default_value = "1")]
    pub support_cpus: Option<String>,
    #[command(flatten)]
    pub bins: BinArgs,
    /// The report to update (only the b9 section, then the summary).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/REPORT.md"))]
    pub report: PathBuf,
    /// Print the figures without touching the report.
    #[arg(long)]
    pub no_report: bool,
}

/// The binaries measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Registry,
    Router,
    MqttAdapter,
    HttpAdapter,
    Up,
}

impl Binary {
    pub const ALL: [Binary; 5] = [
        Binary::Registry,
        Binary::Router,
        Binary::MqttAdapter,
        Binary::HttpAdapter,
        Binary::Up,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Binary::Registry => "ferry-registry",
            Binary::Router => "ferry-router",
            Binary::MqttAdapter => "ferry-mqtt-adapter",
            Binary::HttpAdapter => "ferry-http-adapter",
            Binary::Up => "ferry up (all four in one process)",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Binary::Registry => "ferry-registry",
            Binary::Router => "ferry-router",
            Binary::MqttAdapter => "ferry-mqtt-adapter",
            Binary::HttpAdapter => "ferry-http-adapter",
            Binary::Up => "ferry",
        }
    }

    /// The short name in the summary.
    fn short(self) -> &'static str {
        match self {
            Binary::Up => "ferry up",
            other => other.file(),
        }
    }

    fn needs(self) -> &'static str {
        match self {
            Binary::Registry | Binary::Up => "nothing",
            Binary::Router => "a registry",
            Binary::MqttAdapter | Binary::HttpAdapter => "a registry and a router",
        }
    }
}

/// One start of a binary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Start {
    pub ready: Duration,
    pub rss_at_ready_kib: u64,
    pub rss_idle_kib: u64,
}

/// All starts of one binary: first starts and restarts.
#[derive(Debug, Clone)]
pub struct Row {
    pub binary: Binary,
    pub first: Vec<Start>,
    pub restart: Vec<Start>,
}

/// The median of `values` (the lower middle one for an even count).
pub fn median<T: Copy + PartialOrd>(values: &[T]) -> Option<T> {
    let mut v: Vec<T> = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len().saturating_sub(1) / 2).copied()
}

impl Row {
    fn all(&self) -> impl Iterator<Item = &Start> {
        self.first.iter().chain(&self.restart)
    }

    /// Median idle RSS over every start.
    pub fn rss_idle_kib(&self) -> u64 {
        median(&self.all().map(|s| s.rss_idle_kib).collect::<Vec<_>>()).unwrap_or(0)
    }

    pub fn ready_first(&self) -> Duration {
        median(&self.first.iter().map(|s| s.ready).collect::<Vec<_>>()).unwrap_or_default()
    }

    pub fn ready_restart(&self) -> Duration {
        median(&self.restart.iter().map(|s| s.ready).collect::<Vec<_>>()).unwrap_or_default()
    }

    /// Within both goals: idle RSS and (the slower of first start and restart) time to ready.
    pub fn met(&self) -> bool {
        self.rss_idle_kib() <= RSS_GOAL_KIB
            && self.ready_first().max(self.ready_restart()) <= READY_GOAL
    }
}

/// Runs B9 and writes its section (and the summary).
pub async fn run(args: &FootprintArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let date = machine::now();
    let commit = machine::commit();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for binary in Binary::ALL {
        let mut row = Row {
            binary,
            first: Vec::new(),
            restart: Vec::new(),
        };
        for n in 1..=args.runs {
            match measure(args, binary).await {
                Ok((first, restart)) => {
                    eprintln!(
                        "{} run {n}/{}: ready {:.0} ms (restart {:.0} ms), RSS at ready {} KiB, idle {} KiB \
                         (restart: idle {} KiB)",
                        binary.label(),
                        args.runs,
                        ms(first.ready),
                        ms(restart.ready),
                        first.rss_at_ready_kib,
                        first.rss_idle_kib,
                        restart.rss_idle_kib
                    );
                    row.first.push(first);
                    row.restart.push(restart);
                }
                Err(e) => {
                    eprintln!("{}: {e:#}", binary.label());
                    failures.push(format!("{}: {e:#}", binary.label()));
                    break;
                }
            }
        }
        rows.push(row);
    }
    let section = render(args, &Machine::detect(), &commit, &date, &rows, &failures);
    println!("{section}");
    if !args.no_report {
        report::update_section(&args.report, SECTION, &section)?;
        crate::summary::update_summary(&args.report)?;
        eprintln!("updated section `{SECTION}` of {}", args.report.display());
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}

/// Starts `binary` twice (empty data directory, then a restart on it); returns both starts.
async fn measure(args: &FootprintArgs, binary: Binary) -> anyhow::Result<(Start, Start)> {
    let bin = args.bins.get(binary.file())?;
    let mut p = Platform::empty()?;
    let support = args.support_cpus.as_deref();
    if matches!(
        binary,
        Binary::Router | Binary::MqttAdapter | Binary::HttpAdapter
    ) {
        let mut r = p.spawn_registry(&args.bins.get("ferry-registry")?, support)?;
        r.wait_http_ready(p.registry_addr, "/ready").await?;
        p.push(r);
    }
    if matches!(binary, Binary::MqttAdapter | Binary::HttpAdapter) {
        let mut r = p.spawn_router(&args.bins.get("ferry-router")?, support)?;
        r.wait_http_ready(p.router_admin, "/ready").await?;
        p.push(r);
    }
    let ports = Ports::new()?;
    let first = start_once(args, binary, &bin, &p, &ports).await?;
    let restart = start_once(args, binary, &bin, &p, &ports).await?;
    Ok((first, restart))
}

/// The measured binary's own ports (the same for both starts).
struct Ports {
    main: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    amqp: std::net::SocketAddr,
    mqtt: std::net::SocketAddr,
    http: std::net::SocketAddr,
}

impl Ports {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            main: platform::free_port()?,
            admin: platform::free_port()?,
            amqp: platform::free_port()?,
            mqtt: platform::free_port()?,
            http: platform::free_port()?,
        })
    }
}

async fn start_once(
    args: &FootprintArgs,
    binary: Binary,
    bin: &std::path::Path,
    p: &Platform,
    ports: &Ports,
) -> anyhow::Result<Start> {
    let cpus = args.cpus.as_deref();
    let dir = p.dir.path();
    let (mut proc, ready): (Proc, Duration) = match binary {
        Binary::Registry => {
            let mut proc =
                platform::registry_proc(bin, cpus, dir, "measured", ports.main, &p.secrets)?;
            let ready = proc.wait_http_ready(ports.main, "/ready").await?;
            (proc, ready)
        }
        Binary::Router => {
            let mut proc = p.spawn_router(bin, cpus)?;
            let ready = proc.wait_http_ready(p.router_admin, "/ready").await?;
            (proc, ready)
        }
        Binary::MqttAdapter | Binary::HttpAdapter => {
            let kind = if binary == Binary::HttpAdapter {
                "http"
            } else {
                "mqtt"
            };
            let mut proc = p.spawn_adapter(kind, bin, cpus, ports.main, ports.admin)?;
            let ready = proc.wait_http_ready(ports.admin, "/ready").await?;
            (proc, ready)
        }
        Binary::Up => {
            let port = |a: &std::net::SocketAddr| a.port().to_string();
            let up_args = vec![
                "up".to_owned(),
                "--data-dir".into(),
                dir.join("up").display().to_string(),
                "--registry-port".into(),
                port(&ports.main),
                "--amqp-port".into(),
                port(&ports.amqp),
                "--mqtt-port".into(),
                port(&ports.mqtt),
                "--http-port".into(),
                port(&ports.http),
                "--bind".into(),
                "127.0.0.1".into(),
                "--mqtt-bind".into(),
                "127.0.0.1".into(),
                "--admin-token".into(),
                p.secrets.admin.clone(),
            ];
            let mut proc = Proc::spawn(
                "ferry up",
                bin,
                &up_args,
                &[("RUST_LOG".into(), "warn".into())],
                &["FERRY_", "RUST_LOG"],
                cpus,
                dir.join("up.log"),
            )?;
            // `/ready` covers registry, router and MQTT adapter; the listeners show the rest is up.
            proc.wait_http_ready(ports.main, "/ready").await?;
            let mut ready = Duration::ZERO;
            for addr in [ports.amqp, ports.mqtt, ports.http] {
                ready = ready.max(proc.wait_port(addr, Duration::from_secs(30)).await?);
            }
            (proc, ready)
        }
    };
    let rss_at_ready_kib = proc.rss_kib()?;
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    proc.check_alive()?;
    let rss_idle_kib = proc
        .rss_kib()
        .with_context(|| format!("reading the RSS of {}", binary.label()))?;
    drop(proc);
    Ok(Start {
        ready,
        rss_at_ready_kib,
        rss_idle_kib,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The summary row of B9.
pub fn summary_row(rows: &[Row], failures: &[String], date: &str) -> SummaryRow {
    let measured: Vec<&Row> = rows.iter().filter(|r| !r.first.is_empty()).collect();
    let biggest = measured.iter().max_by_key(|r| r.rss_idle_kib());
    let slowest = measured
        .iter()
        .max_by_key(|r| r.ready_first().max(r.ready_restart()));
    let ferry = match (biggest, slowest) {
        (Some(b), Some(s)) => format!(
            "largest idle RSS {} MiB ({}); slowest ready {:.0} ms ({})",
            mib(b.rss_idle_kib()),
            b.binary.short(),
            ms(s.ready_first().max(s.ready_restart())),
            s.binary.short()
        ),
        _ => "–".to_owned(),
    };
    let missed: Vec<String> = measured
        .iter()
        .filter(|r| !r.met())
        .map(|r| {
            format!(
                "{}: {} MiB, {:.0} ms",
                r.binary.short(),
                mib(r.rss_idle_kib()),
                ms(r.ready_first().max(r.ready_restart()))
            )
        })
        .collect();
    let mut note = if missed.is_empty() {
        "every binary within both goals".to_owned()
    } else {
        format!("over a goal: {}", missed.join("; "))
    };
    note.push_str("; ferry-operator not measured (library only, needs a Kubernetes API server)");
    if !failures.is_empty() {
        note.push_str(&format!("; failed: {}", failures.join("; ")));
    }
    SummaryRow {
        id: "B9".into(),
        peer: "Hono: 100 MB budgeted per adapter before the first connection (published, not run here)".into(),
        ferry,
        ratio: biggest.map_or_else(
            || "–".to_owned(),
            |b| format!("{:.2}× of Hono's budget", b.rss_idle_kib() as f64 / (100.0 * 1000.0 * 1000.0 / 1024.0)),
        ),
        met: (!measured.is_empty() && failures.is_empty()).then_some(missed.is_empty()),
        note,
        date: date.to_owned(),
    }
}

fn render(
    args: &FootprintArgs,
    machine: &Machine,
    commit: &str,
    date: &str,
    rows: &[Row],
    failures: &[String],
) -> String {
    let verdict = |ok: bool| if ok { "yes" } else { "**no**" };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            if r.first.is_empty() {
                return vec![
                    r.binary.label().to_owned(),
                    r.binary.needs().to_owned(),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                    "not measured (failed, see below)".into(),
                    "–".into(),
                ];
            }
            let rss_at_ready = median(
                &r.first
                    .iter()
                    .map(|s| s.rss_at_ready_kib)
                    .collect::<Vec<_>>(),
            )
            .unwrap_or(0);
            let ready = r.ready_first().max(r.ready_restart());
            vec![
                r.binary.label().to_owned(),
                r.binary.needs().to_owned(),
                format!("**{}**", mib(r.rss_idle_kib())),
                mib(rss_at_ready),
                format!("**{:.0}**", ms(r.ready_first())),
                format!("{:.0}", ms(r.ready_restart())),
                format!(
                    "RSS {} / ready {}",
                    verdict(r.rss_idle_kib() <= RSS_GOAL_KIB),
                    verdict(ready <= READY_GOAL)
                ),
                r.first
                    .iter()
                    .zip(&r.restart)
                    .map(|(f, s)| {
                        format!(
                            "{:.0}+{:.0} ms {}",
                            ms(f.ready),
                            ms(s.ready),
                            mib(f.rss_idle_kib)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" / "),
            ]
        })
        .collect();
    let mut out = String::from("## B9: footprint, idle RSS and time to ready of every binary\n\n");
    out.push_str(&format!(
        "Each binary (release build) started on its own, pinned to CPU {} (taskset), with what it needs \
         already running on CPU {} and not counted: the router gets a registry, the adapters a registry and a \
         router; `ferry up` needs nothing. **Time to ready**: from `spawn` to the first `200` of `GET /ready` \
         (polled every 2 ms on the binary's admin port; for `ferry up`, its `/ready`, which covers registry, \
         router and MQTT adapter, and then its AMQP, MQTT and HTTP listeners accepting). Each run starts the \
         binary twice: on an empty data directory (**first start**: database, keys and tokens created; the \
         router's event store created), then again on what that left (**restart**). **Idle RSS**: `VmRSS` from \
         `/proc/PID/status` {} s after ready, no client connected; median over all {} starts. {} runs. Goals \
         (BENCHMARKS.md): ≤ 20 MiB idle RSS each, ready ≤ 200 ms (both first start and restart). The machine \
         is shared with other builds (2 cores): times are noisy; RSS is not.\n\n",
        args.cpus.as_deref().unwrap_or("any"),
        args.support_cpus.as_deref().unwrap_or("any"),
        args.idle_secs,
        args.runs * 2,
        args.runs,
    ));
    out.push_str(&format!(
        "- Machine: {}\n- Commit: {commit}\n- Date: {date}\n",
        machine.describe()
    ));
    out.push_str(
        "- `ferry-operator` is not measured: it has no binary yet (operator/ is a library crate) and would \
         need a Kubernetes API server to reach ready.\n",
    );
    for f in failures {
        out.push_str(&format!("- Failed: {f}\n"));
    }
    out.push('\n');
    out.push_str(&report::markdown_table(
        &[
            "binary",
            "started beside",
            "idle RSS MiB (median)",
            "RSS at ready MiB",
            "ready ms, first start (median)",
            "ready ms, restart (median)",
            "within goal",
            "each run: first+restart ready, idle RSS MiB",
        ],
        &table,
    ));
    out.push('\n');
    out.push_str(&summary_row(rows, failures, date).marker());
    out.push_str("\n\nReproduce (from the workspace root):\n\n```sh\nexport CARGO_TARGET_DIR=/var/tmp/ferry-target\n");
    out.push_str(
        "cargo build --release -p ferry-bench -p ferry-registry -p ferry-router -p ferry-mqtt-adapter \
         -p ferry-http-adapter -p ferry\n",
    );
    out.push_str(&format!(
        "\"$CARGO_TARGET_DIR\"/release/ferry-bench footprint --runs {} --idle-secs {}{}{}\n```\n",
        args.runs,
        args.idle_secs,
        args.cpus
            .as_ref()
            .map_or_else(String::new, |c| format!(" --cpus {c}")),
        args.support_cpus
            .as_ref()
            .map_or_else(String::new, |c| format!(" --support-cpus {c}")),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(ready_ms: u64, rss: u64) -> Start {
        Start {
            ready: Duration::from_millis(ready_ms),
            rss_at_ready_kib: rss,
            rss_idle_kib: rss,
        }
    }

    #[test]
    fn medians_take_the_lower_middle() {
        assert_eq!(median(&[3, 1, 2]), Some(2));
        assert_eq!(median(&[4, 1, 3, 2]), Some(2));
        assert_eq!(median::<u64>(&[]), None);
    }

    #[test]
    fn a_row_meets_the_goal_only_within_both_limits() {
        let ok = Row {
            binary: Binary::Router,
            first: vec![start(50, 9000), start(60, 9100), start(900, 9050)],
            restart: vec![start(40, 9000), start(45, 9000), start(41, 9000)],
        };
        assert_eq!(ok.ready_first(), Duration::from_millis(60));
        assert_eq!(ok.rss_idle_kib(), 9000);
        assert!(ok.met());
        let fat = Row {
            first: vec![start(50, 30_000)],
            restart: vec![start(50, 30_000)],
            ..ok.clone()
        };
        assert!(!fat.met());
        let slow = Row {
            restart: vec![start(250, 9000)],
            first: vec![start(50, 9000)],
            ..ok.clone()
        };
        assert!(!slow.met());
        let s = summary_row(&[ok, slow], &[], "d");
        assert_eq!(s.met, Some(false));
        assert!(
            s.note.contains("ferry-router: 8.8 MiB, 250 ms"),
            "{}",
            s.note
        );
    }
}
