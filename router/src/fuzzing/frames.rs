//! The random values and frames a sequence is made of: where choices come from ([`Entropy`]), the
//! values that let frames reach past the first check ([`Vocabulary`]), and each performative one peer
//! sends, mostly sensible and at times wild.

use fe2o3_amqp_types::definitions::{
    self, AmqpError, ErrorCondition, Handle, ReceiverSettleMode, Role, SenderSettleMode,
};
use fe2o3_amqp_types::messaging::{
    Accepted, ApplicationProperties, DeliveryState, Modified, Properties, Rejected, Released,
    Source, Target, TargetArchetype,
};
use fe2o3_amqp_types::performatives::{Attach, Disposition, Flow, Open, Performative, Transfer};
use fe2o3_amqp_types::primitives::Binary;
use ferry_core::hono::app_property;

use crate::codec::{self, MessageParts};

/// Where random choices come from: libFuzzer's input (through `arbitrary::Unstructured`) or a PRNG.
pub trait Entropy {
    /// A number below `n`; 0 when `n` is 0.
    fn below(&mut self, n: u32) -> u32;
    /// Any number.
    fn any_u32(&mut self) -> u32;
    /// Bytes for `buf` (zeros once the input is used up).
    fn fill(&mut self, buf: &mut [u8]);
    /// Whether there is input left for another step.
    fn has_more(&mut self) -> bool;
}

/// Credentials a connection logs in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub password: String,
}

/// The values that make sequences reach past the first check: logins that work, and an assertion that
/// verifies (for device `d1` of tenant `t1`).
#[derive(Debug, Clone)]
pub struct Vocabulary {
    pub logins: Vec<Login>,
    /// The adapters' user name: its logins send device messages, the others consume and command.
    pub adapter_user: String,
    pub assertion: String,
}

/// Addresses that attach: Hono's (valid ones first), their short forms, and near misses.
const ADDRESSES: &[&str] = &[
    "telemetry/t1",
    "event/t1",
    "command/t1",
    "command_response/t1/x",
    "command_response",
    "command_internal/inst1",
    "t/t1",
    "e/t1",
    "telemetry/t2",
    "event/t2",
    "command/t2",
    "command_response/t2/y",
    "command_response/t1/",
    "telemetry/",
    "telemetry",
    "",
    "command_internal/",
    "telemetry/t1/extra",
    "queue/t1",
    "telemetry/T1!",
];

const LINK_NAMES: &[&str] = &["a", "b", "rcv-telemetry/t1", "snd-telemetry/t1", ""];

pub(super) fn chance(e: &mut impl Entropy, one_in: u32) -> bool {
    e.below(one_in) == 0
}

pub(super) fn pick<'a, T>(e: &mut impl Entropy, from: &'a [T]) -> &'a T {
    let n = u32::try_from(from.len()).unwrap_or(u32::MAX);
    &from[usize::try_from(e.below(n)).unwrap_or(0)]
}

/// Mostly small numbers and the edges where arithmetic wraps; sometimes anything.
fn number(e: &mut impl Entropy) -> u32 {
    match e.below(4) {
        0 | 1 => e.below(8),
        2 => *pick(
            e,
            &[
                255,
                256,
                65_535,
                65_536,
                i32::MAX as u32,
                1 << 31,
                u32::MAX - 1,
                u32::MAX,
            ],
        ),
        _ => e.any_u32(),
    }
}

fn bytes(e: &mut impl Entropy, max: u32) -> Vec<u8> {
    let len = e.below(max + 1);
    let mut v = vec![0; usize::try_from(len).unwrap_or(0)];
    e.fill(&mut v);
    v
}

fn text(e: &mut impl Entropy, max: u32) -> String {
    bytes(e, max)
        .into_iter()
        .map(|b| char::from(b' ' + b % 95))
        .collect()
}

fn address(e: &mut impl Entropy) -> String {
    match e.below(10) {
        0 => text(e, 24),
        1 => format!("command_response/t1/{}", "r".repeat(e.below(400) as usize)),
        _ => (*pick(e, ADDRESSES)).to_owned(),
    }
}

