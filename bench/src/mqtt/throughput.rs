//! B1 + B2 (QoS 0 telemetry: loss-free rate, CPU per message), B5 (latency at a fixed rate) and B3
//! (QoS 1 durable events, closed loop), measured on the same [`Traffic`] machinery for every system.
//!
//! Layout: this file holds what the scenarios share (the open-loop run, the traffic spec, the report's
//! pieces); one module per scenario measures and renders it (`b1`, `b5`, `b3`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::traffic::{Plan, Traffic, TrafficSpec};
use super::{CpuSample, CpuUse, Flow, MqttArgs, Sut};

mod b1;
mod b3;
mod b5;

pub use b1::{b1_system, run_b1, run_b1_rates, search_loss_free, LossFree, Probe, SystemB1};
pub use b3::{measure_closed, run_b3, ClosedRun};
pub use b5::run_b5;

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

pub(crate) fn spec(sut: &Sut, args: &MqttArgs, flow: Flow, qos: u8, track: bool) -> TrafficSpec {
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

pub(crate) fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.1))
}

pub(crate) fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**missed**"
    }
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

pub(crate) fn reproduce(args: &MqttArgs, scenario: &str) -> String {
    format!(
        "\nReproduce (from the workspace root):\n\n```sh\nexport CARGO_TARGET_DIR=/var/tmp/ferry-target\n\
         cargo build --release -p ferry-registry -p ferry-router -p ferry-mqtt-adapter -p ferry-bench\n\
         \"$CARGO_TARGET_DIR\"/release/ferry-bench mqtt --scenarios {scenario} {}\n```\n",
        args.common_options()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::Kind;

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
