use super::commands::{next_packet_id, NotTaken};
use super::connect::keep_alive;
use super::notify::Notification;
use super::*;
use ferry_core::hono::content_type;

#[test]
fn packet_ids_skip_zero_and_those_in_flight() {
    let mut inflight: HashMap<u16, ()> = HashMap::new();
    assert_eq!(next_packet_id(0, &inflight), Some(1));
    inflight.insert(1, ());
    inflight.insert(2, ());
    assert_eq!(next_packet_id(0, &inflight), Some(3));
    assert_eq!(next_packet_id(u16::MAX, &inflight), Some(3));
}

#[test]
fn packet_ids_run_out_instead_of_spinning() {
    // A device that never PUBACKs its commands once made this loop forever.
    let inflight: HashMap<u16, ()> = (1..=u16::MAX).map(|id| (id, ())).collect();
    assert_eq!(next_packet_id(17, &inflight), None);
    let mut one_free = inflight;
    one_free.remove(&9);
    assert_eq!(next_packet_id(17, &one_free), Some(9));
}

#[test]
fn keep_alive_0_or_above_the_maximum_gets_the_maximum() {
    assert_eq!(keep_alive(0, 1200), (1200, Some(1200)));
    assert_eq!(keep_alive(3600, 1200), (1200, Some(1200)));
    assert_eq!(keep_alive(60, 1200), (60, None));
    assert_eq!(keep_alive(1200, 1200), (1200, None));
    // No maximum: what the client asked for, 0 included.
    assert_eq!(keep_alive(0, 0), (0, None));
    assert_eq!(keep_alive(u16::MAX, 0), (u16::MAX, None));
}

#[test]
fn connection_events_carry_hono_s_body() {
    let device = DeviceId::new("d1").expect("id");
    let n = Notification::connection(device, "connected", "client-7");
    assert_eq!(n.content_type, content_type::CONNECTION_NOTIFICATION);
    let body: serde_json::Value = serde_json::from_slice(&n.payload).expect("json");
    assert_eq!(
        body,
        serde_json::json!({"cause": "connected", "remote-id": "client-7", "source": "hono-mqtt", "data": {}})
    );
    let t = Notification::ttd(DeviceId::new("d1").expect("id"), None, -1, "c///q/#".into());
    assert_eq!(t.content_type, content_type::EMPTY_NOTIFICATION);
    assert!(t.payload.is_empty());
    assert_eq!(t.ttd, Some(-1));
}

#[tokio::test]
async fn a_command_beyond_a_full_session_queue_is_handed_back_to_be_released() {
    let command = || {
        Command::unlinked(
            TenantId::new("t").expect("id"),
            DeviceId::new("d").expect("id"),
            "setBrightness",
        )
    };
    let (tx, rx) = tokio::sync::mpsc::channel(COMMAND_QUEUE);
    let target = CommandTarget { session: 1, tx };
    for _ in 0..COMMAND_QUEUE {
        assert!(target.offer(command()).is_ok());
    }
    assert!(matches!(target.offer(command()), Err(NotTaken::Full(_))));
    drop(rx);
    assert!(matches!(target.offer(command()), Err(NotTaken::Gone(_))));
}

/// The size of what `f` returns (a future, unpolled: its size is the room every connection's task
/// reserves, however little the idle session uses).
fn size_of_output<A, B, C, D, R>(_: &impl FnOnce(A, B, C, D) -> R) -> usize {
    std::mem::size_of::<R>()
}

#[test]
fn an_idle_connection_s_task_stays_small() {
    // B6: every connection's task holds this much. Rarely used phases are boxed (authentication,
    // the registry re-check, cleanup, TLS handshakes), and so are the rarely used parts of the session
    // ([`Rare`]). Measured without optimisations (the tests' build); a release build's are smaller.
    let task = size_of_output(&crate::accept);
    let session = std::mem::size_of::<Session>();
    println!("connection task {task} B, session state {session} B");
    assert!(task <= 1_650, "a connection's task grew to {task} B");
    assert!(session <= 256, "a session's state grew to {session} B");
}

#[tokio::test]
async fn a_session_waiting_for_its_device_holds_no_read_buffer() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut device = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let mut io = Stream::Plain(listener.accept().await.expect("accept").0);
    let mut buf = BytesMut::new();
    let wait = Duration::from_millis(50);

    device.write_all(&[0xC0, 0x00]).await.expect("PINGREQ");
    assert_eq!(receive(&mut io, &mut buf).await.expect("read"), 2);
    assert!(matches!(
        wire::read(Version::V311, &mut buf, 1024),
        Ok(Some(Incoming::PingReq))
    ));
    // Nothing more has come: the wait holds no buffer.
    assert!(tokio::time::timeout(wait, receive(&mut io, &mut buf))
        .await
        .is_err());
    assert_eq!(buf.capacity(), 0);

    // Part of a packet stays with the session until the rest comes.
    device.write_all(&[0x30, 0x05, 0x00]).await.expect("part");
    assert_eq!(receive(&mut io, &mut buf).await.expect("read"), 3);
    assert!(matches!(
        wire::read(Version::V311, &mut buf, 1024),
        Ok(None)
    ));
    assert!(tokio::time::timeout(wait, receive(&mut io, &mut buf))
        .await
        .is_err());
    assert_eq!(&buf[..], &[0x30, 0x05, 0x00]);
    device
        .write_all(&[0x01, b't', b'h', b'i'])
        .await
        .expect("rest");
    assert_eq!(receive(&mut io, &mut buf).await.expect("read"), 4);
    match wire::read(Version::V311, &mut buf, 1024) {
        Ok(Some(Incoming::Publish { topic, payload, .. })) => {
            assert_eq!(&topic[..], b"t");
            assert_eq!(&payload[..], b"hi");
        }
        other => panic!("expected the PUBLISH, got {other:?}"),
    }

    drop(device);
    assert_eq!(receive(&mut io, &mut buf).await.expect("end"), 0);
}

