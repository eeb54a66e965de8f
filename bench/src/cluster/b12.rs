//! B12: failover in cluster mode under QoS 1 load; section `b12`.
//!
//! The cluster of `platform` with B12's generator (`failover`): half of the devices publish QoS 1
//! telemetry, half QoS 1 events, open loop at half of the capacity measured first (closed loop, the
//! PUBACK rate); consumers on both routers. After a warm-up: kill -9 router 1; `--b12-gap` s later one NATS
//! node (by default the leader of the tenant's event stream); `--b12-gap` s later MQTT adapter 1;
//! `--b12-gap` s later the load stops and the harness waits (up to `--b12-drain` s) for every accepted
//! message. The figures come from `timeline`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::failover::{flow_of, Failover, FailoverSpec};
use super::platform::{self, Cluster, NATS_NODES};
use super::timeline::{self, ConnEvent, Delivery, ResumeRule};
use super::{ClusterArgs, NatsVictim};
use crate::mqtt::stats::thousands;
use crate::mqtt::throughput::{met, summary_marker};
use crate::mqtt::traffic::Plan;
use crate::mqtt::{ferry::TENANT, wire, Flow};
use crate::report;

/// One injected failure.
#[derive(Debug, Clone)]
pub struct Kill {
    pub what: String,
    pub at_ns: u64,
    pub note: String,
}

/// Everything the run collected.
struct Collected {
    acked_rate: f64,
    capacity: f64,
    rate: f64,
    kills: Vec<Kill>,
    end_ns: u64,
    load_start_ns: u64,
    deliveries: Vec<Delivery>,
    logs: Vec<Vec<ConnEvent>>,
    sent: Vec<u64>,
    acked: Vec<u64>,
    lost: Vec<(usize, u64)>,
    duplicates: u64,
    consumer_log: Vec<(u64, String, usize, String)>,
    unexpected_exits: Vec<String>,
    drained_in: Duration,
}

/// B12; writes section `b12`.
pub async fn run_b12(args: &ClusterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.publishers >= 4, "B12 needs at least 4 devices");
    let load_before = super::load_average();
    let (bin_dir, nats) = platform::binaries(args.bin_dir.as_deref())?;
    let mut cluster = Cluster::start(
        &bin_dir,
        &nats,
        args.server_cpus(),
        platform::Placement::Any,
    )
    .await?;
    let result = run_on(args, &mut cluster).await;
    if let Some(dir) = &args.keep_logs {
        if let Err(e) = cluster.keep_logs(&dir.join("b12")) {
            eprintln!("keeping the logs: {e:#}");
        }
        if let Ok(c) = &result {
            let text = timeline::csv(
                &c.deliveries,
                |p| usize::from(flow_of(p as usize) == Flow::Events),
                &c.logs,
                c.load_start_ns,
                c.end_ns,
                Duration::from_millis(100),
            );
            let kills: String = c
                .kills
                .iter()
                .map(|k| {
                    format!(
                        "{} at {:.1} s\n",
                        k.what,
                        (k.at_ns - c.load_start_ns) as f64 / 1e9
                    )
                })
                .collect();
            let _ = std::fs::write(dir.join("b12").join("timeline.csv"), text);
            let _ = std::fs::write(dir.join("b12").join("kills.txt"), kills);
        }
    }
    let logs = cluster.log_tails(12);
    cluster.stop();
    let c = result.with_context(|| format!("B12 failed; the cluster's logs end with:\n{logs}"))?;
    let text = render(args, &c, &load_before, &platform::nats_version(&nats));
    crate::mqtt::publish_section(&args.mqtt_args(), "b12", &text)?;
    anyhow::ensure!(
        c.lost.is_empty(),
        "{} accepted messages were never delivered",
        c.lost.len()
    );
    Ok(())
}

