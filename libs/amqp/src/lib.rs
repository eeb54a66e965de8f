//! Sans-IO AMQP 1.0 codec: protocol headers, frames, SASL frames, and messages handled as bytes.
//!
//! Two engines speak AMQP through it and nothing else: the router's server-side connection engine, which
//! drives its own connection/session/link state rather than fe2o3-amqp's acceptor (that cannot meet the
//! Hono contract: default link names, credit, drain, `rejected`; see docs/architecture.md, "Router
//! internals"), and the adapters' client-side downstream connection, which writes a device message's
//! transfer frame from pre-encoded parts (docs/adapters.md).
//! Performatives and SASL bodies are decoded with `fe2o3-amqp-types` through `serde_amqp`; messages are not:
//! [`parse_message`] only records where each section lies, and [`rewrite_message`] copies every section it
//! does not change, so what a producer sent reaches the consumer byte for byte (ids, timestamps, encodings).
//!
//! Nothing here performs I/O or keeps state between calls: [`decode_frame`] answers "incomplete" with
//! `Ok(None)` and the caller reads more bytes. No input makes it panic, and no input makes the decoder
//! recurse deeper than [`MAX_NESTING`].

mod message;
pub mod put;
mod value;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, BytesMut};
use fe2o3_amqp_types::definitions::{AmqpError, ConnectionError, ErrorCondition};
use fe2o3_amqp_types::performatives::{Performative, Transfer};
use fe2o3_amqp_types::sasl::{SaslChallenge, SaslInit, SaslMechanisms, SaslOutcome, SaslResponse};
use serde_amqp::serde::Serialize;

pub use message::{
    build_message, parse_message, rewrite_message, MessageBody, MessageEdit, MessageParts,
    MessageView, PropertyField, SectionKind,
};
pub use value::{encoded_len, encoded_len_shallow, MAX_NESTING};

/// Protocol header that opens a plain AMQP 1.0.0 connection (protocol id 0).
pub const AMQP_HEADER: &[u8; 8] = b"AMQP\x00\x01\x00\x00";
/// Protocol header that opens the TLS security layer (protocol id 2).
pub const TLS_HEADER: &[u8; 8] = b"AMQP\x02\x01\x00\x00";
/// Protocol header that opens the SASL security layer (protocol id 3).
pub const SASL_HEADER: &[u8; 8] = b"AMQP\x03\x01\x00\x00";

/// The smallest max-frame-size a peer may announce (AMQP 1.0 part 2, §2.7.1); frames up to this size are
/// always acceptable, so it is also the limit before Open has been exchanged.
pub const MIN_MAX_FRAME_SIZE: u32 = 512;

/// Size of the fixed frame header (size, data offset, type, channel) that every frame starts with.
const FRAME_HEADER_LEN: usize = 8;
const FRAME_TYPE_AMQP: u8 = 0x00;
const FRAME_TYPE_SASL: u8 = 0x01;

/// Which layer a protocol header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolId {
    /// Plain AMQP ([`AMQP_HEADER`]).
    Amqp,
    /// TLS negotiated inside AMQP ([`TLS_HEADER`]); the router terminates TLS before AMQP instead.
    Tls,
    /// SASL authentication ([`SASL_HEADER`]).
    Sasl,
}

impl ProtocolId {
    /// The 8-byte header that announces this protocol; the server echoes it to accept.
    pub fn header(self) -> &'static [u8; 8] {
        match self {
            Self::Amqp => AMQP_HEADER,
            Self::Tls => TLS_HEADER,
            Self::Sasl => SASL_HEADER,
        }
    }
}

