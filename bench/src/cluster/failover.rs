//! B12's load generator: QoS 1 publishers that survive the failures B12 injects, and consumers attached
//! through every router, all in the generator's process.
//!
//! - **Publishers** (the B1 generator's wire code and 32-byte stamped payloads): device `i` publishes
//!   QoS 1 telemetry (`t`) when `(i / 2)` is even, else QoS 1 events (`e`), so that each adapter carries
//!   both flows; it first connects to adapter `i % adapters`. Open loop (a due count every tick, as
//!   B1's) or closed loop (`window` unacknowledged). Every PUBACK is matched to its message by packet
//!   id, so the set of accepted messages is exact even when PUBACKs stop midway. **On disconnect** (the
//!   adapter closed the connection, a read or write failed) the device logs it, forgets its
//!   unacknowledged messages (no resend: a message without PUBACK was not accepted, and B12 counts
//!   only accepted ones), and reconnects at once with a clean session, first to the same adapter, then
//!   to the next ones in turn, every 100 ms until one takes it; messages due while it had no connection
//!   are not sent (a device without a connection does not buffer), so its schedule goes on from the
//!   time it is back.
//! - **Consumers**: for each flow (`telemetry/bench`, `event/bench`) one AMQP 1.0 receiver per router
//!   (fe2o3-amqp, `credit`, accepting each message), so that both routers take the tenant's telemetry
//!   (NATS queue group) and pull its events (shared durable consumer). A receiver whose connection
//!   fails reconnects every 200 ms, to its own router first and then to the others in turn. Every
//!   delivery is recorded with its receive and send time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::{Bytes, BytesMut};
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Receiver, Session};
use rumqttc::mqttbytes::v4::Packet;
use std::collections::VecDeque;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::timeline::{ConnEvent, Delivery};
use crate::mqtt::ferry;
use crate::mqtt::traffic::{Plan, Seen};
use crate::mqtt::wire::{self, Login, Stamp};
use crate::mqtt::Flow;

/// The flow device `i` publishes.
pub fn flow_of(i: usize) -> Flow {
    if (i / 2) % 2 == 0 {
        Flow::Telemetry
    } else {
        Flow::Events
    }
}

/// One device's state, shared with the scenario.
#[derive(Debug)]
pub struct Device {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// Sequence numbers PUBACKed (publisher 0 of a one-publisher [`Seen`]).
    pub acked_seqs: Mutex<Seen>,
    pub log: Mutex<Vec<ConnEvent>>,
}

impl Device {
    fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_seqs: Mutex::new(Seen::new(1)),
            log: Mutex::new(Vec::new()),
        }
    }

    fn note(&self, e: ConnEvent) {
        if let Ok(mut l) = self.log.lock() {
            l.push(e);
        }
    }
}

/// What the consumers saw.
#[derive(Debug)]
pub struct Consumed {
    pub deliveries: Mutex<Vec<Delivery>>,
    pub seen: Mutex<Seen>,
    pub foreign: AtomicU64,
    /// (receive time, consumer, router index, what happened), for the report.
    pub log: Mutex<Vec<(u64, String, usize, String)>>,
}

/// Where and what.
#[derive(Debug, Clone)]
pub struct FailoverSpec {
    pub adapters: Vec<SocketAddr>,
    pub routers: Vec<SocketAddr>,
    pub publishers: usize,
    pub tick: Duration,
    pub credit: u32,
}

