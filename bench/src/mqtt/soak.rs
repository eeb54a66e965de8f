//! B10, the soak: Ferry under QoS 1 load at half of its B1 rate for a long time (default 30 min), watching
//! memory growth of every process, QoS 1 messages lost (PUBACKed to the device but never received by
//! the consumer), and latency drift (p99 of the first interval vs the last).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use super::stats::{quantile_ms, thousands, RateSearch};
use super::throughput::measure_open;
use super::traffic::{Plan, Traffic, TrafficSpec};
use super::{procs, CpuSample, CpuUse, Flow, Kind, MqttArgs, Sut};
use crate::pin::Pinning;
use crate::report;

/// What the soak publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SoakFlow {
    /// QoS 1 telemetry (`t`): PUBACK after the consumer accepted.
    Telemetry,
    /// QoS 1 events (`e`): PUBACK after the router stored the event.
    Events,
}

/// Options of `ferry-bench soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Length of the soak, in seconds (BENCHMARKS.md: 30 min; `all` passes a short one).
    #[arg(long, short = 'd', default_value_t = 1800)]
    pub duration: u64,
    /// Seconds per reported interval (default: a tenth of the duration, 5 s to 180 s).
    #[arg(long)]
    pub interval: Option<u64>,
    /// Warm-up before the first interval, in seconds.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Target rate, msg/s; default: half of Ferry's loss-free QoS 0 rate, searched at the start (B1's
    /// search with short probes).
    #[arg(long)]
    pub rate: Option<f64>,
    /// B1's loss-free QoS 0 rate measured earlier in the same sitting (`ferry-bench all` passes it): the
    /// soak runs at half of it, as BENCHMARKS.md asks, without a search of its own. `--rate` wins.
    #[arg(long)]
    pub b1_rate: Option<f64>,
    #[arg(long, value_enum, default_value = "telemetry")]
    pub flow: SoakFlow,
    #[command(flatten)]
    pub pinning: Pinning,
    #[arg(long, default_value_t = 100)]
    pub publishers: usize,
    #[arg(long, default_value_t = 2)]
    pub tick_ms: u64,
    #[arg(long, default_value_t = 5000)]
    pub credit: u32,
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/REPORT.md"))]
    pub report: PathBuf,
    #[arg(long)]
    pub no_report: bool,
}

#[derive(clap::Parser)]
struct Wrapper {
    #[command(flatten)]
    args: SoakArgs,
}

impl SoakArgs {
    /// The defaults, as `ferry-bench soak` with no options.
    pub fn defaults() -> Self {
        <Wrapper as clap::Parser>::parse_from(["ferry-bench-soak"]).args
    }

    /// Parses options as on the command line, e.g. `["--duration", "120"]`.
    pub fn from_options<I, S>(options: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        let argv = std::iter::once(std::ffi::OsString::from("ferry-bench-soak"))
            .chain(options.into_iter().map(Into::into));
        Ok(<Wrapper as clap::Parser>::try_parse_from(argv)?.args)
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(
            self.interval
                .unwrap_or(self.duration / 10)
                .clamp(5, 180)
                .min(self.duration.max(1)),
        )
    }

    /// The B1 options the soak shares (pinning, binaries, publishers).
    fn mqtt_args(&self) -> MqttArgs {
        let mut m = MqttArgs::defaults();
        m.pinning = self.pinning.clone();
        m.publishers = self.publishers;
        m.tick_ms = self.tick_ms;
        m.credit = self.credit;
        m.bin_dir = self.bin_dir.clone();
        m.report = self.report.clone();
        m.no_report = self.no_report;
        m
    }
}

/// One reported interval.
#[derive(Debug, Clone)]
pub struct Interval {
    pub end_secs: f64,
    pub delivered: u64,
    pub latencies_us: Vec<u32>,
    pub rss_kib: Vec<u64>,
    pub cpu: CpuUse,
}

impl Interval {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.cpu.window.as_secs_f64().max(1e-9)
    }
}

/// Growth from `first` to `last` in percent.
pub fn growth_percent(first: u64, last: u64) -> f64 {
    if first == 0 {
        return 0.0;
    }
    (last as f64 - first as f64) * 100.0 / first as f64
}

