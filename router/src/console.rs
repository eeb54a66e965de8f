//! What the router does for the registry's console and presence API in embedded mode (docs/console.md):
//! it records presence from what adapters tell it and from the device messages passing through, copies
//! device messages to a tenant's live tap while someone watches, and sends the console's commands as an
//! application would, through the hub.
//!
//! Nothing here takes a message from an application: a tap gets a copy after routing, and a console
//! command's response goes to a reply address of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use fe2o3_amqp_types::messaging::{DeliveryState, Properties};
use fe2o3_amqp_types::primitives::SimpleValue;
use ferry_core::console::{
    unix_now, CommandRequest, CommandResponse, CommandResult, PresenceChange, PresenceUpdate,
    TapMessage, TAP_PAYLOAD_MAX,
};
use ferry_core::hono::{app_property, content_type};
use ferry_core::ids::{DeviceId, TenantId};
use ferry_core::shutdown::Shutdown;
use tokio::sync::mpsc;

use crate::codec::{self, MessageParts, MessageView};
use crate::events::EventStore;
use crate::hub::{self, CommandTarget, ConnHandle, Kind, Routed, ToConn};
use crate::Shared;

/// Last-seen is reported at most once per device in this many seconds.
pub const SEEN_SLOT_SECS: u64 = 5;

/// Slots of the [`SeenFilter`]; collisions only cost an extra report.
const SEEN_SLOTS: usize = 1 << 16;

/// Which devices had their last-seen reported in the current time slot: one atomic per hash slot, so the
/// per-message check takes no lock and allocates nothing.
#[derive(Debug)]
pub struct SeenFilter {
    slots: Box<[AtomicU64]>,
}