/// Everything that can be wrong with bytes read from, or values written to, the wire.
///
/// [`CodecError::condition`] maps each variant to the AMQP error condition the connection is closed with.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer did not send a supported protocol header (shown zero-padded if it sent fewer than 8 bytes).
    /// The spec's answer is to write the header the router does support, then close the socket.
    #[error("unsupported protocol header {0:02x?}")]
    ProtocolHeader([u8; 8]),
    /// A frame announced a size above the limit the router advertised.
    #[error("frame of {size} bytes exceeds max-frame-size {max}")]
    FrameTooLarge {
        /// Size from the frame header.
        size: u32,
        /// The limit that was in force.
        max: u32,
    },
    /// A frame announced a size smaller than its own 8-byte header.
    #[error("frame size {0} is smaller than the 8-byte frame header")]
    FrameTooSmall(u32),
    /// The data offset is below 2 or points past the end of the frame.
    #[error("data offset {doff} is invalid for a frame of {size} bytes")]
    BadDataOffset {
        /// Data offset in 4-byte words, from the frame header.
        doff: u8,
        /// Size from the frame header.
        size: u32,
    },
    /// The frame type is neither AMQP (0) nor SASL (1).
    #[error("unknown frame type {0:#04x}")]
    UnknownFrameType(u8),
    /// The body of an AMQP frame is not a well-formed performative.
    #[error("malformed performative: {0}")]
    MalformedPerformative(Cow<'static, str>),
    /// The body of a SASL frame is not a well-formed SASL frame body.
    #[error("malformed SASL frame: {0}")]
    MalformedSasl(Cow<'static, str>),
    /// Bytes given to [`encoded_len`] are not a well-formed AMQP value.
    #[error("malformed AMQP value: {0}")]
    MalformedValue(Cow<'static, str>),
    /// A transfer payload is not a well-formed message, or a section asked for does not decode.
    #[error("malformed message: {0}")]
    MalformedMessage(Cow<'static, str>),
    /// A value could not be encoded (for example a frame beyond 4 GiB, or a performative that leaves no room
    /// for payload within max-frame-size).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why it failed.
        reason: Cow<'static, str>,
    },
}

impl CodecError {
    /// The condition to close the connection with (or, for a message, to reject the delivery with).
    pub fn condition(&self) -> ErrorCondition {
        match self {
            Self::ProtocolHeader(_)
            | Self::FrameTooLarge { .. }
            | Self::FrameTooSmall(_)
            | Self::BadDataOffset { .. }
            | Self::UnknownFrameType(_) => {
                ErrorCondition::ConnectionError(ConnectionError::FramingError)
            }
            Self::MalformedPerformative(_)
            | Self::MalformedSasl(_)
            | Self::MalformedValue(_)
            | Self::MalformedMessage(_) => ErrorCondition::AmqpError(AmqpError::DecodeError),
            Self::Encode { .. } => ErrorCondition::AmqpError(AmqpError::InternalError),
        }
    }
}

fn serde_reason(error: serde_amqp::Error) -> Cow<'static, str> {
    Cow::Owned(error.to_string())
}

/// Reads the protocol header at the start of `buf`.
///
/// `Ok(None)` while fewer than 8 bytes have arrived and they still agree with `AMQP`; an error as soon as
/// they cannot be an AMQP 1.0.0 header (so an HTTP request or a TLS ClientHello is refused at once). The
/// header is always 8 bytes long; the caller consumes them on success.
pub fn parse_protocol_header(buf: &[u8]) -> Result<Option<ProtocolId>, CodecError> {
    let received = || {
        let mut header = [0u8; 8];
        let n = buf.len().min(8);
        header[..n].copy_from_slice(&buf[..n]);
        CodecError::ProtocolHeader(header)
    };
    let prefix = buf.len().min(4);
    if buf[..prefix] != b"AMQP"[..prefix] {
        return Err(received());
    }
    let [_, _, _, _, id, major, minor, revision, ..] = *buf else {
        return Ok(None);
    };
    if (major, minor, revision) != (1, 0, 0) {
        return Err(received());
    }
    match id {
        0 => Ok(Some(ProtocolId::Amqp)),
        2 => Ok(Some(ProtocolId::Tls)),
        3 => Ok(Some(ProtocolId::Sasl)),
        _ => Err(received()),
    }
}

/// One decoded frame.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "Amqp is the variant of nearly every frame; boxing it would allocate per frame to shrink SASL's"
)]
pub enum Frame<'a> {
    /// An AMQP frame (type 0).
    Amqp {
        /// Channel from the frame header.
        channel: u16,
        /// The performative; `None` for an empty frame, which only keeps the connection alive.
        performative: Option<Performative>,
        /// Bytes after the performative: a Transfer's message fragment, empty for every other performative.
        payload: &'a [u8],
    },
    /// A SASL frame (type 1); its channel is ignored, as the spec requires.
    Sasl(SaslFrame),
}

/// The body of a SASL frame (AMQP 1.0 part 5, §5.3.3).
///
/// `Debug` never prints the initial response or response data: for PLAIN they hold the password.
#[derive(Clone)]
pub enum SaslFrame {
    /// Server → client: the mechanisms on offer.
    Mechanisms(SaslMechanisms),
    /// Client → server: the chosen mechanism and its initial response.
    Init(SaslInit),
    /// Server → client: a challenge for multi-step mechanisms.
    Challenge(SaslChallenge),
    /// Client → server: the answer to a challenge.
    Response(SaslResponse),
    /// Server → client: the result of authentication.
    Outcome(SaslOutcome),
}

