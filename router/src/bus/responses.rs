//! `command_response/T/R` on the bus: the subscription for one reply address, while the application's
//! receiver is attached here.

use std::collections::HashMap;

use ferry_core::ids::TenantId;
use ferry_nats::outcome::Outcome;
use ferry_nats::subjects;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};

use super::{outcome_of, Bus, SUBSCRIBED_WITHIN};
use crate::events::EventStore;
use crate::hub::{AddressRef, Origin, Remote, Routed};
use crate::metrics::Outcome as Counted;
use crate::Shared;

impl Bus {
    /// `command_response/T/R`: the subscription for this reply address.
    pub(super) async fn take_responses<S: EventStore>(
        &self,
        shared: &Shared<S>,
        addr: &AddressRef,
        stop: &Notify,
    ) -> anyhow::Result<()> {
        let Some(reply_id) = addr.sub().cloned() else {
            return Ok(());
        };
        let mut sub = self
            .client
            .subscribe(subjects::command_response(addr.tenant.as_str(), &reply_id))
            .await?;
        ferry_nats::round_trip(&self.client, SUBSCRIBED_WITHIN).await?;
        let (tx, mut outcomes) = mpsc::unbounded_channel();
        let mut waiting: HashMap<u64, async_nats::Subject> = HashMap::new();
        let mut next = 0u64;
        let counters = shared
            .hub
            .metrics
            .outcomes(&addr.tenant, "command_response");
        loop {
            tokio::select! {
                () = stop.notified() => break,
                Some((id, state)) = outcomes.recv() => {
                    if let Some(to) = waiting.remove(&id) {
                        self.reply(Some(to), &outcome_of(&state)).await;
                    }
                }
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    let size = msg.payload.len();
                    if !is_response_to(&msg.payload, &addr.tenant, &reply_id) {
                        let why = Outcome::Rejected {
                            condition: Some("amqp:decode-error".into()),
                            description: Some("to must be command_response/TENANT/REPLY_ID".into()),
                        };
                        self.reply(msg.reply, &why).await;
                        continue;
                    }
                    let settled = msg.reply.is_none();
                    let origin = match &msg.reply {
                        Some(to) => {
                            next += 1;
                            waiting.insert(next, to.clone());
                            Origin::Remote(Remote { tx: tx.clone(), id: next })
                        }
                        None => Origin::None,
                    };
                    let routed = shared.hub.route_response(
                        &addr.tenant,
                        &reply_id,
                        msg.payload.clone(),
                        settled,
                        origin,
                    );
                    match routed {
                        Routed::Forwarded => counters.count(Counted::Forwarded, size),
                        Routed::NoConsumer => {
                            counters.count(Counted::Released, size);
                            if !settled {
                                waiting.remove(&next);
                            }
                            self.reply(msg.reply, &Outcome::Released).await;
                        }
                    }
                }
            }
        }
        while let Ok((id, state)) = outcomes.try_recv() {
            if let Some(to) = waiting.remove(&id) {
                self.reply(Some(to), &outcome_of(&state)).await;
            }
        }
        Ok(())
    }
}

/// Whether `payload` is an AMQP message whose `to` is `command_response/tenant/reply`.
fn is_response_to(payload: &[u8], tenant: &TenantId, reply: &str) -> bool {
    crate::codec::parse_message(payload)
        .ok()
        .and_then(|v| v.properties().ok().flatten())
        .and_then(|p| p.to)
        .and_then(|to| match crate::auth::Address::parse(&to) {
            Some(crate::auth::Address::CommandResponse(t, r)) => Some(t == *tenant && *r == *reply),
            _ => None,
        })
        .unwrap_or(false)
}
