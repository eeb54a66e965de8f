//! The AMQP 1.0 messages on Ferry's subjects, for the parts that read or write them outside a router's
//! hub: the registry's live view (a device message, [`device_message`]) and its console commands
//! ([`command`] out, [`response`] back). The payload on NATS is the AMQP message the adapter would send
//! to the router in embedded mode (docs/cluster.md "Decisions"), so these read and write exactly that:
//! the sections concatenated, no frame.

use fe2o3_amqp_types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp_types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageId, Properties,
};
use fe2o3_amqp_types::primitives::{Binary, OrderedMap, SimpleValue, Symbol, Value};
use ferry_core::hono::app_property;

/// A device's telemetry or event message, as far as the live view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMessage {
    /// `device_id` (application property).
    pub device_id: String,
    pub content_type: String,
    /// The one Data section.
    pub body: Vec<u8>,
    /// `reg_assertion` (application property): the registry's word that the device may send.
    pub assertion: String,
}

fn decode(payload: &[u8]) -> Result<Message<Body<Value>>, &'static str> {
    serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(payload)
        .map(|d| d.0)
        .map_err(|_| "malformed message")
}

fn app_str<'a>(m: &'a Message<Body<Value>>, key: &str) -> Option<&'a str> {
    match m.application_properties.as_ref()?.get(key)? {
        SimpleValue::String(s) => Some(s),
        _ => None,
    }
}

/// Reads a device message with the router's checks (docs/cluster.md "Routers on NATS"): a
/// `content-type`, exactly one Data section, `device_id` and `reg_assertion`; the reason otherwise.
/// (The assertion itself is the caller's to verify.)
pub fn device_message(payload: &[u8]) -> Result<DeviceMessage, &'static str> {
    let m = decode(payload)?;
    let content_type = m
        .properties
        .as_ref()
        .and_then(|p| p.content_type.as_ref())
        .map(|c| c.0.clone())
        .ok_or("content-type is missing")?;
    let device_id = app_str(&m, app_property::DEVICE_ID)
        .ok_or("device_id is missing")?
        .to_owned();
    let assertion = app_str(&m, app_property::REG_ASSERTION)
        .ok_or("reg_assertion is missing")?
        .to_owned();
    let body = match m.body {
        Body::Data(batch) => {
            let mut parts = batch.into_iter();
            match (parts.next(), parts.next()) {
                (Some(one), None) => one.0.into_vec(),
                _ => return Err("the body must be one Data section"),
            }
        }
        _ => return Err("the body must be one Data section"),
    };
    Ok(DeviceMessage {
        device_id,
        content_type,
        body,
        assertion,
    })
}

/// A command as an application sends it to `command/T` (HONO-CONTRACT §1.3).
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    pub message_id: &'a str,
    pub tenant: &'a str,
    pub device: &'a str,
    /// The command's name (`subject`).
    pub name: &'a str,
    pub content_type: Option<&'a str>,
    pub payload: &'a [u8],
    /// `command_response/T/R`; `None`: one-way.
    pub reply_to: Option<&'a str>,
    /// The gateway that gets it for the device (set by whoever routes it, as the router does).
    pub via: Option<&'a str>,
}

/// The command as the AMQP message an adapter instance takes on `ferry.command.INSTANCE`.
pub fn command(c: &Command<'_>) -> Result<Vec<u8>, String> {
    let application_properties = c.via.map(|gateway| {
        let mut props = OrderedMap::new();
        props.as_inner_mut().insert(
            app_property::VIA.to_owned(),
            SimpleValue::String(gateway.to_owned()),
        );
        ApplicationProperties(props)
    });
    let message = Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(Properties {
            message_id: Some(MessageId::String(c.message_id.to_owned())),
            to: Some(format!("command/{}/{}", c.tenant, c.device)),
            subject: Some(c.name.to_owned()),
            reply_to: c.reply_to.map(str::to_owned),
            content_type: c.content_type.map(Symbol::from),
            ..Properties::default()
        }),
        application_properties,
        body: Data(Binary::from(c.payload.to_vec())),
        footer: None,
    };
    serde_amqp::to_vec(&Serializable(message)).map_err(|e| e.to_string())
}

/// A device's response to a command, as an adapter sends it to `ferry.command_response.T.R`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// `to`: the command's `reply-to`.
    pub to: Option<String>,
    /// `status` (application property).
    pub status: Option<i64>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Reads a command response; `None` when it is not an AMQP message.
