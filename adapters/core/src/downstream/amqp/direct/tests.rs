use super::*;

#[test]
fn a_transfer_frame_decodes_as_the_transfer_it_stands_for() {
    let mut scratch = Vec::new();
    let mut out = BytesMut::new();
    for (handle, id, settled) in [(0, 0, true), (7, 300, false), (70_000, u32::MAX, true)] {
        out.clear();
        assert!(codec::encode_single_transfer(
            0,
            handle,
            id,
            settled,
            b"message",
            u32::MAX,
            &mut scratch,
            &mut out
        ));
        let (frame, used) = codec::decode_frame(&out, u32::MAX)
            .expect("valid")
            .expect("complete");
        assert_eq!(used, out.len());
        let Frame::Amqp {
            channel,
            performative: Some(Performative::Transfer(t)),
            payload,
        } = frame
        else {
            panic!("a transfer: {frame:?}");
        };
        assert_eq!(channel, 0);
        assert_eq!(t.handle.0, handle);
        assert_eq!(t.delivery_id, Some(id));
        assert_eq!(
            t.delivery_tag.as_ref().map(|t| t.to_vec()),
            Some(id.to_be_bytes().to_vec())
        );
        assert_eq!(t.message_format, Some(0));
        assert_eq!(t.settled, Some(settled));
        assert!(!t.more);
        assert_eq!(payload, b"message");
    }
}

#[test]
fn frames_are_counted_in_a_split_transfer() {
    let mut out = BytesMut::new();
    let transfer = Transfer {
        handle: Handle(1),
        delivery_id: Some(1),
        delivery_tag: Some(Binary::from(vec![1])),
        message_format: Some(0),
        settled: Some(true),
        more: false,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    };
    codec::encode_transfer(0, &transfer, &[9; 2000], 512, &mut out).expect("encodes");
    assert_eq!(codec::count_frames(&out), 5);
}

