//! Hono's command routing (HONO-CONTRACT §1.3, §2): commands from applications to the adapter instance
//! holding the device (or one of its gateways), command responses back to the waiting application, and
//! the adapters' subscription changes on `command_internal/INSTANCE`.

use bytes::Bytes;
use fe2o3_amqp_types::definitions::{AmqpError, ErrorCondition};
use fe2o3_amqp_types::messaging::DeliveryState;
use ferry_core::hono::app_property;
use ferry_core::hono::command_internal::{
    ALL_DEVICES, CONNECTED, DISCONNECTED, REGISTER, SET_LAST_GATEWAY, UNREGISTER,
};

use super::routing::Incoming;
use super::{accepted, rejected, Conn};
use crate::auth::Address;
use crate::codec::{self, MessageEdit};
use crate::events::EventStore;
use crate::hub::{self, AddressRef, CommandTarget, Routed, ToConn};
use crate::metrics::Outcome;

/// A command with the router's `via` (the gateway it goes to, HONO-CONTRACT §1.3), replacing any an
/// application set; `None` removes it. `None` back when the message cannot be rewritten.
fn with_via(message: &Bytes, gateway: Option<&str>) -> Option<Bytes> {
    let view = codec::parse_message(message).ok()?;
    let set = gateway.map(|g| [(app_property::VIA, g)]);
    let edit = MessageEdit {
        strip_app_properties: &[app_property::VIA],
        set_app_properties: set.as_ref().map_or(&[][..], |s| &s[..]),
        ..MessageEdit::default()
    };
    let mut out = Vec::with_capacity(message.len() + 32);
    codec::rewrite_message(&view, &edit, &mut out).ok()?;
    Some(Bytes::from(out))
}

/// A message forwarded as it came, in an allocation of its own. It arrived as a slice of the connection's
/// read buffer, and held in a consumer's queue it would keep that whole buffer alive, which the byte
/// accounting per connection (`queued_bytes`) does not see. Rewritten messages (device messages, commands
/// with a `via`) are new allocations already.
fn own(message: &Bytes) -> Bytes {
    Bytes::copy_from_slice(message)
}

