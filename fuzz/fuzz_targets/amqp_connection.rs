//! Whole AMQP connection sequences against the router's real connection engine (issue 15): libFuzzer's
//! bytes, through `arbitrary::Unstructured`, choose two peers' logins (the adapters' credential and
//! application users, whose logins a registry in this process checks) and the frames they send after
//! SASL PLAIN and the AMQP header: open, begin, attach (Hono's addresses and near misses), flow (huge
//! credit included), transfer (random ids, more/aborted/settled, device messages with a valid assertion,
//! commands, responses, garbage), disposition (ranges that wrap), detach, end and close. Both run over
//! in-memory pipes into one engine shared by all inputs (`ferry_router::fuzzing`), so state left by one
//! input (stored events, reply addresses, subscriptions) meets the next. A panic anywhere, a router
//! output that does not decode, or a connection that does not end within the bound after its peer's
//! close is a finding. `router/tests/process/sequences.rs` runs the same harness on stable.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Unstructured;
use ferry_core::assertion::{Claims, SigningKey};
use ferry_core::ids::{DeviceId, TenantId};
use ferry_router::fuzzing::{Engine, Entropy, Login, Pace, Sequence, Setup, Vocabulary};
use libfuzzer_sys::fuzz_target;

const ADAPTER_USER: &str = "ferry-adapter";
const ADAPTER_PASSWORD: &str = "adapter-secret";
const ADMIN: &str = "admin-token";
const INTERNAL: &str = "internal-token";
const PACE: Pace = Pace {
    pause: Duration::from_millis(1),
    quiet: Duration::from_millis(2),
    settle_max: Duration::from_millis(50),
    bound: Duration::from_secs(5),
};

struct Bytes<'a, 'b>(&'a mut Unstructured<'b>);

impl Entropy for Bytes<'_, '_> {
    fn below(&mut self, n: u32) -> u32 {
        match n {
            0 => 0,
            n => self.0.int_in_range(0..=n - 1).unwrap_or(0),
        }
    }

    fn any_u32(&mut self) -> u32 {
        self.0.arbitrary().unwrap_or(0)
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
    engine: Engine,
    vocabulary: Vocabulary,
    _dir: tempfile::TempDir,
    _registry: ferry_core::shutdown::Trigger,
}

/// A registry (for application logins) and the engine, started once for all inputs.
fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let key = SigningKey::generate();
        let (trigger, engine) = runtime.block_on(async {
            let (trigger, shutdown) = ferry_core::shutdown::channel();
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
                shutdown,
            )
            .await
            .expect("the registry starts");
            let http = reqwest::Client::new();
            for (path, body) in [
                ("/v1/tenants/t1", "{}"),
                ("/v1/tenants/t2", "{}"),
                ("/v1/devices/t1/d1", "{}"),
            ] {
                http.post(format!("{}{path}", registry.url()))
                    .bearer_auth(ADMIN)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("registry call");
            }
            for (user, tenant) in [("app1", "t1"), ("app2", "t2")] {
                http.put(format!("{}/v1/applications/{user}", registry.url()))
                    .bearer_auth(ADMIN)
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"password": "pw", "tenants": ["{tenant}"]}}"#))
                    .send()
                    .await
                    .expect("registry call");
            }
            let engine = Engine::new(Setup {
                adapter_user: ADAPTER_USER.into(),
                adapter_password: ADAPTER_PASSWORD.into(),
                registry: Some((registry.url(), INTERNAL.into())),
                jwks: key.jwks(),
                max_events_per_tenant: 1000,
            });
            (trigger, engine)
        });
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let claims = Claims::new(
            TenantId::new("t1").expect("tenant id"),
            DeviceId::new("d1").expect("device id"),
            None,
            now,
            365 * 24 * 3600,
        );
        let login = |user: &str, password: &str| Login {
            user: user.into(),
            password: password.into(),
        };
        let vocabulary = Vocabulary {
            logins: vec![
                login(ADAPTER_USER, ADAPTER_PASSWORD),
                login("app1", "pw"),
                login("app1", "pw"),
                login("app2", "pw"),
                login("app1", "wrong"),
            ],
            adapter_user: ADAPTER_USER.into(),
            assertion: key.sign(&claims),
        };
        World {
            runtime,
            engine,
            vocabulary,
            _dir: dir,
            _registry: trigger,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let mut u = Unstructured::new(data);
    let sequence = Sequence::generate(&mut Bytes(&mut u), &world.vocabulary, 64);
    let outcome = world
        .runtime
        .block_on(world.engine.run(&sequence, PACE))
        .unwrap_or_else(|stuck| panic!("{stuck}: {sequence:#?}"));
    for received in &outcome.received {
        if let Some(bad) = &received.bad_output {
            panic!("the router sent {bad}: {sequence:#?}");
        }
    }
});
