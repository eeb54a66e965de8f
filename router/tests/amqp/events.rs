//! Events: stored before accepted, delivered when a consumer comes, redelivered, survive restarts, expire.

use std::time::Duration;

use fe2o3_amqp::types::messaging::{Header, Outcome};

use crate::harness::*;

#[tokio::test]
async fn events_sent_without_consumer_arrive_when_one_attaches() {
    let p = Platform::start().await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("event/t1").await;
    let token = p.assertion("t1", "d1").await;
    for i in 0..5u8 {
        let outcome = tokio::time::timeout(
            Duration::from_secs(3),
            tx.send(device_message("d1", Some(&token), &[i])),
        )
        .await
        .expect("events get credit without consumers")
        .expect("send");
        assert!(
            matches!(outcome, Outcome::Accepted(_)),
            "accepted once stored: {outcome:?}"
        );
    }
    assert!(
        p.metrics()
            .contains("ferry_router_event_store_depth{tenant=\"t1\"} 5"),
        "{}",
        p.metrics()
    );
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("event/t1", 10).await;
    for i in 0..5u8 {
        let d = recv_within(&mut rx, 2000)
            .await
            .expect("stored event arrives");
        assert_eq!(body_bytes(&d), [i], "in order");
        rx.accept(&d).await.expect("accept");
    }
    assert!(recv_within(&mut rx, 300).await.is_none());
    assert!(
        p.metrics()
            .contains("ferry_router_event_store_depth{tenant=\"t1\"} 0"),
        "{}",
        p.metrics()
    );
}

#[tokio::test]
async fn unsettled_events_are_redelivered_to_the_next_consumer() {
    let p = Platform::start().await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("event/t1").await;
    let token = p.assertion("t1", "d1").await;
    tx.send(device_message("d1", Some(&token), b"once"))
        .await
        .expect("send");
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("event/t1", 10).await;
    let _d = recv_within(&mut rx, 2000).await.expect("arrives");
    rx.close().await.expect("detach without settling");
    let mut app2 = p.app("app1", "pw1").await;
    let mut rx2 = app2.receiver("event/t1", 10).await;
    let d = recv_within(&mut rx2, 2000).await.expect("redelivered");
    assert_eq!(body_bytes(&d), b"once");
    rx2.accept(&d).await.expect("accept");
    let mut app3 = p.app("app1", "pw1").await;
    let mut rx3 = app3.receiver("event/t1", 10).await;
    assert!(
        recv_within(&mut rx3, 300).await.is_none(),
        "accepted means gone"
    );
}

#[tokio::test]
async fn stored_events_survive_a_router_restart() {
    let mut p = Platform::start().await;
    {
        let mut adapter = p.adapter().await;
        let mut tx = adapter.sender("event/t1").await;
        let token = p.assertion("t1", "d1").await;
        for i in 0..3u8 {
            tx.send(device_message("d1", Some(&token), &[i]))
                .await
                .expect("send");
        }
        adapter.close().await;
    }
    p.stop_router().await;
    p.start_router().await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("event/t1", 10).await;
    for i in 0..3u8 {
        let d = recv_within(&mut rx, 2000)
            .await
            .expect("event kept across restart");
        assert_eq!(body_bytes(&d), [i]);
        rx.accept(&d).await.expect("accept");
    }
}

#[tokio::test]
async fn events_expire_after_their_ttl() {
    let p = Platform::start().await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("event/t1").await;
    let token = p.assertion("t1", "d1").await;
    let mut short = device_message("d1", Some(&token), b"short");
    short.header = Some(Header {
        durable: true,
        ttl: Some(200),
        ..Header::default()
    });
    tx.send(short).await.expect("send");
    tx.send(device_message("d1", Some(&token), b"kept"))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("event/t1", 10).await;
    let d = recv_within(&mut rx, 2000)
        .await
        .expect("the unexpired event arrives");
    assert_eq!(body_bytes(&d), b"kept");
    rx.accept(&d).await.expect("accept");
    assert!(
        recv_within(&mut rx, 300).await.is_none(),
        "the expired one is gone"
    );
}

