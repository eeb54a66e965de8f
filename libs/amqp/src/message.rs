//! Messages as bytes: locating the sections of a transfer payload, reading single fields without decoding
//! whole sections, and rewriting a message while copying every section that does not change.
//!
//! The router forwards most messages unchanged except for stripping the registration assertion and adding a
//! `resource` annotation (HONO-CONTRACT §4), so the per-message path is: [`parse_message`] (a walk over
//! section headers into a fixed struct, no allocation), a few field reads, [`rewrite_message`] (copies plus
//! one or two re-written maps). Full fe2o3 types are decoded only when a caller asks for them.

use fe2o3_amqp_types::messaging::{ApplicationProperties, Header, MessageAnnotations, Properties};
use fe2o3_amqp_types::primitives::{SimpleValue, Value};
use serde_amqp::serde::{Deserialize, Serialize};

use super::value::{as_str, compound_items, descriptor_code, str_bytes, value_len, DESCRIBED};
use super::{serde_reason, CodecError};

/// The sections of a message, in the order the spec requires them (AMQP 1.0 part 3, §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SectionKind {
    /// `header` (0x70).
    Header,
    /// `delivery-annotations` (0x71).
    DeliveryAnnotations,
    /// `message-annotations` (0x72).
    MessageAnnotations,
    /// `properties` (0x73).
    Properties,
    /// `application-properties` (0x74).
    ApplicationProperties,
    /// All body sections together: `data` (0x75), `amqp-sequence` (0x76) or `amqp-value` (0x77).
    Body,
    /// `footer` (0x78).
    Footer,
}

const SECTION_COUNT: usize = 7;

/// The shape of a message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageBody {
    /// No body section. The spec asks for one, but an empty transfer is accepted and judged by the caller.
    None,
    /// One or more `data` sections.
    Data {
        /// Number of sections.
        sections: u32,
    },
    /// One or more `amqp-sequence` sections.
    Sequence {
        /// Number of sections.
        sections: u32,
    },
    /// One `amqp-value` section.
    Value,
}

/// A `properties` field that holds a string, readable with [`MessageView::property_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyField {
    /// `message-id`, when it is a string (it may also be a ulong, uuid or binary).
    MessageId = 0,
    /// `to`.
    To = 2,
    /// `subject`.
    Subject = 3,
    /// `reply-to`.
    ReplyTo = 4,
    /// `correlation-id`, when it is a string.
    CorrelationId = 5,
    /// `content-type` (a symbol).
    ContentType = 6,
    /// `content-encoding` (a symbol).
    ContentEncoding = 7,
    /// `group-id`.
    GroupId = 10,
    /// `reply-to-group-id`.
    ReplyToGroupId = 12,
}

/// Where one section lies in the raw message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// The section's `0x00` constructor.
    start: usize,
    /// The section's value, after its descriptor.
    value: usize,
    /// One past the section's last byte.
    end: usize,
}

/// A complete (reassembled) transfer payload split into its sections, borrowing the bytes.
///
/// Built by [`parse_message`]. Only the header is decoded up front (five scalars every routing decision
/// reads); everything else is decoded or read on demand.
#[derive(Debug, Clone)]
pub struct MessageView<'a> {
    raw: &'a [u8],
    header: Option<Header>,
    spans: [Option<Span>; SECTION_COUNT],
    body: MessageBody,
    /// The binary inside the first `data` section.
    first_data: Option<(usize, usize)>,
}

