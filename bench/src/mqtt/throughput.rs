//! B1 + B2 (QoS 0 telemetry: loss-free rate, CPU per message), B5 (latency at a fixed rate) and B3
//! (QoS 1 durable events, closed loop), measured on the same [`Traffic`] machinery for every system.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::stats::{self, quantile_ms, ratio, thousands, RateSearch};
use super::traffic::{Plan, Traffic, TrafficSpec};
use super::{CpuSample, CpuUse, Flow, Kind, MqttArgs, Sut};
use crate::report;

/// Share of the target rate the publishers must reach for a probe to count (below: the generator or
/// the server's TCP back-pressure held them back).
const MIN_SENT_SHARE: f64 = 0.97;
/// How long the counts may stand still while draining before the rest counts as lost.
const DRAIN_QUIET: Duration = Duration::from_secs(2);

/// One open-loop run at a target rate.
#[derive(Debug, Clone)]
pub struct OpenRun {
    pub target: f64,
    /// Sent and received over the whole run (warm-up, window, drain).
    pub sent: u64,
    pub received: u64,
    pub window_sent: u64,
    pub window_delivered: u64,
    pub cpu: CpuUse,
    /// Latencies of the messages received in the window, µs, sorted.
    pub latencies_us: Vec<u32>,
}

impl OpenRun {
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    pub fn delivered_rate(&self) -> f64 {
        self.window_delivered as f64 / self.cpu.window.as_secs_f64().max(1e-9)
    }

    pub fn sent_rate(&self) -> f64 {
        self.window_sent as f64 / self.cpu.window.as_secs_f64().max(1e-9)
    }

    /// Zero loss, the publishers kept up with the target, and so did the system: what was delivered in
    /// the window kept up too (a system that only queues, delivering later in the drain, does not pass).
    pub fn passed(&self) -> bool {
        self.lost() == 0
            && self.sent_rate() >= MIN_SENT_SHARE * self.target
            && self.delivered_rate() >= MIN_SENT_SHARE * self.target
    }

    /// CPU µs of the whole system under test per delivered message.
    pub fn us_per_message(&self) -> f64 {
        self.cpu.sut_total().as_secs_f64() * 1e6 / self.window_delivered.max(1) as f64
    }

    pub fn us_per_message_of(&self, process: usize) -> f64 {
        self.cpu.sut.get(process).map_or(0.0, |d| {
            d.as_secs_f64() * 1e6 / self.window_delivered.max(1) as f64
        })
    }
}