impl Default for SeenFilter {
    fn default() -> Self {
        Self {
            slots: (0..SEEN_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl SeenFilter {
    /// Whether (tenant, device) should be reported now (first time in this time slot).
    pub fn due(&self, tenant: &TenantId, device: &DeviceId, now: u64) -> bool {
        let hash = fnv1a(&[tenant.as_str().as_bytes(), b"/", device.as_str().as_bytes()]);
        let slot = &self.slots[usize::try_from(hash % SEEN_SLOTS as u64).unwrap_or(0)];
        // Upper 32 bits: part of the hash; lower 32: the time slot.
        let mark = (hash & 0xFFFF_FFFF_0000_0000) | ((now / SEEN_SLOT_SECS) & 0xFFFF_FFFF);
        slot.swap(mark, Ordering::Relaxed) != mark
    }
}

/// FNV-1a over `parts`: the per-message hash of the seen filter, a few instructions per byte where
/// SipHash took a share of the router's time per message (issue 16's profile). Identifiers cannot hold
/// `/`, so the separator keeps (tenant, device) pairs apart.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A verified device message, as [`observe`] sees it.
pub(crate) struct Observed<'o> {
    pub kind: &'o Kind,
    pub tenant: &'o TenantId,
    pub device: &'o DeviceId,
    pub view: &'o MessageView<'o>,
    pub content_type: Option<&'o str>,
    /// Its `orig_adapter` application property (read with the others the router checks).
    pub adapter: Option<&'o str>,
    /// Seconds since the Unix epoch (the clock is read once per message).
    pub now: u64,
}

/// Called for every verified device message: last-seen, connection notifications and `ttd`, and the
/// live tap.
pub(crate) fn observe<S: EventStore>(shared: &Shared<S>, message: &Observed<'_>) {
    let &Observed {
        kind,
        tenant,
        device,
        view,
        content_type,
        adapter,
        now,
    } = message;
    let presence = &shared.bridge.presence;
    let update = |change| PresenceUpdate {
        tenant: tenant.clone(),
        device: device.clone(),
        change,
        at: now,
    };
    let mut reported = false;
    if *kind == Kind::Event && content_type == Some(content_type::CONNECTION_NOTIFICATION) {
        if let Some(change) = view.single_data().and_then(connection_notification) {
            presence.record(update(change));
            reported = true;
        }
    }
    // ttd tells about adapters that do not report connections themselves (HTTP: the device waits for
    // a command). The MQTT adapter's connect and disconnect reports are the truth for its devices; its
    // ttd 0 only means it stopped listening for commands.
    if !reported && adapter.is_some_and(|a| a != ferry_core::hono::adapter_type::MQTT) {
        if let Ok(Some(ttd)) = view.app_property(app_property::TTD) {
            let ttd = match ttd {
                SimpleValue::Int(v) => Some(i64::from(v)),
                SimpleValue::Long(v) => Some(v),
                _ => None,
            };
            let change = match ttd {
                Some(0) => Some(PresenceChange::Disconnected { connection: None }),
                Some(t) if t < 0 => Some(connected(adapter, None)),
                Some(t) => Some(connected(
                    adapter,
                    Some(now.saturating_add(u64::try_from(t).unwrap_or(0))),
                )),
                None => None,
            };
            if let Some(change) = change {
                presence.record(update(change));
                reported = true;
            }
        }
    }
    if !reported && shared.seen.due(tenant, device, now) {
        presence.record(update(PresenceChange::Seen));
    }
    let taps = &shared.bridge.taps;
    if taps.active() && taps.watched(tenant) {
        let body = view.single_data().unwrap_or_default();
        let shown = &body[..body.len().min(TAP_PAYLOAD_MAX)];
        taps.publish(
            tenant,
            TapMessage {
                kind: if *kind == Kind::Event {
                    "event"
                } else {
                    "telemetry"
                },
                device_id: device.as_str().to_owned(),
                content_type: content_type.map(str::to_owned),
                payload: String::from_utf8_lossy(shown).into_owned(),
                truncated: shown.len() < body.len(),
                size: body.len(),
                time: ferry_core::console::tap_time(),
            },
        );
    }
}

fn connected(adapter: Option<&str>, until: Option<u64>) -> PresenceChange {
    PresenceChange::Connected {
        adapter: adapter.unwrap_or("unknown").to_owned(),
        gateway: None,
        remote_id: None,
        until,
        connection: None,
    }
}

/// Hono's connection event body `{"cause", "remote-id", "source"}` (HONO-CONTRACT §1.2).
fn connection_notification(body: &[u8]) -> Option<PresenceChange> {
    #[derive(serde::Deserialize)]
    struct Body {
        cause: String,
        #[serde(rename = "remote-id")]
        remote_id: Option<String>,
        source: Option<String>,
    }
    let b: Body = serde_json::from_slice(body).ok()?;
    match b.cause.as_str() {
        "connected" => Some(PresenceChange::Connected {
            adapter: b.source.unwrap_or_else(|| "unknown".into()),
            gateway: None,
            remote_id: b.remote_id,
            until: None,
            connection: None,
        }),
        "disconnected" => Some(PresenceChange::Disconnected { connection: None }),
        _ => None,
    }
}

/// An adapter's `connected` / `disconnected` report on its `command_internal` link.
pub(crate) fn report<S: EventStore>(
    shared: &Shared<S>,
    view: &MessageView<'_>,
    is_connected: bool,
) -> Result<(), &'static str> {
    let field = |key: &str| view.app_property_str(key);
    let (Some(t), Some(d)) = (
        field(app_property::TENANT_ID),
        field(app_property::DEVICE_ID),
    ) else {
        return Err("tenant_id and device_id are missing");
    };
    let tenant = TenantId::new(t).map_err(|_| "invalid tenant_id")?;
    let device = DeviceId::new(d).map_err(|_| "invalid device_id")?;
    let connection = field(ferry_core::hono::command_internal::CONNECTION_ID)
        .map(|c| c.chars().take(256).collect::<String>());
    let change = if is_connected {
        let gateway = field(app_property::GATEWAY_ID)
            .map(DeviceId::new)
            .transpose()
            .map_err(|_| "invalid gateway_id")?;
        PresenceChange::Connected {
            adapter: field(app_property::ORIG_ADAPTER)
                .unwrap_or("unknown")
                .chars()
                .take(64)
                .collect(),
            gateway,
            remote_id: field(ferry_core::hono::command_internal::REMOTE_ID)
                .map(|r| r.chars().take(256).collect()),
            until: None,
            connection,
        }
    } else {
        PresenceChange::Disconnected { connection }
    };
    shared.bridge.presence.record(PresenceUpdate {
        tenant,
        device,
        change,
        at: unix_now(),
    });
    Ok(())
}

/// Serves the console's commands until shutdown, each in a task of its own.
pub(crate) async fn serve_commands<S: EventStore>(
    shared: Arc<Shared<S>>,
    mut requests: mpsc::Receiver<CommandRequest>,
    shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            r = requests.recv() => match r {
                Some(request) => {
                    tokio::spawn(send_command(shared.clone(), request));
                }
                None => return,
            },
            () = shutdown.clone().wait() => return,
        }
    }
}

