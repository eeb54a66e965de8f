//! Cluster mode: the router as a stateless AMQP 1.0 endpoint on NATS with JetStream (docs/cluster.md).
//!
//! Applications attach to a router exactly as in embedded mode, and everything the router does for them
//! goes through its [`Hub`](crate::hub) as before: consumers, credit, balancing, settlement. What changes
//! is where messages come from. The first consumer of an address on this router starts one task that
//! takes the address's messages from NATS and hands them to the hub as if a producer had sent them; the
//! last consumer's detach stops it. Outcomes travel back to that task ([`Origin::Remote`]), which answers
//! the adapter's request or acknowledges the event to JetStream:
//!
//! - `telemetry/T`: a queue subscription on `ferry.telemetry.T` (group `ferry-routers`), so that the
//!   tenant's consumers on all routers compete for its messages. A request (QoS 1) is answered with the
//!   application's outcome; a publish without reply (MQTT QoS 0) goes pre-settled; a request marked
//!   pre-settled (HTTP QoS 0) is answered `accepted` as soon as a consumer took it.
//! - `event/T`: the tenant's durable JetStream consumer shared by all routers, pulled only as far as
//!   this router's consumers have credit; acknowledged when the application accepts (or rejects, as in
//!   embedded mode: an event the application cannot process is not retried), handed back (`nak`) when it
//!   releases or modifies it; an event held by a router that dies comes back after the ack wait.
//! - `command_response/T/R`: a subscription on `ferry.command_response.T.R` while the application's
//!   receiver is attached here.
//! - Commands: the routes adapters keep in the key-value bucket [`ferry_nats::routes::BUCKET`] are
//!   mirrored into the hub's command table (the bucket is read in full at start, so a restarted router
//!   knows every route); each adapter instance named there gets a stand-in consumer on its
//!   `command_internal/INSTANCE` address that forwards commands as NATS requests to the instance and
//!   settles them with its answer. An instance that does not answer ("no responders") is gone: the
//!   command is released at once and the instance's routes are deleted.
//!
//! Every message from the bus passes the same checks as one from an adapter's link
//! ([`check_device_message`](crate::connection::check_device_message)): the registration assertion is
//! verified and stripped.
//!
//! Layout: this file holds the [`Bus`], its takers' bookkeeping and the outcomes' translation; one
//! module per address kind takes its messages (`telemetry`, `events`, `responses`); `commands` mirrors
//! the routes and forwards commands.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use fe2o3_amqp_types::definitions::ErrorCondition;
use fe2o3_amqp_types::messaging::DeliveryState;
use ferry_core::ids::TenantId;
use ferry_nats::outcome::Outcome;
use tokio::sync::Notify;

use crate::events::EventStore;
use crate::hub::{self, AddressRef, Kind};
use crate::Shared;

mod commands;
mod events;
mod mirror;
mod responses;
mod telemetry;
pub mod watched;

use commands::Instance;

/// How long a new subscription may take to be in place at the NATS server.
const SUBSCRIBED_WITHIN: Duration = Duration::from_secs(5);

/// The cluster bus as the router sees it; `None` in [`Shared::bus`] in embedded mode.
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    replicas: usize,
    event_ack_wait: Duration,
    /// The takers running for this router's addresses, with the number of consumers each serves.
    takers: Mutex<HashMap<TakerKey, Taker>>,
    /// The command-route bucket, once opened.
    routes: tokio::sync::OnceCell<kv::Store>,
    /// Adapter instances that have a stand-in consumer here (while they hold command routes).
    instances: Mutex<HashMap<String, Instance>>,
    /// Tenants a console watches live: their forwarded telemetry is copied for it.
    pub(crate) watched: Arc<watched::Watched>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TakerKey {
    Telemetry(TenantId),
    Event(TenantId),
    Response(TenantId, Arc<str>),
}

