//! Logged-in peers that try to make the router hold a runtime thread or memory for everyone (issue 15).
//! Each attack runs beside a steady producer/consumer pair, which must keep exchanging messages.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fe2o3_amqp::types::definitions::{Handle, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Source, Target, TargetArchetype};
use fe2o3_amqp::types::performatives::{Attach, Begin, Disposition, Performative, Transfer};
use fe2o3_amqp::types::primitives::Binary;
use ferry_router::codec;

use crate::harness::*;
use crate::malformed::{keep_exchanging, wait_for_more};
use crate::support::*;

/// Sends Begin on channel 0 and reads the router's answer.
async fn begin(raw: &mut Raw) {
    let begin = Performative::Begin(Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: 2048,
        outgoing_window: 2048,
        handle_max: 255.into(),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    });
    send(raw, begin, &[]).await;
    let answer = frames_for(raw, Duration::from_millis(500)).await;
    assert!(
        answer.iter().any(|f| matches!(f, Performative::Begin(_))),
        "expected begin, got {answer:?}"
    );
}

/// Sends `performative` on channel 0.
async fn send(raw: &mut Raw, performative: Performative, payload: &[u8]) {
    let mut out = BytesMut::new();
    codec::encode_frame(0, &performative, payload, &mut out).expect("encode frame");
    raw.send(&out).await.expect("send frame");
}

/// Attaches a link on channel 0 with handle `handle`: the peer sends when `role` is `Sender`.
async fn attach(raw: &mut Raw, handle: u32, role: Role, address: &str) {
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
async fn frames_for(raw: &mut Raw, within: Duration) -> Vec<Performative> {
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
