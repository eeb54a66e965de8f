//! Presence in NATS (`ferry_nats::presence`) on a real nats-server with Ferry's users: adapters and
//! routers write it, concurrently and without losing each other's updates, the registry reads it and
//! cannot write it, and nobody learns device traffic from it.

use std::time::Duration;

use ferry_core::console::{unix_now, PresenceChange, PresenceStore, PresenceUpdate};
use ferry_core::ids::{DeviceId, TenantId};
use ferry_nats::presence::NatsPresence;
use ferry_nats::{permissions, NatsConfig};
use ferry_test_support::NatsServer;

fn server() -> NatsServer {
    let block = permissions::authorization(&[
        ("ferry-adapter", "adapter-pw", &permissions::adapter()),
        ("ferry-router", "router-pw", &permissions::router()),
        ("ferry-registry", "registry-pw", &permissions::registry()),
    ])
    .expect("renders");
    NatsServer::start_with(&block)
}

async fn open(
    server: &NatsServer,
    user: &str,
    password: &str,
) -> (async_nats::Client, NatsPresence) {
    let config = NatsConfig {
        urls: vec![server.url()],
        user: Some(user.into()),
        password: Some(password.into()),
        ..NatsConfig::default()
    };
    // The registry's connections have an inbox prefix of their own (its credential reads no other).
    let client = ferry_nats::connect_with(&config, user, |o| {
        if user == "ferry-registry" {
            o.custom_inbox_prefix(permissions::REGISTRY_INBOX)
        } else {
            o
        }
    })
    .await
    .expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    let presence = NatsPresence::open(&js, 1).await.expect("bucket");
    (client, presence)
}

fn ids(t: &str, d: &str) -> (TenantId, DeviceId) {
    (
        TenantId::new(t).expect("tenant"),
        DeviceId::new(d).expect("device"),
    )
}

fn update(t: &str, d: &str, change: PresenceChange) -> PresenceUpdate {
    let (tenant, device) = ids(t, d);
    PresenceUpdate {
        tenant,
        device,
        change,
        at: unix_now(),
    }
}

fn connected(connection: &str) -> PresenceChange {
    PresenceChange::Connected {
        adapter: "hono-mqtt".into(),
        gateway: None,
        remote_id: Some("client-1".into()),
        until: None,
        connection: Some(connection.into()),
    }
}

/// Polls until `check` holds for what `store` reports of `(t, d)`.
async fn until(store: &NatsPresence, t: &str, d: &str, check: impl Fn(bool) -> bool) {
    let (tenant, device) = ids(t, d);
    for _ in 0..100 {
        let p = store.get(&tenant, &device).await.expect("read");
        if check(p.is_some_and(|p| p.connected)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{t}/{d} never reached the expected presence");
}

#[tokio::test]
async fn adapters_and_routers_write_presence_and_the_registry_reads_it() {
    let server = server();
    let (adapter_client, adapter) = open(&server, "ferry-adapter", "adapter-pw").await;
    let (_r, router) = open(&server, "ferry-router", "router-pw").await;
    let (registry_client, registry) = open(&server, "ferry-registry", "registry-pw").await;

    // 50 devices connect through the adapter while the router records them as seen: every one ends up
    // connected (the writers' compare-and-set keeps both kinds of update).
    for i in 0..50 {
        adapter.record(update(
            "t1",
            &format!("d{i}"),
            connected(&format!("mqtt-0/{i}")),
        ));
        router.record(update("t1", &format!("d{i}"), PresenceChange::Seen));
    }
    until(&registry, "t1", "d49", |c| c).await;
    // What only a router records (a device's ttd, here its connection through a router) lands too: the
    // router's credential may write the bucket.
    router.record(update("t3", "via-router", connected("router-1/ttd")));
    until(&registry, "t3", "via-router", |c| c).await;
    let mut list = registry
        .connected(&TenantId::new("t1").expect("t"))
        .await
        .expect("the registry lists");
    list.sort();
    assert_eq!(list.len(), 50, "{list:?}");
    assert!(registry
        .connected(&TenantId::new("t2").expect("t"))
        .await
        .expect("lists")
        .is_empty());

    // An older connection's end does not take a newer one offline; its own does.
    adapter.record(update(
        "t1",
        "d0",
        PresenceChange::Disconnected {
            connection: Some("mqtt-0/older".into()),
        },
    ));
    adapter.record(update(
        "t1",
        "d1",
        PresenceChange::Disconnected {
            connection: Some("mqtt-0/1".into()),
        },
    ));
    until(&registry, "t1", "d1", |c| !c).await;
    let (t, d0) = ids("t1", "d0");
    assert!(registry
        .get(&t, &d0)
        .await
        .expect("read")
        .is_some_and(|p| p.connected));

    // The registry's credential reads presence but cannot write it, nor listen to device traffic.
    registry.record(update("t1", "d1", connected("forged/1")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, d1) = ids("t1", "d1");
    assert!(
        !registry
            .get(&t, &d1)
            .await
            .expect("read")
            .is_some_and(|p| p.connected),
        "a registry wrote presence"
    );
    // It reads the command routes (for the console's commands), and cannot read the routers' events.
    ferry_nats::streams::event_stream(
        &async_nats::jetstream::new(adapter_client),
        "t1",
        ferry_nats::streams::EventLimits::default(),
        1,
    )
    .await
    .expect("an adapter makes the tenant's event stream");
    let js = async_nats::jetstream::new(registry_client);
    assert!(
        js.get_stream("FERRY_EVENTS_t1").await.is_err(),
        "a registry read an event stream"
    );
}

/// A burst beyond the writer's queue is dropped, not held: counted, and the count is the metric the
/// router exports (`ferry_router_presence_updates_dropped`).
#[tokio::test(flavor = "current_thread")]
async fn updates_beyond_the_queue_are_dropped_and_counted() {
    let server = server();
    let (_r, router) = open(&server, "ferry-router", "router-pw").await;
    let counter = router.dropped_counter();
    assert_eq!(router.dropped(), 0);
    // One thread and no await between the updates: the writer task cannot take any meanwhile.
    let burst = 10_000;
    for i in 0..burst {
        router.record(update("t1", &format!("d{i}"), PresenceChange::Seen));
    }
    let dropped = router.dropped();
    assert!(
        dropped > 0 && dropped < burst,
        "queue bound not applied: {dropped} of {burst} dropped"
    );
    assert_eq!(counter.get(), dropped, "the metric is the same count");
}
