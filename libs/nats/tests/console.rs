//! The console in cluster mode (`ferry_nats::tap`, `ferry_nats::commands`) on a real nats-server with
//! Ferry's users: the registry's credential watches a tenant's telemetry and events beside the routers
//! (which still get every message), sees no other tenant's, and sends commands to the adapter instance
//! that holds a device's route, with the device's response coming back; it cannot publish device
//! traffic, write routes, or read another user's inbox.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use fe2o3_amqp_types::messaging::message::__private::Serializable;
use fe2o3_amqp_types::messaging::{ApplicationProperties, Data, Message, Properties};
use fe2o3_amqp_types::primitives::{Binary, OrderedMap, SimpleValue, Symbol};
use ferry_core::assertion::{Claims, SigningKey, Verifier, VerifierConfig};
use ferry_core::console::{TapError, MAX_TAPS, MAX_TAPS_PER_TENANT};
use ferry_core::ids::{DeviceId, TenantId};
use ferry_nats::commands::{self, Command, Sender};
use ferry_nats::outcome::Outcome;
use ferry_nats::tap::Taps;
use ferry_nats::{permissions, routes, subjects, NatsConfig};
use ferry_test_support::NatsServer;
use futures_util::StreamExt;

fn server() -> NatsServer {
    let block = permissions::authorization(&[
        ("ferry-adapter", "adapter-pw", &permissions::adapter()),
        ("ferry-router", "router-pw", &permissions::router()),
        ("ferry-registry", "registry-pw", &permissions::registry()),
    ])
    .expect("renders");
    NatsServer::start_with(&block)
}

fn config(server: &NatsServer, user: &str, password: &str) -> NatsConfig {
    NatsConfig {
        urls: vec![server.url()],
        user: Some(user.into()),
        password: Some(password.into()),
        ..NatsConfig::default()
    }
}

async fn connect(server: &NatsServer, user: &str, password: &str) -> async_nats::Client {
    ferry_nats::connect(&config(server, user, password), user)
        .await
        .expect("connect")
}

/// The registry's connection, with its own inbox prefix as the registry makes it.
async fn registry(server: &NatsServer) -> async_nats::Client {
    ferry_nats::connect_with(
        &config(server, "ferry-registry", "registry-pw"),
        "ferry-registry",
        |o| o.custom_inbox_prefix(permissions::REGISTRY_INBOX),
    )
    .await
    .expect("connect")
}

fn tenant(t: &str) -> TenantId {
    TenantId::new(t).expect("tenant")
}

fn device_id(d: &str) -> DeviceId {
    DeviceId::new(d).expect("device")
}

fn now() -> i64 {
    i64::try_from(ferry_core::console::unix_now()).expect("now")
}

/// A device message as an adapter publishes it, with an assertion `key` signed.
fn device_message(key: &SigningKey, t: &str, d: &str, body: &str) -> Bytes {
    let claims = Claims::new(tenant(t), device_id(d), None, now(), 600);
    let mut map = OrderedMap::new();
    for (k, v) in [
        ("device_id", d.to_owned()),
        ("reg_assertion", key.sign(&claims)),
    ] {
        map.as_inner_mut()
            .insert(k.to_owned(), SimpleValue::String(v));
    }
    let m = Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(Properties {
            content_type: Some(Symbol::from("text/plain")),
            ..Properties::default()
        }),
        application_properties: Some(ApplicationProperties(map)),
        body: Data(Binary::from(body.as_bytes().to_vec())),
        footer: None,
    };
    Bytes::from(serde_amqp::to_vec(&Serializable(m)).expect("encodes"))
}

async fn next_shown(watch: &mut ferry_nats::tap::Watch) -> Option<(String, String, String)> {
    let m = tokio::time::timeout(Duration::from_millis(500), watch.messages.recv())
        .await
        .ok()?
        .ok()?;
    Some((m.kind.to_owned(), m.device_id.clone(), m.payload.clone()))
}