/// Splits a message into its sections by their descriptors (numeric or symbolic).
///
/// Sections must appear in the spec's order, each at most once, except that `data` and `amqp-sequence`
/// may repeat (not mixed); annotation and property maps must be maps, `header`, `properties` and
/// `amqp-sequence` lists, `data` binary. The header is decoded; other sections are only measured, so a
/// section the router never reads is never validated beyond its size fields.
pub fn parse_message(raw: &[u8]) -> Result<MessageView<'_>, CodecError> {
    let malformed = CodecError::MalformedMessage;
    let mut view = MessageView {
        raw,
        header: None,
        spans: [None; SECTION_COUNT],
        body: MessageBody::None,
        first_data: None,
    };
    let mut last: Option<(SectionKind, u64)> = None;
    let mut pos = 0;
    while let Some(rest) = raw.get(pos..).filter(|rest| !rest.is_empty()) {
        let Some((&DESCRIBED, after_constructor)) = rest.split_first() else {
            return Err(malformed("section is not a described type".into()));
        };
        let (code, descriptor_len) = descriptor_code(after_constructor).map_err(malformed)?;
        let value_at = pos + 1 + descriptor_len;
        let value = raw.get(value_at..).unwrap_or_default();
        let end = value_at + value_len(value, false, 0).map_err(malformed)?;
        let (kind, expected) = match code {
            Some(0x70) => (SectionKind::Header, Shape::List),
            Some(0x71) => (SectionKind::DeliveryAnnotations, Shape::Map),
            Some(0x72) => (SectionKind::MessageAnnotations, Shape::Map),
            Some(0x73) => (SectionKind::Properties, Shape::List),
            Some(0x74) => (SectionKind::ApplicationProperties, Shape::Map),
            Some(0x75) => (SectionKind::Body, Shape::Binary),
            Some(0x76) => (SectionKind::Body, Shape::List),
            Some(0x77) => (SectionKind::Body, Shape::Any),
            Some(0x78) => (SectionKind::Footer, Shape::Map),
            _ => return Err(malformed("unknown section descriptor".into())),
        };
        let code = code.unwrap_or_default();
        if !expected.admits(value.first().copied().unwrap_or_default()) {
            return Err(malformed(
                "section value has the wrong type for its descriptor".into(),
            ));
        }
        let span = Span {
            start: pos,
            value: value_at,
            end,
        };
        match last {
            // Repeated data or amqp-sequence sections extend the body.
            Some((SectionKind::Body, previous))
                if kind == SectionKind::Body && previous == code && code != 0x77 =>
            {
                if let (
                    Some(body),
                    MessageBody::Data { sections } | MessageBody::Sequence { sections },
                ) = (&mut view.spans[SectionKind::Body as usize], &mut view.body)
                {
                    body.end = end;
                    *sections = sections.saturating_add(1);
                }
            }
            Some((previous, _)) if previous >= kind => {
                return Err(malformed("sections out of order or repeated".into()));
            }
            _ => {
                view.spans[kind as usize] = Some(span);
                if kind == SectionKind::Body {
                    view.body = match code {
                        0x75 => {
                            view.first_data = data_content(value)
                                .map(|(from, to)| (value_at + from, value_at + to));
                            MessageBody::Data { sections: 1 }
                        }
                        0x76 => MessageBody::Sequence { sections: 1 },
                        _ => MessageBody::Value,
                    };
                }
            }
        }
        last = Some((kind, code));
        pos = end;
    }
    if let Some(header) = view.section(SectionKind::Header) {
        view.header = Some(decode(header)?);
    }
    Ok(view)
}

/// What a section's value must be.
#[derive(Clone, Copy)]
enum Shape {
    List,
    Map,
    Binary,
    Any,
}

impl Shape {
    fn admits(self, constructor: u8) -> bool {
        match self {
            Self::List => matches!(constructor, 0x45 | 0xc0 | 0xd0),
            Self::Map => matches!(constructor, 0xc1 | 0xd1),
            Self::Binary => matches!(constructor, 0xa0 | 0xb0),
            Self::Any => true,
        }
    }
}

/// Range of the bytes inside a binary value, relative to the value's constructor.
fn data_content(value: &[u8]) -> Option<(usize, usize)> {
    match value {
        [0xa0, len, ..] => Some((2, 2 + usize::from(*len))),
        [0xb0, a, b, c, d, ..] => Some((
            5,
            5 + usize::try_from(u32::from_be_bytes([*a, *b, *c, *d])).ok()?,
        )),
        _ => None,
    }
}

/// Decodes a section (or any value) with fe2o3 types after walking it deeply, which bounds serde_amqp's
/// recursion.
fn decode<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, CodecError> {
    value_len(bytes, true, 0).map_err(CodecError::MalformedMessage)?;
    serde_amqp::from_slice(bytes).map_err(|e| CodecError::MalformedMessage(serde_reason(e)))
}

