//! Random HTTP/1.1 requests against the HTTP adapter's real connection handling (issue 15): libFuzzer's
//! bytes, through `arbitrary::Unstructured`, choose a few requests for one keep-alive connection
//! (methods, Hono's paths and near misses, valid, wrong and malformed `authorization`, `content-type`,
//! `content-length` that lies or is not a number, chunked bodies, `hono-ttd`, `qos-level`, bodies), which
//! go over an in-memory pipe to the adapter of a registry, router and adapter started once for all
//! inputs (`ferry_http_adapter::fuzzing`). A panic anywhere, or a connection the adapter does not let go
//! within the bound once the client ends it, is a finding. `adapters/http/tests/requests.rs` runs the
//! same harness on stable.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Unstructured;
use ferry_http_adapter::fuzzing::{self, Entropy, Vocabulary};
use libfuzzer_sys::fuzz_target;

const ADMIN: &str = "admin-token";
const INTERNAL: &str = "internal-token";
/// Short, so that a request waiting on `hono-ttd` or a body that never comes costs little per input.
const QUIET: Duration = Duration::from_millis(50);
const BOUND: Duration = Duration::from_secs(5);

struct Bytes<'a, 'b>(&'a mut Unstructured<'b>);

impl Entropy for Bytes<'_, '_> {
    fn below(&mut self, n: u32) -> u32 {
        match n {
            0 => 0,
            n => self.0.int_in_range(0..=n - 1).unwrap_or(0),
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        buf.fill(0);
        let n = buf.len().min(self.0.len());
        if let Ok(bytes) = self.0.bytes(n) {
            buf[..n].copy_from_slice(bytes);
        }
    }

    fn has_more(&mut self) -> bool {
        !self.0.is_empty()
    }
}

struct World {
    runtime: tokio::runtime::Runtime,
    shared: Arc<ferry_http_adapter::Shared>,
    vocabulary: Vocabulary,
    _dir: tempfile::TempDir,
    _triggers: Vec<ferry_core::shutdown::Trigger>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (shared, triggers) = runtime.block_on(async {
            let mut triggers = Vec::new();
            let (t, s) = ferry_core::shutdown::channel();
            triggers.push(t);
            let registry = ferry_registry::start(
                ferry_registry::Config {
                    bind: "127.0.0.1:0".parse().expect("addr"),
                    data_dir: dir.path().join("registry"),
                    admin_token: Some(ADMIN.into()),
                    internal_token: Some(INTERNAL.into()),
                    bcrypt_cost: 4,
                    ..ferry_registry::Config::default()
                },
                ferry_core::admin::Admin::new(),
                s,
            )
            .await
            .expect("the registry starts");
            let http = reqwest::Client::new();
            let calls = [
                ("POST", "/v1/tenants/t1".to_owned(), "{}".to_owned()),
                ("POST", "/v1/devices/t1/d1".into(), "{}".into()),
                ("POST", "/v1/devices/t1/gw".into(), "{}".into()),
                ("POST", "/v1/devices/t1/behind".into(), r#"{"via": ["gw"]}"#.into()),
                (
                    "PUT",
                    "/v1/credentials/t1/d1".into(),
                    r#"[{"type": "hashed-password", "auth-id": "sensor1", "secrets": [{"pwd-plain": "hunter2"}]}]"#.into(),
                ),
                (
                    "PUT",
                    "/v1/credentials/t1/gw".into(),
                    r#"[{"type": "hashed-password", "auth-id": "gw1", "secrets": [{"pwd-plain": "gwpass"}]}]"#.into(),
                ),
            ];
            for (method, path, body) in calls {
                let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
                http.request(method, format!("{}{path}", registry.url()))
                    .bearer_auth(ADMIN)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("registry call");
            }
            let (t, s) = ferry_core::shutdown::channel();
            triggers.push(t);
            let router = ferry_router::start(
                ferry_router::Config {
                    bind: "127.0.0.1:0".parse().expect("addr"),
                    data_dir: dir.path().join("router"),
                    registry_url: registry.url(),
                    registry_token: INTERNAL.into(),
                    adapter_password: INTERNAL.into(),
                    ..ferry_router::Config::default()
                },
                ferry_core::admin::Admin::new(),
                s,
            )
            .await
            .expect("the router starts");
            let (t, s) = ferry_core::shutdown::channel();
            triggers.push(t);
            let adapter = ferry_http_adapter::start(
                ferry_http_adapter::Config {
                    bind: "127.0.0.1:0".parse().expect("addr"),
                    tls_bind: "127.0.0.1:0".parse().expect("addr"),
                    adapter: ferry_http_adapter::AdapterSettings {
                        registry_url: registry.url(),
                        registry_token: INTERNAL.into(),
                        router_address: router.addr.to_string(),
                        router_password: INTERNAL.into(),
                        ..ferry_http_adapter::Config::default().adapter
                    },
                    ..ferry_http_adapter::Config::default()
                },
                ferry_core::admin::Admin::new(),
                s,
            )
            .await
            .expect("the adapter starts");
            adapter
                .shared
                .downstream
                .wait_connected(Duration::from_secs(10))
                .await;
            (adapter.shared.clone(), triggers)
        });
        World {
            runtime,
            shared,
            vocabulary: Vocabulary {
                credentials: vec![
                    ("sensor1@t1".into(), "hunter2".into()),
                    ("gw1@t1".into(), "gwpass".into()),
                ],
            },
            _dir: dir,
            _triggers: triggers,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let mut u = Unstructured::new(data);
    let requests = fuzzing::generate(&mut Bytes(&mut u), &world.vocabulary, 8);
    if let Err(stuck) = world
        .runtime
        .block_on(fuzzing::run(&world.shared, &requests, QUIET, BOUND))
    {
        panic!("{stuck}: {requests:#?}");
    }
});