/// A tenant that floods events fills the store up to `max_event_store_bytes`: then no tenant's event
/// producer gets credit (the adapters hold the device's PUBACK, then answer 503), while telemetry, which
/// the store never holds, still flows. Once events leave the store, the waiting producers get credit back.
#[tokio::test]
async fn an_event_flood_fills_the_store_and_stops_event_credit_but_not_telemetry() {
    let mut p = Platform::start().await;
    p.restart_router_with(|c| c.max_event_store_bytes = 64 * 1024)
        .await;
    let mut adapter = p.adapter().await;
    let mut flood = adapter.sender("event/t1").await;
    let t1 = p.assertion("t1", "d1").await;
    let mut stored = 0usize;
    let stalled = loop {
        let send = flood.send(device_message("d1", Some(&t1), &[7u8; 1024]));
        match tokio::time::timeout(Duration::from_secs(2), send).await {
            Ok(outcome) => {
                let outcome = outcome.expect("send");
                assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
                stored += 1;
                // Ten times the cap: without a global cap the flood never stops.
                if stored == 640 {
                    break false;
                }
            }
            Err(_) => break true,
        }
    };
    assert!(stalled, "the flood stored {stored} KiB past a 64 KiB cap");
    // Credit is refused at a top-up, so a producer may use up the window it holds (256) past the cap.
    assert!(stored <= 256 + 64, "{stored} events stored");

    // Another tenant's events wait too: the cap is the store's, not t1's.
    let mut other = adapter.sender("event/t2").await;
    let t2 = p.assertion("t2", "d1").await;
    let message = device_message("d1", Some(&t2), b"t2 event");
    let waiting = tokio::spawn(async move {
        let outcome = other.send(message).await.expect("send");
        (other, outcome)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "t2's event got credit past the cap");

    // The store's size is exported (set by the once-a-second sweep).
    assert!(
        gauge(&p, "ferry_router_event_store_bytes").is_some_and(|b| b >= 64 * 1024),
        "the full store's bytes are exported"
    );
    // Telemetry of t2 still flows.
    telemetry_flows(&p, &mut adapter, ("app2", "pw2"), "t2", &t2).await;

    // t1's application drains its events: t2's producer is woken and its event stored.
    let mut app1 = p.app("app1", "pw1").await;
    let mut rx = app1.receiver("event/t1", 100).await;
    for _ in 0..stored {
        let d = recv_within(&mut rx, 3000)
            .await
            .expect("stored event arrives");
        rx.accept(&d).await.expect("accept");
    }
    let (_other, outcome) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("t2's producer gets credit once the store has room")
        .expect("join");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
}

/// An event store whose disk is nearly full (below `min_free_disk_bytes`, here more than any disk has)
/// gives event producers no credit, as a full store does, instead of failing writes; telemetry still
/// flows, and the free space and the store's size are exported.
#[tokio::test]
async fn an_event_store_on_a_nearly_full_disk_gives_event_producers_no_credit() {
    let mut p = Platform::start().await;
    assert!(
        gauge(&p, "ferry_router_event_store_free_disk_bytes").is_some_and(|b| b > 0),
        "the free space is exported"
    );
    p.restart_router_with(|c| c.min_free_disk_bytes = u64::MAX)
        .await;
    let mut adapter = p.adapter().await;
    let mut events = adapter.sender("event/t1").await;
    let t1 = p.assertion("t1", "d1").await;
    let send = events.send(device_message("d1", Some(&t1), b"alarm"));
    assert!(
        tokio::time::timeout(Duration::from_secs(2), send)
            .await
            .is_err(),
        "an event producer got credit on a full disk"
    );
    telemetry_flows(&p, &mut adapter, ("app1", "pw1"), "t1", &t1).await;
    assert_eq!(gauge(&p, "ferry_router_event_store_bytes"), Some(0));
}

/// A tenant's own `max-stored-events` (its `resource-limits`) bounds its stored events, however large
/// the producer's window: before, only the router's per-tenant default (100,000) did. Another tenant
/// keeps the default; raising the limit through the management API lets the waiting event in.
#[tokio::test]
async fn a_tenants_max_stored_events_bounds_its_backlog_and_follows_changes() {
    let p = Platform::start().await;
    let limits = |n: i64| serde_json::json!({"resource-limits": {"max-stored-events": n}});
    p.manage(reqwest::Method::PUT, "/v1/tenants/t1", limits(3))
        .await;
    let mut adapter = p.adapter().await;
    let t1 = p.assertion("t1", "d1").await;
    let mut events = adapter.sender("event/t1").await;
    // The limits are fetched when the first producer attaches; the first event waits for nothing.
    for i in 0..3u8 {
        let outcome = tokio::time::timeout(
            Duration::from_secs(3),
            events.send(device_message("d1", Some(&t1), &[i])),
        )
        .await
        .expect("room for three events")
        .expect("send");
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }
    let message = device_message("d1", Some(&t1), b"fourth");
    let fourth = tokio::spawn(async move {
        let outcome = events.send(message).await.expect("send");
        (events, outcome)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !fourth.is_finished(),
        "a fourth event was stored past max-stored-events 3"
    );

    // t2 has no limit of its own: the router's default (100,000) holds.
    let t2 = p.assertion("t2", "d1").await;
    let mut other = adapter.sender("event/t2").await;
    for i in 0..10u8 {
        let outcome = tokio::time::timeout(
            Duration::from_secs(3),
            other.send(device_message("d1", Some(&t2), &[i])),
        )
        .await
        .expect("t2 is not held by t1's limit")
        .expect("send");
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }

    // A higher limit, through the management API: the change stream brings it, the producer is woken.
    p.manage(reqwest::Method::PUT, "/v1/tenants/t1", limits(10))
        .await;
    let (_events, outcome) = tokio::time::timeout(Duration::from_secs(5), fourth)
        .await
        .expect("the waiting event is stored once the limit is raised")
        .expect("join");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    assert!(
        p.metrics()
            .contains("ferry_router_event_store_depth{tenant=\"t1\"} 4"),
        "{}",
        p.metrics()
    );
}

/// A gauge or counter of the router's metrics.
fn gauge(p: &Platform, name: &str) -> Option<i64> {
    p.metrics().lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(' ')
            .and_then(|v| v.trim().parse().ok())
    })
}