/// Stands in for secret bytes in `Debug` output, showing only their length.
struct Redacted(Option<usize>);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(len) => write!(f, "<{len} bytes redacted>"),
            None => f.write_str("None"),
        }
    }
}

impl fmt::Debug for SaslFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mechanisms(m) => f
                .debug_tuple("Mechanisms")
                .field(&m.sasl_server_mechanisms)
                .finish(),
            Self::Init(init) => f
                .debug_struct("Init")
                .field("mechanism", &init.mechanism)
                .field(
                    "initial_response",
                    &Redacted(init.initial_response.as_ref().map(|r| r.len())),
                )
                .field("hostname", &init.hostname)
                .finish(),
            Self::Challenge(c) => f
                .debug_tuple("Challenge")
                .field(&Redacted(Some(c.challenge.len())))
                .finish(),
            Self::Response(r) => f
                .debug_tuple("Response")
                .field(&Redacted(Some(r.response.len())))
                .finish(),
            Self::Outcome(o) => f
                .debug_struct("Outcome")
                .field("code", &o.code)
                .field(
                    "additional_data",
                    &Redacted(o.additional_data.as_ref().map(|d| d.len())),
                )
                .finish(),
        }
    }
}

/// Decodes the frame at the start of `buf`.
///
/// Returns the frame and the number of bytes it occupied, or `Ok(None)` if the frame is not complete yet.
/// `max_frame_size` is the limit the router announced (use [`MIN_MAX_FRAME_SIZE`] before Open); a frame
/// header announcing more is refused as soon as its first 4 bytes are in, before the body is buffered. The
/// rest of the header is checked once 8 bytes are in, so garbage fails fast.
pub fn decode_frame(
    buf: &[u8],
    max_frame_size: u32,
) -> Result<Option<(Frame<'_>, usize)>, CodecError> {
    let [s0, s1, s2, s3, ..] = *buf else {
        return Ok(None);
    };
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    if size < FRAME_HEADER_LEN as u32 {
        return Err(CodecError::FrameTooSmall(size));
    }
    if size > max_frame_size {
        return Err(CodecError::FrameTooLarge {
            size,
            max: max_frame_size,
        });
    }
    let [_, _, _, _, doff, frame_type, c0, c1, ..] = *buf else {
        return Ok(None);
    };
    let body_start = usize::from(doff) * 4;
    if doff < 2 || body_start as u64 > u64::from(size) {
        return Err(CodecError::BadDataOffset { doff, size });
    }
    if frame_type != FRAME_TYPE_AMQP && frame_type != FRAME_TYPE_SASL {
        return Err(CodecError::UnknownFrameType(frame_type));
    }
    let Ok(size) = usize::try_from(size) else {
        return Err(CodecError::FrameTooLarge {
            size,
            max: max_frame_size,
        });
    };
    // Bytes between the 8-byte header and the data offset are an extended header; none is defined, skip it.
    let Some(body) = buf.get(body_start..size) else {
        return Ok(None);
    };
    let frame = if frame_type == FRAME_TYPE_AMQP {
        let channel = u16::from_be_bytes([c0, c1]);
        if body.is_empty() {
            Frame::Amqp {
                channel,
                performative: None,
                payload: &[],
            }
        } else {
            let (performative, payload) = decode_performative(body)?;
            Frame::Amqp {
                channel,
                performative: Some(performative),
                payload,
            }
        }
    } else {
        Frame::Sasl(decode_sasl(body)?)
    };
    Ok(Some((frame, size)))
}

/// Splits an AMQP frame body into its performative and the payload after it.
fn decode_performative(body: &[u8]) -> Result<(Performative, &[u8]), CodecError> {
    if body.first() != Some(&value::DESCRIBED) {
        return Err(CodecError::MalformedPerformative(
            "frame body is not a described type".into(),
        ));
    }
    // The performative's own length tells where a Transfer's payload begins; walking it deeply first also
    // keeps hostile nesting away from serde_amqp.
    let len = value::value_len(body, true, 0).map_err(CodecError::MalformedPerformative)?;
    let (encoded, payload) = body.split_at(len);
    let performative: Performative = serde_amqp::from_slice(encoded)
        .map_err(|e| CodecError::MalformedPerformative(serde_reason(e)))?;
    if !payload.is_empty() && !matches!(performative, Performative::Transfer(_)) {
        return Err(CodecError::MalformedPerformative(
            "bytes after a performative that carries no payload".into(),
        ));
    }
    Ok((performative, payload))
}

