use super::*;

/// A link whose control queue holds `capacity` updates and is never drained (the link task is
/// stuck, or the router does not answer).
fn stuck_link(capacity: usize) -> (AmqpLink, mpsc::Receiver<Control>) {
    let (control, rx) = mpsc::channel(capacity);
    let shared = Arc::new(Shared {
        instance_id: "test".to_owned(),
        devices: Mutex::new(HashSet::new()),
        control,
        timeouts: (Duration::from_millis(20), Duration::from_millis(20)),
        dropped_updates: AtomicU64::new(0),
        dropped_settlements: Arc::new(AtomicU64::new(0)),
    });
    (AmqpLink { shared }, rx)
}

#[tokio::test]
async fn last_gateway_updates_beyond_a_full_queue_are_dropped_and_counted() {
    let (link, _rx) = stuck_link(1);
    let tenant = TenantId::new("t").expect("id");
    let (device, gateway) = (
        DeviceId::new("d").expect("id"),
        DeviceId::new("g").expect("id"),
    );
    link.set_last_gateway(&tenant, &device, &gateway);
    assert_eq!(link.dropped_updates(), 0);
    link.set_last_gateway(&tenant, &device, &gateway);
    link.set_last_gateway(&tenant, &device, &gateway);
    assert_eq!(link.dropped_updates(), 2);
}

#[tokio::test]
async fn a_registration_behind_a_full_queue_retries_within_its_bound_and_is_remembered() {
    let (link, _rx) = stuck_link(1);
    let tenant = TenantId::new("t").expect("id");
    let gateway = DeviceId::new("g").expect("id");
    link.set_last_gateway(&tenant, &gateway, &gateway);
    let started = tokio::time::Instant::now();
    let result = link
        .register(&tenant, &DeviceId::new("d").expect("id"))
        .await;
    assert!(
        matches!(result, Err(DownstreamError::NoCredit)),
        "{result:?}"
    );
    // Tried again until the bound (2 x credit wait + outcome wait), not refused at once.
    assert!(started.elapsed() >= Duration::from_millis(30));
    // Registered on the next replay all the same.
    assert_eq!(link.registered(), 1);
}