/// Counts the writes that reach the stream under it.
struct CountWrites<S> {
    inner: S,
    writes: Arc<AtomicUsize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for CountWrites<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountWrites<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router's side of the handshake, then: every attach is answered and given `credit`; each
/// transfer's message is reported on `messages`. With `refill`, every `credit` transfers received on a
/// link are followed by `credit` more (a consumer taking what it gets, a little at a time).
async fn fake_router(
    mut io: tokio::io::DuplexStream,
    credit: u32,
    unsettled_credit: u32,
    refill: bool,
    messages: mpsc::UnboundedSender<Vec<u8>>,
) {
    let mut received: HashMap<u32, u32> = HashMap::new();
    use fe2o3_amqp::types::primitives::Array;
    use fe2o3_amqp::types::sasl::{SaslMechanisms, SaslOutcome};
    let mut inbuf = BytesMut::new();
    expect_header(&mut io, &mut inbuf, codec::SASL_HEADER)
        .await
        .expect("SASL header");
    let mut out = BytesMut::new();
    out.extend_from_slice(codec::SASL_HEADER);
    let mechanisms = SaslFrame::Mechanisms(SaslMechanisms {
        sasl_server_mechanisms: Array::from(vec![Symbol::from("PLAIN")]),
    });
    codec::encode_sasl(&mechanisms, &mut out).expect("encodes");
    let Owned::Sasl(SaslFrame::Init(_)) = read_frame(&mut io, &mut inbuf).await.expect("init")
    else {
        panic!("expected sasl-init");
    };
    let outcome = SaslFrame::Outcome(SaslOutcome {
        code: SaslCode::Ok,
        additional_data: None,
    });
    codec::encode_sasl(&outcome, &mut out).expect("encodes");
    io.write_all(&out).await.expect("writes");
    out.clear();
    expect_header(&mut io, &mut inbuf, codec::AMQP_HEADER)
        .await
        .expect("AMQP header");
    out.extend_from_slice(codec::AMQP_HEADER);
    let Owned::Amqp(Some(Performative::Open(open))) =
        read_frame(&mut io, &mut inbuf).await.expect("open")
    else {
        panic!("expected open");
    };
    let Owned::Amqp(Some(Performative::Begin(begin))) =
        read_frame(&mut io, &mut inbuf).await.expect("begin")
    else {
        panic!("expected begin");
    };
    let begin = Begin {
        remote_channel: Some(0),
        ..begin
    };
    for p in [Performative::Open(open), Performative::Begin(begin)] {
        codec::encode_frame(0, &p, &[], &mut out).expect("encodes");
    }
    io.write_all(&out).await.expect("writes");
    loop {
        out.clear();
        let n = io.read_buf(&mut inbuf).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        while let Some((frame, used)) = codec::decode_frame(&inbuf, MAX_FRAME_IN).expect("valid") {
            match frame {
                Frame::Amqp {
                    performative: Some(Performative::Attach(a)),
                    ..
                } => {
                    let handle = a.handle.clone();
                    let credit = match a.snd_settle_mode {
                        SenderSettleMode::Unsettled => unsettled_credit,
                        _ => credit,
                    };
                    let reply = Attach {
                        role: Role::Receiver,
                        ..a
                    };
                    codec::encode_frame(0, &Performative::Attach(reply), &[], &mut out)
                        .expect("encodes");
                    let flow = Flow {
                        next_incoming_id: Some(0),
                        incoming_window: 1 << 30,
                        next_outgoing_id: 0,
                        outgoing_window: 1 << 20,
                        handle: Some(handle),
                        delivery_count: Some(0),
                        link_credit: Some(credit),
                        available: None,
                        drain: false,
                        echo: false,
                        properties: None,
                    };
                    codec::encode_frame(0, &Performative::Flow(flow), &[], &mut out)
                        .expect("encodes");
                }
                Frame::Amqp {
                    performative: Some(Performative::Transfer(t)),
                    payload,
                    ..
                } => {
                    let _ = messages.send(payload.to_vec());
                    let count = received.entry(t.handle.0).or_default();
                    *count += 1;
                    if refill && *count % credit == 0 {
                        let flow = Flow {
                            next_incoming_id: Some(0),
                            incoming_window: 1 << 30,
                            next_outgoing_id: 0,
                            outgoing_window: 1 << 20,
                            handle: Some(t.handle.clone()),
                            delivery_count: Some(*count),
                            link_credit: Some(credit),
                            available: None,
                            drain: false,
                            echo: false,
                            properties: None,
                        };
                        codec::encode_frame(0, &Performative::Flow(flow), &[], &mut out)
                            .expect("encodes");
                    }
                }
                _ => {}
            }
            inbuf.advance(used);
        }
        if !out.is_empty() {
            io.write_all(&out).await.expect("writes");
        }
    }
}

/// The engine on one end of an in-memory stream, the fake router on the other.
struct Harness {
    jobs: mpsc::Sender<Job>,
    state: Arc<State>,
    writes: Arc<AtomicUsize>,
    messages: mpsc::UnboundedReceiver<Vec<u8>>,
}

async fn harness(credit: u32) -> Harness {
    harness_with(credit, false).await
}

async fn harness_with(credit: u32, refill: bool) -> Harness {
    harness_split(credit, credit, refill).await
}

/// A harness whose router gives QoS 1 (unsettled) links `unsettled_credit`, the others `credit`.
async fn harness_split(credit: u32, unsettled_credit: u32, refill: bool) -> Harness {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let writes = Arc::new(AtomicUsize::new(0));
    let (tx, messages) = mpsc::unbounded_channel();
    tokio::spawn(fake_router(theirs, credit, unsettled_credit, refill, tx));
    let (jobs, mut rx) = mpsc::channel(JOB_QUEUE);
    let io = CountWrites {
        inner: ours,
        writes: writes.clone(),
    };
    let state = Arc::new(State {
        shedding: RwLock::default(),
        connected: watch::channel(false).0,
        connects: AtomicU64::new(0),
        links_attached: AtomicU64::new(0),
    });
    let mut connected = state.connected.subscribe();
    let handle = Direct {
        jobs: jobs.clone(),
        state: state.clone(),
    };
    tokio::spawn(async move {
        let config = DownstreamConfig::new("memory", "adapter", "pw");
        let _ = run(&config, &state, io, &mut rx, &Shutdown::never()).await;
    });
    connected.wait_for(|up| *up).await.expect("connects");
    Harness {
        jobs,
        state: handle.state,
        writes,
        messages,
    }
}

impl Harness {
    async fn send(
        jobs: &mpsc::Sender<Job>,
        link: LinkKey,
        message: &[u8],
    ) -> Result<SendOutcome, DownstreamError> {
        let (reply, replied) = oneshot::channel();
        let job = Job {
            link,
            message: message.to_vec(),
            deadline: Instant::now() + Duration::from_secs(1),
            wait: Duration::from_secs(1),
            reply: Reply::Wait(reply),
        };
        jobs.send(job).await.expect("queued");
        replied.await.expect("answered")
    }
}

fn telemetry() -> LinkKey {
    LinkKey::Telemetry(TenantId::new("t1").expect("id"))
}

/// Ten sessions become ready together; each sends one QoS 0 message when it runs. The first message
/// wakes the connection task into the worker's next slot, ahead of the other nine: without the yield
/// before it takes its batch, it wrote that message alone, then the nine.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn messages_of_sessions_woken_together_leave_in_one_write() {
    let mut h = harness(1000).await;
    // Attach the link first, so that the round below only sends.
    assert_eq!(
        Harness::send(&h.jobs, telemetry(), b"first").await,
        Ok(SendOutcome::Presettled)
    );
    assert_eq!(h.messages.recv().await.as_deref(), Some(&b"first"[..]));
    let before = h.writes.load(Ordering::Relaxed);
    let jobs = h.jobs.clone();
    let round = tokio::spawn(async move {
        let sessions: Vec<_> = (0..10u8)
            .map(|i| {
                let jobs = jobs.clone();
                tokio::spawn(async move { Harness::send(&jobs, telemetry(), &[i]).await })
            })
            .collect();
        for s in sessions {
            assert_eq!(s.await.expect("session"), Ok(SendOutcome::Presettled));
        }
    });
    round.await.expect("round");
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(h.messages.recv().await.expect("message")[0]);
    }
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<u8>>(), "each message once");
    assert_eq!(
        h.writes.load(Ordering::Relaxed) - before,
        1,
        "one write for the ten messages"
    );
}