/// PUBACKs leave in the order of the device's PUBLISHes whichever way each went: QoS 1 messages handed
/// straight to the router ([`Ack`]) that the router settles before an earlier, slower one ([`Entry::Work`],
/// e.g. a device the caches did not know yet) is done wait for it, then all come out together, each
/// counted by its outcome.
#[tokio::test]
async fn answers_keep_the_devices_order_across_handed_and_slower_messages() {
    use ferry_adapter_core::downstream::{DownstreamError, Handed, MessageKind, SendOutcome};
    use ferry_adapter_core::metrics::HonoMetrics;

    let admin = ferry_core::admin::Admin::new();
    let tally = HonoMetrics::new(&admin)
        .component("hono-mqtt")
        .tenant_tally(&TenantId::new("t1").expect("id"));
    let answer = |pkid, outcome| Done::PubAck {
        pkid,
        on_error: OnError::Default,
        outcome,
        report: Report::Plain("telemetry"),
    };
    let mut pending = InOrder::default();
    let (slow_done, slow) = oneshot::channel::<()>();
    pending.push_back(Box::pin(async move {
        let _ = slow.await;
        answer(1, Ok(()))
    }));
    let mut settle = Vec::new();
    for pkid in [2u16, 3, 4] {
        let (tx, rx) = oneshot::channel::<Result<SendOutcome, DownstreamError>>();
        settle.push(tx);
        pending.push_ack(Ack {
            pkid,
            on_error: OnError::Default,
            endpoint: "telemetry",
            waiting: Waiting::new(Handed::on(rx), tally.clone(), MessageKind::Event, 5),
        });
    }
    assert!(pending.has_work(), "the slower message is under way");
    assert_eq!(pending.len(), 4);
    let mut settle = settle.into_iter();
    for outcome in [Ok(SendOutcome::Accepted), Ok(SendOutcome::Released)] {
        let _ = settle.next().expect("sender").send(outcome);
    }
    assert!(
        pending.next().now_or_never().is_none(),
        "2 and 3 are settled, but 1 comes first"
    );
    let _ = slow_done.send(());
    let mut answered = Vec::new();
    while let Some(Some(done)) = pending.next().now_or_never() {
        let Done::PubAck { pkid, outcome, .. } = done else {
            panic!("a PUBACK");
        };
        answered.push((pkid, outcome));
    }
    assert_eq!(
        answered,
        [(1, Ok(())), (2, Ok(())), (3, Err(Refused::NoConsumer))],
        "in the device's order, as far as settled"
    );
    assert!(!pending.has_work());
    assert_eq!(pending.len(), 1, "4 still waits for the router");
    let _ = settle
        .next()
        .expect("sender")
        .send(Ok(SendOutcome::Accepted));
    assert!(matches!(
        pending.next().await,
        Some(Done::PubAck {
            pkid: 4,
            outcome: Ok(()),
            ..
        })
    ));
    assert!(pending.is_empty());
    let text = admin.encode_metrics();
    assert!(text.contains(r#"hono_telemetry_processing_total{component_type="adapter",component_name="hono-mqtt",tenant="t1",type="event",status="forwarded",qos="1",ttd="none"} 2"#), "{text}");
    assert!(text.contains(r#"hono_telemetry_processing_total{component_type="adapter",component_name="hono-mqtt",tenant="t1",type="event",status="undeliverable",qos="1",ttd="none"} 1"#), "{text}");
}

/// A device that pipelined a backlog of QoS 1 messages grew its session's queue of answers; once they
/// are all answered the room goes back (100 sessions kept 5.3 MB after a 4 s stall of the adapter at 20k
/// msg/s, heaptrack), while a session that keeps a few in flight keeps what it has.
#[tokio::test]
async fn a_sessions_answer_queue_gives_back_its_room_after_a_backlog() {
    use ferry_adapter_core::downstream::{DownstreamError, Handed, MessageKind, SendOutcome};
    use ferry_adapter_core::metrics::HonoMetrics;

    let admin = ferry_core::admin::Admin::new();
    let tally = HonoMetrics::new(&admin)
        .component("hono-mqtt")
        .tenant_tally(&TenantId::new("t1").expect("id"));
    let mut pending = InOrder::default();
    let mut ack = |pkid: u16| {
        let (tx, rx) = oneshot::channel::<Result<SendOutcome, DownstreamError>>();
        let _ = tx.send(Ok(SendOutcome::Accepted));
        pending.push_ack(Ack {
            pkid,
            on_error: OnError::Default,
            endpoint: "telemetry",
            waiting: Waiting::new(Handed::on(rx), tally.clone(), MessageKind::Telemetry, 5),
        });
    };
    for pkid in 1..=1000 {
        ack(pkid);
    }
    let capacity = |p: &InOrder| p.0.as_ref().map_or(0, |o| o.order.capacity());
    assert!(capacity(&pending) >= 1000);
    for pkid in 1..=1000u16 {
        assert!(
            matches!(pending.next().await, Some(Done::PubAck { pkid: p, .. }) if p == pkid),
            "answer {pkid}"
        );
    }
    assert!(pending.is_empty());
    assert!(
        capacity(&pending) <= 4 * ORDER_KEPT,
        "kept {}",
        capacity(&pending)
    );
}