/// Waits (up to 5 s) until a request on `subject` hears "no responders": nobody subscribes to it.
async fn until_no_responders(client: &async_nats::Client, subject: String, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client
            .send_request(
                subject.clone(),
                async_nats::Request::new()
                    .payload(Bytes::from_static(b"x"))
                    .timeout(Some(Duration::from_millis(200))),
            )
            .await;
        match r {
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => return,
            _ => assert!(Instant::now() < deadline, "{what}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_live_view_copies_a_tenants_messages_which_the_routers_still_all_get() {
    let server = server();
    let adapter = connect(&server, "ferry-adapter", "adapter-pw").await;
    let router = connect(&server, "ferry-router", "router-pw").await;
    let key = SigningKey::generate();
    let verifier = Verifier::new(&key.jwks(), VerifierConfig::default());
    let taps = Taps::new(registry(&server).await, Some(verifier.into()));

    let mut takers = router
        .queue_subscribe(subjects::telemetry("t1"), subjects::ROUTERS.into())
        .await
        .expect("subscribe");
    let mut announcements = router
        .subscribe(subjects::TAP_WATCHING)
        .await
        .expect("subscribe");
    ferry_nats::round_trip(&router, Duration::from_secs(5))
        .await
        .expect("subscribed");
    let mut t1 = taps.watch(&tenant("t1")).expect("watch t1");
    let mut t2 = taps.watch(&tenant("t2")).expect("watch t2");
    assert!(t1.ready(Duration::from_secs(5)).await, "subscribed in time");
    assert!(t2.ready(Duration::from_secs(5)).await, "subscribed in time");
    assert_eq!(taps.tenants(), 2);
    // The routers hear which tenants are watched (and copy what they forward of them).
    let mut announced = Vec::new();
    while announced.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(5), announcements.next())
            .await
            .expect("announced in time")
            .expect("an announcement");
        announced.push(String::from_utf8(m.payload.to_vec()).expect("utf8"));
    }
    announced.sort();
    assert_eq!(announced, ["t1", "t2"]);

    // What a router forwarded of t1's telemetry, copied (the adapter's own messages go to the routers).
    for i in 0..5 {
        let m = device_message(&key, "t1", "d1", &format!("m{i}"));
        adapter
            .publish(subjects::telemetry("t1"), m.clone())
            .await
            .expect("publish");
        router
            .publish(subjects::tap_telemetry("t1"), m)
            .await
            .expect("copy");
    }
    let event = device_message(&key, "t1", "d2", "an event");
    adapter
        .publish(subjects::event("t1"), event)
        .await
        .expect("publish");
    // Signed by another key: the router would refuse it, so the live view does not show it.
    let forged = device_message(&SigningKey::generate(), "t1", "d1", "forged");
    adapter
        .publish(subjects::telemetry("t1"), forged.clone())
        .await
        .expect("publish");
    router
        .publish(subjects::tap_telemetry("t1"), forged)
        .await
        .expect("copy");
    // Another tenant's message, and one of t1's device claiming to be t2's.
    let other = device_message(&key, "t2", "x9", "t2's");
    router
        .publish(subjects::tap_telemetry("t2"), other)
        .await
        .expect("copy");
    let misplaced = device_message(&key, "t1", "d1", "t1's on t2's subject");
    router
        .publish(subjects::tap_telemetry("t2"), misplaced)
        .await
        .expect("copy");
    adapter.flush().await.expect("flush");
    router.flush().await.expect("flush");

    // Telemetry and events come through two subscriptions: in order within each.
    let mut shown = Vec::new();
    while let Some(m) = next_shown(&mut t1).await {
        shown.push(m);
    }
    shown.sort();
    let mut want: Vec<_> = (0..5)
        .map(|i| ("telemetry".to_owned(), "d1".to_owned(), format!("m{i}")))
        .collect();
    want.push(("event".into(), "d2".into(), "an event".into()));
    want.sort();
    assert_eq!(shown, want, "t1's live view");
    let mut of_t2 = Vec::new();
    while let Some(m) = next_shown(&mut t2).await {
        of_t2.push(m);
    }
    assert_eq!(
        of_t2,
        [("telemetry".to_owned(), "x9".to_owned(), "t2's".to_owned())],
        "t2's live view shows t2's alone"
    );
    // The routers' queue group got every telemetry message of t1, the forged one included (they
    // check it themselves).
    let mut taken = 0;
    while tokio::time::timeout(Duration::from_millis(300), takers.next())
        .await
        .is_ok_and(|m| m.is_some())
    {
        taken += 1;
    }
    assert_eq!(taken, 6, "the routers lost messages to the live view");

    // The live view is no responder of the adapters' requests: with the routers gone, a telemetry
    // request of the watched tenant hears "no responders" at once (the device's 503), as unwatched.
    drop(takers);
    until_no_responders(
        &adapter,
        subjects::telemetry("t1"),
        "the live view answers for t1's telemetry as a responder",
    )
    .await;

    // The last watcher of a tenant leaving ends its subscriptions: nobody listens on t1's copies.
    drop(t1);
    until_no_responders(
        &router,
        subjects::tap_telemetry("t1"),
        "t1's subscription outlived its last watcher",
    )
    .await;
    assert_eq!(taps.tenants(), 1);
    drop(t2);
    assert_eq!((taps.tenants(), taps.watchers()), (0, 0));
}