pub(super) fn error_condition(e: &mut impl Entropy) -> Option<definitions::Error> {
    chance(e, 3).then(|| definitions::Error {
        condition: ErrorCondition::AmqpError(AmqpError::InternalError),
        description: Some("fuzz".into()),
        info: None,
    })
}

fn delivery_state(e: &mut impl Entropy) -> Option<DeliveryState> {
    match e.below(6) {
        0 => None,
        1 | 2 => Some(DeliveryState::Accepted(Accepted {})),
        3 => Some(DeliveryState::Rejected(Rejected { error: None })),
        4 => Some(DeliveryState::Released(Released {})),
        _ => Some(DeliveryState::Modified(Modified {
            delivery_failed: Some(e.below(2) == 0),
            undeliverable_here: Some(e.below(2) == 0),
            message_annotations: None,
        })),
    }
}

/// A transfer's payload: well-formed Hono messages of each kind (mostly the kind the link's `address`
/// takes), or something broken.
pub(super) fn message(
    e: &mut impl Entropy,
    vocabulary: &Vocabulary,
    link: Option<&str>,
) -> Vec<u8> {
    let max = if chance(e, 16) { 2000 } else { 64 };
    let data = bytes(e, max);
    let mut props = Properties::builder();
    let mut app = ApplicationProperties::builder();
    let prefix = link.and_then(|a| a.split('/').next()).unwrap_or("");
    let reply = |e: &mut _| {
        if chance(e, 4) {
            address(e)
        } else {
            "command_response/t1/x".to_owned()
        }
    };
    let kind = match prefix {
        _ if chance(e, 4) => e.below(8),
        "telemetry" | "event" | "t" | "e" => e.below(3),
        "command" => 3,
        "command_response" => 4,
        "command_internal" => 5,
        _ => e.below(8),
    };
    match kind {
        // Telemetry or an event from d1, with its assertion.
        0 | 1 => {
            app = app
                .insert(app_property::DEVICE_ID, "d1")
                .insert(app_property::REG_ASSERTION, vocabulary.assertion.as_str());
            props = props.content_type("text/plain");
        }
        // The same, for a device the assertion is not about, or with a broken assertion.
        2 => {
            let device = *pick(e, &["d2", "", "d1"]);
            let token = if chance(e, 2) { "x.y.z" } else { "" };
            app = app
                .insert(app_property::DEVICE_ID, device)
                .insert(app_property::REG_ASSERTION, token);
        }
        // A command from an application.
        3 => {
            props = props
                .to(format!("command/t1/{}", pick(e, &["d1", "d2", "gw", ""])))
                .subject("setBrightness")
                .message_id(format!("m{}", e.below(4)))
                .reply_to(reply(e));
        }
        // A command response from an adapter.
        4 => {
            props = props
                .to(reply(e))
                .correlation_id(format!("m{}", e.below(4)));
            app = app
                .insert(app_property::STATUS, 200)
                .insert(app_property::DEVICE_ID, "d1")
                .insert(app_property::TENANT_ID, "t1")
                .insert(app_property::REG_ASSERTION, vocabulary.assertion.as_str());
        }
        // A command subscription change from an adapter instance.
        5 => {
            props = props.subject(*pick(e, &["register", "unregister", "set-last-gw", "?"]));
            app = app
                .insert(app_property::TENANT_ID, "t1")
                .insert(app_property::DEVICE_ID, *pick(e, &["d1", "gw", ""]))
                .insert(app_property::GATEWAY_ID, "gw")
                .insert("all_devices", e.below(2) == 0);
        }
        // Not a message.
        6 => return bytes(e, 128),
        _ => {}
    }
    let (props, app) = (props.build(), app.build());
    let mut out = Vec::new();
    let parts = MessageParts {
        header: None,
        message_annotations: None,
        properties: Some(&props),
        application_properties: Some(&app),
        data: &data,
    };
    if codec::build_message(&parts, &mut out).is_err() {
        out.clear();
    }
    if chance(e, 8) {
        // Cut short: a message that does not parse, or the first part of a multi-frame one.
        let keep = e.below(u32::try_from(out.len()).unwrap_or(u32::MAX));
        out.truncate(usize::try_from(keep).unwrap_or(0));
    }
    out
}

