//! The MQTT load: N publisher connections and one receiver (an MQTT subscriber for the brokers, an AMQP
//! 1.0 consumer for Ferry), all in the generator's process, driven by a shared [`Plan`].
//!
//! Each publisher is one task owning its connection: open loop it wakes every `tick` (the publishers'
//! ticks staggered over the interval) and writes, in one `write`, every message due by then at its share
//! of the target rate; closed loop (QoS 1) it keeps `window` messages unacknowledged and sends one more
//! per PUBACK. Every message carries a [`Stamp`] (publisher, sequence number, time sent), so the receiver
//! counts exactly, measures latency, and (when asked) remembers which messages arrived, for the loss
//! count of QoS 1: a message PUBACKed but never received is lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::amqp::client::Login as AmqpLogin;
use crate::amqp::raw;
use anyhow::{anyhow, bail, Context as _};
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::wire::{self, Login, Stamp};

/// How long the AMQP receiver may take to attach before the traffic fails to start.
const RECEIVER_ATTACH: Duration = Duration::from_secs(30);

/// What the publishers do now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    /// Nothing (connections stay open).
    Idle,
    /// Open loop: each publisher sends `per_publisher` messages per second from `start`.
    Open { per_publisher: f64, start: Instant },
    /// Closed loop (QoS 1): each publisher keeps `window` messages unacknowledged.
    Closed { window: u64 },
}

/// Counters of one publisher.
#[derive(Debug, Default)]
pub struct PubCounters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// Set when the connection ended under the publisher (the server closed it, or a read or write
    /// failed): the device was cut off.
    pub cut_off: AtomicBool,
}

/// Which messages a receiver has seen, per publisher (a bit per sequence number).
#[derive(Debug, Default)]
pub struct Seen {
    bits: Vec<Vec<u64>>,
    pub duplicates: u64,
}

impl Seen {
    pub fn new(publishers: usize) -> Self {
        Self {
            bits: vec![Vec::new(); publishers],
            duplicates: 0,
        }
    }

    /// Marks (publisher, seq); false when it was seen before or the publisher is unknown.
    pub fn mark(&mut self, publisher: usize, seq: u64) -> bool {
        let Some(bits) = self.bits.get_mut(publisher) else {
            return false;
        };
        let word = usize::try_from(seq / 64).unwrap_or(usize::MAX);
        if word >= bits.len() {
            if word > 1 << 28 {
                return false;
            }
            bits.resize(word + 1, 0);
        }
        let mask = 1u64 << (seq % 64);
        if bits[word] & mask != 0 {
            self.duplicates += 1;
            return false;
        }
        bits[word] |= mask;
        true
    }