#[tokio::test]
async fn watchers_are_capped_and_a_flood_is_counted_instead_of_decoded() {
    let server = server();
    let router = connect(&server, "ferry-router", "router-pw").await;
    let key = SigningKey::generate();
    let taps = Taps::new(registry(&server).await, None);
    let mut of_t1: Vec<_> = (0..MAX_TAPS_PER_TENANT)
        .map(|_| taps.watch(&tenant("t1")).expect("within the cap"))
        .collect();
    assert_eq!(
        taps.watch(&tenant("t1")).err(),
        Some(TapError::TooMany),
        "per tenant"
    );
    let mut others = Vec::new();
    for i in 0..MAX_TAPS - MAX_TAPS_PER_TENANT {
        others.push(
            taps.watch(&tenant(&format!("o{}", i % 20)))
                .expect("within the cap"),
        );
    }
    assert_eq!(
        taps.watch(&tenant("t9")).err(),
        Some(TapError::TooMany),
        "in all"
    );
    drop(others);
    assert_eq!(taps.tenants(), 1);

    let watch = &mut of_t1[0];
    assert!(watch.ready(Duration::from_secs(5)).await);
    // A flood of t1's telemetry, as routers copy what they forward.
    let sent = 400;
    for i in 0..sent {
        let m = device_message(&key, "t1", "d1", &format!("m{i}"));
        router
            .publish(subjects::tap_telemetry("t1"), m)
            .await
            .expect("publish");
    }
    router.flush().await.expect("flush");
    let mut shown = 0;
    while next_shown(watch).await.is_some() {
        shown += 1;
    }
    let skipped = watch.skipped();
    assert!(
        shown <= 2 * ferry_nats::tap::MAX_PER_SEC,
        "{shown} decoded in about a second"
    );
    assert_eq!(
        u64::from(shown) + skipped,
        sent,
        "each message shown or counted"
    );
    assert_eq!(watch.skipped(), 0, "counted once");
}

/// A fake adapter instance `instance`: answers each command with `outcome` and, when the command
/// wants one and `respond` is set, sends a response with status 200 echoing the command's payload.
/// Returns the commands it got (as `to`, `subject`, `via`).
fn fake_adapter(
    client: async_nats::Client,
    instance: &str,
    outcome: Option<Outcome>,
    respond: bool,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, String, Option<String>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let subject = subjects::command(instance);
    tokio::spawn(async move {
        let mut sub = client.subscribe(subject).await.expect("subscribe");
        while let Some(m) = sub.next().await {
            let c = commands_view(&m.payload);
            let _ = tx.send((c.0.clone(), c.1.clone(), c.3.clone()));
            if respond {
                if let Some(reply_to) = &c.2 {
                    let reply_id = reply_to.splitn(3, '/').nth(2).expect("reply id");
                    let response = response_message(reply_to, &c.4);
                    let answer = client
                        .request(subjects::command_response("t1", reply_id), response)
                        .await
                        .expect("the registry answers the response");
                    assert_eq!(Outcome::decode(&answer.payload), Some(Outcome::Accepted));
                }
            }
            if let (Some(o), Some(reply)) = (&outcome, m.reply) {
                client.publish(reply, o.encode()).await.expect("answer");
            }
        }
    });
    rx
}

