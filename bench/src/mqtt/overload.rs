//! B13: overload. QoS 0 telemetry is offered at twice the system's loss-free rate (B1's figure) for
//! `--b13-duration` seconds while a handful of QoS 1 devices publish at a modest rate beside it; section
//! `b13`. The goal: the QoS 0 rate delivered stays at ≥ 90 % of the loss-free rate (no collapse), the
//! QoS 1 devices may be slowed but none is cut off and none of their acknowledged messages is lost, and
//! memory stays bounded.
//!
//! One [`Traffic`] carries both kinds of device, so that a single receiver (Ferry's AMQP consumer,
//! Mosquitto's subscriber) sees the mix a real consumer would; the receiver counts per publisher, which
//! tells the two kinds apart. A publisher whose connection ends is counted as cut off instead of ending
//! the run.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::procs;
use super::stats::thousands;
use super::throughput::{met, reproduce, search_loss_free, spec, summary_marker, LossFree, Probe};
use super::traffic::{Plan, Traffic, TrafficSpec};
use super::{CpuSample, CpuUse, Flow, Kind, MqttArgs, Sut};
use crate::report;

/// The share of the loss-free rate that must still be delivered under overload.
pub const MIN_DELIVERED_SHARE: f64 = 0.9;
/// Offered load, as a multiple of the loss-free rate.
pub const OVERLOAD: f64 = 2.0;
/// How often RSS (and the delivered rate) is sampled during the overload.
const SAMPLE: Duration = Duration::from_millis(250);
/// Stop draining after the counts stood still this long, or after `DRAIN_MAX` in all.
const DRAIN_QUIET: Duration = Duration::from_secs(2);
const DRAIN_MAX: Duration = Duration::from_secs(60);

/// Where the loss-free rate came from.
#[derive(Debug, Clone)]
pub enum BaseSource {
    /// `--b13-rate-base`.
    Given,
    /// B1's confirmed rate, measured earlier in the same run.
    B1,
    /// B1's probe search, run for B13 (the best passing probe, not confirmed by longer runs).
    Probed(Vec<Probe>),
}

impl BaseSource {
    fn text(&self) -> String {
        match self {
            BaseSource::Given => "`--b13-rate-base`".to_owned(),
            BaseSource::B1 => "B1, this run".to_owned(),
            BaseSource::Probed(p) => format!("B1's probes ({})", p.len()),
        }
    }
}

/// The QoS 1 devices' counts over the whole run (overload and drain).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Qos1 {
    pub publishers: usize,
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    /// PUBACKed but never received, summed per publisher.
    pub lost: u64,
    pub cut_off: usize,
}

/// RSS of one process of the system, KiB.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    pub process: String,
    /// Just after start (before any load, the base rate's search included).
    pub started: u64,
    /// Just before the overload.
    pub before: u64,
    /// Peaks of the samples in the first and the second half of the overload.
    pub peak_first: u64,
    pub peak_second: u64,
    pub after: u64,
}

impl Memory {
    pub fn peak(&self) -> u64 {
        self.peak_first.max(self.peak_second)
    }

    /// Bounded: the second half's peak is within 10 % (or 4 MiB, for small processes) of the first
    /// half's. Queues that fill up to a bound do so in the first seconds; growth that goes on through
    /// the second half is a queue without one.
    pub fn bounded(&self) -> bool {
        let allowed = (self.peak_first / 10).max(4 * 1024);
        self.peak_second <= self.peak_first + allowed
    }
}

/// What B13 measured on one system.
#[derive(Debug, Clone)]
pub struct SystemB13 {
    pub kind: Kind,
    pub base: f64,
    pub source: BaseSource,
    /// Target QoS 0 rate: [`OVERLOAD`] × `base`.
    pub offered: f64,
    pub window: Duration,
    /// QoS 0 messages written by the publishers and received, within the overload.
    pub q0_sent: u64,
    pub q0_delivered: u64,
    /// The lowest QoS 0 rate delivered over one second of the overload.
    pub q0_lowest_1s: f64,
    pub q0_cut_off: usize,
    pub q1: Qos1,
    /// The receiver's connection ended (a consumer cut off).
    pub receiver_cut_off: bool,
    pub memory: Vec<Memory>,
    pub cpu: CpuUse,
}

