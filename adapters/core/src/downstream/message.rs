//! Device messages and command responses as AMQP messages with Hono's properties (HONO-CONTRACT §1.1,
//! §1.3, §4), and the router's outcomes as [`SendOutcome`].

use std::sync::Arc;

use bytes::Bytes;
use fe2o3_amqp::types::definitions;
use fe2o3_amqp::types::messaging::Outcome;
// fe2o3-amqp's message types: the reference the direct encoding is tested against.
#[cfg(test)]
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Data, Header, Message, MessageId, Properties,
};
#[cfg(test)]
use fe2o3_amqp::types::primitives::{Binary, OrderedMap, SimpleValue, Symbol, Timestamp};
use ferry_amqp::put;
use ferry_core::hono::{app_property, content_type};
use ferry_core::ids::{DeviceId, TenantId};

use crate::registry::{TenantInfo, TtlLimit};
use ferry_registry_model::StoredEventLimits;

/// Telemetry or event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// `telemetry/TENANT`: routed to a consumer directly, QoS 0 or 1.
    Telemetry,
    /// `event/TENANT`: stored durably before it is accepted.
    Event,
}

impl MessageKind {
    /// The address prefix (`telemetry`, `event`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Telemetry => ferry_core::hono::address::TELEMETRY,
            Self::Event => ferry_core::hono::address::EVENT,
        }
    }
}

/// A device's telemetry or event message, as an adapter hands it downstream.
#[derive(Debug, Clone)]
pub struct DeviceMessage {
    /// Telemetry or event.
    pub kind: MessageKind,
    /// The tenant (address `telemetry/TENANT` or `event/TENANT`).
    pub tenant: TenantId,
    /// The device the message is from (not the gateway that sent it).
    pub device_id: DeviceId,
    /// 0: telemetry sent pre-settled, nobody waits for an outcome. 1 (and every event): unsettled,
    /// resolved with the router's outcome.
    pub qos: u8,
    /// `None` is sent as `application/octet-stream`.
    pub content_type: Option<String>,
    /// The body (one Data section).
    pub payload: Bytes,
    /// The device's registration assertion ([`crate::registry::Assertion::token`]).
    pub assertion: Arc<str>,
    /// The adapter type (`hono-mqtt`, `hono-http`).
    pub orig_adapter: &'static str,
    /// The MQTT topic or HTTP path the device used.
    pub orig_address: String,
    /// Header `ttl`; the caller applies defaults and the tenant's limits
    /// ([`crate::registry::TenantInfo::effective_ttl_secs`]).
    pub ttl_ms: Option<u32>,
    /// Application property `ttd` (seconds the device stays reachable for commands; -1: until further
    /// notice), an int as Hono's consumers read it.
    pub ttd: Option<i32>,
    /// Further application properties (from an MQTT property bag, or the device's and tenant's
    /// `defaults`).
    pub extra_properties: Vec<(String, PropertyValue)>,
    /// Of an event: the tenant's own limits on stored events, as its configuration says now (set by
    /// [`DeviceMessage::apply_defaults`]). In cluster mode they are its event stream's limits; `None`:
    /// not known here, the stream keeps what it has. Not sent.
    pub stored_limits: Option<StoredEventLimits>,
}

/// The value of an application property a device or its defaults add.
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyValue {
    /// A string.
    String(String),
    /// A whole number.
    Long(i64),
    /// Any other number.
    Double(f64),
    /// A boolean.
    Bool(bool),
}

impl From<String> for PropertyValue {
    fn from(s: String) -> Self {
        Self::String(s)
    }
}

impl From<&str> for PropertyValue {
    fn from(s: &str) -> Self {
        Self::String(s.to_owned())
    }
}

