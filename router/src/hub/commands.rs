//! Command routing: adapter instances' subscriptions (per device, and gateways' for all their devices),
//! where a command goes, and command responses, held briefly for an application that has not granted
//! credit yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferry_core::ids::TenantId;

use super::link::{deliver, next_id, release, Origin};
use super::{lock, Address, AddressRef, Hub, Kind, Routed};
use crate::events::EventStore;

/// A command response held for an application's credit.
#[derive(Debug)]
pub(super) struct WaitingResponse {
    pub(super) payload: Bytes,
    pub(super) settled: bool,
    pub(super) origin: Origin,
    pub(super) deadline: std::time::Instant,
}

/// How long a command response waits for its application to grant credit. Shorter than the adapters'
/// send timeout (5 s by default), so the device learns the outcome from the router, not from a timeout.
pub const RESPONSE_CREDIT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Most command responses held per reply address; beyond that they are released at once.
const MAX_WAITING_RESPONSES: usize = 1024;

/// Most devices whose last-known gateway is remembered; beyond, the table starts over.
const MAX_LAST_GATEWAYS: usize = 1_000_000;

/// Command subscriptions: (tenant, device) → the command address of the adapter instance holding it.
pub(super) type CommandRoutes = HashMap<(TenantId, Arc<str>), AddressRef>;

/// Gateways subscribed for all their devices: tenant → gateway → the instance holding the subscription.
pub(super) type GatewayRoutes = HashMap<TenantId, HashMap<Arc<str>, AddressRef>>;

/// (tenant, device) → the gateway the device last sent a message through.
pub(super) type LastGateways = HashMap<(TenantId, Arc<str>), Arc<str>>;

/// Where a command goes.
#[derive(Debug)]
pub enum CommandTarget {
    /// The instance holding the device's own (or a gateway's device-specific) subscription.
    Device(AddressRef),
    /// None holds one, but gateways of the tenant subscribed for all their devices: whether one of them
    /// may act for the device depends on its `via` ([`Hub::gateway_for`]).
    Gateways,
    /// Nobody: the command is released.
    Nobody,
}

impl<S: EventStore> Hub<S> {
    /// Routes `(tenant, device)`'s commands to an adapter instance's command address. The newest
    /// subscription wins (a device that reconnects elsewhere takes its commands along).
    pub fn subscribe_commands(&self, tenant: &TenantId, device: &str, instance: &AddressRef) {
        lock(&self.commands).insert((tenant.clone(), Arc::from(device)), instance.clone());
    }

    /// Ends a subscription, if it still points at `instance` (a newer one elsewhere stays).
    pub fn unsubscribe_commands(&self, tenant: &TenantId, device: &str, instance: &AddressRef) {
        let mut routes = lock(&self.commands);
        let key = (tenant.clone(), Arc::from(device));
        if routes
            .get(&key)
            .is_some_and(|a| Arc::ptr_eq(&a.inner, &instance.inner))
        {
            routes.remove(&key);
        }
    }

    /// Routes the commands of every device that lists `gateway` in its `via` (and has no subscription of
    /// its own) to an adapter instance: the gateway subscribed for all its devices. The newest such
    /// subscription of one gateway wins.
    pub fn subscribe_gateway(&self, tenant: &TenantId, gateway: &str, instance: &AddressRef) {
        lock(&self.gateways)
            .entry(tenant.clone())
            .or_default()
            .insert(Arc::from(gateway), instance.clone());
    }

    /// Ends a gateway's all-devices subscription, if it still points at `instance`.
    pub fn unsubscribe_gateway(&self, tenant: &TenantId, gateway: &str, instance: &AddressRef) {
        let mut routes = lock(&self.gateways);
        if let Some(of_tenant) = routes.get_mut(tenant) {
            if of_tenant
                .get(gateway)
                .is_some_and(|a| Arc::ptr_eq(&a.inner, &instance.inner))
            {
                of_tenant.remove(gateway);
            }
            if of_tenant.is_empty() {
                routes.remove(tenant);
            }
        }
    }

    /// Remembers the gateway a device last sent a message through (Hono's `set-last-gw`); among several
    /// gateways subscribed for it, its commands go there.
    pub fn set_last_gateway(&self, tenant: &TenantId, device: &str, gateway: &str) {
        let mut last = lock(&self.last_gateway);
        let key = (tenant.clone(), Arc::<str>::from(device));
        if last.get(&key).is_some_and(|g| &**g == gateway) {
            return;
        }
        if last.len() >= MAX_LAST_GATEWAYS {
            last.clear();
        }
        last.insert(key, Arc::from(gateway));
    }

