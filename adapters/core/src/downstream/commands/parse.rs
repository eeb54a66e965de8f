//! A command as the router forwards it, read into a [`Command`].

use bytes::Bytes;
use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::types::messaging::{Body, Message, MessageId};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use ferry_core::hono::app_property;
use ferry_core::ids::{DeviceId, TenantId};

use super::Command;

/// Reads a command as the router forwards it (`to` = `command/TENANT/DEVICE`).
pub(super) fn parse(delivery: Delivery<Body<Value>>) -> Result<Command, &'static str> {
    parse_message(delivery.into_message())
}

/// [`parse`] for the message alone (a command that came over NATS).
pub(in crate::downstream) fn parse_message(
    message: Message<Body<Value>>,
) -> Result<Command, &'static str> {
    let props = message.properties.ok_or("no properties")?;
    let to = props.to.as_deref().ok_or("no to")?;
    let rest = to
        .strip_prefix("command/")
        .or_else(|| to.strip_prefix("c/"))
        .ok_or("to is not a command address")?;
    let (tenant, device) = rest.split_once('/').ok_or("to names no device")?;
    let tenant = TenantId::new(tenant).map_err(|_| "invalid tenant in to")?;
    let device = DeviceId::new(device).map_err(|_| "invalid device in to")?;
    let name = props.subject.ok_or("no subject")?;
    let payload = match message.body {
        Body::Data(batch) => {
            let mut parts = batch.into_iter();
            match (parts.next(), parts.next()) {
                (None, _) => Bytes::new(),
                (Some(one), None) => Bytes::from(one.0.into_vec()),
                (Some(first), Some(second)) => {
                    let mut all = first.0.into_vec();
                    all.extend_from_slice(&second.0);
                    for p in parts {
                        all.extend_from_slice(&p.0);
                    }
                    Bytes::from(all)
                }
            }
        }
        Body::Empty => Bytes::new(),
        Body::Value(v) => match v.0 {
            Value::Binary(b) => Bytes::from(b.into_vec()),
            Value::String(s) => Bytes::from(s.into_bytes()),
            Value::Null => Bytes::new(),
            _ => return Err("body must be a Data section"),
        },
        _ => return Err("body must be a Data section"),
    };
    if props.message_id.is_none() && props.correlation_id.is_none() {
        return Err("neither message-id nor correlation-id");
    }
    let via = match message
        .application_properties
        .as_ref()
        .and_then(|p| p.get(app_property::VIA))
    {
        None => None,
        Some(SimpleValue::String(gw)) => {
            Some(DeviceId::new(gw).map_err(|_| "invalid gateway in via")?)
        }
        Some(_) => return Err("via must be a string"),
    };
    Ok(Command {
        tenant,
        device,
        name,
        payload,
        content_type: props.content_type.map(|s| s.0),
        message_id: props.message_id.map(id_string),
        correlation_id: props.correlation_id.map(id_string),
        reply_to: props.reply_to,
        via,
        settle: None,
    })
}

/// A message id as text: strings as they are, numbers in decimal, UUIDs hyphenated, binary as hex.
/// Responses carry it back as a string.
pub(super) fn id_string(id: MessageId) -> String {
    match id {
        MessageId::String(s) => s,
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => {
            let b = u.into_inner();
            let hex = hex(&b);
            format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            )
        }
        MessageId::Binary(b) => hex(&b),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
