//! B11: B1's QoS 0 load in cluster mode vs embedded mode, in one run with one generator; section `b11`.
//!
//! Both systems run side by side (every process on the server cores; the idle one's few wake-ups show
//! in the "others" column). Each gets B1's rate search; then both are run `--runs` times, interleaved,
//! at the same rate (cluster mode's loss-free rate, stepped down 10 % while a run loses messages), so
//! that CPU per message is compared at equal load: at a lower rate a system batches less, so comparing
//! each at its own maximum would flatter the slower one.

use std::time::Duration;

use anyhow::Context as _;

use super::platform::{self, Cluster, PartKind};
use super::ClusterArgs;
use crate::mqtt::ferry::{self as emb, TENANT};
use crate::mqtt::stats::{median_index, ratio, thousands, RateSearch};
use crate::mqtt::throughput::{measure_open, met, secs, spec, summary_marker, OpenRun};
use crate::mqtt::traffic::{PublisherSpec, ReceiverSpec, Traffic, TrafficSpec};
use crate::mqtt::wire::Login;
use crate::mqtt::{Flow, Kind, Sut};
use crate::report;

/// What one system did.
struct System {
    label: &'static str,
    names: Vec<String>,
    pids: Vec<u32>,
    probes: Vec<(f64, bool)>,
    best: Option<f64>,
    runs: Vec<OpenRun>,
}

impl System {
    fn median(&self) -> Option<&OpenRun> {
        let rates: Vec<f64> = self.runs.iter().map(OpenRun::us_per_message).collect();
        median_index(&rates).map(|i| &self.runs[i])
    }

    fn lost(&self) -> u64 {
        self.runs.iter().map(OpenRun::lost).sum()
    }
}

/// The cluster's traffic: B1's publishers, spread over the MQTT adapters, one consumer at router 1.
fn cluster_spec(c: &Cluster, args: &ClusterArgs) -> TrafficSpec {
    TrafficSpec {
        mqtt: c.mqtt[0],
        publishers: (0..args.publishers)
            .map(|i| PublisherSpec {
                login: Login {
                    client_id: format!("pub-{i}"),
                    username: format!("a{i}@{TENANT}"),
                    password: emb::password(i),
                    keep_alive_secs: 60,
                    clean_session: true,
                },
                topic: "t".to_owned(),
                addr: Some(c.mqtt[i % c.mqtt.len()]),
                qos: None,
                rate: None,
            })
            .collect(),
        qos: 0,
        receiver: ReceiverSpec::Amqp {
            addr: c.amqp[0],
            user: emb::APP_USER.into(),
            password: emb::APP_PASSWORD.into(),
            address: format!("telemetry/{TENANT}"),
            credit: args.credit,
        },
        tick: Duration::from_millis(args.tick_ms.max(1)),
        track: false,
    }
}

async fn search(
    label: &str,
    traffic: &mut Traffic,
    pids: &[u32],
    args: &ClusterArgs,
) -> anyhow::Result<(Vec<(f64, bool)>, Option<f64>)> {
    let mut s = RateSearch::new(args.start_rate, args.step, 2_000_000.0, args.max_probes);
    let mut probes = Vec::new();
    while let Some(rate) = s.next() {
        let run = measure_open(
            traffic,
            pids,
            rate,
            secs(args.probe_warmup),
            secs(args.probe_duration),
        )
        .await?;
        eprintln!(
            "B11 {label} probe {:>8} msg/s: delivered {:.0}/s, lost {}, {:.2} µs/msg, core % sut/gen/others {}",
            thousands(rate),
            run.delivered_rate(),
            run.lost(),
            run.us_per_message(),
            run.cpu.cores_text()
        );
        s.record(rate, run.passed());
        probes.push((rate, run.passed()));
    }
    Ok((probes, s.best))
}

