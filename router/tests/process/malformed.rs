//! Peers that misbehave on the wire: garbage, oversized and malformed frames, stalled handshakes. Each gets
//! its connection closed (with a Close naming the error once Open has been exchanged) while well-behaved
//! connections on the same router carry on.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::performatives::Performative;
use fe2o3_amqp::Sender;
use ferry_router::codec;

use crate::harness::*;
use crate::support::*;

/// A 16-byte AMQP frame whose body is not a described type.
const JUNK_FRAME: [u8; 16] = [
    0, 0, 0, 16, 2, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04,
];
/// A frame header announcing 2 GiB.
const HUGE_FRAME: [u8; 8] = [0x7f, 0xff, 0xff, 0xff, 2, 0, 0, 0];

/// An adapter and a consumer exchanging settled telemetry until told to stop, counting the messages that
/// went through in `count`; the task fails if one does not arrive within 2 s.
pub async fn keep_exchanging(
    p: &Platform,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU32>,
) -> tokio::task::JoinHandle<()> {
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 50).await;
    let mut adapter = p.adapter().await;
    let mut tx = Sender::builder()
        .name("steady")
        .target("telemetry/t1")
        .sender_settle_mode(SenderSettleMode::Settled)
        .attach(&mut adapter.session)
        .await
        .expect("attach");
    let token = p.assertion("t1", "d1").await;
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let n = count.load(Ordering::Relaxed);
            let body = format!("steady-{n}");
            tx.send(
                Sendable::builder()
                    .message(device_message("d1", Some(&token), body.as_bytes()))
                    .settled(true)
                    .build(),
            )
            .await
            .expect("the steady producer keeps sending");
            let d = recv_within(&mut rx, 2000)
                .await
                .unwrap_or_else(|| panic!("{body} did not arrive within 2 s"));
            assert_eq!(body_bytes(&d), body.as_bytes());
            // Disposing counts the delivery towards the receiver's automatic credit refresh (pre-settled
            // deliveries included); without it the pair would stall after its first 50 messages.
            let _ = rx.accept(&d).await;
            count.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(tx);
        app.close().await;
        adapter.close().await;
    })
}

