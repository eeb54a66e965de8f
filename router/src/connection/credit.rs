//! The engine's flow control: link credit for producers (topped up to a window, as far as their address
//! may take more), the credit consumers grant (reported to the hub through the routing layer), drain,
//! and the session's incoming window.

use fe2o3_amqp_types::definitions::Handle;
use fe2o3_amqp_types::performatives::{Flow, Performative};

use super::{routing, Conn, INCOMING_WINDOW, OUTGOING_WINDOW, PRODUCER_WINDOW, TELEMETRY_WINDOW};
use crate::auth::Direction;
use crate::events::EventStore;
use crate::hub::Kind;

impl<S: EventStore> Conn<S> {
    /// Gives a producer link credit up to its window, if its address may take more now.
    ///
    /// A producer is topped up once it has used a quarter of its window (telemetry) or half of it
    /// (everything else), so the next flow is on its way while the rest of the window is still being
    /// written: with one link carrying a whole adapter's devices, a window the adapter can use up
    /// between two of our turns would pace it by the round trip instead of by either side's work.
    pub(super) fn top_up_credit(&mut self, channel: u16, handle: u32) {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        let Some(link) = session.links.get_mut(&handle) else {
            return;
        };
        let Some(producer) = &link.producer else {
            return;
        };
        let (window, top_up_at) = match link.addr.kind {
            Kind::Telemetry => (TELEMETRY_WINDOW, TELEMETRY_WINDOW / 4 * 3),
            _ => (PRODUCER_WINDOW, PRODUCER_WINDOW / 2),
        };
        if link.credit > top_up_at {
            return;
        }
        let credit = window.min(routing::producer_credit(&self.shared, &link.addr, producer));
        if credit <= link.credit {
            return;
        }
        link.credit = credit;
        let flow = Flow {
            next_incoming_id: Some(session.next_incoming_id),
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: session.next_outgoing_id,
            outgoing_window: OUTGOING_WINDOW,
            handle: Some(Handle(handle)),
            delivery_count: Some(link.delivery_count),
            link_credit: Some(link.credit),
            available: None,
            drain: false,
            echo: false,
            properties: None,
        };
        session.incoming_since_flow = 0;
        self.send(channel, Performative::Flow(flow));
    }

    pub(super) fn on_flow(&mut self, channel: u16, flow: Flow) {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return self.session_error("flow on an unknown session");
        };
        session.remote_incoming_window = flow
            .next_incoming_id
            .unwrap_or(0)
            .wrapping_add(flow.incoming_window)
            .wrapping_sub(session.next_outgoing_id);
        let Some(handle) = flow.handle.map(|h| h.0) else {
            self.flush_waiting(channel);
            if flow.echo {
                self.session_flow(channel);
            }
            return;
        };
        let Some(link) = session.links.get_mut(&handle) else {
            return;
        };
        if link.direction == Direction::Out {
            link.peer_delivery_count = flow.delivery_count.unwrap_or(link.sent_count);
            link.peer_credit = flow.link_credit.unwrap_or(0);
            link.drain = flow.drain;
            self.update_consumer_credit(channel, handle);
            self.flush_waiting(channel);
            if flow.drain {
                self.finish_drain(channel, handle);
            }
        } else if flow.echo {
            self.top_up_credit(channel, handle);
        }
    }

    /// The credit the consumer link has left, as the hub should see it.
    pub(super) fn update_consumer_credit(&mut self, channel: u16, handle: u32) {
        let Some(link) = self
            .sessions
            .get(&channel)
            .and_then(|s| s.links.get(&handle))
        else {
            return;
        };
        let Some(consumer) = &link.consumer else {
            return;
        };
        let available = link
            .peer_delivery_count
            .wrapping_add(link.peer_credit)
            .wrapping_sub(link.sent_count);
        let available = if available > i32::MAX as u32 {
            0
        } else {
            available
        };
        let queued = consumer.queued();
        let free = available.saturating_sub(queued);
        let (addr, consumer) = (link.addr.clone(), consumer.clone());
        routing::consumer_credit(&self.shared, &addr, &consumer, free);
    }

    /// A drain request: what could be sent has been queued by now; give back the rest of the credit.
    pub(super) fn finish_drain(&mut self, channel: u16, handle: u32) {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        let Some(link) = session.links.get_mut(&handle) else {
            return;
        };
        let Some(consumer) = link.consumer.clone() else {
            return;
        };
        if consumer.queued() > 0 {
            // Deliveries are on their way through our channel; the drain completes after them.
            return;
        }
        let left = link
            .peer_delivery_count
            .wrapping_add(link.peer_credit)
            .wrapping_sub(link.sent_count);
        link.sent_count = link.sent_count.wrapping_add(left);
        link.peer_delivery_count = link.sent_count;
        link.peer_credit = 0;
        link.drain = false;
        let addr = link.addr.clone();
        let flow = Flow {
            next_incoming_id: Some(session.next_incoming_id),
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: session.next_outgoing_id,
            outgoing_window: OUTGOING_WINDOW,
            handle: Some(Handle(handle)),
            delivery_count: Some(link.sent_count),
            link_credit: Some(0),
            available: Some(0),
            drain: true,
            echo: false,
            properties: None,
        };
        routing::consumer_credit(&self.shared, &addr, &consumer, 0);
        self.send(channel, Performative::Flow(flow));
    }

    pub(super) fn session_flow(&mut self, channel: u16) {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        session.incoming_since_flow = 0;
        let flow = Flow {
            next_incoming_id: Some(session.next_incoming_id),
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: session.next_outgoing_id,
            outgoing_window: OUTGOING_WINDOW,
            handle: None,
            delivery_count: None,
            link_credit: None,
            available: None,
            drain: false,
            echo: false,
            properties: None,
        };
        self.send(channel, Performative::Flow(flow));
    }

    /// Once no consumer of this connection is choked any more, tells the hub their credit again (which
    /// wakes starved producers and dispatches held events and responses).
    pub(super) fn unchoke(&mut self) {
        let max = routing::max_queued_bytes(&self.shared);
        let consumers: Vec<(u16, u32)> = self
            .sessions
            .iter()
            .flat_map(|(channel, s)| {
                s.links
                    .iter()
                    .filter(|(_, l)| l.consumer.is_some())
                    .map(move |(handle, _)| (*channel, *handle))
            })
            .collect();
        let still = consumers.iter().any(|(channel, handle)| {
            self.sessions
                .get(channel)
                .and_then(|s| s.links.get(handle))
                .and_then(|l| l.consumer.as_ref())
                .is_some_and(|c| c.choked(max))
        });
        if still {
            return;
        }
        self.choked = false;
        for (channel, handle) in consumers {
            self.update_consumer_credit(channel, handle);
        }
    }
}