/// B11; writes section `b11`.
pub async fn run_b11(args: &ClusterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.publishers > 0 && args.runs > 0, "nothing to measure");
    let load_before = super::load_average();
    let m = args.mqtt_args();
    let (bin_dir, nats) = platform::binaries(args.bin_dir.as_deref())?;
    let mut embedded = Sut::start(Kind::Ferry, &m, args.publishers, false).await?;
    let mut cluster =
        match Cluster::start(&bin_dir, &nats, args.server_cpus(), args.nats_placement).await {
            Ok(c) => c,
            Err(e) => {
                embedded.stop();
                return Err(e);
            }
        };
    let result = measure(args, &m, &mut embedded, &mut cluster).await;
    if let Some(dir) = &args.keep_logs {
        if let Err(e) = cluster.keep_logs(&dir.join("b11")) {
            eprintln!("keeping the logs: {e:#}");
        }
    }
    let logs = cluster.log_tails(8);
    embedded.stop();
    cluster.stop();
    let (emb_sys, cl_sys, kinds, rate, notes) =
        result.with_context(|| format!("B11 failed; the cluster's logs end with:\n{logs}"))?;
    let text = render(
        args,
        &emb_sys,
        &cl_sys,
        &kinds,
        rate,
        &notes,
        &load_before,
        &platform::nats_version(&nats),
    );
    crate::mqtt::publish_section(&m, "b11", &text)?;
    anyhow::ensure!(
        cl_sys.lost() == 0,
        "cluster mode lost {} QoS 0 messages at {} msg/s",
        cl_sys.lost(),
        thousands(rate)
    );
    Ok(())
}

type Measured = (System, System, Vec<PartKind>, f64, Vec<String>);

async fn measure(
    args: &ClusterArgs,
    m: &crate::mqtt::MqttArgs,
    embedded: &mut Sut,
    cluster: &mut Cluster,
) -> anyhow::Result<Measured> {
    cluster.provision(args.publishers).await?;
    let kinds = cluster.kinds();
    let mut cl = System {
        label: "cluster mode",
        names: cluster.processes().into_iter().map(|(n, _)| n).collect(),
        pids: cluster.processes().into_iter().map(|(_, p)| p).collect(),
        probes: vec![],
        best: None,
        runs: vec![],
    };
    let mut em = System {
        label: "embedded mode",
        names: embedded.processes().into_iter().map(|(n, _)| n).collect(),
        pids: embedded.processes().into_iter().map(|(_, p)| p).collect(),
        probes: vec![],
        best: None,
        runs: vec![],
    };
    let mut em_traffic = Traffic::start(&spec(embedded, m, Flow::Telemetry, 0, false)).await?;
    let mut cl_traffic = Traffic::start(&cluster_spec(cluster, args)).await?;
    (em.probes, em.best) = search("embedded", &mut em_traffic, &em.pids, args).await?;
    (cl.probes, cl.best) = search("cluster", &mut cl_traffic, &cl.pids, args).await?;
    cluster.check_alive(&[])?;
    embedded.check_alive()?;
    let mut rate = cl
        .best
        .context("cluster mode: no probed rate was loss-free")?;
    let mut notes = Vec::new();
    for attempt in 0..4 {
        em.runs.clear();
        cl.runs.clear();
        for n in 1..=args.runs {
            for (sys, traffic) in [(&mut em, &mut em_traffic), (&mut cl, &mut cl_traffic)] {
                let run = measure_open(
                    traffic,
                    &sys.pids,
                    rate,
                    Duration::from_secs(args.warmup),
                    Duration::from_secs(args.duration),
                )
                .await?;
                eprintln!(
                    "B11 {} run {n}/{} at {} msg/s: delivered {:.0}/s, lost {}, {:.2} CPU µs/msg, core % sut/gen/others {}",
                    sys.label,
                    args.runs,
                    thousands(rate),
                    run.delivered_rate(),
                    run.lost(),
                    run.us_per_message(),
                    run.cpu.cores_text()
                );
                sys.runs.push(run);
            }
        }
        if cl.runs.iter().chain(&em.runs).all(OpenRun::passed) || attempt == 3 {
            break;
        }
        notes.push(format!(
            "A run at {} msg/s lost messages or fell behind; stepped down 10 %.",
            thousands(rate)
        ));
        rate *= 0.9;
    }
    em_traffic.shutdown().await;
    cl_traffic.shutdown().await;
    Ok((em, cl, kinds, rate, notes))
}

fn probes_text(probes: &[(f64, bool)]) -> String {
    probes
        .iter()
        .map(|(r, ok)| format!("{}{}", thousands(*r), if *ok { "✓" } else { "✗" }))
        .collect::<Vec<_>>()
        .join(" ")
}