impl<'a> MessageView<'a> {
    /// The whole message as received.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The encoded bytes of a section (descriptor included), as received; for [`SectionKind::Body`] all body
    /// sections together.
    pub fn section(&self, kind: SectionKind) -> Option<&'a [u8]> {
        let span = self.spans[kind as usize]?;
        self.raw.get(span.start..span.end)
    }

    /// The encoded value of a section, after its descriptor.
    fn section_value(&self, kind: SectionKind) -> Option<&'a [u8]> {
        let span = self.spans[kind as usize]?;
        self.raw.get(span.value..span.end)
    }

    /// The header, decoded by [`parse_message`].
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// The header's time to live in milliseconds.
    pub fn ttl_ms(&self) -> Option<u32> {
        self.header.as_ref().and_then(|h| h.ttl)
    }

    /// The header's durable flag; `false` without a header, which is the spec's default.
    pub fn durable(&self) -> bool {
        self.header.as_ref().is_some_and(|h| h.durable)
    }

    /// Decodes the properties section.
    pub fn properties(&self) -> Result<Option<Properties>, CodecError> {
        self.section(SectionKind::Properties)
            .map(decode)
            .transpose()
    }

    /// Decodes the application-properties section.
    pub fn application_properties(&self) -> Result<Option<ApplicationProperties>, CodecError> {
        self.section(SectionKind::ApplicationProperties)
            .map(decode)
            .transpose()
    }

    /// Decodes the message-annotations section.
    pub fn message_annotations(&self) -> Result<Option<MessageAnnotations>, CodecError> {
        self.section(SectionKind::MessageAnnotations)
            .map(decode)
            .transpose()
    }

    /// A string-valued field of the properties section, read in place. `None` if the section or field is
    /// absent, not a string/symbol, or malformed.
    pub fn property_str(&self, field: PropertyField) -> Option<&'a str> {
        let (count, mut items) =
            compound_items(self.section_value(SectionKind::Properties)?).ok()?;
        let index = field as u32;
        if index >= count {
            return None;
        }
        for _ in 0..index {
            items = items.get(value_len(items, false, 0).ok()?..)?;
        }
        let len = value_len(items, false, 0).ok()?;
        as_str(items.get(..len)?)
    }

    /// The encoded value of the application property `key`, found by comparing keys in place.
    pub fn app_property_raw(&self, key: &str) -> Option<&'a [u8]> {
        let (count, mut items) =
            compound_items(self.section_value(SectionKind::ApplicationProperties)?).ok()?;
        // Each entry takes at least two bytes, so the loop ends within the section whatever `count` claims.
        for _ in 0..count / 2 {
            let key_len = value_len(items, false, 0).ok()?;
            let (entry_key, rest) = items.split_at(key_len);
            let val_len = value_len(rest, false, 0).ok()?;
            let (value, rest) = rest.split_at(val_len);
            if str_bytes(entry_key) == Some(key.as_bytes()) {
                return Some(value);
            }
            items = rest;
        }
        None
    }

    /// The encoded values of the application properties `keys` (the first entry of each), found in one
    /// pass over the section instead of one per key; it stops once every key is found.
    pub fn app_properties_raw<const N: usize>(&self, keys: [&str; N]) -> [Option<&'a [u8]>; N] {
        let mut found = [None; N];
        let Some((count, mut items)) = self
            .section_value(SectionKind::ApplicationProperties)
            .and_then(|v| compound_items(v).ok())
        else {
            return found;
        };
        let mut missing = N;
        // Each entry takes at least two bytes, so the loop ends within the section whatever `count` claims.
        for _ in 0..count / 2 {
            if missing == 0 {
                break;
            }
            let Ok(key_len) = value_len(items, false, 0) else {
                break;
            };
            let (entry_key, rest) = items.split_at(key_len);
            let Ok(val_len) = value_len(rest, false, 0) else {
                break;
            };
            let (value, rest) = rest.split_at(val_len);
            if let Some(entry_key) = str_bytes(entry_key) {
                for (slot, key) in found.iter_mut().zip(keys) {
                    if slot.is_none() && entry_key == key.as_bytes() {
                        *slot = Some(value);
                        missing -= 1;
                        break;
                    }
                }
            }
            items = rest;
        }
        found
    }

    /// [`Self::app_properties_raw`], each value as a string if it is one.
    pub fn app_properties_str<const N: usize>(&self, keys: [&str; N]) -> [Option<&'a str>; N] {
        self.app_properties_raw(keys).map(|v| v.and_then(as_str))
    }

    /// The application property `key` if it is a string, borrowed from the message.
    pub fn app_property_str(&self, key: &str) -> Option<&'a str> {
        self.app_property_raw(key).and_then(as_str)
    }

    /// The application property `key`, decoded (for ints such as `ttd`, `qos`, `status`).
    pub fn app_property(&self, key: &str) -> Result<Option<SimpleValue>, CodecError> {
        self.app_property_raw(key).map(decode).transpose()
    }

    /// The shape of the body.
    pub fn body(&self) -> MessageBody {
        self.body
    }

    /// The bytes of the body when it is exactly one `data` section, as HONO-CONTRACT §1.1 requires.
    pub fn single_data(&self) -> Option<&'a [u8]> {
        match self.body {
            MessageBody::Data { sections: 1 } => {
                let (from, to) = self.first_data?;
                self.raw.get(from..to)
            }
            _ => None,
        }
    }

    /// Offset where the body (or footer) starts: everything from here on is copied unchanged by rewrites.
    fn tail_start(&self) -> usize {
        self.spans[..SectionKind::Body as usize]
            .iter()
            .flatten()
            .map(|span| span.end)
            .max()
            .unwrap_or(0)
    }
}