/// The running load.
pub struct Failover {
    plan: watch::Sender<Plan>,
    pub devices: Vec<Arc<Device>>,
    pub consumed: Arc<Consumed>,
    stop: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

impl Failover {
    /// Attaches the consumers, then connects every device (all idle).
    pub async fn start(spec: &FailoverSpec) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !spec.adapters.is_empty() && !spec.routers.is_empty(),
            "no adapters or routers"
        );
        let consumed = Arc::new(Consumed {
            deliveries: Mutex::new(Vec::with_capacity(1 << 20)),
            seen: Mutex::new(Seen::new(spec.publishers)),
            foreign: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for address in [
            format!("telemetry/{}", ferry::TENANT),
            format!("event/{}", ferry::TENANT),
        ] {
            for home in 0..spec.routers.len() {
                // The first attach is awaited, so that the load starts with every consumer in place.
                let first = AmqpConsumer::open(spec.routers[home], &address, spec.credit)
                    .await
                    .with_context(|| format!("attaching {address} at router {}", home + 1))?;
                let c = ConsumerTask {
                    name: format!("{address}@router-{}", home + 1),
                    address: address.clone(),
                    routers: spec.routers.clone(),
                    home,
                    credit: spec.credit,
                    consumed: consumed.clone(),
                    stop: stop.clone(),
                };
                tasks.spawn(c.run(first));
            }
        }
        let (plan, plan_rx) = watch::channel(Plan::Idle);
        let t0 = Instant::now();
        let n = spec.publishers;
        let mut devices = Vec::with_capacity(n);
        for i in 0..n {
            let device = Arc::new(Device::new());
            devices.push(device.clone());
            let p = Publisher {
                index: i,
                topic: Bytes::from_static(match flow_of(i) {
                    Flow::Telemetry => b"t",
                    Flow::Events => b"e",
                }),
                login: Login {
                    client_id: format!("dev-{i}"),
                    username: format!("a{i}@{}", ferry::TENANT),
                    password: ferry::password(i),
                    keep_alive_secs: 60,
                    clean_session: true,
                },
                adapters: spec.adapters.clone(),
                adapter: i % spec.adapters.len(),
                device,
                phase: i as f64 / n.max(1) as f64,
                tick: spec.tick,
                first_tick: t0 + spec.tick.mul_f64(i as f64 / n.max(1) as f64),
                stop: stop.clone(),
            };
            tasks.spawn(p.run(plan_rx.clone()));
        }
        let this = Self {
            plan,
            devices,
            consumed,
            stop,
            tasks,
        };
        // Every device connected once before the load starts.
        let deadline = Instant::now() + Duration::from_secs(60);
        while this.connected() < n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {n} devices connected within 60 s",
                this.connected()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(this)
    }

    fn connected(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| {
                d.log
                    .lock()
                    .is_ok_and(|l| matches!(l.last(), Some(ConnEvent::Connected { .. })))
            })
            .count()
    }

    pub fn set(&self, plan: Plan) {
        self.plan.send_replace(plan);
    }

    pub fn sent(&self) -> u64 {
        self.devices
            .iter()
            .map(|d| d.sent.load(Ordering::Relaxed))
            .sum()
    }

    pub fn acked(&self) -> u64 {
        self.devices
            .iter()
            .map(|d| d.acked.load(Ordering::Relaxed))
            .sum()
    }

    /// Distinct messages received.
    pub fn received(&self) -> u64 {
        self.consumed
            .deliveries
            .lock()
            .map_or(0, |d| d.len() as u64)
    }

    /// Stops every task.
    pub async fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

struct Publisher {
    index: usize,
    topic: Bytes,
    login: Login,
    adapters: Vec<SocketAddr>,
    adapter: usize,
    device: Arc<Device>,
    phase: f64,
    tick: Duration,
    first_tick: Instant,
    stop: Arc<AtomicBool>,
}

/// How far the open-loop schedule has got, kept across reconnects.
struct Schedule {
    plan: Plan,
    sent_in_plan: u64,
    seq: u64,
}

impl Publisher {
    async fn run(mut self, mut plan_rx: watch::Receiver<Plan>) {
        let mut sched = Schedule {
            plan: *plan_rx.borrow_and_update(),
            sent_in_plan: 0,
            seq: 0,
        };
        while !self.stop.load(Ordering::Relaxed) {
            let Some((stream, rest)) = self.connect().await else {
                return;
            };
            self.device.note(ConnEvent::Connected {
                at_ns: wire::now_ns(),
                adapter: self.adapter,
            });
            // Messages due while away are skipped: the schedule goes on from now.
            if let Plan::Open {
                per_publisher,
                start,
            } = sched.plan
            {
                let due = (start.elapsed().as_secs_f64() * per_publisher + self.phase).floor();
                sched.sent_in_plan = sched.sent_in_plan.max(due as u64);
            }
            let reason = match self.session(stream, rest, &mut plan_rx, &mut sched).await {
                Ok(()) => return,
                Err(e) => format!("{e:#}"),
            };
            self.device.note(ConnEvent::Disconnected {
                at_ns: wire::now_ns(),
                adapter: self.adapter,
                reason,
            });
        }
    }

