//! The handle of a command handed to an adapter, and how it is settled: through a bounded queue to the
//! task that owns the link ([`SETTLE_QUEUE`](super::SETTLE_QUEUE)), from any task, without touching the link.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition};
use fe2o3_amqp::types::messaging::{Accepted, DeliveryState, Rejected, Released};
use fe2o3_amqp::types::primitives::Symbol;
use ferry_core::ids::{DeviceId, TenantId};
use ferry_nats::outcome::Outcome;
use tokio::sync::mpsc;

use crate::downstream::nats::publish_now;

/// A command for one of this instance's devices. Settle it with [`Command::accept`],
/// [`Command::release`] or [`Command::reject`]; dropping it unsettled releases it (the application
/// may retry).
#[derive(Debug)]
pub struct Command {
    /// The tenant of the command's address.
    pub tenant: TenantId,
    /// The device the command is for (`to` = `command/TENANT/DEVICE`).
    pub device: DeviceId,
    /// The command name (AMQP `subject`).
    pub name: String,
    /// The command's body (empty when it has none).
    pub payload: Bytes,
    /// AMQP `content-type`.
    pub content_type: Option<String>,
    /// AMQP `message-id`, as text.
    pub message_id: Option<String>,
    /// AMQP `correlation-id`, as text.
    pub correlation_id: Option<String>,
    /// Where the response goes; `None` for a one-way command.
    pub reply_to: Option<String>,
    /// The gateway the router chose for the command (application property `via`): the device has no
    /// subscription of its own, and this gateway subscribed for all its devices.
    pub via: Option<DeviceId>,
    pub(in crate::downstream) settle: Option<Settle>,
}

/// How a command is settled: where it came from.
#[derive(Debug)]
pub(in crate::downstream) enum Settle {
    /// A delivery on the `command_internal` link (embedded mode).
    Link(LinkSettle),
    /// A NATS request (cluster mode).
    Nats(NatsSettle),
}

/// The reply to a command that came as a NATS request, and the slot it holds among the commands this
/// instance has unsettled.
pub(in crate::downstream) struct NatsSettle {
    pub(in crate::downstream) client: async_nats::Client,
    pub(in crate::downstream) reply: async_nats::Subject,
    pub(in crate::downstream) dropped: Arc<AtomicU64>,
    pub(in crate::downstream) _slot: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for NatsSettle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettle")
            .field("reply", &self.reply)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(in crate::downstream) struct LinkSettle {
    pub(super) tx: mpsc::Sender<Disposition>,
    /// Settlements dropped because the queue was full ([`CommandLink::dropped_settlements`]).
    pub(super) dropped: Arc<AtomicU64>,
    pub(super) generation: u64,
    pub(super) info: DeliveryInfo,
}

pub(super) struct Disposition {
    pub(super) generation: u64,
    pub(super) info: DeliveryInfo,
    pub(super) state: DeliveryState,
}

impl Command {
    /// A command that no router link waits for: settling it does nothing. For commands an adapter
    /// makes itself, and for tests of what adapters do with commands.
    pub fn unlinked(tenant: TenantId, device: DeviceId, name: impl Into<String>) -> Self {
        Command {
            tenant,
            device,
            name: name.into(),
            payload: Bytes::new(),
            content_type: None,
            message_id: None,
            correlation_id: None,
            reply_to: None,
            via: None,
            settle: None,
        }
    }

    /// The id a response carries: the command's correlation-id if it has one, else its message-id.
    pub fn response_correlation_id(&self) -> Option<&str> {
        self.correlation_id
            .as_deref()
            .or(self.message_id.as_deref())
    }

    /// Whether the application expects no response.
    pub fn is_one_way(&self) -> bool {
        self.reply_to.is_none()
    }

    /// Handed to the device: the application sees `accepted`.
    pub fn accept(mut self) {
        self.settle_with(DeliveryState::Accepted(Accepted {}));
    }

    /// Not delivered (device gone, no acknowledgement in time): `released`, the application may retry.
    pub fn release(mut self) {
        self.settle_with(DeliveryState::Released(Released {}));
    }

    /// Malformed or over a limit: `rejected` with `condition` (e.g. `amqp:resource-limit-exceeded`,
    /// `hono:bad-request`).
    pub fn reject(mut self, condition: &str, description: &str) {
        self.settle_with(rejected(condition, description));
    }

    fn settle_with(&mut self, state: DeliveryState) {
        match self.settle.take() {
            None => {}
            Some(Settle::Nats(s)) => settle_on_nats(s, &state),
            Some(Settle::Link(s)) => settle_on_link(s, state),
        }
    }
}

fn settle_on_link(s: LinkSettle, state: DeliveryState) {
    let disposition = Disposition {
        generation: s.generation,
        info: s.info,
        state,
    };
    match s.tx.try_send(disposition) {
        Ok(()) => {}
        // The link task is gone (connection lost); the router released the command then.
        Err(mpsc::error::TrySendError::Closed(_)) => {}
        // See [`SETTLE_QUEUE`]: the command stays unsettled until its link ends.
        Err(mpsc::error::TrySendError::Full(_)) => {
            s.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("command settlement queue full; settlement dropped");
        }
    }
}

/// Replies to a command with the device's outcome; called when the [`Command`] is settled or dropped.
fn settle_on_nats(s: NatsSettle, state: &DeliveryState) {
    let outcome = match state {
        DeliveryState::Accepted(_) => Outcome::Accepted,
        DeliveryState::Modified(_) => Outcome::Modified,
        DeliveryState::Rejected(r) => {
            let (condition, description) = match &r.error {
                Some(e) => (
                    crate::downstream::message::condition_name(&e.condition),
                    e.description.clone(),
                ),
                None => (None, None),
            };
            Outcome::Rejected {
                condition,
                description,
            }
        }
        _ => Outcome::Released,
    };
    if publish_now(&s.client, s.reply, None, outcome.encode()).is_err() {
        // The router's request times out, which it treats like `released`.
        s.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Command {
    fn drop(&mut self) {
        self.settle_with(DeliveryState::Released(Released {}));
    }
}

pub(super) fn rejected(condition: &str, description: &str) -> DeliveryState {
    let condition = AmqpError::try_from(condition)
        .map(ErrorCondition::AmqpError)
        .unwrap_or_else(|_| ErrorCondition::Custom(Symbol::from(condition)));
    DeliveryState::Rejected(Rejected {
        error: Some(definitions::Error::new(
            condition,
            Some(description.to_owned()),
            None,
        )),
    })
}