/// A telemetry message of `tenant` reaches `app`'s receiver and is accepted: what must go on while
/// events are refused.
async fn telemetry_flows(
    p: &Platform,
    adapter: &mut Client,
    (user, password): (&str, &str),
    tenant: &str,
    token: &str,
) {
    let mut app = p.app(user, password).await;
    let address = format!("telemetry/{tenant}");
    let mut telemetry = app.receiver(&address, 10).await;
    let mut tx = adapter.sender(&address).await;
    let message = device_message("d1", Some(token), b"21.5");
    // The outcome comes once the application accepted.
    let sent = tokio::spawn(async move { tx.send(message).await.expect("send") });
    let d = recv_within(&mut telemetry, 2000)
        .await
        .expect("telemetry flows while events are refused");
    telemetry.accept(&d).await.expect("accept");
    let outcome = sent.await.expect("join");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
}

/// Events without a `ttl` used to stay until a consumer accepted them, however long that took: with
/// nobody consuming, they piled up for ever. Now they get `default_event_ttl_secs`, a day by default.
#[tokio::test]
async fn an_event_without_ttl_gets_a_day_by_default() {
    use ferry_router::events::{EventStore, SegmentLog};
    let mut p = Platform::start().await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("event/t1").await;
    let token = p.assertion("t1", "d1").await;
    tx.send(device_message("d1", Some(&token), b"no ttl"))
        .await
        .expect("send");
    adapter.close().await;
    p.stop_router().await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let store = SegmentLog::open(p.data_dir.path().join("router/events")).expect("open store");
    let tenant = ferry_core::ids::TenantId::new("t1").expect("tenant");
    let ids = store.pending(&tenant, None, 10).await.expect("pending");
    let events = store.read(&tenant, ids, usize::MAX).await.expect("read");
    let [event] = events.events.as_slice() else {
        panic!("one event stored: {events:?}");
    };
    // The store keeps which device sent it (it used to be written empty).
    assert_eq!(&*event.device_id, "d1");
    let expires = event.expires_at_ms.expect("an expiry");
    let day_ms = 86_400_000;
    assert!(
        expires.abs_diff(now_ms + day_ms) < 60_000,
        "expires in {} ms, not a day",
        expires.saturating_sub(now_ms)
    );
}

#[tokio::test]
async fn events_without_ttl_expire_after_the_default_ttl() {
    let mut p = Platform::start().await;
    p.restart_router_with(|c| c.default_event_ttl_secs = 1)
        .await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("event/t1").await;
    let token = p.assertion("t1", "d1").await;
    tx.send(device_message("d1", Some(&token), b"no ttl"))
        .await
        .expect("send");
    // The TTL, then the expiry tick (once a second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        p.metrics()
            .contains("ferry_router_event_store_depth{tenant=\"t1\"} 0"),
        "{}",
        p.metrics()
    );
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("event/t1", 10).await;
    assert!(
        recv_within(&mut rx, 500).await.is_none(),
        "an event past the default TTL is not delivered"
    );
}
