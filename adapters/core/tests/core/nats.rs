//! Cluster mode: the downstream on a real nats-server, with this test playing the router's side with a
//! plain NATS client (docs/cluster.md "Adapters on NATS").

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use fe2o3_amqp::types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp::types::messaging::{Body, Data, Message, Properties};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Value};
use ferry_adapter_core::downstream::{
    DeviceMessage, Downstream, DownstreamError, MessageKind, NatsDownstreamConfig, SendOutcome,
};
use ferry_core::shutdown::{self, Trigger};
use ferry_nats::outcome::Outcome;
use ferry_nats::routes::{self, RouteKind};
use ferry_nats::streams::{self, EventLimits};
use ferry_nats::{headers, subjects, NatsConfig};
use ferry_test_support::NatsServer;
use futures_util::StreamExt;

use crate::harness::{device, tenant};

struct Bus {
    server: NatsServer,
    /// The router's side.
    router: async_nats::Client,
    _trigger: Trigger,
    shutdown: ferry_core::shutdown::Shutdown,
}

impl Bus {
    async fn start() -> Self {
        let server = NatsServer::start();
        let router = ferry_nats::connect(&nats_config(&server), "test-router")
            .await
            .expect("router connects");
        let (trigger, shutdown) = shutdown::channel();
        Self {
            server,
            router,
            _trigger: trigger,
            shutdown,
        }
    }

    fn config(&self) -> NatsDownstreamConfig {
        let mut c = NatsDownstreamConfig::new(nats_config(&self.server), "ferry-test-adapter");
        c.outcome_timeout = Duration::from_millis(1500);
        c
    }

    async fn downstream(&self, config: NatsDownstreamConfig) -> Downstream {
        Downstream::connect_nats(config, self.shutdown.clone())
            .await
            .expect("adapter connects")
    }

    /// Answers every request on `subject` with `outcome` after `delay`; returns what it saw.
    async fn respond(
        &self,
        subject: String,
        outcome: Outcome,
        delay: Duration,
    ) -> tokio::sync::mpsc::Receiver<async_nats::Message> {
        let mut sub = self.router.subscribe(subject).await.expect("subscribe");
        ferry_nats::round_trip(&self.router, Duration::from_secs(5))
            .await
            .expect("subscribed");
        let (tx, rx) = tokio::sync::mpsc::channel(100);
        let client = self.router.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                tokio::time::sleep(delay).await;
                if let Some(reply) = m.reply.clone() {
                    let _ = client.publish(reply, outcome.encode()).await;
                }
                let _ = tx.send(m).await;
            }
        });
        rx
    }
}

fn nats_config(server: &NatsServer) -> NatsConfig {
    NatsConfig {
        urls: vec![server.url()],
        ..NatsConfig::default()
    }
}

fn message(kind: MessageKind, t: &str, qos: u8) -> DeviceMessage {
    DeviceMessage {
        kind,
        tenant: tenant(t),
        device_id: device("d1"),
        qos,
        content_type: Some("text/plain".into()),
        payload: Bytes::from_static(b"21.5"),
        assertion: Arc::from("jwt"),
        orig_adapter: "hono-mqtt",
        orig_address: "telemetry".into(),
        ttl_ms: None,
        ttd: None,
        extra_properties: Vec::new(),
        stored_limits: None,
    }
}

/// The AMQP message a NATS payload carries, as the router's codec reads it.
fn amqp(payload: &[u8]) -> Message<Body<Value>> {
    serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(payload)
        .expect("an AMQP message")
        .0
}

fn device_id_of(m: &Message<Body<Value>>) -> Option<&SimpleValue> {
    m.application_properties
        .as_ref()?
        .0
        .as_inner()
        .get("device_id")
}

#[tokio::test]
async fn qos1_is_accepted_only_after_the_routers_reply() {
    let bus = Bus::start().await;
    let mut seen = bus
        .respond(
            subjects::telemetry("t1"),
            Outcome::Accepted,
            Duration::from_millis(300),
        )
        .await;
    let ds = bus.downstream(bus.config()).await;
    let started = Instant::now();
    let outcome = ds
        .send(message(MessageKind::Telemetry, "t1", 1))
        .await
        .expect("sent");
    assert_eq!(outcome, SendOutcome::Accepted);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "accepted before the router replied"
    );
    let m = seen.recv().await.expect("the router saw it");
    assert_eq!(
        m.headers
            .as_ref()
            .and_then(|h| h.get(headers::DEVICE))
            .map(|v| v.as_str()),
        Some("d1")
    );
    assert!(m
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::PRESETTLED))
        .is_none());
    let a = amqp(&m.payload);
    assert_eq!(device_id_of(&a), Some(&SimpleValue::String("d1".into())));
    assert!(
        matches!(a.body, Body::Data(_)),
        "the payload is one Data section"
    );

    // A rejection keeps its condition.
    let bus2 = Bus::start().await;
    let _r = bus2
        .respond(
            subjects::telemetry("t1"),
            Outcome::Rejected {
                condition: Some("amqp:precondition-failed".into()),
                description: Some("bad assertion".into()),
            },
            Duration::ZERO,
        )
        .await;
    let ds2 = bus2.downstream(bus2.config()).await;
    assert_eq!(
        ds2.send(message(MessageKind::Telemetry, "t1", 1)).await,
        Ok(SendOutcome::Rejected {
            condition: Some("amqp:precondition-failed".into()),
            description: Some("bad assertion".into()),
        })
    );
}