/// Runs the soak against Ferry and writes section `b10`.
pub async fn run(args: &SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.duration > 0 && args.publishers > 0,
        "nothing to measure"
    );
    let m = args.mqtt_args();
    let mut sut = Sut::start(Kind::Ferry, &m, args.publishers, false).await?;
    let result = soak(&mut sut, args, &m).await;
    let (rate, source, intervals, totals, names) = match result {
        Ok(r) => {
            sut.stop();
            r
        }
        Err(e) => {
            let logs = sut.log_tails(6);
            sut.stop();
            eprintln!("soak failed; the logs end with:\n{logs}");
            let text = format!(
                "## B10: soak, QoS 1 at half of B1's rate\n\n{}\n**Not completed**: {e:#}. The end of \
                 the components' logs:\n\n```text\n{}\n```\n\n{}Reproduce (from the workspace root):\n\n```sh\n\"$CARGO_TARGET_DIR\"/release/ferry-bench soak \
                 --duration {}{}\n```\n",
                super::preamble(&m),
                logs.replace("```", "'''"),
                super::throughput::summary_marker(
                    "B10",
                    "–".to_owned(),
                    "not completed".to_owned(),
                    "–".to_owned(),
                    Some(false),
                    format!("{e:#}"),
                    &crate::machine::now(),
                ),
                args.duration,
                args.rate.map_or(String::new(), |r| format!(" --rate {r:.0}"))
            );
            super::publish_section(&m, "b10", &text)?;
            return Err(e);
        }
    };
    let text = render(args, rate, &source, &intervals, &totals, &names);
    super::publish_section(&m, "b10", &text)?;
    anyhow::ensure!(
        totals.lost == 0,
        "{} QoS 1 messages were PUBACKed but never reached the consumer",
        totals.lost
    );
    Ok(())
}

/// End-of-soak counts.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
}

type SoakResult = (f64, String, Vec<Interval>, Totals, Vec<String>);

async fn soak(sut: &mut Sut, args: &SoakArgs, m: &MqttArgs) -> anyhow::Result<SoakResult> {
    let processes = sut.processes();
    let names: Vec<String> = processes.iter().map(|(n, _)| n.clone()).collect();
    let pids: Vec<u32> = processes.iter().map(|(_, p)| *p).collect();
    let (rate, source) = match args.rate {
        Some(r) => (r, "given with --rate".to_owned()),
        None if args.b1_rate.is_some_and(|r| r > 0.0) => {
            let b1 = args.b1_rate.unwrap_or_default();
            (
                b1 * 0.5,
                format!(
                    "half of B1's loss-free QoS 0 rate of {} msg/s, measured earlier in this sitting",
                    thousands(b1)
                ),
            )
        }
        None => {
            let spec = TrafficSpec {
                mqtt: sut.mqtt_addr(),
                publishers: (0..args.publishers)
                    .map(|i| sut.publisher(i, Flow::Telemetry))
                    .collect(),
                qos: 0,
                receiver: sut.receiver(Flow::Telemetry, 0, args.credit),
                tick: Duration::from_millis(args.tick_ms.max(1)),
                track: false,
            };
            let mut traffic = Traffic::start(&spec).await?;
            let mut search = RateSearch::new(m.start_rate, m.step, m.max_rate, m.max_probes);
            while let Some(r) = search.next() {
                let run = measure_open(
                    &mut traffic,
                    &pids,
                    r,
                    Duration::from_secs_f64(m.probe_warmup),
                    Duration::from_secs_f64(m.probe_duration),
                )
                .await?;
                eprintln!(
                    "soak: QoS 0 probe {} msg/s: delivered {:.0}/s, lost {}",
                    thousands(r),
                    run.delivered_rate(),
                    run.lost()
                );
                search.record(r, run.passed());
            }
            traffic.shutdown().await;
            let best = search
                .best
                .context("no loss-free QoS 0 rate found to take half of")?;
            (
                best * 0.5,
                format!(
                    "half of Ferry's loss-free QoS 0 rate of {} msg/s, searched at the start of this run",
                    thousands(best)
                ),
            )
        }
    };
    let flow = match args.flow {
        SoakFlow::Telemetry => Flow::Telemetry,
        SoakFlow::Events => Flow::Events,
    };
    let spec = TrafficSpec {
        mqtt: sut.mqtt_addr(),
        publishers: (0..args.publishers)
            .map(|i| sut.publisher(i, flow))
            .collect(),
        qos: 1,
        receiver: sut.receiver(flow, 1, args.credit),
        tick: Duration::from_millis(args.tick_ms.max(1)),
        track: true,
    };
    let mut traffic = Traffic::start(&spec).await?;
    let n = args.publishers as f64;
    let start = Instant::now();
    traffic.set(Plan::Open {
        per_publisher: rate / n,
        start,
    });
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    traffic.recv.take_latencies();
    traffic.recv.record.store(true, Ordering::Relaxed);
    let soak_start = Instant::now();
    let end = soak_start + Duration::from_secs(args.duration);
    let mut intervals = Vec::new();
    let mut last = CpuSample::take(&pids);
    let mut last_received = traffic.received();
    while Instant::now() < end {
        let next = (Instant::now() + args.interval()).min(end);
        tokio::time::sleep_until(next.into()).await;
        sut.check_alive()?;
        traffic.check()?;
        let now = CpuSample::take(&pids);
        let received = traffic.received();
        let mut latencies_us = traffic.recv.take_latencies();
        latencies_us.sort_unstable();
        let interval = Interval {
            end_secs: soak_start.elapsed().as_secs_f64(),
            delivered: received - last_received,
            latencies_us,
            rss_kib: pids
                .iter()
                .map(|p| procs::rss_kib(*p).unwrap_or(0))
                .collect(),
            cpu: CpuUse::between(&last, &now),
        };
        eprintln!(
            "soak {:>6.0} s: {:.0} msg/s, p99 {:.2} ms, RSS KiB {:?}, unacked {}",
            interval.end_secs,
            interval.rate(),
            quantile_ms(&interval.latencies_us, 0.99),
            interval.rss_kib,
            traffic.sent() - traffic.acked()
        );
        intervals.push(interval);
        last = now;
        last_received = received;
    }
    traffic.recv.record.store(false, Ordering::Relaxed);
    traffic.set(Plan::Idle);
    traffic
        .drain(Duration::from_secs(10), |sent, acked, received| {
            acked == sent && received >= acked
        })
        .await;
    let mut totals = Totals {
        sent: traffic.sent(),
        acked: traffic.acked(),
        received: traffic.received(),
        ..Totals::default()
    };
    if let Some(seen) = &traffic.recv.seen {
        let seen = seen
            .lock()
            .map_err(|_| anyhow::anyhow!("the receiver's record was poisoned"))?;
        for (p, counters) in traffic.pubs.iter().enumerate() {
            totals.lost += seen.missing(p, counters.acked.load(Ordering::Relaxed));
        }
        totals.duplicates = seen.duplicates;
    }
    traffic.shutdown().await;
    Ok((rate, source, intervals, totals, names))
}