fn decode_sasl(body: &[u8]) -> Result<SaslFrame, CodecError> {
    let malformed = CodecError::MalformedSasl;
    let len = value::value_len(body, true, 0).map_err(malformed)?;
    if len != body.len() {
        return Err(malformed("bytes after the SASL frame body".into()));
    }
    let descriptor = match body {
        [value::DESCRIBED, rest @ ..] => value::descriptor_code(rest).map_err(malformed)?.0,
        _ => return Err(malformed("frame body is not a described type".into())),
    };
    let de = |e| malformed(serde_reason(e));
    Ok(match descriptor {
        Some(0x40) => SaslFrame::Mechanisms(serde_amqp::from_slice(body).map_err(de)?),
        Some(0x41) => SaslFrame::Init(serde_amqp::from_slice(body).map_err(de)?),
        Some(0x42) => SaslFrame::Challenge(serde_amqp::from_slice(body).map_err(de)?),
        Some(0x43) => SaslFrame::Response(serde_amqp::from_slice(body).map_err(de)?),
        Some(0x44) => SaslFrame::Outcome(serde_amqp::from_slice(body).map_err(de)?),
        _ => return Err(malformed("descriptor is not a SASL frame body".into())),
    })
}

/// Appends an AMQP frame carrying `performative` and, for a Transfer, `payload`.
///
/// The caller keeps frames within the peer's max-frame-size; [`encode_transfer`] does so for messages. On
/// error `out` is left as it was.
pub fn encode_frame(
    channel: u16,
    performative: &Performative,
    payload: &[u8],
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    write_frame(
        FRAME_TYPE_AMQP,
        channel,
        performative,
        payload,
        out,
        "performative",
    )
}

/// Appends a SASL frame. On error `out` is left as it was.
pub fn encode_sasl(frame: &SaslFrame, out: &mut BytesMut) -> Result<(), CodecError> {
    match frame {
        SaslFrame::Mechanisms(m) => write_frame(FRAME_TYPE_SASL, 0, m, &[], out, "sasl-mechanisms"),
        SaslFrame::Init(i) => write_frame(FRAME_TYPE_SASL, 0, i, &[], out, "sasl-init"),
        SaslFrame::Challenge(c) => write_frame(FRAME_TYPE_SASL, 0, c, &[], out, "sasl-challenge"),
        SaslFrame::Response(r) => write_frame(FRAME_TYPE_SASL, 0, r, &[], out, "sasl-response"),
        SaslFrame::Outcome(o) => write_frame(FRAME_TYPE_SASL, 0, o, &[], out, "sasl-outcome"),
    }
}

/// Appends an empty AMQP frame, which the peer counts as traffic for its idle timeout.
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.extend_from_slice(&[0, 0, 0, 8, 2, FRAME_TYPE_AMQP, 0, 0]);
}

/// Appends a whole delivery as one transfer frame, its performative written by hand: `handle`,
/// `delivery_id`, the id's four bytes as the tag, message format 0 and `settled`, the way fe2o3 would
/// encode the same [`Transfer`], without building one (the per-message path of the router's consumers and
/// the adapter's link). `head` is scratch space for the performative, kept by the caller between calls.
/// Returns `false`, with nothing written, when the frame would exceed `max_frame_size`: the caller then
/// splits the message with [`encode_transfer`].
#[allow(clippy::too_many_arguments)]
pub fn encode_single_transfer(
    channel: u16,
    handle: u32,
    delivery_id: u32,
    settled: bool,
    message: &[u8],
    max_frame_size: u32,
    head: &mut Vec<u8>,
    out: &mut BytesMut,
) -> bool {
    head.clear();
    head.extend_from_slice(&[0, 0, 0, 0, 2, FRAME_TYPE_AMQP]);
    head.extend_from_slice(&channel.to_be_bytes());
    put::descriptor(head, 0x14);
    let list = put::begin(head, false);
    put::uint(head, handle);
    put::uint(head, delivery_id);
    put::binary(head, &delivery_id.to_be_bytes());
    put::uint(head, 0);
    put::bool(head, settled);
    put::finish(head, list, 5);
    let max = usize::try_from(max_frame_size.max(MIN_MAX_FRAME_SIZE)).unwrap_or(usize::MAX);
    let size = head.len() + message.len();
    let Ok(size32) = u32::try_from(size) else {
        return false;
    };
    if size > max {
        return false;
    }
    head[..4].copy_from_slice(&size32.to_be_bytes());
    out.reserve(size);
    out.extend_from_slice(head);
    out.extend_from_slice(message);
    true
}

