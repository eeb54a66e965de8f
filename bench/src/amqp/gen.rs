//! B4's load generator: one sender connection and one receiver connection (fe2o3-amqp client), the
//! same for every broker. The sender sends as fast as link credit allows; the receiver grants `credit`
//! (refilled by the library as it goes) and accepts every message. Each 12-byte body carries a sequence
//! number and the send time, so the receiver measures latency exactly.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Data, Message, Outcome, Properties};
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::Sender;

use super::client::{Client, Consumer, Login};
use crate::load::percentile;

/// How the sender settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `snd-settle-mode settled`: fire and forget (at most once).
    Presettled,
    /// `snd-settle-mode unsettled`, `rcv-settle-mode first`: every message waits for its outcome;
    /// up to `credit` in flight (at least once).
    Unsettled,
}

impl Mode {
    pub fn all() -> Vec<Mode> {
        vec![Mode::Presettled, Mode::Unsettled]
    }

    pub fn label(self) -> &'static str {
        match self {
            Mode::Presettled => "presettled",
            Mode::Unsettled => "unsettled",
        }
    }
}

/// One side of the link.
#[derive(Debug, Clone)]
pub struct End {
    pub addr: SocketAddr,
    pub login: Login,
    pub address: String,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub sender: End,
    pub receiver: End,
    pub mode: Mode,
    pub credit: u32,
    pub body: usize,
    /// Application properties every message carries (`device_id`, `reg_assertion`).
    pub properties: Vec<(String, String)>,
    pub warmup: Duration,
    pub duration: Duration,
}

/// The 12-byte body: sequence number and send time (ns since `base`), padded or cut to `len`.
pub fn encode_body(seq: u32, sent_ns: u64, len: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(len.max(12));
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&sent_ns.to_le_bytes());
    b.resize(len.max(12), 0);
    b
}

/// The send time of a body made by [`encode_body`].
pub fn decode_sent_ns(body: &[u8]) -> Option<u64> {
    let stamp: [u8; 8] = body.get(4..12)?.try_into().ok()?;
    Some(u64::from_le_bytes(stamp))
}

/// What one run saw.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub sent: u64,
    pub accepted: u64,
    pub released: u64,
    pub rejected: u64,
    /// Messages received in the window.
    pub received_window: u64,
    /// Messages received in all.
    pub received_total: u64,
    /// Messages that should have arrived and did not (presettled: sent; unsettled: accepted).
    pub lost: u64,
    pub window: Duration,
    /// Send → receive latencies of the messages received in the window, µs, sorted.
    pub latencies_us: Vec<u32>,
    pub first_error: Option<String>,
}

impl Counts {
    pub fn rate(&self) -> f64 {
        self.received_window as f64 / self.window.as_secs_f64().max(1e-9)
    }

    pub fn latency_ms(&self, q: f64) -> f64 {
        f64::from(percentile(&self.latencies_us, q)) / 1000.0
    }

    /// Transport errors, rejections and losses: what voids the rate.
    pub fn errors(&self) -> u64 {
        self.rejected + self.lost + u64::from(self.first_error.is_some())
    }
}

#[derive(Default)]
struct Window {
    received: u64,
    latencies_us: Vec<u32>,
}

/// A run under way: the caller samples CPU time at the window's edges.
pub struct Running {
    consumer: Consumer,
    receiver: Client,
    sender: tokio::task::JoinHandle<anyhow::Result<SendTally>>,
    window: Arc<Mutex<Window>>,
    t0: Instant,
    t1: Instant,
    spec: Spec,
}

#[derive(Default)]
struct SendTally {
    sent: u64,
    accepted: u64,
    released: u64,
    rejected: u64,
    first_error: Option<String>,
}

