//! B12's arithmetic, kept pure so that it is tested: from the deliveries the consumers saw (receive and
//! send time of every message), the kills, the publishers' PUBACKs and their connection log, compute
//! what the report states — accepted messages lost, how long after each kill delivery was back at its
//! rate, how long messages sent before a kill were held up, and which devices had to reconnect.

use std::collections::BTreeMap;
use std::time::Duration;

/// One message a consumer received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub recv_ns: u64,
    pub sent_ns: u64,
    pub publisher: u32,
}

/// How "delivery resumed" is decided from a flow's delivered rate in bins around a kill.
#[derive(Debug, Clone, Copy)]
pub struct ResumeRule {
    pub bin: Duration,
    /// Bins before the kill whose mean is the normal rate.
    pub baseline_bins: usize,
    /// A bin delivering less than this share of the baseline is a dip.
    pub threshold: f64,
    /// Delivery has resumed once this many bins in a row are not dips; the time is the end of the last
    /// dip before them (zero when the first bins after the kill are already healthy).
    pub settle_bins: usize,
}

impl Default for ResumeRule {
    fn default() -> Self {
        Self {
            bin: Duration::from_millis(100),
            baseline_bins: 20,
            threshold: 0.8,
            settle_bins: 30,
        }
    }
}

/// What the bins say about one flow after one kill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resume {
    /// Mean delivered rate (msg/s) before the kill.
    pub baseline_per_s: f64,
    /// Lowest bin after the kill, as a rate (msg/s), up to the point of resumption.
    pub min_per_s: f64,
    /// Time from the kill until delivery was back at the rate; `None` when it did not settle within
    /// the bins given.
    pub resumed_after: Option<Duration>,
}

/// Counts of deliveries per bin: `before[j]` covers `[kill − (j+1)·bin, kill − j·bin)` reversed into time
/// order (`before.last()` ends at the kill), `after[j]` covers `[kill + j·bin, kill + (j+1)·bin)`;
/// `after` stops at `end_ns`.
pub fn bins_around(
    recv_ns: &[u64],
    kill_ns: u64,
    end_ns: u64,
    rule: &ResumeRule,
) -> (Vec<u64>, Vec<u64>) {
    let w = u64::try_from(rule.bin.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    let nb = rule.baseline_bins;
    let na = usize::try_from(end_ns.saturating_sub(kill_ns) / w).unwrap_or(0);
    let mut before = vec![0u64; nb];
    let mut after = vec![0u64; na];
    for &t in recv_ns {
        if t < kill_ns {
            let back = usize::try_from((kill_ns - t - 1) / w).unwrap_or(usize::MAX);
            if back < nb {
                before[nb - 1 - back] += 1;
            }
        } else {
            let j = usize::try_from((t - kill_ns) / w).unwrap_or(usize::MAX);
            if j < na {
                after[j] += 1;
            }
        }
    }
    (before, after)
}

/// Applies `rule` to the bins of [`bins_around`].
pub fn resume(before: &[u64], after: &[u64], rule: &ResumeRule) -> Resume {
    let per_s = |count: f64| count / rule.bin.as_secs_f64().max(1e-9);
    let baseline = if before.is_empty() {
        0.0
    } else {
        before.iter().sum::<u64>() as f64 / before.len() as f64
    };
    let mut last_dip_end = None;
    let mut healthy = 0;
    let mut min = f64::INFINITY;
    let mut settled = false;
    for (j, &c) in after.iter().enumerate() {
        min = min.min(c as f64);
        if (c as f64) < rule.threshold * baseline {
            last_dip_end = Some(j + 1);
            healthy = 0;
        } else {
            healthy += 1;
            if healthy >= rule.settle_bins.max(1) {
                settled = true;
                break;
            }
        }
    }
    Resume {
        baseline_per_s: per_s(baseline),
        min_per_s: if min.is_finite() { per_s(min) } else { 0.0 },
        resumed_after: settled.then(|| rule.bin.mul_f64(last_dip_end.unwrap_or(0) as f64)),
    }
}

/// Of the messages sent in `[from_ns, kill_ns)` and received after the kill, how long after the kill the
/// last one arrived (events a dead router held unsettled come back only after the redelivery time).
pub fn held_up_until(deliveries: &[Delivery], from_ns: u64, kill_ns: u64) -> Option<Duration> {
    deliveries
        .iter()
        .filter(|d| d.sent_ns >= from_ns && d.sent_ns < kill_ns && d.recv_ns >= kill_ns)
        .map(|d| d.recv_ns - kill_ns)
        .max()
        .map(Duration::from_nanos)
}

/// A publisher's connection changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    Connected {
        at_ns: u64,
        adapter: usize,
    },
    Disconnected {
        at_ns: u64,
        adapter: usize,
        reason: String,
    },
}

