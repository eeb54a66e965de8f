//! Lengths of AMQP-encoded values, found from constructors and size fields alone (AMQP 1.0 part 1, §1.6).
//!
//! The router locates performatives and message sections with this walker instead of decoding them, so
//! sections it does not change are forwarded as the very bytes the producer sent. The walker is also the gate
//! in front of `serde_amqp`: that decoder recurses without a depth limit, so every byte range handed to it has
//! first been walked deeply here with [`MAX_NESTING`] enforced.

use std::borrow::Cow;

use super::CodecError;

/// Deepest nesting of described types, lists, maps and arrays accepted.
///
/// Real traffic nests a handful of levels (a performative holding a map of lists); a few kilobytes of `0xc0`
/// bytes would otherwise drive a recursive decoder thousands of frames deep and overflow the stack.
pub const MAX_NESTING: u32 = 32;

/// Why a value could not be walked; turned into the caller's [`CodecError`] variant with context.
pub(crate) type WalkError = Cow<'static, str>;

const TRUNCATED: &str = "value truncated";

/// The length of the AMQP-encoded value at the start of `buf`, with its whole structure checked.
///
/// Every element of lists, maps and arrays is walked: element counts must fill the declared sizes exactly,
/// maps must have an even count, and nesting may not exceed [`MAX_NESTING`]. Bytes after the value are
/// ignored. Nothing is allocated unless the value is malformed.
pub fn encoded_len(buf: &[u8]) -> Result<usize, CodecError> {
    value_len(buf, true, 0).map_err(CodecError::MalformedValue)
}

/// The length of the AMQP-encoded value at the start of `buf`, trusting the size fields of compound values.
///
/// O(1) for every value except chains of described types; used on the per-message path to step over
/// sections that are only copied. The bounds are still checked, so the result never exceeds `buf.len()`.
pub fn encoded_len_shallow(buf: &[u8]) -> Result<usize, CodecError> {
    value_len(buf, false, 0).map_err(CodecError::MalformedValue)
}

/// Length of the value at the start of `buf`, constructor included. `deep` walks compound contents.
pub(crate) fn value_len(buf: &[u8], deep: bool, depth: u32) -> Result<usize, WalkError> {
    let (&code, rest) = buf.split_first().ok_or(Cow::Borrowed(TRUNCATED))?;
    if code == DESCRIBED {
        // A descriptor may itself be described, so the chain is bounded like any other nesting.
        let depth = nest(depth)?;
        let descriptor = value_len(rest, deep, depth)?;
        let value = value_len(after(rest, descriptor)?, deep, depth)?;
        return Ok(1 + descriptor + value);
    }
    Ok(1 + payload_len(code, rest, deep, depth)?)
}

/// The constructor byte that introduces a described type.
pub(crate) const DESCRIBED: u8 = 0x00;

/// Width of the data after a fixed-width constructor, `None` for every other constructor.
fn fixed_width(code: u8) -> Option<usize> {
    match code {
        0x40..=0x45 => Some(0),
        0x50..=0x56 => Some(1),
        0x60 | 0x61 => Some(2),
        0x70..=0x74 => Some(4),
        0x80..=0x84 => Some(8),
        0x94 | 0x98 => Some(16),
        _ => None,
    }
}

/// Length of the bytes that follow constructor `code` (for arrays: follow the array's own constructor).
fn payload_len(code: u8, rest: &[u8], deep: bool, depth: u32) -> Result<usize, WalkError> {
    let len = if let Some(width) = fixed_width(code) {
        width
    } else {
        match code {
            0xa0 | 0xa1 | 0xa3 => 1 + usize::from(u8_at(rest)?),
            0xb0 | 0xb1 | 0xb3 => add(4, u32_at(rest)?)?,
            0xc0 | 0xc1 | 0xe0 => {
                let size = usize::from(u8_at(rest)?);
                let body = rest.get(1..1 + size).ok_or(Cow::Borrowed(TRUNCATED))?;
                let count =
                    u32::from(u8_at(body).map_err(|_| "compound size smaller than its count")?);
                if deep {
                    contents(code, count, &body[1..], depth)?;
                }
                1 + size
            }
            0xd0 | 0xd1 | 0xf0 => {
                let size = u32_at(rest)?;
                let total = add(4, size)?;
                let body = rest.get(4..total).ok_or(Cow::Borrowed(TRUNCATED))?;
                let count = u32_at(body).map_err(|_| "compound size smaller than its count")?;
                if deep {
                    contents(code, count, &body[4..], depth)?;
                }
                total
            }
            _ => return Err(format!("unknown constructor {code:#04x}").into()),
        }
    };
    if len > rest.len() {
        return Err(TRUNCATED.into());
    }
    Ok(len)
}

/// Checks that `count` elements exactly fill `items` (the bytes after the count field).
fn contents(code: u8, count: u32, items: &[u8], depth: u32) -> Result<(), WalkError> {
    let depth = nest(depth)?;
    let count = usize::try_from(count).map_err(|_| "element count too large")?;
    if matches!(code, 0xe0 | 0xf0) {
        return array_contents(count, items, depth);
    }
    if matches!(code, 0xc1 | 0xd1) && count % 2 != 0 {
        return Err("map with an odd number of elements".into());
    }
    // Every element takes at least its constructor byte; this bounds the loop by the input size.
    if count > items.len() {
        return Err("element count exceeds the compound's size".into());
    }
    let mut pos = 0;
    for _ in 0..count {
        pos += value_len(after(items, pos)?, true, depth)?;
    }
    if pos != items.len() {
        return Err("elements do not fill the compound's size".into());
    }
    Ok(())
}

