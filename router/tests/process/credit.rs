//! How much credit the router gives producers, and when it tops them up (issue 16).

use std::time::Duration;

use fe2o3_amqp::types::definitions::Role;
use fe2o3_amqp::types::messaging::message::__private::Serializable;
use fe2o3_amqp::types::performatives::Performative;

use crate::harness::*;
use crate::hostile::{attach, begin, consumer, frames_for};
use crate::support::*;

/// The end of the credit window a producer holds after `frames` (delivery-count + link-credit of the
/// last link flow), if any flow came.
fn window_end(frames: &[Performative]) -> Option<u32> {
    frames.iter().rev().find_map(|f| match f {
        Performative::Flow(f) if f.handle.is_some() => {
            Some(f.delivery_count.unwrap_or(0) + f.link_credit.unwrap_or(0))
        }
        _ => None,
    })
}

/// One adapter link carries all of an adapter's devices of a tenant. With a window the adapter can use up
/// between two of the router's turns it would wait for every flow (with adapter and router on one core,
/// B1 was held near 140k msg/s at 6.7 µs per message; with four times the window and a top-up each
/// quarter, 194k at 4.9 µs). A telemetry producer now holds 1,024 and is topped up once it has used a
/// quarter, so a flow is on its way while three quarters are still to be written; events keep 256.
#[tokio::test(flavor = "multi_thread")]
async fn a_telemetry_producer_holds_four_batches_and_is_topped_up_each_quarter() {
    let p = Platform::start().await;
    let assertion = p.assertion("t1", "d1").await;
    let mut app = consumer(&p, "telemetry/t1", 5000).await;

    let mut adapter = Raw::login(p.amqp, "ferry-adapter", ADAPTER_PASSWORD).await;
    adapter.open().await;
    begin(&mut adapter).await;
    attach(&mut adapter, 0, Role::Sender, "telemetry/t1").await;
    let frames = frames_for(&mut adapter, Duration::from_millis(500)).await;
    assert_eq!(
        window_end(&frames),
        Some(1024),
        "the first grant: {frames:?}"
    );

    let message = serde_amqp::to_vec(&Serializable(device_message(
        "d1",
        Some(&assertion),
        b"reading",
    )))
    .expect("encode");

    // Less than a quarter used: no flow yet.
    adapter
        .send(&transfers(0..255, true, &message))
        .await
        .expect("send");
    let frames = frames_for(&mut adapter, Duration::from_millis(300)).await;
    assert_eq!(
        window_end(&frames),
        None,
        "no top-up before a quarter: {frames:?}"
    );
    // The quarter: topped up to the whole window again, counted from where the producer is.
    adapter
        .send(&transfers(255..256, true, &message))
        .await
        .expect("send");
    let frames = frames_for(&mut adapter, Duration::from_millis(500)).await;
    assert_eq!(window_end(&frames), Some(256 + 1024), "{frames:?}");

    // Every message reached the consumer.
    let mut delivered = 0;
    while delivered < 256 {
        let frames = frames_for(&mut app, Duration::from_secs(2)).await;
        assert!(!frames.is_empty(), "only {delivered} delivered");
        delivered += frames
            .iter()
            .filter(|f| matches!(f, Performative::Transfer(_)))
            .count();
    }
    assert_eq!(delivered, 256);

    // Events are stored, not forwarded: their producers keep a window of 256.
    attach(&mut adapter, 1, Role::Sender, "event/t1").await;
    let frames = frames_for(&mut adapter, Duration::from_millis(500)).await;
    assert_eq!(
        window_end(&frames),
        Some(256),
        "an event producer's grant: {frames:?}"
    );
}