async fn run_on(args: &ClusterArgs, cluster: &mut Cluster) -> anyhow::Result<Collected> {
    cluster.provision(args.publishers).await?;
    let spec = FailoverSpec {
        adapters: cluster.mqtt.clone(),
        routers: cluster.amqp.clone(),
        publishers: args.publishers,
        tick: Duration::from_millis(args.tick_ms.max(1)),
        credit: args.credit,
    };
    let gen = Failover::start(&spec).await?;
    // Capacity: closed loop, PUBACKs per second.
    gen.set(Plan::Closed {
        window: args.b12_window.max(1),
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a0, r0, t0) = (gen.acked(), gen.received(), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.b12_capacity_secs.max(1))).await;
    let secs = t0.elapsed().as_secs_f64();
    let acked_rate = (gen.acked() - a0) as f64 / secs;
    // Events are PUBACKed once stored, before they are delivered: the capacity is what reached the
    // consumers, or the stream's backlog would grow at half of a PUBACK rate.
    let capacity = (gen.received() - r0) as f64 / secs;
    gen.set(Plan::Idle);
    eprintln!(
        "B12: closed loop: {acked_rate:.0} PUBACKs/s, {capacity:.0} deliveries/s (the capacity)"
    );
    // The backlog of the closed loop delivered before the open loop starts.
    let settle = Instant::now();
    let mut last = (gen.received(), Instant::now());
    while settle.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let received = gen.received();
        if received != last.0 {
            last = (received, Instant::now());
        } else if lost_now(&gen).is_empty() && last.1.elapsed() >= Duration::from_secs(1) {
            break;
        }
    }
    cluster.check_alive(&[])?;
    let rate = args.b12_rate.unwrap_or(capacity * 0.5);
    anyhow::ensure!(rate >= 1.0, "no capacity measured ({capacity:.0}/s)");

    let stream = ferry_nats::streams::event_stream_name(TENANT);
    let leader = cluster.stream_leader(&stream).await;
    let nats_victim = match (args.kill_nats, leader) {
        (NatsVictim::Leader, Some(l)) => l,
        (NatsVictim::Follower, Some(l)) => (l + 1) % NATS_NODES,
        (_, None) => 0,
    };
    let nats_note = match leader {
        Some(l) if l == nats_victim => format!("the leader of stream {stream}"),
        Some(l) => format!("not the leader of stream {stream} (nats-{l} was)"),
        None => format!("the leader of stream {stream} was not known"),
    };
    let load_start_ns = wire::now_ns();
    gen.set(Plan::Open {
        per_publisher: rate / args.publishers as f64,
        start: Instant::now(),
    });
    eprintln!("B12: open loop at {rate:.0} msg/s");
    tokio::time::sleep(Duration::from_secs(args.b12_warmup)).await;
    let victims = [
        ("router-1".to_owned(), "router 1 of 2".to_owned()),
        (
            format!("nats-{nats_victim}"),
            format!("NATS node {} of 3, {nats_note}", nats_victim),
        ),
        ("mqtt-1".to_owned(), "MQTT adapter 1 of 2".to_owned()),
    ];
    let mut kills = Vec::new();
    let mut killed: Vec<String> = Vec::new();
    let mut unexpected_exits = Vec::new();
    for (name, note) in victims {
        let at_ns = wire::now_ns();
        cluster.part_mut(&name)?.server.kill();
        eprintln!("B12: killed {name} ({note})");
        killed.push(name.clone());
        kills.push(Kill {
            what: name,
            at_ns,
            note,
        });
        let until = Instant::now() + Duration::from_secs(args.b12_gap);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for p in &mut cluster.parts {
                if !killed.contains(&p.server.name) && p.server.exited() {
                    unexpected_exits.push(format!(
                        "{} exited by itself {:.1} s after the kill of {}",
                        p.server.name,
                        (wire::now_ns() - at_ns) as f64 / 1e9,
                        killed.last().map_or("", String::as_str)
                    ));
                    killed.push(p.server.name.clone());
                }
            }
            eprintln!(
                "B12: sent {} acked {} received {}",
                gen.sent(),
                gen.acked(),
                gen.received()
            );
        }
    }
    let end_ns = wire::now_ns();
    gen.set(Plan::Idle);
    let drain_start = Instant::now();
    loop {
        let missing = lost_now(&gen).len();
        if missing == 0 || drain_start.elapsed() >= Duration::from_secs(args.b12_drain) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained_in = drain_start.elapsed();
    let lost = lost_now(&gen);
    let mut deliveries = gen
        .consumed
        .deliveries
        .lock()
        .map(|d| d.clone())
        .unwrap_or_default();
    deliveries.sort_by_key(|d| d.recv_ns);
    let duplicates = gen.consumed.seen.lock().map_or(0, |s| s.duplicates);
    let consumer_log = gen
        .consumed
        .log
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let logs: Vec<Vec<ConnEvent>> = gen
        .devices
        .iter()
        .map(|d| d.log.lock().map(|l| l.clone()).unwrap_or_default())
        .collect();
    let sent = gen
        .devices
        .iter()
        .map(|d| d.sent.load(Ordering::Relaxed))
        .collect();
    let acked = gen
        .devices
        .iter()
        .map(|d| d.acked.load(Ordering::Relaxed))
        .collect();
    gen.shutdown().await;
    Ok(Collected {
        acked_rate,
        capacity,
        rate,
        kills,
        end_ns,
        load_start_ns,
        deliveries,
        logs,
        sent,
        acked,
        lost,
        duplicates,
        consumer_log,
        unexpected_exits,
        drained_in,
    })
}