/// Array body: one element constructor (possibly described), then `count` constructor-less elements.
fn array_contents(count: usize, items: &[u8], mut depth: u32) -> Result<(), WalkError> {
    let mut pos = 0;
    let code = loop {
        let code = u8_at(after(items, pos)?)?;
        pos += 1;
        if code != DESCRIBED {
            break code;
        }
        depth = nest(depth)?;
        pos += value_len(after(items, pos)?, true, depth)?;
    };
    let elements = after(items, pos)?;
    if let Some(width) = fixed_width(code) {
        // Zero-width elements (null, true, uint0, list0, ...) allow any count in zero bytes.
        return if count.checked_mul(width) == Some(elements.len()) {
            Ok(())
        } else {
            Err("array elements do not fill the array's size".into())
        };
    }
    if count > elements.len() {
        return Err("element count exceeds the array's size".into());
    }
    let mut pos = 0;
    for _ in 0..count {
        pos += payload_len(code, after(elements, pos)?, true, depth)?;
    }
    if pos != elements.len() {
        return Err("array elements do not fill the array's size".into());
    }
    Ok(())
}

fn nest(depth: u32) -> Result<u32, WalkError> {
    if depth >= MAX_NESTING {
        Err("values nested too deeply".into())
    } else {
        Ok(depth + 1)
    }
}

fn after(buf: &[u8], pos: usize) -> Result<&[u8], WalkError> {
    buf.get(pos..).ok_or(Cow::Borrowed(TRUNCATED))
}

fn add(a: usize, b: u32) -> Result<usize, WalkError> {
    usize::try_from(b)
        .ok()
        .and_then(|b| b.checked_add(a))
        .ok_or(Cow::Borrowed(TRUNCATED))
}

fn u8_at(buf: &[u8]) -> Result<u8, WalkError> {
    buf.first().copied().ok_or(Cow::Borrowed(TRUNCATED))
}

pub(crate) fn u32_at(buf: &[u8]) -> Result<u32, WalkError> {
    match buf {
        [a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(TRUNCATED.into()),
    }
}

/// The elements of a list or map value (`0x45`, `0xc0`/`0xc1`, `0xd0`/`0xd1`): count and the bytes after the
/// count field, bounded by the declared size.
pub(crate) fn compound_items(value: &[u8]) -> Result<(u32, &[u8]), WalkError> {
    match value {
        [0x45, ..] => Ok((0, &[])),
        [0xc0 | 0xc1, size, rest @ ..] => {
            let body = rest
                .get(..usize::from(*size))
                .ok_or(Cow::Borrowed(TRUNCATED))?;
            let (&count, items) = body
                .split_first()
                .ok_or("compound size smaller than its count")?;
            Ok((u32::from(count), items))
        }
        [0xd0 | 0xd1, rest @ ..] => {
            let size = usize::try_from(u32_at(rest)?).map_err(|_| TRUNCATED)?;
            let body = rest
                .get(4..)
                .and_then(|r| r.get(..size))
                .ok_or(Cow::Borrowed(TRUNCATED))?;
            let count = u32_at(body).map_err(|_| "compound size smaller than its count")?;
            Ok((count, &body[4..]))
        }
        _ => Err("not a list or map".into()),
    }
}

/// The text of a string or symbol value (`0xa1`/`0xa3`/`0xb1`/`0xb3`), if `value` is one and is valid UTF-8.
pub(crate) fn as_str(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(str_bytes(value)?).ok()
}

/// The bytes of a string or symbol value, without checking that they are UTF-8.
pub(crate) fn str_bytes(value: &[u8]) -> Option<&[u8]> {
    match value {
        [0xa1 | 0xa3, len, rest @ ..] => rest.get(..usize::from(*len)),
        [0xb1 | 0xb3, rest @ ..] => {
            let len = usize::try_from(u32_at(rest).ok()?).ok()?;
            rest.get(4..)?.get(..len)
        }
        _ => None,
    }
}

/// Reads a descriptor (the value after a `0x00` constructor): its numeric code, with the symbolic names of
/// the SASL bodies and message sections translated, and the descriptor's encoded length. `None` for a
/// descriptor this codec has no name for.
pub(crate) fn descriptor_code(buf: &[u8]) -> Result<(Option<u64>, usize), WalkError> {
    match buf {
        [0x53, code, ..] => Ok((Some(u64::from(*code)), 2)),
        [0x44, ..] => Ok((Some(0), 1)),
        [0x80, a, b, c, d, e, f, g, h, ..] => Ok((
            Some(u64::from_be_bytes([*a, *b, *c, *d, *e, *f, *g, *h])),
            9,
        )),
        _ => {
            let len = value_len(buf, false, 1)?;
            let code = str_bytes(&buf[..len]).and_then(|name| {
                DESCRIPTOR_NAMES
                    .iter()
                    .find(|(n, _)| n.as_bytes() == name)
                    .map(|(_, code)| *code)
            });
            Ok((code, len))
        }
    }
}

/// Symbolic descriptors a peer may use instead of the numeric codes (AMQP 1.0 parts 3.2 and 5.3.3).
const DESCRIPTOR_NAMES: [(&str, u64); 14] = [
    ("amqp:sasl-mechanisms:list", 0x40),
    ("amqp:sasl-init:list", 0x41),
    ("amqp:sasl-challenge:list", 0x42),
    ("amqp:sasl-response:list", 0x43),
    ("amqp:sasl-outcome:list", 0x44),
    ("amqp:header:list", 0x70),
    ("amqp:delivery-annotations:map", 0x71),
    ("amqp:message-annotations:map", 0x72),
    ("amqp:properties:list", 0x73),
    ("amqp:application-properties:map", 0x74),
    ("amqp:data:binary", 0x75),
    ("amqp:amqp-sequence:list", 0x76),
    ("amqp:amqp-value:*", 0x77),
    ("amqp:footer:map", 0x78),
];
