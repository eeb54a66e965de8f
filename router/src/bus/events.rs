//! `event/T` on the bus: the tenant's durable JetStream consumer shared by all routers, pulled as far
//! as this router's consumers have credit, and acknowledged with their outcomes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use fe2o3_amqp_types::messaging::DeliveryState;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};

use super::Bus;
use crate::connection::check_device_message;
use crate::events::EventStore;
use crate::hub::{AddressRef, Origin, Remote, Routed};
use crate::metrics::Outcome as Counted;
use crate::Shared;

/// Most events one router pulls for a tenant in one request.
const EVENT_BATCH: usize = 256;

/// Most events a router holds unacknowledged for one tenant (all routers together:
/// the consumer's `max_ack_pending`).
const EVENT_MAX_ACK_PENDING: i64 = 10_000;

impl Bus {
    /// `event/T`: the tenant's shared durable consumer, pulled as far as this router's consumers of the
    /// tenant have credit.
    pub(super) async fn take_events<S: EventStore>(
        &self,
        shared: &Shared<S>,
        addr: &AddressRef,
        stop: &Notify,
    ) -> anyhow::Result<()> {
        let stream =
            ferry_nats::streams::open_event_stream(&self.js, addr.tenant.as_str(), self.replicas)
                .await?;
        let consumer = ferry_nats::streams::event_consumer(
            &stream,
            EVENT_MAX_ACK_PENDING,
            self.event_ack_wait,
        )
        .await?;
        let credit = shared.hub.credit_signal(addr);
        let (tx, mut outcomes) = mpsc::unbounded_channel::<(u64, DeliveryState)>();
        // Events handed to applications and not yet settled, with when they were taken (or last
        // reported in progress).
        let mut held: HashMap<u64, (Instant, jetstream::Message)> = HashMap::new();
        let mut next = 0u64;
        // While an application holds an event, JetStream is told it is in progress, so the ack wait
        // (short, so that a dead router's events come back soon) does not hand it to another router.
        let every = (self.event_ack_wait / 4).max(Duration::from_millis(250));
        let mut progress = tokio::time::interval(every);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let settle = |held: &mut HashMap<u64, (Instant, jetstream::Message)>,
                      id: u64,
                      state: DeliveryState| {
            let (_, msg) = held.remove(&id)?;
            let kind = match state {
                DeliveryState::Accepted(_) | DeliveryState::Rejected(_) => AckKind::Ack,
                _ => AckKind::Nak(None),
            };
            Some((msg, kind))
        };
        'outer: loop {
            let available = shared.hub.available_credit(addr);
            if available <= 0 || held.len() >= EVENT_BATCH * 4 {
                tokio::select! {
                    () = stop.notified() => break,
                    () = credit.notified() => {}
                    Some((id, state)) = outcomes.recv() => {
                        if let Some((msg, kind)) = settle(&mut held, id, state) {
                            ack(&msg, kind).await;
                        }
                    }
                    _ = progress.tick() => in_progress(&mut held, every).await,
                }
                continue;
            }
            let want = usize::try_from(available)
                .unwrap_or(EVENT_BATCH)
                .min(EVENT_BATCH);
            let mut batch = consumer
                .batch()
                .max_messages(want)
                .expires(Duration::from_secs(2))
                .messages()
                .await?;
            loop {
                tokio::select! {
                    () = stop.notified() => break 'outer,
                    Some((id, state)) = outcomes.recv() => {
                        if let Some((msg, kind)) = settle(&mut held, id, state) {
                            ack(&msg, kind).await;
                        }
                    }
                    _ = progress.tick() => in_progress(&mut held, every).await,
                    item = batch.next() => {
                        let Some(item) = item else { break };
                        let msg = match item {
                            Ok(m) => m,
                            Err(e) => {
                                tracing::debug!(error = %e, "event batch ended");
                                break;
                            }
                        };
                        let size = msg.payload.len();
                        let payload = match check_device_message(shared, addr, &msg.payload) {
                            Ok((p, _device)) => p,
                            Err(_) => {
                                // Not a valid device message: it will never be one.
                                addr.counters.count(Counted::Rejected, size);
                                ack(&msg, AckKind::Term).await;
                                continue;
                            }
                        };
                        next += 1;
                        let origin = Origin::Remote(Remote { tx: tx.clone(), id: next });
                        match shared.hub.route_remote(addr, payload, false, origin) {
                            Routed::Forwarded => {
                                addr.counters.count(Counted::Forwarded, size);
                                held.insert(next, (Instant::now(), msg));
                            }
                            Routed::NoConsumer => ack(&msg, AckKind::Nak(None)).await,
                        }
                    }
                }
            }
        }
        // Outcomes already on their way are passed on; the rest are handed back at once.
        while let Ok((id, state)) = outcomes.try_recv() {
            if let Some((msg, kind)) = settle(&mut held, id, state) {
                ack(&msg, kind).await;
            }
        }
        for (_, (_, msg)) in held {
            ack(&msg, AckKind::Nak(None)).await;
        }
        Ok(())
    }
}

/// Tells JetStream that the events held for at least `age` are still being worked on (their ack wait
/// starts again).
async fn in_progress(held: &mut HashMap<u64, (Instant, jetstream::Message)>, age: Duration) {
    let now = Instant::now();
    for (since, msg) in held.values_mut() {
        if now.duration_since(*since) >= age {
            ack(msg, AckKind::Progress).await;
            *since = now;
        }
    }
}

async fn ack(msg: &jetstream::Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        // The event comes back after the ack wait: at least once.
        tracing::debug!(error = %e, "cannot acknowledge an event");
    }
}