/// Connects both ends, attaches, and starts sending: warm-up, then the window.
pub async fn start(spec: Spec) -> anyhow::Result<Running> {
    let base = Instant::now();
    let window = Arc::new(Mutex::new(Window::default()));
    let mut receiver = Client::open(
        spec.receiver.addr,
        &spec.receiver.login,
        "ferry-bench-b4-rx",
    )
    .await?;
    let t0 = Instant::now() + spec.warmup;
    let t1 = t0 + spec.duration;
    let w = window.clone();
    let consumer = Consumer::start(
        &mut receiver,
        &spec.receiver.address,
        spec.credit,
        move |body, now| {
            if now < t0 || now > t1 {
                return;
            }
            let mut w = w.lock().unwrap_or_else(PoisonError::into_inner);
            w.received += 1;
            if let Some(sent) = decode_sent_ns(body) {
                let now_ns = u64::try_from(now.duration_since(base).as_nanos()).unwrap_or(u64::MAX);
                let us = now_ns.saturating_sub(sent) / 1000;
                w.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
        },
    )
    .await?;
    let mut client =
        Client::open(spec.sender.addr, &spec.sender.login, "ferry-bench-b4-tx").await?;
    let settle = match spec.mode {
        Mode::Presettled => SenderSettleMode::Settled,
        Mode::Unsettled => SenderSettleMode::Unsettled,
    };
    let sender = Sender::builder()
        .name("ferry-bench-b4-tx")
        .target(spec.sender.address.clone())
        .sender_settle_mode(settle)
        .attach(&mut client.session)
        .await
        .with_context(|| format!("attaching a sender to {}", spec.sender.address))?;
    let task = tokio::spawn(send_loop(client, sender, spec.clone(), base, t1));
    Ok(Running {
        consumer,
        receiver,
        sender: task,
        window,
        t0,
        t1,
        spec,
    })
}

fn message(spec: &Spec, seq: u32, base: Instant) -> Message<Data> {
    let sent = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let mut props = ApplicationProperties::builder();
    for (k, v) in &spec.properties {
        props = props.insert(k.as_str(), v.as_str());
    }
    Message::builder()
        .properties(
            Properties::builder()
                .content_type("application/octet-stream")
                .build(),
        )
        .application_properties(props.build())
        .data(Binary::from(encode_body(seq, sent, spec.body)))
        .build()
}

async fn send_loop(
    client: Client,
    mut sender: Sender,
    spec: Spec,
    base: Instant,
    t1: Instant,
) -> anyhow::Result<SendTally> {
    let mut tally = SendTally::default();
    let mut in_flight = VecDeque::new();
    let window = spec.credit.max(1) as usize;
    let mut seq = 0u32;
    let tally_outcome = |t: &mut SendTally, o: Result<Outcome, fe2o3_amqp::link::SendError>| match o
    {
        Ok(Outcome::Accepted(_)) => t.accepted += 1,
        Ok(Outcome::Released(_)) | Ok(Outcome::Modified(_)) => t.released += 1,
        Ok(other) => {
            t.rejected += 1;
            if t.first_error.is_none() {
                t.first_error = Some(format!("outcome {other:?}"));
            }
        }
        Err(e) => {
            t.rejected += 1;
            if t.first_error.is_none() {
                t.first_error = Some(format!("send: {e}"));
            }
        }
    };
    while Instant::now() < t1 {
        let msg = message(&spec, seq, base);
        seq = seq.wrapping_add(1);
        match spec.mode {
            Mode::Presettled => {
                let sendable = Sendable::builder().message(msg).settled(true).build();
                match sender.send(sendable).await {
                    Ok(_) => tally.sent += 1,
                    Err(e) => {
                        tally.first_error = Some(format!("send: {e}"));
                        break;
                    }
                }
            }
            Mode::Unsettled => {
                match sender.send_batchable(msg).await {
                    Ok(fut) => {
                        tally.sent += 1;
                        in_flight.push_back(fut);
                    }
                    Err(e) => {
                        tally.first_error = Some(format!("send: {e}"));
                        break;
                    }
                }
                while in_flight.len() >= window {
                    if let Some(fut) = in_flight.pop_front() {
                        let o = fut.await;
                        tally_outcome(&mut tally, o);
                    }
                }
            }
        }
    }
    // Every outcome still due, within reason.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while let Some(fut) = in_flight.pop_front() {
        match tokio::time::timeout_at(deadline, fut).await {
            Ok(o) => tally_outcome(&mut tally, o),
            Err(_) => {
                tally.rejected += 1 + in_flight.len() as u64;
                tally
                    .first_error
                    .get_or_insert_with(|| "outcomes never came (15 s)".to_owned());
                break;
            }
        }
    }
    let _ = sender.close().await;
    client.close().await;
    Ok(tally)
}

impl Running {
    pub async fn window_start(&self) {
        tokio::time::sleep_until(self.t0.into()).await;
    }

    pub async fn window_end(&self) {
        tokio::time::sleep_until(self.t1.into()).await;
    }

    /// Waits for the sender, then for the receiver to catch up; counts what never came.
    pub async fn finish(self) -> anyhow::Result<Counts> {
        let tally = self.sender.await.context("the sender task")??;
        let expected = match self.spec.mode {
            Mode::Presettled => tally.sent,
            Mode::Unsettled => tally.accepted,
        };
        let received_total = self
            .consumer
            .wait_for(expected, Duration::from_secs(5))
            .await;
        let consumer_error = self.consumer.stop().await;
        self.receiver.close().await;
        let w = std::mem::take(&mut *self.window.lock().unwrap_or_else(PoisonError::into_inner));
        let mut latencies_us = w.latencies_us;
        latencies_us.sort_unstable();
        Ok(Counts {
            sent: tally.sent,
            accepted: tally.accepted,
            released: tally.released,
            rejected: tally.rejected,
            received_window: w.received,
            received_total,
            lost: expected.saturating_sub(received_total),
            window: self.t1.duration_since(self.t0),
            latencies_us,
            first_error: tally.first_error.or(consumer_error),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_sequence_and_stamp_in_twelve_bytes() {
        let b = encode_body(7, 123_456_789_012, 12);
        assert_eq!(b.len(), 12);
        assert_eq!(&b[..4], &7u32.to_le_bytes());
        assert_eq!(decode_sent_ns(&b), Some(123_456_789_012));
        assert_eq!(encode_body(1, 2, 32).len(), 32, "padded to the asked size");
        assert_eq!(
            encode_body(1, 2, 4).len(),
            12,
            "never shorter than the stamp"
        );
        assert_eq!(decode_sent_ns(b"short"), None);
    }

    #[test]
    fn losses_and_rejections_void_a_run() {
        let clean = Counts {
            received_window: 500,
            window: Duration::from_secs(5),
            ..Counts::default()
        };
        assert_eq!(clean.errors(), 0);
        assert!((clean.rate() - 100.0).abs() < 1e-9);
        let lossy = Counts {
            lost: 2,
            ..clean.clone()
        };
        assert_eq!(lossy.errors(), 2);
        let failed = Counts {
            first_error: Some("x".into()),
            ..clean
        };
        assert_eq!(failed.errors(), 1);
    }
}
