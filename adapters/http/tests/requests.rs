//! Random HTTP/1.1 requests (issue 15: fuzzing beyond single frames), through the same harness as the
//! `http_request` fuzz target (`ferry_http_adapter::fuzzing`), driven by a seeded PRNG so every run sends
//! the same bytes: methods, Hono's paths and near misses, valid, wrong and malformed `authorization`,
//! `content-type`, `content-length` that lies or is not a number, chunked bodies, `hono-ttd`, bodies,
//! several requests pipelined on one keep-alive connection. The adapter must never panic, must let every
//! connection go within a bound once the client ends it, and must still serve a well-behaved device.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use ferry_core::shutdown::{self, Trigger};
use ferry_http_adapter::fuzzing::{self, Entropy, RawRequest, Vocabulary};
use ferry_test_support::platform::{TestRegistry, TestRouter, INTERNAL_TOKEN};
use rand::rngs::StdRng;
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use serde_json::json;

const SEED: u64 = 0x15_0a_77;
const CONNECTIONS: usize = 200;
/// Connections run at once (a request with `hono-ttd` waits up to its ttd for a command).
const PARALLEL: usize = 16;
const QUIET: Duration = Duration::from_millis(300);
const BOUND: Duration = Duration::from_secs(5);

struct Prng(StdRng);

impl Entropy for Prng {
    fn below(&mut self, n: u32) -> u32 {
        if n == 0 {
            0
        } else {
            self.0.gen_range(0..n)
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill_bytes(buf);
    }

    fn has_more(&mut self) -> bool {
        true
    }
}

/// Panics anywhere in the process (the adapter's tasks included).
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

/// Registry, router and adapter in this process, with tenant t1, device d1 (`sensor1@t1`/`hunter2`) and a
/// gateway (`gw1@t1`/`gwpass`) that serves device `behind`.
struct Platform {
    adapter: ferry_http_adapter::Started,
    _registry: TestRegistry,
    _router: TestRouter,
    _adapter: Trigger,
    _dir: tempfile::TempDir,
}

impl Platform {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = TestRegistry::start(&dir.path().join("registry"), |_| {}).await;
        registry.tenant("t1", json!({})).await;
        registry.device("t1", "d1", json!({})).await;
        registry.device("t1", "gw", json!({})).await;
        registry
            .device("t1", "behind", json!({ "via": ["gw"] }))
            .await;
        registry.password("t1", "d1", "sensor1", "hunter2").await;
        registry.password("t1", "gw", "gw1", "gwpass").await;
        let router = TestRouter::start(&registry.url, &dir.path().join("router"), |_| {}).await;
        let (trigger, s) = shutdown::channel();
        let adapter = ferry_http_adapter::start(
            ferry_http_adapter::Config {
                bind: "127.0.0.1:0".parse().expect("addr"),
                tls_bind: "127.0.0.1:0".parse().expect("addr"),
                adapter: ferry_http_adapter::AdapterSettings {
                    registry_url: registry.url.clone(),
                    registry_token: INTERNAL_TOKEN.into(),
                    router_address: router.addr.to_string(),
                    router_password: INTERNAL_TOKEN.into(),
                    ..ferry_http_adapter::Config::default().adapter
                },
                ..ferry_http_adapter::Config::default()
            },
            ferry_core::admin::Admin::new(),
            s,
        )
        .await
        .expect("http adapter");
        assert!(
            adapter
                .shared
                .downstream
                .wait_connected(Duration::from_secs(5))
                .await,
            "the adapter connects to the router"
        );
        Self {
            adapter,
            _registry: registry,
            _router: router,
            _adapter: trigger,
            _dir: dir,
        }
    }
}

/// A device's event, as a well-behaved client sends it.
async fn well_behaved_event(p: &Platform, body: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("http://{}/event", p.adapter.addr))
        .basic_auth("sensor1@t1", Some("hunter2"))
        .header("content-type", "text/plain")
        .body(body.to_owned())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the adapter answers a well-behaved device")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_neither_panic_nor_hold_connections() {
    count_panics();
    let p = Platform::start().await;
    assert_eq!(well_behaved_event(&p, "before").await, 202);

    let vocabulary = Vocabulary {
        credentials: vec![
            ("sensor1@t1".into(), "hunter2".into()),
            ("gw1@t1".into(), "gwpass".into()),
        ],
    };
    let mut rng = Prng(StdRng::seed_from_u64(SEED));
    let connections: Vec<Vec<RawRequest>> = (0..CONNECTIONS)
        .map(|_| fuzzing::generate(&mut rng, &vocabulary, 4))
        .collect();
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut closed_by_adapter = 0;
    for (batch_index, batch) in connections.chunks(PARALLEL).enumerate() {
        let mut tasks = Vec::new();
        for requests in batch {
            let (shared, requests) = (p.adapter.shared.clone(), requests.clone());
            tasks.push(tokio::spawn(async move {
                fuzzing::run(&shared, &requests, QUIET, BOUND).await
            }));
        }
        for (j, task) in tasks.into_iter().enumerate() {
            let i = batch_index * PARALLEL + j;
            let requests = &connections[i];
            let shown = || {
                requests
                    .iter()
                    .map(|r| {
                        let mut wire = Vec::new();
                        r.encode(&mut wire);
                        String::from_utf8_lossy(&wire).into_owned()
                    })
                    .collect::<Vec<_>>()
            };
            match task.await {
                Ok(Ok(outcome)) => {
                    closed_by_adapter += usize::from(outcome.closed_by_adapter);
                    for s in outcome.statuses {
                        *statuses.entry(s).or_default() += 1;
                    }
                }
                Ok(Err(stuck)) => {
                    panic!("connection {i} (seed {SEED:#x}): {stuck}\n{:#?}", shown())
                }
                Err(e) => panic!(
                    "connection {i} (seed {SEED:#x}) panicked: {e}\n{:#?}",
                    shown()
                ),
            }
        }
        assert_eq!(
            PANICS.load(Ordering::SeqCst),
            0,
            "an adapter task panicked during connections {}..{}",
            batch_index * PARALLEL,
            batch_index * PARALLEL + batch.len()
        );
    }
    eprintln!(
        "{CONNECTIONS} connections in {:?}; statuses {statuses:?}; closed by the adapter: {closed_by_adapter}",
        started.elapsed()
    );
    // The requests reach past the router and the login: some are accepted, some refused for what they
    // say after it.
    for status in [202, 400, 401] {
        assert!(statuses.contains_key(&status), "no {status}: {statuses:?}");
    }

    // The same requests a device sends, through the in-memory harness and over TCP.
    let event = RawRequest {
        method: "POST".into(),
        target: "/event".into(),
        headers: vec![
            ("host".into(), b"adapter".to_vec()),
            (
                "authorization".into(),
                b"Basic c2Vuc29yMUB0MTpodW50ZXIy".to_vec(),
            ),
            ("content-type".into(), b"text/plain".to_vec()),
            ("content-length".into(), b"5".to_vec()),
        ],
        body: b"after".to_vec(),
    };
    let outcome = fuzzing::run(&p.adapter.shared, &[event], QUIET, BOUND)
        .await
        .expect("a well-behaved request ends");
    assert_eq!(outcome.statuses, [202]);
    assert_eq!(well_behaved_event(&p, "after").await, 202);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}
