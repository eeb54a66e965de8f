//! B3: QoS 1 durable events in a closed loop, Ferry vs Mosquitto (persistence) vs ActiveMQ; section
//! `b3`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{met, reproduce, spec, summary_marker};
use crate::mqtt::stats::{self, quantile_ms, ratio, thousands};
use crate::mqtt::traffic::{Plan, Traffic};
use crate::mqtt::{CpuSample, CpuUse, Flow, Kind, MqttArgs, Sut};
use crate::report;

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

/// The run a system's row shows: the median of its loss-free runs, or of all runs when none was
/// loss-free (the row then does not count).
fn row_run(runs: &[ClosedRun]) -> Option<usize> {
    let clean: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].lost == 0).collect();
    let pick = |idx: &[usize]| {
        let rates: Vec<f64> = idx.iter().map(|&i| runs[i].rate()).collect();
        stats::median_index(&rates).map(|j| idx[j])
    };
    if clean.is_empty() {
        pick(&(0..runs.len()).collect::<Vec<_>>())
    } else {
        pick(&clean)
    }
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
    crate::mqtt::publish_section(args, "b3", &text)
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
         warm-up + {} s measured; the row is the median of the loss-free runs (a run that lost a PUBACKed \
         message does not count; Ferry meets the goal only when none did).\n\n",
        args.publishers,
        args.window,
        crate::mqtt::ferry::TENANT,
        args.runs,
        args.warmup,
        args.duration
    ));
    out.push_str(&crate::mqtt::preamble(args));
    out.push('\n');
    let mut rows = Vec::new();
    let mut medians: Vec<(Kind, f64, bool)> = Vec::new();
    for (kind, r) in results {
        match r {
            Ok((names, runs, failure)) => {
                let rates: Vec<f64> = runs.iter().map(ClosedRun::rate).collect();
                let Some(i) = row_run(runs) else {
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
                let lossy = runs.iter().filter(|r| r.lost > 0).count();
                // Ferry meets the goal only when every run was loss-free; a peer's rate is the median
                // of its loss-free runs (a rate counts only with zero loss), and a peer without one is
                // no yardstick.
                let counts = failure.is_none()
                    && if *kind == Kind::Ferry {
                        lossy == 0
                    } else {
                        m.lost == 0
                    };
                medians.push((*kind, m.rate(), counts));
                let lossy_note = if lossy > 0 && *kind != Kind::Ferry {
                    if m.lost == 0 {
                        format!(
                            " ({lossy} of {} runs lost messages and do not count)",
                            runs.len()
                        )
                    } else {
                        " (no run was loss-free: not a yardstick)".to_owned()
                    }
                } else {
                    String::new()
                };
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
                    format!("**{}**{lossy_note}{failed_note}", thousands(m.rate())),
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
        .filter(|(k, _, counts)| *k != Kind::Ferry && *counts)
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

    fn run(acked: u64, lost: u64) -> ClosedRun {
        ClosedRun {
            window_acked: acked,
            window_received: acked - lost.min(acked),
            lost,
            cpu: CpuUse {
                window: Duration::from_secs(1),
                ..CpuUse::default()
            },
            latencies_us: Vec::new(),
        }
    }

    #[test]
    fn a_row_shows_the_median_of_its_loss_free_runs() {
        // Mosquitto's pattern: one run races ahead while its subscriber falls behind and messages
        // are dropped; that run's rate does not count.
        let runs = [run(117_000, 0), run(187_000, 950_000), run(110_000, 0)];
        let i = row_run(&runs).expect("a run");
        assert_eq!(runs[i].lost, 0);
        assert!(runs[i].window_acked < 187_000);
        let all_lossy = [run(10, 1), run(30, 2), run(20, 3)];
        assert_eq!(
            row_run(&all_lossy),
            Some(2),
            "the median of all when none is clean"
        );
        assert_eq!(row_run(&[]), None);
    }
}
