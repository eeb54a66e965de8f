use super::*;
use ferry_core::ids::{DeviceId, TenantId};
use ferry_registry_model::{ChangeKind, ChangeOp};

fn parse_all(chunks: &[&[u8]]) -> Vec<StreamEvent> {
    let mut p = ChangeParser::default();
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, |e| out.push(e));
    }
    out
}

#[test]
fn parses_events_split_anywhere() {
    let stream = b"event: hello\ndata: {\"seq\":41}\n\n:keep-alive\n\nevent: change\nid: 42\ndata: {\"seq\":42,\"kind\":\"device\",\"op\":\"updated\",\"tenant\":\"t1\",\"device\":\"d1\"}\n\nevent: reset\r\ndata: {}\r\n\r\n";
    let expected = vec![
        StreamEvent::Hello,
        StreamEvent::Change(Change {
            seq: 42,
            kind: ChangeKind::Device,
            op: Some(ChangeOp::Updated),
            tenant: Some(TenantId::new("t1").expect("id")),
            device: Some(DeviceId::new("d1").expect("id")),
            name: None,
        }),
        StreamEvent::Reset,
    ];
    assert_eq!(parse_all(&[stream]), expected);
    for split in 1..stream.len() {
        let (a, b) = stream.split_at(split);
        assert_eq!(parse_all(&[a, b]), expected, "split at {split}");
    }
}

/// The router used to decode each chunk on its own (`from_utf8_lossy`), so a multi-byte character split
/// between two chunks became two replacement characters.
#[test]
fn utf8_split_between_chunks_survives() {
    let stream = "event: change\ndata: {\"kind\":\"application\",\"op\":\"deleted\",\"name\":\"Zürich-app\"}\n\n";
    let bytes = stream.as_bytes();
    let at = stream.find('ü').expect("ü") + 1; // inside the two-byte sequence
    let events = parse_all(&[&bytes[..at], &bytes[at..]]);
    assert!(
        matches!(&events[..], [StreamEvent::Change(c)] if c.name.as_deref() == Some("Zürich-app")),
        "{events:?}"
    );
}

#[test]
fn unknown_kinds_and_garbage_are_skipped() {
    let stream = b"event: change\ndata: {\"kind\":\"planet\"}\n\nevent: change\ndata: not json\n\nevent: other\ndata: x\n\nevent: change\ndata: {\"kind\":\"tenant\",\"op\":\"deleted\",\"tenant\":\"t9\"}\n\n";
    let events = parse_all(&[stream]);
    assert_eq!(events.len(), 1);
    assert!(matches!(
        &events[0],
        StreamEvent::Change(Change {
            kind: ChangeKind::Tenant,
            op: Some(ChangeOp::Deleted),
            ..
        })
    ));
}

#[test]
fn oversized_lines_and_events_are_bounded() {
    let mut p = ChangeParser::default();
    let mut out = Vec::new();
    p.feed(b"event: change\n", |e| out.push(e));
    let long = vec![b'x'; MAX_LINE * 3];
    p.feed(b"data: ", |e| out.push(e));
    p.feed(&long, |e| out.push(e));
    assert!(p.line.len() <= MAX_LINE);
    p.feed(b"\n", |e| out.push(e));
    // Many short data lines cannot grow the event without bound either.
    for _ in 0..(MAX_LINE / 8) {
        p.feed(b"data: 0123456789\n", |e| out.push(e));
    }
    assert!(p.data.len() < MAX_LINE);
    p.feed(b"\nevent: reset\n\n", |e| out.push(e));
    assert_eq!(out, vec![StreamEvent::Reset]);
}
