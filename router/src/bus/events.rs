//! `event/T` on the bus: the tenant's durable JetStream consumer shared by all routers, pulled as far
//! as this router's consumers have credit, and acknowledged with their outcomes.

use std::collections::HashMap;
use std::time::Duration;

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
        let mut held: HashMap<u64, jetstream::Message> = HashMap::new();
        let mut next = 0u64;
        let settle =
            |held: &mut HashMap<u64, jetstream::Message>, id: u64, state: DeliveryState| {
                let msg = held.remove(&id)?;
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
                                held.insert(next, msg);
                            }
                            Routed::NoConsumer => ack(&msg, AckKind::Nak(None)).await,
                        }
                    }
                }
            }
        }
        // Outcomes already on their way are passed on; the rest come back after the ack wait.
        while let Ok((id, state)) = outcomes.try_recv() {
            if let Some((msg, kind)) = settle(&mut held, id, state) {
                ack(&msg, kind).await;
            }
        }
        for (_, msg) in held {
            ack(&msg, AckKind::Nak(None)).await;
        }
        Ok(())
    }
}

async fn ack(msg: &jetstream::Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        // The event comes back after the ack wait: at least once.
        tracing::debug!(error = %e, "cannot acknowledge an event");
    }
}
