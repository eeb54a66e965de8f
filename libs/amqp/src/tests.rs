//! Codec tests: round trips against fe2o3-amqp-types' own encoding, malformed and hostile input, message
//! pass-through, and a deterministic fuzz-style property test over arbitrary bytes.

#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use fe2o3_amqp_types::definitions::{
    AmqpError, ConnectionError, Error, ErrorCondition, Handle, LinkError, ReceiverSettleMode, Role,
    SenderSettleMode,
};
use fe2o3_amqp_types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp_types::messaging::{
    Accepted, AmqpValue, ApplicationProperties, Body, Data, DeliveryAnnotations, DeliveryState,
    Footer, Header, Message, MessageAnnotations, MessageId, Properties, Rejected, Source, Target,
    TargetArchetype,
};
use fe2o3_amqp_types::performatives::{
    Attach, Begin, ChannelMax, Close, Detach, Disposition, End, Flow, MaxFrameSize, Open,
    Performative, Transfer,
};
use fe2o3_amqp_types::primitives::{
    Array, Binary, Dec128, Dec32, Dec64, OrderedMap, SimpleValue, Symbol, Timestamp, Uuid, Value,
};
use fe2o3_amqp_types::sasl::{
    SaslChallenge, SaslCode, SaslInit, SaslMechanisms, SaslOutcome, SaslResponse,
};
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;

use super::*;

// ---------------------------------------------------------------------------------------------------------
// helpers

fn encoded(f: impl FnOnce(&mut BytesMut) -> Result<(), CodecError>) -> BytesMut {
    let mut out = BytesMut::new();
    f(&mut out).unwrap();
    out
}

/// Decodes a buffer that must hold exactly one complete frame.
fn decode_whole(buf: &[u8]) -> Frame<'_> {
    let (frame, consumed) = decode_frame(buf, u32::MAX)
        .unwrap()
        .expect("a complete frame");
    assert_eq!(consumed, buf.len());
    frame
}

fn fields(pairs: &[(&str, Value)]) -> OrderedMap<Symbol, Value> {
    let mut map = OrderedMap::new();
    for (k, v) in pairs {
        map.insert(Symbol::from(*k), v.clone());
    }
    map
}

fn transfer(handle: u32, delivery_id: u32, tag: &[u8]) -> Transfer {
    Transfer {
        handle: Handle(handle),
        delivery_id: Some(delivery_id),
        delivery_tag: Some(Binary::from(tag.to_vec())),
        message_format: Some(0),
        settled: Some(false),
        more: false,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    }
}

fn performatives() -> Vec<Performative> {
    let open = Open {
        container_id: "ferry-router-0".into(),
        hostname: Some("hono.example".into()),
        max_frame_size: MaxFrameSize(65_536),
        channel_max: ChannelMax(255),
        idle_time_out: Some(30_000),
        outgoing_locales: Some(Array::from(vec![Symbol::from("en-US")])),
        incoming_locales: None,
        offered_capabilities: Some(Array::from(vec![Symbol::from("ANONYMOUS-RELAY")])),
        desired_capabilities: None,
        properties: Some(fields(&[
            ("product", Value::String("ferry".into())),
            ("version", Value::String("0.1.0".into())),
            (
                "nested",
                Value::List(vec![Value::Int(1), Value::Map(OrderedMap::new())]),
            ),
        ])),
    };
    let begin = Begin {
        remote_channel: Some(3),
        next_outgoing_id: 1,
        incoming_window: 2048,
        outgoing_window: 2048,
        handle_max: Handle(1023),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    let attach = Attach {
        name: "client-telemetry/DEFAULT_TENANT".into(),
        handle: Handle(0),
        role: Role::Receiver,
        snd_settle_mode: SenderSettleMode::Unsettled,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(
            Source::builder()
                .address("telemetry/DEFAULT_TENANT")
                .build(),
        )),
        target: Some(Box::new(TargetArchetype::Target(
            Target::builder().address("client").build(),
        ))),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: Some(0),
        max_message_size: Some(2048),
        offered_capabilities: None,
        desired_capabilities: Some(Array::from(vec![Symbol::from("x-opt-jms-dest")])),
        properties: Some(fields(&[("subscription-name", Value::String("s1".into()))])),
    };
    let flow = Flow {
        next_incoming_id: Some(7),
        incoming_window: 2048,
        next_outgoing_id: 9,
        outgoing_window: u32::MAX,
        handle: Some(Handle(0)),
        delivery_count: Some(12),
        link_credit: Some(100),
        available: Some(0),
        drain: true,
        echo: false,
        properties: None,
    };
    let mut settled_transfer = transfer(0, 42, &[0, 0, 0, 42]);
    settled_transfer.settled = Some(true);
    settled_transfer.state = Some(DeliveryState::Accepted(Accepted {}));
    let disposition = Disposition {
        role: Role::Receiver,
        first: 40,
        last: Some(42),
        settled: true,
        state: Some(DeliveryState::Rejected(Rejected {
            error: Some(Error::new(
                AmqpError::PreconditionFailed,
                Some("device non-existent/disabled".to_string()),
                None,
            )),
        })),
        batchable: false,
    };
    let detach = Detach {
        handle: Handle(4),
        closed: true,
        error: Some(Error::new(
            ErrorCondition::Custom(Symbol::from("hono:unsupported-delivery-mode")),
            Some("telemetry needs rcv-settle-mode first".to_string()),
            None,
        )),
    };
    let end = End { error: None };
    let close = Close {
        error: Some(Error::new(
            ConnectionError::FramingError,
            Some("bad frame".to_string()),
            None,
        )),
    };
    vec![
        Performative::Open(open),
        Performative::Begin(begin),
        Performative::Attach(attach),
        Performative::Flow(flow),
        Performative::Transfer(transfer(1, 0, b"tag-1")),
        Performative::Transfer(settled_transfer),
        Performative::Disposition(disposition),
        Performative::Detach(detach),
        Performative::End(end),
        Performative::Close(close),
        Performative::Detach(Detach {
            handle: Handle(1),
            closed: false,
            error: Some(LinkError::DetachForced.into()),
        }),
    ]
}

fn sasl_frames() -> Vec<SaslFrame> {
    vec![
        SaslFrame::Mechanisms(SaslMechanisms {
            sasl_server_mechanisms: Array::from(vec![
                Symbol::from("PLAIN"),
                Symbol::from("ANONYMOUS"),
            ]),
        }),
        SaslFrame::Init(SaslInit {
            mechanism: Symbol::from("PLAIN"),
            initial_response: Some(Binary::from(b"\0consumer@HONO\0verysecret".to_vec())),
            hostname: Some("hono.example".into()),
        }),
        SaslFrame::Challenge(SaslChallenge {
            challenge: Binary::from(b"nonce".to_vec()),
        }),
        SaslFrame::Response(SaslResponse {
            response: Binary::from(b"verysecret".to_vec()),
        }),
        SaslFrame::Outcome(SaslOutcome {
            code: SaslCode::Ok,
            additional_data: None,
        }),
        SaslFrame::Outcome(SaslOutcome {
            code: SaslCode::Auth,
            additional_data: Some(Binary::from(vec![1, 2])),
        }),
    ]
}

/// SASL types have no `PartialEq`; compare what each carries.
fn assert_sasl_eq(a: &SaslFrame, b: &SaslFrame) {
    match (a, b) {
        (SaslFrame::Mechanisms(a), SaslFrame::Mechanisms(b)) => {
            assert_eq!(a.sasl_server_mechanisms, b.sasl_server_mechanisms);
        }
        (SaslFrame::Init(a), SaslFrame::Init(b)) => {
            assert_eq!(a.mechanism, b.mechanism);
            assert_eq!(a.initial_response, b.initial_response);
            assert_eq!(a.hostname, b.hostname);
        }
        (SaslFrame::Challenge(a), SaslFrame::Challenge(b)) => assert_eq!(a.challenge, b.challenge),
        (SaslFrame::Response(a), SaslFrame::Response(b)) => assert_eq!(a.response, b.response),
        (SaslFrame::Outcome(a), SaslFrame::Outcome(b)) => {
            assert_eq!(a.code, b.code);
            assert_eq!(a.additional_data, b.additional_data);
        }
        _ => panic!("different SASL frames: {a:?} vs {b:?}"),
    }
}