#[tokio::test]
async fn qos1_without_a_router_fails_at_once_and_a_silent_router_times_out() {
    let bus = Bus::start().await;
    let ds = bus.downstream(bus.config()).await;
    let started = Instant::now();
    assert_eq!(
        ds.send(message(MessageKind::Telemetry, "t1", 1)).await,
        Err(DownstreamError::NoCredit)
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no responders is answered at once, took {:?}",
        started.elapsed()
    );

    // A router that takes the message and never answers: busy, after the bound.
    let _never = bus
        .router
        .subscribe(subjects::telemetry("t2"))
        .await
        .expect("sub");
    ferry_nats::round_trip(&bus.router, Duration::from_secs(5))
        .await
        .expect("subscribed");
    let started = Instant::now();
    assert_eq!(
        ds.send(message(MessageKind::Telemetry, "t2", 1)).await,
        Err(DownstreamError::Timeout)
    );
    assert!(started.elapsed() >= Duration::from_millis(1400));
}

#[tokio::test]
async fn http_qos0_asks_the_router_and_hears_nobody_consumes() {
    let bus = Bus::start().await;
    let mut config = bus.config();
    config.confirm_qos0 = true;
    let ds = bus.downstream(config).await;
    assert_eq!(
        ds.send(message(MessageKind::Telemetry, "t1", 0)).await,
        Err(DownstreamError::NoCredit),
        "no router: 503"
    );
    let mut seen = bus
        .respond(subjects::telemetry("t1"), Outcome::Accepted, Duration::ZERO)
        .await;
    let outcome = ds
        .send(message(MessageKind::Telemetry, "t1", 0))
        .await
        .expect("sent");
    assert!(outcome.is_accepted(), "{outcome:?}");
    let m = seen.recv().await.expect("seen");
    assert!(
        m.headers
            .as_ref()
            .and_then(|h| h.get(headers::PRESETTLED))
            .is_some(),
        "marked pre-settled"
    );

    // A router without a consumer releases it: 503 as well.
    let _r = bus
        .respond(subjects::telemetry("t3"), Outcome::Released, Duration::ZERO)
        .await;
    let outcome = ds
        .send(message(MessageKind::Telemetry, "t3", 0))
        .await
        .expect("sent");
    assert!(!outcome.is_accepted());
}

#[tokio::test]
async fn mqtt_qos0_is_published_without_waiting() {
    let bus = Bus::start().await;
    let ds = bus.downstream(bus.config()).await;
    // Nobody listens: still written, nobody is asked.
    assert_eq!(
        ds.send(message(MessageKind::Telemetry, "t1", 0)).await,
        Ok(SendOutcome::Presettled)
    );
    let mut sub = bus
        .router
        .subscribe(subjects::telemetry("t1"))
        .await
        .expect("sub");
    ferry_nats::round_trip(&bus.router, Duration::from_secs(5))
        .await
        .expect("subscribed");
    for _ in 0..10 {
        assert_eq!(
            ds.send(message(MessageKind::Telemetry, "t1", 0)).await,
            Ok(SendOutcome::Presettled)
        );
    }
    for _ in 0..10 {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("in time")
            .expect("message");
        assert!(m.reply.is_none(), "no reply wanted");
        let a = amqp(&m.payload);
        assert_eq!(device_id_of(&a), Some(&SimpleValue::String("d1".into())));
    }
}

