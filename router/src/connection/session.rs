//! The engine's sessions and links: begin and end, attach and detach, and what a link's end releases.
//! Which addresses exist and who may attach to them is the routing layer's to say ([`Conn::bind_link`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fe2o3_amqp_types::definitions::{
    AmqpError, ConnectionError, ErrorCondition, Handle, ReceiverSettleMode, Role,
};
use fe2o3_amqp_types::messaging::{Source, Target, TargetArchetype};
use fe2o3_amqp_types::performatives::{Attach, Begin, Detach, Performative};

use super::{
    error, Conn, Error, CHANNEL_MAX, HANDLE_MAX, INCOMING_WINDOW, MAX_MESSAGE_SIZE, OUTGOING_WINDOW,
};
use crate::auth::Direction;
use crate::events::EventStore;
use crate::hub::{self, AddressRef, Consumer, LinkId, Origin, Producer};

/// A link of a session, as the engine keeps it.
pub(super) struct Link {
    pub(super) id: LinkId,
    pub(super) direction: Direction,
    pub(super) addr: AddressRef,
    /// In: the producer's registration; Out: the consumer's.
    pub(super) producer: Option<Arc<Producer>>,
    pub(super) consumer: Option<Arc<Consumer>>,
    // In (we receive):
    pub(super) credit: u32,
    pub(super) delivery_count: u32,
    pub(super) partial: Option<Partial>,
    // Out (we send):
    pub(super) peer_delivery_count: u32,
    pub(super) peer_credit: u32,
    pub(super) sent_count: u32,
    pub(super) drain: bool,
    pub(super) settled_mode: bool,
}

impl Link {
    /// A link with no credit either way yet, not registered at the hub.
    pub(super) fn new(
        id: LinkId,
        direction: Direction,
        addr: AddressRef,
        delivery_count: u32,
        settled_mode: bool,
    ) -> Self {
        Self {
            id,
            direction,
            addr,
            producer: None,
            consumer: None,
            credit: 0,
            delivery_count,
            partial: None,
            peer_delivery_count: 0,
            peer_credit: 0,
            sent_count: 0,
            drain: false,
            settled_mode,
        }
    }
}

/// A delivery whose transfer frames are still arriving.
pub(super) struct Partial {
    pub(super) delivery_id: u32,
    pub(super) settled: bool,
    pub(super) buf: BytesMut,
}

/// A session: its transfer counters and windows, its links, and what it sent and the peer has not settled.
pub(super) struct Session {
    pub(super) next_outgoing_id: u32,
    pub(super) next_incoming_id: u32,
    pub(super) incoming_since_flow: u32,
    pub(super) remote_incoming_window: u32,
    pub(super) next_delivery_id: u32,
    pub(super) links: HashMap<u32, Link>,
    /// Our deliveries the peer has not settled: delivery id → (handle, origin).
    pub(super) unsettled: HashMap<u32, (u32, Origin)>,
    /// Transfers waiting for the peer's incoming window.
    pub(super) waiting: VecDeque<(u32, Bytes, bool, Origin)>,
}

impl<S: EventStore> Conn<S> {
    pub(super) fn on_begin(&mut self, channel: u16, begin: Begin) {
        if self.sessions.contains_key(&channel) {
            return self.session_error("channel already in use");
        }
        if channel > CHANNEL_MAX {
            // Our open said channel-max 255: a begin above it is a connection error (AMQP 1.0 §2.7.1).
            return self.close(Some(error(
                ErrorCondition::ConnectionError(ConnectionError::FramingError),
                "channel above channel-max",
            )));
        }
        self.sessions.insert(
            channel,
            Session {
                next_outgoing_id: 0,
                next_incoming_id: begin.next_outgoing_id,
                incoming_since_flow: 0,
                remote_incoming_window: begin.incoming_window,
                next_delivery_id: 0,
                links: HashMap::new(),
                unsettled: HashMap::new(),
                waiting: VecDeque::new(),
            },
        );
        self.send(
            channel,
            Performative::Begin(Begin {
                remote_channel: Some(channel),
                next_outgoing_id: 0,
                incoming_window: INCOMING_WINDOW,
                outgoing_window: OUTGOING_WINDOW,
                handle_max: Handle(HANDLE_MAX),
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            }),
        );
    }

    /// Answers an attach we refuse: a mirror attach without terminus, then a closing detach with the reason.
    fn refuse_attach(&mut self, channel: u16, attach: &Attach, err: Error) {
        let we_send = matches!(attach.role, Role::Receiver);
        let role = if we_send {
            Role::Sender
        } else {
            Role::Receiver
        };
        self.send(
            channel,
            Performative::Attach(Attach {
                name: attach.name.clone(),
                handle: attach.handle.clone(),
                role,
                snd_settle_mode: attach.snd_settle_mode.clone(),
                rcv_settle_mode: attach.rcv_settle_mode.clone(),
                source: None,
                target: None,
                unsettled: None,
                incomplete_unsettled: false,
                initial_delivery_count: we_send.then_some(0),
                max_message_size: None,
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            }),
        );
        self.send(
            channel,
            Performative::Detach(Detach {
                handle: attach.handle.clone(),
                closed: true,
                error: Some(err),
            }),
        );
    }

