//! Cluster mode (`messaging.mode: nats`): the router against a real `nats-server` with JetStream. The
//! test plays the adapters with a plain NATS client, exactly as they publish (the AMQP message as
//! payload, docs/cluster.md), and the applications with fe2o3-amqp.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use fe2o3_amqp::types::messaging::message::__private::Serializable;
use fe2o3_amqp::types::messaging::{Message, Outcome as AmqpOutcome, Properties};
use fe2o3_amqp::types::primitives::Binary;
use ferry_nats::outcome::Outcome;
use ferry_nats::{headers, routes, subjects};
use ferry_test_support::NatsServer;
use futures_util::StreamExt;

use crate::harness::*;

fn encode<B: fe2o3_amqp::types::messaging::SerializableBody>(m: &Message<B>) -> Bytes {
    Bytes::from(serde_amqp::to_vec(&Serializable(m)).expect("encodes"))
}

async fn cluster(nats: &NatsServer) -> (Platform, async_nats::Client) {
    let url = nats.url();
    let mut p = Platform::start_without_router().await;
    p.start_router_with(|c| {
        c.messaging.mode = ferry_nats::MessagingMode::Nats;
        c.messaging.nats.urls = vec![url.clone()];
        c.event_redelivery_secs = 2;
    })
    .await;
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    (p, client)
}

async fn request(
    client: &async_nats::Client,
    subject: String,
    payload: Bytes,
) -> Result<Outcome, String> {
    let answer = tokio::time::timeout(Duration::from_secs(5), client.request(subject, payload))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("{:?}", e.kind()))?;
    Outcome::decode(&answer.payload).ok_or_else(|| "not an outcome".to_owned())
}

/// The events t1's stream holds, once it holds none or after about 2.5 s (acks are applied a moment
/// after they are sent).
async fn stored_after_a_while(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream("FERRY_EVENTS_t1").await.expect("stream");
    let mut left = u64::MAX;
    for _ in 0..50 {
        left = stream.info().await.expect("info").state.messages;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    left
}

/// Waits until the router's queue subscription for `subject` is there (an attach starts it).
async fn until_subscribed(client: &async_nats::Client, subject: &str) {
    for _ in 0..100 {
        let probe = client
            .send_request(
                subject.to_owned(),
                async_nats::Request::new()
                    .payload(Bytes::from_static(b"probe"))
                    .timeout(Some(Duration::from_millis(500))),
            )
            .await;
        match probe {
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return,
        }
    }
    panic!("nobody subscribed to {subject}");
}

#[tokio::test]
async fn telemetry_from_nats_reaches_the_application_and_qos1_waits_for_its_accept() {
    let nats = NatsServer::start();
    let (p, client) = cluster(&nats).await;
    let subject = subjects::telemetry("t1");

    // Nobody consumes: NATS says "no responders" (the adapter answers 503 at once).
    let token = p.assertion("t1", "d1").await;
    let msg = encode(&device_message("d1", Some(&token), b"first"));
    assert_eq!(
        request(&client, subject.clone(), msg.clone()).await,
        Err("NoResponders".into())
    );

    let mut app = p.app("app1", "pw1").await;
    let mut rx = fe2o3_amqp::Receiver::builder()
        .name("rcv-telemetry")
        .source("telemetry/t1")
        .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Manual)
        .attach(&mut app.session)
        .await
        .expect("attach");
    rx.set_credit(10).await.expect("credit");
    until_subscribed(&client, &subject).await;

    // QoS 1: the answer comes only when the application settles.
    let asked = tokio::spawn({
        let client = client.clone();
        let subject = subject.clone();
        async move { request(&client, subject, msg).await }
    });
    let d = recv_within(&mut rx, 3000).await.expect("delivered");
    assert_eq!(body_bytes(&d), b"first");
    assert!(
        app_prop(&d, "reg_assertion").is_none(),
        "the assertion is stripped"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !asked.is_finished(),
        "answered before the application settled"
    );
    rx.accept(&d).await.expect("accept");
    assert_eq!(asked.await.expect("join"), Ok(Outcome::Accepted));

    // QoS 0 (no reply subject): delivered pre-settled.
    client
        .publish(
            subject.clone(),
            encode(&device_message("d1", Some(&token), b"qos0")),
        )
        .await
        .expect("publish");
    let d = recv_within(&mut rx, 3000).await.expect("qos0 delivered");
    assert_eq!(body_bytes(&d), b"qos0");

    // HTTP QoS 0: answered `accepted` as soon as it is handed over.
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::PRESETTLED, "1");
    let answer = client
        .request_with_headers(
            subject.clone(),
            h,
            encode(&device_message("d1", Some(&token), b"http")),
        )
        .await
        .expect("answer");
    assert_eq!(Outcome::decode(&answer.payload), Some(Outcome::Accepted));
    assert!(recv_within(&mut rx, 3000).await.is_some());

    // A message with another tenant's assertion, or none, is refused and never delivered.
    let other = p.assertion("t2", "d1").await;
    for bad in [Some(other.as_str()), None] {
        let outcome = request(
            &client,
            subject.clone(),
            encode(&device_message("d1", bad, b"bad")),
        )
        .await;
        assert!(
            matches!(outcome, Ok(Outcome::Rejected { .. })),
            "{bad:?}: {outcome:?}"
        );
    }
    assert!(
        recv_within(&mut rx, 300).await.is_none(),
        "a refused message was delivered"
    );

    // The consumer leaves: nobody subscribes any more.
    rx.close().await.expect("detach");
    let mut gone = false;
    for _ in 0..50 {
        if request(
            &client,
            subject.clone(),
            encode(&device_message("d1", Some(&token), b"x")),
        )
        .await
            == Err("NoResponders".into())
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gone,
        "the router still subscribes after its last consumer left"
    );
}