/// Appends one or more Transfer frames carrying `payload`, none larger than `max_frame_size`.
///
/// `max_frame_size` is the peer's limit; values below [`MIN_MAX_FRAME_SIZE`] are raised to it. The first
/// frame is `transfer` itself; when the payload does not fit, it is sent with `more = true` and followed by
/// continuation frames that name only the handle (and repeat `batchable`), all with `more = true` except the
/// last, which takes `transfer.more`. On error `out` is left as it was.
pub fn encode_transfer(
    channel: u16,
    transfer: &Transfer,
    payload: &[u8],
    max_frame_size: u32,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    let max = usize::try_from(max_frame_size.max(MIN_MAX_FRAME_SIZE)).unwrap_or(usize::MAX);
    let start = out.len();
    // Encode the performative alone first, so a payload that does not fit is never copied in vain.
    write_frame(FRAME_TYPE_AMQP, channel, transfer, &[], out, "transfer")?;
    if out.len() - start + payload.len() <= max {
        out.extend_from_slice(payload);
        return patch_frame_size(out, start).inspect_err(|_| out.truncate(start));
    }
    out.truncate(start);

    let mut first = transfer.clone();
    first.more = true;
    let continuation = Transfer {
        handle: transfer.handle.clone(),
        delivery_id: None,
        delivery_tag: None,
        message_format: None,
        settled: None,
        more: true,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: transfer.batchable,
    };
    let mut rest = payload;
    let mut frame = &first;
    loop {
        let frame_start = out.len();
        if let Err(e) = write_frame(FRAME_TYPE_AMQP, channel, frame, &[], out, "transfer") {
            out.truncate(start);
            return Err(e);
        }
        let room = max.saturating_sub(out.len() - frame_start);
        if room == 0 {
            out.truncate(start);
            return Err(CodecError::Encode {
                what: "transfer",
                reason: "performative leaves no room for payload within max-frame-size".into(),
            });
        }
        if rest.len() <= room {
            // Last fragment: re-encode the performative with the caller's `more` (never longer than with
            // `more = true`, since a false flag may be trimmed as a trailing default).
            out.truncate(frame_start);
            let mut last = frame.clone();
            last.more = transfer.more;
            if let Err(e) = write_frame(FRAME_TYPE_AMQP, channel, &last, rest, out, "transfer") {
                out.truncate(start);
                return Err(e);
            }
            return Ok(());
        }
        let (chunk, remaining) = rest.split_at(room);
        out.extend_from_slice(chunk);
        patch_frame_size(out, frame_start).inspect_err(|_| out.truncate(start))?;
        rest = remaining;
        frame = &continuation;
    }
}

/// How many complete frames an encoded stretch holds (a split transfer is several), for a session's
/// transfer counters. Stops at the first incomplete or malformed frame header.
pub fn count_frames(mut buf: &[u8]) -> u32 {
    let mut n = 0;
    while let [a, b, c, d, ..] = *buf {
        let size = u32::from_be_bytes([a, b, c, d]) as usize;
        if size < FRAME_HEADER_LEN || size > buf.len() {
            break;
        }
        buf = &buf[size..];
        n += 1;
    }
    n
}

/// Writes a complete frame: header, serialized `body`, `payload`. Leaves `out` unchanged on error.
fn write_frame<T: Serialize>(
    frame_type: u8,
    channel: u16,
    body: &T,
    payload: &[u8],
    out: &mut BytesMut,
    what: &'static str,
) -> Result<(), CodecError> {
    let start = out.len();
    out.reserve(FRAME_HEADER_LEN + 64 + payload.len());
    out.put_u32(0); // size, patched below once known
    out.put_u8(2); // data offset: no extended header
    out.put_u8(frame_type);
    out.put_u16(channel);
    let mut serializer = serde_amqp::ser::Serializer::new((&mut *out).writer());
    if let Err(e) = body.serialize(&mut serializer) {
        out.truncate(start);
        return Err(CodecError::Encode {
            what,
            reason: serde_reason(e),
        });
    }
    out.extend_from_slice(payload);
    patch_frame_size(out, start).inspect_err(|_| out.truncate(start))
}

fn patch_frame_size(out: &mut BytesMut, start: usize) -> Result<(), CodecError> {
    let size = u32::try_from(out.len() - start).map_err(|_| CodecError::Encode {
        what: "frame",
        reason: "frame larger than 4 GiB".into(),
    })?;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}
