//! An AMQP 1.0 type decoder (part 1, §1.6) and message-section splitter (part 3, §3.2) for stories that
//! assert on the bytes an application received.
//!
//! Written here, deliberately apart from Ferry's own codec (`ferry-amqp`): the encoding those stories check
//! is Ferry's, so they must not read it with Ferry's reader. Every value keeps where it lies in the input
//! ([`Node::start`], [`Node::end`]), so a story can point at a byte or blank a value that varies per run.
//! Sizes are checked against what the items inside actually take: a compound whose size or count lies is an
//! error, not a guess.

use std::fmt::Write as _;

/// A decoded value and the bytes it came from: `bytes[start..end]` is its whole encoding, constructor
/// included.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub start: usize,
    pub end: usize,
    pub value: Value,
}

/// An AMQP value as encoded: the encoding (list8 or list32, str8 or str32 ...) is not kept, the bytes are.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Ubyte(u8),
    Ushort(u16),
    Uint(u32),
    Ulong(u64),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    /// The bits, to compare exactly.
    Float(u32),
    /// The bits, to compare exactly.
    Double(u64),
    Char(u32),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
    /// decimal32/64/128, as bytes.
    Decimal(Vec<u8>),
    Binary(Vec<u8>),
    String(String),
    Symbol(String),
    List(Vec<Node>),
    /// Keys and values in order.
    Map(Vec<(Node, Node)>),
    Array(Vec<Node>),
    Described(Box<Node>, Box<Node>),
}

/// Deepest nesting decoded; deeper input is an error (the messages checked are a few levels deep).
const MAX_DEPTH: usize = 32;

/// Decodes the one value that starts at `pos` in `bytes`.
pub fn decode(bytes: &[u8], pos: usize) -> Result<Node, String> {
    node(bytes, pos, 0)
}

fn node(bytes: &[u8], start: usize, depth: usize) -> Result<Node, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} at byte {start}"));
    }
    let code = *bytes
        .get(start)
        .ok_or_else(|| format!("a value expected at byte {start}, the input ends"))?;
    if code == 0x00 {
        let descriptor = node(bytes, start + 1, depth + 1)?;
        let inner = node(bytes, descriptor.end, depth + 1)?;
        return Ok(Node {
            start,
            end: inner.end,
            value: Value::Described(Box::new(descriptor), Box::new(inner)),
        });
    }
    let (value, end) = body(bytes, code, start + 1, depth)?;
    Ok(Node { start, end, value })
}

/// `n` bytes at `pos`.
fn take(bytes: &[u8], pos: usize, n: usize) -> Result<&[u8], String> {
    pos.checked_add(n)
        .and_then(|end| bytes.get(pos..end))
        .ok_or_else(|| {
            format!(
                "{n} bytes expected at byte {pos}, only {} left",
                bytes.len().saturating_sub(pos)
            )
        })
}

fn be<const N: usize>(bytes: &[u8], pos: usize) -> Result<[u8; N], String> {
    let mut a = [0; N];
    a.copy_from_slice(take(bytes, pos, N)?);
    Ok(a)
}