/// Without credit, QoS 0 waits its bound; once the link has stalled for SHED_AFTER, what arrives past
/// the link's queue is shed at once, and nothing is written for any of it.
#[tokio::test]
async fn qos0_without_credit_is_shed_and_never_written() {
    let mut h = harness(0).await;
    let started = Instant::now();
    assert_eq!(
        Harness::send(&h.jobs, telemetry(), b"waits").await,
        Err(DownstreamError::NoCredit)
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    let queue = DownstreamConfig::new("memory", "adapter", "pw").link_queue;
    let sends: Vec<_> = (0..queue + 40)
        .map(|_| {
            let jobs = h.jobs.clone();
            tokio::spawn(async move { Harness::send(&jobs, telemetry(), b"flood").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shed = sends.iter().filter(|s| s.is_finished()).count();
    assert_eq!(shed, 40, "what does not fit the queue is shed at once");
    for s in sends {
        assert_eq!(s.await.expect("join"), Err(DownstreamError::NoCredit));
    }
    assert!(h.messages.try_recv().is_err(), "nothing was written");
}

/// A flood of QoS 0 messages, always more queued than the link has credit for, while the router hands
/// out credit ten at a time as it receives: the credit must be read between the batches, and a queue
/// that grows while credit keeps coming is a burst, not a stall, so nothing is shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_messages_does_not_keep_the_routers_credit_from_being_read() {
    use futures_util::StreamExt;
    let mut h = harness_with(10, true).await;
    let total = 20_000u32;
    let in_flight = 2_000;
    let jobs = h.jobs.clone();
    let flood = tokio::spawn(async move {
        let mut replies = futures_util::stream::FuturesUnordered::new();
        let mut shed = 0;
        for i in 0..total {
            if replies.len() >= in_flight {
                if let Some(r) = replies.next().await {
                    shed += u32::from(r != Ok(Ok(SendOutcome::Presettled)));
                }
            }
            let (reply, replied) = oneshot::channel();
            jobs.send(Job {
                link: telemetry(),
                message: i.to_be_bytes().to_vec(),
                deadline: Instant::now() + Duration::from_secs(5),
                wait: Duration::from_secs(5),
                reply: Reply::Wait(reply),
            })
            .await
            .expect("queued");
            replies.push(replied);
        }
        while let Some(r) = replies.next().await {
            shed += u32::from(r != Ok(Ok(SendOutcome::Presettled)));
        }
        shed
    });
    let shed = tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .expect("within the bound")
        .expect("flood");
    assert_eq!(shed, 0, "nothing shed while credit keeps coming");
    // Answered once written: the last of them may still be on their way to the router.
    for _ in 0..total {
        tokio::time::timeout(Duration::from_secs(5), h.messages.recv())
            .await
            .expect("every message reaches the router")
            .expect("message");
    }
}

/// A hiccup: the link has no credit for a moment (less than SHED_AFTER: time stands still here) while
/// the sessions go on sending. Ten thousand small messages, more than the sixteen link queues (4,096)
/// that once bounded a burst, wait for credit instead of being shed; the burst is bounded in bytes
/// (`BURST_BYTES`), so large messages past it are shed at once.
#[tokio::test(start_paused = true)]
async fn a_burst_waits_within_its_bytes_and_what_goes_past_them_is_shed() {
    let h = harness(0).await;
    let job = |size: usize| {
        let (reply, replied) = oneshot::channel();
        let job = Job {
            link: telemetry(),
            message: vec![7; size],
            deadline: Instant::now() + Duration::from_secs(5),
            wait: Duration::from_secs(5),
            reply: Reply::Wait(reply),
        };
        (job, replied)
    };
    // Everything queued is taken from the channel, and the batch it was taken in handled.
    let settle = |jobs: mpsc::Sender<Job>| async move {
        while jobs.capacity() < jobs.max_capacity() {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    };
    let (small, big, bigs) = (10_000, 64 * 1024, 400);
    let mut replies = Vec::new();
    for _ in 0..small {
        let (j, r) = job(32);
        h.jobs.send(j).await.expect("queued");
        replies.push(r);
    }
    settle(h.jobs.clone()).await;
    let shed = replies.iter_mut().filter_map(|r| r.try_recv().ok()).count();
    assert_eq!(shed, 0, "small messages within the burst's bytes wait");

    let mut replies = Vec::new();
    for _ in 0..bigs {
        let (j, r) = job(big);
        h.jobs.send(j).await.expect("queued");
        replies.push(r);
    }
    settle(h.jobs.clone()).await;
    let per_job = std::mem::size_of::<Job>();
    let room = BURST_BYTES - small * (32 + per_job);
    let fit = room.div_ceil(big + per_job);
    let mut shed = 0;
    for r in &mut replies {
        if let Ok(answer) = r.try_recv() {
            assert_eq!(answer, Err(DownstreamError::NoCredit));
            shed += 1;
        }
    }
    assert_eq!(
        shed,
        bigs - fit,
        "what goes past the burst's bytes is shed at once"
    );
    let direct = Direct {
        jobs: h.jobs.clone(),
        state: h.state.clone(),
    };
    assert!(direct.sheds_qos0(&TenantId::new("t1").expect("id")));
}

/// A QoS 0 link without credit for longer than SHED_AFTER is announced to the callers, who then shed
/// its messages before encoding them; another tenant's link is not affected.
#[tokio::test]
async fn a_qos0_link_without_credit_is_announced_as_shedding() {
    let h = harness(0).await;
    let direct = Direct {
        jobs: h.jobs.clone(),
        state: h.state.clone(),
    };
    let t1 = TenantId::new("t1").expect("id");
    assert!(!direct.sheds_qos0(&t1), "no link yet");
    let waiting = tokio::spawn({
        let jobs = h.jobs.clone();
        async move { Harness::send(&jobs, telemetry(), b"waits").await }
    });
    let announced = tokio::time::timeout(Duration::from_secs(2), async {
        while !direct.sheds_qos0(&t1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(announced.is_ok(), "announced within the bound");
    assert!(!direct.sheds_qos0(&TenantId::new("t2").expect("id")));
    assert_eq!(
        waiting.await.expect("answered"),
        Err(DownstreamError::NoCredit)
    );
}

/// QoS 0 handed over without waiting (`Direct::try_send`): nobody waits for the outcome, and it is
/// counted all the same, as the pipeline counts what it waits for: `forwarded` once written,
/// `undeliverable` when it waited for credit in vain.
#[tokio::test]
async fn qos0_handed_over_without_waiting_is_counted_by_its_outcome() {
    let mut h = harness(3).await;
    let direct = Direct {
        jobs: h.jobs.clone(),
        state: h.state.clone(),
    };
    let admin = ferry_core::admin::Admin::new();
    let metrics = crate::metrics::HonoMetrics::new(&admin).component("hono-mqtt");
    let t1 = TenantId::new("t1").expect("id");
    let tally = metrics.tenant_tally(&t1);
    let wait = Duration::from_millis(100);
    for i in 0..5u8 {
        assert!(direct.try_send(telemetry(), vec![i; 4], wait, tally.clone(), 4));
    }
    for i in 0..3u8 {
        let got = tokio::time::timeout(Duration::from_secs(2), h.messages.recv())
            .await
            .expect("written")
            .expect("message");
        assert_eq!(got, vec![i; 4]);
    }
    let counted = |status: &str, n: u32| {
        admin.encode_metrics().contains(&format!(
            r#"hono_telemetry_processing_total{{component_type="adapter",component_name="hono-mqtt",tenant="t1",type="telemetry",status="{status}",qos="0",ttd="none"}} {n}"#
        ))
    };
    let settled = tokio::time::timeout(Duration::from_secs(2), async {
        while !(counted("forwarded", 3) && counted("undeliverable", 2)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "{}", admin.encode_metrics());
    assert!(
        h.messages.try_recv().is_err(),
        "the two without credit were not written"
    );
}

/// A tenant's QoS 1 telemetry that waits for credit makes its QoS 0 link shed at the edge even while
/// that link has credit: the router gives both from the same consumers' credit, and a QoS 0 flood
/// would otherwise take it all and leave the QoS 1 devices to time out (503, cut off). Once the QoS 1
/// message is answered, QoS 0 flows again.
#[tokio::test]
async fn qos0_yields_to_its_tenants_qos1_waiting_for_credit() {
    let h = harness_split(1000, 0, false).await;
    let direct = Direct {
        jobs: h.jobs.clone(),
        state: h.state.clone(),
    };
    let t1 = TenantId::new("t1").expect("id");
    assert_eq!(
        Harness::send(&h.jobs, telemetry(), b"qos0").await,
        Ok(SendOutcome::Presettled)
    );
    let waiting = tokio::spawn({
        let jobs = h.jobs.clone();
        let key = LinkKey::TelemetryUnsettled(t1.clone());
        async move { Harness::send(&jobs, key, b"qos1").await }
    });
    let yielded = tokio::time::timeout(Duration::from_secs(2), async {
        while !direct.sheds_qos0(&t1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(yielded.is_ok(), "QoS 0 yields while QoS 1 waits");
    assert!(!direct.sheds_qos0(&TenantId::new("t2").expect("id")));
    assert_eq!(
        waiting.await.expect("answered"),
        Err(DownstreamError::NoCredit)
    );
    let resumed = tokio::time::timeout(Duration::from_secs(2), async {
        while direct.sheds_qos0(&t1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        resumed.is_ok(),
        "QoS 0 flows again once QoS 1 no longer waits"
    );
}

/// A backlog grows the connection's unwritten-frame buffer (1.4 MB was kept after a 4 s stall of the
/// adapter at 20k msg/s QoS 1, heaptrack); once the turns write little again it starts a fresh buffer, so
/// the large one goes with its last chunk. A buffer the turns still fill is kept (no allocation per turn).
#[test]
fn the_unwritten_frame_buffer_is_given_back_after_a_backlog_and_kept_under_load() {
    let mut out = BytesMut::with_capacity(2 * 1024 * 1024);
    out.extend_from_slice(&[1; 1024]);
    let chunk = take_chunk(&mut out);
    assert_eq!(chunk.len(), 1024);
    assert!(out.capacity() < OUT_KEPT, "kept {} bytes", out.capacity());
    drop(chunk);

    let mut out = BytesMut::with_capacity(512 * 1024);
    out.extend_from_slice(&[1; 200 * 1024]);
    let chunk = take_chunk(&mut out);
    assert_eq!(chunk.len(), 200 * 1024);
    assert!(
        out.capacity() > 256 * 1024,
        "a buffer still in use is kept: {}",
        out.capacity()
    );
}

/// A small telemetry message waiting for credit (its reply channel's receiver dropped).
fn waiting_job(i: u32) -> Job {
    let (reply, _) = oneshot::channel();
    Job {
        link: telemetry(),
        message: i.to_be_bytes().to_vec(),
        deadline: Instant::now() + Duration::from_secs(1),
        wait: Duration::from_secs(1),
        reply: Reply::Wait(reply),
    }
}

/// A burst that waited for credit gives its queue's room back once the last of it is sent (a 16 MiB
/// burst of small messages is ~200,000 slots, megabytes kept per link before).
#[test]
fn a_links_queue_gives_back_its_room_after_a_burst() {
    let mut pending = Pending::default();
    for i in 0..20_000u32 {
        pending.push_back(waiting_job(i));
    }
    assert!(pending.jobs.capacity() >= 20_000);
    while pending.pop_front().is_some() {}
    assert_eq!(pending.bytes, 0);
    assert!(
        pending.jobs.capacity() < PENDING_KEPT * 2,
        "kept {} slots",
        pending.jobs.capacity()
    );
    // A queue that stays small keeps its room: no allocation per flow.
    for _ in 0..2 {
        for i in 0..200u32 {
            pending.push_back(waiting_job(i));
        }
        let before = pending.jobs.capacity();
        while pending.pop_front().is_some() {}
        assert_eq!(pending.jobs.capacity(), before);
    }
}

/// The unsettled map and its deadlines give back what a backlog grew once it is over (checked at the
/// tick), and keep their room while a steady load holds a share of it.
#[test]
fn unsettled_deliveries_give_back_their_room_after_a_backlog() {
    assert_eq!(room_to_keep(10, 100_000), Some(UNSETTLED_KEPT));
    assert_eq!(room_to_keep(5_000, 100_000), Some(10_000));
    assert_eq!(room_to_keep(10, 8 * UNSETTLED_KEPT), None, "small enough");
    assert_eq!(room_to_keep(3_000, 40_000), None, "still in use");

    let mut map: HashMap<u32, u32> = (0..100_000).map(|i| (i, i)).collect();
    map.retain(|&k, _| k < 10);
    let keep = room_to_keep(map.len(), map.capacity()).expect("a backlog's room");
    map.shrink_to(keep);
    assert!(
        map.capacity() < 2 * UNSETTLED_KEPT,
        "kept {}",
        map.capacity()
    );
    assert_eq!(
        room_to_keep(map.len(), map.capacity()),
        None,
        "once, not every tick"
    );
}