/// JetStream may refuse a tenant's stream for a moment (a cluster forming, a node coming back): the
/// event waits for it within the outcome bound instead of failing (and disconnecting its device) at
/// once; past the bound it fails as "busy".
#[tokio::test]
async fn an_event_waits_within_the_bound_for_its_stream_to_be_possible() {
    let bus = Bus::start().await;
    let js = jetstream::new(bus.router.clone());
    // Another stream holds the tenant's subject, so the tenant's own cannot be made yet.
    let squat = |name: &str| jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![subjects::event("t1")],
        ..Default::default()
    };
    js.create_stream(squat("SQUATTER")).await.expect("squatter");
    let ds = bus.downstream(bus.config()).await;
    let js2 = js.clone();
    let freed = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        js2.delete_stream("SQUATTER").await.expect("deleted");
    });
    assert_eq!(
        ds.send(message(MessageKind::Event, "t1", 1)).await,
        Ok(SendOutcome::Accepted)
    );
    freed.await.expect("join");

    // A squatter that stays: "busy" after the bound (1.5 s here), nothing stored elsewhere.
    js.create_stream(jetstream::stream::Config {
        name: "SQUATTER2".into(),
        subjects: vec![subjects::event("t2")],
        ..Default::default()
    })
    .await
    .expect("squatter for t2");
    let started = Instant::now();
    assert_eq!(
        ds.send(message(MessageKind::Event, "t2", 1)).await,
        Err(DownstreamError::Timeout)
    );
    assert!(started.elapsed() >= Duration::from_millis(1400));
}

/// A stream that exists but cannot take the event yet (a new replicated stream answers nobody until it
/// has a leader): the event is tried again within the bound instead of failing at the second try.
#[tokio::test]
async fn an_event_waits_within_the_bound_for_its_stream_to_take_it() {
    let bus = Bus::start().await;
    let js = jetstream::new(bus.router.clone());
    let name = streams::event_stream_name("t1");
    let mut config = jetstream::stream::Config {
        name: name.clone(),
        subjects: vec!["elsewhere.t1".into()],
        ..Default::default()
    };
    js.create_stream(config.clone()).await.expect("stream");
    let ds = bus.downstream(bus.config()).await;
    let js2 = js.clone();
    config.subjects = vec![subjects::event("t1")];
    let fixed = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        js2.update_stream(config).await.expect("updated");
    });
    assert_eq!(
        ds.send(message(MessageKind::Event, "t1", 1)).await,
        Ok(SendOutcome::Accepted)
    );
    fixed.await.expect("join");
}

#[tokio::test]
async fn an_event_is_stored_in_its_tenants_stream_before_it_is_accepted() {
    let bus = Bus::start().await;
    let js = jetstream::new(bus.router.clone());
    let name = streams::event_stream_name("t.1");
    assert!(js.get_stream(&name).await.is_err(), "no stream yet");
    let mut config = bus.config();
    config.event_limits = EventLimits {
        // Above the stream's 2-minute duplicate window, which JetStream requires.
        max_age: Duration::from_secs(300),
        ..EventLimits::default()
    };
    let ds = bus.downstream(config).await;
    let mut ev = message(MessageKind::Event, "t.1", 1);
    ev.ttl_ms = Some(3_600_500);
    assert_eq!(ds.send(ev).await, Ok(SendOutcome::Accepted));
    // Accepted means stored: it is in the stream now, with no wait.
    let mut stream = js.get_stream(&name).await.expect("created on first use");
    assert_eq!(stream.info().await.expect("info").state.messages, 1);
    let mut plain = message(MessageKind::Event, "t.1", 1);
    plain.ttl_ms = Some(1500);
    assert_eq!(ds.send(plain).await, Ok(SendOutcome::Accepted));

    let consumer = streams::event_consumer(&stream, 10, Duration::from_secs(30))
        .await
        .expect("consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(2)
        .messages()
        .await
        .expect("fetch");
    let mut ids = Vec::new();
    for want_ttl in ["300s", "2s"] {
        let m = batch.next().await.expect("one").expect("message");
        let h = m.headers.as_ref().expect("headers");
        assert_eq!(
            h.get(headers::TTL).map(|v| v.as_str()),
            Some(want_ttl),
            "the TTL, capped by the stream's max_age, in whole seconds"
        );
        assert_eq!(h.get(headers::DEVICE).map(|v| v.as_str()), Some("d1"));
        ids.push(h.get(headers::MSG_ID).expect("msg id").as_str().to_owned());
        let a = amqp(&m.payload);
        assert!(a.header.as_ref().is_some_and(|h| h.durable));
    }
    assert_ne!(ids[0], ids[1], "each event has its own id");
}

#[tokio::test]
async fn a_full_stream_refuses_its_tenant_while_another_goes_on() {
    let bus = Bus::start().await;
    let mut config = bus.config();
    config.event_limits = EventLimits {
        max_events: 2,
        ..EventLimits::default()
    };
    let ds = bus.downstream(config).await;
    for _ in 0..2 {
        assert_eq!(
            ds.send(message(MessageKind::Event, "full", 1)).await,
            Ok(SendOutcome::Accepted)
        );
    }
    let refused = ds.send(message(MessageKind::Event, "full", 1)).await;
    assert!(
        matches!(&refused, Ok(o) if !o.is_accepted()),
        "a full stream refuses (503): {refused:?}"
    );
    assert_eq!(
        ds.send(message(MessageKind::Event, "other", 1)).await,
        Ok(SendOutcome::Accepted)
    );
    let js = jetstream::new(bus.router.clone());
    let mut full = js
        .get_stream(streams::event_stream_name("full"))
        .await
        .expect("stream");
    assert_eq!(
        full.info().await.expect("info").state.messages,
        2,
        "nothing stored was dropped"
    );
}

/// A command as the router forwards it.
fn command_payload(to: &str, reply_to: Option<&str>) -> Bytes {
    let mut props = Properties::builder()
        .to(to)
        .subject("setBrightness")
        .message_id(String::from("cmd-1"));
    if let Some(r) = reply_to {
        props = props.reply_to(r);
    }
    let m: Message<Data> = Message::builder()
        .properties(props.content_type("application/json").build())
        .data(Binary::from(b"{\"brightness\":80}".to_vec()))
        .build();
    Bytes::from(serde_amqp::to_vec(&Serializable(&m)).expect("encode"))
}

/// Sends a command request, retrying while the adapter's subscription is not registered yet.
async fn command_request(router: &async_nats::Client, payload: Bytes) -> Option<Outcome> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match router
            .request(subjects::command("mqtt-1"), payload.clone())
            .await
        {
            Ok(m) => return Outcome::decode(&m.payload),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("command request failed: {e}"),
        }
    }
}