/// The value of format code `code` whose bytes start at `pos` (after the constructor); returns it and
/// where it ends.
fn body(bytes: &[u8], code: u8, pos: usize, depth: usize) -> Result<(Value, usize), String> {
    let fixed = |n: usize| take(bytes, pos, n).map(|_| pos + n);
    Ok(match code {
        0x40 => (Value::Null, pos),
        0x41 => (Value::Bool(true), pos),
        0x42 => (Value::Bool(false), pos),
        0x43 => (Value::Uint(0), pos),
        0x44 => (Value::Ulong(0), pos),
        0x45 => (Value::List(Vec::new()), pos),
        0x50 => (Value::Ubyte(be::<1>(bytes, pos)?[0]), fixed(1)?),
        0x51 => (Value::Byte(i8::from_be_bytes(be(bytes, pos)?)), fixed(1)?),
        0x52 => (Value::Uint(u32::from(be::<1>(bytes, pos)?[0])), fixed(1)?),
        0x53 => (Value::Ulong(u64::from(be::<1>(bytes, pos)?[0])), fixed(1)?),
        0x54 => (
            Value::Int(i32::from(i8::from_be_bytes(be(bytes, pos)?))),
            fixed(1)?,
        ),
        0x55 => (
            Value::Long(i64::from(i8::from_be_bytes(be(bytes, pos)?))),
            fixed(1)?,
        ),
        0x56 => match be::<1>(bytes, pos)?[0] {
            0 => (Value::Bool(false), fixed(1)?),
            1 => (Value::Bool(true), fixed(1)?),
            b => return Err(format!("boolean {b:#04x} at byte {pos}")),
        },
        0x60 => (
            Value::Ushort(u16::from_be_bytes(be(bytes, pos)?)),
            fixed(2)?,
        ),
        0x61 => (Value::Short(i16::from_be_bytes(be(bytes, pos)?)), fixed(2)?),
        0x70 => (Value::Uint(u32::from_be_bytes(be(bytes, pos)?)), fixed(4)?),
        0x71 => (Value::Int(i32::from_be_bytes(be(bytes, pos)?)), fixed(4)?),
        0x72 => (Value::Float(u32::from_be_bytes(be(bytes, pos)?)), fixed(4)?),
        0x73 => (Value::Char(u32::from_be_bytes(be(bytes, pos)?)), fixed(4)?),
        0x74 => (Value::Decimal(take(bytes, pos, 4)?.to_vec()), fixed(4)?),
        0x80 => (Value::Ulong(u64::from_be_bytes(be(bytes, pos)?)), fixed(8)?),
        0x81 => (Value::Long(i64::from_be_bytes(be(bytes, pos)?)), fixed(8)?),
        0x82 => (
            Value::Double(u64::from_be_bytes(be(bytes, pos)?)),
            fixed(8)?,
        ),
        0x83 => (
            Value::Timestamp(i64::from_be_bytes(be(bytes, pos)?)),
            fixed(8)?,
        ),
        0x84 => (Value::Decimal(take(bytes, pos, 8)?.to_vec()), fixed(8)?),
        0x94 => (Value::Decimal(take(bytes, pos, 16)?.to_vec()), fixed(16)?),
        0x98 => (Value::Uuid(be(bytes, pos)?), fixed(16)?),
        0xa0 | 0xa1 | 0xa3 | 0xb0 | 0xb1 | 0xb3 => {
            let (len, at) = if code & 0xf0 == 0xa0 {
                (usize::from(be::<1>(bytes, pos)?[0]), pos + 1)
            } else {
                (u32::from_be_bytes(be(bytes, pos)?) as usize, pos + 4)
            };
            let content = take(bytes, at, len)?;
            let text = || {
                String::from_utf8(content.to_vec())
                    .map_err(|_| format!("string or symbol at byte {} is not UTF-8", pos - 1))
            };
            let value = match code & 0x0f {
                0x00 => Value::Binary(content.to_vec()),
                0x01 => Value::String(text()?),
                _ => Value::Symbol(text()?),
            };
            (value, at + len)
        }
        0xc0 | 0xc1 | 0xd0 | 0xd1 | 0xe0 | 0xf0 => {
            let (size, count, at) = if code & 0x10 == 0 {
                // list8, map8, array8: one-byte size and count
                let [size, count] = be::<2>(bytes, pos)?;
                (usize::from(size), usize::from(count), pos + 2)
            } else {
                let size = u32::from_be_bytes(be(bytes, pos)?) as usize;
                let count = u32::from_be_bytes(be(bytes, pos + 4)?) as usize;
                (size, count, pos + 8)
            };
            // The size counts the bytes after the size field: the count field and the items.
            let width = if code & 0x10 == 0 { 1 } else { 4 };
            let end = (pos + width)
                .checked_add(size)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| {
                    format!(
                        "compound {code:#04x} at byte {} says {size} bytes, the input has fewer",
                        pos - 1
                    )
                })?;
            if size < width {
                return Err(format!(
                    "compound {code:#04x} at byte {} has size {size}, smaller than its count field",
                    pos - 1
                ));
            }
            let (value, used) = match code {
                0xc0 | 0xd0 => {
                    let items = items(bytes, at, count, depth)?;
                    let used = items.last().map_or(at, |n| n.end);
                    (Value::List(items), used)
                }
                0xc1 | 0xd1 => {
                    if !count.is_multiple_of(2) {
                        return Err(format!("map at byte {} has an odd count {count}", pos - 1));
                    }
                    let items = items(bytes, at, count, depth)?;
                    let used = items.last().map_or(at, |n| n.end);
                    let mut pairs = Vec::new();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    (Value::Map(pairs), used)
                }
                _ => array(bytes, at, count, depth)?,
            };
            if used != end {
                return Err(format!(
                    "compound {code:#04x} at byte {} says it ends at byte {end}, its {count} items end at \
                     byte {used}",
                    pos - 1
                ));
            }
            (value, end)
        }
        _ => {
            return Err(format!(
                "unknown format code {code:#04x} at byte {}",
                pos - 1
            ))
        }
    })
}

