//! Producers and telemetry: how much credit a producer may hold (telemetry: what its consumers will take;
//! events: what the store may still hold), and telemetry routed straight to a consumer with credit.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::link::{deliver, ConnHandle, LinkId, Origin, Producer};
use super::{lock, AddressRef, Hub, Kind, Routed};
use crate::events::{EventStore, Limit, TenantEventLimits};

/// Credit of a telemetry producer while its address has no consumer: one message at a time, released on
/// arrival. Small, so that when a consumer attaches, few messages sent on this credit find it still
/// without credit of its own.
pub const NO_CONSUMER_CREDIT: u32 = 1;

impl<S: EventStore> Hub<S> {
    pub fn attach_producer(
        &self,
        addr: &AddressRef,
        conn: ConnHandle,
        link: LinkId,
        unsettled: bool,
    ) -> Arc<Producer> {
        if unsettled && addr.kind == Kind::Telemetry {
            lock(&addr.inner).unsettled_producers += 1;
        }
        Arc::new(Producer {
            conn,
            link,
            unsettled,
        })
    }

    /// How much credit a producer on `addr` may hold now (0: none; it is then remembered and woken when
    /// consumers grant credit). Telemetry is never buffered, so a telemetry producer may hold no more
    /// than the address's consumers will take: the sum of their credit. Several producers on one
    /// address can still over-commit it between two grants; what finds no consumer is released.
    ///
    /// An address without any consumer gives an `unsettled` producer [`NO_CONSUMER_CREDIT`]: its messages
    /// are released at once, so the adapter can tell "nobody consumes" (an immediate `released`: the
    /// device hears 503 at once) from "consumers are busy" (no credit: the message waits, and the
    /// device's PUBACK with it). Pre-settled (and mixed) producers get no credit then, as before: they
    /// would learn nothing from the drop.
    pub fn producer_credit_limit(&self, addr: &AddressRef, producer: &Arc<Producer>) -> u32 {
        match addr.kind {
            Kind::Telemetry => {
                let mut a = lock(&addr.inner);
                if a.consumers.is_empty() && producer.unsettled {
                    return NO_CONSUMER_CREDIT;
                }
                let available: i64 = a
                    .consumers
                    .iter()
                    .map(|c| c.usable_credit(self.max_queued_bytes))
                    .sum();
                if available > 0 {
                    u32::try_from(available).unwrap_or(u32::MAX)
                } else {
                    if !a.starved.iter().any(|p| Arc::ptr_eq(p, producer)) {
                        a.starved.push(producer.clone());
                    }
                    0
                }
            }
            // Events are stored whether or not anyone consumes; only the store's limits stop them. A
            // refused producer is woken when an event leaves the store (`wake_event_producers`).
            Kind::Event => {
                let mut a = lock(&addr.inner);
                let mut tenant = self.store.usage(&addr.tenant);
                tenant.events += a.appending;
                let disk_low = self
                    .disk
                    .as_ref()
                    .is_some_and(crate::events::DiskGuard::low);
                let own = match a.event_limits {
                    Some(own) => own,
                    // Woken when they are known (`set_tenant_event_limits`).
                    None if self.await_tenant_limits => {
                        if !a.starved.iter().any(|p| Arc::ptr_eq(p, producer)) {
                            a.starved.push(producer.clone());
                        }
                        return 0;
                    }
                    None => TenantEventLimits::default(),
                };
                let reached = if disk_low {
                    Some(Limit::Store)
                } else {
                    self.event_limits.reached(tenant, self.store.total(), own)
                };
                match reached {
                    None => u32::try_from(self.event_limits.room(tenant, own)).unwrap_or(u32::MAX),
                    Some(limit) => {
                        if limit == Limit::Store {
                            self.events_full.store(true, Ordering::Release);
                        }
                        if !a.starved.iter().any(|p| Arc::ptr_eq(p, producer)) {
                            a.starved.push(producer.clone());
                        }
                        0
                    }
                }
            }
            // Commands, responses and subscription changes are settled at once when they cannot be
            // delivered; the producer's window bounds what is in flight.
            Kind::Command | Kind::CommandResponse | Kind::CommandInternal => u32::MAX,
        }
    }

    pub fn detach_producer(&self, addr: &AddressRef, producer: &Arc<Producer>) {
        let mut a = lock(&addr.inner);
        a.starved.retain(|p| !Arc::ptr_eq(p, producer));
        if producer.unsettled && addr.kind == Kind::Telemetry {
            a.unsettled_producers = a.unsettled_producers.saturating_sub(1);
        }
    }

    /// Routes one telemetry message to a consumer with credit.
    pub fn route_telemetry(
        &self,
        addr: &AddressRef,
        payload: Bytes,
        settled: bool,
        origin: Origin,
    ) -> Routed {
        self.route_direct(addr, payload, settled, origin)
    }

    /// [`Hub::route_telemetry`] for the cluster bus's taker, which also needs to know whether `addr`'s
    /// consumers will take more after this message (at none it leaves NATS's queue group): answered
    /// from the same walk of the consumers, without a second lock.
    pub fn route_telemetry_credit_left(
        &self,
        addr: &AddressRef,
        payload: Bytes,
        settled: bool,
        origin: Origin,
    ) -> (Routed, bool) {
        let (picked, others) = lock(&addr.inner).pick_counting(self.max_queued_bytes, false);
        let Some(consumer) = picked else {
            return (Routed::NoConsumer, false);
        };
        deliver(&consumer, payload, settled, origin);
        // The chosen consumer's own credit is read after the delivery: its queued bytes may choke it.
        let left = others + consumer.usable_credit(self.max_queued_bytes);
        (Routed::Forwarded, left > 0)
    }

    /// Hands a message to a consumer of `addr` with credit; nothing is buffered.
    pub(super) fn route_direct(
        &self,
        addr: &AddressRef,
        payload: Bytes,
        settled: bool,
        origin: Origin,
    ) -> Routed {
        let picked = lock(&addr.inner).pick_counting(self.max_queued_bytes, settled);
        let Some(consumer) = picked.0 else {
            return Routed::NoConsumer;
        };
        deliver(&consumer, payload, settled, origin);
        Routed::Forwarded
    }
}