#[tokio::test]
async fn a_command_request_becomes_a_command_and_its_settlement_the_reply() {
    let bus = Bus::start().await;
    let ds = bus.downstream(bus.config()).await;
    let (_link, mut commands) = ds.commands("mqtt-1");
    let router = bus.router.clone();
    let accepted = tokio::spawn(async move {
        command_request(
            &router,
            command_payload("command/t1/d1", Some("command_response/t1/r1")),
        )
        .await
    });
    let c = tokio::time::timeout(Duration::from_secs(5), commands.recv())
        .await
        .expect("in time")
        .expect("a command");
    assert_eq!((c.tenant.as_str(), c.device.as_str()), ("t1", "d1"));
    assert_eq!(c.name, "setBrightness");
    assert_eq!(&c.payload[..], b"{\"brightness\":80}");
    assert_eq!(c.reply_to.as_deref(), Some("command_response/t1/r1"));
    c.accept();
    assert_eq!(accepted.await.expect("task"), Some(Outcome::Accepted));

    let router = bus.router.clone();
    let dropped = tokio::spawn(async move {
        command_request(&router, command_payload("command/t1/d1", None)).await
    });
    let c = commands.recv().await.expect("a command");
    drop(c);
    assert_eq!(dropped.await.expect("task"), Some(Outcome::Released));

    // Not a command: rejected at once, the adapter never sees it.
    let bad = command_request(&bus.router, Bytes::from_static(b"not amqp")).await;
    assert!(
        matches!(&bad, Some(Outcome::Rejected { condition: Some(c), .. }) if c == "hono:bad-request"),
        "{bad:?}"
    );
    assert!(commands.try_recv().is_err());
}

#[tokio::test]
async fn command_responses_go_to_the_router_holding_the_reply_to() {
    let bus = Bus::start().await;
    let ds = bus.downstream(bus.config()).await;
    let response = || ferry_adapter_core::downstream::CommandResponse {
        tenant: tenant("t1"),
        device: device("d1"),
        reply_to: "command_response/t1/app-7".into(),
        correlation_id: "cmd-1".into(),
        status: 200,
        content_type: None,
        payload: Bytes::from_static(b"ok"),
        ttl_ms: None,
    };
    assert_eq!(
        ds.send_response(response()).await,
        Ok(SendOutcome::Released),
        "nobody waits for it"
    );
    let mut seen = bus
        .respond(
            subjects::command_response("t1", "app-7"),
            Outcome::Accepted,
            Duration::ZERO,
        )
        .await;
    assert_eq!(
        ds.send_response(response()).await,
        Ok(SendOutcome::Accepted)
    );
    let m = seen.recv().await.expect("seen");
    let a = amqp(&m.payload);
    assert_eq!(
        a.properties.as_ref().and_then(|p| p.to.as_deref()),
        Some("command_response/t1/app-7")
    );
}

