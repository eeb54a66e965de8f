//! Hono routing, the only layer of the connection that talks to the [`hub`](crate::hub): which addresses
//! exist and who may attach to them, where a producer's message goes (telemetry to a consumer, events to
//! the store; commands in [`commands`](super::commands)), and deliveries coming from the hub. The engine
//! reaches the hub only through the functions here.

use std::sync::Arc;

use bytes::Bytes;
use fe2o3_amqp_types::definitions::{
    AmqpError, ErrorCondition, ReceiverSettleMode, SenderSettleMode,
};
use fe2o3_amqp_types::messaging::DeliveryState;
use fe2o3_amqp_types::performatives::Attach;
use serde_amqp::Value;

use super::session::Link;
use super::Appended;
use super::{accepted, custom, error, rejected, Conn, Error};
use crate::auth::{Address, Direction};
use crate::codec::{self, MessageEdit, PropertyField};
use crate::events::{EventStore, NewEvent};
use crate::hub::{self, AddressRef, Consumer, Kind, LinkId, Origin, Producer, Routed, ToConn};
use crate::metrics::Outcome;
use crate::Shared;
use ferry_core::ids::DeviceId;

/// Where an incoming delivery came from, for its settlement.
#[derive(Debug, Clone, Copy)]
pub(super) struct Incoming {
    pub(super) channel: u16,
    pub(super) delivery_id: u32,
    pub(super) settled: bool,
    pub(super) size: usize,
}

// ---- The engine's calls into the hub ----

/// How much credit a producer link may hold now.
pub(super) fn producer_credit<S: EventStore>(
    shared: &Shared<S>,
    addr: &AddressRef,
    producer: &Arc<Producer>,
) -> u32 {
    shared.hub.producer_credit_limit(addr, producer)
}

/// A consumer link's credit, as the hub should see it.
pub(super) fn consumer_credit<S: EventStore>(
    shared: &Shared<S>,
    addr: &AddressRef,
    consumer: &Consumer,
    available: u32,
) {
    shared.hub.consumer_credit(addr, consumer, available);
}

/// An outgoing delivery is settled (or could not be sent): the outcome goes back to where it came from,
/// through its consumer's registration while the link is there.
pub(super) fn settled<S: EventStore>(
    shared: &Shared<S>,
    consumer: Option<&Consumer>,
    origin: Origin,
    state: DeliveryState,
) {
    match consumer {
        Some(c) => shared.hub.consumer_settled(c, origin, state),
        None => shared.hub.settle(origin, state),
    }
}

/// Most bytes of deliveries the connection may hold unwritten before its consumers are choked.
pub(super) fn max_queued_bytes<S: EventStore>(shared: &Shared<S>) -> usize {
    shared.hub.max_queued_bytes
}