fn outcome_name(state: &DeliveryState) -> (&'static str, Option<String>) {
    match state {
        DeliveryState::Accepted(_) => ("accepted", None),
        DeliveryState::Released(_) => ("released", None),
        DeliveryState::Modified(_) => ("modified", None),
        DeliveryState::Rejected(r) => (
            "rejected",
            r.error.as_ref().map(|e| {
                e.description
                    .clone()
                    .unwrap_or_else(|| format!("{:?}", e.condition))
            }),
        ),
        _ => ("unknown", None),
    }
}

/// One console command, as an application sends it: to `command/T` with `to` = `command/T/DEVICE`,
/// `reply-to` a reply address of its own, which it consumes until the response or the timeout.
async fn send_command<S: EventStore>(shared: Arc<Shared<S>>, request: CommandRequest) {
    let CommandRequest {
        tenant,
        device,
        name,
        content_type,
        payload,
        expect_response,
        timeout,
        reply,
    } = request;
    let id = uuid_like();
    let reply_id = format!("ferry-console-{id}");
    let reply_to = format!("command_response/{tenant}/{reply_id}");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let conn = ConnHandle::new(tx);
    let hub = &shared.hub;
    // The response receiver, with credit for one response.
    let mut response_addr = hub.address_with(Kind::CommandResponse, &tenant, Some(&reply_id));
    let consumer = expect_response.then(|| {
        let c = hub.attach_consumer(&mut response_addr, conn.clone(), hub::next_id());
        hub.consumer_credit(&response_addr, &c, 1);
        c
    });
    let properties = Properties {
        message_id: Some(id.clone().into()),
        to: Some(format!("command/{tenant}/{device}")),
        subject: Some(name),
        reply_to: expect_response.then_some(reply_to),
        content_type: content_type.map(Into::into),
        ..Properties::default()
    };
    let mut message = Vec::with_capacity(payload.len() + 128);
    let result = match codec::build_message(
        &MessageParts {
            properties: Some(&properties),
            data: &payload,
            ..MessageParts::default()
        },
        &mut message,
    ) {
        Err(_) => CommandResult {
            outcome: "rejected".into(),
            error: Some("the command cannot be encoded".into()),
            response: None,
        },
        Ok(()) => {
            let origin = hub::Origin::Producer {
                conn: conn.clone(),
                channel: 0,
                delivery_id: 0,
            };
            let counters = hub.metrics.outcomes(&tenant, "command");
            let size = message.len();
            let message = Bytes::from(message);
            let routed = match hub.command_target(&tenant, device.as_str()) {
                CommandTarget::Device(instance) => {
                    hub.route_command(&instance, message, false, origin)
                }
                CommandTarget::Nobody => Routed::NoConsumer,
                CommandTarget::Gateways => {
                    let via = shared.via.via(&tenant, device.as_str()).await;
                    match hub.gateway_for(&tenant, device.as_str(), &via) {
                        Some((gateway, instance)) => {
                            let edited = codec::parse_message(&message).ok().and_then(|view| {
                                let set = [(app_property::VIA, &*gateway)];
                                let mut out = Vec::with_capacity(message.len() + 32);
                                codec::rewrite_message(
                                    &view,
                                    &codec::MessageEdit {
                                        set_app_properties: &set,
                                        ..codec::MessageEdit::default()
                                    },
                                    &mut out,
                                )
                                .ok()
                                .map(|()| Bytes::from(out))
                            });
                            match edited {
                                Some(m) => hub.route_command(&instance, m, false, origin),
                                None => Routed::NoConsumer,
                            }
                        }
                        None => Routed::NoConsumer,
                    }
                }
            };
            match routed {
                Routed::NoConsumer => {
                    counters.count(crate::metrics::Outcome::Released, size);
                    CommandResult {
                        outcome: "released".into(),
                        error: Some("the device is not connected for commands".into()),
                        response: None,
                    }
                }
                Routed::Forwarded => {
                    counters.count(crate::metrics::Outcome::Forwarded, size);
                    await_outcome(&shared, &mut rx, consumer.as_deref(), timeout).await
                }
            }
        }
    };
    if let Some(c) = &consumer {
        hub.detach_consumer(&response_addr, c, Vec::new());
    }
    let _ = reply.send(result);
}