/// A QoS 1 telemetry request an application holds unsettled gets progress reports on its reply subject
/// until the outcome, so the adapter can tell a slow application from a router that died holding it
/// (it asks again after a quiet while, `ferry_nats::requests`).
#[tokio::test]
async fn a_held_telemetry_request_gets_progress_reports_until_its_outcome() {
    let nats = NatsServer::start();
    let (p, client) = cluster(&nats).await;
    let subject = subjects::telemetry("t1");
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 10).await;
    until_subscribed(&client, &subject).await;
    let token = p.assertion("t1", "d1").await;
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.expect("inbox");
    client
        .publish_with_reply(
            subject,
            inbox,
            encode(&device_message("d1", Some(&token), b"slow")),
        )
        .await
        .expect("publish");
    let d = recv_within(&mut rx, 3000).await.expect("delivered");
    // Held three times the report interval.
    let held = tokio::time::Instant::now() + ferry_nats::requests::PROGRESS_EVERY * 3;
    let mut reports = 0;
    while let Ok(Some(m)) = tokio::time::timeout_at(held, answers.next()).await {
        assert!(
            ferry_nats::requests::is_progress(&m),
            "an outcome before the application settled"
        );
        reports += 1;
    }
    assert!(
        reports >= 1,
        "no progress reported while the message was held"
    );
    rx.accept(&d).await.expect("accept");
    // A report sent just before the accept may still arrive first; the outcome follows it.
    let last = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let m = answers.next().await.expect("a message");
            if !ferry_nats::requests::is_progress(&m) {
                break m;
            }
        }
    })
    .await
    .expect("the outcome");
    assert_eq!(Outcome::decode(&last.payload), Some(Outcome::Accepted));
}

