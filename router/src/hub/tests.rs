use bytes::Bytes;
use tokio::sync::mpsc;

use super::*;
use crate::events::SegmentLog;

fn hub(dir: &std::path::Path) -> Hub<SegmentLog> {
    let store = SegmentLog::open(dir).expect("open store");
    let metrics = Metrics::new(&ferry_core::admin::Admin::new());
    Hub::new(Arc::new(store), metrics, 100)
}

fn conn() -> (ConnHandle, mpsc::UnboundedReceiver<ToConn>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ConnHandle::new(tx), rx)
}

/// An application that attaches a fresh reply address per request and detaches it afterwards used to
/// leave one table entry per reply id behind, walked every second under the global lock.
#[test]
fn reply_address_churn_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = hub(dir.path());
    let tenant = TenantId::new("t1").expect("tenant");
    let (handle, _rx) = conn();
    for i in 0..1000 {
        let reply = format!("reply-{i}");
        let mut addr = hub.address_with(Kind::CommandResponse, &tenant, Some(&reply));
        let consumer = hub.attach_consumer(&mut addr, handle.clone(), next_id());
        hub.detach_consumer(&addr, &consumer, Vec::new());
    }
    assert_eq!(hub.response_addresses(), 0);
    // And a response to a reply address nobody holds any more is released, not held.
    let routed = hub.route_response(&tenant, "reply-1", Bytes::new(), true, Origin::None);
    assert_eq!(routed, Routed::NoConsumer);
}

/// Two receivers on one reply address: the address lives until the last one leaves, and a receiver
/// attaching after the address was dropped gets a working one back.
#[test]
fn a_reply_address_lives_while_a_receiver_holds_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = hub(dir.path());
    let tenant = TenantId::new("t1").expect("tenant");
    let (handle, mut rx) = conn();
    let mut a = hub.address_with(Kind::CommandResponse, &tenant, Some("r"));
    let mut b = hub.address_with(Kind::CommandResponse, &tenant, Some("r"));
    let ca = hub.attach_consumer(&mut a, handle.clone(), next_id());
    let cb = hub.attach_consumer(&mut b, handle.clone(), next_id());
    hub.detach_consumer(&a, &ca, Vec::new());
    assert_eq!(hub.response_addresses(), 1);
    hub.detach_consumer(&b, &cb, Vec::new());
    assert_eq!(hub.response_addresses(), 0);

    // `stale` was looked up before the address went; attaching rebinds it to the table's.
    let mut stale = b.clone();
    let c = hub.attach_consumer(&mut stale, handle.clone(), next_id());
    hub.consumer_credit(&stale, &c, 1);
    let routed = hub.route_response(&tenant, "r", Bytes::from_static(b"x"), true, Origin::None);
    assert_eq!(routed, Routed::Forwarded);
    assert!(matches!(rx.try_recv(), Ok(ToConn::Deliver { .. })));
}

/// The cluster taker learns from the routing itself whether credit is left (one lock per message): at the
/// last credit of the last consumer, and when the chosen consumer is choked by what is queued for it.
#[test]
fn routing_telemetry_tells_whether_credit_is_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tenant = TenantId::new("t1").expect("tenant");
    let hub = hub(dir.path()).with_max_queued_bytes(1_000);
    let (handle, _rx) = conn();
    let mut addr = hub.address(Kind::Telemetry, &tenant);
    let a = hub.attach_consumer(&mut addr, handle.clone(), next_id());
    let b = hub.attach_consumer(&mut addr, handle.clone(), next_id());
    hub.consumer_credit(&addr, &a, 1);
    hub.consumer_credit(&addr, &b, 1);
    let small = || Bytes::from_static(b"x");
    let route = |payload| hub.route_telemetry_credit_left(&addr, payload, true, Origin::None);
    assert_eq!(
        route(small()),
        (Routed::Forwarded, true),
        "one consumer still has credit"
    );
    assert_eq!(hub.available_credit(&addr), 1);
    assert_eq!(
        route(small()),
        (Routed::Forwarded, false),
        "that was the last credit"
    );
    assert_eq!(route(small()), (Routed::NoConsumer, false));
    // Credit again, but a message big enough to choke the consumer it goes to.
    hub.consumer_credit(&addr, &a, 5);
    let (routed, left) = route(Bytes::from(vec![0u8; 2_000]));
    assert_eq!(routed, Routed::Forwarded);
    assert_eq!(left, hub.available_credit(&addr) > 0);
    assert!(!left, "a choked consumer's credit does not count");
}

/// A QoS 0 flood beside QoS 1 devices of the same tenant: both producers may hold all the credit the
/// consumer grants, and pre-settled messages used to take every grant, so that the unsettled ones found
/// none and were released (B13: every QoS 1 device heard 503 and was cut off). With an unsettled
/// producer attached, pre-settled telemetry leaves a quarter of the consumer's grant to it; without one
/// it may take every credit, as before.
#[test]
fn presettled_telemetry_leaves_unsettled_telemetry_a_reserve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tenant = TenantId::new("t1").expect("tenant");
    let hub = hub(dir.path());
    let (handle, _rx) = conn();
    let mut addr = hub.address(Kind::Telemetry, &tenant);
    let consumer = hub.attach_consumer(&mut addr, handle.clone(), next_id());
    let small = || Bytes::from_static(b"x");
    let presettled = || hub.route_telemetry(&addr, small(), true, Origin::None);
    let unsettled = || hub.route_telemetry(&addr, small(), false, Origin::None);

    // No unsettled producer: pre-settled messages take every credit.
    hub.consumer_credit(&addr, &consumer, 8);
    for _ in 0..8 {
        assert_eq!(presettled(), Routed::Forwarded);
    }
    assert_eq!(presettled(), Routed::NoConsumer);

    let qos0 = hub.attach_producer(&addr, handle.clone(), next_id(), false);
    let qos1 = hub.attach_producer(&addr, handle.clone(), next_id(), true);
    hub.consumer_credit(&addr, &consumer, 8);
    for _ in 0..6 {
        assert_eq!(presettled(), Routed::Forwarded);
    }
    assert_eq!(presettled(), Routed::NoConsumer, "2 of 8 are kept back");
    assert_eq!(unsettled(), Routed::Forwarded);
    assert_eq!(unsettled(), Routed::Forwarded);
    assert_eq!(unsettled(), Routed::NoConsumer, "nothing is left");

    // The unsettled producer goes: nothing is kept back any more.
    hub.detach_producer(&addr, &qos1);
    hub.detach_producer(&addr, &qos0);
    hub.consumer_credit(&addr, &consumer, 2);
    assert_eq!(presettled(), Routed::Forwarded);
    assert_eq!(presettled(), Routed::Forwarded);
}