impl PropertyValue {
    /// A JSON `defaults` value as a property; objects, arrays and null have no AMQP simple form.
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        use serde_json::Value;
        match v {
            Value::String(s) => Some(Self::String(s.clone())),
            Value::Bool(b) => Some(Self::Bool(*b)),
            Value::Number(n) => n
                .as_i64()
                .map(Self::Long)
                .or_else(|| n.as_f64().map(Self::Double)),
            _ => None,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::String(s) => put::string(out, s),
            Self::Long(n) => put::long(out, *n),
            Self::Double(d) => put::double(out, *d),
            Self::Bool(b) => put::bool(out, *b),
        }
    }

    #[cfg(test)]
    fn into_amqp(self) -> SimpleValue {
        match self {
            Self::String(s) => SimpleValue::String(s),
            Self::Long(n) => SimpleValue::Long(n),
            Self::Double(d) => SimpleValue::Double(d.into()),
            Self::Bool(b) => SimpleValue::Bool(b),
        }
    }
}

/// The properties of a message the adapter sets itself: neither a property bag nor `defaults` may
/// supply them.
pub const RESERVED_PROPERTIES: &[&str] = &[
    app_property::DEVICE_ID,
    app_property::TENANT_ID,
    app_property::REG_ASSERTION,
    app_property::ORIG_ADAPTER,
    app_property::ORIG_ADDRESS,
    app_property::QOS,
    app_property::TTD,
    app_property::GATEWAY_ID,
];

impl DeviceMessage {
    /// Applies HONO-CONTRACT §2.1's defaults: the message's own value wins, then the device's
    /// `defaults`, then the tenant's. `content-type` fills a missing content type; the TTL is the
    /// device's `requested_ttl_secs` (MQTT bag or HTTP `hono-ttl`), else `defaults.ttl`, capped by the
    /// tenant's limit for this kind of message (`max-ttl` for events, `max-ttl-telemetry-qos0/1`);
    /// every other default becomes an application property unless the message has it already or the
    /// adapter sets it itself.
    pub fn apply_defaults(
        &mut self,
        tenant: &TenantInfo,
        device_defaults: &serde_json::Map<String, serde_json::Value>,
        requested_ttl_secs: Option<u64>,
    ) {
        let which = match (self.kind, self.qos) {
            (MessageKind::Event, _) => TtlLimit::Event,
            (MessageKind::Telemetry, 0) => TtlLimit::TelemetryQos0,
            (MessageKind::Telemetry, _) => TtlLimit::TelemetryQos1,
        };
        self.ttl_ms = tenant
            .effective_ttl_secs(which, requested_ttl_secs, device_defaults)
            .map(|s| u32::try_from(s.saturating_mul(1000)).unwrap_or(u32::MAX));
        if self.kind == MessageKind::Event {
            self.stored_limits = Some(tenant.stored_event_limits());
        }
        let tenant_defaults = &tenant.config.defaults;
        if device_defaults.is_empty() && tenant_defaults.is_empty() {
            return;
        }
        for defaults in [device_defaults, tenant_defaults] {
            for (key, value) in defaults {
                match key.as_str() {
                    "content-type" => {
                        if self.content_type.is_none() {
                            self.content_type = value.as_str().map(str::to_owned);
                        }
                    }
                    "ttl" => {}
                    k if RESERVED_PROPERTIES.contains(&k)
                        || self.extra_properties.iter().any(|(e, _)| e == k) => {}
                    k => {
                        if let Some(v) = PropertyValue::from_json(value) {
                            self.extra_properties.push((k.to_owned(), v));
                        }
                    }
                }
            }
        }
    }

    /// Whether the message goes pre-settled (QoS 0 telemetry).
    pub fn is_presettled(&self) -> bool {
        self.kind == MessageKind::Telemetry && self.qos == 0
    }