/// While a registry announces that a console watches a tenant, the router publishes a copy of each
/// telemetry message of that tenant it forwarded for the live view; before (and for other tenants) none.
#[tokio::test]
async fn a_watched_tenants_forwarded_telemetry_is_copied_for_the_live_view() {
    let nats = NatsServer::start();
    let (p, client) = cluster(&nats).await;
    let subject = subjects::telemetry("t1");
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("telemetry/t1", 100).await;
    until_subscribed(&client, &subject).await;
    let mut copies = client
        .subscribe(subjects::tap_telemetry("t1"))
        .await
        .expect("subscribe");
    let token = p.assertion("t1", "d1").await;
    let send = |body: &'static [u8]| {
        let client = client.clone();
        let m = encode(&device_message("d1", Some(&token), body));
        let subject = subject.clone();
        async move { client.publish(subject, m).await.expect("publish") }
    };
    send(b"unwatched").await;
    recv_within(&mut rx, 3000).await.expect("delivered");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), copies.next())
            .await
            .is_err(),
        "copied although nobody watches"
    );
    // A console opens t1's live view.
    client
        .publish(subjects::TAP_WATCHING, Bytes::from_static(b"t1"))
        .await
        .expect("announce");
    client.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(b"watched").await;
    let d = recv_within(&mut rx, 3000).await.expect("delivered");
    assert_eq!(body_bytes(&d), b"watched", "the application still gets it");
    let copy = tokio::time::timeout(Duration::from_secs(3), copies.next())
        .await
        .expect("a copy")
        .expect("a message");
    assert!(
        copy.payload.windows(7).any(|w| w == b"watched"),
        "the copy is the message"
    );
}

#[tokio::test]
async fn two_routers_share_one_tenants_telemetry() {
    let nats = NatsServer::start();
    let (p1, client) = cluster(&nats).await;
    let (p2, _) = cluster_on(&nats, &p1).await;
    let mut a1 = p1.app("app1", "pw1").await;
    let mut a2 = p2.app("app1", "pw1").await;
    let mut r1 = a1.receiver("telemetry/t1", 100).await;
    let mut r2 = a2.receiver("telemetry/t1", 100).await;
    let subject = subjects::telemetry("t1");
    until_subscribed(&client, &subject).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let token = p1.assertion("t1", "d1").await;
    for i in 0..40 {
        let m = encode(&device_message(
            "d1",
            Some(&token),
            format!("m{i}").as_bytes(),
        ));
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::PRESETTLED, "1");
        let answer = client
            .request_with_headers(subject.clone(), h, m)
            .await
            .expect("answer");
        assert_eq!(Outcome::decode(&answer.payload), Some(Outcome::Accepted));
    }
    let mut n1 = 0;
    while recv_within(&mut r1, 300).await.is_some() {
        n1 += 1;
    }
    let mut n2 = 0;
    while recv_within(&mut r2, 300).await.is_some() {
        n2 += 1;
    }
    assert_eq!(n1 + n2, 40, "every message once");
    assert!(n1 > 0 && n2 > 0, "both routers took some: {n1} / {n2}");
}

/// A router whose consumers have no credit left leaves the tenant's queue group until they grant some,
/// so NATS hands the telemetry to the router whose consumer can take it instead of to one that would
/// release it.
#[tokio::test]
async fn a_router_without_credit_leaves_telemetry_to_one_with_credit() {
    let nats = NatsServer::start();
    let (p1, client) = cluster(&nats).await;
    let (p2, _) = cluster_on(&nats, &p1).await;
    let mut a1 = p1.app("app1", "pw1").await;
    let mut a2 = p2.app("app1", "pw1").await;
    let mut r1 = a1.receiver("telemetry/t1", 2).await;
    let mut r2 = a2.receiver("telemetry/t1", 100).await;
    let subject = subjects::telemetry("t1");
    until_subscribed(&client, &subject).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let token = p1.assertion("t1", "d1").await;
    let mut released = 0;
    for i in 0..40 {
        let m = encode(&device_message(
            "d1",
            Some(&token),
            format!("m{i}").as_bytes(),
        ));
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::PRESETTLED, "1");
        let answer = client
            .request_with_headers(subject.clone(), h, m)
            .await
            .expect("answer");
        if Outcome::decode(&answer.payload) != Some(Outcome::Accepted) {
            released += 1;
        }
    }
    assert_eq!(
        released, 0,
        "messages released while another router had credit"
    );
    let mut n1 = 0;
    while recv_within(&mut r1, 300).await.is_some() {
        n1 += 1;
    }
    let mut n2 = 0;
    while recv_within(&mut r2, 300).await.is_some() {
        n2 += 1;
    }
    assert!(n1 <= 2, "router 1 sent beyond its consumer's credit: {n1}");
    assert_eq!(n1 + n2, 40, "every message once");
}