/// A command as the adapter reads it: `to`, `subject`, `reply-to`, `via`, payload.
fn commands_view(payload: &[u8]) -> (String, String, Option<String>, Option<String>, Vec<u8>) {
    use fe2o3_amqp_types::messaging::message::__private::Deserializable;
    use fe2o3_amqp_types::messaging::Body;
    use fe2o3_amqp_types::primitives::Value;
    let m = serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(payload)
        .expect("an AMQP message")
        .0;
    let p = m.properties.expect("properties");
    let via = m
        .application_properties
        .and_then(|a| a.get("via").cloned())
        .and_then(|v| match v {
            SimpleValue::String(s) => Some(s),
            _ => None,
        });
    let body = match m.body {
        Body::Data(b) => b.into_iter().flat_map(|d| d.0.into_vec()).collect(),
        _ => Vec::new(),
    };
    (
        p.to.expect("to"),
        p.subject.expect("subject"),
        p.reply_to,
        via,
        body,
    )
}

fn response_message(to: &str, body: &[u8]) -> Bytes {
    let mut map = OrderedMap::new();
    map.as_inner_mut()
        .insert("status".to_owned(), SimpleValue::Int(200));
    let m = Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(Properties {
            to: Some(to.to_owned()),
            content_type: Some(Symbol::from("application/json")),
            ..Properties::default()
        }),
        application_properties: Some(ApplicationProperties(map)),
        body: Data(Binary::from(body.to_vec())),
        footer: None,
    };
    Bytes::from(serde_amqp::to_vec(&Serializable(m)).expect("encodes"))
}

fn command(d: &str, one_way: bool, timeout: Duration) -> Command {
    Command {
        tenant: tenant("t1"),
        device: device_id(d),
        name: "stop".into(),
        content_type: Some("application/json".into()),
        payload: b"{\"now\": true}".to_vec(),
        expect_response: !one_way,
        timeout,
    }
}

async fn put(routes: &kv::Store, kind: routes::RouteKind, id: &str, value: &str) {
    routes
        .put(routes::key(kind, "t1", id), Bytes::from(value.to_owned()))
        .await
        .expect("an adapter writes a route");
}

