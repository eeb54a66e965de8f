//! What a connection's links register at the hub, and the way the hub reaches a connection: its
//! [`ToConn`] channel, the bytes it holds ([`ConnHandle::queued_bytes`]), and where a delivery came from
//! ([`Origin`]) so that its settlement finds the way back.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use fe2o3_amqp_types::messaging::DeliveryState;
use tokio::sync::mpsc;

use super::AddressRef;
use crate::events::EventId;

/// A link, unique for the life of the process (handles and channels are reused; this is not).
pub type LinkId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh process-unique id for a connection or link.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// What the hub (or another connection) asks a connection task to do.
#[derive(Debug)]
pub enum ToConn {
    /// Send `payload` as a delivery on the outgoing link `link`.
    Deliver {
        link: LinkId,
        payload: Bytes,
        settled: bool,
        origin: Origin,
    },
    /// Settle the incoming delivery `delivery_id` (on session `channel`) with `state`.
    Outcome {
        channel: u16,
        delivery_id: u32,
        state: DeliveryState,
    },
    /// An incoming link may be given credit again (consumers have credit now).
    Wake { link: LinkId },
}

/// The way into a connection task. Its channel is unbounded, and bounded by accounting: see the module
/// docs of [`hub`](super).
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: u64,
    pub tx: mpsc::UnboundedSender<ToConn>,
    /// Bytes of deliveries handed to the connection and not yet written to its socket (each counted with
    /// [`DELIVERY_OVERHEAD`]). Past [`Hub::max_queued_bytes`] its consumers take nothing more, so a peer
    /// that stops reading makes the router hold a bounded amount, whatever credit it granted.
    pub queued_bytes: Arc<AtomicUsize>,
}

/// What a queued delivery costs beside its payload (the request, its origin, the frame header).
pub const DELIVERY_OVERHEAD: usize = 128;

/// Most deliveries a consumer may leave unsettled; past it, it takes nothing more until it settles some.
pub const MAX_UNSETTLED_PER_CONSUMER: i64 = 10_000;

impl ConnHandle {
    pub fn new(tx: mpsc::UnboundedSender<ToConn>) -> Self {
        Self {
            id: next_id(),
            tx,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The connection wrote (or dropped) `bytes` of what it was handed.
    pub fn written(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Sends a request; a connection that has gone ignores it (its cleanup already settled everything).
    pub fn send(&self, msg: ToConn) -> bool {
        self.tx.send(msg).is_ok()
    }
}

/// Where a delivery came from, so that its settlement can be relayed back.
#[derive(Debug, Clone)]
pub enum Origin {
    /// Pre-settled telemetry: nothing to relay.
    None,
    /// Unsettled telemetry (or a command): relay the consumer's outcome to the producer's delivery.
    Producer {
        conn: ConnHandle,
        channel: u16,
        delivery_id: u32,
    },
    /// A stored event: accepted removes it, anything else puts it back in the queue.
    Event { addr: AddressRef, id: EventId },
    /// A message that came from the cluster bus (NATS): the outcome goes to the task that took it, which
    /// answers the NATS request or acknowledges the JetStream message ([`crate::bus`]).
    Remote(Remote),
}

/// Where the outcome of a message from the bus goes: the task that took it, under the id it gave.
#[derive(Debug, Clone)]
pub struct Remote {
    pub tx: mpsc::UnboundedSender<(u64, DeliveryState)>,
    pub id: u64,
}

/// A consumer link's registration at an address.
#[derive(Debug)]
pub struct Consumer {
    pub conn: ConnHandle,
    pub link: LinkId,
    /// Deliveries the consumer will still take (its credit, minus what is on the way to it).
    pub(super) credit: AtomicI64,
    /// The most credit the consumer has granted at once (what it takes between two grants).
    pub(super) window: AtomicI64,
    /// Deliveries sent and not yet settled by the consumer: the balancing weight.
    pub(super) unsettled: AtomicI64,
    /// Deliveries handed to the consumer's connection task and not yet sent by it.
    pub(super) queued: AtomicI64,
}

impl Consumer {
    /// Deliveries on their way through the connection's channel.
    pub fn queued(&self) -> u32 {
        u32::try_from(self.queued.load(Ordering::Acquire).max(0)).unwrap_or(u32::MAX)
    }

    /// The connection took one delivery off its channel.
    pub fn dequeued(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the consumer may take more now: its connection is not holding too many bytes for it, and
    /// it has not left too many deliveries unsettled.
    pub fn choked(&self, max_queued_bytes: usize) -> bool {
        self.conn.queued_bytes.load(Ordering::Acquire) > max_queued_bytes
            || self.unsettled.load(Ordering::Relaxed) >= MAX_UNSETTLED_PER_CONSUMER
    }

    /// Its credit as producers and the picker should see it: none while choked.
    pub(super) fn usable_credit(&self, max_queued_bytes: usize) -> i64 {
        if self.choked(max_queued_bytes) {
            0
        } else {
            self.credit.load(Ordering::Acquire).max(0)
        }
    }

    pub(super) fn take_credit(&self) -> bool {
        let mut cur = self.credit.load(Ordering::Acquire);
        while cur > 0 {
            match self.credit.compare_exchange_weak(
                cur,
                cur - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }
}

/// An incoming (producer) link's registration at an address.
#[derive(Debug)]
pub struct Producer {
    pub conn: ConnHandle,
    pub link: LinkId,
    /// Its sender settle mode is `unsettled`: it wants an outcome for every message.
    pub unsettled: bool,
}

/// Hands a delivery to the consumer's connection, counting its bytes there.
pub(super) fn deliver(consumer: &Consumer, payload: Bytes, settled: bool, origin: Origin) {
    consumer
        .conn
        .queued_bytes
        .fetch_add(payload.len() + DELIVERY_OVERHEAD, Ordering::AcqRel);
    consumer.conn.send(ToConn::Deliver {
        link: consumer.link,
        payload,
        settled,
        origin,
    });
}

/// The `released` outcome.
pub fn release() -> DeliveryState {
    DeliveryState::Released(fe2o3_amqp_types::messaging::Released {})
}