    pub(super) fn on_attach(&mut self, channel: u16, attach: Attach) {
        if !self.sessions.contains_key(&channel) {
            return self.session_error("attach on an unknown session");
        }
        let handle = attach.handle.0;
        if self
            .sessions
            .get(&channel)
            .is_some_and(|s| s.links.contains_key(&handle))
        {
            return self.session_error("handle already in use");
        }
        if handle > HANDLE_MAX {
            // Our begin said handle-max: beyond it is an error of the session (AMQP 1.0 §2.7.2).
            return self.close(Some(error(
                ErrorCondition::ConnectionError(ConnectionError::FramingError),
                "handle above handle-max",
            )));
        }
        if self.links.len() >= self.shared.config.max_links_per_connection {
            return self.refuse_attach(
                channel,
                &attach,
                error(
                    ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
                    "too many links on this connection",
                ),
            );
        }
        // The peer's role tells the direction: a sending peer sends to us.
        let (direction, address) = match attach.role {
            Role::Sender => (
                Direction::In,
                attach.target.as_deref().and_then(|t| match t {
                    TargetArchetype::Target(t) => t.address.clone(),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }),
            ),
            Role::Receiver => (
                Direction::Out,
                attach.source.as_deref().and_then(|s| s.address.clone()),
            ),
        };
        // Whether the address exists and the principal may use it is Hono's policy: the routing layer's.
        let link = match self.bind_link(&attach, direction, address.as_deref()) {
            Ok(link) => link,
            Err(err) => return self.refuse_attach(channel, &attach, err),
        };
        let we_send = matches!(attach.role, Role::Receiver);
        let role = if we_send {
            Role::Sender
        } else {
            Role::Receiver
        };
        self.send(
            channel,
            Performative::Attach(Attach {
                name: attach.name.clone(),
                handle: attach.handle.clone(),
                role,
                snd_settle_mode: attach.snd_settle_mode.clone(),
                rcv_settle_mode: ReceiverSettleMode::First,
                source: attach
                    .source
                    .clone()
                    .or_else(|| Some(Box::new(Source::default()))),
                target: attach
                    .target
                    .clone()
                    .or_else(|| Some(Box::new(TargetArchetype::Target(Target::default())))),
                unsettled: None,
                incomplete_unsettled: false,
                initial_delivery_count: we_send.then_some(0),
                max_message_size: Some(MAX_MESSAGE_SIZE as u64),
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            }),
        );
        self.links.insert(link.id, (channel, handle));
        if let Some(session) = self.sessions.get_mut(&channel) {
            session.links.insert(handle, link);
        }
        if direction == Direction::In {
            self.top_up_credit(channel, handle);
        }
    }

    pub(super) fn on_detach(&mut self, channel: u16, detach: Detach) {
        let handle = detach.handle.0;
        if !self.remove_link(channel, handle) {
            // The answer to a detach of ours (a refused attach): nothing left to close.
            return;
        }
        self.send(
            channel,
            Performative::Detach(Detach {
                handle: Handle(handle),
                closed: true,
                error: None,
            }),
        );
    }

    /// Ends a link on the router's initiative (the peer broke its rules), releasing what it had in flight.
    pub(super) fn detach_with_error(&mut self, channel: u16, handle: u32, err: Error) {
        if self.remove_link(channel, handle) {
            self.send(
                channel,
                Performative::Detach(Detach {
                    handle: Handle(handle),
                    closed: true,
                    error: Some(err),
                }),
            );
        }
    }

    /// Forgets a link, releasing what it had in flight; false when there was no such link.
    fn remove_link(&mut self, channel: u16, handle: u32) -> bool {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return false;
        };
        let Some(link) = session.links.remove(&handle) else {
            return false;
        };
        self.links.remove(&link.id);
        let mut origins: Vec<Origin> = Vec::new();
        if link.consumer.is_some() {
            let ids: Vec<u32> = session
                .unsettled
                .iter()
                .filter(|(_, (h, _))| *h == handle)
                .map(|(id, _)| *id)
                .collect();
            origins.extend(
                ids.into_iter()
                    .filter_map(|id| session.unsettled.remove(&id).map(|(_, o)| o)),
            );
            let waiting = std::mem::take(&mut session.waiting);
            for w in waiting {
                if w.0 == handle {
                    self.handle.written(w.1.len() + hub::DELIVERY_OVERHEAD);
                    origins.push(w.3);
                } else {
                    session.waiting.push_back(w);
                }
            }
        }
        self.unbind_link(&link, origins);
        true
    }

    pub(super) fn end_session(&mut self, channel: u16) {
        let handles: Vec<u32> = self
            .sessions
            .get(&channel)
            .map(|s| s.links.keys().copied().collect())
            .unwrap_or_default();
        for h in handles {
            self.remove_link(channel, h);
        }
        self.sessions.remove(&channel);
    }

    pub(super) fn cleanup(&mut self) {
        let channels: Vec<u16> = self.sessions.keys().copied().collect();
        for c in channels {
            self.end_session(c);
        }
    }
}