fn render(
    args: &SoakArgs,
    rate: f64,
    source: &str,
    intervals: &[Interval],
    totals: &Totals,
    names: &[String],
) -> String {
    let flow = match args.flow {
        SoakFlow::Telemetry => "telemetry (`t`, PUBACK after the consumer accepted)",
        SoakFlow::Events => "events (`e`, PUBACK after the router stored the event)",
    };
    let mut out = String::from("## B10: soak, QoS 1 at half of B1's rate\n\n");
    out.push_str(&format!(
        "Ferry (registry, router, adapter as three processes) under {} publishers sending 32-byte QoS 1 \
         {flow} open loop at {} msg/s ({source}) for {} s after a {} s warm-up; one AMQP 1.0 receiver \
         accepts every message. Each message is stamped with its publisher and sequence number; lost = \
         messages PUBACKed to their publisher that the consumer never received (every publisher's \
         PUBACKs arrive in order, so the first `acked` sequence numbers are the PUBACKed ones). Every \
         {} s: the delivered rate, latency percentiles of the interval, and RSS of each process. RSS \
         growth compares the first interval with the last; p99 drift is the last interval's p99 over \
         the first's. The machine is shared (2 cores, others compiling): intervals with much \
         background load show as higher latency.\n\n",
        args.publishers,
        thousands(rate),
        args.duration,
        args.warmup,
        args.interval().as_secs()
    ));
    out.push_str(&super::preamble(&args.mqtt_args()));
    out.push('\n');
    let mut headers = vec![
        "t, s".to_owned(),
        "delivered msg/s".to_owned(),
        "p50 ms".to_owned(),
        "p99 ms".to_owned(),
        "p99.9 ms".to_owned(),
    ];
    headers.extend(names.iter().map(|n| format!("RSS {n}, MiB")));
    headers.push("core % system / generator / others".to_owned());
    let rows: Vec<Vec<String>> = intervals
        .iter()
        .map(|i| {
            let mut row = vec![
                format!("{:.0}", i.end_secs),
                thousands(i.rate()),
                format!("{:.2}", quantile_ms(&i.latencies_us, 0.5)),
                format!("{:.2}", quantile_ms(&i.latencies_us, 0.99)),
                format!("{:.2}", quantile_ms(&i.latencies_us, 0.999)),
            ];
            row.extend(
                i.rss_kib
                    .iter()
                    .map(|k| format!("{:.1}", *k as f64 / 1024.0)),
            );
            row.push(i.cpu.cores_text());
            row
        })
        .collect();
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    out.push_str(&report::markdown_table(&header_refs, &rows));
    out.push_str(&format!(
        "\nSent {}, PUBACKed {}, received {} (duplicates {}), **lost {}**.\n\n",
        thousands(totals.sent as f64),
        thousands(totals.acked as f64),
        thousands(totals.received as f64),
        totals.duplicates,
        totals.lost
    ));
    if let (Some(first), Some(last)) = (intervals.first(), intervals.last()) {
        let growth: Vec<(String, f64)> = names
            .iter()
            .enumerate()
            .map(|(k, n)| {
                (
                    n.clone(),
                    growth_percent(
                        first.rss_kib.get(k).copied().unwrap_or(0),
                        last.rss_kib.get(k).copied().unwrap_or(0),
                    ),
                )
            })
            .collect();
        let worst = growth.iter().map(|(_, g)| *g).fold(f64::MIN, f64::max);
        let (p1, p2) = (
            quantile_ms(&first.latencies_us, 0.99),
            quantile_ms(&last.latencies_us, 0.99),
        );
        let drift = if p1 > 0.0 { p2 / p1 } else { f64::INFINITY };
        let met = |ok: bool| if ok { "**met**" } else { "**missed**" };
        out.push_str(&super::throughput::summary_marker(
            "B10",
            "–".to_owned(),
            format!(
                "RSS growth up to {worst:+.1} %, lost {}, p99 drift {drift:.2}×",
                totals.lost
            ),
            "–".to_owned(),
            Some(worst <= 5.0 && totals.lost == 0 && totals.acked == totals.sent && drift <= 2.0),
            format!(
                "{} s at {} msg/s QoS 1{}",
                args.duration,
                thousands(rate),
                if args.duration < 1800 {
                    " (shorter than the 30 min of BENCHMARKS.md)"
                } else {
                    ""
                }
            ),
            &crate::machine::now(),
        ));
        out.push_str(&report::markdown_table(
            &["goal", "figure", "goal", "result"],
            &[
                vec![
                    "RSS growth, first → last interval".to_owned(),
                    growth
                        .iter()
                        .map(|(n, g)| format!("{n} {g:+.1} %"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    "≤ 5 % (each process)".to_owned(),
                    met(worst <= 5.0).to_owned(),
                ],
                vec![
                    "lost QoS 1 messages".to_owned(),
                    totals.lost.to_string(),
                    "0".to_owned(),
                    met(totals.lost == 0 && totals.acked == totals.sent).to_owned(),
                ],
                vec![
                    "p99 drift, last / first interval".to_owned(),
                    format!("{p1:.2} ms → {p2:.2} ms = {drift:.2}×"),
                    "≤ 2×".to_owned(),
                    met(drift <= 2.0).to_owned(),
                ],
            ],
        ));
        if totals.acked != totals.sent {
            out.push_str(&format!(
                "\n{} messages were never PUBACKed by the end of the drain.\n",
                totals.sent - totals.acked
            ));
        }
    }
    let mut cmd = format!(
        "\"$CARGO_TARGET_DIR\"/release/ferry-bench soak --duration {} --interval {} --warmup {} --rate {:.0} --flow {} --publishers {}",
        args.duration,
        args.interval().as_secs(),
        args.warmup,
        rate,
        match args.flow {
            SoakFlow::Telemetry => "telemetry",
            SoakFlow::Events => "events",
        },
        args.publishers
    );
    if args.pinning.no_pin {
        cmd.push_str(" --no-pin");
    } else {
        cmd.push_str(&format!(
            " --server-cpus {} --client-cpus {}",
            args.pinning.server_cpus, args.pinning.client_cpus
        ));
    }
    out.push_str(&format!(
        "\nReproduce (from the workspace root):\n\n```sh\nexport CARGO_TARGET_DIR=/var/tmp/ferry-target\n\
         cargo build --release -p ferry-registry -p ferry-router -p ferry-mqtt-adapter -p ferry-bench\n{cmd}\n```\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_relative_to_the_first_sample() {
        assert_eq!(growth_percent(1000, 1050), 5.0);
        assert_eq!(growth_percent(1000, 900), -10.0);
        assert_eq!(growth_percent(0, 900), 0.0);
    }

    #[test]
    fn intervals_default_to_a_tenth_within_bounds() {
        let mut a = SoakArgs::defaults();
        assert_eq!(a.duration, 1800);
        assert_eq!(a.interval(), Duration::from_secs(180));
        a.duration = 120;
        assert_eq!(a.interval(), Duration::from_secs(12));
        a.duration = 20;
        assert_eq!(a.interval(), Duration::from_secs(5));
        a.interval = Some(1000);
        assert_eq!(a.interval(), Duration::from_secs(20));
        let parsed =
            SoakArgs::from_options(["--duration", "120", "--rate", "1000"]).expect("parses");
        assert_eq!(parsed.rate, Some(1000.0));
    }
}