/// Waits (at most 10 s) until `more` further messages have gone through.
pub async fn wait_for_more(count: &AtomicU32, more: u32) {
    let target = count.load(Ordering::Relaxed) + more;
    for _ in 0..1000 {
        if count.load(Ordering::Relaxed) >= target {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the steady pair stalled at {}",
        count.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_get_an_error_and_other_connections_are_unaffected() {
    let p = Platform::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU32::new(0));
    let steady = keep_exchanging(&p, stop.clone(), count.clone()).await;
    wait_for_more(&count, 3).await;
    let five = Duration::from_secs(5);

    // Not AMQP at all: closed, at most after the header the router speaks.
    let mut raw = Raw::connect(p.amqp).await;
    let _ = raw.send(b"GET / HTTP/1.1\r\nHost: router\r\n\r\n").await;
    let (bytes, end) = raw.rest(five).await;
    assert_eq!(end, End::Closed, "garbage instead of a protocol header");
    assert!(
        bytes.is_empty() || bytes == codec::SASL_HEADER,
        "{bytes:02x?}"
    );

    // The plain AMQP header without SASL: the router answers with the SASL header and closes (§2.2).
    let mut raw = Raw::connect(p.amqp).await;
    let _ = raw.send(codec::AMQP_HEADER).await;
    let (bytes, end) = raw.rest(five).await;
    assert_eq!(end, End::Closed, "AMQP without SASL");
    assert_eq!(bytes, codec::SASL_HEADER);

    // SASL, then a frame header announcing 2 GiB: closed without reading (or buffering) the body.
    let mut raw = Raw::connect(p.amqp).await;
    raw.start_sasl().await;
    let _ = raw.send(&HUGE_FRAME).await;
    let (bytes, end) = raw.rest(five).await;
    assert_eq!(end, End::Closed, "huge SASL frame");
    assert!(bytes.is_empty(), "{bytes:02x?}");

    // SASL, then an AMQP frame instead of sasl-init.
    let mut raw = Raw::connect(p.amqp).await;
    raw.start_sasl().await;
    let _ = raw.send(&JUNK_FRAME).await;
    let (_, end) = raw.rest(five).await;
    assert_eq!(end, End::Closed, "junk instead of sasl-init");

    // Logged in, AMQP header, junk where Open belongs: closed (how: see junk_instead_of_open_is_answered_with_open_and_close).
    let mut raw = Raw::login(p.amqp, "app1", "pw1").await;
    let _ = raw.send(&JUNK_FRAME).await;
    let (frames, end) = raw.frames_until_closed(five).await;
    assert_eq!(end, End::Closed, "junk instead of open: {frames:?}");

    // Logged in and opened, then a junk frame: Close with decode-error, then the socket closes.
    let mut raw = Raw::login(p.amqp, "app1", "pw1").await;
    raw.open().await;
    let _ = raw.send(&JUNK_FRAME).await;
    let (frames, end) = raw.frames_until_closed(five).await;
    assert_eq!(end, End::Closed, "junk after open: {frames:?}");
    assert_eq!(
        close_condition(&frames),
        Some(Some("amqp:decode-error".into())),
        "{frames:?}"
    );

    // Opened, then a frame header announcing 2 GiB: Close with an error, then the socket closes.
    let mut raw = Raw::login(p.amqp, "ferry-adapter", ADAPTER_PASSWORD).await;
    raw.open().await;
    let _ = raw.send(&HUGE_FRAME).await;
    let (frames, end) = raw.frames_until_closed(five).await;
    assert_eq!(end, End::Closed, "huge frame after open: {frames:?}");
    let condition = close_condition(&frames).flatten();
    assert!(
        matches!(
            condition.as_deref(),
            Some("amqp:decode-error" | "amqp:connection:framing-error")
        ),
        "{frames:?}"
    );

    // Opened, then a well-formed performative in a frame whose data offset points past its end.
    let mut raw = Raw::login(p.amqp, "app1", "pw1").await;
    raw.open().await;
    let _ = raw
        .send(&[0, 0, 0, 12, 9, 0, 0, 0, 0, 0x53, 0x10, 0x45])
        .await;
    let (frames, end) = raw.frames_until_closed(five).await;
    assert_eq!(end, End::Closed, "bad data offset: {frames:?}");
    assert!(close_condition(&frames).flatten().is_some(), "{frames:?}");

    // Meanwhile the steady pair kept going, and goes on.
    wait_for_more(&count, 5).await;
    stop.store(true, Ordering::Relaxed);
    steady.await.expect("the steady pair never failed");
    let mut raw = Raw::login(p.amqp, "app1", "pw1").await;
    raw.open().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn junk_instead_of_open_is_answered_with_open_and_close() {
    let p = Platform::start().await;
    let mut raw = Raw::login(p.amqp, "app1", "pw1").await;
    let _ = raw.send(&JUNK_FRAME).await;
    let (frames, end) = raw.frames_until_closed(Duration::from_secs(5)).await;
    assert_eq!(end, End::Closed);
    assert!(
        matches!(frames.first(), Some(Got::Amqp(Some(Performative::Open(_))))),
        "Open first, so that a Close may follow (AMQP 1.0 §2.4.1): {frames:?}"
    );
    assert!(
        matches!(
            close_condition(&frames).flatten().as_deref(),
            Some("amqp:decode-error" | "amqp:connection:framing-error")
        ),
        "{frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frame_above_max_frame_size_is_a_framing_error() {
    let p = Platform::start().await;
    let mut raw = Raw::login(p.amqp, "app1", "pw1").await;
    raw.open().await;
    let _ = raw.send(&HUGE_FRAME).await;
    let (frames, end) = raw.frames_until_closed(Duration::from_secs(5)).await;
    assert_eq!(end, End::Closed);
    assert_eq!(
        close_condition(&frames),
        Some(Some("amqp:connection:framing-error".into())),
        "{frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_never_finishes_sasl_is_dropped() {
    let p = Platform::start().await;
    let started = Instant::now();
    let limit = Duration::from_secs(15);
    // Only the SASL header, then silence.
    let sasl_header_only = async {
        let mut raw = Raw::connect(p.amqp).await;
        raw.start_sasl().await;
        let (bytes, end) = raw.rest(limit).await;
        (bytes, end, started.elapsed())
    };
    // Nothing at all.
    let silent = async {
        let mut raw = Raw::connect(p.amqp).await;
        let (bytes, end) = raw.rest(limit).await;
        (bytes, end, started.elapsed())
    };
    // Half a protocol header.
    let half_header = async {
        let mut raw = Raw::connect(p.amqp).await;
        let _ = raw.send(b"AMQ").await;
        let (bytes, end) = raw.rest(limit).await;
        (bytes, end, started.elapsed())
    };
    let (a, b, c) = tokio::join!(sasl_header_only, silent, half_header);
    for (what, (bytes, end, elapsed)) in
        [("SASL header only", a), ("silent", b), ("half header", c)]
    {
        eprintln!("{what}: closed after {elapsed:?}");
        assert_eq!(end, End::Closed, "{what}: still open after {limit:?}");
        assert!(bytes.is_empty(), "{what}: {bytes:02x?}");
        assert!(
            elapsed >= Duration::from_secs(9),
            "{what}: closed too early ({elapsed:?}), before the handshake timeout"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_never_sends_open_is_dropped() {
    let p = Platform::start().await;
    let (_trigger, router) =
        router_in_process(&p, "router-idle", |c| c.idle_timeout_secs = 1).await;
    let mut raw = Raw::login(router.addr, "app1", "pw1").await;
    let (bytes, end) = raw.rest(Duration::from_secs(13)).await;
    assert_eq!(
        end,
        End::Closed,
        "a logged-in peer silent for 13 s without Open (handshake timeout 10 s, idle timeout 2 × 1 s)"
    );
    let _ = bytes;
}