impl SystemB13 {
    pub fn sent_rate(&self) -> f64 {
        self.q0_sent as f64 / self.window.as_secs_f64().max(1e-9)
    }

    pub fn delivered_rate(&self) -> f64 {
        self.q0_delivered as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Each process's share of one core over the overload, `name N %`.
    pub fn cores_per_process(&self) -> String {
        self.memory
            .iter()
            .zip(&self.cpu.sut)
            .map(|(m, d)| format!("{} {:.0} %", m.process, self.cpu.cores(*d) * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn verdict(&self) -> Verdict {
        Verdict {
            delivered_share: self.delivered_rate() / self.base.max(1e-9),
            qos1_ok: self.q1.cut_off == 0 && self.q1.lost == 0 && !self.receiver_cut_off,
            memory_ok: self.memory.iter().all(Memory::bounded),
        }
    }
}

/// B13's three conditions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// QoS 0 delivered under overload / the loss-free rate.
    pub delivered_share: f64,
    /// No QoS 1 device cut off, no PUBACKed QoS 1 message lost, the consumer still connected.
    pub qos1_ok: bool,
    /// Every process's RSS bounded ([`Memory::bounded`]).
    pub memory_ok: bool,
}

impl Verdict {
    pub fn delivered_ok(&self) -> bool {
        self.delivered_share >= MIN_DELIVERED_SHARE
    }

    pub fn met(&self) -> bool {
        self.delivered_ok() && self.qos1_ok && self.memory_ok
    }

    /// What missed, for the report (empty when met).
    pub fn misses(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.delivered_ok() {
            out.push(format!(
                "delivered {:.0} % of the loss-free rate (< {:.0} %)",
                self.delivered_share * 100.0,
                MIN_DELIVERED_SHARE * 100.0
            ));
        }
        if !self.qos1_ok {
            out.push("QoS 1 devices cut off or messages lost".to_owned());
        }
        if !self.memory_ok {
            out.push("memory still growing in the second half".to_owned());
        }
        out
    }
}

/// The loss-free rate B13 starts from for `kind`, when known without a search.
pub fn known_base(args: &MqttArgs, b1: LossFree, kind: Kind) -> Option<(f64, BaseSource)> {
    if let Some(r) = args.b13_rate_base {
        return Some((r, BaseSource::Given));
    }
    let r = match kind {
        Kind::Mosquitto => b1.mosquitto,
        Kind::Ferry => b1.ferry,
        Kind::ActiveMq => None,
    }?;
    Some((r, BaseSource::B1))
}

/// B13 for Mosquitto and Ferry; writes section `b13`. Fails when a system's run failed (after writing
/// what the other measured) or when Ferry missed the goal.
pub async fn run_b13(args: &MqttArgs, b1: LossFree) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.publishers > 0 && args.b13_duration > 0,
        "nothing to measure"
    );
    if let Some(r) = args.b13_rate_base {
        anyhow::ensure!(r > 0.0, "--b13-rate-base must be positive");
    }
    let mut systems = Vec::new();
    for kind in [Kind::Mosquitto, Kind::Ferry] {
        match system(kind, args, b1).await {
            Ok(s) => systems.push(s),
            Err(e) => bail!("B13 {}: {e:#}", kind.label()),
        }
    }
    let text = render(args, &systems);
    crate::mqtt::publish_section(args, "b13", &text)?;
    let ferry = systems.iter().find(|s| s.kind == Kind::Ferry);
    match ferry.map(SystemB13::verdict) {
        Some(v) if !v.met() => bail!("B13: Ferry missed the goal: {}", v.misses().join("; ")),
        _ => Ok(()),
    }
}

async fn system(kind: Kind, args: &MqttArgs, b1: LossFree) -> anyhow::Result<SystemB13> {
    let devices = args.publishers + args.b13_qos1_publishers;
    let mut sut = Sut::start(kind, args, devices, false).await?;
    let result = overload_on(&mut sut, args, b1).await;
    // A run that failed or missed the goal leaves its servers' last words on stderr, for the why.
    if result.as_ref().map_or(true, |s| !s.verdict().met()) {
        eprintln!("{}", sut.log_tails(20));
    }
    sut.stop();
    result
}

/// B13's load: B1's QoS 0 publishers, then the QoS 1 ones with their own devices and rate.
fn overload_spec(sut: &Sut, args: &MqttArgs) -> TrafficSpec {
    let mut s = spec(sut, args, Flow::Telemetry, 0, false);
    let n0 = args.publishers;
    s.publishers
        .extend((n0..n0 + args.b13_qos1_publishers).map(|i| {
            let mut p = sut.publisher(i, Flow::Telemetry);
            p.qos = Some(1);
            p.rate = Some(args.b13_qos1_rate);
            p
        }));
    s
}

async fn overload_on(sut: &mut Sut, args: &MqttArgs, b1: LossFree) -> anyhow::Result<SystemB13> {
    let kind = sut.kind();
    let (names, pids): (Vec<String>, Vec<u32>) = sut.processes().into_iter().unzip();
    let rss = |pids: &[u32]| -> Vec<u64> {
        pids.iter()
            .map(|&p| procs::rss_kib(p).unwrap_or(0))
            .collect()
    };
    let started = rss(&pids);
    let (base, source) = match known_base(args, b1, kind) {
        Some(b) => b,
        None => {
            let mut traffic = Traffic::start(&spec(sut, args, Flow::Telemetry, 0, false)).await?;
            let searched = search_loss_free(sut, &mut traffic, &pids, args, "B13 base").await;
            traffic.shutdown().await;
            let (search, probes) = searched?;
            let Some(best) = search.best else {
                bail!(
                    "no probed rate was loss-free (lowest tried: {:?})",
                    search.failed
                );
            };
            (best, BaseSource::Probed(probes))
        }
    };
    let n0 = args.publishers;
    let n1 = args.b13_qos1_publishers;
    let traffic = Traffic::start(&overload_spec(sut, args)).await?;
    let q0_sent = |t: &Traffic| -> u64 {
        t.pubs[..n0]
            .iter()
            .map(|p| p.sent.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    let q0_received = |t: &Traffic| -> u64 { (0..n0).map(|i| t.received_from(i)).sum() };
    let before = rss(&pids);
    let mut peak_first = before.clone();
    let mut peak_second = before.clone();
    let duration = Duration::from_secs(args.b13_duration);
    let offered = OVERLOAD * base;
    eprintln!(
        "{} B13: {} QoS 0 msg/s offered (2 × {}) by {n0} publishers, {n1} QoS 1 publishers at {} msg/s each, for {} s",
        kind.label(),
        thousands(offered),
        thousands(base),
        args.b13_qos1_rate,
        args.b13_duration
    );
    let start = Instant::now();
    let c0 = CpuSample::take(&pids);
    let (s0, r0) = (q0_sent(&traffic), q0_received(&traffic));
    traffic.set(Plan::Open {
        per_publisher: offered / n0 as f64,
        start,
    });
    let mut lowest_1s = f64::INFINITY;
    let mut second = (start, r0);
    let mut tick = tokio::time::interval_at((start + SAMPLE).into(), SAMPLE);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let elapsed = now.duration_since(start);
        let peaks = if elapsed <= duration / 2 {
            &mut peak_first
        } else {
            &mut peak_second
        };
        for (peak, r) in peaks.iter_mut().zip(rss(&pids)) {
            *peak = (*peak).max(r);
        }
        if now.duration_since(second.0) >= Duration::from_secs(1) {
            let r = q0_received(&traffic);
            let rate = (r - second.1) as f64 / now.duration_since(second.0).as_secs_f64();
            lowest_1s = lowest_1s.min(rate);
            eprintln!(
                "{} B13 {:>4.1} s: QoS 0 delivered {:>9.0}/s, RSS MiB {}",
                kind.label(),
                elapsed.as_secs_f64(),
                rate,
                rss(&pids)
                    .iter()
                    .map(|k| format!("{:.1}", *k as f64 / 1024.0))
                    .collect::<Vec<_>>()
                    .join(" / ")
            );
            second = (now, r);
        }
        sut.check_alive()?;
        if elapsed >= duration {
            break;
        }
    }
    let c1 = CpuSample::take(&pids);
    let (s1, r1) = (q0_sent(&traffic), q0_received(&traffic));
    traffic.set(Plan::Idle);
    drain(&traffic).await;
    sut.check_alive()?;
    let after = rss(&pids);
    let load = std::sync::atomic::Ordering::Relaxed;
    let mut q1 = Qos1 {
        publishers: n1,
        ..Qos1::default()
    };
    for i in n0..n0 + n1 {
        let p = &traffic.pubs[i];
        let (sent, acked) = (p.sent.load(load), p.acked.load(load));
        let received = traffic.received_from(i);
        q1.sent += sent;
        q1.acked += acked;
        q1.received += received;
        q1.lost += acked.saturating_sub(received);
        q1.cut_off += usize::from(p.cut_off.load(load));
    }
    let q0_cut_off = traffic.pubs[..n0]
        .iter()
        .filter(|p| p.cut_off.load(load))
        .count();
    let receiver_cut_off = traffic.recv.ended.load(load);
    traffic.shutdown().await;
    let memory = names
        .into_iter()
        .enumerate()
        .map(|(k, process)| Memory {
            process,
            started: started[k],
            before: before[k],
            peak_first: peak_first[k],
            peak_second: peak_second[k],
            after: after[k],
        })
        .collect();
    let s = SystemB13 {
        kind,
        base,
        source,
        offered,
        window: c1.at.duration_since(c0.at),
        q0_sent: s1 - s0,
        q0_delivered: r1 - r0,
        q0_lowest_1s: if lowest_1s.is_finite() {
            lowest_1s
        } else {
            0.0
        },
        q0_cut_off,
        q1,
        receiver_cut_off,
        memory,
        cpu: CpuUse::between(&c0, &c1),
    };
    eprintln!(
        "{} B13: offered {:.0}/s, sent {:.0}/s, delivered {:.0}/s ({:.0} % of {}), QoS 0 cut off {}, QoS 1 sent/acked/lost {}/{}/{}, cut off {}, receiver cut off {}, core % sut/gen/others {} ({})",
        kind.label(),
        s.offered,
        s.sent_rate(),
        s.delivered_rate(),
        s.verdict().delivered_share * 100.0,
        thousands(s.base),
        s.q0_cut_off,
        s.q1.sent,
        s.q1.acked,
        s.q1.lost,
        s.q1.cut_off,
        s.receiver_cut_off,
        s.cpu.cores_text(),
        s.cores_per_process()
    );
    Ok(s)
}

/// After the load stopped: waits until the receiver's and the acknowledgements' counts stood still for
/// [`DRAIN_QUIET`] (a system that dropped messages never catches up, so "everything arrived" is no
/// end condition here).
async fn drain(traffic: &Traffic) {
    let began = Instant::now();
    let mut last = (traffic.acked(), traffic.received());
    let mut still_since = Instant::now();
    while began.elapsed() < DRAIN_MAX {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = (traffic.acked(), traffic.received());
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= DRAIN_QUIET {
            return;
        }
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn render(args: &MqttArgs, systems: &[SystemB13]) -> String {
    let mut out =
        String::from("## B13: overload, QoS 0 at twice the loss-free rate, Ferry vs Mosquitto\n\n");
    out.push_str(&format!(
        "B1's set-up ({} QoS 0 publishers of 32-byte telemetry, open loop, one receiver: Ferry's AMQP 1.0 \
         consumer on `telemetry/{tenant}`, Mosquitto's MQTT subscriber on `t/{tenant}/#`), offered at \
         {OVERLOAD}× each system's own loss-free rate for {} s, with {} QoS 1 telemetry publishers (own \
         devices and connections) at {} msg/s each beside them. The loss-free rate is `--b13-rate-base` when \
         given, else B1's confirmed figure from the same run, else the best passing probe of B1's search. \
         Delivered: QoS 0 messages the receiver got during the overload (counted per publisher, so the two \
         kinds of device are told apart), over its length; the lowest 1-second rate shows a collapse the \
         average would hide. A device whose connection ends is counted as cut off and the run goes on. QoS 1 \
         lost: PUBACKed but never received after a drain. RSS (VmRSS) of each process at start, before the overload (after the \
         base rate's search, when it ran), its peak over the first and the second half (sampled every {} ms) and after the drain; memory counts \
         as bounded when the second half's peak is within 10 % (at least 4 MiB) of the first half's. Goal \
         (BENCHMARKS.md): delivered ≥ {:.0} % of the loss-free rate, QoS 1 devices slowed but none cut off \
         (and none of their messages lost), memory bounded.\n\n",
        args.publishers,
        args.b13_duration,
        args.b13_qos1_publishers,
        args.b13_qos1_rate,
        SAMPLE.as_millis(),
        MIN_DELIVERED_SHARE * 100.0,
        tenant = crate::mqtt::ferry::TENANT,
    ));
    out.push_str(&crate::mqtt::preamble(args));
    out.push('\n');
    let headers = [
        "system",
        "loss-free msg/s (from)",
        "QoS 0 offered / sent msg/s",
        "QoS 0 delivered msg/s",
        "% of loss-free",
        "lowest 1 s",
        "QoS 0 cut off",
        "QoS 1 sent / acked / lost",
        "QoS 1 cut off",
        "core % system / generator / others",
        "result",
    ];
    let rows: Vec<Vec<String>> = systems
        .iter()
        .map(|s| {
            let v = s.verdict();
            vec![
                s.kind.label().to_owned(),
                format!("{} ({})", thousands(s.base), s.source.text()),
                format!("{} / {}", thousands(s.offered), thousands(s.sent_rate())),
                format!("**{}**", thousands(s.delivered_rate())),
                format!("{:.0} %", v.delivered_share * 100.0),
                thousands(s.q0_lowest_1s),
                format!("{} of {}", s.q0_cut_off, args.publishers),
                format!("{} / {} / {}", s.q1.sent, s.q1.acked, s.q1.lost),
                format!(
                    "{} of {}{}",
                    s.q1.cut_off,
                    s.q1.publishers,
                    if s.receiver_cut_off {
                        " (and the receiver)"
                    } else {
                        ""
                    }
                ),
                s.cpu.cores_text(),
                met(v.met()).to_owned(),
            ]
        })
        .collect();
    out.push_str(&report::markdown_table(&headers, &rows));
    out.push('\n');
    let mem_rows: Vec<Vec<String>> = systems
        .iter()
        .flat_map(|s| {
            s.memory.iter().map(|m| {
                vec![
                    s.kind.label().to_owned(),
                    m.process.clone(),
                    mib(m.started),
                    mib(m.before),
                    mib(m.peak_first),
                    mib(m.peak_second),
                    mib(m.after),
                    if m.bounded() { "yes" } else { "**no**" }.to_owned(),
                ]
            })
        })
        .collect();
    out.push_str(&report::markdown_table(
        &[
            "system",
            "process",
            "RSS MiB at start",
            "before the overload",
            "peak, first half",
            "peak, second half",
            "after the drain",
            "bounded",
        ],
        &mem_rows,
    ));
    out.push('\n');
    for s in systems {
        out.push_str(&notes(s));
    }
    let date = crate::machine::now();
    let peer = systems.iter().find(|s| s.kind == Kind::Mosquitto);
    if let Some(f) = systems.iter().find(|s| s.kind == Kind::Ferry) {
        let v = f.verdict();
        let peak: Vec<String> = f
            .memory
            .iter()
            .map(|m| format!("{} {} → {} MiB", m.process, mib(m.before), mib(m.peak())))
            .collect();
        let mut note = format!(
            "{} s at {} msg/s offered (2 × {}); QoS 1 sent/acked/lost {}/{}/{}, {} of {} cut off; RSS {}",
            args.b13_duration,
            thousands(f.offered),
            thousands(f.base),
            f.q1.sent,
            f.q1.acked,
            f.q1.lost,
            f.q1.cut_off,
            f.q1.publishers,
            peak.join(", ")
        );
        if !v.met() {
            note = format!("{}; {note}", v.misses().join("; "));
        }
        out.push_str(&summary_marker(
            "B13",
            peer.map_or("–".to_owned(), |m| {
                format!(
                    "Mosquitto {:.0} % of its loss-free rate",
                    m.verdict().delivered_share * 100.0
                )
            }),
            format!(
                "{} msg/s delivered, {:.0} % of loss-free",
                thousands(f.delivered_rate()),
                v.delivered_share * 100.0
            ),
            format!(
                "{:.0} % (goal ≥ {:.0} %)",
                v.delivered_share * 100.0,
                MIN_DELIVERED_SHARE * 100.0
            ),
            Some(v.met()),
            note,
            &date,
        ));
    }
    let scenario = format!(
        "b13 --b13-duration {} --b13-qos1-publishers {} --b13-qos1-rate {}{}",
        args.b13_duration,
        args.b13_qos1_publishers,
        args.b13_qos1_rate,
        args.b13_rate_base
            .map(|r| format!(" --b13-rate-base {r}"))
            .unwrap_or_default()
    );
    out.push_str(&reproduce(args, &scenario));
    out
}

/// What the figures say about one system: whether the generator really offered the overload, what bound
/// it, what missed.
fn notes(s: &SystemB13) -> String {
    let mut out = format!(
        "- {}: core share per process over the overload: {}; ",
        s.kind.label(),
        s.cores_per_process()
    );
    let sent_share = s.sent_rate() / s.offered.max(1e-9);
    let generator = s.cpu.cores(s.cpu.generator) * 100.0;
    if sent_share < 0.97 {
        let why = if generator >= 90.0 {
            format!("the generator's core was {generator:.0} % busy, so it is the bound")
        } else {
            format!(
                "the generator's core was {generator:.0} % busy: the system held the publishers back \
                 (TCP back-pressure) or cut them off"
            )
        };
        out.push_str(&format!(
            "the publishers wrote {:.0} % of the offered rate ({why}). ",
            sent_share * 100.0
        ));
    } else {
        out.push_str("the publishers wrote the offered rate. ");
    }
    let v = s.verdict();
    if v.met() {
        out.push_str("Goal met.\n");
    } else {
        out.push_str(&format!("Missed: {}.\n", v.misses().join("; ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(before: u64, first: u64, second: u64) -> Memory {
        Memory {
            process: "p".into(),
            started: before,
            before,
            peak_first: first,
            peak_second: second,
            after: second,
        }
    }

    fn system(base: f64, delivered_per_s: u64) -> SystemB13 {
        SystemB13 {
            kind: Kind::Ferry,
            base,
            source: BaseSource::Given,
            offered: OVERLOAD * base,
            window: Duration::from_secs(10),
            q0_sent: (OVERLOAD * base) as u64 * 10,
            q0_delivered: delivered_per_s * 10,
            q0_lowest_1s: delivered_per_s as f64,
            q0_cut_off: 0,
            q1: Qos1 {
                publishers: 10,
                sent: 2000,
                acked: 2000,
                received: 2000,
                lost: 0,
                cut_off: 0,
            },
            receiver_cut_off: false,
            memory: vec![memory(10_000, 40_000, 41_000)],
            cpu: CpuUse {
                window: Duration::from_secs(10),
                ..CpuUse::default()
            },
        }
    }

    #[test]
    fn memory_is_bounded_when_the_second_half_stays_near_the_first() {
        assert!(memory(10_000, 100_000, 110_000).bounded(), "10 % more");
        assert!(!memory(10_000, 100_000, 110_001).bounded());
        assert!(
            memory(5_000, 8_000, 12_000).bounded(),
            "4 MiB for small ones"
        );
        assert!(!memory(5_000, 8_000, 12_193).bounded());
        assert!(memory(5_000, 80_000, 20_000).bounded(), "shrinking");
        assert_eq!(memory(1, 7, 9).peak(), 9);
    }

    #[test]
    fn the_verdict_needs_the_rate_the_qos1_devices_and_bounded_memory() {
        let ok = system(10_000.0, 9_000);
        let v = ok.verdict();
        assert!((v.delivered_share - 0.9).abs() < 1e-9);
        assert!(v.met() && v.misses().is_empty());

        let collapsed = system(10_000.0, 8_999).verdict();
        assert!(!collapsed.delivered_ok() && !collapsed.met());
        assert_eq!(collapsed.misses().len(), 1);

        let mut cut = system(10_000.0, 9_500);
        cut.q1.cut_off = 1;
        assert!(!cut.verdict().met());
        let mut lost = system(10_000.0, 9_500);
        lost.q1.lost = 1;
        assert!(!lost.verdict().qos1_ok);
        let mut consumer = system(10_000.0, 9_500);
        consumer.receiver_cut_off = true;
        assert!(!consumer.verdict().met());
        let mut cut_q0 = system(10_000.0, 9_500);
        cut_q0.q0_cut_off = 30;
        assert!(cut_q0.verdict().met(), "QoS 0 devices may be cut off");

        let mut growing = system(10_000.0, 9_500);
        growing.memory.push(memory(10_000, 50_000, 90_000));
        let v = growing.verdict();
        assert!(!v.memory_ok && !v.met());
        assert_eq!(v.misses(), vec!["memory still growing in the second half"]);
        assert!((growing.sent_rate() - 20_000.0).abs() < 1e-9);
        assert!((growing.delivered_rate() - 9_500.0).abs() < 1e-9);
    }

    #[test]
    fn the_base_rate_comes_from_the_option_then_b1() {
        let b1 = LossFree {
            mosquitto: Some(100_000.0),
            ferry: Some(40_000.0),
        };
        let d = MqttArgs::defaults();
        assert!(matches!(
            known_base(&d, b1, Kind::Ferry),
            Some((r, BaseSource::B1)) if r == 40_000.0
        ));
        assert!(known_base(&d, LossFree::default(), Kind::Ferry).is_none());
        let a = MqttArgs::from_options([
            "--scenarios",
            "b13",
            "--b13-rate-base",
            "25000",
            "--b13-duration",
            "8",
            "--b13-qos1-publishers",
            "4",
            "--b13-qos1-rate",
            "5",
        ])
        .expect("parses");
        assert_eq!(a.scenarios, vec![crate::mqtt::MqttScenario::B13]);
        assert_eq!((a.b13_duration, a.b13_qos1_publishers), (8, 4));
        assert_eq!(a.b13_qos1_rate, 5.0);
        assert!(matches!(
            known_base(&a, b1, Kind::Mosquitto),
            Some((r, BaseSource::Given)) if r == 25_000.0
        ));
        assert!(MqttArgs::from_options(["--b13-rate-base", "fast"]).is_err());
    }

    #[test]
    fn the_section_states_the_verdict_and_a_summary_row() {
        let args = MqttArgs::from_options(["--no-report"]).expect("parses");
        let mut peer = system(100_000.0, 95_000);
        peer.kind = Kind::Mosquitto;
        let ferry = system(10_000.0, 5_000);
        let text = render(&args, &[peer, ferry]);
        assert!(text.contains("**missed**") && text.contains("**met**"));
        let rows = crate::summary::collect_rows(&text);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].id, "B13");
        assert_eq!(rows[0].met, Some(false));
        assert!(rows[0].peer.contains("95 %"), "{}", rows[0].peer);
        assert!(text.contains("--scenarios b13 --b13-duration 30"));
    }
}