    /// Appends the AMQP message (header, properties, application properties, one Data section: every
    /// property Hono's consumers expect) to `out`, byte for byte what fe2o3-amqp encodes for
    /// [`DeviceMessage::into_amqp`], written directly: nothing is allocated but `out`'s growth.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        self.encode_at(out, now_ms());
    }

    /// [`DeviceMessage::encode`] with `creation-time` = `now_ms`.
    fn encode_at(&self, out: &mut Vec<u8>, now_ms: i64) {
        out.reserve(self.encoded_len_hint());
        match (self.kind, self.ttl_ms) {
            (MessageKind::Event, ttl) => header(out, true, ttl),
            (MessageKind::Telemetry, Some(ttl)) => header(out, false, Some(ttl)),
            (MessageKind::Telemetry, None) => {}
        }
        put::descriptor(out, PROPERTIES);
        let list = put::begin(out, false);
        for _ in 0..6 {
            put::null(out);
        }
        put::symbol(
            out,
            self.content_type
                .as_deref()
                .unwrap_or(content_type::OCTET_STREAM),
        );
        put::null(out);
        put::null(out);
        put::timestamp(out, now_ms);
        put::finish(out, list, 10);

        put::descriptor(out, APPLICATION_PROPERTIES);
        let map = put::begin(out, true);
        let mut entries = 5;
        let entry = |out: &mut Vec<u8>, key: &str| put::string(out, key);
        entry(out, app_property::DEVICE_ID);
        put::string(out, self.device_id.as_str());
        entry(out, app_property::REG_ASSERTION);
        put::string(out, &self.assertion);
        entry(out, app_property::ORIG_ADAPTER);
        put::string(out, self.orig_adapter);
        entry(out, app_property::ORIG_ADDRESS);
        put::string(out, &self.orig_address);
        entry(out, app_property::QOS);
        put::int(out, i32::from(self.qos));
        if let Some(ttd) = self.ttd {
            entries += 1;
            entry(out, app_property::TTD);
            put::int(out, ttd);
        }
        let extra = &self.extra_properties;
        for (i, (key, _)) in extra.iter().enumerate() {
            // A key given twice (a property bag may) is one entry, at its first place with its last
            // value, as in an ordered map.
            if extra[..i].iter().any(|(k, _)| k == key) {
                continue;
            }
            let last = extra[i..].iter().rev().find(|(k, _)| k == key);
            if let Some((_, value)) = last {
                entries += 1;
                entry(out, key);
                value.encode(out);
            }
        }
        put::finish(out, map, entries * 2);
        data(out, &self.payload);
    }

    /// Room for the encoded message, so that `out` grows once.
    fn encoded_len_hint(&self) -> usize {
        160 + self.assertion.len()
            + self.device_id.as_str().len()
            + self.orig_address.len()
            + self.content_type.as_deref().map_or(0, str::len)
            + self
                .extra_properties
                .iter()
                .map(|(k, _)| k.len() + 16)
                .sum::<usize>()
            + self.payload.len()
    }

    /// The AMQP message as fe2o3-amqp's types: the reference [`DeviceMessage::encode`] is tested
    /// against.
    #[cfg(test)]
    pub(crate) fn into_amqp(self) -> Message<Data> {
        self.into_amqp_at(now_ms())
    }

    #[cfg(test)]
    fn into_amqp_at(self, now_ms: i64) -> Message<Data> {
        let mut props = OrderedMap::new();
        let map = props.as_inner_mut();
        map.insert(
            app_property::DEVICE_ID.to_owned(),
            SimpleValue::String(self.device_id.as_str().to_owned()),
        );
        map.insert(
            app_property::REG_ASSERTION.to_owned(),
            SimpleValue::String(String::from(&*self.assertion)),
        );
        map.insert(
            app_property::ORIG_ADAPTER.to_owned(),
            SimpleValue::String(self.orig_adapter.to_owned()),
        );
        map.insert(
            app_property::ORIG_ADDRESS.to_owned(),
            SimpleValue::String(self.orig_address),
        );
        map.insert(
            app_property::QOS.to_owned(),
            SimpleValue::Int(i32::from(self.qos)),
        );
        if let Some(ttd) = self.ttd {
            map.insert(app_property::TTD.to_owned(), SimpleValue::Int(ttd));
        }
        for (k, v) in self.extra_properties {
            map.insert(k, v.into_amqp());
        }
        let header = match (self.kind, self.ttl_ms) {
            (MessageKind::Event, ttl) => Some(Header::builder().durable(true).ttl(ttl).build()),
            (MessageKind::Telemetry, Some(ttl)) => Some(Header::builder().ttl(ttl).build()),
            (MessageKind::Telemetry, None) => None,
        };
        Message {
            header,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(properties(self.content_type, now_ms)),
            application_properties: Some(ApplicationProperties(props)),
            // Reuses the payload's allocation when the adapter holds the only reference.
            body: Data(Binary::from(Vec::<u8>::from(self.payload))),
            footer: None,
        }
    }
}