/// Changes [`rewrite_message`] applies; the default changes nothing.
#[derive(Debug, Clone, Default)]
pub struct MessageEdit<'e> {
    /// Application properties to remove (e.g. `reg_assertion` once verified).
    pub strip_app_properties: &'e [&'e str],
    /// Message annotations to set, replacing existing ones with the same key (e.g. `resource`).
    pub add_message_annotations: &'e [(&'e str, Value)],
    /// String application properties to set, replacing existing ones with the same key (e.g. `via` on a
    /// command for a gateway); the section is created when absent.
    pub set_app_properties: &'e [(&'e str, &'e str)],
    /// New header `ttl` in milliseconds.
    pub set_ttl_ms: Option<u32>,
    /// New header `durable` flag.
    pub set_durable: Option<bool>,
}

/// Appends `view`'s message with `edit` applied to `out`.
///
/// Sections the edit does not touch are copied byte for byte. The header is re-encoded only when ttl or
/// durable are set (created if absent). Message annotations and application properties are rewritten
/// entry by entry, so even the entries kept are copied as bytes; message annotations are created when
/// absent. An application-properties map left empty by stripping is kept as an empty map rather than
/// dropped: the section's presence is what the producer sent, and removing it would move no other bytes.
/// On error `out` is left as it was.
pub fn rewrite_message(
    view: &MessageView<'_>,
    edit: &MessageEdit<'_>,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let start = out.len();
    rewrite_into(view, edit, out).inspect_err(|_| out.truncate(start))
}

const MESSAGE_ANNOTATIONS_DESCRIPTOR: [u8; 3] = [DESCRIBED, 0x53, 0x72];
const APPLICATION_PROPERTIES_DESCRIPTOR: [u8; 3] = [DESCRIBED, 0x53, 0x74];
const DATA_DESCRIPTOR: [u8; 3] = [DESCRIBED, 0x53, 0x75];

