//! B1 + B2: the highest loss-free QoS 0 telemetry rate of each system and its CPU per message,
//! found by a search of short probes and confirmed by runs; section `b1`.

use std::time::Duration;

use anyhow::bail;

use super::{measure_open, met, reproduce, secs, spec, summary_marker, OpenRun, MIN_SENT_SHARE};
use crate::mqtt::stats::{self, ratio, thousands, RateSearch};
use crate::mqtt::traffic::Traffic;
use crate::mqtt::{Flow, Kind, MqttArgs, Sut};
use crate::report;

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
    let (search, probes) = search_loss_free(sut, &mut traffic, &pids, args, "B1").await?;
    let mut notes = Vec::new();
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

/// B1's search for the highest loss-free QoS 0 rate on running `traffic` (B1's publishers, open loop):
/// geometric steps from `--start-rate`, then bisection, each probe `--probe-warmup` +
/// `--probe-duration`. `label` names the scenario in the progress lines.
pub async fn search_loss_free(
    sut: &mut Sut,
    traffic: &mut Traffic,
    pids: &[u32],
    args: &MqttArgs,
    label: &str,
) -> anyhow::Result<(RateSearch, Vec<Probe>)> {
    let kind = sut.kind();
    let mut search = RateSearch::new(args.start_rate, args.step, args.max_rate, args.max_probes);
    let mut probes = Vec::new();
    while let Some(rate) = search.next() {
        let run = measure_open(
            traffic,
            pids,
            rate,
            secs(args.probe_warmup),
            secs(args.probe_duration),
        )
        .await;
        sut.check_alive()?;
        let run = run?;
        eprintln!(
            "{} {label} probe {:>9} msg/s: delivered {:>9.0}/s, sent {:>9.0}/s, lost {}, core % sut/gen/others {}",
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
    Ok((search, probes))
}

/// B1 + B2 for Mosquitto and Ferry; writes section `b1-b2`; returns Mosquitto's loss-free rate.
pub async fn run_b1(args: &MqttArgs) -> anyhow::Result<Option<f64>> {
    Ok(run_b1_rates(args).await?.mosquitto)
}

/// Each system's loss-free rate as B1 found it (`None`: not loss-free at any rate tried).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossFree {
    pub mosquitto: Option<f64>,
    pub ferry: Option<f64>,
}

/// B1 + B2 as [`run_b1`], returning both systems' loss-free rates (B13 starts from them).
pub async fn run_b1_rates(args: &MqttArgs) -> anyhow::Result<LossFree> {
    anyhow::ensure!(args.publishers > 0 && args.runs > 0, "nothing to measure");
    let mosquitto = b1_system(Kind::Mosquitto, args).await?;
    let ferry = b1_system(Kind::Ferry, args).await?;
    let text = render_b1(args, &mosquitto, &ferry);
    crate::mqtt::publish_section(args, "b1-b2", &text)?;
    Ok(LossFree {
        mosquitto: mosquitto.loss_free_rate(),
        ferry: ferry.loss_free_rate(),
    })
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

fn render_b1(args: &MqttArgs, mosquitto: &SystemB1, ferry: &SystemB1) -> String {
    let mut out = String::from("## B1 + B2: MQTT QoS 0 telemetry, Ferry vs Mosquitto\n\n");
    out.push_str(&format!(
        "{} publishers (MQTT 3.1.1, one connection each, authenticated with a password) send 32-byte \
         QoS 0 messages open loop at a target rate (each publisher writes what is due every {} ms, the \
         publishers staggered); **Ferry**: `ferry-mqtt-adapter` → `ferry-router` → one AMQP 1.0 receiver \
         (a raw client on the codec, credit {}) on `telemetry/{}`, the registry running beside them; **Mosquitto**: one \
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
        crate::mqtt::ferry::TENANT,
        crate::mqtt::ferry::TENANT,
        MIN_SENT_SHARE * 100.0,
        args.probe_warmup,
        args.probe_duration,
        thousands(args.start_rate),
        args.step,
        args.runs,
        args.warmup,
        args.duration,
    ));
    out.push_str(&crate::mqtt::preamble(args));
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
            "≤ 1.5×".to_owned(),
            met(mc > 0.0 && fc > 0.0 && fc <= 1.5 * mc).to_owned(),
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
        (mc > 0.0 && fc > 0.0).then_some(fc <= 1.5 * mc),
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
