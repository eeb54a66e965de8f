//! Logged-in peers that try to make the router hold a runtime thread or memory for everyone (issue 15).
//! Each attack runs beside a steady producer/consumer pair, which must keep exchanging messages.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::types::definitions::SenderSettleMode as Settle;
use fe2o3_amqp::types::definitions::{Handle, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Source, Target, TargetArchetype};
use fe2o3_amqp::types::performatives::{
    Attach, Begin, Disposition, Flow, Open, Performative, Transfer,
};
use fe2o3_amqp::types::primitives::Binary;
use ferry_router::codec;

use crate::harness::*;
use crate::malformed::{keep_exchanging, wait_for_more};
use crate::support::*;

/// Sends Begin on channel 0 and reads the router's answer.
pub(crate) async fn begin(raw: &mut Raw) {
    begin_on(raw, 0).await;
    let answer = frames_for(raw, Duration::from_millis(500)).await;
    assert!(
        answer.iter().any(|f| matches!(f, Performative::Begin(_))),
        "expected begin, got {answer:?}"
    );
}

/// Sends Begin on `channel` (a large incoming window: the router may send freely).
async fn begin_on(raw: &mut Raw, channel: u16) {
    let begin = Performative::Begin(Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: i32::MAX as u32,
        outgoing_window: 2048,
        handle_max: 1023.into(),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    });
    let mut out = BytesMut::new();
    codec::encode_frame(channel, &begin, &[], &mut out).expect("encode begin");
    raw.send(&out).await.expect("send begin");
}

/// The condition of a Close or Detach among `frames`, as text.
fn condition(frames: &[Performative]) -> Option<String> {
    frames.iter().find_map(|f| match f {
        Performative::Close(c) => c.error.as_ref().map(|e| format!("{:?}", e.condition)),
        Performative::Detach(d) => d.error.as_ref().map(|e| format!("{:?}", e.condition)),
        _ => None,
    })
}