/// Waits for the command's disposition and, when it was accepted and a response is expected, the
/// response.
async fn await_outcome<S: EventStore>(
    shared: &Shared<S>,
    rx: &mut mpsc::UnboundedReceiver<ToConn>,
    consumer: Option<&hub::Consumer>,
    timeout: std::time::Duration,
) -> CommandResult {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut result: Option<CommandResult> = None;
    loop {
        let next = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => {
                return result.unwrap_or(CommandResult {
                    outcome: "timeout".into(),
                    error: Some(format!("no outcome within {} ms", timeout.as_millis())),
                    response: None,
                });
            }
        };
        match next {
            ToConn::Outcome { state, .. } => {
                let (outcome, error) = outcome_name(&state);
                let r = CommandResult {
                    outcome: outcome.into(),
                    error,
                    response: result.and_then(|r| r.response),
                };
                if outcome != "accepted" || consumer.is_none() || r.response.is_some() {
                    return r;
                }
                result = Some(r);
            }
            ToConn::Deliver {
                payload, origin, ..
            } => {
                let response = codec::parse_message(&payload).ok().map(|view| {
                    let status = match view.app_property(app_property::STATUS) {
                        Ok(Some(SimpleValue::Int(v))) => Some(i64::from(v)),
                        Ok(Some(SimpleValue::Long(v))) => Some(v),
                        Ok(Some(SimpleValue::Uint(v))) => Some(i64::from(v)),
                        _ => None,
                    };
                    let body = view.single_data().unwrap_or_default();
                    let shown = &body[..body.len().min(TAP_PAYLOAD_MAX)];
                    CommandResponse {
                        status,
                        content_type: view
                            .property_str(codec::PropertyField::ContentType)
                            .map(str::to_owned),
                        payload: String::from_utf8_lossy(shown).into_owned(),
                    }
                });
                if let Some(c) = consumer {
                    c.dequeued();
                    c.conn.written(payload.len() + hub::DELIVERY_OVERHEAD);
                    shared.hub.consumer_settled(
                        c,
                        origin,
                        DeliveryState::Accepted(fe2o3_amqp_types::messaging::Accepted {}),
                    );
                }
                let r = CommandResult {
                    outcome: result
                        .as_ref()
                        .map_or("accepted", |r| r.outcome.as_str())
                        .into(),
                    error: None,
                    response,
                };
                // The response can only come once the device took the command.
                return r;
            }
            ToConn::Wake { .. } => {}
        }
    }
}

/// A random id for a command and its reply address.
fn uuid_like() -> String {
    use rand::Rng as _;
    let n: u128 = rand::thread_rng().gen();
    format!("{n:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(t: &str, d: &str) -> (TenantId, DeviceId) {
        (
            TenantId::new(t).expect("a tenant id"),
            DeviceId::new(d).expect("a device id"),
        )
    }

    #[test]
    fn a_device_is_reported_once_per_time_slot_and_devices_apart() {
        let seen = SeenFilter::default();
        let (t, d1) = ids("t1", "d1");
        let (_, d2) = ids("t1", "d2");
        let (t2, _) = ids("t2", "d1");
        let now = 1_000 * SEEN_SLOT_SECS;
        assert!(seen.due(&t, &d1, now));
        assert!(!seen.due(&t, &d1, now + SEEN_SLOT_SECS - 1), "same slot");
        assert!(seen.due(&t, &d2, now), "another device");
        assert!(
            seen.due(&t2, &d1, now),
            "the same device id in another tenant"
        );
        assert!(seen.due(&t, &d1, now + SEEN_SLOT_SECS), "the next slot");
        // "t1"/"d1" and "t1d"/"1" would run together without the separator.
        assert_ne!(fnv1a(&[b"t1", b"/", b"d1"]), fnv1a(&[b"t1d", b"/", b"1"]));
    }
}