struct Taker {
    consumers: usize,
    stop: Arc<Notify>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Bus {
    /// The NATS client (the console's stats requests are answered on it).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Connects to NATS (the first connection must succeed; later losses are reconnected by the client).
    pub async fn connect(
        config: &ferry_nats::NatsConfig,
        name: &str,
        event_ack_wait: Duration,
    ) -> Result<Self, ferry_nats::Error> {
        let client = ferry_nats::connect(config, name).await?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            replicas: config.replicas,
            event_ack_wait,
            takers: Mutex::default(),
            routes: tokio::sync::OnceCell::new(),
            instances: Mutex::default(),
            watched: Arc::default(),
        })
    }

    /// The JetStream context (for the presence bucket).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Whether the connection to NATS is up (for readiness).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn key(addr: &AddressRef) -> Option<TakerKey> {
        match addr.kind {
            Kind::Telemetry => Some(TakerKey::Telemetry(addr.tenant.clone())),
            Kind::Event => Some(TakerKey::Event(addr.tenant.clone())),
            Kind::CommandResponse => addr
                .sub()
                .map(|reply| TakerKey::Response(addr.tenant.clone(), reply.clone())),
            Kind::Command | Kind::CommandInternal => None,
        }
    }

    /// An application's consumer attached at `addr` on this router: the first one starts taking the
    /// address's messages from NATS.
    pub fn consumer_attached<S: EventStore>(
        self: &Arc<Self>,
        shared: &Arc<Shared<S>>,
        addr: &AddressRef,
    ) {
        let Some(key) = Self::key(addr) else { return };
        let stop = {
            let mut takers = lock(&self.takers);
            let taker = takers.entry(key.clone()).or_insert_with(|| Taker {
                consumers: 0,
                stop: Arc::new(Notify::new()),
            });
            taker.consumers += 1;
            if taker.consumers > 1 {
                return;
            }
            taker.stop.clone()
        };
        let bus = self.clone();
        let shared = shared.clone();
        let addr = addr.clone();
        tokio::spawn(async move {
            let current = |bus: &Bus| {
                lock(&bus.takers)
                    .get(&key)
                    .is_some_and(|t| Arc::ptr_eq(&t.stop, &stop))
            };
            loop {
                let result = match &key {
                    TakerKey::Telemetry(_) => bus.take_telemetry(&shared, &addr, &stop).await,
                    TakerKey::Event(_) => bus.take_events(&shared, &addr, &stop).await,
                    TakerKey::Response(..) => bus.take_responses(&shared, &addr, &stop).await,
                };
                match result {
                    // Stopped: its last consumer left.
                    Ok(()) => break,
                    // NATS failed under it (a node went, a request timed out): again, for as long
                    // as the address has consumers here.
                    Err(e) => {
                        tracing::warn!(error = %e, address = ?key, "taking messages from NATS failed; retrying");
                        if !current(&bus) {
                            break;
                        }
                        tokio::select! {
                            () = stop.notified() => break,
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            }
        });
    }

    /// An application's consumer left `addr`: the last one stops the address's taker.
    pub fn consumer_detached(&self, addr: &AddressRef) {
        let Some(key) = Self::key(addr) else { return };
        let mut takers = lock(&self.takers);
        if let Some(taker) = takers.get_mut(&key) {
            taker.consumers = taker.consumers.saturating_sub(1);
            if taker.consumers == 0 {
                taker.stop.notify_one();
                takers.remove(&key);
            }
        }
    }

    async fn reply(&self, to: Option<async_nats::Subject>, outcome: &Outcome) {
        if let Some(to) = to {
            if let Err(e) = self.client.publish(to, outcome.encode()).await {
                tracing::debug!(error = %e, "cannot answer a NATS request");
            }
        }
    }
}

/// An AMQP outcome as a NATS answer.
fn outcome_of(state: &DeliveryState) -> Outcome {
    match state {
        DeliveryState::Accepted(_) => Outcome::Accepted,
        DeliveryState::Rejected(r) => {
            let (condition, description) = match &r.error {
                Some(e) => (condition_name(&e.condition), e.description.clone()),
                None => (None, None),
            };
            Outcome::Rejected {
                condition,
                description,
            }
        }
        DeliveryState::Modified(_) => Outcome::Modified,
        _ => Outcome::Released,
    }
}

fn condition_name(c: &ErrorCondition) -> Option<String> {
    match serde_amqp::to_value(c).ok()? {
        serde_amqp::Value::Symbol(s) => Some(s.0),
        _ => None,
    }
}

/// A NATS answer as an AMQP outcome.
fn delivery_state(o: Outcome) -> DeliveryState {
    use fe2o3_amqp_types::messaging::{Accepted, Modified, Rejected};
    match o {
        Outcome::Accepted => DeliveryState::Accepted(Accepted {}),
        Outcome::Released => hub::release(),
        Outcome::Modified => DeliveryState::Modified(Modified {
            delivery_failed: None,
            undeliverable_here: None,
            message_annotations: None,
        }),
        Outcome::Rejected {
            condition,
            description,
        } => DeliveryState::Rejected(Rejected {
            error: Some(fe2o3_amqp_types::definitions::Error::new(
                ErrorCondition::Custom(fe2o3_amqp_types::primitives::Symbol::from(
                    condition.unwrap_or_else(|| "amqp:internal-error".to_owned()),
                )),
                description,
                None,
            )),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_survive_the_trip_through_nats() {
        for o in [
            Outcome::Accepted,
            Outcome::Released,
            Outcome::Modified,
            Outcome::Rejected {
                condition: Some("amqp:precondition-failed".into()),
                description: Some("device disabled".into()),
            },
        ] {
            assert_eq!(outcome_of(&delivery_state(o.clone())), o);
        }
    }
}