/// The devices that lost their connection in `[from_ns, to_ns)`, per adapter they were on.
pub fn disconnected_in(
    logs: &[Vec<ConnEvent>],
    from_ns: u64,
    to_ns: u64,
) -> BTreeMap<usize, Vec<usize>> {
    let mut out: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (device, log) in logs.iter().enumerate() {
        let hit = log.iter().find_map(|e| match e {
            ConnEvent::Disconnected { at_ns, adapter, .. } if (from_ns..to_ns).contains(at_ns) => {
                Some(*adapter)
            }
            _ => None,
        });
        if let Some(adapter) = hit {
            out.entry(adapter).or_default().push(device);
        }
    }
    out
}

/// For each device in `devices`: the first time after `kill_ns` it was connected again, and the first
/// delivery of a message it sent after that; the latest of those (`None` for a device that never got a
/// message through again), as times after the kill.
pub fn devices_back(
    logs: &[Vec<ConnEvent>],
    deliveries: &[Delivery],
    devices: &[usize],
    kill_ns: u64,
) -> Vec<(usize, Option<Duration>, Option<Duration>)> {
    devices
        .iter()
        .map(|&d| {
            let reconnected = logs.get(d).and_then(|log| {
                log.iter().find_map(|e| match e {
                    ConnEvent::Connected { at_ns, .. } if *at_ns >= kill_ns => Some(*at_ns),
                    _ => None,
                })
            });
            let delivered = reconnected.and_then(|r| {
                deliveries
                    .iter()
                    .filter(|x| x.publisher as usize == d && x.sent_ns >= r)
                    .map(|x| x.recv_ns)
                    .min()
            });
            let since = |t: u64| Duration::from_nanos(t.saturating_sub(kill_ns));
            (d, reconnected.map(since), delivered.map(since))
        })
        .collect()
}

/// Devices connected at `t_ns` (their last event at or before it is a connect).
pub fn connected_at(logs: &[Vec<ConnEvent>], t_ns: u64) -> usize {
    logs.iter()
        .filter(|log| {
            let last = log.iter().rev().find(|e| match e {
                ConnEvent::Connected { at_ns, .. } | ConnEvent::Disconnected { at_ns, .. } => {
                    *at_ns <= t_ns
                }
            });
            matches!(last, Some(ConnEvent::Connected { .. }))
        })
        .count()
}

/// The run as CSV, one line per `bin` from `from_ns` to `to_ns`: seconds since `from_ns`, deliveries of
/// each class (`class` maps a delivery's publisher to 0 or 1), devices connected at the bin's end.
pub fn csv(
    deliveries: &[Delivery],
    class: impl Fn(u32) -> usize,
    logs: &[Vec<ConnEvent>],
    from_ns: u64,
    to_ns: u64,
    bin: Duration,
) -> String {
    let w = u64::try_from(bin.as_nanos()).unwrap_or(u64::MAX).max(1);
    let n = usize::try_from(to_ns.saturating_sub(from_ns).div_ceil(w)).unwrap_or(0);
    let mut counts = vec![[0u64; 2]; n];
    for d in deliveries {
        if d.recv_ns >= from_ns {
            if let Some(c) = usize::try_from((d.recv_ns - from_ns) / w)
                .ok()
                .and_then(|j| counts.get_mut(j))
            {
                c[class(d.publisher).min(1)] += 1;
            }
        }
    }
    let mut out = String::from("t_s,telemetry,events,devices_connected\n");
    for (j, c) in counts.iter().enumerate() {
        let end = from_ns + (j as u64 + 1) * w;
        out.push_str(&format!(
            "{:.1},{},{},{}\n",
            (j as u64 * w) as f64 / 1e9,
            c[0],
            c[1],
            connected_at(logs, end)
        ));
    }
    out
}

