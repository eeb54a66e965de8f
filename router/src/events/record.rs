//! Encoding of segment headers and log records (the format is described in the `events` module docs).
//!
//! Pure functions over byte slices, so that recovery, reads and tests share one parser that says what is
//! wrong instead of panicking on torn or hostile bytes.

use std::ops::Range;

use super::{crc32c, StoreError};

/// `[len u32][crc32c u32]` in front of every record body.
pub(crate) const FRAME_HEADER: usize = 8;
/// The largest record body; a longer length field is taken as garbage at recovery.
pub(crate) const MAX_BODY: usize = 64 << 20;
/// Bytes at the start of every segment file.
pub(crate) const SEGMENT_HEADER: usize = 32;
/// The most ids in one ack record, so an ack record stays far below [`MAX_BODY`].
pub(crate) const MAX_ACKS_PER_RECORD: usize = 65_536;

const MAGIC: [u8; 8] = *b"FERRYEVT";
const VERSION: u32 = 1;
const KIND_EVENT: u8 = 1;
const KIND_ACKS: u8 = 2;
/// `expires_at_ms` on disk for an event that never expires.
const NEVER: u64 = u64::MAX;

/// What the header of a segment file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// The sequence number, also the file name; checked so a renamed file is noticed.
    pub seq: u64,
    /// Every event id handed out before this segment was created is below this, so ids keep rising after
    /// a restart even when every record that carried them has been deleted.
    pub base_id: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER] {
        let mut h = [0u8; SEGMENT_HEADER];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..20].copy_from_slice(&self.seq.to_le_bytes());
        h[20..28].copy_from_slice(&self.base_id.to_le_bytes());
        let crc = crc32c::checksum(&h[0..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(h: &[u8; SEGMENT_HEADER]) -> Result<Self, &'static str> {
        if h[0..8] != MAGIC {
            return Err("not an event segment (bad magic)");
        }
        if crc32c::checksum(&h[0..28]) != u32_at(h, 28) {
            return Err("segment header checksum mismatch");
        }
        if u32_at(h, 8) != VERSION {
            return Err("unknown segment format version");
        }
        Ok(Self {
            seq: u64_at(h, 12),
            base_id: u64_at(h, 20),
        })
    }
}

/// Appends an event record to `buf`; leaves `buf` untouched when a field is too long.
pub(crate) fn encode_event(
    buf: &mut Vec<u8>,
    tenant: &str,
    id: u64,
    expires_at_ms: Option<u64>,
    device: &str,
    payload: &[u8],
) -> Result<(), StoreError> {
    let tenant_len = short_len(tenant.len(), "tenant id", usize::from(u8::MAX))?;
    let device_len = short_len(device.len(), "device id", usize::from(u16::MAX))?;
    let body_len = 1 + 1 + tenant.len() + 8 + 8 + 2 + device.len() + payload.len();
    if body_len > MAX_BODY {
        return Err(StoreError::TooLarge {
            what: "event payload",
            len: payload.len(),
            max: MAX_BODY - (body_len - payload.len()),
        });
    }
    let start = begin(buf, body_len);
    buf.push(KIND_EVENT);
    buf.push(tenant_len as u8);
    buf.extend_from_slice(tenant.as_bytes());
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&expires_at_ms.unwrap_or(NEVER).to_le_bytes());
    buf.extend_from_slice(&(device_len as u16).to_le_bytes());
    buf.extend_from_slice(device.as_bytes());
    buf.extend_from_slice(payload);
    finish(buf, start);
    Ok(())
}