/// (device, seq) of every PUBACKed message not received yet.
fn lost_now(gen: &Failover) -> Vec<(usize, u64)> {
    let Ok(seen) = gen.consumed.seen.lock() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, d) in gen.devices.iter().enumerate() {
        let Ok(acked) = d.acked_seqs.lock() else {
            continue;
        };
        let sent = d.sent.load(Ordering::Relaxed);
        for seq in timeline::lost(sent, |s| acked.contains(0, s), |s| seen.contains(i, s)) {
            out.push((i, seq));
        }
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Per kill and flow: the resume figures, as table rows; and whether every resume was ≤ 2 s.
fn resume_rows(c: &Collected, rule: &ResumeRule) -> (Vec<Vec<String>>, bool) {
    let mut rows = Vec::new();
    let mut all_ok = true;
    for (k, kill) in c.kills.iter().enumerate() {
        let next = c.kills.get(k + 1).map_or(c.end_ns, |n| n.at_ns);
        let from = if k == 0 {
            c.load_start_ns
        } else {
            c.kills[k - 1].at_ns
        };
        for flow in [Flow::Telemetry, Flow::Events] {
            let mine: Vec<Delivery> = c
                .deliveries
                .iter()
                .filter(|d| flow_of(d.publisher as usize) == flow)
                .copied()
                .collect();
            let recv: Vec<u64> = mine.iter().map(|d| d.recv_ns).collect();
            let (before, after) = timeline::bins_around(&recv, kill.at_ns, next, rule);
            let r = timeline::resume(&before, &after, rule);
            all_ok &= r.resumed_after.is_some_and(|d| d <= Duration::from_secs(2));
            let held = timeline::held_up_until(&mine, from, kill.at_ns);
            let worst_after = mine
                .iter()
                .filter(|d| d.sent_ns >= kill.at_ns && d.sent_ns < next)
                .map(|d| d.recv_ns - d.sent_ns)
                .max()
                .map(Duration::from_nanos);
            rows.push(vec![
                kill.what.clone(),
                match flow {
                    Flow::Telemetry => "telemetry".to_owned(),
                    Flow::Events => "events".to_owned(),
                },
                thousands(r.baseline_per_s),
                thousands(r.min_per_s),
                r.resumed_after
                    .map_or("**not within the phase**".to_owned(), |d| {
                        format!("**{}**", secs(d))
                    }),
                held.map_or("–".to_owned(), secs),
                worst_after.map_or("–".to_owned(), |d| {
                    format!("{:.0} ms", d.as_secs_f64() * 1e3)
                }),
            ]);
        }
    }
    (rows, all_ok)
}

/// Per kill: who reconnected; and whether only the killed adapter's devices did.
fn reconnect_rows(c: &Collected) -> (Vec<Vec<String>>, bool) {
    let mut rows = Vec::new();
    let mut only_killed = true;
    let mut windows = vec![("before the first kill".to_owned(), c.load_start_ns, None)];
    for (k, kill) in c.kills.iter().enumerate() {
        windows.push((kill.what.clone(), kill.at_ns, Some(k)));
    }
    for (w, (label, from, kill)) in windows.iter().enumerate() {
        let to = windows.get(w + 1).map_or(u64::MAX, |n| n.1);
        let by_adapter = timeline::disconnected_in(&c.logs, *from, to);
        let count: usize = by_adapter.values().map(Vec::len).sum();
        let killed_adapter = kill
            .and_then(|k| c.kills[k].what.strip_prefix("mqtt-"))
            .and_then(|n| n.parse::<usize>().ok())
            .map(|n| n - 1);
        only_killed &= by_adapter.keys().all(|a| Some(*a) == killed_adapter);
        let devices: Vec<usize> = by_adapter.values().flatten().copied().collect();
        let back = timeline::devices_back(&c.logs, &c.deliveries, &devices, *from);
        let reconnected = back.iter().filter_map(|b| b.1).max();
        let delivered = back.iter().filter_map(|b| b.2).max();
        let never = back.iter().filter(|b| b.2.is_none()).count();
        let reasons: Vec<String> = {
            let mut r: Vec<String> = c
                .logs
                .iter()
                .flat_map(|l| l.iter())
                .filter_map(|e| match e {
                    ConnEvent::Disconnected { at_ns, reason, .. }
                        if (*from..to).contains(at_ns) =>
                    {
                        Some(reason.clone())
                    }
                    _ => None,
                })
                .collect();
            r.sort();
            r.dedup();
            r.truncate(3);
            r
        };
        rows.push(vec![
            label.clone(),
            count.to_string(),
            by_adapter
                .iter()
                .map(|(a, d)| {
                    let events = d.iter().filter(|i| flow_of(**i) == Flow::Events).count();
                    format!(
                        "{} on mqtt-{} ({} telemetry, {events} events devices)",
                        d.len(),
                        a + 1,
                        d.len() - events
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
            reconnected.map_or("–".to_owned(), secs),
            if count == 0 {
                "–".to_owned()
            } else if never > 0 {
                format!("{never} never delivered again")
            } else {
                delivered.map_or("–".to_owned(), secs)
            },
            if reasons.is_empty() {
                "–".to_owned()
            } else {
                reasons.join("; ").replace('|', "/")
            },
        ]);
    }
    (rows, only_killed)
}

fn render(args: &ClusterArgs, c: &Collected, load_before: &str, nats_version: &str) -> String {
    let rule = ResumeRule::default();
    let mut out = String::from("## B12: failover in cluster mode under QoS 1 load\n\n");
    out.push_str(&format!(
        "Cluster mode as in B11 (3 NATS nodes, registry, 2 routers, 2 MQTT adapters, HTTP adapter, every \
         process pinned to the server CPUs). {} devices, 32-byte QoS 1 messages: half publish telemetry \
         (`t`: PUBACK after an application accepted), half events (`e`: PUBACK after the R3 stream stored \
         it), each adapter carrying both. Capacity: closed loop ({} unacknowledged per device) for {} s \
         after 3 s: {} PUBACKs/s, **{} msg/s delivered** to the consumers (events are PUBACKed when \
         stored, before delivery: the delivered rate is the capacity); the load: open loop at **{} msg/s** ({}). Consumers: one AMQP \
         receiver per flow on each router (4, credit {}, accepting every message). After {} s of load: \
         kill -9 `router-1`, {} s later one NATS node, {} s later `mqtt-1`, {} s later the load stops and \
         the harness waits up to {} s for every accepted message.\n\n\
         **What the generator does on disconnect**: the device logs it, forgets its unacknowledged messages \
         (no resend — a message without PUBACK was not accepted), and reconnects at once with a clean \
         session, first to the same adapter, then to the other, every 100 ms until one takes it; messages \
         due while it had no connection are not sent. PUBACKs are matched to messages by packet id, so \
         the set of accepted messages is exact. A consumer whose link fails reconnects every 200 ms, to \
         its own router first, then to the other.\n\n\
         **Figures**: *lost* = PUBACKed but never received by any consumer. *Resumed after*: the flow's \
         deliveries in {} ms bins; normal = the mean of the {} bins before the kill; a bin below {:.0} % \
         of it is a dip; delivery has resumed once {} bins in a row are not dips, at the end of the last \
         dip (0 when none). *Held up until*: the last delivery, after the kill, of a message sent before \
         it (since the previous kill). *Worst latency*: of messages sent between this kill and the next.\n\n",
        args.publishers,
        args.b12_window,
        args.b12_capacity_secs,
        thousands(c.acked_rate),
        thousands(c.capacity),
        thousands(c.rate),
        if args.b12_rate.is_some() {
            "given with --b12-rate"
        } else {
            "half of the capacity"
        },
        args.credit,
        args.b12_warmup,
        args.b12_gap,
        args.b12_gap,
        args.b12_gap,
        args.b12_drain,
        rule.bin.as_millis(),
        rule.baseline_bins,
        rule.threshold * 100.0,
        rule.settle_bins,
    ));
    out.push_str(&crate::mqtt::preamble(&args.mqtt_args()));
    out.push_str(&format!(
        "- Load average (1/5/15 min) at the start: {load_before}; at the end: {}\n- {nats_version}\n\n",
        super::load_average()
    ));
    let flows = [Flow::Telemetry, Flow::Events];
    let per_flow = |f: Flow, v: &[u64]| -> u64 {
        v.iter()
            .enumerate()
            .filter(|(i, _)| flow_of(*i) == f)
            .map(|(_, n)| *n)
            .sum()
    };
    let mut count_rows = Vec::new();
    for f in flows {
        let received = c
            .deliveries
            .iter()
            .filter(|d| flow_of(d.publisher as usize) == f)
            .count();
        let lost = c.lost.iter().filter(|(d, _)| flow_of(*d) == f).count();
        count_rows.push(vec![
            format!("{f:?}").to_lowercase(),
            thousands(per_flow(f, &c.sent) as f64),
            thousands(per_flow(f, &c.acked) as f64),
            thousands(received as f64),
            format!("**{lost}**"),
        ]);
    }
    out.push_str(&report::markdown_table(
        &[
            "flow",
            "sent",
            "PUBACKed",
            "received (distinct)",
            "accepted but lost",
        ],
        &count_rows,
    ));
    out.push_str(&format!(
        "\nDuplicates received: {}. The drain took {}.{}\n\n",
        c.duplicates,
        secs(c.drained_in),
        if c.lost.is_empty() {
            String::new()
        } else {
            format!(
                " Lost (device, seq), first ones: {:?}.",
                &c.lost[..c.lost.len().min(10)]
            )
        }
    ));
    let (rows, resume_ok) = resume_rows(c, &rule);
    out.push_str(&report::markdown_table(
        &[
            "kill",
            "flow",
            "normal msg/s",
            "lowest msg/s after",
            "resumed after",
            "held up until",
            "worst latency after",
        ],
        &rows,
    ));
    out.push('\n');
    for k in &c.kills {
        out.push_str(&format!("- `{}`: {}.\n", k.what, k.note));
    }
    for e in &c.unexpected_exits {
        out.push_str(&format!("- **{e}**.\n"));
    }
    out.push_str("\nDevices that had to reconnect:\n\n");
    let (rows, only_killed) = reconnect_rows(c);
    out.push_str(&report::markdown_table(
        &[
            "phase",
            "devices disconnected",
            "on",
            "last reconnected after",
            "last device's traffic delivered again after",
            "why (as the generator saw it)",
        ],
        &rows,
    ));
    let consumer_moves: Vec<String> = c
        .consumer_log
        .iter()
        .filter(|(t, _, _, _)| *t >= c.load_start_ns)
        .map(|(t, who, r, what)| {
            format!(
                "+{:.1} s {who} (router-{}): {}",
                (t - c.load_start_ns) as f64 / 1e9,
                r + 1,
                what.chars().take(120).collect::<String>()
            )
        })
        .collect();
    if !consumer_moves.is_empty() {
        out.push_str(&format!(
            "\nConsumers (time since the load started): {}.\n",
            consumer_moves.join("; ").replace('|', "/")
        ));
    }
    let ok_lost = c.lost.is_empty();
    out.push('\n');
    out.push_str(&report::markdown_table(
        &["goal", "figure", "result"],
        &[
            vec![
                "zero accepted events (and telemetry) lost".to_owned(),
                format!("{} lost", c.lost.len()),
                met(ok_lost).to_owned(),
            ],
            vec![
                "delivery resumes ≤ 2 s after each kill".to_owned(),
                "see *resumed after*".to_owned(),
                met(resume_ok).to_owned(),
            ],
            vec![
                "only the killed adapter's devices reconnect".to_owned(),
                "see the reconnect table".to_owned(),
                met(only_killed).to_owned(),
            ],
        ],
    ));
    out.push('\n');
    out.push_str(&summary_marker(
        "B12",
        "–".to_owned(),
        format!(
            "lost {}; resume ≤ 2 s: {}; only killed adapter's devices reconnect: {}",
            c.lost.len(),
            if resume_ok { "yes" } else { "no" },
            if only_killed { "yes" } else { "no" }
        ),
        "–".to_owned(),
        Some(ok_lost && resume_ok && only_killed),
        format!(
            "QoS 1 at {} msg/s (half of {} capacity); kills: {}",
            thousands(c.rate),
            thousands(c.capacity),
            c.kills
                .iter()
                .map(|k| k.what.clone())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        &crate::machine::now(),
    ));
    out.push_str(&super::reproduce(&format!(
        "--scenarios b12 --publishers {} --b12-warmup {} --b12-gap {} --b12-drain {} --kill-nats {} {}",
        args.publishers,
        args.b12_warmup,
        args.b12_gap,
        args.b12_drain,
        match args.kill_nats {
            NatsVictim::Leader => "leader",
            NatsVictim::Follower => "follower",
        },
        args.pin_options()
    )));
    out
}