fn full_message() -> Message<Data> {
    Message {
        header: Some(Header {
            durable: true,
            ttl: Some(60_000),
            delivery_count: 2,
            ..Header::default()
        }),
        delivery_annotations: Some(
            DeliveryAnnotations::builder()
                .insert("x-opt-hop", Value::Int(1))
                .build(),
        ),
        message_annotations: Some(
            MessageAnnotations::builder()
                .insert("x-opt-retain", Value::Bool(true))
                .insert("x-opt-partition", Value::Long(-3))
                .build(),
        ),
        properties: Some(
            Properties::builder()
                .message_id(MessageId::String("msg-1".into()))
                .to("telemetry/DEFAULT_TENANT")
                .subject("temperature")
                .reply_to("command_response/DEFAULT_TENANT/r1")
                .correlation_id(MessageId::Ulong(77))
                .content_type("application/json")
                .creation_time(Timestamp::from_milliseconds(1_700_000_000_000))
                .build(),
        ),
        application_properties: Some(
            ApplicationProperties::builder()
                .insert("device_id", "4711")
                .insert(
                    "reg_assertion",
                    "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiI0NzExIn0.c2ln",
                )
                .insert("ttd", SimpleValue::Int(-1))
                .insert("orig_adapter", "hono-mqtt")
                .build(),
        ),
        body: Data(Binary::from(br#"{"temp":21.5}"#.to_vec())),
        footer: Some(
            Footer::builder()
                .insert("x-opt-checksum", Value::Uint(123))
                .build(),
        ),
    }
}

fn to_bytes<B: fe2o3_amqp_types::messaging::SerializableBody>(message: &Message<B>) -> Vec<u8> {
    serde_amqp::to_vec(&Serializable(message)).unwrap()
}

fn from_bytes(bytes: &[u8]) -> Message<Body<Value>> {
    serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(bytes)
        .unwrap()
        .0
}

// ---------------------------------------------------------------------------------------------------------
// protocol headers

#[test]
fn protocol_headers_are_recognised() {
    assert_eq!(
        parse_protocol_header(AMQP_HEADER).unwrap(),
        Some(ProtocolId::Amqp)
    );
    assert_eq!(
        parse_protocol_header(SASL_HEADER).unwrap(),
        Some(ProtocolId::Sasl)
    );
    assert_eq!(
        parse_protocol_header(TLS_HEADER).unwrap(),
        Some(ProtocolId::Tls)
    );
    assert_eq!(ProtocolId::Sasl.header(), SASL_HEADER);
    // Bytes after the header belong to the next layer and do not matter.
    assert_eq!(
        parse_protocol_header(b"AMQP\x00\x01\x00\x00\x00\x00\x00\x10").unwrap(),
        Some(ProtocolId::Amqp)
    );
}

#[test]
fn incomplete_protocol_header_waits_for_more() {
    for n in 0..8 {
        assert_eq!(
            parse_protocol_header(&SASL_HEADER[..n]).unwrap(),
            None,
            "{n} bytes"
        );
    }
}

#[test]
fn foreign_protocol_headers_are_refused() {
    assert!(matches!(
        parse_protocol_header(b"GET / HTTP/1.1\r\n"),
        Err(CodecError::ProtocolHeader(_))
    ));
    // A TLS ClientHello is refused from its first byte, without waiting for 8.
    assert!(matches!(
        parse_protocol_header(&[0x16]),
        Err(CodecError::ProtocolHeader(_))
    ));
    assert!(parse_protocol_header(b"AMQX").is_err());
    assert!(
        parse_protocol_header(b"AMQP\x00\x01\x00\x01").is_err(),
        "revision 1"
    );
    assert!(
        parse_protocol_header(b"AMQP\x00\x00\x09\x01").is_err(),
        "0-9-1"
    );
    assert!(
        parse_protocol_header(b"AMQP\x01\x01\x00\x00").is_err(),
        "protocol id 1"
    );
    match parse_protocol_header(b"AMQP\x04\x01\x00\x00") {
        Err(CodecError::ProtocolHeader(received)) => assert_eq!(&received, b"AMQP\x04\x01\x00\x00"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// frames

#[test]
fn every_performative_round_trips() {
    for (i, performative) in performatives().into_iter().enumerate() {
        let channel = u16::try_from(i).unwrap() * 1000;
        let payload: &[u8] = if matches!(performative, Performative::Transfer(_)) {
            b"\x00\x53\x75\xa0\x02hi"
        } else {
            b""
        };
        let bytes = encoded(|out| encode_frame(channel, &performative, payload, out));
        assert_eq!(&bytes[4..6], &[2, 0], "doff 2, type AMQP");
        match decode_whole(&bytes) {
            Frame::Amqp {
                channel: c,
                performative: Some(p),
                payload: got,
            } => {
                assert_eq!(c, channel);
                assert_eq!(p, performative);
                assert_eq!(got, payload);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn every_sasl_frame_round_trips() {
    for frame in sasl_frames() {
        let bytes = encoded(|out| encode_sasl(&frame, out));
        assert_eq!(&bytes[4..8], &[2, 1, 0, 0], "doff 2, type SASL, channel 0");
        match decode_whole(&bytes) {
            Frame::Sasl(decoded) => assert_sasl_eq(&decoded, &frame),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn sasl_debug_output_hides_credentials() {
    for frame in sasl_frames() {
        let shown = format!("{frame:?}");
        assert!(!shown.contains("115, 101, 99, 114, 101, 116"), "{shown}"); // "secret" as bytes
        assert!(!shown.contains("secret"), "{shown}");
    }
    let shown = format!("{:?}", Frame::Sasl(sasl_frames().swap_remove(1)));
    let len = b"\0consumer@HONO\0verysecret".len();
    assert!(
        shown.contains("PLAIN") && shown.contains(&format!("<{len} bytes redacted>")),
        "{shown}"
    );
}

#[test]
fn sasl_frames_with_symbolic_descriptors_decode() {
    // sasl-outcome with the descriptor spelled as a symbol, as some clients do.
    let name = b"amqp:sasl-outcome:list";
    let mut body = vec![0x00, 0xa3, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[0xc0, 0x03, 0x01, 0x50, 0x00]);
    let frame = raw_frame(2, 1, 0, &[], &body);
    match decode_whole(&frame) {
        Frame::Sasl(SaslFrame::Outcome(o)) => assert_eq!(o.code, SaslCode::Ok),
        other => panic!("{other:?}"),
    }
}

#[test]
fn heartbeat_is_an_empty_frame() {
    let bytes = encoded(|out| {
        encode_heartbeat(out);
        Ok(())
    });
    assert_eq!(&bytes[..], &[0, 0, 0, 8, 2, 0, 0, 0]);
    assert!(matches!(
        decode_whole(&bytes),
        Frame::Amqp {
            channel: 0,
            performative: None,
            payload: &[]
        }
    ));
}

/// Builds a frame by hand: `doff` words of header (extended header filled from `ext`), then `body`.
fn raw_frame(doff: u8, frame_type: u8, channel: u16, ext: &[u8], body: &[u8]) -> Vec<u8> {
    let size = u32::try_from(usize::from(doff) * 4 + body.len()).unwrap();
    let mut frame = size.to_be_bytes().to_vec();
    frame.extend_from_slice(&[doff, frame_type]);
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(ext);
    frame.resize(usize::from(doff) * 4, 0);
    frame.extend_from_slice(body);
    frame
}

#[test]
fn extended_header_is_skipped() {
    let performative = Performative::Transfer(transfer(2, 5, b"t"));
    let body = serde_amqp::to_vec(&performative).unwrap();
    let mut with_payload = body.clone();
    with_payload.extend_from_slice(b"payload");
    let frame = raw_frame(4, 0, 9, b"EXTENDEDHDR!", &with_payload);
    match decode_whole(&frame) {
        Frame::Amqp {
            channel: 9,
            performative: Some(p),
            payload,
        } => {
            assert_eq!(p, performative);
            assert_eq!(payload, b"payload");
        }
        other => panic!("{other:?}"),
    }
    // An empty frame with an extended header is still a heartbeat.
    assert!(matches!(
        decode_whole(&raw_frame(3, 0, 0, b"xxxx", &[])),
        Frame::Amqp {
            performative: None,
            ..
        }
    ));
}

#[test]
fn symbolic_performative_descriptor_decodes() {
    let name = b"amqp:end:list";
    let mut body = vec![0x00, 0xa3, name.len() as u8];
    body.extend_from_slice(name);
    body.push(0x45);
    match decode_whole(&raw_frame(2, 0, 1, &[], &body)) {
        Frame::Amqp {
            performative: Some(Performative::End(End { error: None })),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
}

/// Reassembles the Transfer frames in `bytes`: (frames, payload), checking each frame's limit.
fn reassemble(bytes: &[u8], max: usize) -> (Vec<Transfer>, Vec<u8>) {
    let mut rest = bytes;
    let mut frames = Vec::new();
    let mut payload = Vec::new();
    while !rest.is_empty() {
        let (frame, n) = decode_frame(rest, u32::MAX).unwrap().unwrap();
        assert!(n <= max, "frame of {n} bytes exceeds {max}");
        match frame {
            Frame::Amqp {
                channel: 3,
                performative: Some(Performative::Transfer(t)),
                payload: p,
            } => {
                payload.extend_from_slice(p);
                frames.push(t);
            }
            other => panic!("{other:?}"),
        }
        rest = &rest[n..];
    }
    (frames, payload)
}

#[test]
fn large_payload_is_split_over_transfers_and_reassembles() {
    let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let first = transfer(6, 99, b"delivery-99");
    let bytes = encoded(|out| encode_transfer(3, &first, &payload, 512, out));
    let (frames, reassembled) = reassemble(&bytes, 512);
    assert_eq!(reassembled, payload);
    assert!(frames.len() >= 10, "{} frames", frames.len());
    let (last, init) = frames.split_last().unwrap();
    assert!(init.iter().all(|t| t.more), "all but the last carry more");
    assert!(!last.more);
    assert_eq!(frames[0].delivery_id, Some(99));
    assert_eq!(
        frames[0].delivery_tag.as_deref().map(Vec::as_slice),
        Some(&b"delivery-99"[..])
    );
    assert_eq!(frames[0].message_format, Some(0));
    assert_eq!(frames[0].settled, Some(false));
    for t in &frames[1..] {
        assert_eq!(t.handle, Handle(6));
        assert_eq!(
            (t.delivery_id, t.delivery_tag.as_ref(), t.settled),
            (None, None, None)
        );
    }
}

#[test]
fn split_respects_every_boundary_and_the_512_minimum() {
    let first = transfer(1, 1, b"t");
    for max in [0u32, 100, 512, 777, 4096] {
        let limit = max.max(512) as usize;
        for len in (0..2 * limit + 50).step_by(13).chain(limit - 40..limit + 5) {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let bytes = encoded(|out| encode_transfer(3, &first, &payload, max, out));
            let (frames, reassembled) = reassemble(&bytes, limit);
            assert_eq!(reassembled, payload, "max {max} len {len}");
            assert!(!frames.last().unwrap().more);
            // Every frame but the last is filled to the limit, so no needless extra frames.
            let mut rest = &bytes[..];
            for _ in 1..frames.len() {
                let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                assert_eq!(n, limit);
                rest = &rest[n..];
            }
        }
    }
}

#[test]
fn callers_more_flag_is_kept_on_the_last_fragment() {
    let mut first = transfer(1, 1, b"t");
    first.more = true;
    let bytes = encoded(|out| encode_transfer(3, &first, &[7; 2000], 512, out));
    let (frames, payload) = reassemble(&bytes, 512);
    assert_eq!(payload, vec![7; 2000]);
    assert!(frames.iter().all(|t| t.more));
    let bytes = encoded(|out| encode_transfer(3, &first, b"small", 512, out));
    let (frames, _) = reassemble(&bytes, 512);
    assert_eq!(frames.len(), 1);
    assert!(frames[0].more);
}

#[test]
fn frames_fed_one_byte_at_a_time_decode_only_when_complete() {
    let mut stream = BytesMut::new();
    let mut expected = Vec::new();
    for p in performatives() {
        let payload: &[u8] = if matches!(p, Performative::Transfer(_)) {
            b"fragment"
        } else {
            b""
        };
        encode_frame(1, &p, payload, &mut stream).unwrap();
        expected.push(Some(p));
        encode_heartbeat(&mut stream);
        expected.push(None);
    }
    let mut buf = Vec::new();
    let mut decoded = Vec::new();
    for &byte in stream.iter() {
        buf.push(byte);
        match decode_frame(&buf, 65_536).unwrap() {
            None => {}
            Some((Frame::Amqp { performative, .. }, n)) => {
                assert_eq!(n, buf.len(), "complete exactly at its last byte");
                decoded.push(performative);
                buf.clear();
            }
            Some((other, _)) => panic!("{other:?}"),
        }
    }
    assert!(buf.is_empty());
    assert_eq!(decoded, expected);
}

#[test]
fn oversized_frame_is_refused_from_its_size_field() {
    let bytes = encoded(|out| encode_frame(0, &performatives()[0], &[], out));
    let size = bytes.len() as u32;
    // Only the size field has arrived: the decision needs nothing more.
    assert!(matches!(
        decode_frame(&bytes[..4], size - 1),
        Err(CodecError::FrameTooLarge { size: s, max }) if s == size && max == size - 1
    ));
    assert!(decode_frame(&bytes, size).unwrap().is_some());
    let e = decode_frame(&[0xff, 0xff, 0xff, 0xff], 512).unwrap_err();
    assert_eq!(
        e.condition(),
        ErrorCondition::ConnectionError(ConnectionError::FramingError)
    );
}

#[test]
fn malformed_frame_headers_are_refused() {
    for size in 0..8u32 {
        let mut frame = size.to_be_bytes().to_vec();
        frame.extend_from_slice(&[2, 0, 0, 0]);
        assert!(
            matches!(decode_frame(&frame, 512), Err(CodecError::FrameTooSmall(s)) if s == size)
        );
    }
    for doff in [0u8, 1] {
        assert!(matches!(
            decode_frame(&[0, 0, 0, 8, doff, 0, 0, 0], 512),
            Err(CodecError::BadDataOffset { doff: d, size: 8 }) if d == doff
        ));
    }
    // doff 3 means a 12-byte header, which does not fit in an 8-byte frame.
    assert!(matches!(
        decode_frame(&[0, 0, 0, 8, 3, 0, 0, 0], 512),
        Err(CodecError::BadDataOffset { .. })
    ));
    assert!(matches!(
        decode_frame(&[0, 0, 0, 8, 2, 7, 0, 0], 512),
        Err(CodecError::UnknownFrameType(7))
    ));
    // Header errors surface as soon as the header is in, before the body.
    assert!(matches!(
        decode_frame(&[0, 0, 1, 0, 2, 9, 0, 0], 512),
        Err(CodecError::UnknownFrameType(9))
    ));
}

fn assert_malformed_performative(body: &[u8]) {
    let frame = raw_frame(2, 0, 0, &[], body);
    match decode_frame(&frame, u32::MAX) {
        Err(e @ CodecError::MalformedPerformative(_)) => {
            assert_eq!(
                e.condition(),
                ErrorCondition::AmqpError(AmqpError::DecodeError)
            );
        }
        other => panic!("body {body:02x?}: {other:?}"),
    }
}

#[test]
fn malformed_performatives_are_refused() {
    let end = serde_amqp::to_vec(&Performative::End(End { error: None })).unwrap();
    let open = serde_amqp::to_vec(&performatives()[0]).unwrap();
    // Truncated at every length: the list's size field then points past the frame.
    for n in 1..open.len() {
        assert_malformed_performative(&open[..n]);
    }
    // A described type with a section's descriptor (header) instead of a performative's.
    assert_malformed_performative(&[0x00, 0x53, 0x70, 0x45]);
    // A SASL body in an AMQP frame.
    assert_malformed_performative(
        &serde_amqp::to_vec(&SaslOutcome {
            code: SaslCode::Ok,
            additional_data: None,
        })
        .unwrap(),
    );
    // Not a described type at all, or garbage.
    assert_malformed_performative(&[0x45]);
    assert_malformed_performative(&[0xff; 16]);
    assert_malformed_performative(&[0x00, 0x53, 0x10, 0xc0, 0x03, 0x01, 0xa1, 0x05]);
    // Payload bytes after a performative that carries none.
    let mut trailing = end.clone();
    trailing.push(0x40);
    assert_malformed_performative(&trailing);
    // A list whose element count disagrees with its size.
    assert_malformed_performative(&[0x00, 0x53, 0x17, 0xc0, 0x01, 0x05]);
}

#[test]
fn malformed_sasl_frames_are_refused() {
    let refuse = |body: &[u8]| match decode_frame(&raw_frame(2, 1, 0, &[], body), u32::MAX) {
        Err(CodecError::MalformedSasl(_)) => {}
        other => panic!("body {body:02x?}: {other:?}"),
    };
    refuse(&[]);
    refuse(&serde_amqp::to_vec(&Performative::End(End { error: None })).unwrap());
    refuse(&[0x00, 0x53, 0x44, 0x45]); // outcome without its mandatory code
    let mut trailing = serde_amqp::to_vec(&SaslOutcome {
        code: SaslCode::Ok,
        additional_data: None,
    })
    .unwrap();
    trailing.push(0x40);
    refuse(&trailing);
}

/// `depth` list32s each holding the next, around a list0: built front to back, since the sizes are known.
fn nested_lists(depth: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + 9 * depth);
    for level in (1..=depth).rev() {
        bytes.push(0xd0);
        bytes.extend_from_slice(&u32::try_from(9 * level - 4).unwrap().to_be_bytes());
        bytes.extend_from_slice(&1u32.to_be_bytes());
    }
    bytes.push(0x45);
    bytes
}

/// An Open performative whose `properties` map holds `nested_lists(depth)` under key `k`.
fn open_with_nested_property(depth: usize) -> Vec<u8> {
    let mut map = vec![0, 0, 0, 2, 0xa3, 1, b'k'];
    map.extend_from_slice(&nested_lists(depth));
    let mut items = vec![0, 0, 0, 10, 0xa1, 1, b'c'];
    items.extend_from_slice(&[0x40; 8]);
    items.push(0xd1);
    items.extend_from_slice(&u32::try_from(map.len()).unwrap().to_be_bytes());
    items.extend_from_slice(&map);
    let mut body = vec![0x00, 0x53, 0x10, 0xd0];
    body.extend_from_slice(&u32::try_from(items.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&items);
    body
}

#[test]
fn hostile_nesting_in_a_performative_is_refused_without_recursing() {
    match decode_whole(&raw_frame(2, 0, 0, &[], &open_with_nested_property(3))) {
        Frame::Amqp {
            performative: Some(Performative::Open(open)),
            ..
        } => {
            assert_eq!(open.container_id, "c");
            assert_eq!(open.properties.unwrap().len(), 1);
        }
        other => panic!("{other:?}"),
    }
    // Ten thousand levels would overflow a recursive decoder's stack; the walk refuses it first.
    assert_malformed_performative(&open_with_nested_property(10_000));
}

// ---------------------------------------------------------------------------------------------------------
// encoded_len

fn sample_values() -> Vec<Value> {
    let text = |n: usize| "x".repeat(n);
    let bytes = |n: usize| Binary::from(vec![0xab; n]);
    let described = |descriptor, value| Value::Described(Box::new(Described { descriptor, value }));
    let mut map = OrderedMap::new();
    map.insert(Value::String("a".into()), Value::Int(1));
    map.insert(
        Value::Symbol(Symbol::from("b")),
        Value::List(vec![Value::Null, Value::Bool(false)]),
    );
    let mut big_map = OrderedMap::new();
    for i in 0..200 {
        big_map.insert(Value::Uint(i), Value::String(text(3)));
    }
    let mut values = vec![
        Value::Null,
        Value::Bool(true),
        Value::Bool(false),
        Value::Ubyte(7),
        Value::Ushort(700),
        Value::Uint(0),
        Value::Uint(200),
        Value::Uint(70_000),
        Value::Ulong(0),
        Value::Ulong(200),
        Value::Ulong(1 << 40),
        Value::Byte(-7),
        Value::Short(-700),
        Value::Int(-7),
        Value::Int(-70_000),
        Value::Long(-7),
        Value::Long(-(1 << 40)),
        Value::from(1.5f32),
        Value::from(-2.25f64),
        Value::Decimal32(Dec32::from([1, 2, 3, 4])),
        Value::Decimal64(Dec64::from([1; 8])),
        Value::Decimal128(Dec128::from([2; 16])),
        Value::Char('€'),
        Value::Timestamp(Timestamp::from_milliseconds(1_700_000_000_000)),
        Value::Uuid(Uuid::from([9; 16])),
        Value::List(vec![]),
        Value::List(vec![
            Value::Int(1),
            Value::List(vec![Value::List(vec![Value::String("deep".into())])]),
        ]),
        Value::List((0..300).map(Value::Uint).collect()),
        Value::Map(OrderedMap::new()),
        Value::Map(map),
        Value::Map(big_map),
        Value::Array(Array::from(vec![
            Value::Int(1),
            Value::Int(2),
            Value::Int(3),
        ])),
        Value::Array(Array::from(vec![
            Value::Symbol(Symbol::from("a")),
            Value::Symbol(Symbol::from("bc")),
        ])),
        Value::Array(Array::from(vec![Value::Bool(true), Value::Bool(false)])),
        Value::Array(Array::from((0..100).map(Value::Long).collect::<Vec<_>>())),
        Value::Array(Array::from(vec![
            Value::String(text(300)),
            Value::String(text(1)),
        ])),
        described(Descriptor::Code(0x77), Value::String("value".into())),
        described(
            Descriptor::Name(Symbol::from("com.example:thing")),
            Value::List(vec![Value::Ulong(1)]),
        ),
        described(
            Descriptor::Code(0x70),
            described(Descriptor::Code(1), Value::Null),
        ),
    ];
    for n in [0, 1, 254, 255, 256, 70_000] {
        values.push(Value::Binary(bytes(n)));
        values.push(Value::String(text(n)));
        values.push(Value::Symbol(Symbol::from(text(n))));
    }
    values
}

#[test]
fn encoded_len_matches_serde_amqp_for_every_sample() {
    let mut constructors = std::collections::BTreeSet::new();
    for value in sample_values() {
        let mut bytes = serde_amqp::to_vec(&value).unwrap();
        let len = bytes.len();
        constructors.insert(bytes[0]);
        bytes.extend_from_slice(&[0xde, 0xad]); // what follows must not be counted
        assert_eq!(encoded_len(&bytes).unwrap(), len, "{value:?}");
        assert_eq!(encoded_len_shallow(&bytes).unwrap(), len, "{value:?}");
        // Any truncation is detected, by both walks.
        for cut in [0, 1, len / 2, len - 1]
            .into_iter()
            .filter(|cut| *cut < len)
        {
            assert!(
                encoded_len(&bytes[..cut]).is_err(),
                "{value:?} cut at {cut}"
            );
            assert!(
                encoded_len_shallow(&bytes[..cut]).is_err(),
                "{value:?} cut at {cut}"
            );
        }
    }
    // Both widths of every variable-width and compound encoding were exercised.
    for code in [
        0xa0, 0xb0, 0xa1, 0xb1, 0xa3, 0xb3, 0xc0, 0xd0, 0xc1, 0xd1, 0xe0, 0xf0, 0x00,
    ] {
        assert!(
            constructors.contains(&code),
            "constructor {code:#04x} not covered: {constructors:02x?}"
        );
    }
}

#[test]
fn encoded_len_covers_every_fixed_width_constructor() {
    let widths: &[(std::ops::RangeInclusive<u8>, usize)] = &[
        (0x40..=0x45, 0),
        (0x50..=0x56, 1),
        (0x60..=0x61, 2),
        (0x70..=0x74, 4),
        (0x80..=0x84, 8),
        (0x94..=0x94, 16),
        (0x98..=0x98, 16),
    ];
    for (codes, width) in widths {
        for code in codes.clone() {
            let mut bytes = vec![code];
            bytes.resize(1 + width + 3, 0xee);
            assert_eq!(encoded_len(&bytes).unwrap(), 1 + width, "{code:#04x}");
            assert!(encoded_len(&bytes[..*width]).is_err() || *width == 0);
        }
    }
    for code in [
        0x46, 0x57, 0x62, 0x75, 0x85, 0x90, 0x95, 0x99, 0xa2, 0xb2, 0xc2, 0xe1, 0xff,
    ] {
        assert!(
            encoded_len(&[code, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err(),
            "{code:#04x}"
        );
    }
}

#[test]
fn encoded_len_handles_hand_built_arrays_and_compounds() {
    // array8 of three uint0 (zero-width elements).
    assert_eq!(encoded_len(&[0xe0, 0x02, 0x03, 0x43]).unwrap(), 4);
    // array8 of described elements: descriptor once in the constructor, then bare list0 values.
    assert_eq!(
        encoded_len(&[0xe0, 0x05, 0x02, 0x00, 0x53, 0x01, 0x45]).unwrap(),
        7
    );
    // array32 of two sym8.
    assert_eq!(
        encoded_len(&[0xf0, 0, 0, 0, 9, 0, 0, 0, 2, 0xa3, 1, b'a', 1, b'b']).unwrap(),
        14
    );
    // array of arrays (each inner one without its constructor's array code repeated).
    assert_eq!(
        encoded_len(&[0xe0, 0x0a, 0x02, 0xe0, 0x03, 0x01, 0x50, 0x07, 0x03, 0x01, 0x50, 0x08])
            .unwrap(),
        12
    );
    // Element counts that do not fill the declared size.
    assert!(encoded_len(&[0xe0, 0x03, 0x03, 0x50, 0x01]).is_err());
    assert!(encoded_len(&[0xc0, 0x03, 0x01, 0x40, 0x40]).is_err());
    assert!(encoded_len(&[0xc0, 0x02, 0x02, 0x40]).is_err());
    assert!(encoded_len(&[0xc1, 0x02, 0x01, 0x40]).is_err(), "odd map");
    assert!(
        encoded_len(&[0xc0, 0x00]).is_err(),
        "size smaller than its count"
    );
    // A shallow walk trusts sizes, the deep one does not.
    assert_eq!(
        encoded_len_shallow(&[0xc0, 0x03, 0x01, 0x40, 0x40]).unwrap(),
        5
    );
    // A huge count with zero-width elements is arithmetic, not a loop.
    assert_eq!(
        encoded_len(&[0xf0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x40]).unwrap(),
        10
    );
}

#[test]
fn nesting_is_bounded() {
    assert_eq!(encoded_len(&nested_lists(20)).unwrap(), 1 + 9 * 20);
    assert!(encoded_len(&nested_lists(MAX_NESTING as usize - 1)).is_ok());
    assert!(encoded_len(&nested_lists(MAX_NESTING as usize + 1)).is_err());
    // The shallow walk does not descend, so depth does not matter to it.
    assert_eq!(
        encoded_len_shallow(&nested_lists(10_000)).unwrap(),
        1 + 9 * 10_000
    );
    // Described chains are bounded in both walks.
    let mut chain = vec![0x00; 100_000];
    chain.push(0x40);
    assert!(encoded_len(&chain).is_err());
    assert!(encoded_len_shallow(&chain).is_err());
}

// ---------------------------------------------------------------------------------------------------------
// messages

#[test]
fn parse_message_finds_every_section_of_a_fe2o3_message() {
    let message = full_message();
    let raw = to_bytes(&message);
    let view = parse_message(&raw).unwrap();

    // Sections lie back to back and each re-serializes to exactly its bytes.
    let mut expected_sections = vec![
        (
            SectionKind::Header,
            serde_amqp::to_vec(message.header.as_ref().unwrap()).unwrap(),
        ),
        (
            SectionKind::DeliveryAnnotations,
            serde_amqp::to_vec(message.delivery_annotations.as_ref().unwrap()).unwrap(),
        ),
        (
            SectionKind::MessageAnnotations,
            serde_amqp::to_vec(message.message_annotations.as_ref().unwrap()).unwrap(),
        ),
        (
            SectionKind::Properties,
            serde_amqp::to_vec(message.properties.as_ref().unwrap()).unwrap(),
        ),
        (
            SectionKind::ApplicationProperties,
            serde_amqp::to_vec(message.application_properties.as_ref().unwrap()).unwrap(),
        ),
        (
            SectionKind::Body,
            serde_amqp::to_vec(&message.body).unwrap(),
        ),
        (
            SectionKind::Footer,
            serde_amqp::to_vec(message.footer.as_ref().unwrap()).unwrap(),
        ),
    ];
    let concatenated: Vec<u8> = expected_sections
        .iter()
        .flat_map(|(_, b)| b.clone())
        .collect();
    assert_eq!(concatenated, raw);
    for (kind, bytes) in expected_sections.drain(..) {
        assert_eq!(view.section(kind).unwrap(), &bytes[..], "{kind:?}");
    }

    assert_eq!(view.header(), message.header.as_ref());
    assert_eq!(view.ttl_ms(), Some(60_000));
    assert!(view.durable());
    assert_eq!(view.properties().unwrap(), message.properties);
    assert_eq!(
        view.application_properties().unwrap(),
        message.application_properties
    );
    assert_eq!(
        view.message_annotations().unwrap(),
        message.message_annotations
    );
    assert_eq!(view.app_property_str("device_id"), Some("4711"));
    assert_eq!(view.app_property_str("ttd"), None, "not a string");
    assert_eq!(view.app_property_str("absent"), None);
    assert_eq!(
        view.app_property("ttd").unwrap(),
        Some(SimpleValue::Int(-1))
    );
    assert_eq!(view.app_property("absent").unwrap(), None);
    // One pass finds what one lookup per key finds, in the order asked.
    let keys = ["ttd", "absent", "device_id"];
    assert_eq!(
        view.app_properties_raw(keys),
        keys.map(|k| view.app_property_raw(k))
    );
    assert_eq!(
        view.app_properties_str(["device_id", "ttd"]),
        [Some("4711"), None]
    );
    assert_eq!(view.app_properties_raw([]), []);
    assert_eq!(
        view.property_str(PropertyField::ContentType),
        Some("application/json")
    );
    assert_eq!(
        view.property_str(PropertyField::To),
        Some("telemetry/DEFAULT_TENANT")
    );
    assert_eq!(
        view.property_str(PropertyField::Subject),
        Some("temperature")
    );
    assert_eq!(
        view.property_str(PropertyField::ReplyTo),
        Some("command_response/DEFAULT_TENANT/r1")
    );
    assert_eq!(view.property_str(PropertyField::MessageId), Some("msg-1"));
    assert_eq!(
        view.property_str(PropertyField::CorrelationId),
        None,
        "a ulong id"
    );
    assert_eq!(
        view.property_str(PropertyField::GroupId),
        None,
        "beyond the encoded fields"
    );
    assert_eq!(view.body(), MessageBody::Data { sections: 1 });
    assert_eq!(view.single_data(), Some(&br#"{"temp":21.5}"#[..]));
    assert_eq!(view.raw(), &raw[..]);
}

#[test]
fn message_bodies_of_every_shape_are_recognised() {
    let value = to_bytes(&Message::builder().value(Value::Int(5)).build());
    let view = parse_message(&value).unwrap();
    assert_eq!(view.body(), MessageBody::Value);
    assert_eq!(view.single_data(), None);
    assert_eq!(view.header(), None);
    assert_eq!(view.ttl_ms(), None);
    assert!(!view.durable());

    let data = to_bytes(
        &Message::builder()
            .data_batch(vec![Data::from(vec![1; 300]), Data::from(vec![2])])
            .build(),
    );
    let view = parse_message(&data).unwrap();
    assert_eq!(view.body(), MessageBody::Data { sections: 2 });
    assert_eq!(view.single_data(), None, "two sections");
    assert_eq!(view.section(SectionKind::Body).unwrap(), &data[..]);

    let big = to_bytes(&Message::builder().data(vec![3; 70_000]).build());
    assert_eq!(
        parse_message(&big).unwrap().single_data().unwrap(),
        &[3; 70_000][..]
    );

    let sequence = to_bytes(
        &Message::builder()
            .sequence_batch(vec![vec![Value::Int(1)], vec![Value::Int(2)]])
            .build(),
    );
    assert_eq!(
        parse_message(&sequence).unwrap().body(),
        MessageBody::Sequence { sections: 2 }
    );

    let view = parse_message(&[]).unwrap();
    assert_eq!(view.body(), MessageBody::None);
    assert_eq!(view.properties().unwrap(), None);
    assert_eq!(view.app_property_str("device_id"), None);
    assert_eq!(view.app_properties_raw(["device_id"]), [None]);
}

#[test]
fn symbolic_and_ulong_section_descriptors_are_accepted() {
    let mut raw = vec![0x00, 0xa3, 16];
    raw.extend_from_slice(b"amqp:header:list");
    raw.extend_from_slice(&[0xc0, 0x02, 0x01, 0x41]); // durable = true
    raw.extend_from_slice(&[
        0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x74, 0xc1, 0x05, 0x02, 0xa1, 0x01, b'k', 0x43,
    ]);
    let name = b"amqp:data:binary";
    raw.extend_from_slice(&[0x00, 0xa3, name.len() as u8]);
    raw.extend_from_slice(name);
    raw.extend_from_slice(&[0xa0, 0x03, b'a', b'b', b'c']);
    let view = parse_message(&raw).unwrap();
    assert!(view.durable());
    assert_eq!(view.app_property("k").unwrap(), Some(SimpleValue::Uint(0)));
    assert_eq!(view.single_data(), Some(&b"abc"[..]));
    let decoded = from_bytes(&raw);
    assert!(decoded.header.unwrap().durable);
}

#[test]
fn malformed_messages_are_refused() {
    let raw = to_bytes(&full_message());
    let header = serde_amqp::to_vec(&Header::default()).unwrap();
    let properties = serde_amqp::to_vec(&Properties::default()).unwrap();
    let data = serde_amqp::to_vec(&Data::from(vec![1])).unwrap();
    let value = serde_amqp::to_vec(&AmqpValue(Value::Null)).unwrap();
    let refuse = |bytes: &[u8], why: &str| match parse_message(bytes) {
        Err(e @ CodecError::MalformedMessage(_)) => {
            assert_eq!(
                e.condition(),
                ErrorCondition::AmqpError(AmqpError::DecodeError)
            );
        }
        other => panic!("{why}: {other:?}"),
    };
    // A prefix parses exactly when it ends on a section boundary.
    let view = parse_message(&raw).unwrap();
    let boundaries: Vec<usize> = [
        SectionKind::Header,
        SectionKind::DeliveryAnnotations,
        SectionKind::MessageAnnotations,
        SectionKind::Properties,
        SectionKind::ApplicationProperties,
        SectionKind::Body,
    ]
    .iter()
    .scan(0, |end, kind| {
        *end += view.section(*kind).unwrap().len();
        Some(*end)
    })
    .collect();
    for cut in 1..raw.len() {
        assert_eq!(
            parse_message(&raw[..cut]).is_ok(),
            boundaries.contains(&cut),
            "cut at {cut}"
        );
    }
    refuse(&raw[..raw.len() - 1], "truncated footer");
    refuse(
        &[properties.clone(), header.clone(), data.clone()].concat(),
        "header after properties",
    );
    refuse(
        &[header.clone(), header.clone(), data.clone()].concat(),
        "two headers",
    );
    refuse(
        &[data.clone(), value.clone()].concat(),
        "data then amqp-value",
    );
    refuse(&[value.clone(), value.clone()].concat(), "two amqp-values");
    refuse(
        &[data.clone(), properties.clone()].concat(),
        "properties after the body",
    );
    refuse(&[0x00, 0x53, 0x79, 0x40], "unknown descriptor");
    refuse(&[0x00, 0x53, 0x10, 0x45], "a performative's descriptor");
    refuse(&[0x40], "not described");
    refuse(
        &[0x00, 0x53, 0x75, 0xa1, 0x01, b'x'],
        "data holding a string",
    );
    refuse(
        &[0x00, 0x53, 0x74, 0xc0, 0x01, 0x00],
        "application-properties holding a list",
    );
    refuse(
        &[0x00, 0x53, 0x70, 0xc0, 0x02, 0x01, 0xa1],
        "header with a bad field",
    );
    // A header whose fields have the wrong types decodes eagerly, so it is refused here.
    refuse(
        &[0x00, 0x53, 0x70, 0xc0, 0x03, 0x01, 0xa1, 0x00],
        "durable as a string",
    );
}

#[test]
fn sections_are_decoded_only_when_asked() {
    // Application properties with a value nested too deeply to decode: parsing succeeds (the section is only
    // measured), decoding it is refused, and the body is still readable.
    let nested = nested_lists(MAX_NESTING as usize + 5);
    let mut raw = vec![0x00, 0x53, 0x74, 0xd1];
    raw.extend_from_slice(&u32::try_from(4 + 3 + nested.len()).unwrap().to_be_bytes());
    raw.extend_from_slice(&[0, 0, 0, 2, 0xa1, 1, b'k']);
    raw.extend_from_slice(&nested);
    raw.extend_from_slice(&[0x00, 0x53, 0x75, 0xa0, 0x00]);
    let view = parse_message(&raw).unwrap();
    assert!(view.application_properties().is_err());
    assert!(view.app_property("k").is_err());
    assert_eq!(view.app_property_raw("k"), Some(&nested[..]));
    assert_eq!(view.single_data(), Some(&b""[..]));
}

fn resource_edit<'e>(strip: &'e [&'e str], annotations: &'e [(&'e str, Value)]) -> MessageEdit<'e> {
    MessageEdit {
        strip_app_properties: strip,
        add_message_annotations: annotations,
        ..MessageEdit::default()
    }
}

#[test]
fn rewrite_strips_the_assertion_adds_the_resource_and_copies_the_rest() {
    let message = full_message();
    let raw = to_bytes(&message);
    let view = parse_message(&raw).unwrap();
    let annotations = [(
        "resource",
        Value::String("telemetry/DEFAULT_TENANT/4711".into()),
    )];
    let mut out = vec![0xaa]; // rewriting appends; what was there stays
    rewrite_message(
        &view,
        &resource_edit(&["reg_assertion"], &annotations),
        &mut out,
    )
    .unwrap();
    assert_eq!(out[0], 0xaa);
    let rewritten = parse_message(&out[1..]).unwrap();

    for kind in [
        SectionKind::Header,
        SectionKind::DeliveryAnnotations,
        SectionKind::Properties,
        SectionKind::Body,
        SectionKind::Footer,
    ] {
        assert_eq!(
            rewritten.section(kind),
            view.section(kind),
            "{kind:?} copied byte for byte"
        );
    }
    assert_eq!(rewritten.app_property_str("reg_assertion"), None);
    assert_eq!(rewritten.app_property_str("device_id"), Some("4711"));
    assert_eq!(
        rewritten.app_property_str("orig_adapter"),
        Some("hono-mqtt")
    );

    let mut expected = from_bytes(&raw);
    expected
        .application_properties
        .as_mut()
        .unwrap()
        .as_inner_mut()
        .shift_remove("reg_assertion");
    expected.message_annotations.as_mut().unwrap().insert(
        "resource".into(),
        Value::String("telemetry/DEFAULT_TENANT/4711".into()),
    );
    assert_eq!(from_bytes(&out[1..]), expected);
}

#[test]
fn rewrite_creates_annotations_and_replaces_existing_keys() {
    let raw = to_bytes(
        &Message::builder()
            .properties(Properties::default())
            .data(vec![1, 2, 3])
            .build(),
    );
    let view = parse_message(&raw).unwrap();
    let annotations = [
        ("resource", Value::String("event/t/d".into())),
        ("x-opt-retain", Value::Bool(true)),
    ];
    let mut once = Vec::new();
    rewrite_message(&view, &resource_edit(&[], &annotations), &mut once).unwrap();
    let decoded = from_bytes(&once);
    let ma = decoded.message_annotations.unwrap();
    assert_eq!(ma.len(), 2);
    assert_eq!(
        ma.get(&"resource" as &dyn fe2o3_amqp_types::messaging::annotations::AnnotationKey),
        Some(&Value::String("event/t/d".into()))
    );

    // Applying the same edit again replaces rather than duplicates.
    let mut twice = Vec::new();
    let replaced = [("resource", Value::String("event/t/other".into()))];
    rewrite_message(
        &parse_message(&once).unwrap(),
        &resource_edit(&[], &replaced),
        &mut twice,
    )
    .unwrap();
    let ma = from_bytes(&twice).message_annotations.unwrap();
    assert_eq!(ma.len(), 2);
    assert_eq!(
        ma.get(&"resource" as &dyn fe2o3_amqp_types::messaging::annotations::AnnotationKey),
        Some(&Value::String("event/t/other".into()))
    );
    assert_eq!(
        parse_message(&twice).unwrap().single_data(),
        Some(&[1u8, 2, 3][..])
    );
}

#[test]
fn rewrite_switches_to_map32_when_the_map_outgrows_map8() {
    let raw = to_bytes(&Message::builder().data(vec![0]).build());
    let view = parse_message(&raw).unwrap();
    let long = [("resource", Value::String("r".repeat(300)))];
    let mut out = Vec::new();
    rewrite_message(&view, &resource_edit(&[], &long), &mut out).unwrap();
    let rewritten = parse_message(&out).unwrap();
    assert_eq!(
        rewritten.section(SectionKind::MessageAnnotations).unwrap()[3],
        0xd1
    );
    let ma = from_bytes(&out).message_annotations.unwrap();
    assert_eq!(ma.values().next(), Some(&Value::String("r".repeat(300))));
    let short = [("resource", Value::String("r".into()))];
    let mut out = Vec::new();
    rewrite_message(&view, &resource_edit(&[], &short), &mut out).unwrap();
    assert_eq!(
        parse_message(&out)
            .unwrap()
            .section(SectionKind::MessageAnnotations)
            .unwrap()[3],
        0xc1
    );
}

#[test]
fn rewrite_without_changes_is_the_identity() {
    let raw = to_bytes(&full_message());
    let view = parse_message(&raw).unwrap();
    let mut out = Vec::new();
    rewrite_message(&view, &MessageEdit::default(), &mut out).unwrap();
    assert_eq!(out, raw);
    // Stripping a key that is not there leaves the section exactly as it was.
    out.clear();
    rewrite_message(&view, &resource_edit(&["no-such-key"], &[]), &mut out).unwrap();
    assert_eq!(out, raw);
}

#[test]
fn stripping_every_property_keeps_an_empty_map() {
    let raw = to_bytes(
        &Message::builder()
            .application_properties(
                ApplicationProperties::builder()
                    .insert("reg_assertion", "t")
                    .build(),
            )
            .data(vec![9])
            .build(),
    );
    let mut out = Vec::new();
    rewrite_message(
        &parse_message(&raw).unwrap(),
        &resource_edit(&["reg_assertion"], &[]),
        &mut out,
    )
    .unwrap();
    let rewritten = parse_message(&out).unwrap();
    assert_eq!(
        rewritten.section(SectionKind::ApplicationProperties),
        Some(&[0x00, 0x53, 0x74, 0xc1, 0x01, 0x00][..])
    );
    assert_eq!(
        rewritten.application_properties().unwrap(),
        Some(ApplicationProperties::default())
    );
}

#[test]
fn rewrite_sets_ttl_and_durable_creating_a_header_if_needed() {
    let raw = to_bytes(&Message::builder().data(vec![1]).build());
    let edit = MessageEdit {
        set_ttl_ms: Some(30_000),
        set_durable: Some(true),
        ..MessageEdit::default()
    };
    let mut out = Vec::new();
    rewrite_message(&parse_message(&raw).unwrap(), &edit, &mut out).unwrap();
    let view = parse_message(&out).unwrap();
    assert_eq!((view.ttl_ms(), view.durable()), (Some(30_000), true));

    let raw = to_bytes(&full_message());
    let mut out = Vec::new();
    let edit = MessageEdit {
        set_ttl_ms: Some(5),
        ..MessageEdit::default()
    };
    rewrite_message(&parse_message(&raw).unwrap(), &edit, &mut out).unwrap();
    let header = parse_message(&out).unwrap().header().cloned().unwrap();
    assert_eq!(
        header,
        Header {
            ttl: Some(5),
            ..full_message().header.unwrap()
        }
    );
}

#[test]
fn rewrite_refuses_a_malformed_map_and_leaves_out_untouched() {
    // application-properties whose size is right but whose single entry is missing its value.
    let raw = [
        0x00, 0x53, 0x74, 0xc1, 0x04, 0x02, 0xa1, 0x01, b'k', 0x00, 0x53, 0x75, 0xa0, 0x00,
    ];
    let view = parse_message(&raw).unwrap();
    let mut out = vec![1, 2, 3];
    assert!(rewrite_message(&view, &resource_edit(&["k"], &[]), &mut out).is_err());
    assert_eq!(out, vec![1, 2, 3]);
}

#[test]
fn build_message_produces_a_hono_style_message() {
    let properties = Properties::builder()
        .correlation_id(MessageId::String("cmd-1".into()))
        .content_type("application/json")
        .creation_time(Timestamp::from_milliseconds(1_700_000_000_000))
        .build();
    let application_properties = ApplicationProperties::builder()
        .insert("status", SimpleValue::Int(200))
        .insert("device_id", "4711")
        .insert("tenant_id", "DEFAULT_TENANT")
        .build();
    let header = Header {
        durable: true,
        ..Header::default()
    };
    let annotations = MessageAnnotations::builder()
        .insert("x-opt-retain", Value::Bool(false))
        .build();
    for body in [&b""[..], &b"{}"[..], &[5u8; 300][..]] {
        let mut out = Vec::new();
        let parts = MessageParts {
            header: Some(&header),
            message_annotations: Some(&annotations),
            properties: Some(&properties),
            application_properties: Some(&application_properties),
            data: body,
        };
        build_message(&parts, &mut out).unwrap();
        let view = parse_message(&out).unwrap();
        assert_eq!(view.single_data(), Some(body));
        assert_eq!(
            view.app_property("status").unwrap(),
            Some(SimpleValue::Int(200))
        );
        let decoded = from_bytes(&out);
        assert_eq!(decoded.properties, Some(properties.clone()));
        assert_eq!(
            decoded.application_properties,
            Some(application_properties.clone())
        );
        assert_eq!(decoded.header, Some(header.clone()));
        assert_eq!(
            decoded.body,
            Body::Data(vec![Data::from(body.to_vec())].into())
        );
    }
    let mut out = Vec::new();
    build_message(&MessageParts::default(), &mut out).unwrap();
    assert_eq!(out, [0x00, 0x53, 0x75, 0xa0, 0x00]);
}

// ---------------------------------------------------------------------------------------------------------
// property test: arbitrary and mutated bytes never panic

/// SplitMix64: tiny, deterministic, good enough to spread mutations.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Bytes that change how the decoder reads what follows: constructors, sizes, descriptors.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x02, 0x08, 0x10, 0x14, 0x40, 0x41, 0x45, 0x53, 0x70, 0x72, 0x74, 0x75, 0x77, 0x80,
    0x98, 0xa0, 0xa1, 0xa3, 0xb0, 0xb1, 0xb3, 0xc0, 0xc1, 0xd0, 0xd1, 0xe0, 0xf0, 0x7f, 0xfe, 0xff,
];

fn mutate(rng: &mut Prng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    // Mostly one mutation, sometimes a few: single changes keep more inputs decodable, so the code behind
    // the first check is reached too.
    let mut mutations = 1;
    while mutations < 4 && rng.below(3) == 0 {
        mutations += 1;
    }
    for _ in 0..mutations {
        let at = rng.below(bytes.len() + 1);
        match rng.below(7) {
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            1 if at < bytes.len() => bytes[at] = INTERESTING[rng.below(INTERESTING.len())],
            2 => bytes.truncate(at),
            3 => {
                let n = 1 + rng.below(8);
                let insert = rng.bytes(n);
                bytes.splice(at..at, insert);
            }
            4 if at < bytes.len() => {
                let end = (at + 1 + rng.below(16)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = rng.below(bytes.len() + 1);
                bytes.splice(to..to, copy);
            }
            5 if at + 4 <= bytes.len() => {
                // Rewrite a 4-byte size or count with something plausible or absurd.
                let v: u32 = match rng.below(3) {
                    0 => rng.below(64) as u32,
                    1 => u32::MAX - rng.below(4) as u32,
                    _ => rng.next() as u32,
                };
                bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
            _ => {
                let end = (at + rng.below(8)).min(bytes.len());
                bytes.drain(at..end);
            }
        }
    }
    bytes
}

/// Valid inputs to mutate, each marked as a frame or not.
fn seeds() -> Vec<(bool, Vec<u8>)> {
    let mut seeds = Vec::new();
    for p in performatives() {
        seeds.push((
            true,
            encoded(|out| encode_frame(2, &p, b"\x00\x53\x75\xa0\x01x", out)).to_vec(),
        ));
        seeds.push((true, encoded(|out| encode_frame(2, &p, &[], out)).to_vec()));
    }
    for s in sasl_frames() {
        seeds.push((true, encoded(|out| encode_sasl(&s, out)).to_vec()));
    }
    seeds.push((false, to_bytes(&full_message())));
    seeds.push((
        false,
        to_bytes(
            &Message::builder()
                .value(Value::List(vec![Value::Int(1)]))
                .build(),
        ),
    ));
    seeds.push((
        false,
        to_bytes(
            &Message::builder()
                .sequence_batch(vec![vec![Value::Null]])
                .build(),
        ),
    ));
    for v in sample_values() {
        let bytes = serde_amqp::to_vec(&v).unwrap();
        if bytes.len() < 2000 {
            seeds.push((false, bytes));
        }
    }
    seeds
}

/// What one input reached, so the test can show the mutations explore both sides of each decoder.
#[derive(Debug, Default)]
struct Reached {
    frames: usize,
    frame_errors: usize,
    values: usize,
    messages: usize,
    rewrites: usize,
}

/// Runs one input through every entry point; only panics (and broken invariants) fail.
fn exercise(input: &[u8], reached: &mut Reached) {
    let _ = parse_protocol_header(input);
    for max in [512, u32::MAX] {
        let mut rest = input;
        loop {
            let (frame, n) = match decode_frame(rest, max) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(_) => {
                    reached.frame_errors += 1;
                    break;
                }
            };
            reached.frames += 1;
            assert!(n >= 8 && n <= rest.len());
            let _ = format!("{frame:?}");
            if let Frame::Amqp {
                performative: Some(Performative::Transfer(t)),
                payload,
                ..
            } = &frame
            {
                let mut out = BytesMut::new();
                if encode_transfer(1, t, payload, 512, &mut out).is_ok() {
                    reassemble_any(&out);
                }
            }
            rest = &rest[n..];
        }
    }
    let deep = encoded_len(input);
    let shallow = encoded_len_shallow(input);
    if let Ok(n) = deep {
        reached.values += 1;
        assert!(n <= input.len());
        assert_eq!(
            shallow.as_ref().ok(),
            Some(&n),
            "a value the deep walk accepts has the same shallow length"
        );
        let _ = serde_amqp::from_slice::<Value>(&input[..n]);
    }
    if let Ok(n) = shallow {
        assert!(n <= input.len());
    }
    if let Ok(view) = parse_message(input) {
        reached.messages += 1;
        let _ = (
            view.header(),
            view.ttl_ms(),
            view.durable(),
            view.body(),
            view.single_data(),
        );
        let _ = (
            view.properties(),
            view.application_properties(),
            view.message_annotations(),
        );
        let _ = (
            view.app_property_str("device_id"),
            view.app_property("ttd"),
            view.property_str(PropertyField::To),
        );
        let keys = ["device_id", "reg_assertion", "ttd"];
        assert_eq!(
            view.app_properties_raw(keys),
            keys.map(|k| view.app_property_raw(k)),
            "one pass finds what each lookup finds"
        );
        let annotations = [("resource", Value::String("telemetry/t/d".into()))];
        let edit = MessageEdit {
            strip_app_properties: &["reg_assertion", "device_id"],
            add_message_annotations: &annotations,
            set_app_properties: &[("via", "gw")],
            set_ttl_ms: Some(1000),
            set_durable: None,
        };
        let mut out = Vec::new();
        if rewrite_message(&view, &edit, &mut out).is_ok() {
            reached.rewrites += 1;
            let again = parse_message(&out).expect("a rewritten message parses");
            assert_eq!(again.ttl_ms(), Some(1000));
            assert_eq!(again.app_property_str("reg_assertion"), None);
            assert_eq!(again.single_data(), view.single_data());
        } else {
            assert!(out.is_empty(), "a failed rewrite leaves the output alone");
        }
    }
}

fn reassemble_any(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let (_, n) = decode_frame(rest, 512).unwrap().unwrap();
        rest = &rest[n..];
    }
}

#[test]
fn arbitrary_and_mutated_bytes_never_panic() {
    let seeds = seeds();
    let frames: Vec<_> = seeds
        .iter()
        .filter(|(is_frame, _)| *is_frame)
        .cloned()
        .collect();
    // Longer or different runs without editing the test: CODEC_FUZZ_ITERATIONS / CODEC_FUZZ_SEED.
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let iterations = env("CODEC_FUZZ_ITERATIONS", 20_000);
    let mut rng = Prng(env("CODEC_FUZZ_SEED", 0x5eed_f00d_cafe_0001));
    let mut reached = Reached::default();
    for i in 0..iterations {
        let input = if i % 5 == 0 {
            let len = rng.below(300);
            rng.bytes(len)
        } else {
            // Half the time a frame, so performatives get as much attention as the many value seeds.
            let (is_frame, seed) = if rng.below(2) == 0 {
                &frames[rng.below(frames.len())]
            } else {
                &seeds[rng.below(seeds.len())]
            };
            let mut input = mutate(&mut rng, seed);
            // Most mutations of a frame break its size field first; repairing it half the time lets the
            // mutated performative behind it reach the decoder.
            if *is_frame && input.len() >= 8 && rng.below(2) == 0 {
                let size = u32::try_from(input.len()).unwrap();
                input[..4].copy_from_slice(&size.to_be_bytes());
            }
            input
        };
        exercise(&input, &mut reached);
    }
    // Mutations of valid seeds must keep reaching the decoders' success paths, or the test proves little.
    let scale = |n: usize| n * usize::try_from(iterations).unwrap() / 20_000;
    assert!(reached.frames > scale(2_000), "{reached:?}");
    assert!(reached.frame_errors > scale(2_000), "{reached:?}");
    assert!(reached.values > scale(2_000), "{reached:?}");
    assert!(reached.messages > scale(300), "{reached:?}");
    assert!(reached.rewrites > scale(300), "{reached:?}");
    println!("{reached:?}");
}

#[test]
fn rewrite_sets_an_application_property_replacing_one_of_the_same_name() {
    // The section exists and already has the key (an application's own `via` on a command).
    let mut message = full_message();
    message
        .application_properties
        .get_or_insert_with(ApplicationProperties::default)
        .0
        .insert("via".into(), SimpleValue::String("forged".into()));
    let raw = to_bytes(&message);
    let view = parse_message(&raw).unwrap();
    let edit = MessageEdit {
        set_app_properties: &[("via", "gw-1")],
        ..MessageEdit::default()
    };
    let mut out = Vec::new();
    rewrite_message(&view, &edit, &mut out).unwrap();
    let rewritten = parse_message(&out).unwrap();
    assert_eq!(rewritten.app_property_str("via"), Some("gw-1"));
    assert_eq!(rewritten.app_property_str("device_id"), Some("4711"));
    let props = rewritten.application_properties().unwrap().unwrap();
    assert_eq!(props.0.keys().filter(|k| *k == "via").count(), 1);
    for kind in [
        SectionKind::Header,
        SectionKind::Properties,
        SectionKind::Body,
    ] {
        assert_eq!(
            rewritten.section(kind),
            view.section(kind),
            "{kind:?} copied"
        );
    }

    // No section yet: it is created between properties and body.
    let raw = to_bytes(
        &Message::builder()
            .properties(Properties::builder().subject("on").build())
            .data(vec![1, 2])
            .build(),
    );
    let view = parse_message(&raw).unwrap();
    let mut out = Vec::new();
    rewrite_message(&view, &edit, &mut out).unwrap();
    let rewritten = parse_message(&out).unwrap();
    assert_eq!(rewritten.app_property_str("via"), Some("gw-1"));
    assert_eq!(rewritten.single_data(), Some(&[1u8, 2][..]));
    assert_eq!(
        rewritten.properties().unwrap().unwrap().subject.as_deref(),
        Some("on")
    );
}

/// The hand-written single-frame transfer is byte for byte what fe2o3 encodes for the same Transfer, on
/// any channel, and refuses (writing nothing) a message that does not fit the peer's frame.
#[test]
fn a_single_transfer_is_fe2o3s_encoding_byte_for_byte() {
    let mut head = Vec::new();
    for (channel, handle, id, settled) in [
        (0u16, 0u32, 0u32, true),
        (3, 7, 300, false),
        (255, 70_000, u32::MAX, true),
    ] {
        for message in [&b""[..], b"message", &[7u8; 300][..]] {
            let t = Transfer {
                settled: Some(settled),
                ..transfer(handle, id, &id.to_be_bytes())
            };
            let want = encoded(|o| encode_transfer(channel, &t, message, 65_536, o));
            let mut got = BytesMut::from(&b"before"[..]);
            assert!(encode_single_transfer(
                channel, handle, id, settled, message, 65_536, &mut head, &mut got
            ));
            assert_eq!(&got[..6], b"before");
            assert_eq!(
                &got[6..],
                &want[..],
                "channel {channel} handle {handle} id {id}"
            );
        }
    }
    let mut out = BytesMut::new();
    assert!(!encode_single_transfer(
        0,
        1,
        2,
        true,
        &[0u8; 600],
        512,
        &mut head,
        &mut out
    ));
    assert!(out.is_empty(), "nothing written when it does not fit");
    assert!(encode_single_transfer(
        0,
        1,
        2,
        true,
        &[0u8; 400],
        512,
        &mut head,
        &mut out
    ));
    assert_eq!(count_frames(&out), 1);
}