fn items(bytes: &[u8], mut at: usize, count: usize, depth: usize) -> Result<Vec<Node>, String> {
    let mut items = Vec::new();
    for _ in 0..count {
        let item = node(bytes, at, depth + 1)?;
        at = item.end;
        items.push(item);
    }
    Ok(items)
}

/// An array's elements: one constructor (maybe described), then each element's bytes without one. Each
/// element is returned as a node of its bytes alone (described ones as `Described`, sharing the
/// descriptor).
fn array(bytes: &[u8], at: usize, count: usize, depth: usize) -> Result<(Value, usize), String> {
    let (descriptor, code_at) = if bytes.get(at) == Some(&0x00) {
        let d = node(bytes, at + 1, depth + 1)?;
        let end = d.end;
        (Some(d), end)
    } else {
        (None, at)
    };
    let code = *bytes
        .get(code_at)
        .ok_or_else(|| format!("array constructor expected at byte {code_at}"))?;
    if code == 0x00 {
        return Err(format!("doubly described array element at byte {code_at}"));
    }
    let mut pos = code_at + 1;
    let mut elements = Vec::new();
    for _ in 0..count {
        let (value, end) = body(bytes, code, pos, depth + 1)?;
        let element = Node {
            start: pos,
            end,
            value,
        };
        elements.push(match &descriptor {
            Some(d) => Node {
                start: pos,
                end,
                value: Value::Described(Box::new(d.clone()), Box::new(element)),
            },
            None => element,
        });
        pos = end;
    }
    Ok((Value::Array(elements), pos))
}

/// A message section (part 3, §3.2): which one, and the described value that is its whole encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// `header`, `delivery-annotations`, `message-annotations`, `properties`,
    /// `application-properties`, `data`, `amqp-sequence`, `amqp-value` or `footer`.
    pub name: &'static str,
    /// The described value: `bytes[node.start..node.end]` is the section.
    pub node: Node,
}

impl Section {
    /// The section's value (what its descriptor describes).
    pub fn value(&self) -> &Node {
        match &self.node.value {
            Value::Described(_, v) => v,
            _ => unreachable!("a section is a described value"),
        }
    }
}

const SECTIONS: [(u64, &str, &str); 9] = [
    (0x70, "amqp:header:list", "header"),
    (
        0x71,
        "amqp:delivery-annotations:map",
        "delivery-annotations",
    ),
    (0x72, "amqp:message-annotations:map", "message-annotations"),
    (0x73, "amqp:properties:list", "properties"),
    (
        0x74,
        "amqp:application-properties:map",
        "application-properties",
    ),
    (0x75, "amqp:data:binary", "data"),
    (0x76, "amqp:amqp-sequence:list", "amqp-sequence"),
    (0x77, "amqp:amqp-value:*", "amqp-value"),
    (0x78, "amqp:footer:map", "footer"),
];

/// Splits an encoded message into its sections, in order. Every byte must belong to a section; each
/// section must be a described value with a section's descriptor (numeric, any ulong encoding, or
/// symbolic).
pub fn sections(bytes: &[u8]) -> Result<Vec<Section>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let node = decode(bytes, pos)?;
        let Value::Described(descriptor, _) = &node.value else {
            return Err(format!("byte {pos}: a section must be a described value"));
        };
        let name = SECTIONS
            .iter()
            .find(|(code, symbol, _)| match &descriptor.value {
                Value::Ulong(c) => c == code,
                Value::Symbol(s) => s == symbol,
                _ => false,
            })
            .map(|(_, _, name)| *name)
            .ok_or_else(|| {
                format!(
                    "byte {pos}: descriptor {} is not a message section's",
                    render(descriptor)
                )
            })?;
        pos = node.end;
        out.push(Section { name, node });
    }
    Ok(out)
}

/// A short text of a value for failure messages, e.g. `list[null, sym"text/plain", ts(0)]`.
pub fn render(node: &Node) -> String {
    let mut s = String::new();
    render_into(&node.value, &mut s);
    s
}

