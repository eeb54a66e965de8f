//! Writing AMQP values straight into a byte buffer, for the per-message path of a producer that builds
//! the same few sections for every message (the adapters' device messages).
//!
//! Each function appends one value in the encoding `serde_amqp` picks for it (the narrowest constructor
//! that holds the value), so a message built here is byte for byte what fe2o3-amqp would send for the
//! same fields, without its per-message allocations. Compound values are written with [`begin`] and
//! [`finish`]: the caller appends the elements between them and the size and count are patched in.

/// A described section's constructor: `0x00`, then the descriptor as a `smallulong`.
pub fn descriptor(out: &mut Vec<u8>, code: u8) {
    out.extend_from_slice(&[0x00, 0x53, code]);
}

/// `null`.
pub fn null(out: &mut Vec<u8>) {
    out.push(0x40);
}

/// A `boolean` (`true` / `false` constructors).
pub fn bool(out: &mut Vec<u8>, v: bool) {
    out.push(if v { 0x41 } else { 0x42 });
}

/// A `uint`: `uint0`, `smalluint` or the full width.
pub fn uint(out: &mut Vec<u8>, v: u32) {
    match v {
        0 => out.push(0x43),
        1..=255 => out.extend_from_slice(&[0x52, v as u8]),
        _ => {
            out.push(0x70);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// An `int`: `smallint` when it fits a byte, else the full width.
pub fn int(out: &mut Vec<u8>, v: i32) {
    match i8::try_from(v) {
        Ok(small) => out.extend_from_slice(&[0x54, small as u8]),
        Err(_) => {
            out.push(0x71);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// A `long`: `smalllong` when it fits a byte, else the full width.
pub fn long(out: &mut Vec<u8>, v: i64) {
    match i8::try_from(v) {
        Ok(small) => out.extend_from_slice(&[0x55, small as u8]),
        Err(_) => {
            out.push(0x81);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// A `double`.
pub fn double(out: &mut Vec<u8>, v: f64) {
    out.push(0x82);
    out.extend_from_slice(&v.to_be_bytes());
}

/// A `timestamp` (milliseconds since the Unix epoch).
pub fn timestamp(out: &mut Vec<u8>, ms: i64) {
    out.push(0x83);
    out.extend_from_slice(&ms.to_be_bytes());
}

/// A `string` (`str8` up to 255 bytes, else `str32`).
pub fn string(out: &mut Vec<u8>, s: &str) {
    variable(out, 0xa1, 0xb1, s.as_bytes());
}

/// A `symbol` (`sym8` up to 255 bytes, else `sym32`).
pub fn symbol(out: &mut Vec<u8>, s: &str) {
    variable(out, 0xa3, 0xb3, s.as_bytes());
}

/// A `binary` (`vbin8` up to 255 bytes, else `vbin32`).
pub fn binary(out: &mut Vec<u8>, b: &[u8]) {
    variable(out, 0xa0, 0xb0, b);
}

fn variable(out: &mut Vec<u8>, short: u8, long: u8, bytes: &[u8]) {
    match u8::try_from(bytes.len()) {
        Ok(len) => out.extend_from_slice(&[short, len]),
        Err(_) => {
            out.push(long);
            // Callers' values are bounded far below 4 GiB (frames are); saturate rather than wrap.
            out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        }
    }
    out.extend_from_slice(bytes);
}

/// A list or map being written: where its constructor starts. Made by [`begin`], closed by [`finish`].
#[derive(Debug, Clone, Copy)]
#[must_use = "a compound value must be closed with put::finish"]
pub struct Compound {
    start: usize,
    map: bool,
}

/// Starts a list (`map = false`) or map: reserves the widest header (`list32` / `map32`), which
/// [`finish`] narrows when the value turns out small.
pub fn begin(out: &mut Vec<u8>, map: bool) -> Compound {
    let start = out.len();
    out.extend_from_slice(&[0; 9]);
    Compound { start, map }
}

/// Closes `c` holding `count` elements (a map counts keys and values), choosing the encoding
/// `serde_amqp` would: `list0` for an empty list, the 8-bit form when size and count fit a byte.
pub fn finish(out: &mut Vec<u8>, c: Compound, count: u32) {
    let body_start = c.start + 9;
    let body_len = out.len() - body_start;
    if !c.map && count == 0 {
        out.truncate(c.start);
        out.push(0x45);
        return;
    }
    // The 8-bit size counts the count byte; the 32-bit size the four count bytes.
    match (u8::try_from(body_len + 1), u8::try_from(count)) {
        (Ok(size), Ok(count8)) => {
            let code = if c.map { 0xc1 } else { 0xc0 };
            out[c.start..c.start + 3].copy_from_slice(&[code, size, count8]);
            out.copy_within(body_start.., c.start + 3);
            out.truncate(c.start + 3 + body_len);
        }
        _ => {
            let code = if c.map { 0xd1 } else { 0xd0 };
            let size = u32::try_from(body_len + 4).unwrap_or(u32::MAX);
            out[c.start] = code;
            out[c.start + 1..c.start + 5].copy_from_slice(&size.to_be_bytes());
            out[c.start + 5..c.start + 9].copy_from_slice(&count.to_be_bytes());
        }
    }
}