/// Appends one ack record for `ids` (at most [`MAX_ACKS_PER_RECORD`]) of `tenant` to `buf`.
pub(crate) fn encode_acks(buf: &mut Vec<u8>, tenant: &str, ids: &[u64]) -> Result<(), StoreError> {
    let tenant_len = short_len(tenant.len(), "tenant id", usize::from(u8::MAX))?;
    let count = short_len(ids.len(), "ack batch", MAX_ACKS_PER_RECORD)?;
    let body_len = 1 + 1 + tenant.len() + 4 + 8 * ids.len();
    let start = begin(buf, body_len);
    buf.push(KIND_ACKS);
    buf.push(tenant_len as u8);
    buf.extend_from_slice(tenant.as_bytes());
    buf.extend_from_slice(&(count as u32).to_le_bytes());
    for id in ids {
        buf.extend_from_slice(&id.to_le_bytes());
    }
    finish(buf, start);
    Ok(())
}

fn short_len(len: usize, what: &'static str, max: usize) -> Result<usize, StoreError> {
    if len > max {
        return Err(StoreError::TooLarge { what, len, max });
    }
    Ok(len)
}

fn begin(buf: &mut Vec<u8>, body_len: usize) -> usize {
    let start = buf.len();
    buf.reserve(FRAME_HEADER + body_len);
    // The length is known now; the CRC is filled in by `finish` once the body is written.
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    start
}

fn finish(buf: &mut [u8], start: usize) {
    let crc = crc32c::checksum(&buf[start + FRAME_HEADER..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The body length a frame header announces, or why it cannot be a record (all zeros is what a
/// preallocated or torn tail looks like).
pub(crate) fn frame_len(header: &[u8; FRAME_HEADER]) -> Result<usize, &'static str> {
    let len = u32_at(header, 0) as usize;
    if len == 0 {
        return Err("zero-length record");
    }
    if len > MAX_BODY {
        return Err("record length out of range");
    }
    Ok(len)
}

/// One decoded record; slices borrow the body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    Event(EventRecord<'a>),
    Acks { tenant: &'a str, ids: Vec<u64> },
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EventRecord<'a> {
    pub tenant: &'a str,
    pub id: u64,
    pub expires_at_ms: Option<u64>,
    pub device: &'a str,
    /// Where the payload is in the body (so a reader can slice a shared buffer instead of copying).
    pub payload: Range<usize>,
}

/// Decodes a whole record (frame header and body), checking its CRC and every length in it.
pub(crate) fn decode(record: &[u8]) -> Result<Record<'_>, &'static str> {
    let header: &[u8; FRAME_HEADER] = record
        .get(..FRAME_HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or("record shorter than its header")?;
    let len = frame_len(header)?;
    let body = record
        .get(FRAME_HEADER..)
        .filter(|b| b.len() == len)
        .ok_or("record length does not match")?;
    if crc32c::checksum(body) != u32_at(header, 4) {
        return Err("record checksum mismatch");
    }
    let mut r = Reader { buf: body, pos: 0 };
    match r.u8()? {
        KIND_EVENT => {
            let tenant_len = usize::from(r.u8()?);
            let tenant = r.str(tenant_len)?;
            let id = r.u64()?;
            let expires = r.u64()?;
            let device_len = usize::from(r.u16()?);
            let device = r.str(device_len)?;
            Ok(Record::Event(EventRecord {
                tenant,
                id,
                expires_at_ms: (expires != NEVER).then_some(expires),
                device,
                payload: FRAME_HEADER + r.pos..FRAME_HEADER + body.len(),
            }))
        }
        KIND_ACKS => {
            let tenant_len = usize::from(r.u8()?);
            let tenant = r.str(tenant_len)?;
            let count = r.u32()? as usize;
            if body.len() - r.pos != count * 8 {
                return Err("ack record length does not match its count");
            }
            let ids = (0..count).map(|_| r.u64()).collect::<Result<_, _>>()?;
            Ok(Record::Acks { tenant, ids })
        }
        _ => Err("unknown record kind"),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let s = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or("record field runs past its end")?;
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32_at(self.take(4)?, 0))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64_at(self.take(8)?, 0))
    }

    fn str(&mut self, n: usize) -> Result<&'a str, &'static str> {
        std::str::from_utf8(self.take(n)?).map_err(|_| "record string is not UTF-8")
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