const HEADER: u8 = 0x70;
const PROPERTIES: u8 = 0x73;
const APPLICATION_PROPERTIES: u8 = 0x74;
const DATA: u8 = 0x75;

/// A header section: `durable` and `ttl` (the only fields an adapter sets).
fn header(out: &mut Vec<u8>, durable: bool, ttl: Option<u32>) {
    put::descriptor(out, HEADER);
    let list = put::begin(out, false);
    match ttl {
        None if !durable => {}
        None => {
            put::bool(out, true);
        }
        Some(ttl) => {
            // A field at its default is written as null, as fe2o3-amqp does.
            if durable {
                put::bool(out, true);
            } else {
                put::null(out);
            }
            put::null(out);
            put::uint(out, ttl);
        }
    }
    let count = match (durable, ttl) {
        (_, Some(_)) => 3,
        (true, None) => 1,
        (false, None) => 0,
    };
    put::finish(out, list, count);
}

/// The body: one Data section.
fn data(out: &mut Vec<u8>, payload: &[u8]) {
    put::descriptor(out, DATA);
    put::binary(out, payload);
}

/// Now, as a `creation-time`.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
fn properties(content: Option<String>, now_ms: i64) -> Properties {
    Properties {
        content_type: Some(Symbol::from(
            content.unwrap_or_else(|| content_type::OCTET_STREAM.to_owned()),
        )),
        creation_time: Some(Timestamp::from_milliseconds(now_ms)),
        ..Properties::default()
    }
}

/// A device's response to a command (HONO-CONTRACT §1.3), sent to `command_response` with `to` =
/// the command's `reply-to`.
#[derive(Debug, Clone)]
pub struct CommandResponse {
    /// The tenant of the command.
    pub tenant: TenantId,
    /// The device that answers.
    pub device: DeviceId,
    /// The command's `reply-to` (`command_response/TENANT/REPLY_ID`).
    pub reply_to: String,
    /// The command's correlation id (its correlation-id, else its message-id).
    pub correlation_id: String,
    /// HTTP-style status the device reported.
    pub status: u16,
    /// The response body's content type, if the device gave one.
    pub content_type: Option<String>,
    /// The response body.
    pub payload: Bytes,
    /// Header `ttl` (the tenant's `max-ttl-command-response` applied by the caller).
    pub ttl_ms: Option<u32>,
}