/// The router's `ferry_router_command_instances` gauge.
fn instances(p: &Platform) -> Option<i64> {
    p.admin.encode_metrics().lines().find_map(|l| {
        l.strip_prefix("ferry_router_command_instances ")
            .and_then(|v| v.trim().parse().ok())
    })
}

async fn instances_become(p: &Platform, want: i64) {
    for _ in 0..100 {
        if instances(p) == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("instances: {:?}, wanted {want}", instances(p));
}

/// Adapter instances come and go (pods are replaced under new ids): a router keeps a stand-in consumer
/// only for the instances that hold command routes, so they do not pile up.
#[tokio::test]
async fn adapter_instances_that_hold_no_routes_are_forgotten() {
    let nats = NatsServer::start();
    let (p, client) = cluster(&nats).await;
    assert!(
        p.admin
            .encode_metrics()
            .contains("ferry_router_presence_updates_dropped_total 0"),
        "the presence writer's drops are exported"
    );
    let js = jetstream::new(client.clone());
    let bucket = routes::bucket(&js, 1).await.expect("bucket");
    let key = |i: usize| routes::key(routes::RouteKind::Device, "t1", &format!("d{i}"));
    for i in 0..20 {
        bucket
            .put(key(i), Bytes::from(format!("mqtt-{i}")))
            .await
            .expect("put");
    }
    instances_become(&p, 20).await;
    for i in 0..20 {
        bucket.delete(key(i)).await.expect("delete");
    }
    instances_become(&p, 0).await;

    // A device moving from one instance to another leaves the first with nothing.
    bucket
        .put(key(0), Bytes::from_static(b"mqtt-a"))
        .await
        .expect("put");
    instances_become(&p, 1).await;
    bucket
        .put(key(0), Bytes::from_static(b"mqtt-b"))
        .await
        .expect("put");
    bucket
        .put(key(1), Bytes::from_static(b"mqtt-b"))
        .await
        .expect("put");
    tokio::time::sleep(Duration::from_millis(300)).await;
    instances_become(&p, 1).await;
}

/// A second router on the same registry and NATS.
async fn cluster_on(nats: &NatsServer, first: &Platform) -> (Platform, async_nats::Client) {
    let url = nats.url();
    let mut p = Platform::on_registry(first).await;
    p.start_router_with(|c| {
        c.messaging.mode = ferry_nats::MessagingMode::Nats;
        c.messaging.nats.urls = vec![url.clone()];
        c.event_redelivery_secs = 2;
    })
    .await;
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    (p, client)
}

#[tokio::test]
async fn events_wait_in_jetstream_and_come_back_until_accepted() {
    let nats = NatsServer::start();
    let (p, client) = cluster(&nats).await;
    let js = jetstream::new(client.clone());
    ferry_nats::streams::event_stream(&js, "t1", ferry_nats::streams::EventLimits::default(), 1)
        .await
        .expect("stream");
    let token = p.assertion("t1", "d1").await;
    for i in 0..3 {
        js.publish(
            subjects::event("t1"),
            encode(&device_message(
                "d1",
                Some(&token),
                format!("e{i}").as_bytes(),
            )),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    }
    // Stored while nobody consumes; delivered when an application attaches.
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("event/t1", 10).await;
    let first = recv_within(&mut rx, 5000).await.expect("e0");
    assert_eq!(body_bytes(&first), b"e0");
    // Released: handed back, and delivered again.
    rx.release(&first).await.expect("release");
    let mut seen = Vec::new();
    while let Some(d) = recv_within(&mut rx, 3000).await {
        seen.push(String::from_utf8(body_bytes(&d)).expect("utf8"));
        rx.accept(&d).await.expect("accept");
        if seen.len() == 3 {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, ["e0", "e1", "e2"]);
    // Accepted events leave the stream.
    assert_eq!(
        stored_after_a_while(&js).await,
        0,
        "accepted events are still stored"
    );
}

#[tokio::test]
async fn an_event_unsettled_on_a_router_that_stops_is_delivered_by_another() {
    let nats = NatsServer::start();
    let (p1, client) = cluster(&nats).await;
    let (p2, _) = cluster_on(&nats, &p1).await;
    let js = jetstream::new(client.clone());
    ferry_nats::streams::event_stream(&js, "t1", ferry_nats::streams::EventLimits::default(), 1)
        .await
        .expect("stream");
    let token = p1.assertion("t1", "d1").await;
    js.publish(
        subjects::event("t1"),
        encode(&device_message("d1", Some(&token), b"once")),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    // Router 1's application takes it and never settles; its router goes away.
    let mut a1 = p1.app("app1", "pw1").await;
    let mut r1 = a1.receiver("event/t1", 10).await;
    let d = recv_within(&mut r1, 5000)
        .await
        .expect("delivered on router 1");
    assert_eq!(body_bytes(&d), b"once");
    let mut p1 = p1;
    // The router stops with the event unsettled (a crash, kill -9, is in the cluster e2e suite).
    std::mem::forget(r1);
    std::mem::forget(a1);
    p1.stop_router().await;
    // Router 2 gets it after the redelivery wait (2 s here).
    let mut a2 = p2.app("app1", "pw1").await;
    let mut r2 = a2.receiver("event/t1", 10).await;
    let d = recv_within(&mut r2, 8000)
        .await
        .expect("redelivered on router 2");
    assert_eq!(body_bytes(&d), b"once");
    r2.accept(&d).await.expect("accept");
}

/// The redelivery wait is short (a dead router's events come back soon), so a router tells JetStream
/// that an event its application still holds is in progress: before, an application that took longer
/// than the wait to settle got the event also delivered through another router.
#[tokio::test]
async fn an_event_held_longer_than_the_redelivery_wait_is_not_given_to_another_router() {
    let nats = NatsServer::start();
    let (p1, client) = cluster(&nats).await;
    let (p2, _) = cluster_on(&nats, &p1).await;
    let js = jetstream::new(client.clone());
    ferry_nats::streams::event_stream(&js, "t1", ferry_nats::streams::EventLimits::default(), 1)
        .await
        .expect("stream");
    let token = p1.assertion("t1", "d1").await;
    let mut a1 = p1.app("app1", "pw1").await;
    let mut r1 = a1.receiver("event/t1", 10).await;
    js.publish(
        subjects::event("t1"),
        encode(&device_message("d1", Some(&token), b"slow")),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let d = recv_within(&mut r1, 5000)
        .await
        .expect("delivered on router 1");
    let mut a2 = p2.app("app1", "pw1").await;
    let mut r2 = a2.receiver("event/t1", 10).await;
    // Held for more than twice the redelivery wait (2 s here).
    assert!(
        recv_within(&mut r2, 5000).await.is_none(),
        "an event held on router 1 was delivered again on router 2"
    );
    r1.accept(&d).await.expect("accept");
    assert_eq!(
        stored_after_a_while(&js).await,
        0,
        "the accepted event is still stored"
    );
}

#[tokio::test]
async fn commands_reach_the_instance_named_in_the_route_bucket_and_fail_fast_when_it_is_gone() {
    let nats = NatsServer::start();
    let (p, client) = cluster(&nats).await;
    let js = jetstream::new(client.clone());
    let bucket = routes::bucket(&js, 1).await.expect("bucket");
    // The adapter instance `mqtt-a` serves t1/d1 and answers its commands.
    bucket
        .put(
            routes::key(routes::RouteKind::Device, "t1", "d1"),
            Bytes::from_static(b"mqtt-a"),
        )
        .await
        .expect("put");
    let mut instance = client
        .subscribe(subjects::command("mqtt-a"))
        .await
        .expect("sub");
    let adapter = client.clone();
    let serving = tokio::spawn(async move {
        let msg = instance.next().await.expect("a command");
        let reply = msg.reply.clone().expect("a request");
        adapter
            .publish(reply, Outcome::Accepted.encode())
            .await
            .expect("answer");
        // The instance goes away: its interest must have left the server before the next
        // command, or that command goes to a subscription nobody reads (the router then waits
        // for its full command timeout). A flush round-trips a PING after the UNSUB.
        instance.unsubscribe().await.expect("unsubscribe");
        adapter.flush().await.expect("flush");
        msg.payload
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut app = p.app("app1", "pw1").await;
    let mut tx = app.sender("command/t1").await;
    let cmd = Message::builder()
        .properties(
            Properties::builder()
                .to("command/t1/d1")
                .subject("light")
                .message_id(String::from("c1"))
                .build(),
        )
        .data(Binary::from(b"on".to_vec()))
        .build();
    let outcome = tokio::time::timeout(Duration::from_secs(5), tx.send(cmd.clone()))
        .await
        .expect("settled in time")
        .expect("send");
    assert!(matches!(outcome, AmqpOutcome::Accepted(_)), "{outcome:?}");
    let payload = serving.await.expect("join");
    assert!(
        payload.windows(5).any(|w| w == b"light"),
        "the instance got the command as sent"
    );

    // The instance is gone (nobody subscribes): released at once, and its route deleted.
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), tx.send(cmd.clone()))
        .await
        .expect("settled in time")
        .expect("send");
    assert!(matches!(outcome, AmqpOutcome::Released(_)), "{outcome:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let mut deleted = false;
    for _ in 0..50 {
        if bucket
            .get(routes::key(routes::RouteKind::Device, "t1", "d1"))
            .await
            .expect("get")
            .is_none()
        {
            deleted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(deleted, "the dead instance's route is still there");
}

#[tokio::test]
async fn a_command_response_from_nats_reaches_the_waiting_application() {
    let nats = NatsServer::start();
    let (p, client) = cluster(&nats).await;
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("command_response/t1/r-42", 10).await;
    let subject = subjects::command_response("t1", "r-42");
    until_subscribed(&client, &subject).await;
    let response = Message::builder()
        .properties(
            Properties::builder()
                .to("command_response/t1/r-42")
                .correlation_id(String::from("c1"))
                .build(),
        )
        .application_properties(
            fe2o3_amqp::types::messaging::ApplicationProperties::builder()
                .insert("status", 200)
                .insert("device_id", "d1")
                .insert("tenant_id", "t1")
                .build(),
        )
        .data(Binary::from(b"done".to_vec()))
        .build();
    let asked = tokio::spawn({
        let client = client.clone();
        async move { request(&client, subject, encode(&response)).await }
    });
    let d = recv_within(&mut rx, 3000)
        .await
        .expect("response delivered");
    assert_eq!(body_bytes(&d), b"done");
    rx.accept(&d).await.expect("accept");
    assert_eq!(asked.await.expect("join"), Ok(Outcome::Accepted));
}

#[tokio::test]
async fn in_cluster_mode_adapters_cannot_attach_to_the_router() {
    let nats = NatsServer::start();
    let (p, _client) = cluster(&nats).await;
    let mut adapter = p.adapter().await;
    let refused = fe2o3_amqp::Sender::attach(&mut adapter.session, "snd", "telemetry/t1").await;
    assert!(refused.is_err(), "an adapter's producer link was accepted");
}