/// µs per delivered message of the processes of each kind, in [`PartKind`] order of first appearance.
fn per_kind(run: &OpenRun, kinds: &[PartKind]) -> Vec<(PartKind, f64, f64)> {
    let mut out: Vec<(PartKind, f64, f64)> = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        let us = run.us_per_message_of(i);
        let core = run.cpu.sut.get(i).map_or(0.0, |d| run.cpu.cores(*d));
        match out.iter_mut().find(|(kk, _, _)| kk == k) {
            Some(e) => {
                e.1 += us;
                e.2 += core;
            }
            None => out.push((*k, us, core)),
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn render(
    args: &ClusterArgs,
    em: &System,
    cl: &System,
    kinds: &[PartKind],
    rate: f64,
    notes: &[String],
    load_before: &str,
    nats_version: &str,
) -> String {
    let m = args.mqtt_args();
    let mut out = String::from("## B11: cluster mode's CPU per message vs embedded mode\n\n");
    out.push_str(&format!(
        "B1's load — {} MQTT publishers, QoS 0, 32-byte payloads, open loop (each writes what is due every \
         {} ms), one generator process — through **cluster mode**: 3 `nats-server` nodes (JetStream \
         cluster on loopback, R3), registry, 2 routers, 2 MQTT adapters (publishers spread evenly) and the \
         HTTP adapter, all `messaging: nats` and wired as `ferry up --cluster` wires them \
         (`bench/src/cluster/platform.rs`), with one AMQP 1.0 consumer (credit {}) on `telemetry/{TENANT}` \
         at router 1; and through **embedded mode**: registry, router and one MQTT adapter (adapter → router \
         over AMQP), the B1 set-up. Both run at the same time, every process of both pinned to the server \
         CPUs. Each system gets B1's rate search (probes of {} s + {} s, from {} msg/s up ×{}); then both \
         run {} times interleaved ({} s warm-up, {} s measured) at **the same rate**, cluster mode's \
         loss-free one, so that CPU per message is compared at equal load. CPU: utime + stime from `/proc` \
         over the window of every process of the system (cluster: all 3 NATS nodes, both routers, all \
         three adapters and the registry), per message delivered in the window; the row is the run with \
         the median CPU per message. A rate counts only with zero loss (every message sent in warm-up, \
         window and drain was received).\n\n",
        args.publishers,
        args.tick_ms,
        args.credit,
        args.probe_warmup,
        args.probe_duration,
        thousands(args.start_rate),
        args.step,
        args.runs,
        args.warmup,
        args.duration,
    ));
    out.push_str(&crate::mqtt::preamble(&m));
    out.push_str(match args.nats_placement {
        platform::Placement::Spread => {
            "- NATS placement `spread`: each process is given one node — router-1 and the registry \
             nats-0, router-2 and mqtt-1 nats-1, mqtt-2 and the HTTP adapter nats-2 — so every message \
             crosses a route between two nodes (adapter's node → router-1's node).\n"
        }
        platform::Placement::Any => {
            "- NATS placement `any`: every process is given all three nodes and its client picks one \
             at random (as `ferry up --cluster`); whether a message crosses a route is chance.\n"
        }
    });
    out.push_str(&format!(
        "- Load average (1/5/15 min) at the start: {load_before}; at the end: {}\n- {nats_version}\n\n",
        super::load_average()
    ));
    let headers = [
        "system",
        "loss-free msg/s (search)",
        &format!("delivered msg/s at {} msg/s (median)", thousands(rate)),
        "CPU µs/msg (all processes)",
        "lost (all runs)",
        "core % system / generator / others",
        "CPU µs/msg of each run",
        "search (✓ loss-free)",
    ];
    let mut rows = Vec::new();
    for s in [em, cl] {
        let Some(med) = s.median() else { continue };
        rows.push(vec![
            s.label.to_owned(),
            s.best.map_or("none".to_owned(), thousands),
            thousands(med.delivered_rate()),
            format!("**{:.2}**", med.us_per_message()),
            s.lost().to_string(),
            med.cpu.cores_text(),
            s.runs
                .iter()
                .map(|r| format!("{:.2}", r.us_per_message()))
                .collect::<Vec<_>>()
                .join(" / "),
            probes_text(&s.probes),
        ]);
    }
    out.push_str(&report::markdown_table(&headers, &rows));
    let (ec, cc) = (
        em.median().map_or(0.0, OpenRun::us_per_message),
        cl.median().map_or(0.0, OpenRun::us_per_message),
    );
    let ok_cpu = ec > 0.0 && cc > 0.0 && cc <= 1.5 * ec;
    let ok_loss = cl.lost() == 0 && !cl.runs.is_empty();
    out.push('\n');
    out.push_str(&report::markdown_table(
        &[
            "goal",
            "embedded",
            "cluster",
            "ratio cluster / embedded",
            "goal",
            "result",
        ],
        &[
            vec![
                "CPU µs per delivered message, all processes".to_owned(),
                format!("{ec:.2}"),
                format!("{cc:.2}"),
                ratio(cc, ec),
                "≤ 1.5×".to_owned(),
                met(ok_cpu).to_owned(),
            ],
            vec![
                format!("lost at {} msg/s", thousands(rate)),
                em.lost().to_string(),
                cl.lost().to_string(),
                "–".to_owned(),
                "0".to_owned(),
                met(ok_loss).to_owned(),
            ],
        ],
    ));
    let mut where_note = String::new();
    if let Some(med) = cl.median() {
        out.push_str("\n**Where cluster mode's CPU goes** (the median run; µs per delivered message and share of one core):\n\n");
        let kinds_rows: Vec<Vec<String>> = per_kind(med, kinds)
            .iter()
            .map(|(k, us, core)| {
                vec![
                    k.label().to_owned(),
                    format!("{us:.2}"),
                    format!("{:.0} %", core * 100.0),
                ]
            })
            .collect();
        out.push_str(&report::markdown_table(
            &["process kind", "CPU µs/msg", "core %"],
            &kinds_rows,
        ));
        let each: Vec<String> = cl
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n} {:.2}", med.us_per_message_of(i)))
            .collect();
        out.push_str(&format!("\nPer process (µs/msg): {}.\n", each.join(", ")));
        where_note = per_kind(med, kinds)
            .iter()
            .map(|(k, us, _)| format!("{} {us:.1}", k.label()))
            .collect::<Vec<_>>()
            .join(", ");
    }
    if let Some(med) = em.median() {
        let each: Vec<String> = em
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n} {:.2}", med.us_per_message_of(i)))
            .collect();
        out.push_str(&format!(
            "Embedded mode per process (µs/msg): {}.\n",
            each.join(", ")
        ));
    }
    out.push('\n');
    out.push_str(&summary_marker(
        "B11",
        format!("embedded {ec:.2} µs/msg"),
        format!(
            "{cc:.2} µs/msg at {} msg/s, lost {}",
            thousands(rate),
            cl.lost()
        ),
        ratio(cc, ec),
        (ec > 0.0 && cc > 0.0).then_some(ok_cpu && ok_loss),
        format!(
            "same rate, same generator; cluster µs/msg by kind: {where_note}; loss-free max: cluster {}, embedded {}",
            cl.best.map_or("none".to_owned(), thousands),
            em.best.map_or("none".to_owned(), thousands)
        ),
        &crate::machine::now(),
    ));
    for n in notes {
        out.push_str(&format!("- {n}\n"));
    }
    out.push_str(&super::reproduce(&format!(
        "--scenarios b11 --nats-placement {} --publishers {} --warmup {} --duration {} --runs {} {}",
        match args.nats_placement {
            platform::Placement::Spread => "spread",
            platform::Placement::Any => "any",
        },
        args.publishers,
        args.warmup,
        args.duration,
        args.runs,
        args.pin_options()
    )));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::CpuUse;

    #[test]
    fn cpu_is_summed_per_process_kind() {
        let run = OpenRun {
            target: 1000.0,
            sent: 1000,
            received: 1000,
            window_sent: 1000,
            window_delivered: 1000,
            cpu: CpuUse {
                window: Duration::from_secs(1),
                sut: vec![
                    Duration::from_millis(10),
                    Duration::from_millis(20),
                    Duration::from_millis(5),
                    Duration::from_millis(100),
                ],
                generator: Duration::ZERO,
                others: Duration::ZERO,
            },
            latencies_us: vec![],
        };
        let kinds = [
            PartKind::Nats,
            PartKind::Nats,
            PartKind::Registry,
            PartKind::Router,
        ];
        let k = per_kind(&run, &kinds);
        assert_eq!(k.len(), 3);
        assert_eq!(k[0].0, PartKind::Nats);
        assert!(
            (k[0].1 - 30.0).abs() < 1e-9,
            "10 + 20 ms over 1000 messages"
        );
        assert!((k[0].2 - 0.03).abs() < 1e-9);
        assert!((k[2].1 - 100.0).abs() < 1e-9);
    }
}