/// Sends Open with `idle_time_out` (ms) and reads the router's open.
async fn open_with_idle(raw: &mut Raw, idle_time_out: Option<u32>) {
    let open = Open {
        container_id: "raw-test-peer".into(),
        hostname: None,
        max_frame_size: 65_536.into(),
        channel_max: 255.into(),
        idle_time_out,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    send(raw, Performative::Open(open), &[]).await;
    match raw.frame(Duration::from_secs(5)).await {
        Ok(Got::Amqp(Some(Performative::Open(_)))) => {}
        other => panic!("expected open, got {other:?}"),
    }
}

/// Sends `performative` on channel 0.
pub(crate) async fn send(raw: &mut Raw, performative: Performative, payload: &[u8]) {
    let mut out = BytesMut::new();
    codec::encode_frame(0, &performative, payload, &mut out).expect("encode frame");
    raw.send(&out).await.expect("send frame");
}

/// Grants `credit` on the receiving link of handle 0 (channel 0), with room for every transfer.
pub(crate) async fn grant(raw: &mut Raw, credit: u32) {
    let flow = Flow {
        next_incoming_id: Some(0),
        incoming_window: i32::MAX as u32,
        next_outgoing_id: 0,
        outgoing_window: 2048,
        handle: Some(Handle(0)),
        delivery_count: Some(0),
        link_credit: Some(credit),
        available: None,
        drain: false,
        echo: false,
        properties: None,
    };
    send(raw, Performative::Flow(flow), &[]).await;
}

/// An application (`app1`) receiving from `address` with `credit`.
pub(crate) async fn consumer(p: &Platform, address: &str, credit: u32) -> Raw {
    let mut app = Raw::login(p.amqp, "app1", "pw1").await;
    app.open().await;
    begin(&mut app).await;
    attach(&mut app, 0, Role::Receiver, address).await;
    let _ = frames_for(&mut app, Duration::from_millis(300)).await;
    grant(&mut app, credit).await;
    app
}

/// Attaches a link on channel 0 with handle `handle`: the peer sends when `role` is `Sender`.
pub(crate) async fn attach(raw: &mut Raw, handle: u32, role: Role, address: &str) {
    let sender = role == Role::Sender;
    let attach = Attach {
        name: format!("link-{handle}"),
        handle: Handle(handle),
        role,
        snd_settle_mode: SenderSettleMode::Unsettled,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(Source {
            address: (!sender).then(|| address.to_owned()),
            ..Source::default()
        })),
        target: Some(Box::new(TargetArchetype::Target(Target {
            address: sender.then(|| address.to_owned()),
            ..Target::default()
        }))),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: sender.then_some(0),
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    send(raw, Performative::Attach(attach), &[]).await;
}

/// The frames the router sends until it is quiet for `within` (heartbeats left out).
pub(crate) async fn frames_for(raw: &mut Raw, within: Duration) -> Vec<Performative> {
    let mut frames = Vec::new();
    loop {
        match raw.frame(within).await {
            Ok(Got::Amqp(Some(p))) => frames.push(p),
            Ok(_) => {}
            Err(_) => return frames,
        }
    }
}

/// A producer that sends on a link the router gave no credit (a telemetry address whose consumer granted
/// none) used to be served anyway, so credit bounded nothing. Its link is now detached with
/// `amqp:link:transfer-limit-exceeded`; the connection and its other links stay.
#[tokio::test(flavor = "multi_thread")]
async fn a_sender_that_ignores_credit_loses_its_link() {
    let p = Platform::start().await;
    // A consumer that grants no credit: producers of telemetry/t1 get none.
    let mut app = Raw::login(p.amqp, "app1", "pw1").await;
    app.open().await;
    begin(&mut app).await;
    attach(&mut app, 0, Role::Receiver, "telemetry/t1").await;
    let answer = frames_for(&mut app, Duration::from_millis(500)).await;
    assert!(
        answer.iter().any(|f| matches!(f, Performative::Attach(_))),
        "{answer:?}"
    );

    let mut adapter = Raw::login(p.amqp, "ferry-adapter", ADAPTER_PASSWORD).await;
    adapter.open().await;
    begin(&mut adapter).await;
    attach(&mut adapter, 0, Role::Sender, "telemetry/t1").await;
    let answer = frames_for(&mut adapter, Duration::from_millis(500)).await;
    let granted: u32 = answer
        .iter()
        .filter_map(|f| match f {
            Performative::Flow(f) if f.handle.is_some() => f.link_credit,
            _ => None,
        })
        .sum();
    assert_eq!(
        granted, 0,
        "no credit while the consumer has none: {answer:?}"
    );

    let transfer = Transfer {
        handle: Handle(0),
        delivery_id: Some(0),
        delivery_tag: Some(Binary::from(vec![0])),
        message_format: Some(0),
        settled: Some(false),
        more: false,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    };
    send(
        &mut adapter,
        Performative::Transfer(transfer),
        b"\x00\x53\x77\xa1\x01x",
    )
    .await;
    let answer = frames_for(&mut adapter, Duration::from_secs(2)).await;
    let detach = answer
        .iter()
        .find_map(|f| match f {
            Performative::Detach(d) => Some(d),
            _ => None,
        })
        .unwrap_or_else(|| panic!("expected a detach, got {answer:?}"));
    let condition = detach.error.as_ref().map(|e| format!("{:?}", e.condition));
    assert!(
        condition
            .as_deref()
            .is_some_and(|c| c.contains("TransferLimitExceeded")),
        "{detach:?}"
    );
    assert!(
        !answer.iter().any(|f| matches!(f, Performative::Close(_))),
        "only the link goes, not the connection: {answer:?}"
    );
    // The connection still works: a new link on it is attached.
    attach(&mut adapter, 1, Role::Sender, "telemetry/t1").await;
    let answer = frames_for(&mut adapter, Duration::from_millis(500)).await;
    assert!(
        answer
            .iter()
            .any(|f| matches!(f, Performative::Attach(a) if a.handle == Handle(1))),
        "{answer:?}"
    );
}

/// One ~40-byte disposition naming every delivery id (`first=1, last=0` wraps around all 2^32) used to
/// cost 2^32 map lookups on a runtime thread: new connections got no SASL header, the steady pair
/// stalled. Now its cost is bounded by what the connection has unsettled.
#[tokio::test(flavor = "multi_thread")]
async fn a_disposition_spanning_all_delivery_ids_does_not_stall_the_router() {
    let p = Platform::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU32::new(0));
    let steady = keep_exchanging(&p, stop.clone(), count.clone()).await;
    wait_for_more(&count, 3).await;

    let mut raw = Raw::login(p.amqp, "app1", "pw1").await;
    raw.open().await;
    begin(&mut raw).await;
    for settled in [true, false] {
        let disposition = Performative::Disposition(Disposition {
            role: Role::Receiver,
            first: 1,
            last: Some(0),
            settled,
            state: None,
            batchable: false,
        });
        send(&mut raw, disposition, &[]).await;
    }

    // The router still answers a new connection's protocol header at once...
    let mut other = Raw::connect(p.amqp).await;
    other.send(codec::SASL_HEADER).await.expect("send header");
    let header = tokio::time::timeout(Duration::from_secs(2), other.header())
        .await
        .expect("a new connection gets the SASL header within 2 s");
    assert_eq!(&header, codec::SASL_HEADER);
    // ...the steady pair carries on...
    wait_for_more(&count, 5).await;
    // ...and the attacker's own connection is still served: the unsettled disposition is answered.
    let answer = frames_for(&mut raw, Duration::from_secs(2)).await;
    let settled = answer.iter().any(|f| {
        matches!(f, Performative::Disposition(d) if (d.first, d.last, d.settled) == (1, Some(0), true))
    });
    assert!(
        settled,
        "expected the router's settling disposition, got {answer:?}"
    );

    stop.store(true, Ordering::Relaxed);
    steady.await.expect("steady pair");
}