impl CommandResponse {
    /// Appends the AMQP message to `out`, byte for byte what fe2o3-amqp encodes for
    /// its fe2o3-amqp form (tested).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        self.encode_at(out, now_ms());
    }

    fn encode_at(&self, out: &mut Vec<u8>, now_ms: i64) {
        out.reserve(
            128 + self.reply_to.len()
                + self.correlation_id.len()
                + self.content_type.as_deref().map_or(0, str::len)
                + self.device.as_str().len()
                + self.tenant.as_str().len()
                + self.payload.len(),
        );
        if let Some(ttl) = self.ttl_ms {
            header(out, false, Some(ttl));
        }
        put::descriptor(out, PROPERTIES);
        let list = put::begin(out, false);
        put::null(out); // message-id
        put::null(out); // user-id
        put::string(out, &self.reply_to); // to
        put::null(out); // subject
        put::null(out); // reply-to
        put::string(out, &self.correlation_id); // correlation-id
        match &self.content_type {
            Some(c) => put::symbol(out, c),
            None => put::null(out),
        }
        put::null(out); // content-encoding
        put::null(out); // absolute-expiry-time
        put::timestamp(out, now_ms);
        put::finish(out, list, 10);
        put::descriptor(out, APPLICATION_PROPERTIES);
        let map = put::begin(out, true);
        put::string(out, app_property::STATUS);
        put::int(out, i32::from(self.status));
        put::string(out, app_property::DEVICE_ID);
        put::string(out, self.device.as_str());
        put::string(out, app_property::TENANT_ID);
        put::string(out, self.tenant.as_str());
        put::finish(out, map, 6);
        data(out, &self.payload);
    }

    #[cfg(test)]
    fn into_amqp_at(self, now_ms: i64) -> Message<Data> {
        let mut props = OrderedMap::new();
        let map = props.as_inner_mut();
        map.insert(
            app_property::STATUS.to_owned(),
            SimpleValue::Int(i32::from(self.status)),
        );
        map.insert(
            app_property::DEVICE_ID.to_owned(),
            SimpleValue::String(self.device.as_str().to_owned()),
        );
        map.insert(
            app_property::TENANT_ID.to_owned(),
            SimpleValue::String(self.tenant.as_str().to_owned()),
        );
        let properties = Properties {
            to: Some(self.reply_to),
            correlation_id: Some(MessageId::String(self.correlation_id)),
            content_type: self.content_type.map(Symbol::from),
            creation_time: Some(Timestamp::from_milliseconds(now_ms)),
            ..Properties::default()
        };
        Message {
            header: self.ttl_ms.map(|ttl| Header::builder().ttl(ttl).build()),
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(properties),
            application_properties: Some(ApplicationProperties(props)),
            body: Data(Binary::from(Vec::<u8>::from(self.payload))),
            footer: None,
        }
    }
}

/// What the router did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Taken by a consumer (telemetry) or stored (event).
    Accepted,
    /// Refused, e.g. `amqp:precondition-failed` for a bad assertion, `amqp:decode-error`.
    Rejected {
        /// The error condition's symbol (`amqp:precondition-failed`).
        condition: Option<String>,
        /// The error description.
        description: Option<String>,
    },
    /// Not taken (no consumer with credit, or the consumer released it); may be retried.
    Released,
    /// The consumer could not process it now.
    Modified,
    /// Sent pre-settled (QoS 0): written to the router, no outcome will follow.
    Presettled,
}

impl SendOutcome {
    /// Whether the device may be told the message was delivered.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Accepted | Self::Presettled)
    }

    pub(crate) fn from_amqp(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Accepted(_) => Self::Accepted,
            Outcome::Rejected(r) => {
                let (condition, description) = match r.error {
                    Some(e) => (condition_name(&e.condition), e.description),
                    None => (None, None),
                };
                Self::Rejected {
                    condition,
                    description,
                }
            }
            Outcome::Released(_) => Self::Released,
            Outcome::Modified(_) => Self::Modified,
            #[allow(unreachable_patterns)]
            _ => Self::Released,
        }
    }
}