pub fn response(payload: &[u8]) -> Option<Response> {
    let m = decode(payload).ok()?;
    let status = match m
        .application_properties
        .as_ref()
        .and_then(|p| p.get(app_property::STATUS))
    {
        Some(SimpleValue::Int(v)) => Some(i64::from(*v)),
        Some(SimpleValue::Long(v)) => Some(*v),
        Some(SimpleValue::Uint(v)) => Some(i64::from(*v)),
        Some(SimpleValue::Short(v)) => Some(i64::from(*v)),
        Some(SimpleValue::Ushort(v)) => Some(i64::from(*v)),
        _ => None,
    };
    let (to, content_type) = match &m.properties {
        Some(p) => (p.to.clone(), p.content_type.as_ref().map(|c| c.0.clone())),
        None => (None, None),
    };
    let body = match m.body {
        Body::Data(batch) => batch.into_iter().flat_map(|d| d.0.into_vec()).collect(),
        Body::Value(v) => match v.0 {
            Value::Binary(b) => b.into_vec(),
            Value::String(s) => s.into_bytes(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    Some(Response {
        to,
        status,
        content_type,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(props: &[(&str, &str)], content_type: Option<&str>, body: Body<Value>) -> Vec<u8> {
        let mut map = OrderedMap::new();
        for (k, v) in props {
            map.as_inner_mut()
                .insert((*k).to_owned(), SimpleValue::String((*v).to_owned()));
        }
        let m = Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(Properties {
                content_type: content_type.map(Symbol::from),
                ..Properties::default()
            }),
            application_properties: Some(ApplicationProperties(map)),
            body,
            footer: None,
        };
        serde_amqp::to_vec(&Serializable(m)).expect("encodes")
    }

    fn data(b: &[u8]) -> Body<Value> {
        Body::Data(vec![Data(Binary::from(b.to_vec()))].into())
    }

    #[test]
    fn a_device_message_is_read_with_the_routers_checks() {
        let ok = [("device_id", "d1"), ("reg_assertion", "jwt")];
        let m = device_message(&device(&ok, Some("text/plain"), data(b"hi"))).expect("reads");
        assert_eq!(
            m,
            DeviceMessage {
                device_id: "d1".into(),
                content_type: "text/plain".into(),
                body: b"hi".to_vec(),
                assertion: "jwt".into(),
            }
        );
        assert_eq!(
            device_message(&device(&ok, None, data(b"hi"))),
            Err("content-type is missing")
        );
        assert_eq!(
            device_message(&device(&ok[..1], Some("a/b"), data(b"hi"))),
            Err("reg_assertion is missing")
        );
        assert_eq!(
            device_message(&device(&ok[1..], Some("a/b"), data(b"hi"))),
            Err("device_id is missing")
        );
        let two = Body::Data(vec![Data(Binary::from(vec![1])), Data(Binary::from(vec![2]))].into());
        assert_eq!(
            device_message(&device(&ok, Some("a/b"), two)),
            Err("the body must be one Data section")
        );
        assert_eq!(device_message(b"\x00\x53"), Err("malformed message"));
        assert!(device_message(&[]).is_err());
    }

    #[test]
    fn a_command_carries_what_an_adapter_needs_and_a_response_reads_back() {
        let bytes = command(&Command {
            message_id: "m1",
            tenant: "t1",
            device: "d1",
            name: "stop",
            content_type: Some("application/json"),
            payload: b"{}",
            reply_to: Some("command_response/t1/r1"),
            via: Some("gw-1"),
        })
        .expect("encodes");
        let m = decode(&bytes).expect("decodes");
        let p = m.properties.as_ref().expect("properties");
        assert_eq!(p.to.as_deref(), Some("command/t1/d1"));
        assert_eq!(p.subject.as_deref(), Some("stop"));
        assert_eq!(p.reply_to.as_deref(), Some("command_response/t1/r1"));
        assert_eq!(app_str(&m, app_property::VIA), Some("gw-1"));
        // The same message read as a response: `to`, no status, the body.
        let r = response(&bytes).expect("reads");
        assert_eq!(r.to.as_deref(), Some("command/t1/d1"));
        assert_eq!((r.status, r.body.as_slice()), (None, &b"{}"[..]));
        assert_eq!(response(b"junk"), None);
    }
}