fn rewrite_into(
    view: &MessageView<'_>,
    edit: &MessageEdit<'_>,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let copy =
        |out: &mut Vec<u8>, kind| out.extend_from_slice(view.section(kind).unwrap_or_default());

    if edit.set_ttl_ms.is_some() || edit.set_durable.is_some() {
        let mut header = view.header.clone().unwrap_or_default();
        if let Some(ttl) = edit.set_ttl_ms {
            header.ttl = Some(ttl);
        }
        if let Some(durable) = edit.set_durable {
            header.durable = durable;
        }
        serialize(&header, out, "header")?;
    } else {
        copy(out, SectionKind::Header);
    }

    copy(out, SectionKind::DeliveryAnnotations);

    let added = edit.add_message_annotations;
    if added.is_empty() {
        copy(out, SectionKind::MessageAnnotations);
    } else {
        let (descriptor, map) = view.split_section(
            SectionKind::MessageAnnotations,
            &MESSAGE_ANNOTATIONS_DESCRIPTOR,
        );
        write_map_section(
            out,
            descriptor,
            map,
            |key| {
                added
                    .iter()
                    .any(|(name, _)| str_bytes(key) == Some(name.as_bytes()))
            },
            |out| {
                for (key, value) in added {
                    write_symbol(out, key)?;
                    serialize(value, out, "message annotation")?;
                }
                u32::try_from(added.len() * 2).map_err(|_| too_large("message annotations"))
            },
        )?;
    }

    copy(out, SectionKind::Properties);

    let strip = edit.strip_app_properties;
    let set = edit.set_app_properties;
    let present = view.spans[SectionKind::ApplicationProperties as usize].is_some();
    if set.is_empty() && (strip.is_empty() || !present) {
        copy(out, SectionKind::ApplicationProperties);
    } else {
        let before = out.len();
        let (descriptor, map) = view.split_section(
            SectionKind::ApplicationProperties,
            &APPLICATION_PROPERTIES_DESCRIPTOR,
        );
        // Stripped keys and the keys being set are left out; the set ones are appended.
        let dropped = write_map_section(
            out,
            descriptor,
            map,
            |key| {
                strip
                    .iter()
                    .chain(set.iter().map(|(name, _)| name))
                    .any(|name| str_bytes(key) == Some(name.as_bytes()))
            },
            |out| {
                for (key, value) in set {
                    write_string(out, key)?;
                    write_string(out, value)?;
                }
                u32::try_from(set.len() * 2).map_err(|_| too_large("application properties"))
            },
        )?;
        if dropped == 0 && set.is_empty() {
            // Nothing matched: send the section exactly as it came rather than a re-framed equivalent.
            out.truncate(before);
            copy(out, SectionKind::ApplicationProperties);
        }
    }

    out.extend_from_slice(view.raw.get(view.tail_start()..).unwrap_or_default());
    Ok(())
}

impl<'a> MessageView<'a> {
    /// A section's descriptor bytes (`0x00` included) and value, or `default_descriptor` when absent.
    fn split_section<'d>(
        &self,
        kind: SectionKind,
        default_descriptor: &'d [u8],
    ) -> (&'d [u8], Option<&'a [u8]>)
    where
        'a: 'd,
    {
        match self.spans[kind as usize] {
            Some(span) => (
                self.raw.get(span.start..span.value).unwrap_or_default(),
                self.raw.get(span.value..span.end),
            ),
            None => (default_descriptor, None),
        }
    }
}

/// Writes a map section: `descriptor`, then the entries of `existing` whose keys `drop_key` rejects are
/// left out and the others copied as bytes, then whatever `append` writes (it returns how many elements,
/// i.e. keys plus values). Returns how many entries were dropped.
fn write_map_section(
    out: &mut Vec<u8>,
    descriptor: &[u8],
    existing: Option<&[u8]>,
    drop_key: impl Fn(&[u8]) -> bool,
    append: impl FnOnce(&mut Vec<u8>) -> Result<u32, CodecError>,
) -> Result<usize, CodecError> {
    let malformed = CodecError::MalformedMessage;
    out.extend_from_slice(descriptor);
    let map_start = out.len();
    // A map8 header, size and count patched below; widened to map32 afterwards in the rare case that
    // the map turns out larger (device messages' maps are small: no shifting of what was copied).
    out.extend_from_slice(&[0xc1, 0, 0]);
    let mut count: u32 = 0;
    let mut dropped = 0;
    if let Some(map) = existing {
        let (elements, mut items) = compound_items(map).map_err(malformed)?;
        if elements % 2 != 0 {
            return Err(malformed("map with an odd number of elements".into()));
        }
        // Kept entries are copied in runs: one copy per stretch between dropped entries.
        let mut run = items;
        let mut run_len = 0;
        for _ in 0..elements / 2 {
            let key_len = value_len(items, false, 0).map_err(malformed)?;
            let val_len =
                value_len(items.get(key_len..).unwrap_or_default(), false, 0).map_err(malformed)?;
            let (entry, rest) = items.split_at(key_len + val_len);
            if drop_key(&entry[..key_len]) {
                out.extend_from_slice(&run[..run_len]);
                run = rest;
                run_len = 0;
                dropped += 1;
            } else {
                run_len += entry.len();
                count += 2;
            }
            items = rest;
        }
        out.extend_from_slice(&run[..run_len]);
        if !items.is_empty() {
            return Err(malformed("map entries do not fill the map's size".into()));
        }
    }
    count = count
        .checked_add(append(out)?)
        .ok_or_else(|| too_large("map"))?;

    let content = out.len() - map_start - 3;
    match (u8::try_from(content + 1), u8::try_from(count)) {
        (Ok(size), Ok(count)) => {
            out[map_start + 1] = size;
            out[map_start + 2] = count;
        }
        _ => {
            let size = u32::try_from(content + 4).map_err(|_| too_large("map"))?;
            let mut header = [0xd1, 0, 0, 0, 0, 0, 0, 0, 0];
            header[1..5].copy_from_slice(&size.to_be_bytes());
            header[5..9].copy_from_slice(&count.to_be_bytes());
            out.splice(map_start..map_start + 3, header);
        }
    }
    Ok(dropped)
}