    /// Connects to the current adapter, else the next ones in turn, every 100 ms; `None` when stopped.
    async fn connect(&mut self) -> Option<(TcpStream, BytesMut)> {
        loop {
            for k in 0..self.adapters.len() {
                let a = (self.adapter + k) % self.adapters.len();
                let mut rest = BytesMut::with_capacity(4096);
                let attempt = async {
                    let mut s = wire::dial(self.adapters[a], None).await?;
                    wire::handshake(&mut s, &self.login, &mut rest, Duration::from_secs(5))
                        .await
                        .map_err(|e| anyhow!("{e}"))?;
                    anyhow::Ok(s)
                };
                if let Ok(s) = attempt.await {
                    self.adapter = a;
                    return Some((s, rest));
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One connection's life; an error ends it.
    async fn session(
        &self,
        stream: TcpStream,
        mut inbuf: BytesMut,
        plan_rx: &mut watch::Receiver<Plan>,
        sched: &mut Schedule,
    ) -> anyhow::Result<()> {
        let (mut rd, mut wr) = stream.into_split();
        let mut out = BytesMut::with_capacity(16 * 1024);
        // (packet id, seq) of the messages awaiting their PUBACK, in the order sent.
        let mut inflight: VecDeque<(u16, u64)> = VecDeque::new();
        let mut ticker = tokio::time::interval_at(self.first_tick.into(), self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if let Plan::Closed { window } = sched.plan {
            let room = window.saturating_sub(inflight.len() as u64);
            self.send(&mut wr, &mut out, sched, &mut inflight, room)
                .await?;
        }
        loop {
            tokio::select! {
                changed = plan_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    sched.plan = *plan_rx.borrow_and_update();
                    sched.sent_in_plan = 0;
                    if let Plan::Closed { window } = sched.plan {
                        let room = window.saturating_sub(inflight.len() as u64);
                        self.send(&mut wr, &mut out, sched, &mut inflight, room).await?;
                    }
                }
                read = rd.read_buf(&mut inbuf) => {
                    if read.context("reading")? == 0 {
                        bail!("the adapter closed the connection");
                    }
                    while let Some(packet) = wire::next_packet(&mut inbuf)? {
                        match packet {
                            Packet::PubAck(ack) => self.acked(ack.pkid, &mut inflight),
                            Packet::PingResp => {}
                            other => bail!("unexpected {other:?}"),
                        }
                    }
                    if let Plan::Closed { window } = sched.plan {
                        let room = window.saturating_sub(inflight.len() as u64);
                        self.send(&mut wr, &mut out, sched, &mut inflight, room).await?;
                    }
                }
                _ = ticker.tick(), if matches!(sched.plan, Plan::Open { .. }) => {
                    if let Plan::Open { per_publisher, start } = sched.plan {
                        let due = (start.elapsed().as_secs_f64() * per_publisher + self.phase).floor() as u64;
                        let n = due.saturating_sub(sched.sent_in_plan);
                        sched.sent_in_plan = sched.sent_in_plan.max(due);
                        self.send(&mut wr, &mut out, sched, &mut inflight, n).await?;
                    }
                }
            }
        }
    }

    fn acked(&self, pkid: u16, inflight: &mut VecDeque<(u16, u64)>) {
        // PUBACKs come in order; a message refused downstream gets none (and its connection ends).
        let Some(pos) = inflight.iter().position(|(p, _)| *p == pkid) else {
            return;
        };
        let Some((_, seq)) = inflight.remove(pos) else {
            return;
        };
        if let Ok(mut s) = self.device.acked_seqs.lock() {
            if s.mark(0, seq) {
                self.device.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn send(
        &self,
        wr: &mut tokio::net::tcp::OwnedWriteHalf,
        out: &mut BytesMut,
        sched: &mut Schedule,
        inflight: &mut VecDeque<(u16, u64)>,
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
                seq: sched.seq,
            };
            let pkid = wire::packet_id(sched.seq);
            wire::put_publish(out, &self.topic, 1, pkid, &stamp.encode());
            inflight.push_back((pkid, sched.seq));
            sched.seq += 1;
        }
        self.device.sent.fetch_add(n, Ordering::Relaxed);
        wr.write_all(out).await.context("writing")?;
        Ok(())
    }
}

struct ConsumerTask {
    name: String,
    address: String,
    routers: Vec<SocketAddr>,
    home: usize,
    credit: u32,
    consumed: Arc<Consumed>,
    stop: Arc<AtomicBool>,
}

impl ConsumerTask {
    async fn run(self, first: AmqpConsumer) {
        let mut current = Some((first, self.home));
        loop {
            if let Some((consumer, router)) = current.take() {
                self.note(router, "attached");
                let e = consumer.consume(&self.consumed).await;
                self.note(router, &format!("lost: {e:#}"));
            }
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            for k in 0..self.routers.len() {
                let r = (self.home + k) % self.routers.len();
                let open = AmqpConsumer::open(self.routers[r], &self.address, self.credit);
                if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), open).await {
                    current = Some((c, r));
                    break;
                }
            }
        }
    }

    fn note(&self, router: usize, what: &str) {
        if let Ok(mut l) = self.consumed.log.lock() {
            l.push((wire::now_ns(), self.name.clone(), router, what.to_owned()));
        }
    }
}

/// An AMQP 1.0 receiver with its connection and session.
struct AmqpConsumer {
    _conn: fe2o3_amqp::connection::ConnectionHandle<()>,
    _session: fe2o3_amqp::session::SessionHandle<()>,
    receiver: Receiver,
}

impl AmqpConsumer {
    async fn open(addr: SocketAddr, address: &str, credit: u32) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = Connection::builder()
            .container_id(format!("ferry-bench-b12-{}", wire::now_ns()))
            .sasl_profile(SaslProfile::Plain {
                username: ferry::APP_USER.to_owned(),
                password: ferry::APP_PASSWORD.to_owned(),
            })
            .open_with_stream(stream)
            .await?;
        let mut session = Session::builder()
            .incoming_window(100_000)
            .begin(&mut conn)
            .await?;
        let receiver = Receiver::builder()
            .name(format!("ferry-bench-{address}-{}", wire::now_ns()))
            .source(address)
            .credit_mode(CreditMode::Auto(credit))
            .attach(&mut session)
            .await?;
        Ok(Self {
            _conn: conn,
            _session: session,
            receiver,
        })
    }

    /// Receives and accepts until the link fails; returns why.
    async fn consume(mut self, consumed: &Consumed) -> anyhow::Error {
        loop {
            let delivery = match self.receiver.recv::<Body<Value>>().await {
                Ok(d) => d,
                Err(e) => return anyhow!("receiving: {e}"),
            };
            let now = wire::now_ns();
            let stamp = match delivery.body() {
                Body::Data(batch) => batch.iter().next().and_then(|d| Stamp::decode(&d.0)),
                _ => None,
            };
            match stamp {
                Some(s) => {
                    let fresh = consumed
                        .seen
                        .lock()
                        .is_ok_and(|mut seen| seen.mark(s.publisher as usize, s.seq));
                    if fresh {
                        if let Ok(mut d) = consumed.deliveries.lock() {
                            d.push(Delivery {
                                recv_ns: now,
                                sent_ns: s.sent_ns,
                                publisher: s.publisher,
                            });
                        }
                    }
                }
                None => {
                    consumed.foreign.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Err(e) = self.receiver.accept(&delivery).await {
                return anyhow!("accepting: {e}");
            }
        }
    }
}