impl<S: EventStore> Conn<S> {
    /// HONO-CONTRACT §1.3: an application's command on `command/T`, with `to` = `command/T/DEVICE`, a
    /// `subject` and a message or correlation id, goes to the adapter instance holding the device;
    /// `released` when none does.
    pub(super) fn route_command(
        &mut self,
        channel: u16,
        addr: &AddressRef,
        delivery_id: u32,
        settled: bool,
        message: Bytes,
    ) {
        let reject = |why: &str| rejected(ErrorCondition::AmqpError(AmqpError::DecodeError), why);
        // The device, and whether the application set a `via` of its own (which only the router may).
        let check = || -> Result<(String, bool), DeliveryState> {
            let view = codec::parse_message(&message).map_err(|_| reject("malformed message"))?;
            let props = view
                .properties()
                .map_err(|_| reject("malformed properties"))?
                .ok_or_else(|| reject("a command needs properties"))?;
            let to = props.to.as_deref().ok_or_else(|| reject("to is missing"))?;
            let device = to
                .strip_prefix("command/")
                .and_then(|r| r.split_once('/'))
                .filter(|(t, _)| *t == addr.tenant.as_str())
                .map(|(_, d)| d)
                .ok_or_else(|| reject("to must be command/TENANT/DEVICE of this link's tenant"))?;
            let device = ferry_core::ids::DeviceId::new(device)
                .map_err(|_| reject("invalid device id in to"))?;
            if props.subject.is_none() {
                return Err(reject("subject (the command name) is missing"));
            }
            if props.message_id.is_none() && props.correlation_id.is_none() {
                return Err(reject("message-id or correlation-id is required"));
            }
            let has_via = view.app_property_raw(app_property::VIA).is_some();
            Ok((device.to_string(), has_via))
        };
        let size = message.len();
        let at = Incoming {
            channel,
            delivery_id,
            settled,
            size,
        };
        let (device, has_via) = match check() {
            Ok(checked) => checked,
            Err(state) => {
                addr.counters.count(Outcome::Rejected, size);
                if !settled {
                    self.disposition(channel, delivery_id, state);
                }
                return;
            }
        };
        let origin = self.origin(channel, delivery_id, settled);
        match self.shared.hub.command_target(&addr.tenant, &device) {
            CommandTarget::Device(instance) => {
                let payload = if has_via {
                    with_via(&message, None).unwrap_or_else(|| own(&message))
                } else {
                    own(&message)
                };
                let routed = self
                    .shared
                    .hub
                    .route_command(&instance, payload, settled, origin);
                self.routed(at, &addr.counters.clone(), routed);
            }
            CommandTarget::Nobody => self.routed(at, &addr.counters.clone(), Routed::NoConsumer),
            CommandTarget::Gateways => {
                // The device's gateways come from the registry (cached): off the connection's task.
                let shared = self.shared.clone();
                let addr = addr.clone();
                let conn = self.handle.clone();
                tokio::spawn(async move {
                    let via = shared.via.via(&addr.tenant, &device).await;
                    let routed = match shared.hub.gateway_for(&addr.tenant, &device, &via) {
                        Some((gateway, instance)) => match with_via(&message, Some(&gateway)) {
                            Some(payload) => shared
                                .hub
                                .route_command(&instance, payload, settled, origin),
                            None => Routed::NoConsumer,
                        },
                        None => Routed::NoConsumer,
                    };
                    match routed {
                        Routed::Forwarded => addr.counters.count(Outcome::Forwarded, size),
                        Routed::NoConsumer => {
                            addr.counters.count(Outcome::Released, size);
                            if !settled {
                                conn.send(ToConn::Outcome {
                                    channel,
                                    delivery_id,
                                    state: hub::release(),
                                });
                            }
                        }
                    }
                });
            }
        }
    }

    /// A command response from an adapter: `to` names `command_response/T/REPLY`, where an application
    /// waits; `released` when none does.
    pub(super) fn route_response(
        &mut self,
        channel: u16,
        delivery_id: u32,
        settled: bool,
        message: Bytes,
    ) {
        let target = codec::parse_message(&message)
            .ok()
            .and_then(|v| v.properties().ok().flatten())
            .and_then(|p| p.to)
            .and_then(|to| match Address::parse(&to) {
                Some(Address::CommandResponse(t, reply)) => Some((t, reply)),
                _ => None,
            });
        let size = message.len();
        match target {
            Some((tenant, reply)) => {
                let origin = self.origin(channel, delivery_id, settled);
                let routed =
                    self.shared
                        .hub
                        .route_response(&tenant, &reply, own(&message), settled, origin);
                self.routed(
                    Incoming {
                        channel,
                        delivery_id,
                        settled,
                        size,
                    },
                    &self
                        .shared
                        .hub
                        .metrics
                        .outcomes(&tenant, "command_response"),
                    routed,
                );
            }
            None => {
                if !settled {
                    self.disposition(
                        channel,
                        delivery_id,
                        rejected(
                            ErrorCondition::AmqpError(AmqpError::DecodeError),
                            "to must be command_response/TENANT/REPLY_ID",
                        ),
                    );
                }
            }
        }
    }