#[tokio::test]
async fn routes_are_written_to_the_bucket_and_a_newer_route_survives_unregister() {
    let bus = Bus::start().await;
    let ds = bus.downstream(bus.config()).await;
    let (link, _commands) = ds.commands("mqtt-1");
    let js = jetstream::new(bus.router.clone());
    let kv = routes::bucket(&js, 1).await.expect("bucket");
    let value = |key: String| {
        let kv = kv.clone();
        async move { kv.get(key).await.expect("get").map(|v| v.to_vec()) }
    };
    let (t1, d1, d2, gw) = (tenant("t1"), device("d1"), device("d2"), device("gw"));
    link.register(&t1, &d1).await.expect("register");
    link.register_gateway(&t1, &gw).await.expect("register gw");
    assert_eq!(
        value(routes::key(RouteKind::Device, "t1", "d1")).await,
        Some(b"mqtt-1".to_vec())
    );
    assert_eq!(
        value(routes::key(RouteKind::Gateway, "t1", "gw")).await,
        Some(b"mqtt-1".to_vec())
    );
    assert_eq!(link.registered(), 2);

    // d1 moved to another instance: our unregister leaves its route alone.
    kv.put(routes::key(RouteKind::Device, "t1", "d1"), "mqtt-2".into())
        .await
        .expect("put");
    link.unregister(&t1, &d1).await.expect("unregister");
    assert_eq!(
        value(routes::key(RouteKind::Device, "t1", "d1")).await,
        Some(b"mqtt-2".to_vec())
    );
    link.unregister_gateway(&t1, &gw)
        .await
        .expect("unregister gw");
    assert_eq!(
        value(routes::key(RouteKind::Gateway, "t1", "gw")).await,
        None
    );

    // The last gateway is written when it changes, not per message.
    let key = routes::key(RouteKind::LastGateway, "t1", "d2");
    for _ in 0..50 {
        link.set_last_gateway(&t1, &d2, &gw);
    }
    let first = wait_for_entry(&kv, &key, b"gw").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let entry = kv.entry(key.clone()).await.expect("entry").expect("some");
    assert_eq!(entry.revision, first, "written once");
    link.set_last_gateway(&t1, &d2, &device("gw2"));
    let second = wait_for_entry(&kv, &key, b"gw2").await;
    assert!(second > first);
}

async fn wait_for_entry(kv: &jetstream::kv::Store, key: &str, value: &[u8]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Some(e)) = kv.entry(key.to_owned()).await {
            if e.value.as_ref() == value {
                return e.revision;
            }
        }
        assert!(Instant::now() < deadline, "{key} never became {value:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn losing_nats_fails_sends_fast_and_they_work_again_after_it_returns() {
    let mut bus = Bus::start().await;
    let ds = bus.downstream(bus.config()).await;
    let (link, _commands) = ds.commands("mqtt-1");
    assert!(ds.is_connected());
    bus.server.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ds.is_connected() {
        assert!(Instant::now() < deadline, "the loss is noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for msg in [
        message(MessageKind::Telemetry, "t1", 0),
        message(MessageKind::Telemetry, "t1", 1),
        message(MessageKind::Event, "t1", 1),
    ] {
        let started = Instant::now();
        assert_eq!(ds.send(msg).await, Err(DownstreamError::NotConnected));
        assert!(started.elapsed() < Duration::from_millis(100), "fails fast");
    }
    // Registered while NATS is away: remembered, written when it is back.
    assert_eq!(
        link.register(&tenant("t1"), &device("d9")).await,
        Err(DownstreamError::NotConnected)
    );

    bus.server.restart();
    assert!(
        ds.wait_connected(Duration::from_secs(20)).await,
        "reconnects by itself"
    );
    let router = ferry_nats::connect(&nats_config(&bus.server), "test-router-2")
        .await
        .expect("router reconnects");
    bus.router = router;
    let _r = bus
        .respond(subjects::telemetry("t1"), Outcome::Accepted, Duration::ZERO)
        .await;
    // The first request right after the reconnect may still hear "no responders" (seen once in a
    // few hundred milliseconds); from then on it works, without the adapter doing anything.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match ds.send(message(MessageKind::Telemetry, "t1", 1)).await {
            Ok(SendOutcome::Accepted) => break,
            other => assert!(Instant::now() < deadline, "does not recover: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ds.send(message(MessageKind::Event, "t1", 1)).await,
        Ok(SendOutcome::Accepted)
    );
    let kv = routes::bucket(&jetstream::new(bus.router.clone()), 1)
        .await
        .expect("bucket");
    wait_for_entry(&kv, &routes::key(RouteKind::Device, "t1", "d9"), b"mqtt-1").await;
}