/// What a generator knows of one peer's connection, so that most frames make sense where they are sent
/// (frames that never do are refused at the first check and reach nothing deeper).
#[derive(Debug, Default)]
pub(super) struct PeerState {
    /// Logged in with the adapters' credential (else as an application user).
    pub(super) adapter: bool,
    pub(super) opened: bool,
    pub(super) begun: bool,
    /// Attached links: handle, whether the peer sends on it, its address.
    pub(super) links: Vec<(u32, bool, String)>,
    pub(super) next_handle: u32,
    pub(super) next_delivery_id: u32,
    pub(super) next_outgoing_id: u32,
}

/// A sensible value, or (one time in `WILD`) anything.
const WILD: u32 = 40;

pub(super) fn wild(e: &mut impl Entropy, sensible: u32) -> u32 {
    if chance(e, WILD) {
        number(e)
    } else {
        sensible
    }
}

/// Hono's addresses for a link on which the peer sends (`true`) or receives, mostly ones its principal
/// may attach (an adapter sends device messages and responses, an application consumes them and sends
/// commands).
fn link_address(e: &mut impl Entropy, adapter: bool, peer_sends: bool) -> String {
    if chance(e, 24) {
        return address(e);
    }
    let choices: &[&str] = match (adapter, peer_sends) {
        // Events get credit without a consumer (they are stored); telemetry only while a consumer has
        // credit, and a sender that ignores credit loses its link.
        (true, true) => &[
            "telemetry/t1",
            "event/t1",
            "event/t1",
            "e/t1",
            "command_response",
            "command_internal/inst1",
            "t/t1",
        ],
        (true, false) => &["command_internal/inst1"],
        (false, true) => &["command/t1"],
        (false, false) => &["telemetry/t1", "event/t1", "command_response/t1/x", "e/t1"],
    };
    (*pick(e, choices)).to_owned()
}

