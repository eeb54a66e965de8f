//! Whole connection sequences of random frames (issue 15, beyond single frames): two logged-in peers (the
//! adapters' credential and application users, in random pairs) send open, begin, attach, flow, transfer,
//! disposition, detach, end and close with random fields, interleaved. The same harness as the
//! `amqp_connection` fuzz target (`ferry_router::fuzzing`), driven by a seeded PRNG so every run sends
//! the same sequences. The router must never panic, must end every connection within a bound once its
//! peer closes, and must still serve a well-behaved fe2o3-amqp producer and consumer afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::{Connection, Sender, Session};
use ferry_core::assertion::SigningKey;
use ferry_router::fuzzing::{Engine, Entropy, Login, Outcome, Pace, Sequence, Setup, Vocabulary};
use futures_util::FutureExt as _;
use rand::rngs::StdRng;
use rand::{Rng as _, RngCore as _, SeedableRng as _};

use crate::harness::*;

/// The PRNG seed: a failure names its sequence's index, and the same seed replays it.
const SEED: u64 = 0x15_f0_22;
/// Short pauses (one step in eight has one) and a short wait for quiet at the end let the router finish
/// what a step set off; every connection has 5 s to take its sequence and to end after its peer's close.
const PACE: Pace = Pace {
    pause: Duration::from_millis(2),
    quiet: Duration::from_millis(5),
    settle_max: Duration::from_millis(100),
    bound: Duration::from_secs(5),
};
const STEPS: usize = 40;

struct Prng(StdRng);

impl Entropy for Prng {
    fn below(&mut self, n: u32) -> u32 {
        if n == 0 {
            0
        } else {
            self.0.gen_range(0..n)
        }
    }

    fn any_u32(&mut self) -> u32 {
        self.0.gen()
    }

    fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill_bytes(buf);
    }

    fn has_more(&mut self) -> bool {
        true
    }
}

/// Panics anywhere in the process, spawned router tasks included (their `JoinHandle`s are not ours).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

async fn vocabulary(p: &Platform) -> Vocabulary {
    let login = |user: &str, password: &str| Login {
        user: user.into(),
        password: password.into(),
    };
    Vocabulary {
        logins: vec![
            login(ADAPTER_USER, ADAPTER_PASSWORD),
            login("app1", "pw1"),
            login("app1", "pw1"),
            login("app1", "pw1"),
            login("app1", "pw1"),
            login("app1", "pw1"),
            // Its tenant is t2: most of what it attaches is refused.
            login("app2", "pw2"),
        ],
        adapter_user: ADAPTER_USER.into(),
        assertion: p.assertion("t1", "d1").await,
    }
}

/// How often the router answered with what, over all sequences.
#[derive(Debug, Default)]
struct Tally {
    connections: usize,
    logged_in: usize,
    /// Connections on which the router sent at least one of each performative.
    sent: BTreeMap<&'static str, usize>,
    /// Conditions the router closed connections with.
    close_errors: BTreeMap<String, usize>,
    /// Conditions the router detached links with.
    detach_errors: BTreeMap<String, usize>,
}

/// Runs `count` generated sequences through `run`, failing with the sequence that panicked, hung, or
/// made the router send something malformed.
async fn run_sequences<F, Fut>(p: &Platform, count: usize, mut run: F) -> Tally
where
    F: FnMut(Sequence) -> Fut,
    Fut: std::future::Future<Output = (Sequence, Result<Outcome, String>)>,
{
    count_panics();
    let vocabulary = vocabulary(p).await;
    let mut rng = Prng(StdRng::seed_from_u64(SEED));
    let started = Instant::now();
    let mut tally = Tally::default();
    for i in 0..count {
        let sequence = Sequence::generate(&mut rng, &vocabulary, STEPS);
        let (sequence, result) = run(sequence).await;
        let outcome = result
            .unwrap_or_else(|why| panic!("sequence {i} (seed {SEED:#x}): {why}\n{sequence:#?}"));
        for received in &outcome.received {
            if let Some(bad) = &received.bad_output {
                panic!("sequence {i} (seed {SEED:#x}): the router sent {bad}\n{sequence:#?}");
            }
            tally.connections += 1;
            tally.logged_in += usize::from(received.logged_in);
            let kinds: BTreeSet<_> = received.performatives.iter().copied().collect();
            for kind in kinds {
                *tally.sent.entry(kind).or_default() += 1;
            }
            for e in &received.detach_errors {
                *tally.detach_errors.entry(e.clone()).or_default() += 1;
            }
            if let Some(e) = &received.close_error {
                *tally.close_errors.entry(e.clone()).or_default() += 1;
            }
        }
        assert_eq!(
            PANICS.load(Ordering::SeqCst),
            0,
            "a router task panicked during sequence {i} (seed {SEED:#x}):\n{sequence:#?}"
        );
    }
    eprintln!("{count} sequences in {:?}: {tally:#?}", started.elapsed());
    tally
}

