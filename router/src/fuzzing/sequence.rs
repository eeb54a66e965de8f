//! A [`Sequence`]: two peers' logins and the frames they send, interleaved, as
//! [`Sequence::generate`] makes them from an [`Entropy`].

use bytes::BytesMut;
use fe2o3_amqp_types::definitions::Handle;
use fe2o3_amqp_types::performatives::{Begin, Close, Detach, End, Performative};
use fe2o3_amqp_types::primitives::Binary;
use fe2o3_amqp_types::sasl::SaslInit;
use serde_amqp::primitives::Symbol;

use super::frames::{
    attach, chance, disposition, error_condition, flow, link_handle, message, open, pick, transfer,
    wild, Entropy, Login, PeerState, Vocabulary,
};
use crate::codec::{self, SaslFrame};

/// One frame one peer sends.
#[derive(Debug, Clone)]
pub struct Step {
    /// Which of the two connections sends it.
    pub connection: usize,
    pub channel: u16,
    pub performative: Performative,
    pub payload: Vec<u8>,
    /// Give the router [`Pace::pause`] before this frame, so that what earlier frames set off (an event
    /// stored, credit passed to a producer, a delivery to a consumer) happens before it.
    pub pause: bool,
}

/// Two peers' logins and the frames they send, in order.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub logins: [Login; 2],
    pub steps: Vec<Step>,
}

impl Sequence {
    /// Up to `max_steps` frames of two peers, interleaved. Each peer mostly follows the protocol's order
    /// (open, begin, then links, credit, deliveries and settlements on them, and at times detach, end or
    /// close); one field in about [`WILD`] is anything, and one frame in a while comes out of order.
    pub fn generate(e: &mut impl Entropy, vocabulary: &Vocabulary, max_steps: usize) -> Self {
        // Mostly an adapter and an application, so that messages have somewhere to go.
        let mut login = |adapter: bool| {
            let any = chance(e, 8);
            let fitting: Vec<&Login> = vocabulary
                .logins
                .iter()
                .filter(|l| any || (l.user == vocabulary.adapter_user) == adapter)
                .collect();
            if fitting.is_empty() {
                pick(e, &vocabulary.logins).clone()
            } else {
                (*pick(e, &fitting)).clone()
            }
        };
        let logins = [login(true), login(false)];
        let mut steps = Vec::new();
        let mut peers = logins.clone().map(|login| PeerState {
            adapter: login.user == vocabulary.adapter_user,
            ..PeerState::default()
        });
        while steps.len() < max_steps && e.has_more() {
            let connection = usize::from(chance(e, 2));
            let state = &mut peers[connection];
            let channel = if chance(e, 64) {
                u16::try_from(e.any_u32() & 0xffff).unwrap_or(0)
            } else {
                0
            };
            let mut payload = Vec::new();
            let mut second_session = false;
            let performative = if !state.opened {
                state.opened = true;
                open(e, connection)
            } else if !state.begun && !chance(e, 40) {
                state.begun = true;
                Performative::Begin(Begin {
                    remote_channel: chance(e, 40).then(|| e.below(3) as u16),
                    next_outgoing_id: wild(e, 0),
                    incoming_window: wild(e, 2048),
                    outgoing_window: wild(e, 2048),
                    handle_max: wild(e, 255).into(),
                    offered_capabilities: None,
                    desired_capabilities: None,
                    properties: None,
                })
            } else {
                match e.below(40) {
                    0..=7 if state.links.len() < 6 => attach(e, state),
                    8..=27 if state.links.iter().any(|(_, sends, _)| *sends) => {
                        let handle = link_handle(e, state, Some(true));
                        let address = state
                            .links
                            .iter()
                            .find(|(h, _, _)| *h == handle)
                            .map(|(_, _, a)| a.clone());
                        payload = message(e, vocabulary, address.as_deref());
                        transfer(e, state, handle)
                    }
                    0..=27 => flow(e, state),
                    28..=34 => disposition(e),
                    35 | 36 => {
                        let handle = link_handle(e, state, None);
                        state.links.retain(|(h, _, _)| *h != handle);
                        Performative::Detach(Detach {
                            handle: Handle(handle),
                            closed: !chance(e, 4),
                            error: error_condition(e),
                        })
                    }
                    37 => {
                        state.begun = false;
                        state.links.clear();
                        Performative::End(End {
                            error: error_condition(e),
                        })
                    }
                    38 if chance(e, 3) => Performative::Close(Close {
                        error: error_condition(e),
                    }),
                    38 if chance(e, 8) => open(e, connection),
                    38 => flow(e, state),
                    // A second session (on a channel that is in use, at times).
                    _ => {
                        second_session = !chance(e, 8);
                        Performative::Begin(Begin {
                            remote_channel: chance(e, 8).then(|| e.below(3) as u16),
                            next_outgoing_id: wild(e, 0),
                            incoming_window: wild(e, 2048),
                            outgoing_window: wild(e, 2048),
                            handle_max: wild(e, 255).into(),
                            offered_capabilities: None,
                            desired_capabilities: None,
                            properties: None,
                        })
                    }
                }
            };
            let channel = match performative {
                Performative::Open(_) => 0,
                Performative::Begin(_) if second_session => 1,
                _ => channel,
            };
            steps.push(Step {
                connection,
                channel,
                performative,
                payload,
                pause: chance(e, 8),
            });
        }
        Self { logins, steps }
    }

    /// What each connection sends, in order, after its login: one chunk per step.
    pub(super) fn login_bytes(login: &Login) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.extend_from_slice(codec::SASL_HEADER);
        let response = format!("\0{}\0{}", login.user, login.password).into_bytes();
        // Encoding a sasl-init of two short strings cannot fail; an empty login would only be refused.
        let _ = codec::encode_sasl(
            &SaslFrame::Init(SaslInit {
                mechanism: Symbol::from("PLAIN"),
                initial_response: Some(Binary::from(response)),
                hostname: None,
            }),
            &mut out,
        );
        out.extend_from_slice(codec::AMQP_HEADER);
        out.to_vec()
    }

    pub(super) fn step_bytes(step: &Step) -> Vec<u8> {
        let mut out = BytesMut::new();
        // A performative the codec refuses to encode (none should be) is left out rather than sent broken.
        let _ = codec::encode_frame(step.channel, &step.performative, &step.payload, &mut out);
        out.to_vec()
    }
}