/// Runs the publishers open loop at `rate` for `warmup` + `duration`, then drains.
pub async fn measure_open(
    traffic: &mut Traffic,
    pids: &[u32],
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<OpenRun> {
    traffic.check()?;
    let (sent0, recv0) = (traffic.sent(), traffic.received());
    traffic.recv.take_latencies();
    let n = traffic.pubs.len().max(1) as f64;
    traffic.set(Plan::Open {
        per_publisher: rate / n,
        start: Instant::now(),
    });
    tokio::time::sleep(warmup).await;
    let c0 = CpuSample::take(pids);
    let (ws0, wr0) = (traffic.sent(), traffic.received());
    traffic.recv.record.store(true, Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    let c1 = CpuSample::take(pids);
    let (ws1, wr1) = (traffic.sent(), traffic.received());
    traffic.recv.record.store(false, Ordering::Relaxed);
    traffic.set(Plan::Idle);
    traffic
        .drain(DRAIN_QUIET, |sent, _, received| {
            received - recv0 >= sent - sent0
        })
        .await;
    traffic.check()?;
    let mut latencies_us = traffic.recv.take_latencies();
    latencies_us.sort_unstable();
    Ok(OpenRun {
        target: rate,
        sent: traffic.sent() - sent0,
        received: traffic.received() - recv0,
        window_sent: ws1 - ws0,
        window_delivered: wr1 - wr0,
        cpu: CpuUse::between(&c0, &c1),
        latencies_us,
    })
}

/// A probe of the search, for the report.
#[derive(Debug, Clone)]
pub struct Probe {
    pub target: f64,
    pub delivered: f64,
    pub lost: u64,
    pub passed: bool,
    /// Shares of one core: the system under test (each process), the generator.
    pub sut_cores: Vec<f64>,
    pub generator_core: f64,
}

/// What B1 measured for one system.
#[derive(Debug)]
pub struct SystemB1 {
    pub kind: Kind,
    pub processes: Vec<String>,
    pub probes: Vec<Probe>,
    /// The confirmation runs at the chosen rate (the last attempt).
    pub runs: Vec<OpenRun>,
    pub notes: Vec<String>,
}

impl SystemB1 {
    pub fn median(&self) -> Option<&OpenRun> {
        let rates: Vec<f64> = self.runs.iter().map(OpenRun::delivered_rate).collect();
        stats::median_index(&rates).map(|i| &self.runs[i])
    }

    /// The loss-free rate: the median run's delivered rate when every run passed.
    pub fn loss_free_rate(&self) -> Option<f64> {
        if self.runs.is_empty() || !self.runs.iter().all(OpenRun::passed) {
            return None;
        }
        self.median().map(OpenRun::delivered_rate)
    }
}

fn spec(sut: &Sut, args: &MqttArgs, flow: Flow, qos: u8, track: bool) -> TrafficSpec {
    TrafficSpec {
        mqtt: sut.mqtt_addr(),
        publishers: (0..args.publishers)
            .map(|i| sut.publisher(i, flow))
            .collect(),
        qos,
        receiver: sut.receiver(flow, qos, args.credit),
        tick: Duration::from_millis(args.tick_ms.max(1)),
        track,
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.1))
}

/// The highest loss-free QoS 0 rate of `kind`: a search with short probes, then `--runs` confirmation
/// runs (stepping down 10 % while one of them loses messages, at most three times).
pub async fn b1_system(kind: Kind, args: &MqttArgs) -> anyhow::Result<SystemB1> {
    let mut sut = Sut::start(kind, args, args.publishers, false).await?;
    let result = b1_on(&mut sut, args).await;
    sut.stop();
    result
}

async fn b1_on(sut: &mut Sut, args: &MqttArgs) -> anyhow::Result<SystemB1> {
    let kind = sut.kind();
    let processes: Vec<String> = sut.processes().into_iter().map(|(n, _)| n).collect();
    let pids: Vec<u32> = sut.processes().into_iter().map(|(_, p)| p).collect();
    let mut traffic = Traffic::start(&spec(sut, args, Flow::Telemetry, 0, false)).await?;
    let mut search = RateSearch::new(args.start_rate, args.step, args.max_rate, args.max_probes);
    let mut probes = Vec::new();
    let mut notes = Vec::new();
    while let Some(rate) = search.next() {
        let run = measure_open(
            &mut traffic,
            &pids,
            rate,
            secs(args.probe_warmup),
            secs(args.probe_duration),
        )
        .await;
        sut.check_alive()?;
        let run = run?;
        eprintln!(
            "{} B1 probe {:>9} msg/s: delivered {:>9.0}/s, sent {:>9.0}/s, lost {}, core % sut/gen/others {}",
            kind.label(),
            thousands(rate),
            run.delivered_rate(),
            run.sent_rate(),
            run.lost(),
            run.cpu.cores_text()
        );
        search.record(rate, run.passed());
        probes.push(Probe {
            target: rate,
            delivered: run.delivered_rate(),
            lost: run.lost(),
            passed: run.passed(),
            sut_cores: run.cpu.sut.iter().map(|d| run.cpu.cores(*d)).collect(),
            generator_core: run.cpu.cores(run.cpu.generator),
        });
    }
    let Some(mut rate) = search.best else {
        traffic.shutdown().await;
        bail!(
            "{}: no probed rate was loss-free (lowest tried: {:?})",
            kind.label(),
            search.failed
        );
    };
    let mut runs = Vec::new();
    for attempt in 0..4 {
        runs.clear();
        for n in 1..=args.runs {
            let run = measure_open(
                &mut traffic,
                &pids,
                rate,
                Duration::from_secs(args.warmup),
                Duration::from_secs(args.duration),
            )
            .await?;
            eprintln!(
                "{} B1 run {n}/{} at {} msg/s: delivered {:.0}/s, lost {}, {:.2} CPU µs/msg, core % sut/gen/others {}",
                kind.label(),
                args.runs,
                thousands(rate),
                run.delivered_rate(),
                run.lost(),
                run.us_per_message(),
                run.cpu.cores_text()
            );
            runs.push(run);
        }
        if runs.iter().all(OpenRun::passed) || attempt == 3 {
            break;
        }
        notes.push(format!(
            "{}: a confirmation run at {} msg/s lost messages or fell behind; stepped down 10 %.",
            kind.label(),
            thousands(rate)
        ));
        rate *= 0.9;
    }
    traffic.shutdown().await;
    Ok(SystemB1 {
        kind,
        processes,
        probes,
        runs,
        notes,
    })
}

/// B1 + B2 for Mosquitto and Ferry; writes section `b1-b2`; returns Mosquitto's loss-free rate.
pub async fn run_b1(args: &MqttArgs) -> anyhow::Result<Option<f64>> {
    anyhow::ensure!(args.publishers > 0 && args.runs > 0, "nothing to measure");
    let mosquitto = b1_system(Kind::Mosquitto, args).await?;
    let ferry = b1_system(Kind::Ferry, args).await?;
    let text = render_b1(args, &mosquitto, &ferry);
    super::publish_section(args, "b1-b2", &text)?;
    Ok(mosquitto.loss_free_rate())
}

fn probes_text(s: &SystemB1) -> String {
    s.probes
        .iter()
        .map(|p| {
            format!(
                "{}{}",
                thousands(p.target),
                if p.passed { "✓" } else { "✗" }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**missed**"
    }
}

fn render_b1(args: &MqttArgs, mosquitto: &SystemB1, ferry: &SystemB1) -> String {
    let mut out = String::from("## B1 + B2: MQTT QoS 0 telemetry, Ferry vs Mosquitto\n\n");
    out.push_str(&format!(
        "{} publishers (MQTT 3.1.1, one connection each, authenticated with a password) send 32-byte \
         QoS 0 messages open loop at a target rate (each publisher writes what is due every {} ms, the \
         publishers staggered); **Ferry**: `ferry-mqtt-adapter` → `ferry-router` → one AMQP 1.0 receiver \
         (fe2o3-amqp, credit {}) on `telemetry/{}`, the registry running beside them; **Mosquitto**: one \
         MQTT subscriber on `t/{}/#`. Publishers and receiver are one process (the generator). A rate \
         counts only when every message sent in the run (warm-up, window and drain) was received, and \
         both the publishers' rate and the rate delivered to the receiver within the window reached {:.0} % \
         of the target (a system that queues and delivers later does not pass). Search: probes of {} s warm-up + {} s measured, \
         from {} msg/s up by ×{} until one fails, then bisection; the best passing rate is then run {} \
         times ({} s warm-up, {} s measured) and the median delivered rate is the row's figure. CPU: \
         utime + stime from `/proc` over the window, of every process of the system (Ferry: registry + \
         router + adapter), per message delivered in the window. Core %: share of one core used in the \
         window by the system under test, the generator, and everything else on the machine (background \
         load: other work runs on this 2-core machine, so figures are noisy).\n\n",
        args.publishers,
        args.tick_ms,
        args.credit,
        super::ferry::TENANT,
        super::ferry::TENANT,
        MIN_SENT_SHARE * 100.0,
        args.probe_warmup,
        args.probe_duration,
        thousands(args.start_rate),
        args.step,
        args.runs,
        args.warmup,
        args.duration,
    ));
    out.push_str(&super::preamble(args));
    out.push('\n');
    let headers = [
        "system",
        "loss-free msg/s (median)",
        "CPU µs/msg (system)",
        "CPU µs/msg per process",
        "lost (all runs)",
        "core % system / generator / others",
        "all runs, delivered msg/s",
        "search (✓ loss-free)",
    ];
    let mut rows = Vec::new();
    for s in [mosquitto, ferry] {
        let Some(m) = s.median() else { continue };
        let split = s
            .processes
            .iter()
            .enumerate()
            .map(|(i, name)| format!("{} {:.2}", name, m.us_per_message_of(i)))
            .collect::<Vec<_>>()
            .join(", ");
        rows.push(vec![
            s.kind.label().to_owned(),
            format!(
                "**{}**{}",
                thousands(m.delivered_rate()),
                if s.loss_free_rate().is_some() {
                    ""
                } else {
                    " (not loss-free)"
                }
            ),
            format!("{:.2}", m.us_per_message()),
            split,
            s.runs.iter().map(OpenRun::lost).sum::<u64>().to_string(),
            m.cpu.cores_text(),
            s.runs
                .iter()
                .map(|r| thousands(r.delivered_rate()))
                .collect::<Vec<_>>()
                .join(" / "),
            probes_text(s),
        ]);
    }
    out.push_str(&report::markdown_table(&headers, &rows));
    out.push('\n');
    let (mr, fr) = (
        mosquitto.loss_free_rate().unwrap_or(0.0),
        ferry.loss_free_rate().unwrap_or(0.0),
    );
    let (mc, fc) = (
        mosquitto.median().map_or(0.0, OpenRun::us_per_message),
        ferry.median().map_or(0.0, OpenRun::us_per_message),
    );
    let goal_rows = vec![
        vec![
            "B1 delivered msg/s (loss-free)".to_owned(),
            thousands(mr),
            thousands(fr),
            ratio(fr, mr),
            "≥ 1.0× (moonshot 1.5×)".to_owned(),
            met(mr > 0.0 && fr >= mr).to_owned(),
        ],
        vec![
            "B2 CPU µs per delivered message".to_owned(),
            format!("{mc:.2}"),
            format!("{fc:.2}"),
            ratio(fc, mc),
            "≤ 2.0×".to_owned(),
            met(mc > 0.0 && fc > 0.0 && fc <= 2.0 * mc).to_owned(),
        ],
    ];
    out.push_str(&report::markdown_table(
        &[
            "goal",
            "Mosquitto",
            "Ferry",
            "ratio Ferry / Mosquitto",
            "goal",
            "result",
        ],
        &goal_rows,
    ));
    out.push('\n');
    let date = crate::machine::now();
    let ferry_bound = ferry
        .median()
        .map(|m| {
            let split: Vec<String> = ferry
                .processes
                .iter()
                .enumerate()
                .map(|(i, n)| format!("{n} {:.1}", m.us_per_message_of(i)))
                .collect();
            format!("CPU µs/msg: {}", split.join(", "))
        })
        .unwrap_or_default();
    out.push_str(&summary_marker(
        "B1",
        format!("Mosquitto {} msg/s", thousands(mr)),
        format!("{} msg/s", thousands(fr)),
        ratio(fr, mr),
        (mr > 0.0 && fr > 0.0).then_some(fr >= mr),
        format!(
            "loss-free rate; the system's core is the bound ({ferry_bound}); noisy 2-core machine"
        ),
        &date,
    ));
    out.push_str(&summary_marker(
        "B2",
        format!("Mosquitto {mc:.2} µs/msg"),
        format!("{fc:.2} µs/msg"),
        ratio(fc, mc),
        (mc > 0.0 && fc > 0.0).then_some(fc <= 2.0 * mc),
        format!("all Ferry processes summed; {ferry_bound}"),
        &date,
    ));
    out.push_str(&bounds_b1(mosquitto, ferry));
    for n in mosquitto.notes.iter().chain(&ferry.notes) {
        out.push_str(&format!("- {n}\n"));
    }
    out.push_str(&reproduce(args, "b1"));
    out
}

/// What the figures say bounds each system at its maximum.
fn bounds_b1(mosquitto: &SystemB1, ferry: &SystemB1) -> String {
    let mut out = String::from("**What bounds the rates.** ");
    for s in [mosquitto, ferry] {
        let Some(m) = s.median() else { continue };
        let sut = m.cpu.cores(m.cpu.sut_total()) * 100.0;
        let generator = m.cpu.cores(m.cpu.generator) * 100.0;
        let failed = s.probes.iter().find(|p| !p.passed);
        out.push_str(&format!(
            "{}: at {} msg/s the system's core was {:.0} % busy and the generator's {:.0} %",
            s.kind.label(),
            thousands(m.delivered_rate()),
            sut,
            generator
        ));
        if s.processes.len() > 1 {
            let split: Vec<String> = s
                .processes
                .iter()
                .enumerate()
                .map(|(i, n)| format!("{n} {:.0} %", m.cpu.cores(m.cpu.sut[i]) * 100.0))
                .collect();
            out.push_str(&format!(" ({})", split.join(", ")));
        }
        if let Some(f) = failed {
            out.push_str(&format!(
                "; the first failing probe, {} msg/s, delivered {}/s and lost {}",
                thousands(f.target),
                thousands(f.delivered),
                f.lost
            ));
        }
        // At the first failing probe, which core ran out?
        let (fail_sut, fail_gen) = failed.map_or((sut, generator), |f| {
            (
                f.sut_cores.iter().sum::<f64>() * 100.0,
                f.generator_core * 100.0,
            )
        });
        if let Some(f) = failed {
            let split: Vec<String> = s
                .processes
                .iter()
                .zip(&f.sut_cores)
                .map(|(n, c)| format!("{n} {:.0} %", c * 100.0))
                .collect();
            out.push_str(&format!(
                " (there the system's core was {fail_sut:.0} % busy: {}; the generator's {fail_gen:.0} %)",
                split.join(", ")
            ));
        }
        let bound = if fail_sut >= 90.0 {
            "the system's own core is the bound"
        } else if fail_gen >= 90.0 {
            "the generator's core is the bound, so this figure is a lower limit"
        } else if failed.is_none() {
            "no probe failed up to the search's ceiling"
        } else {
            "neither core was saturated on average when the probe failed (lost messages or fell \
             behind): the system's core went to other processes on the machine (see the others column) \
             or to bursts, so this figure is noisy"
        };
        out.push_str(&format!(": {bound}. "));
    }
    out.push_str("\n\n");
    out
}

/// The machine-readable summary line `ferry-bench all` collects (see `crate::all`).
pub(crate) fn summary_marker(
    id: &str,
    peer: String,
    ferry: String,
    ratio: String,
    met: Option<bool>,
    note: String,
    date: &str,
) -> String {
    let row = crate::summary::SummaryRow {
        id: id.to_owned(),
        peer,
        ferry,
        ratio,
        met,
        note,
        date: date.to_owned(),
    };
    format!("{}\n", row.marker())
}

fn reproduce(args: &MqttArgs, scenario: &str) -> String {
    format!(
        "\nReproduce (from the workspace root):\n\n```sh\nexport CARGO_TARGET_DIR=/var/tmp/ferry-target\n\
         cargo build --release -p ferry-registry -p ferry-router -p ferry-mqtt-adapter -p ferry-bench\n\
         \"$CARGO_TARGET_DIR\"/release/ferry-bench mqtt --scenarios {scenario} {}\n```\n",
        args.common_options()
    )
}

/// B5: latency at a fixed rate for Mosquitto and Ferry; section `b5`.
pub async fn run_b5(args: &MqttArgs, mosquitto_max: Option<f64>) -> anyhow::Result<()> {
    let (rate, source) = match (args.b5_rate, mosquitto_max) {
        (Some(r), _) => (r, "given with --b5-rate".to_owned()),
        (None, Some(m)) => (
            m * 0.5,
            format!(
                "50 % of Mosquitto's B1 maximum of {} msg/s measured in this run",
                thousands(m)
            ),
        ),
        (None, None) => {
            let s = b1_system(Kind::Mosquitto, args).await?;
            let m = s
                .loss_free_rate()
                .context("Mosquitto had no loss-free B1 rate to take half of")?;
            (
                m * 0.5,
                format!(
                    "50 % of Mosquitto's B1 maximum of {} msg/s, searched for this section",
                    thousands(m)
                ),
            )
        }
    };
    let mut results = Vec::new();
    for kind in [Kind::Mosquitto, Kind::Ferry] {
        let sut = Sut::start(kind, args, args.publishers, false).await?;
        let measured = async {
            let pids: Vec<u32> = sut.processes().into_iter().map(|(_, p)| p).collect();
            let mut traffic = Traffic::start(&spec(&sut, args, Flow::Telemetry, 0, false)).await?;
            let mut runs = Vec::new();
            for n in 1..=args.runs {
                let run = measure_open(
                    &mut traffic,
                    &pids,
                    rate,
                    Duration::from_secs(args.warmup),
                    Duration::from_secs(args.duration),
                )
                .await?;
                eprintln!(
                    "{} B5 run {n}/{} at {} msg/s: p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms, lost {}",
                    kind.label(),
                    args.runs,
                    thousands(rate),
                    quantile_ms(&run.latencies_us, 0.5),
                    quantile_ms(&run.latencies_us, 0.99),
                    quantile_ms(&run.latencies_us, 0.999),
                    run.lost()
                );
                runs.push(run);
            }
            traffic.shutdown().await;
            anyhow::Ok(runs)
        }
        .await;
        sut.stop();
        results.push((kind, measured?));
    }
    let text = render_b5(args, rate, &source, &results);
    super::publish_section(args, "b5", &text)
}

fn median_by_p99(runs: &[OpenRun]) -> Option<&OpenRun> {
    let p99: Vec<f64> = runs
        .iter()
        .map(|r| quantile_ms(&r.latencies_us, 0.99))
        .collect();
    stats::median_index(&p99).map(|i| &runs[i])
}

fn render_b5(args: &MqttArgs, rate: f64, source: &str, results: &[(Kind, Vec<OpenRun>)]) -> String {
    let mut out = String::from("## B5: latency device → consumer, Ferry vs Mosquitto\n\n");
    out.push_str(&format!(
        "The B1 set-up (100 publishers, 32-byte QoS 0 messages; Ferry's consumer is an AMQP 1.0 \
         receiver, Mosquitto's an MQTT subscriber) run open loop at {} msg/s ({source}). Each message \
         carries the generator's monotonic clock when it was written; the receiver, in the same \
         process, takes the difference on arrival: so the latency includes the publisher's socket, the \
         system, and the receiver's decoding, and no clock skew. Every message received in the window \
         counts (exact percentiles, nearest rank). {} runs of {} s warm-up + {} s measured; the row is \
         the run with the median p99.\n\n",
        thousands(rate),
        args.runs,
        args.warmup,
        args.duration
    ));
    out.push_str(&super::preamble(args));
    out.push('\n');
    let mut rows = Vec::new();
    let mut p99 = Vec::new();
    let mut p999 = Vec::new();
    for (kind, runs) in results {
        let Some(m) = median_by_p99(runs) else {
            continue;
        };
        p99.push((*kind, quantile_ms(&m.latencies_us, 0.99)));
        p999.push((*kind, quantile_ms(&m.latencies_us, 0.999)));
        rows.push(vec![
            kind.label().to_owned(),
            thousands(m.delivered_rate()),
            format!("{:.3}", quantile_ms(&m.latencies_us, 0.5)),
            format!("**{:.3}**", quantile_ms(&m.latencies_us, 0.99)),
            format!("{:.3}", quantile_ms(&m.latencies_us, 0.999)),
            format!("{:.3}", quantile_ms(&m.latencies_us, 1.0)),
            runs.iter().map(OpenRun::lost).sum::<u64>().to_string(),
            m.cpu.cores_text(),
            runs.iter()
                .map(|r| format!("{:.3}", quantile_ms(&r.latencies_us, 0.99)))
                .collect::<Vec<_>>()
                .join(" / "),
        ]);
    }
    out.push_str(&report::markdown_table(
        &[
            "system",
            "delivered msg/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "lost (all runs)",
            "core % system / generator / others",
            "all runs, p99 ms",
        ],
        &rows,
    ));
    let get = |v: &[(Kind, f64)], k: Kind| v.iter().find(|(x, _)| *x == k).map(|(_, y)| *y);
    if let (Some(mp99), Some(fp99), Some(fp999)) = (
        get(&p99, Kind::Mosquitto),
        get(&p99, Kind::Ferry),
        get(&p999, Kind::Ferry),
    ) {
        out.push('\n');
        out.push_str(&summary_marker(
            "B5",
            format!(
                "Mosquitto p99 {mp99:.2} ms, p99.9 {}",
                get(&p999, Kind::Mosquitto).map_or("–".into(), |v| format!("{v:.2} ms"))
            ),
            format!("p99 {fp99:.2} ms, p99.9 {fp999:.2} ms"),
            format!("{:+.2} ms", fp99 - mp99),
            Some(fp99 <= mp99 + 1.0 && fp999 <= 10.0),
            format!(
                "at {} msg/s; the generator and both systems share a loaded 2-core machine, so tails are noisy",
                thousands(rate)
            ),
            &crate::machine::now(),
        ));
        out.push_str(&report::markdown_table(
            &["goal", "Mosquitto", "Ferry", "goal", "result"],
            &[
                vec![
                    "p99 ms".to_owned(),
                    format!("{mp99:.3}"),
                    format!("{fp99:.3}"),
                    "≤ Mosquitto p99 + 1 ms".to_owned(),
                    met(fp99 <= mp99 + 1.0).to_owned(),
                ],
                vec![
                    "p99.9 ms".to_owned(),
                    get(&p999, Kind::Mosquitto).map_or("–".into(), |v| format!("{v:.3}")),
                    format!("{fp999:.3}"),
                    "≤ 10 ms".to_owned(),
                    met(fp999 <= 10.0).to_owned(),
                ],
            ],
        ));
    }
    for (kind, runs) in results {
        let Some(m) = median_by_p99(runs) else {
            continue;
        };
        if m.delivered_rate() < MIN_SENT_SHARE * rate {
            out.push_str(&format!(
                "\n{} did not keep up with {} msg/s: it delivered {}/s in the window and lost {} \
                 messages over the runs, so its latencies here are those of an overloaded system (queues \
                 filling), not of the message path; its own loss-free rate is in section `b1-b2`.\n",
                kind.label(),
                thousands(rate),
                thousands(m.delivered_rate()),
                runs.iter().map(OpenRun::lost).sum::<u64>()
            ));
        }
    }
    out.push_str(&reproduce(args, "b1,b5"));
    out
}

/// One closed-loop QoS 1 run.
#[derive(Debug, Clone)]
pub struct ClosedRun {
    /// PUBACKs received by the publishers in the window.
    pub window_acked: u64,
    /// Messages the consumer received in the window.
    pub window_received: u64,
    /// Messages PUBACKed over the whole run and not received by the consumer.
    pub lost: u64,
    pub cpu: CpuUse,
    pub latencies_us: Vec<u32>,
}

impl ClosedRun {
    pub fn rate(&self) -> f64 {
        self.window_acked as f64 / self.cpu.window.as_secs_f64().max(1e-9)
    }

    pub fn us_per_message(&self) -> f64 {
        self.cpu.sut_total().as_secs_f64() * 1e6 / self.window_acked.max(1) as f64
    }

    pub fn received_rate(&self) -> f64 {
        self.window_received as f64 / self.cpu.window.as_secs_f64().max(1e-9)
    }

    /// CPU µs per PUBACKed message of each process, as `name x.x` pairs.
    pub fn split(&self, names: &[String]) -> String {
        names
            .iter()
            .zip(&self.cpu.sut)
            .map(|(n, d)| {
                format!(
                    "{n} {:.1}",
                    d.as_secs_f64() * 1e6 / self.window_acked.max(1) as f64
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Closed loop: `window` unacknowledged QoS 1 messages per publisher.
pub async fn measure_closed(
    traffic: &mut Traffic,
    pids: &[u32],
    window: u64,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<ClosedRun> {
    traffic.check()?;
    let (ack0, recv0) = (traffic.acked(), traffic.received());
    traffic.recv.take_latencies();
    traffic.set(Plan::Closed { window });
    tokio::time::sleep(warmup).await;
    let c0 = CpuSample::take(pids);
    let (a0, r0) = (traffic.acked(), traffic.received());
    traffic.recv.record.store(true, Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    let c1 = CpuSample::take(pids);
    let (a1, r1) = (traffic.acked(), traffic.received());
    traffic.recv.record.store(false, Ordering::Relaxed);
    traffic.set(Plan::Idle);
    traffic
        .drain(Duration::from_secs(3), |sent, acked, received| {
            acked == sent && received - recv0 >= acked - ack0
        })
        .await;
    traffic.check()?;
    let mut latencies_us = traffic.recv.take_latencies();
    latencies_us.sort_unstable();
    Ok(ClosedRun {
        window_acked: a1 - a0,
        window_received: r1 - r0,
        lost: (traffic.acked() - ack0).saturating_sub(traffic.received() - recv0),
        cpu: CpuUse::between(&c0, &c1),
        latencies_us,
    })
}

/// What B3 measured for one system: its process names and runs, or why it was not measured.
/// A run that failed part-way leaves the runs before it and the error.
type B3Result = (
    Kind,
    Result<(Vec<String>, Vec<ClosedRun>, Option<String>), String>,
);

/// B3: QoS 1 events, closed loop, Ferry vs Mosquitto (persistence) vs ActiveMQ; section `b3`.
pub async fn run_b3(args: &MqttArgs) -> anyhow::Result<()> {
    let mut kinds = vec![Kind::Mosquitto];
    if !args.no_activemq {
        kinds.push(Kind::ActiveMq);
    }
    kinds.push(Kind::Ferry);
    let mut results: Vec<B3Result> = Vec::new();
    for kind in kinds {
        let measured = async {
            let mut sut = Sut::start(kind, args, args.publishers, true).await?;
            let names: Vec<String> = sut.processes().into_iter().map(|(n, _)| n).collect();
            let pids: Vec<u32> = sut.processes().into_iter().map(|(_, p)| p).collect();
            let mut runs = Vec::new();
            let mut failure = None;
            match Traffic::start(&spec(&sut, args, Flow::Events, 1, false)).await {
                Err(e) => failure = Some(format!("{e:#}")),
                Ok(mut traffic) => {
                    for n in 1..=args.runs {
                        let run = match measure_closed(
                            &mut traffic,
                            &pids,
                            args.window,
                            Duration::from_secs(args.warmup),
                            Duration::from_secs(args.duration),
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(e) => {
                                failure = Some(format!("run {n}: {e:#}"));
                                break;
                            }
                        };
                        eprintln!(
                            "{} B3 run {n}/{}: {:.0} PUBACKed msg/s, {:.0} received/s, lost {}, {:.1} CPU µs/msg, p99 {:.2} ms, core % {}",
                            kind.label(),
                            args.runs,
                            run.rate(),
                            run.received_rate(),
                            run.lost,
                            run.us_per_message(),
                            quantile_ms(&run.latencies_us, 0.99),
                            run.cpu.cores_text()
                        );
                        runs.push(run);
                    }
                    traffic.shutdown().await;
                }
            }
            if let Some(f) = &failure {
                eprintln!(
                    "{} B3 failed ({f}); the logs end with:\n{}",
                    kind.label(),
                    sut.log_tails(8)
                );
            }
            sut.check_alive().ok();
            sut.stop();
            anyhow::Ok((names, runs, failure))
        }
        .await;
        if let Err(e) = &measured {
            eprintln!("{} B3 not measured: {e:#}", kind.label());
        }
        results.push((kind, measured.map_err(|e| format!("{e:#}"))));
    }
    let text = render_b3(args, &results);
    super::publish_section(args, "b3", &text)
}

fn render_b3(args: &MqttArgs, results: &[B3Result]) -> String {
    let mut out =
        String::from("## B3: MQTT QoS 1 durable events, Ferry vs Mosquitto vs ActiveMQ\n\n");
    out.push_str(&format!(
        "{} publishers send 32-byte QoS 1 messages closed loop, {} unacknowledged each (a new PUBLISH \
         per PUBACK); the figure is PUBACKs per second in the window, and a run counts only when every \
         PUBACKed message reached the consumer. **Ferry**: topic `e` (events) → the router appends to its \
         segment log and accepts only after `fdatasync`; the adapter PUBACKs after that `accepted`; one \
         AMQP receiver on `event/{}` accepts each event. **Mosquitto**: `persistence true`, subscriber \
         with QoS 1 (PUBACK per message); Mosquitto's persistence is a periodic snapshot of its in-memory \
         state (`autosave_interval`, default 1800 s, and at shutdown), not a write per message: its \
         PUBACK does not mean the message is on disk. **ActiveMQ Classic**: MQTT transport, KahaDB \
         persistence (journal synced to disk on write, the default), QoS 1 subscriber. {} runs of {} s \
         warm-up + {} s measured; the row is the median run.\n\n",
        args.publishers,
        args.window,
        super::ferry::TENANT,
        args.runs,
        args.warmup,
        args.duration
    ));
    out.push_str(&super::preamble(args));
    out.push('\n');
    let mut rows = Vec::new();
    let mut medians: Vec<(Kind, f64, bool)> = Vec::new();
    for (kind, r) in results {
        match r {
            Ok((names, runs, failure)) => {
                let rates: Vec<f64> = runs.iter().map(ClosedRun::rate).collect();
                let Some(i) = stats::median_index(&rates) else {
                    rows.push(vec![
                        kind.label().to_owned(),
                        format!(
                            "not measured: {}",
                            failure.as_deref().unwrap_or("no run").replace('|', "/")
                        ),
                        "–".into(),
                        "–".into(),
                        "–".into(),
                        "–".into(),
                        "–".into(),
                        "–".into(),
                        "–".into(),
                        "–".into(),
                    ]);
                    continue;
                };
                let m = &runs[i];
                let lost: u64 = runs.iter().map(|r| r.lost).sum();
                medians.push((*kind, m.rate(), lost == 0 && failure.is_none()));
                let failed_note = failure.as_deref().map_or(String::new(), |f| {
                    format!(
                        " ({} of {} runs; then {})",
                        runs.len(),
                        args.runs,
                        f.replace('|', "/")
                    )
                });
                rows.push(vec![
                    kind.label().to_owned(),
                    format!("**{}**{failed_note}", thousands(m.rate())),
                    thousands(m.received_rate()),
                    format!("{:.1}", m.us_per_message()),
                    m.split(names),
                    format!("{:.2}", quantile_ms(&m.latencies_us, 0.5)),
                    format!("{:.2}", quantile_ms(&m.latencies_us, 0.99)),
                    lost.to_string(),
                    m.cpu.cores_text(),
                    rates
                        .iter()
                        .map(|r| thousands(*r))
                        .collect::<Vec<_>>()
                        .join(" / "),
                ]);
            }
            Err(e) => rows.push(vec![
                kind.label().to_owned(),
                "not measured".to_owned(),
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
                e.replace('|', "/").replace('\n', " "),
            ]),
        }
    }
    out.push_str(&report::markdown_table(
        &[
            "system",
            "PUBACKed msg/s (median)",
            "received by the consumer in the window, msg/s",
            "CPU µs/msg (system)",
            "CPU µs/msg per process",
            "p50 ms to consumer",
            "p99 ms to consumer",
            "lost (all runs)",
            "core % system / generator / others",
            "all runs, msg/s",
        ],
        &rows,
    ));
    let ferry = medians.iter().find(|(k, _, _)| *k == Kind::Ferry);
    let best_peer = medians
        .iter()
        .filter(|(k, _, _)| *k != Kind::Ferry)
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let (Some(f), Some(p)) = (ferry, best_peer) {
        out.push('\n');
        out.push_str(&summary_marker(
            "B3",
            format!("{} {} msg/s", p.0.label(), thousands(p.1)),
            format!("{} msg/s", thousands(f.1)),
            ratio(f.1, p.1),
            Some(f.2 && f.1 >= p.1),
            "PUBACK after store; Mosquitto's persistence is a periodic snapshot, not a sync per message".to_owned(),
            &crate::machine::now(),
        ));
        out.push_str(&report::markdown_table(
            &["goal", "best peer", "Ferry", "ratio", "goal", "result"],
            &[vec![
                "B3 PUBACKed msg/s".to_owned(),
                format!("{} ({})", thousands(p.1), p.0.label()),
                thousands(f.1),
                ratio(f.1, p.1),
                "≥ 1.0× the best peer".to_owned(),
                met(f.2 && f.1 >= p.1).to_owned(),
            ]],
        ));
    }
    out.push_str(&reproduce(args, "b3"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(target: f64, sent: u64, received: u64, window_sent: u64) -> OpenRun {
        OpenRun {
            target,
            sent,
            received,
            window_sent,
            window_delivered: received.min(window_sent),
            cpu: CpuUse {
                window: Duration::from_secs(1),
                sut: vec![Duration::from_millis(300), Duration::from_millis(200)],
                generator: Duration::from_millis(100),
                others: Duration::ZERO,
            },
            latencies_us: vec![],
        }
    }

    #[test]
    fn a_run_passes_only_without_loss_and_at_the_target() {
        assert!(run(1000.0, 3000, 3000, 1000).passed());
        assert!(!run(1000.0, 3000, 2999, 1000).passed(), "one lost");
        assert!(!run(1000.0, 3000, 3000, 900).passed(), "fell behind");
        let mut queued = run(1000.0, 3000, 3000, 1000);
        queued.window_delivered = 500;
        assert!(!queued.passed(), "delivered only after the window");
        let r = run(1000.0, 3000, 3000, 1000);
        assert!((r.us_per_message() - 500.0).abs() < 1e-9);
        assert!((r.us_per_message_of(1) - 200.0).abs() < 1e-9);
    }

    #[test]
    fn the_loss_free_rate_needs_every_run_to_pass() {
        let mut s = SystemB1 {
            kind: Kind::Ferry,
            processes: vec!["a".into(), "b".into()],
            probes: vec![],
            runs: vec![run(1000.0, 3000, 3000, 1000), run(1000.0, 3000, 3000, 990)],
            notes: vec![],
        };
        assert_eq!(s.loss_free_rate(), Some(990.0), "the lower middle run");
        s.runs.push(run(1000.0, 3000, 2999, 1000));
        assert_eq!(s.loss_free_rate(), None);
    }
}