/// A consumer that grants 2^31-1 credit and never reads its socket used to receive its share of the
/// tenant's stream into the router's memory without bound (`ferry up` grew from 21 to 537 MiB in 20 s).
/// Now the router holds at most `max_queued_bytes_per_connection` for it and passes it over; a
/// well-behaved consumer of the same address gets everything else.
#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_that_grants_huge_credit_and_stops_reading_gets_a_bounded_share() {
    let mut p = Platform::start().await;
    p.restart_router_with(|c| c.max_queued_bytes_per_connection = 256 * 1024)
        .await;

    let mut stalled = Raw::connect_small_window(p.amqp)
        .await
        .log_in("app1", "pw1")
        .await;
    stalled.open().await;
    begin(&mut stalled).await;
    attach(&mut stalled, 0, Role::Receiver, "telemetry/t1").await;
    grant(&mut stalled, i32::MAX as u32).await;
    let _ = frames_for(&mut stalled, Duration::from_millis(300)).await;
    // From here on the stalled consumer reads nothing.

    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 500).await;
    let received = Arc::new(AtomicU32::new(0));
    let counter = received.clone();
    let good = tokio::spawn(async move {
        while let Some(d) = recv_within(&mut rx, 3000).await {
            let _ = rx.accept(&d).await;
            counter.fetch_add(1, Ordering::Relaxed);
        }
        app.close().await;
    });

    let mut adapter = p.adapter().await;
    let mut tx = fe2o3_amqp::Sender::builder()
        .name("flood")
        .target("telemetry/t1")
        .sender_settle_mode(Settle::Settled)
        .attach(&mut adapter.session)
        .await
        .expect("attach");
    let token = p.assertion("t1", "d1").await;
    const N: u32 = 40_000;
    let body = vec![b'x'; 1024];
    for i in 0..N {
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            tx.send(
                Sendable::builder()
                    .message(device_message("d1", Some(&token), &body))
                    .settled(true)
                    .build(),
            ),
        )
        .await;
        assert!(
            matches!(sent, Ok(Ok(_))),
            "message {i}: the producer got no credit while a good consumer was reading: {sent:?}"
        );
    }
    good.await.expect("good consumer");
    let to_good = received.load(Ordering::Relaxed);
    let to_stalled = N - to_good;
    // Pre-settled telemetry is balanced evenly between consumers with credit: unbounded, the stalled
    // one took half (20,000 here, ~22 MiB). Bounded: what fits in 256 KiB plus the sockets' buffers
    // (the kernel grows the router's send buffer on loopback up to 4 MiB: ~4,000 messages seen).
    assert!(
        to_stalled < N / 4,
        "the stalled consumer was handed {to_stalled} of {N} messages"
    );
    drop(tx);
    adapter.close().await;
}

