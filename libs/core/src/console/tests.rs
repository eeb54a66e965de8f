use super::*;

fn ids(t: &str, d: &str) -> (TenantId, DeviceId) {
    (
        TenantId::new(t).expect("valid"),
        DeviceId::new(d).expect("valid"),
    )
}

fn connect(t: &str, d: &str, at: u64) -> PresenceUpdate {
    let (tenant, device) = ids(t, d);
    PresenceUpdate {
        tenant,
        device,
        change: PresenceChange::Connected {
            adapter: "hono-mqtt".into(),
            gateway: None,
            remote_id: Some("client-1".into()),
            until: None,
            connection: Some(format!("i/{at}")),
        },
        at,
    }
}

#[tokio::test]
async fn the_end_of_an_older_connection_does_not_hide_a_newer_one() {
    let store = MemoryPresence::default();
    let now = unix_now();
    store.record(connect("t", "d", now));
    store.record(connect("t", "d", now + 1));
    let (t, d) = ids("t", "d");
    store.record(PresenceUpdate {
        tenant: t.clone(),
        device: d.clone(),
        change: PresenceChange::Disconnected {
            connection: Some(format!("i/{now}")),
        },
        at: now + 2,
    });
    assert!(
        store
            .get(&t, &d)
            .await
            .expect("ok")
            .expect("known")
            .connected
    );
}

#[test]
fn rfc3339_formats_known_instants() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
}

#[tokio::test]
async fn connect_then_disconnect_is_seen_per_tenant() {
    let store = MemoryPresence::default();
    let now = unix_now();
    store.record(connect("t1", "d1", now));
    let (t1, d1) = ids("t1", "d1");
    let (t2, _) = ids("t2", "d1");
    let p = store.get(&t1, &d1).await.expect("ok").expect("known");
    assert!(p.connected);
    assert_eq!(p.adapter.as_deref(), Some("hono-mqtt"));
    assert!(store.get(&t2, &d1).await.expect("ok").is_none());
    assert_eq!(store.connected(&t1).await.expect("ok"), vec![d1.clone()]);
    assert!(store.connected(&t2).await.expect("ok").is_empty());
    store.record(PresenceUpdate {
        tenant: t1.clone(),
        device: d1.clone(),
        change: PresenceChange::Disconnected {
            connection: Some(format!("i/{now}")),
        },
        at: now + 1,
    });
    let p = store.get(&t1, &d1).await.expect("ok").expect("known");
    assert!(!p.connected);
    assert!(p.disconnected_at.is_some());
}

#[tokio::test]
async fn a_ttd_connection_ends_by_itself() {
    let store = MemoryPresence::default();
    let (t, d) = ids("t", "d");
    store.record(PresenceUpdate {
        tenant: t.clone(),
        device: d.clone(),
        change: PresenceChange::Connected {
            adapter: "hono-http".into(),
            gateway: None,
            remote_id: None,
            until: Some(unix_now() - 1),
            connection: None,
        },
        at: unix_now() - 5,
    });
    assert!(
        !store
            .get(&t, &d)
            .await
            .expect("ok")
            .expect("known")
            .connected
    );
}

#[test]
fn the_cap_evicts_idle_devices_and_never_connected_ones() {
    let store = MemoryPresence::with_cap(10);
    let now = unix_now();
    for i in 0..10 {
        store.record(connect("t", &format!("d{i}"), now));
    }
    // Full of connected devices: a newcomer is not recorded.
    store.record(connect("t", "new", now));
    assert_eq!(store.len(), 10);
    let (t, new) = ids("t", "new");
    assert!(!store.devices.lock().expect("lock")[&t].contains_key(&new));
    let (_, d0) = ids("t", "d0");
    store.record(PresenceUpdate {
        tenant: t.clone(),
        device: d0,
        change: PresenceChange::Disconnected { connection: None },
        at: now,
    });
    store.record(connect("t", "new", now));
    assert_eq!(store.len(), 10);
    assert!(store.devices.lock().expect("lock")[&t].contains_key(&new));
}

#[tokio::test]
async fn taps_are_bounded_and_end_with_their_watchers() {
    let bridge = RouterBridge::new(Arc::new(MemoryPresence::default()));
    let (t, _) = ids("t", "d");
    assert!(!bridge.taps.active());
    let mut subs = Vec::new();
    for _ in 0..MAX_TAPS_PER_TENANT {
        subs.push(bridge.watch(&t).expect("room"));
    }
    assert_eq!(bridge.watch(&t).err(), Some(TapError::TooMany));
    assert!(bridge.taps.watched(&t));
    subs.clear();
    assert!(!bridge.taps.active());
    assert!(!bridge.taps.watched(&t));
}