fn write_string(out: &mut Vec<u8>, string: &str) -> Result<(), CodecError> {
    write_text(out, string, (0xa1, 0xb1), "string")
}

fn write_symbol(out: &mut Vec<u8>, symbol: &str) -> Result<(), CodecError> {
    write_text(out, symbol, (0xa3, 0xb3), "symbol")
}

/// A string or symbol: the one-byte-length constructor (`codes.0`) when it fits, else the four-byte one.
fn write_text(
    out: &mut Vec<u8>,
    text: &str,
    codes: (u8, u8),
    what: &'static str,
) -> Result<(), CodecError> {
    match u8::try_from(text.len()) {
        Ok(len) => out.extend_from_slice(&[codes.0, len]),
        Err(_) => {
            let len = u32::try_from(text.len()).map_err(|_| too_large(what))?;
            out.push(codes.1);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

fn serialize<T: Serialize>(
    value: &T,
    out: &mut Vec<u8>,
    what: &'static str,
) -> Result<(), CodecError> {
    let mut serializer = serde_amqp::ser::Serializer::new(&mut *out);
    value
        .serialize(&mut serializer)
        .map_err(|e| CodecError::Encode {
            what,
            reason: serde_reason(e),
        })
}

fn too_large(what: &'static str) -> CodecError {
    CodecError::Encode {
        what,
        reason: "larger than 4 GiB".into(),
    }
}

/// The parts of a message the router creates itself (commands, command responses, notifications).
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageParts<'p> {
    /// Header section, if any.
    pub header: Option<&'p Header>,
    /// Message-annotations section, if any.
    pub message_annotations: Option<&'p MessageAnnotations>,
    /// Properties section, if any.
    pub properties: Option<&'p Properties>,
    /// Application-properties section, if any.
    pub application_properties: Option<&'p ApplicationProperties>,
    /// The body, sent as one `data` section (possibly empty), the only body shape Hono's APIs use.
    pub data: &'p [u8],
}

/// Appends a message built from `parts` to `out`. On error `out` is left as it was.
pub fn build_message(parts: &MessageParts<'_>, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    build_into(parts, out).inspect_err(|_| out.truncate(start))
}

fn build_into(parts: &MessageParts<'_>, out: &mut Vec<u8>) -> Result<(), CodecError> {
    if let Some(header) = parts.header {
        serialize(header, out, "header")?;
    }
    if let Some(annotations) = parts.message_annotations {
        serialize(annotations, out, "message annotations")?;
    }
    if let Some(properties) = parts.properties {
        serialize(properties, out, "properties")?;
    }
    if let Some(application_properties) = parts.application_properties {
        serialize(application_properties, out, "application properties")?;
    }
    out.extend_from_slice(&DATA_DESCRIPTOR);
    match u8::try_from(parts.data.len()) {
        Ok(len) => out.extend_from_slice(&[0xa0, len]),
        Err(_) => {
            let len = u32::try_from(parts.data.len()).map_err(|_| too_large("data section"))?;
            out.push(0xb0);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(parts.data);
    Ok(())
}