/// Sessions and links beyond what the router advertised (channel-max 255, handle-max 1023) close the
/// connection; links, consumers and connections beyond the configured caps are refused, each with
/// `amqp:resource-limit-exceeded`, while others carry on.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_links_and_connections_beyond_the_limits_are_refused() {
    let mut p = Platform::start().await;
    p.restart_router_with(|c| {
        c.max_links_per_connection = 3;
        c.max_consumers_per_address = 2;
        c.max_connections_per_user = 2;
        c.max_connections = 6;
    })
    .await;

    // channel above channel-max.
    let mut raw = Raw::login(p.amqp, "app1", "pw1").await;
    raw.open().await;
    begin_on(&mut raw, 256).await;
    let (frames, end) = raw.frames_until_closed(Duration::from_secs(5)).await;
    assert_eq!(end, End::Closed, "begin on channel 256: {frames:?}");
    assert!(
        close_condition(&frames).flatten().is_some(),
        "a close with an error: {frames:?}"
    );

    // handle above handle-max.
    let mut raw = Raw::login(p.amqp, "app1", "pw1").await;
    raw.open().await;
    begin(&mut raw).await;
    attach(&mut raw, 1024, Role::Receiver, "telemetry/t1").await;
    let (frames, end) = raw.frames_until_closed(Duration::from_secs(5)).await;
    assert_eq!(end, End::Closed, "attach with handle 1024: {frames:?}");

    // Links per connection: the fourth is refused, the connection stays.
    let mut links = Raw::login(p.amqp, "app1", "pw1").await;
    links.open().await;
    begin(&mut links).await;
    for (handle, address) in [(0, "telemetry/t1"), (1, "event/t1"), (2, "command/t1")] {
        let role = if address == "command/t1" {
            Role::Sender
        } else {
            Role::Receiver
        };
        attach(&mut links, handle, role, address).await;
        let answer = frames_for(&mut links, Duration::from_millis(300)).await;
        assert_eq!(condition(&answer), None, "link {handle}: {answer:?}");
    }
    attach(&mut links, 3, Role::Receiver, "telemetry/t1").await;
    let answer = frames_for(&mut links, Duration::from_millis(500)).await;
    assert!(
        condition(&answer).is_some_and(|c| c.contains("ResourceLimitExceeded")),
        "fourth link: {answer:?}"
    );
    assert!(!answer.iter().any(|f| matches!(f, Performative::Close(_))));

    // Consumers per address: `links` holds one on telemetry/t1; a second connection may add one more.
    let mut second = Raw::login(p.amqp, "app1", "pw1").await;
    second.open().await;
    begin(&mut second).await;
    attach(&mut second, 0, Role::Receiver, "telemetry/t1").await;
    let answer = frames_for(&mut second, Duration::from_millis(300)).await;
    assert_eq!(condition(&answer), None, "{answer:?}");
    attach(&mut second, 1, Role::Receiver, "telemetry/t1").await;
    let answer = frames_for(&mut second, Duration::from_millis(500)).await;
    assert!(
        condition(&answer).is_some_and(|c| c.contains("ResourceLimitExceeded")),
        "third consumer of telemetry/t1: {answer:?}"
    );

    // Connections per user: app1 has two (`links`, `second`); a third is refused after open.
    let mut third = Raw::login(p.amqp, "app1", "pw1").await;
    let (frames, end) = third.frames_until_closed(Duration::from_secs(5)).await;
    assert_eq!(end, End::Closed, "third connection of app1: {frames:?}");
    assert!(
        close_condition(&frames)
            .flatten()
            .is_some_and(|c| c.contains("resource-limit-exceeded")),
        "{frames:?}"
    );
    // Another user is not affected.
    let mut other = Raw::login(p.amqp, "app2", "pw2").await;
    other.open().await;

    // Connections in all: `links`, `second`, `other` are open; three more fill the cap of 6 and the
    // next one is closed before the router says a word.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut raw = Raw::connect(p.amqp).await;
        raw.send(codec::SASL_HEADER).await.expect("send header");
        assert_eq!(&raw.header().await, codec::SASL_HEADER);
        held.push(raw);
    }
    let mut over = Raw::connect(p.amqp).await;
    let _ = over.send(codec::SASL_HEADER).await;
    let (bytes, end) = over.rest(Duration::from_secs(5)).await;
    assert_eq!(end, End::Closed, "connection over the cap");
    assert!(bytes.is_empty(), "{bytes:02x?}");
    drop(held);
    drop(links);
    // Slots come back: app1 may connect again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = Raw::login(p.amqp, "app1", "pw1").await;
    again.open().await;
}

/// A peer that asked for no heartbeats and then went silent was checked against the router's idle
/// timeout only once an hour; now within twice the timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_peer_is_closed_after_the_idle_timeout_even_without_heartbeats() {
    let mut p = Platform::start().await;
    p.restart_router_with(|c| c.idle_timeout_secs = 1).await;
    let mut raw = Raw::login(p.amqp, "app1", "pw1").await;
    open_with_idle(&mut raw, None).await;
    let (frames, end) = raw.frames_until_closed(Duration::from_secs(6)).await;
    assert_eq!(end, End::Closed, "silent peer: {frames:?}");
    assert!(
        close_condition(&frames).flatten().is_some(),
        "closed with a reason: {frames:?}"
    );
}

/// A peer asking for a 1 ms idle-time-out used to get a heartbeat every 0.5 ms (2,000 frames a second
/// on a runtime thread); the router sends them at most every 500 ms.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_asking_for_a_1_ms_idle_timeout_gets_heartbeats_at_a_bounded_rate() {
    let p = Platform::start().await;
    let mut raw = Raw::login(p.amqp, "app1", "pw1").await;
    open_with_idle(&mut raw, Some(1)).await;
    let mut heartbeats = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match raw.frame(left).await {
            Ok(Got::Amqp(None)) => heartbeats += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(
        (1..=6).contains(&heartbeats),
        "{heartbeats} heartbeats in 2 s"
    );
}