/// Sequence numbers below `sent` that `acked` holds and `received` does not: accepted, never delivered.
pub fn lost(sent: u64, acked: impl Fn(u64) -> bool, received: impl Fn(u64) -> bool) -> Vec<u64> {
    (0..sent).filter(|&s| acked(s) && !received(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn rule() -> ResumeRule {
        ResumeRule {
            bin: Duration::from_millis(100),
            baseline_bins: 5,
            threshold: 0.8,
            settle_bins: 3,
        }
    }

    /// Deliveries every `every_ms` from `from` to `to` (ms).
    fn steady(from: u64, to: u64, every_ms: u64) -> Vec<u64> {
        (from..to)
            .step_by(every_ms as usize)
            .map(|t| t * MS)
            .collect()
    }

    #[test]
    fn bins_split_around_the_kill() {
        let recv = vec![450 * MS, 499 * MS, 500 * MS, 650 * MS, 10_000 * MS];
        let (before, after) = bins_around(&recv, 500 * MS, 800 * MS, &rule());
        assert_eq!(before, vec![0, 0, 0, 0, 2], "the last bin ends at the kill");
        assert_eq!(
            after,
            vec![1, 1, 0],
            "up to the end, later deliveries ignored"
        );
    }

    #[test]
    fn no_dip_resumes_at_once() {
        let recv = steady(0, 2000, 1);
        let (b, a) = bins_around(&recv, 1000 * MS, 2000 * MS, &rule());
        let r = resume(&b, &a, &rule());
        assert_eq!(r.resumed_after, Some(Duration::ZERO));
        assert!((r.baseline_per_s - 1000.0).abs() < 1e-6);
        assert!((r.min_per_s - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn a_stall_of_700_ms_resumes_at_its_end() {
        // Nothing from 1000 to 1700 ms, then a catch-up burst and the normal rate again.
        let mut recv = steady(0, 1000, 1);
        recv.extend(std::iter::repeat_n(1750 * MS, 700));
        recv.extend(steady(1700, 3000, 1));
        let (b, a) = bins_around(&recv, 1000 * MS, 3000 * MS, &rule());
        let r = resume(&b, &a, &rule());
        assert_eq!(r.resumed_after, Some(Duration::from_millis(700)));
        assert_eq!(r.min_per_s, 0.0);
    }

    #[test]
    fn half_the_rate_is_a_dip_and_never_settling_is_none() {
        // Half the devices gone for 300 ms, then back.
        let mut recv = steady(0, 1000, 1);
        recv.extend(steady(1000, 1300, 2));
        recv.extend(steady(1300, 2000, 1));
        let (b, a) = bins_around(&recv, 1000 * MS, 2000 * MS, &rule());
        assert_eq!(
            resume(&b, &a, &rule()).resumed_after,
            Some(Duration::from_millis(300))
        );
        // Delivery stops for good.
        let recv = steady(0, 1000, 1);
        let (b, a) = bins_around(&recv, 1000 * MS, 2000 * MS, &rule());
        assert_eq!(resume(&b, &a, &rule()).resumed_after, None);
        // A dip after the flow has settled belongs to nothing (noise of a shared machine).
        let mut recv = steady(0, 1500, 1);
        recv.extend(steady(1600, 2000, 1));
        let (b, a) = bins_around(&recv, 1000 * MS, 2000 * MS, &rule());
        assert_eq!(resume(&b, &a, &rule()).resumed_after, Some(Duration::ZERO));
    }

    #[test]
    fn held_up_messages_and_lost_ones() {
        let d = |sent, recv| Delivery {
            recv_ns: recv * MS,
            sent_ns: sent * MS,
            publisher: 0,
        };
        let deliveries = vec![d(900, 901), d(990, 1200), d(995, 31_000), d(1001, 1002)];
        assert_eq!(
            held_up_until(&deliveries, 0, 1000 * MS),
            Some(Duration::from_millis(30_000))
        );
        assert_eq!(held_up_until(&deliveries, 0, 500 * MS), None);
        let acked = |s: u64| s != 3;
        let received = |s: u64| s != 3 && s != 5;
        assert_eq!(lost(8, acked, received), vec![5]);
    }

    #[test]
    fn devices_that_reconnected_and_when_they_were_back() {
        let logs = vec![
            vec![ConnEvent::Connected {
                at_ns: 0,
                adapter: 0,
            }],
            vec![
                ConnEvent::Connected {
                    at_ns: 0,
                    adapter: 1,
                },
                ConnEvent::Disconnected {
                    at_ns: 1000 * MS,
                    adapter: 1,
                    reason: "closed".into(),
                },
                ConnEvent::Connected {
                    at_ns: 1200 * MS,
                    adapter: 0,
                },
            ],
            vec![ConnEvent::Disconnected {
                at_ns: 1500 * MS,
                adapter: 0,
                reason: "closed".into(),
            }],
        ];
        let by_adapter = disconnected_in(&logs, 900 * MS, 2000 * MS);
        assert_eq!(by_adapter.get(&1), Some(&vec![1]));
        assert_eq!(by_adapter.get(&0), Some(&vec![2]));
        assert!(disconnected_in(&logs, 0, 900 * MS).is_empty());
        let deliveries = vec![
            Delivery {
                recv_ns: 1100 * MS,
                sent_ns: 990 * MS,
                publisher: 1,
            },
            Delivery {
                recv_ns: 1260 * MS,
                sent_ns: 1250 * MS,
                publisher: 1,
            },
        ];
        let back = devices_back(&logs, &deliveries, &[1, 2], 1000 * MS);
        assert_eq!(
            back[0],
            (
                1,
                Some(Duration::from_millis(200)),
                Some(Duration::from_millis(260))
            )
        );
        assert_eq!(back[1], (2, None, None));
        assert_eq!(connected_at(&logs, 500 * MS), 2);
        assert_eq!(connected_at(&logs, 1100 * MS), 1);
        assert_eq!(connected_at(&logs, 1300 * MS), 2);
        assert_eq!(
            connected_at(&logs, 1600 * MS),
            2,
            "device 2 never connected"
        );
        let text = csv(
            &deliveries,
            |p| p as usize % 2,
            &logs,
            1000 * MS,
            1300 * MS,
            Duration::from_millis(100),
        );
        assert_eq!(
            text,
            "t_s,telemetry,events,devices_connected\n0.0,0,0,1\n0.1,0,1,2\n0.2,0,1,2\n"
        );
    }
}
