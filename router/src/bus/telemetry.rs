//! `telemetry/T` on the bus: the tenant's queue subscription, and each message from it checked and
//! routed to this router's consumers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fe2o3_amqp_types::messaging::DeliveryState;
use ferry_nats::outcome::Outcome;
use ferry_nats::{headers, requests, subjects};
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};

use super::{outcome_of, Bus, SUBSCRIBED_WITHIN};
use crate::connection::check_device_message;
use crate::events::EventStore;
use crate::hub::{AddressRef, Origin, Remote, Routed};
use crate::metrics::Outcome as Counted;
use crate::Shared;

/// Requests waiting for an application's outcome: when they came (or last had progress reported), and
/// where the answer goes.
type Waiting = HashMap<u64, (Instant, async_nats::Subject)>;

/// A telemetry taker's requests in flight: where outcomes come back, what waits for one, the last id.
struct Held {
    tx: mpsc::UnboundedSender<(u64, DeliveryState)>,
    waiting: Waiting,
    next: u64,
}

impl Bus {
    /// `telemetry/T`: the tenant's queue subscription, held while this router's consumers have credit.
    ///
    /// When they have none left, the router leaves the queue group (what it had already been handed is
    /// released) and joins again when a consumer grants credit: NATS then hands the tenant's telemetry
    /// to the routers whose consumers can take it, and a device gets "busy" only when none can.
    pub(super) async fn take_telemetry<S: EventStore>(
        &self,
        shared: &Shared<S>,
        addr: &AddressRef,
        stop: &Notify,
    ) -> anyhow::Result<()> {
        let credit = shared.hub.credit_signal(addr);
        let (tx, mut outcomes) = mpsc::unbounded_channel::<(u64, DeliveryState)>();
        // Requests waiting for an application's outcome, with when they came (or were last reported
        // in progress): an adapter that hears nothing for a while sends the request again, taking
        // this router for dead (`ferry_nats::requests`).
        let mut held = Held {
            tx,
            waiting: HashMap::new(),
            next: 0,
        };
        let watched = self.watched.flag(&addr.tenant);
        let mut progress = tokio::time::interval(requests::PROGRESS_EVERY);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sub: Option<async_nats::Subscriber> = None;
        loop {
            let Some(current) = sub.as_mut() else {
                if shared.hub.available_credit(addr) > 0 {
                    let joined = self
                        .client
                        .queue_subscribe(
                            subjects::telemetry(addr.tenant.as_str()),
                            subjects::ROUTERS.to_owned(),
                        )
                        .await?;
                    // In place at the server before anything else: devices sending right after an
                    // application attached are not told "nobody consumes".
                    ferry_nats::round_trip(&self.client, SUBSCRIBED_WITHIN).await?;
                    sub = Some(joined);
                    continue;
                }
                tokio::select! {
                    () = stop.notified() => break,
                    () = credit.notified() => {}
                    _ = progress.tick() => self.in_progress(&mut held.waiting).await,
                    Some((id, state)) = outcomes.recv() => {
                        if let Some((_, to)) = held.waiting.remove(&id) {
                            self.reply(Some(to), &outcome_of(&state)).await;
                        }
                    }
                }
                continue;
            };
            tokio::select! {
                () = stop.notified() => break,
                _ = progress.tick() => self.in_progress(&mut held.waiting).await,
                Some((id, state)) = outcomes.recv() => {
                    if let Some((_, to)) = held.waiting.remove(&id) {
                        self.reply(Some(to), &outcome_of(&state)).await;
                    }
                }
                msg = current.next() => {
                    let Some(msg) = msg else { break };
                    let starved = self
                        .on_telemetry(shared, addr, msg, &mut held, &watched)
                        .await;
                    if starved && shared.hub.consumers(addr) > 0 {
                        // Consumers, but no credit: leave the group until they grant some.
                        if let Some(mut gone) = sub.take() {
                            let _ = gone.unsubscribe().await;
                            while let Ok(Some(m)) =
                                tokio::time::timeout(Duration::ZERO, gone.next()).await
                            {
                                let size = m.payload.len();
                                addr.counters.count(Counted::Released, size);
                                self.reply(m.reply, &Outcome::Released).await;
                            }
                        }
                    }
                }
            }
        }
        // What the consumers released on their way out is answered; the rest times out at the adapter.
        while let Ok((id, state)) = outcomes.try_recv() {
            if let Some((_, to)) = held.waiting.remove(&id) {
                self.reply(Some(to), &outcome_of(&state)).await;
            }
        }
        Ok(())
    }

    /// Reports progress on the requests that have waited at least [`requests::PROGRESS_EVERY`].
    async fn in_progress(&self, waiting: &mut Waiting) {
        let now = Instant::now();
        for (since, to) in waiting.values_mut() {
            if now.duration_since(*since) >= requests::PROGRESS_EVERY {
                *since = now;
                let sent = self
                    .client
                    .publish_with_headers(to.clone(), requests::progress_headers(), Bytes::new())
                    .await;
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "cannot report a request's progress");
                }
            }
        }
    }

    /// One telemetry message from NATS, checked and routed; true when the consumers have no credit left.
    async fn on_telemetry<S: EventStore>(
        &self,
        shared: &Shared<S>,
        addr: &AddressRef,
        msg: async_nats::Message,
        held: &mut Held,
        watched: &AtomicBool,
    ) -> bool {
        let size = msg.payload.len();
        let presettled = msg.reply.is_none()
            || msg
                .headers
                .as_ref()
                .is_some_and(|h| h.get(headers::PRESETTLED).is_some());
        let payload = match check_device_message(shared, addr, &msg.payload) {
            Ok((p, _device)) => p,
            Err(state) => {
                addr.counters.count(Counted::Rejected, size);
                self.reply(msg.reply, &outcome_of(&state)).await;
                return false;
            }
        };
        let origin = match (&msg.reply, presettled) {
            (Some(to), false) => {
                held.next += 1;
                held.waiting.insert(held.next, (Instant::now(), to.clone()));
                Origin::Remote(Remote {
                    tx: held.tx.clone(),
                    id: held.next,
                })
            }
            _ => Origin::None,
        };
        match shared
            .hub
            .route_telemetry_credit_left(addr, payload, presettled, origin)
        {
            (Routed::Forwarded, credit_left) => {
                addr.counters.count(Counted::Forwarded, size);
                // A console watches the tenant live: a copy of what was forwarded (`watched`).
                if watched.load(Ordering::Relaxed) {
                    let copy = self
                        .client
                        .publish(
                            subjects::tap_telemetry(addr.tenant.as_str()),
                            msg.payload.clone(),
                        )
                        .await;
                    if let Err(e) = copy {
                        tracing::debug!(error = %e, "cannot copy telemetry for the live view");
                    }
                }
                if presettled {
                    self.reply(msg.reply, &Outcome::Accepted).await;
                }
                // That may have been the last credit: leave before NATS hands over one more.
                !credit_left
            }
            (Routed::NoConsumer, _) => {
                addr.counters.count(Counted::Released, size);
                if !presettled {
                    held.waiting.remove(&held.next);
                }
                self.reply(msg.reply, &Outcome::Released).await;
                true
            }
        }
    }
}