/// The symbolic name of an error condition (`amqp:precondition-failed`).
pub(super) fn condition_name(c: &definitions::ErrorCondition) -> Option<String> {
    match serde_amqp::to_value(c).ok()? {
        serde_amqp::Value::Symbol(s) => Some(s.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: MessageKind, qos: u8) -> DeviceMessage {
        DeviceMessage {
            kind,
            tenant: TenantId::new("t1").expect("id"),
            device_id: DeviceId::new("d1").expect("id"),
            qos,
            content_type: None,
            payload: Bytes::from_static(b"21.5"),
            assertion: Arc::from("jwt"),
            orig_adapter: "hono-mqtt",
            orig_address: "telemetry".into(),
            ttl_ms: None,
            ttd: None,
            extra_properties: vec![("x-custom".into(), "v".into())],
            stored_limits: None,
        }
    }

    fn prop<'a>(m: &'a Message<Data>, key: &str) -> Option<&'a SimpleValue> {
        m.application_properties.as_ref()?.0.as_inner().get(key)
    }

    #[test]
    fn defaults_fill_what_the_message_lacks_and_the_tenant_caps_the_ttl() {
        let tenant = TenantInfo {
            id: TenantId::new("t1").expect("id"),
            config: serde_json::from_value(serde_json::json!({
                "defaults": {"content-type": "text/tenant", "ttl": 500, "region": "eu", "x-custom": "t"},
                "resource-limits": {"max-ttl": 60}
            }))
            .expect("tenant"),
        };
        let device: serde_json::Map<String, serde_json::Value> = serde_json::from_value(
            serde_json::json!({"content-type": "text/device", "priority": 3, "device_id": "evil"}),
        )
        .expect("defaults");
        let mut m = message(MessageKind::Event, 1);
        m.apply_defaults(&tenant, &device, Some(3600));
        assert_eq!(m.content_type.as_deref(), Some("text/device"));
        assert_eq!(m.ttl_ms, Some(60_000), "capped by max-ttl");
        let amqp = m.into_amqp();
        assert_eq!(prop(&amqp, "priority"), Some(&SimpleValue::Long(3)));
        assert_eq!(
            prop(&amqp, "region"),
            Some(&SimpleValue::String("eu".into()))
        );
        // The message's own property and the adapter's are not overridden.
        assert_eq!(
            prop(&amqp, "x-custom"),
            Some(&SimpleValue::String("v".into()))
        );
        assert_eq!(
            prop(&amqp, "device_id"),
            Some(&SimpleValue::String("d1".into()))
        );

        let mut own = message(MessageKind::Telemetry, 0);
        own.content_type = Some("text/own".into());
        own.apply_defaults(&tenant, &serde_json::Map::new(), None);
        assert_eq!(own.content_type.as_deref(), Some("text/own"));
        assert_eq!(
            own.ttl_ms,
            Some(500_000),
            "tenant default, no telemetry cap"
        );
    }

    #[test]
    fn telemetry_carries_hono_properties() {
        let m = message(MessageKind::Telemetry, 0).into_amqp();
        let p = m.properties.as_ref().expect("properties");
        assert_eq!(
            p.content_type.as_ref().map(|s| s.0.as_str()),
            Some("application/octet-stream")
        );
        assert!(p.creation_time.is_some());
        assert!(m.header.is_none());
        assert_eq!(
            prop(&m, "device_id"),
            Some(&SimpleValue::String("d1".into()))
        );
        assert_eq!(
            prop(&m, "reg_assertion"),
            Some(&SimpleValue::String("jwt".into()))
        );
        assert_eq!(prop(&m, "qos"), Some(&SimpleValue::Int(0)));
        assert_eq!(
            prop(&m, "orig_adapter"),
            Some(&SimpleValue::String("hono-mqtt".into()))
        );
        assert_eq!(prop(&m, "x-custom"), Some(&SimpleValue::String("v".into())));
        assert_eq!(m.body.0.as_slice(), b"21.5");
    }

    #[test]
    fn events_are_durable_with_ttl() {
        let mut msg = message(MessageKind::Event, 1);
        msg.ttl_ms = Some(30_000);
        msg.ttd = Some(-1);
        msg.content_type = Some("text/plain".into());
        assert!(!msg.is_presettled());
        let m = msg.into_amqp();
        let h = m.header.as_ref().expect("header");
        assert!(h.durable);
        assert_eq!(h.ttl, Some(30_000));
        assert_eq!(prop(&m, "ttd"), Some(&SimpleValue::Int(-1)));
        assert_eq!(
            m.properties
                .as_ref()
                .and_then(|p| p.content_type.as_ref())
                .map(|s| s.0.as_str()),
            Some("text/plain")
        );
    }

    fn fe2o3_bytes(m: &Message<Data>) -> Vec<u8> {
        use fe2o3_amqp::types::messaging::message::__private::Serializable;
        serde_amqp::to_vec(&Serializable(m)).expect("fe2o3 encodes")
    }

    /// Every shape the adapters send: both kinds, with and without ttl, ttd and content type, property
    /// values of every type and width, strings past 255 bytes, a map past 255 bytes, duplicate keys.
    #[test]
    fn device_messages_encode_byte_for_byte_as_fe2o3_does() {
        let now = 1_765_000_000_123;
        let long = "x".repeat(300);
        let mut cases = Vec::new();
        for kind in [MessageKind::Telemetry, MessageKind::Event] {
            for qos in [0, 1] {
                for ttl in [None, Some(0), Some(200), Some(70_000)] {
                    let mut m = message(kind, qos);
                    m.ttl_ms = ttl;
                    cases.push(m);
                }
            }
        }
        let mut m = message(MessageKind::Telemetry, 1);
        m.ttd = Some(-1);
        m.content_type = Some("text/plain".into());
        cases.push(m);
        let mut m = message(MessageKind::Event, 1);
        m.ttd = Some(100_000);
        m.content_type = Some(long.clone());
        m.orig_address = long.clone();
        m.assertion = Arc::from(long.as_str());
        m.payload = Bytes::from(vec![7; 300]);
        m.extra_properties = vec![
            ("s".into(), PropertyValue::String(long.clone())),
            ("small".into(), PropertyValue::Long(-5)),
            ("big".into(), PropertyValue::Long(1 << 40)),
            ("edge".into(), PropertyValue::Long(128)),
            ("d".into(), PropertyValue::Double(21.5)),
            ("t".into(), PropertyValue::Bool(true)),
            ("f".into(), PropertyValue::Bool(false)),
        ];
        cases.push(m);
        let mut m = message(MessageKind::Telemetry, 0);
        m.payload = Bytes::new();
        m.extra_properties = vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("a".into(), "3".into()),
        ];
        cases.push(m);
        for m in cases {
            let mut ours = Vec::new();
            m.encode_at(&mut ours, now);
            let theirs = fe2o3_bytes(&m.clone().into_amqp_at(now));
            assert_eq!(ours, theirs, "{m:?}");
        }
    }

    #[test]
    fn command_responses_encode_byte_for_byte_as_fe2o3_does() {
        let now = 1_765_000_000_123;
        for (ttl, content_type, correlation) in [
            (None, None, "c1".to_owned()),
            (
                Some(30_000),
                Some("application/json".to_owned()),
                "x".repeat(260),
            ),
        ] {
            let r = CommandResponse {
                tenant: TenantId::new("t1").expect("id"),
                device: DeviceId::new("d1").expect("id"),
                reply_to: "command_response/t1/r-1".into(),
                correlation_id: correlation,
                status: 200,
                content_type,
                payload: Bytes::from_static(b"{}"),
                ttl_ms: ttl,
            };
            let mut ours = Vec::new();
            r.encode_at(&mut ours, now);
            assert_eq!(ours, fe2o3_bytes(&r.clone().into_amqp_at(now)));
        }
    }

    #[test]
    fn rejected_outcome_keeps_its_condition() {
        let outcome = Outcome::Rejected(fe2o3_amqp::types::messaging::Rejected {
            error: Some(definitions::Error::new(
                definitions::AmqpError::PreconditionFailed,
                Some("expired".to_owned()),
                None,
            )),
        });
        assert_eq!(
            SendOutcome::from_amqp(outcome),
            SendOutcome::Rejected {
                condition: Some("amqp:precondition-failed".into()),
                description: Some("expired".into()),
            }
        );
    }
}