    /// A subscription change from an adapter instance on `command_internal/INSTANCE`: subject `register`
    /// or `unregister`, with application properties `tenant_id` and `device_id` (and `all_devices` =
    /// true for a gateway's subscription for all its devices), or a JSON body
    /// `[{"tenant_id": .., "device_id": .., "all_devices": ..}, ...]` to change many at once (after a
    /// reconnect); or subject `set-last-gw` with `tenant_id`, `device_id` and `gateway_id`; or a presence
    /// report, `connected` / `disconnected` (docs/console.md).
    pub(super) fn subscription(
        &mut self,
        channel: u16,
        addr: &AddressRef,
        delivery_id: u32,
        settled: bool,
        message: &Bytes,
    ) {
        let result = (|| -> Result<(), &'static str> {
            let view = codec::parse_message(message).map_err(|_| "malformed message")?;
            let props = view.properties().map_err(|_| "malformed properties")?;
            let register = match props.as_ref().and_then(|p| p.subject.as_deref()) {
                Some(REGISTER) => true,
                Some(UNREGISTER) => false,
                Some(SET_LAST_GATEWAY) => {
                    let field = |key: &str| view.app_property_str(key);
                    let (Some(t), Some(d), Some(g)) = (
                        field(app_property::TENANT_ID),
                        field(app_property::DEVICE_ID),
                        field(app_property::GATEWAY_ID),
                    ) else {
                        return Err("set-last-gw needs tenant_id, device_id and gateway_id");
                    };
                    let tenant =
                        ferry_core::ids::TenantId::new(t).map_err(|_| "invalid tenant_id")?;
                    let device =
                        ferry_core::ids::DeviceId::new(d).map_err(|_| "invalid device_id")?;
                    let gateway =
                        ferry_core::ids::DeviceId::new(g).map_err(|_| "invalid gateway_id")?;
                    self.shared
                        .hub
                        .set_last_gateway(&tenant, device.as_str(), gateway.as_str());
                    return Ok(());
                }
                Some(CONNECTED) => return crate::console::report(&self.shared, &view, true),
                Some(DISCONNECTED) => return crate::console::report(&self.shared, &view, false),
                _ => return Err(
                    "subject must be register, unregister, set-last-gw, connected or disconnected",
                ),
            };
            let mut entries: Vec<(String, String, bool)> = Vec::new();
            if let (Some(t), Some(d)) = (
                view.app_property_str(app_property::TENANT_ID),
                view.app_property_str(app_property::DEVICE_ID),
            ) {
                let all = matches!(
                    view.app_property(ALL_DEVICES),
                    Ok(Some(fe2o3_amqp_types::primitives::SimpleValue::Bool(true)))
                );
                entries.push((t.to_owned(), d.to_owned(), all));
            } else if let Some(body) = view.single_data().filter(|b| !b.is_empty()) {
                #[derive(serde::Deserialize)]
                struct Entry {
                    tenant_id: String,
                    device_id: String,
                    #[serde(default)]
                    all_devices: bool,
                }
                let list: Vec<Entry> = serde_json::from_slice(body)
                    .map_err(|_| "body must be a JSON list of tenant_id/device_id")?;
                entries.extend(
                    list.into_iter()
                        .map(|e| (e.tenant_id, e.device_id, e.all_devices)),
                );
            } else {
                return Err("tenant_id and device_id are missing");
            }
            for (t, d, all) in entries {
                let tenant = ferry_core::ids::TenantId::new(&t).map_err(|_| "invalid tenant_id")?;
                let device = ferry_core::ids::DeviceId::new(&d).map_err(|_| "invalid device_id")?;
                let hub = &self.shared.hub;
                match (register, all) {
                    (true, false) => hub.subscribe_commands(&tenant, device.as_str(), addr),
                    (false, false) => hub.unsubscribe_commands(&tenant, device.as_str(), addr),
                    (true, true) => hub.subscribe_gateway(&tenant, device.as_str(), addr),
                    (false, true) => hub.unsubscribe_gateway(&tenant, device.as_str(), addr),
                }
            }
            Ok(())
        })();
        if !settled {
            let state = match result {
                Ok(()) => accepted(),
                Err(why) => rejected(ErrorCondition::AmqpError(AmqpError::DecodeError), why),
            };
            self.disposition(channel, delivery_id, state);
        }
    }
}