impl<S: EventStore> Conn<S> {
    /// Hono's policy for a new link (the address exists, the principal may use it this way, the address
    /// has room for another consumer, the settle modes of HONO-CONTRACT §1.1 / §1.2), and on success the
    /// link, registered at its address. The error is what the attach is refused with.
    pub(super) fn bind_link(
        &mut self,
        attach: &Attach,
        direction: Direction,
        address: Option<&str>,
    ) -> Result<Link, Error> {
        let Some(address) = address.and_then(Address::parse) else {
            return Err(error(
                ErrorCondition::AmqpError(AmqpError::NotFound),
                "no such address",
            ));
        };
        if !self.principal.may_attach(&address, direction) {
            return Err(error(
                ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess),
                "not authorized for this address",
            ));
        }
        let hub = &self.shared.hub;
        let addr = match &address {
            Address::Telemetry(t) => hub.address(Kind::Telemetry, t),
            Address::Event(t) => hub.address(Kind::Event, t),
            Address::Command(t) => hub.address(Kind::Command, t),
            Address::CommandResponse(t, reply) => {
                hub.address_with(Kind::CommandResponse, t, Some(reply))
            }
            Address::CommandResponses => hub.address(Kind::CommandResponse, &hub::internal_scope()),
            Address::CommandInternal(instance) => hub.address(Kind::CommandInternal, instance),
        };
        // Cluster mode: adapters publish to NATS and take their commands from it; a router serves
        // applications only (an embedded-mode adapter pointed at it would have its events kept in no
        // durable store).
        if self.shared.bus.is_some()
            && matches!(
                (&address, direction),
                (Address::Telemetry(_) | Address::Event(_), Direction::In)
                    | (Address::CommandResponses | Address::CommandInternal(_), _)
            )
        {
            return Err(error(
                ErrorCondition::AmqpError(AmqpError::NotAllowed),
                "this router runs in cluster mode: adapters use NATS (messaging.mode: nats)",
            ));
        }
        if direction == Direction::Out
            && hub.consumers(&addr) >= self.shared.config.max_consumers_per_address
        {
            return Err(error(
                ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
                "too many consumers on this address",
            ));
        }
        // Anything but these settle modes closes the link.
        let rcv_first = matches!(attach.rcv_settle_mode, ReceiverSettleMode::First);
        let snd_settled = matches!(attach.snd_settle_mode, SenderSettleMode::Settled);
        let supported = rcv_first && (addr.kind != Kind::Event || !snd_settled);
        if !supported {
            return Err(custom(
                ferry_core::hono::condition::UNSUPPORTED_DELIVERY_MODE,
                "unsupported settle modes for this address",
            ));
        }
        let id = hub::next_id();
        let delivery_count = attach.initial_delivery_count.unwrap_or(0);
        let mut link = Link::new(id, direction, addr, delivery_count, snd_settled);
        match direction {
            Direction::In => {
                let unsettled = matches!(attach.snd_settle_mode, SenderSettleMode::Unsettled);
                link.producer =
                    Some(hub.attach_producer(&link.addr, self.handle.clone(), id, unsettled));
                if link.addr.kind == Kind::Event {
                    crate::tenants::follow(&self.shared, &link.addr.tenant);
                }
            }
            Direction::Out => {
                link.consumer = Some(hub.attach_consumer(&mut link.addr, self.handle.clone(), id));
                if let Some(bus) = &self.shared.bus {
                    bus.consumer_attached(&self.shared, &link.addr);
                }
            }
        }
        hub.metrics.links.inc();
        Ok(link)
    }

    /// A link is gone: the hub forgets it, and `released` (a consumer's unsettled deliveries and those
    /// still waiting for the session window) are released back to where they came from.
    pub(super) fn unbind_link(&self, link: &Link, released: Vec<Origin>) {
        let hub = &self.shared.hub;
        hub.metrics.links.dec();
        if let Some(consumer) = &link.consumer {
            hub.detach_consumer(&link.addr, consumer, released);
            if let Some(bus) = &self.shared.bus {
                bus.consumer_detached(&link.addr);
            }
        }
        if let Some(producer) = &link.producer {
            hub.detach_producer(&link.addr, producer);
        }
    }

    /// Verifies, rewrites and routes one message from a producer.
    pub(super) fn route(
        &mut self,
        channel: u16,
        addr: &AddressRef,
        delivery_id: u32,
        settled: bool,
        message: Bytes,
    ) {
        let size = message.len();
        match addr.kind {
            Kind::Telemetry | Kind::Event => {}
            Kind::Command => {
                return self.route_command(channel, addr, delivery_id, settled, message)
            }
            Kind::CommandResponse => {
                return self.route_response(channel, delivery_id, settled, message)
            }
            Kind::CommandInternal => {
                return self.subscription(channel, addr, delivery_id, settled, &message)
            }
        }
        let (payload, device) = match self.check_and_rewrite(addr, &message) {
            Ok(checked) => checked,
            Err(state) => {
                addr.counters.count(Outcome::Rejected, size);
                if !settled {
                    self.disposition(channel, delivery_id, state);
                }
                return;
            }
        };
        match addr.kind {
            Kind::Telemetry => {
                let origin = self.origin(channel, delivery_id, settled);
                let routed = self
                    .shared
                    .hub
                    .route_telemetry(addr, payload, settled, origin);
                self.routed(
                    Incoming {
                        channel,
                        delivery_id,
                        settled,
                        size,
                    },
                    &addr.counters,
                    routed,
                );
            }
            Kind::Event => {
                let shared = self.shared.clone();
                let addr = addr.clone();
                let event = NewEvent {
                    payload,
                    device_id: device.to_arc(),
                    expires_at_ms: self.event_expiry(&message),
                };
                let appending = shared.hub.appending(&addr);
                // Polled by this connection's loop (no task of its own): the outcomes of one write
                // batch come back together and settle in one disposition frame.
                self.appends.push(Box::pin(async move {
                    let appended = shared.hub.append_event(&addr, event).await;
                    drop(appending);
                    let state = match appended {
                        Ok(()) => {
                            addr.counters.count(Outcome::Stored, size);
                            accepted()
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "event store append failed");
                            hub::release()
                        }
                    };
                    Appended {
                        channel,
                        delivery_id,
                        state,
                    }
                }));
            }
            // Handled above, before the assertion check that only device messages need.
            Kind::Command | Kind::CommandResponse | Kind::CommandInternal => {}
        }
    }

    /// The outcome of a message that went (or did not go) somewhere: metrics, and `released` to an
    /// unsettled producer when nobody could take it.
    pub(super) fn routed(
        &mut self,
        at: Incoming,
        counters: &crate::metrics::Outcomes,
        routed: Routed,
    ) {
        match routed {
            Routed::Forwarded => counters.count(Outcome::Forwarded, at.size),
            Routed::NoConsumer => {
                counters.count(Outcome::Released, at.size);
                if !at.settled {
                    self.disposition(at.channel, at.delivery_id, hub::release());
                }
            }
        }
    }

    pub(super) fn origin(&self, channel: u16, delivery_id: u32, settled: bool) -> Origin {
        if settled {
            Origin::None
        } else {
            Origin::Producer {
                conn: self.handle.clone(),
                channel,
                delivery_id,
            }
        }
    }

    /// When an event expires: its header `ttl`, else the configured default; `None` keeps it until accepted.
    fn event_expiry(&self, message: &Bytes) -> Option<u64> {
        let ttl_ms = codec::parse_message(message)
            .ok()
            .and_then(|v| v.ttl_ms())
            .map(u64::from)
            .or_else(|| {
                let d = self.shared.config.default_event_ttl;
                (!d.is_zero()).then(|| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Some(now.saturating_add(ttl_ms))
    }

    fn check_and_rewrite(
        &self,
        addr: &AddressRef,
        message: &Bytes,
    ) -> Result<(Bytes, DeviceId), DeliveryState> {
        check_device_message(&self.shared, addr, message)
    }

    pub(super) fn handle_request(&mut self, msg: ToConn) {
        match msg {
            ToConn::Deliver {
                link,
                payload,
                settled,
                origin,
            } => self.deliver(link, payload, settled, origin),
            ToConn::Outcome {
                channel,
                delivery_id,
                state,
            } => {
                if self.sessions.contains_key(&channel) {
                    self.disposition(channel, delivery_id, state);
                }
            }
            ToConn::Wake { link } => {
                if let Some((channel, handle)) = self.links.get(&link).copied() {
                    self.top_up_credit(channel, handle);
                }
            }
        }
    }

    fn deliver(&mut self, link_id: LinkId, payload: Bytes, settled: bool, origin: Origin) {
        let cost = payload.len() + hub::DELIVERY_OVERHEAD;
        let Some((channel, handle)) = self.links.get(&link_id).copied() else {
            // The link left before the delivery reached it; its detach released its credit.
            self.handle.written(cost);
            return self.shared.hub.settle(origin, hub::release());
        };
        let Some(session) = self.sessions.get_mut(&channel) else {
            self.handle.written(cost);
            return;
        };
        let Some(link) = session.links.get_mut(&handle) else {
            self.handle.written(cost);
            return;
        };
        let Some(consumer) = link.consumer.clone() else {
            self.handle.written(cost);
            return;
        };
        consumer.dequeued();
        let available = link
            .peer_delivery_count
            .wrapping_add(link.peer_credit)
            .wrapping_sub(link.sent_count);
        if available == 0 || available > i32::MAX as u32 {
            // Raced with a credit change: hand it back rather than send without credit.
            self.handle.written(cost);
            self.shared
                .hub
                .consumer_settled(&consumer, origin, hub::release());
            return;
        }
        if consumer.choked(self.shared.hub.max_queued_bytes) {
            self.choked = true;
        }
        link.sent_count = link.sent_count.wrapping_add(1);
        let drain_pending = link.drain;
        let settled = settled || link.settled_mode;
        if session.remote_incoming_window == 0 {
            session
                .waiting
                .push_back((handle, payload, settled, origin));
            return;
        }
        self.send_transfer(channel, handle, payload, settled, origin, &consumer);
        if drain_pending {
            self.finish_drain(channel, handle);
        }
    }
}

/// HONO-CONTRACT §4: the registration assertion must be there and valid for this tenant and device;
/// it is stripped and the `resource` annotation added. For messages from an adapter's link and from the
/// cluster bus alike. Returns the rewritten message and the device that sent it.
pub(crate) fn check_device_message<S: EventStore>(
    shared: &Shared<S>,
    addr: &AddressRef,
    message: &Bytes,
) -> Result<(Bytes, DeviceId), DeliveryState> {
    let decode = |why: &str| rejected(ErrorCondition::AmqpError(AmqpError::DecodeError), why);
    let precondition = |why: &str| {
        rejected(
            ErrorCondition::AmqpError(AmqpError::PreconditionFailed),
            why,
        )
    };
    let view = codec::parse_message(message).map_err(|_| decode("malformed message"))?;
    // Read in place: decoding the whole properties section into a struct was a fifth of this check's
    // cost per message (issue 16's profile), for one field.
    let content_type = view
        .property_str(PropertyField::ContentType)
        .ok_or_else(|| decode("content-type is missing"))?;
    if view.single_data().is_none() {
        return Err(decode("the body must be one Data section"));
    }
    // One pass over the application properties for the three this check and the console read.
    let [device, token, adapter] = view.app_properties_str([
        ferry_core::hono::app_property::DEVICE_ID,
        ferry_core::hono::app_property::REG_ASSERTION,
        ferry_core::hono::app_property::ORIG_ADAPTER,
    ]);
    let device = device.ok_or_else(|| decode("device_id is missing"))?;
    let device =
        ferry_core::ids::DeviceId::new(device).map_err(|_| decode("device_id is invalid"))?;
    let token = token.ok_or_else(|| decode("reg_assertion is missing"))?;
    let now = ferry_core::console::unix_now();
    let verifier = shared.verifier();
    if let Err(e) = verifier.check(
        token,
        &addr.tenant,
        &device,
        i64::try_from(now).unwrap_or(i64::MAX),
    ) {
        if e.is_decode_error() {
            return Err(decode("reg_assertion is malformed"));
        }
        if let ferry_core::assertion::VerifyError::UnknownKey { .. } = e {
            shared.refresh_keys.notify_one();
        }
        return Err(precondition("device non-existent/disabled"));
    }
    crate::console::observe(
        shared,
        &crate::console::Observed {
            kind: &addr.kind,
            tenant: &addr.tenant,
            device: &device,
            view: &view,
            content_type: Some(content_type),
            adapter,
            now,
        },
    );
    // `kind/tenant/device`, put together without the formatting machinery (once per message).
    let (kind, tenant) = (addr.kind.name(), addr.tenant.as_str());
    let mut resource = String::with_capacity(kind.len() + tenant.len() + device.as_str().len() + 2);
    for part in [kind, "/", tenant, "/", device.as_str()] {
        resource.push_str(part);
    }
    let mut out = Vec::with_capacity(message.len() + resource.len() + 16);
    codec::rewrite_message(
        &view,
        &MessageEdit {
            strip_app_properties: &[ferry_core::hono::app_property::REG_ASSERTION],
            add_message_annotations: &[(
                ferry_core::hono::annotation::RESOURCE,
                Value::String(resource),
            )],
            ..MessageEdit::default()
        },
        &mut out,
    )
    .map_err(|_| decode("message cannot be rewritten"))?;
    Ok((Bytes::from(out), device))
}