#[tokio::test]
async fn console_commands_go_where_the_routes_say_and_bring_the_response_back() {
    let server = server();
    let adapter = connect(&server, "ferry-adapter", "adapter-pw").await;
    let routes = routes::bucket(&async_nats::jetstream::new(adapter.clone()), 1)
        .await
        .expect("bucket");
    let sender = Sender::open(registry(&server).await, 1)
        .await
        .expect("the registry opens the routes");
    let no_via = || async { Vec::new() };
    let long = Duration::from_secs(5);

    // A device's own route: the command, then the device's response.
    let mut got = fake_adapter(adapter.clone(), "inst-1", Some(Outcome::Accepted), true);
    put(&routes, routes::RouteKind::Device, "d1", "inst-1").await;
    ferry_nats::round_trip(&adapter, long).await.expect("rt");
    let r = sender
        .send(command("d1", false, long), no_via())
        .await
        .expect("a slot");
    assert_eq!(r.outcome, "accepted", "{r:?}");
    let response = r.response.expect("the response");
    assert_eq!(response.status, Some(200));
    assert_eq!(response.payload, "{\"now\": true}");
    assert_eq!(response.content_type.as_deref(), Some("application/json"));
    let (to, name, via) = got.recv().await.expect("the instance got it");
    assert_eq!(
        (to.as_str(), name.as_str(), via),
        ("command/t1/d1", "stop", None)
    );

    // One-way: the instance's outcome is the answer.
    let r = sender
        .send(command("d1", true, long), no_via())
        .await
        .expect("a slot");
    assert_eq!((r.outcome.as_str(), r.response), ("accepted", None));
    got.recv().await.expect("the instance got it");

    // No route: released at once, without asking for the device's gateways in vain.
    let started = Instant::now();
    let r = sender
        .send(command("d9", false, long), no_via())
        .await
        .expect("a slot");
    assert_eq!(r.outcome, "released", "{r:?}");
    // A route to an instance that is gone: released at once (no responders).
    put(&routes, routes::RouteKind::Device, "d8", "inst-gone").await;
    let r = sender
        .send(command("d8", false, long), no_via())
        .await
        .expect("a slot");
    assert_eq!(r.outcome, "released", "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // Through a gateway subscribed for all its devices, with `via` set; the last-known gateway first.
    let mut at_gw = fake_adapter(adapter.clone(), "inst-2", Some(Outcome::Accepted), false);
    put(&routes, routes::RouteKind::Gateway, "gw-1", "inst-1").await;
    put(&routes, routes::RouteKind::Gateway, "gw-2", "inst-2").await;
    put(&routes, routes::RouteKind::LastGateway, "d5", "gw-2").await;
    ferry_nats::round_trip(&adapter, long).await.expect("rt");
    let via = || async { vec!["gw-1".to_owned(), "gw-2".to_owned()] };
    let r = sender
        .send(command("d5", true, long), via())
        .await
        .expect("a slot");
    assert_eq!(r.outcome, "accepted", "{r:?}");
    let (to, _, via_set) = at_gw.recv().await.expect("the gateway's instance got it");
    assert_eq!(
        (to.as_str(), via_set.as_deref()),
        ("command/t1/d5", Some("gw-2"))
    );
    assert!(got.try_recv().is_err(), "not the other gateway's instance");

    // The device's outcome, as the adapter relays it.
    let _rejecting = fake_adapter(
        adapter.clone(),
        "inst-3",
        Some(Outcome::Rejected {
            condition: Some("hono:bad-request".into()),
            description: Some("unknown command".into()),
        }),
        false,
    );
    put(&routes, routes::RouteKind::Device, "d3", "inst-3").await;
    let _silent = fake_adapter(adapter.clone(), "inst-4", None, false);
    put(&routes, routes::RouteKind::Device, "d4", "inst-4").await;
    ferry_nats::round_trip(&adapter, long).await.expect("rt");
    let r = sender
        .send(command("d3", false, long), no_via())
        .await
        .expect("a slot");
    assert_eq!(
        (r.outcome.as_str(), r.error.as_deref()),
        ("rejected", Some("unknown command"))
    );
    let started = Instant::now();
    let r = sender
        .send(command("d4", false, Duration::from_millis(300)), no_via())
        .await
        .expect("a slot");
    assert_eq!(r.outcome, "timeout", "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(commands::MAX_IN_FLIGHT, 64);
}

#[tokio::test]
async fn the_registrys_credential_cannot_send_device_traffic_write_routes_or_read_other_inboxes() {
    let server = server();
    let adapter = connect(&server, "ferry-adapter", "adapter-pw").await;
    let router = connect(&server, "ferry-router", "router-pw").await;
    let registry = registry(&server).await;
    let mut taker = router
        .subscribe(subjects::telemetry("t1"))
        .await
        .expect("subscribe");
    let mut responses = router
        .subscribe(subjects::command_response("t1", "r1"))
        .await
        .expect("subscribe");
    // Another user's inbox: what a router answers an adapter.
    let mut spy = registry
        .subscribe("_INBOX.>")
        .await
        .expect("subscribe call");
    ferry_nats::round_trip(&router, Duration::from_secs(5))
        .await
        .expect("subscribed");
    ferry_nats::round_trip(&registry, Duration::from_secs(5))
        .await
        .expect("the registry's own inbox works");
    for subject in [
        subjects::telemetry("t1"),
        subjects::command_response("t1", "r1"),
    ] {
        registry
            .publish(subject, Bytes::from_static(b"forged"))
            .await
            .expect("publish call");
    }
    registry.flush().await.expect("flush");
    let quiet = |r: Result<Option<async_nats::Message>, _>| r.ok().flatten().is_none();
    assert!(
        quiet(tokio::time::timeout(Duration::from_millis(500), taker.next()).await),
        "a registry's credential published telemetry"
    );
    assert!(
        quiet(tokio::time::timeout(Duration::from_millis(200), responses.next()).await),
        "a registry's credential published a command response"
    );
    // The adapter asks, a router answers to the adapter's inbox; the registry hears nothing of it.
    let ask = adapter.request(subjects::telemetry("t1"), Bytes::from_static(b"q"));
    let answer = async {
        let m = taker.next().await.expect("the request");
        router
            .publish(
                m.reply.expect("a reply subject"),
                Bytes::from_static(b"secret"),
            )
            .await
            .expect("answer");
    };
    let (asked_back, ()) = tokio::join!(ask, answer);
    assert_eq!(&asked_back.expect("answered").payload[..], b"secret");
    assert!(
        quiet(tokio::time::timeout(Duration::from_millis(300), spy.next()).await),
        "a registry's credential read another user's inbox"
    );
    // Routes: read, not written.
    let js = async_nats::jetstream::new(registry.clone());
    let read = routes::bucket(&js, 1)
        .await
        .expect("the registry reads routes");
    let key = routes::key(routes::RouteKind::Device, "t1", "d1");
    let written = tokio::time::timeout(
        Duration::from_secs(2),
        read.put(&key, Bytes::from_static(b"registry")),
    )
    .await;
    assert!(
        !matches!(written, Ok(Ok(_))),
        "a registry's credential wrote a route"
    );
}

/// The console's charts in cluster mode: every adapter and router answers the registry's stats request
/// with its own lines of the tenant (not another tenant's), and the registry gathers them all; an
/// adapter's credential cannot ask.
#[tokio::test]
async fn stats_are_gathered_from_every_component_for_one_tenant_only() {
    use ferry_nats::stats;
    let server = server();
    let text = |n: u32| {
        move || {
            format!(
                "# TYPE m counter\nm_total{{tenant=\"t1\",type=\"telemetry\"}} {n}\n\
                 m_total{{tenant=\"t2\",type=\"telemetry\"}} 1000\n"
            )
        }
    };
    let (_trigger, shutdown) = ferry_core::shutdown::channel();
    let adapter = connect(&server, "ferry-adapter", "adapter-pw").await;
    let router = connect(&server, "ferry-router", "router-pw").await;
    tokio::spawn(stats::serve(adapter.clone(), text(3), shutdown.clone()));
    tokio::spawn(stats::serve(router.clone(), text(4), shutdown.clone()));
    let registry = registry(&server).await;
    // The components' subscriptions are in place once a gather sees both.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (answer, n) = loop {
        let (answer, n) = stats::gather(&registry, &tenant("t1"), stats::GATHER_WINDOW)
            .await
            .expect("gather");
        if n == 2 || Instant::now() > deadline {
            break (answer, n);
        }
    };
    assert_eq!(n, 2, "both components answer: {answer}");
    assert!(
        answer.contains("m_total{tenant=\"t1\",type=\"telemetry\"} 3"),
        "{answer}"
    );
    assert!(
        answer.contains("m_total{tenant=\"t1\",type=\"telemetry\"} 4"),
        "{answer}"
    );
    assert!(!answer.contains("t2"), "another tenant's figures: {answer}");
    // Only the registry asks.
    let (_, n) = stats::gather(&adapter, &tenant("t1"), stats::GATHER_WINDOW)
        .await
        .unwrap_or_default();
    assert_eq!(n, 0, "an adapter's credential got stats answers");
}