    /// Forgets every subscription of an adapter instance whose command link is gone.
    /// device-specific subscription, else possibly a gateway's subscription for all its devices.
    pub fn command_target(&self, tenant: &TenantId, device: &str) -> CommandTarget {
        if let Some(addr) = lock(&self.commands).get(&(tenant.clone(), Arc::from(device))) {
            return CommandTarget::Device(addr.clone());
        }
        if lock(&self.gateways).contains_key(tenant) {
            CommandTarget::Gateways
        } else {
            CommandTarget::Nobody
        }
    }

    /// The gateway (and its instance) that gets a command for `device`, whose gateways are `via`: the
    /// device's last-known gateway if it subscribed for all its devices, else one of the subscribed ones
    /// picked at random; `None` when none of them did.
    pub fn gateway_for(
        &self,
        tenant: &TenantId,
        device: &str,
        via: &[Arc<str>],
    ) -> Option<(Arc<str>, AddressRef)> {
        let last = lock(&self.last_gateway)
            .get(&(tenant.clone(), Arc::from(device)))
            .cloned();
        let gateways = lock(&self.gateways);
        let of_tenant = gateways.get(tenant)?;
        // Hono picks one at random; the process-wide id counter is random enough and costs no RNG.
        let random = usize::try_from(next_id()).unwrap_or(0);
        let (i, addr) = ferry_nats::commands::pick_gateway(
            last.as_deref(),
            via,
            |g| of_tenant.get(g).cloned(),
            random,
        )?;
        Some((via.get(i)?.clone(), addr))
    }

    /// Forwards a command to an adapter instance's command address; `NoConsumer` when its link has no
    /// credit: the application gets `released`.
    pub fn route_command(
        &self,
        instance: &AddressRef,
        payload: Bytes,
        settled: bool,
        origin: Origin,
    ) -> Routed {
        self.route_direct(instance, payload, settled, origin)
    }

    /// Forwards a command response to the application receiving on `command_response/T/REPLY`.
    pub fn route_response(
        &self,
        tenant: &TenantId,
        reply: &str,
        payload: Bytes,
        settled: bool,
        origin: Origin,
    ) -> Routed {
        let inner = lock(&self.addresses)
            .get(&(
                Kind::CommandResponse,
                tenant.clone(),
                Some(Arc::from(reply)),
            ))
            .cloned();
        let Some(inner) = inner else {
            return Routed::NoConsumer;
        };
        let mut a = lock(&inner);
        if let Some(consumer) = a.pick(self.max_queued_bytes) {
            drop(a);
            deliver(&consumer, payload, settled, origin);
            return Routed::Forwarded;
        }
        // An application attaches its response receiver before it sends the command, but may grant
        // credit only once the attach is answered; a quick device can answer before that. Hold the
        // response briefly rather than lose it.
        if a.consumers.is_empty() || a.waiting.len() >= MAX_WAITING_RESPONSES {
            return Routed::NoConsumer;
        }
        a.waiting.push_back(WaitingResponse {
            payload,
            settled,
            origin,
            deadline: std::time::Instant::now() + RESPONSE_CREDIT_WAIT,
        });
        Routed::Forwarded
    }

    /// Releases command responses that waited too long for their application's credit.
    pub fn expire_responses(&self, now: std::time::Instant) {
        let addresses: Vec<Arc<Mutex<Address>>> = lock(&self.addresses)
            .iter()
            .filter(|((kind, _, _), _)| *kind == Kind::CommandResponse)
            .map(|(_, a)| a.clone())
            .collect();
        for address in addresses {
            let expired: Vec<WaitingResponse> = {
                let mut a = lock(&address);
                // Deadlines grow with arrival, so the expired responses are at the front.
                let n = a.waiting.iter().take_while(|w| w.deadline <= now).count();
                a.waiting.drain(..n).collect()
            };
            for w in expired {
                self.settle(w.origin, release());
            }
        }
    }
}

/// Hands held command responses to the application's receiver while it has credit, oldest first.
pub(super) fn dispatch_waiting(a: &mut Address, max_queued_bytes: usize) {
    while !a.waiting.is_empty() {
        let Some(consumer) = a.pick(max_queued_bytes) else {
            break;
        };
        let Some(w) = a.waiting.pop_front() else {
            break;
        };
        deliver(&consumer, w.payload, w.settled, w.origin);
    }
}