fn render_into(value: &Value, s: &mut String) {
    let list = |nodes: &[Node], s: &mut String| {
        for (i, n) in nodes.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            render_into(&n.value, s);
        }
    };
    let _ = match value {
        Value::Null => write!(s, "null"),
        Value::Bool(b) => write!(s, "{b}"),
        Value::Ubyte(v) => write!(s, "ubyte({v})"),
        Value::Ushort(v) => write!(s, "ushort({v})"),
        Value::Uint(v) => write!(s, "uint({v})"),
        Value::Ulong(v) => write!(s, "ulong({v:#x})"),
        Value::Byte(v) => write!(s, "byte({v})"),
        Value::Short(v) => write!(s, "short({v})"),
        Value::Int(v) => write!(s, "int({v})"),
        Value::Long(v) => write!(s, "long({v})"),
        Value::Float(v) => write!(s, "float({})", f32::from_bits(*v)),
        Value::Double(v) => write!(s, "double({})", f64::from_bits(*v)),
        Value::Char(v) => write!(s, "char({v:#x})"),
        Value::Timestamp(v) => write!(s, "ts({v})"),
        Value::Uuid(v) => write!(s, "uuid({})", hex(v)),
        Value::Decimal(v) => write!(s, "decimal({})", hex(v)),
        Value::Binary(v) => write!(s, "bin({:?})", String::from_utf8_lossy(v)),
        Value::String(v) => write!(s, "{v:?}"),
        Value::Symbol(v) => write!(s, "sym{v:?}"),
        Value::List(items) => {
            s.push_str("list[");
            list(items, s);
            write!(s, "]")
        }
        Value::Array(items) => {
            s.push_str("array[");
            list(items, s);
            write!(s, "]")
        }
        Value::Map(pairs) => {
            s.push('{');
            for (i, (k, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                render_into(&k.value, s);
                s.push_str(": ");
                render_into(&v.value, s);
            }
            write!(s, "}}")
        }
        Value::Described(d, v) => {
            s.push('@');
            render_into(&d.value, s);
            s.push(' ');
            render_into(&v.value, s);
            Ok(())
        }
    };
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The bytes of a hex string; whitespace is ignored. Panics on anything else.
pub fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd number of hex digits in {text:?}"
    );
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ASCII");
            u8::from_str_radix(pair, 16).unwrap_or_else(|_| panic!("not hex: {pair:?} in {text:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_encodings_a_device_message_uses() {
        // header [durable=true, null, ttl=uint(30000)], properties with a timestamp, application
        // properties as map8, a data section.
        let bytes = unhex(
            "005370 c0 08 03 41 40 70 00007530
             005373 c0 10 03 40 a3 03 6a736f 83 0000018c00000001
             005374 c1 12 04 a1 01 71 54 01 a1 01 6c 81 ffffffffffffffff
             005375 a0 02 6869",
        );
        let sections = sections(&bytes).expect("well-formed");
        let names: Vec<_> = sections.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            ["header", "properties", "application-properties", "data"]
        );
        assert_eq!(render(sections[0].value()), "list[true, null, uint(30000)]");
        assert_eq!(
            render(sections[1].value()),
            "list[null, sym\"jso\", ts(1700807049217)]"
        );
        assert_eq!(
            render(sections[2].value()),
            "{\"q\": int(1), \"l\": long(-1)}"
        );
        assert_eq!(render(sections[3].value()), "bin(\"hi\")");
        // Every value knows its bytes: the timestamp's 8 are the last of the properties section.
        let Value::List(items) = &sections[1].value().value else {
            panic!("properties are a list")
        };
        assert_eq!(items[2].end, sections[1].node.end);
        assert_eq!(items[2].end - items[2].start, 9);
    }

    #[test]
    fn decodes_wide_encodings_symbolic_descriptors_and_arrays() {
        let bytes = unhex(
            "00 a3 0f 616d71703a666f6f7465723a6d6170
               d1 00000011 00000002 b3 00000001 6b e0 05 03 52 01 02 03
             00 80 0000000000000072 c1 01 00
             00 53 75 b0 00000001 7a",
        );
        let s = sections(&bytes).expect("well-formed");
        assert_eq!(s[0].name, "footer");
        assert_eq!(
            render(s[0].value()),
            "{sym\"k\": array[uint(1), uint(2), uint(3)]}"
        );
        assert_eq!(s[1].name, "message-annotations");
        assert_eq!(render(s[1].value()), "{}");
        assert_eq!(render(s[2].value()), "bin(\"z\")");
    }

    #[test]
    fn refuses_sizes_that_lie_and_what_is_not_a_section() {
        // list8 says 4 bytes, its items take 3 (count byte and two nulls)
        assert!(sections(&unhex("005370 c0 04 02 40 40 40"))
            .expect_err("list8 whose size is one more than its items")
            .contains("ends at"));
        // str8 longer than the input
        assert!(sections(&unhex("005375 a1 05 6869")).is_err());
        // a section that is not described
        assert!(sections(&unhex("a1 01 68")).is_err());
        // a described value that is no section
        assert!(sections(&unhex("005310 45")).is_err());
        assert!(sections(&unhex("005375 ff")).is_err());
    }
}