pub(super) fn open(e: &mut impl Entropy, connection: usize) -> Performative {
    Performative::Open(Open {
        container_id: format!("fuzz-{connection}"),
        hostname: chance(e, 4).then(|| text(e, 8)),
        max_frame_size: (if chance(e, 2) {
            65_536
        } else {
            *pick(e, &[512, 4096, 0, 511, u32::MAX])
        })
        .into(),
        channel_max: (if chance(e, 2) { 255 } else { number(e) as u16 }).into(),
        idle_time_out: match e.below(8) {
            0 => Some(1),
            1 => Some(e.below(100)),
            2 => Some(number(e)),
            _ => None,
        },
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
}

pub(super) fn attach(e: &mut impl Entropy, state: &mut PeerState) -> Performative {
    let peer_sends = chance(e, 2);
    let addr = link_address(e, state.adapter, peer_sends);
    let handle = if chance(e, WILD) {
        number(e)
    } else {
        state.next_handle
    };
    state.next_handle = state.next_handle.wrapping_add(1);
    state.links.push((handle, peer_sends, addr.clone()));
    // The peer's receiver names its source, its sender its target (mostly).
    let on_source = peer_sends == chance(e, 40);
    Performative::Attach(Attach {
        name: format!("{}{handle}", pick(e, LINK_NAMES)),
        handle: Handle(handle),
        role: if peer_sends {
            Role::Sender
        } else {
            Role::Receiver
        },
        // Hono's addresses refuse some modes (events must be unsettled): mostly the default.
        snd_settle_mode: match e.below(8) {
            0 => SenderSettleMode::Settled,
            1 => SenderSettleMode::Mixed,
            _ => SenderSettleMode::Unsettled,
        },
        rcv_settle_mode: if chance(e, 40) {
            ReceiverSettleMode::Second
        } else {
            ReceiverSettleMode::First
        },
        source: (!chance(e, 40)).then(|| {
            Box::new(Source {
                address: on_source.then(|| addr.clone()),
                ..Source::default()
            })
        }),
        target: (!chance(e, 40)).then(|| {
            Box::new(TargetArchetype::Target(Target {
                address: (!on_source).then(|| addr.clone()),
                ..Target::default()
            }))
        }),
        unsettled: None,
        incomplete_unsettled: chance(e, 16),
        initial_delivery_count: (peer_sends != chance(e, 16)).then(|| wild(e, 0)),
        max_message_size: chance(e, 4).then(|| u64::from(number(e))),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
}

/// A link of the peer's (one it sends on when `sending`), or a handle nobody attached. Telemetry links
/// less often: the router gives them credit only while a consumer has some, and detaches a sender that
/// goes on without.
pub(super) fn link_handle(e: &mut impl Entropy, state: &PeerState, sending: Option<bool>) -> u32 {
    let telemetry_too = chance(e, 3);
    let fitting: Vec<u32> = state
        .links
        .iter()
        .filter(|(_, sends, _)| sending.is_none_or(|s| s == *sends))
        .filter(|(_, sends, a)| telemetry_too || !*sends || !a.starts_with('t'))
        .map(|(h, _, _)| *h)
        .collect();
    if fitting.is_empty() || chance(e, WILD) {
        number(e)
    } else {
        *pick(e, &fitting)
    }
}

pub(super) fn flow(e: &mut impl Entropy, state: &PeerState) -> Performative {
    let link = !chance(e, 5);
    // Credit matters on the links the router sends on (the peer's receivers).
    let receivers = if chance(e, 4) { None } else { Some(false) };
    let handle = link.then(|| Handle(link_handle(e, state, receivers)));
    Performative::Flow(Flow {
        next_incoming_id: (!chance(e, 8)).then(|| wild(e, 0)),
        incoming_window: wild(e, 2048),
        next_outgoing_id: wild(e, state.next_outgoing_id),
        outgoing_window: wild(e, 2048),
        delivery_count: (link && !chance(e, 4)).then(|| wild(e, 0)),
        link_credit: link.then(|| match e.below(6) {
            0 => number(e),
            1 => *pick(e, &[i32::MAX as u32, u32::MAX, 1 << 31]),
            _ => e.below(100),
        }),
        handle,
        available: chance(e, 4).then(|| number(e)),
        drain: chance(e, 6),
        echo: chance(e, 6),
        properties: None,
    })
}

pub(super) fn transfer(e: &mut impl Entropy, state: &mut PeerState, handle: u32) -> Performative {
    let delivery_id = if chance(e, 40) {
        None
    } else if chance(e, WILD) {
        Some(number(e))
    } else {
        Some(state.next_delivery_id)
    };
    state.next_delivery_id = state.next_delivery_id.wrapping_add(1);
    state.next_outgoing_id = state.next_outgoing_id.wrapping_add(1);
    Performative::Transfer(Transfer {
        handle: Handle(handle),
        delivery_id,
        delivery_tag: (!chance(e, 16)).then(|| Binary::from(bytes(e, 8))),
        message_format: (!chance(e, 4)).then(|| wild(e, 0)),
        settled: match e.below(3) {
            0 => None,
            1 => Some(true),
            _ => Some(false),
        },
        more: chance(e, 8),
        rcv_settle_mode: chance(e, 8).then_some(ReceiverSettleMode::Second),
        state: chance(e, 8).then(|| delivery_state(e)).flatten(),
        resume: chance(e, 16),
        aborted: chance(e, 12),
        batchable: chance(e, 4),
    })
}

pub(super) fn disposition(e: &mut impl Entropy) -> Performative {
    let first = if chance(e, 4) { number(e) } else { e.below(16) };
    Performative::Disposition(Disposition {
        role: if chance(e, 6) {
            Role::Sender
        } else {
            Role::Receiver
        },
        first,
        last: match e.below(5) {
            0 => None,
            // Wraps around all 2^32 ids.
            1 => Some(first.wrapping_sub(1)),
            2 => Some(number(e)),
            _ => Some(first.wrapping_add(e.below(16))),
        },
        settled: !chance(e, 4),
        state: delivery_state(e),
        batchable: chance(e, 4),
    })
}
