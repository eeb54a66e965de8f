//! B5: latency at a fixed QoS 0 rate, the same for every system; section `b5`.

use std::time::Duration;

use anyhow::Context as _;

use super::b1::b1_system;
use super::{measure_open, met, reproduce, spec, summary_marker, OpenRun, MIN_SENT_SHARE};
use crate::mqtt::stats::{self, quantile_ms, thousands};
use crate::mqtt::traffic::Traffic;
use crate::mqtt::{Flow, Kind, MqttArgs, Sut};
use crate::report;

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
    crate::mqtt::publish_section(args, "b5", &text)
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
    out.push_str(&crate::mqtt::preamble(args));
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