    /// Whether (publisher, seq) was seen.
    pub fn contains(&self, publisher: usize, seq: u64) -> bool {
        let word = usize::try_from(seq / 64).unwrap_or(usize::MAX);
        self.bits
            .get(publisher)
            .and_then(|b| b.get(word))
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// Sequence numbers below `upto` of `publisher` that were never seen.
    pub fn missing(&self, publisher: usize, upto: u64) -> u64 {
        let Some(bits) = self.bits.get(publisher) else {
            return upto;
        };
        let mut missing = 0;
        for seq in 0..upto {
            let word = usize::try_from(seq / 64).unwrap_or(usize::MAX);
            let set = bits.get(word).is_some_and(|w| w & (1 << (seq % 64)) != 0);
            if !set {
                missing += 1;
            }
        }
        missing
    }
}

/// What the receiver counts.
#[derive(Debug, Default)]
pub struct RecvCounters {
    pub received: AtomicU64,
    /// Messages whose payload was not one of ours.
    pub foreign: AtomicU64,
    /// Record latencies (µs) while set.
    pub record: AtomicBool,
    pub latencies_us: Mutex<Vec<u32>>,
    /// Present when the run tracks every message (QoS 1 loss).
    pub seen: Option<Mutex<Seen>>,
    /// Messages received per publisher (by the stamp's publisher index), for loads that mix kinds of
    /// publishers; empty unless [`Traffic::start`] sized it.
    pub per_publisher: Vec<AtomicU64>,
    /// Set when the receiver's connection ended.
    pub ended: AtomicBool,
}

impl RecvCounters {
    fn handle(&self, payload: &[u8], now_ns: u64) {
        let Some(stamp) = Stamp::decode(payload) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if let Some(seen) = &self.seen {
            if let Ok(mut s) = seen.lock() {
                if !s.mark(stamp.publisher as usize, stamp.seq) {
                    return;
                }
            }
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.per_publisher.get(stamp.publisher as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if self.record.load(Ordering::Relaxed) {
            let us = now_ns.saturating_sub(stamp.sent_ns) / 1000;
            if let Ok(mut l) = self.latencies_us.lock() {
                l.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
        }
    }

    /// Takes the latencies recorded so far.
    pub fn take_latencies(&self) -> Vec<u32> {
        self.latencies_us
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
}

/// Where the messages are read.
#[derive(Debug, Clone)]
pub enum ReceiverSpec {
    /// An MQTT subscription (the brokers).
    Mqtt {
        addr: SocketAddr,
        login: Login,
        filter: String,
        qos: u8,
    },
    /// An AMQP 1.0 receiver at Ferry's router (SASL PLAIN as an application user).
    Amqp {
        addr: SocketAddr,
        user: String,
        password: String,
        address: String,
        credit: u32,
    },
}

/// One publisher's connection parameters.
#[derive(Debug, Clone)]
pub struct PublisherSpec {
    pub login: Login,
    pub topic: String,
    /// The server this publisher connects to, when not [`TrafficSpec::mqtt`] (cluster mode spreads the
    /// publishers over several adapters).
    pub addr: Option<SocketAddr>,
    /// This publisher's QoS, when not [`TrafficSpec::qos`].
    pub qos: Option<u8>,
    /// Open loop: this publisher's own rate (msg/s), when not the plan's `per_publisher`.
    pub rate: Option<f64>,
}

/// The whole load.
#[derive(Debug, Clone)]
pub struct TrafficSpec {
    pub mqtt: SocketAddr,
    pub publishers: Vec<PublisherSpec>,
    pub qos: u8,
    pub receiver: ReceiverSpec,
    pub tick: Duration,
    /// Track every message (for the QoS 1 loss count).
    pub track: bool,
}

/// Connections open, tasks running.
pub struct Traffic {
    plan: watch::Sender<Plan>,
    pub pubs: Vec<Arc<PubCounters>>,
    pub recv: Arc<RecvCounters>,
    tasks: JoinSet<anyhow::Result<()>>,
    failure: Option<anyhow::Error>,
}

impl Traffic {
    /// Connects the receiver, then the publishers (32 at a time); all idle.
    pub async fn start(spec: &TrafficSpec) -> anyhow::Result<Self> {
        let recv = Arc::new(RecvCounters {
            seen: spec
                .track
                .then(|| Mutex::new(Seen::new(spec.publishers.len()))),
            per_publisher: (0..spec.publishers.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            ..RecvCounters::default()
        });
        let mut tasks = JoinSet::new();
        match &spec.receiver {
            ReceiverSpec::Mqtt {
                addr,
                login,
                filter,
                qos,
            } => {
                let mut rest = BytesMut::with_capacity(64 * 1024);
                let mut stream = wire::connect(*addr, None, login, &mut rest).await?;
                wire::subscribe(&mut stream, filter, *qos, &mut rest).await?;
                tasks.spawn(flag_end(
                    mqtt_receiver(stream, rest, recv.clone()),
                    recv.clone(),
                ));
            }
            ReceiverSpec::Amqp {
                addr,
                user,
                password,
                address,
                credit,
            } => {
                let login = AmqpLogin::Plain {
                    user: user.clone(),
                    password: password.clone(),
                };
                let (addr, address, credit, counters) =
                    (*addr, address.clone(), *credit, recv.clone());
                let (attached, on_attach) = tokio::sync::oneshot::channel();
                tasks.spawn(flag_end(
                    async move {
                        raw::receive_each(addr, &login, &address, credit, attached, |data| {
                            match data {
                                Some(data) => counters.handle(data, wire::now_ns()),
                                None => {
                                    counters.foreign.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        })
                        .await
                    },
                    recv.clone(),
                ));
                // Telemetry without a consumer is dropped (Hono's rule): no publisher starts before
                // the receiver's link is attached and has given credit.
                match tokio::time::timeout(RECEIVER_ATTACH, on_attach).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        let why = match tasks.join_next().await {
                            Some(Ok(Err(e))) => format!("{e:#}"),
                            other => format!("{other:?}"),
                        };
                        bail!("the AMQP receiver did not attach: {why}");
                    }
                    Err(_) => bail!("the AMQP receiver did not attach within {RECEIVER_ATTACH:?}"),
                }
            }
        }
        let (plan, plan_rx) = watch::channel(Plan::Idle);
        let n = spec.publishers.len();
        let mut pubs = Vec::with_capacity(n);
        let mut streams: Vec<Option<(TcpStream, BytesMut)>> = (0..n).map(|_| None).collect();
        for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
            let mut connecting = JoinSet::new();
            for &i in chunk {
                let login = spec.publishers[i].login.clone();
                let addr = spec.publishers[i].addr.unwrap_or(spec.mqtt);
                connecting.spawn(async move {
                    let mut rest = BytesMut::with_capacity(4096);
                    let s = wire::connect(addr, None, &login, &mut rest).await?;
                    anyhow::Ok((i, s, rest))
                });
            }
            while let Some(done) = connecting.join_next().await {
                let (i, s, rest) = done??;
                streams[i] = Some((s, rest));
            }
        }
        let t0 = Instant::now();
        for (i, slot) in streams.into_iter().enumerate() {
            let (stream, rest) = slot.context("a publisher did not connect")?;
            let counters = Arc::new(PubCounters::default());
            pubs.push(counters.clone());
            let p = Publisher {
                index: i,
                topic: Bytes::from(spec.publishers[i].topic.clone().into_bytes()),
                qos: spec.publishers[i].qos.unwrap_or(spec.qos),
                rate: spec.publishers[i].rate,
                counters,
                phase: i as f64 / n as f64,
                tick: spec.tick,
                first_tick: t0 + spec.tick.mul_f64(i as f64 / n as f64),
            };
            let counters = p.counters.clone();
            let run = p.run(stream, rest, plan_rx.clone());
            tasks.spawn(async move {
                let result = run.await;
                if result.is_err() {
                    counters.cut_off.store(true, Ordering::Relaxed);
                }
                result
            });
        }
        Ok(Self {
            plan,
            pubs,
            recv,
            tasks,
            failure: None,
        })
    }

    pub fn set(&self, plan: Plan) {
        self.plan.send_replace(plan);
    }

    pub fn sent(&self) -> u64 {
        self.pubs
            .iter()
            .map(|p| p.sent.load(Ordering::Relaxed))
            .sum()
    }

    pub fn acked(&self) -> u64 {
        self.pubs
            .iter()
            .map(|p| p.acked.load(Ordering::Relaxed))
            .sum()
    }

    pub fn received(&self) -> u64 {
        self.recv.received.load(Ordering::Relaxed)
    }

    /// Messages received from publisher `i` (0 unless the receiver counts per publisher).
    pub fn received_from(&self, i: usize) -> u64 {
        self.recv
            .per_publisher
            .get(i)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The first task failure (a connection the server closed, a malformed packet), if any.
    pub fn check(&mut self) -> anyhow::Result<()> {
        if self.failure.is_none() {
            if let Some(done) = self.tasks.try_join_next() {
                self.failure = Some(match done {
                    Ok(Ok(())) => anyhow!("a load task ended early"),
                    Ok(Err(e)) => e,
                    Err(e) => anyhow!("a load task panicked: {e}"),
                });
            }
        }
        match &self.failure {
            Some(e) => Err(anyhow!("{e:#}")),
            None => Ok(()),
        }
    }

    /// After [`Plan::Idle`]: waits until `done(sent, acked, received)` holds, or until nothing has moved
    /// for `quiet`; true when `done` held.
    pub async fn drain(&mut self, quiet: Duration, done: impl Fn(u64, u64, u64) -> bool) -> bool {
        let mut last = (self.sent(), self.acked(), self.received());
        let mut still_since = Instant::now();
        loop {
            let now = (self.sent(), self.acked(), self.received());
            if done(now.0, now.1, now.2) {
                return true;
            }
            if self.check().is_err() {
                return false;
            }
            if now != last {
                last = now;
                still_since = Instant::now();
            } else if still_since.elapsed() >= quiet {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes every connection.
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Runs a receiver, flagging its end (for loads that outlive a failed task, such as B13's).
async fn flag_end(
    run: impl std::future::Future<Output = anyhow::Result<()>>,
    recv: Arc<RecvCounters>,
) -> anyhow::Result<()> {
    let result = run.await;
    recv.ended.store(true, Ordering::Relaxed);
    result
}

struct Publisher {
    index: usize,
    topic: Bytes,
    qos: u8,
    rate: Option<f64>,
    counters: Arc<PubCounters>,
    /// Fraction of a message each publisher is ahead, so that they do not all send on the same tick.
    phase: f64,
    tick: Duration,
    first_tick: Instant,
}

impl Publisher {
    async fn run(
        self,
        stream: TcpStream,
        mut inbuf: BytesMut,
        mut plan_rx: watch::Receiver<Plan>,
    ) -> anyhow::Result<()> {
        let (mut rd, mut wr) = stream.into_split();
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut plan = *plan_rx.borrow_and_update();
        let mut seq: u64 = 0;
        let mut acked: u64 = 0;
        let mut sent_in_plan: u64 = 0;
        let mut ticker = tokio::time::interval_at(self.first_tick.into(), self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let open = |p: &Plan| matches!(p, Plan::Open { .. });
        // The plan may have been set before this task first ran.
        if let Plan::Closed { window } = plan {
            self.send(&mut wr, &mut out, &mut seq, window).await?;
        }
        loop {
            tokio::select! {
                changed = plan_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    plan = *plan_rx.borrow_and_update();
                    sent_in_plan = 0;
                    if let Plan::Closed { window } = plan {
                        let room = window.saturating_sub(seq - acked);
                        self.send(&mut wr, &mut out, &mut seq, room).await?;
                    }
                }
                read = rd.read_buf(&mut inbuf) => {
                    if read.context("reading from the server")? == 0 {
                        bail!("publisher {}: the server closed the connection", self.index);
                    }
                    let mut acks = 0u64;
                    while let Some(packet) = wire::next_packet(&mut inbuf)? {
                        match packet {
                            Packet::PubAck(_) => acks += 1,
                            Packet::PingResp => {}
                            other => bail!("publisher {}: unexpected {other:?}", self.index),
                        }
                    }
                    if acks > 0 {
                        acked += acks;
                        self.counters.acked.fetch_add(acks, Ordering::Relaxed);
                        if let Plan::Closed { window } = plan {
                            let room = window.saturating_sub(seq - acked);
                            self.send(&mut wr, &mut out, &mut seq, room).await?;
                        }
                    }
                }
                _ = ticker.tick(), if open(&plan) => {
                    if let Plan::Open { per_publisher, start } = plan {
                        let elapsed = start.elapsed().as_secs_f64();
                        let rate = self.rate.unwrap_or(per_publisher);
                        let due = (elapsed * rate + self.phase).floor() as u64;
                        let n = due.saturating_sub(sent_in_plan);
                        sent_in_plan = sent_in_plan.max(due);
                        self.send(&mut wr, &mut out, &mut seq, n).await?;
                    }
                }
            }
        }
    }

    async fn send(
        &self,
        wr: &mut tokio::net::tcp::OwnedWriteHalf,
        out: &mut BytesMut,
        seq: &mut u64,
        n: u64,
    ) -> anyhow::Result<()> {
        if n == 0 {
            return Ok(());
        }
        out.clear();
        let now = wire::now_ns();
        for _ in 0..n {
            let stamp = Stamp {
                sent_ns: now,
                publisher: u32::try_from(self.index).unwrap_or(u32::MAX),
                seq: *seq,
            };
            wire::put_publish(
                out,
                &self.topic,
                self.qos,
                wire::packet_id(*seq),
                &stamp.encode(),
            );
            *seq += 1;
        }
        wr.write_all(out)
            .await
            .with_context(|| format!("publisher {}: writing", self.index))?;
        self.counters.sent.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

async fn mqtt_receiver(
    mut stream: TcpStream,
    mut inbuf: BytesMut,
    recv: Arc<RecvCounters>,
) -> anyhow::Result<()> {
    let mut acks = BytesMut::with_capacity(16 * 1024);
    loop {
        acks.clear();
        let now = wire::now_ns();
        while let Some(packet) = wire::next_packet(&mut inbuf)? {
            match packet {
                Packet::Publish(p) => {
                    recv.handle(&p.payload, now);
                    if p.pkid != 0 {
                        wire::put_puback(&mut acks, p.pkid);
                    }
                }
                Packet::PingResp => {}
                other => bail!("subscriber: unexpected {other:?}"),
            }
        }
        if !acks.is_empty() {
            stream.write_all(&acks).await?;
        }
        if stream.read_buf(&mut inbuf).await? == 0 {
            bail!("subscriber: the server closed the connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_counts_missing_and_duplicates() {
        let mut s = Seen::new(2);
        for seq in [0, 1, 2, 4, 130] {
            assert!(s.mark(0, seq));
        }
        assert!(!s.mark(0, 4), "a duplicate");
        assert_eq!(s.duplicates, 1);
        assert!(!s.mark(5, 0), "unknown publisher");
        assert_eq!(s.missing(0, 5), 1, "3 is missing");
        assert_eq!(s.missing(0, 131), 131 - 5);
        assert_eq!(s.missing(1, 10), 10);
        assert_eq!(s.missing(7, 3), 3);
        assert!(
            s.contains(0, 130) && !s.contains(0, 3) && !s.contains(0, 999) && !s.contains(9, 0)
        );
    }

    #[test]
    fn the_receiver_counts_stamped_payloads_only() {
        let r = RecvCounters {
            seen: Some(Mutex::new(Seen::new(1))),
            ..RecvCounters::default()
        };
        r.record.store(true, Ordering::Relaxed);
        let p = Stamp {
            sent_ns: 1_000_000,
            publisher: 0,
            seq: 0,
        }
        .encode();
        r.handle(&p, 3_500_000);
        r.handle(&p, 3_600_000);
        r.handle(b"hello", 3_600_000);
        assert_eq!(
            r.received.load(Ordering::Relaxed),
            1,
            "duplicate not counted"
        );
        assert_eq!(r.foreign.load(Ordering::Relaxed), 1);
        assert_eq!(r.take_latencies(), vec![2500]);
    }
}