/// The sequences get past the login and the first frames: the router attaches links, grants credit,
/// delivers messages and settles them, so the engine's deeper states are reached.
/// (`transfer` needs a consumer's credit to meet a producer's message in time, which the few TCP sequences
/// do not always manage on a loaded machine; the in-memory run checks it.)
fn assert_deep(tally: &Tally, kinds: &[&str]) {
    assert!(tally.logged_in == tally.connections, "{tally:#?}");
    for &kind in kinds {
        assert!(
            tally.sent.get(kind).copied().unwrap_or(0) > 0,
            "the router never sent {kind}: {tally:#?}"
        );
    }
}

/// An application consumer and an adapter producer on `telemetry/t1` exchange a message.
async fn exchange(app: &mut Client, adapter: &mut Client, token: &str, body: &str) {
    let mut rx = app.receiver("telemetry/t1", 10).await;
    let mut tx = Sender::builder()
        .name("well-behaved")
        .target("telemetry/t1")
        .sender_settle_mode(SenderSettleMode::Settled)
        .attach(&mut adapter.session)
        .await
        .expect("the producer attaches");
    tx.send(
        Sendable::builder()
            .message(device_message("d1", Some(token), body.as_bytes()))
            .settled(true)
            .build(),
    )
    .await
    .expect("the producer sends");
    let d = recv_within(&mut rx, 5000)
        .await
        .unwrap_or_else(|| panic!("{body} did not arrive within 5 s"));
    assert_eq!(body_bytes(&d), body.as_bytes());
    rx.accept(&d).await.expect("accept");
    let _ = tx.close().await;
    let _ = rx.close().await;
}

/// A fe2o3-amqp connection to `engine` over an in-memory pipe.
async fn connect_in_memory(engine: &Engine, user: &str, password: &str) -> Client {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(engine.serve(server));
    let mut conn: ConnectionHandle<()> = Connection::builder()
        .container_id(format!("well-behaved-{user}"))
        .sasl_profile(SaslProfile::Plain {
            username: user.into(),
            password: password.into(),
        })
        .open_with_stream(client)
        .await
        .expect("the well-behaved connection opens");
    let session = Session::begin(&mut conn).await.expect("session begins");
    Client { conn, session }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_connection_sequences_neither_panic_nor_hang_the_engine() {
    let p = Platform::start().await;
    let key = SigningKey::from_seed_b64(SIGNING_SEED).expect("the harness's signing seed");
    let engine = Engine::new(Setup {
        adapter_user: ADAPTER_USER.into(),
        adapter_password: ADAPTER_PASSWORD.into(),
        registry: Some((p.registry_url.clone(), INTERNAL.into())),
        jwks: key.jwks(),
        max_events_per_tenant: 1000,
    });
    let engine_ref = &engine;
    let tally = run_sequences(&p, 300, |sequence| async move {
        let run = engine_ref.run(&sequence, PACE);
        {
            let result = match AssertUnwindSafe(run).catch_unwind().await {
                Ok(r) => r.map_err(|stuck| stuck.to_string()),
                Err(panic) => Err(format!("panicked: {}", panic_message(&panic))),
            };
            (sequence, result)
        }
    })
    .await;
    assert_deep(
        &tally,
        &[
            "open",
            "begin",
            "attach",
            "flow",
            "transfer",
            "disposition",
            "detach",
            "close",
        ],
    );

    let token = p.assertion("t1", "d1").await;
    let mut app = connect_in_memory(&engine, "app1", "pw1").await;
    let mut adapter = connect_in_memory(&engine, ADAPTER_USER, ADAPTER_PASSWORD).await;
    exchange(&mut app, &mut adapter, &token, "after the sequences").await;
    app.close().await;
    adapter.close().await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

/// Fewer sequences, over loopback TCP to a router started as `ferry-router` starts it (segment-log event
/// store, registry-backed logins, connection caps), which its own clients then still use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_connection_sequences_over_tcp_leave_the_router_serving() {
    let p = Platform::start().await;
    let addr = p.amqp;
    let tally = run_sequences(&p, 60, |sequence| async move {
        let mut clients = Vec::new();
        for _ in 0..2 {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .expect("tcp connect");
            stream.set_nodelay(true).expect("nodelay");
            clients.push(stream);
        }
        let result = ferry_router::fuzzing::drive(&sequence, clients, PACE)
            .await
            .map_err(|stuck| stuck.to_string());
        (sequence, result)
    })
    .await;
    assert_deep(
        &tally,
        &["open", "begin", "attach", "flow", "disposition", "close"],
    );

    let token = p.assertion("t1", "d1").await;
    let mut app = p.app("app1", "pw1").await;
    let mut adapter = p.adapter().await;
    exchange(&mut app, &mut adapter, &token, "after the sequences").await;
    app.close().await;
    adapter.close().await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(not a string)".into())
}
