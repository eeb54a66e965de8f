//! End-to-end tests of the HTTP adapter with clients no one here wrote: `curl` is the device, a Qpid
//! Proton application consumes from the router and sends commands. Registry, router and adapter run in
//! this process on 127.0.0.1:0.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_core::shutdown::{self, Trigger};
use serde_json::{json, Value};

mod cluster;
mod connections;
mod device_auth;
mod limits;

use ferry_test_support::platform::{TestRegistry, TestRouter, INTERNAL_TOKEN};

struct Platform {
    amqp: std::net::SocketAddr,
    adapter: ferry_http_adapter::Started,
    admin: ferry_core::admin::Admin,
    registry: TestRegistry,
    _router: TestRouter,
    adapter_trigger: Trigger,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Platform {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut ferry_http_adapter::Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = TestRegistry::start(&dir.path().join("registry"), |_| {}).await;
        let router = TestRouter::start(&registry.url, &dir.path().join("router"), |_| {}).await;
        let mut config = ferry_http_adapter::Config {
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
        };
        tweak(&mut config);
        let admin = ferry_core::admin::Admin::new();
        let (adapter_trigger, s) = shutdown::channel();
        let adapter = ferry_http_adapter::start(config, admin.clone(), s)
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
        for t in ["t1", "t2"] {
            registry.tenant(t, json!({})).await;
        }
        registry
            .tenant(
                "mqtt-only",
                json!({ "adapters": [{ "type": "hono-mqtt", "enabled": true }] }),
            )
            .await;
        registry.device("t1", "d1", json!({})).await;
        registry.device("t1", "gw", json!({})).await;
        registry
            .device("t1", "behind", json!({ "via": ["gw"] }))
            .await;
        registry.device("t2", "x", json!({})).await;
        registry.device("mqtt-only", "m1", json!({})).await;
        registry.password("t1", "d1", "sensor1", "hunter2").await;
        registry.password("t1", "gw", "gw1", "gwpass").await;
        registry.password("mqtt-only", "m1", "m1", "pw").await;
        registry.application("app1", "pw1", &["t1"]).await;
        registry.application("app2", "pw2", &["t2"]).await;
        Self {
            amqp: router.addr,
            adapter,
            admin,
            registry,
            _router: router,
            adapter_trigger,
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    async fn manage(&self, method: reqwest::Method, path: &str, body: Value) {
        self.registry.manage(method, path, body).await;
    }

    async fn password(&self, tenant: &str, device: &str, auth_id: &str, password: &str) {
        self.registry
            .password(tenant, device, auth_id, password)
            .await;
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.adapter.addr)
    }

    /// A Proton consumer on `address`, expecting `count` messages.
    fn consumer(&self, user: &str, password: &str, address: &str, count: usize) -> Lines {
        let lines = proton(&[
            "consume",
            &format!("amqp://{user}:{password}@{}", self.amqp),
            address,
            &count.to_string(),
            "20",
        ]);
        let opened = lines
            .next(Duration::from_secs(10))
            .expect("consumer starts");
        assert_eq!(opened["opened"], address, "{opened}");
        lines
    }

    /// A Proton application sending one request/response command to `device` of t1.
    fn command(&self, device: &str, name: &str, payload: &str) -> Lines {
        proton(&[
            "command",
            &format!("amqp://app1:pw1@{}", self.amqp),
            "t1",
            device,
            name,
            payload,
            "10",
        ])
    }

    /// Waits until `n` requests wait for commands.
    async fn waiting(&self, n: usize) {
        let started = Instant::now();
        while self.adapter.shared.commands.len() != n {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{n} waiting requests expected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// JSON lines of a Proton client.
struct Lines {
    child: std::process::Child,
    rx: std::sync::mpsc::Receiver<Value>,
}

impl Lines {
    fn next(&self, within: Duration) -> Option<Value> {
        self.rx
            .recv_timeout(within)
            .ok()
            .filter(|v| v.get("timeout").is_none())
    }

    /// Everything until the client exits.
    fn rest(mut self) -> Vec<Value> {
        let mut all = Vec::new();
        while let Ok(v) = self.rx.recv_timeout(Duration::from_secs(15)) {
            all.push(v);
        }
        let _ = self.child.wait();
        all
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proton(args: &[&str]) -> Lines {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../router/tests/proton/client.py"
    );
    let mut child = Command::new(ferry_test_support::test_python())
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    Lines { child, rx }
}

/// What curl got back.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `curl -i` output: interim `100 Continue` responses are skipped.
fn parse_reply(out: &[u8]) -> Reply {
    let mut text = String::from_utf8_lossy(out).into_owned();
    loop {
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP response in {text:?}"));
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {head:?}"));
        if status == 100 {
            text = rest.to_owned();
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        return Reply {
            status,
            headers,
            body: rest.to_owned(),
        };
    }
}

fn curl_command(args: &[&str]) -> Command {
    let mut c = Command::new(ferry_test_support::require_program("curl"));
    c.args(["-sS", "-i", "--max-time", "30"]).args(args);
    c
}

/// Runs curl (off the async runtime's worker) and parses its response.
fn curl(args: &[&str]) -> Reply {
    let out = tokio::task::block_in_place(|| curl_command(args).output().expect("curl"));
    parse_reply(&out.stdout)
}

/// curl in the background, for requests that wait.
fn curl_spawn(args: &[&str]) -> std::thread::JoinHandle<Reply> {
    let mut c = curl_command(args);
    std::thread::spawn(move || parse_reply(&c.output().expect("curl").stdout))
}

const D1: &str = "sensor1@t1:hunter2";
const GW: &str = "gw1@t1:gwpass";

#[tokio::test(flavor = "multi_thread")]
async fn curl_telemetry_qos0_and_qos1_reaches_a_proton_consumer_with_hono_properties() {
    let p = Platform::start().await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 2);
    for qos in ["0", "1"] {
        let r = curl(&[
            "-u",
            D1,
            "-H",
            "content-type: application/json",
            "-H",
            &format!("qos-level: {qos}"),
            "--data-binary",
            &format!("{{\"qos\":{qos}}}"),
            &p.url("/telemetry"),
        ]);
        assert_eq!(r.status, 202, "qos {qos}: {r:?}");
    }
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let m = c.next(Duration::from_secs(5)).expect("telemetry arrives");
        assert_eq!(m["properties"]["device_id"], "d1", "{m}");
        assert_eq!(m["properties"]["orig_adapter"], "hono-http", "{m}");
        assert_eq!(m["properties"]["orig_address"], "/telemetry", "{m}");
        assert_eq!(m["content_type"], "application/json", "{m}");
        assert!(m["properties"].get("reg_assertion").is_none());
        assert!(m["properties"].get("ttd").is_none());
        bodies.push(m["body"].as_str().expect("body").to_owned());
    }
    bodies.sort();
    assert_eq!(bodies, ["{\"qos\":0}", "{\"qos\":1}"]);
    let metrics = p.admin.encode_metrics();
    assert!(
        metrics.contains(
            "hono_telemetry_processing_total{component_type=\"adapter\",component_name=\"hono-http\",tenant=\"t1\",type=\"telemetry\",status=\"forwarded\",qos=\"1\",ttd=\"none\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_http_adapter_requests_total{code=\"202\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let p = Platform::start().await;
    let _c = p.consumer("app1", "pw1", "telemetry/t1", 10);
    let url = p.url("/telemetry");
    let out = tokio::task::block_in_place(|| {
        Command::new(ferry_test_support::require_program("curl"))
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-u",
                D1,
                "-H",
                "content-type: text/plain",
            ])
            .args([
                "-w",
                "%{http_code} %{num_connects}\\n",
                "--data-binary",
                "a",
            ])
            .args([&url, &url, &url])
            .output()
            .expect("curl")
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "202 1\n202 0\n202 0\n", "one connection, reused");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_stored_and_delivered_later_with_their_ttl() {
    let p = Platform::start().await;
    let r = curl(&[
        "-u",
        D1,
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "alarm",
        &p.url("/event?hono-ttl=60"),
    ]);
    assert_eq!(r.status, 202, "{r:?}");
    let c = p.consumer("app1", "pw1", "event/t1", 1);
    let m = c
        .next(Duration::from_secs(5))
        .expect("the stored event arrives");
    assert_eq!(m["body"], "alarm");
    assert_eq!(m["content_type"], "text/plain");
    assert_eq!(m["properties"]["device_id"], "d1");
    assert_eq!(m["properties"]["orig_adapter"], "hono-http");
    assert_eq!(m["properties"]["qos"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_without_a_consumer_get_503() {
    let p = Platform::start().await;
    for qos in ["0", "1"] {
        let r = curl(&[
            "-u",
            D1,
            "-H",
            "content-type: text/plain",
            "-H",
            &format!("qos-level: {qos}"),
            "--data-binary",
            "lost",
            &p.url("/telemetry"),
        ]);
        assert_eq!(r.status, 503, "qos {qos}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_get_401_with_a_basic_challenge() {
    let p = Platform::start().await;
    let url = p.url("/telemetry");
    for auth in [
        vec![],
        vec!["-u", "sensor1@t1:wrong"],
        vec!["-u", "sensor1@nope:hunter2"],
        vec!["-u", "nobody@t1:hunter2"],
        vec!["-u", "sensor1:hunter2"],
        vec!["-H", "authorization: Bearer abc"],
    ] {
        let mut args = auth.clone();
        args.extend(["-H", "content-type: text/plain", "--data-binary", "x", &url]);
        let r = curl(&args);
        assert_eq!(r.status, 401, "{auth:?}: {r:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"Hono\""),
            "{r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_400_404_or_405() {
    let p = Platform::start().await;
    let _c = p.consumer("app1", "pw1", "telemetry/t1", 10);
    let cases: Vec<(Vec<&str>, &str, u16)> = vec![
        (
            vec![
                "-H",
                "qos-level: 2",
                "-H",
                "content-type: text/plain",
                "--data-binary",
                "x",
            ],
            "/telemetry",
            400,
        ),
        // An empty body says nothing without a content type.
        (vec!["-X", "POST"], "/telemetry", 400),
        (
            vec![
                "-H",
                "content-type: application/vnd.eclipse-hono-empty-notification",
                "--data-binary",
                "x",
            ],
            "/telemetry",
            400,
        ),
        (
            vec![
                "-H",
                "content-type: text/plain",
                "-H",
                "hono-ttd: soon",
                "--data-binary",
                "x",
            ],
            "/telemetry",
            400,
        ),
        (
            vec!["-H", "content-type: text/plain", "--data-binary", "x"],
            "/event?hono-ttl=-5",
            400,
        ),
        (
            vec!["-H", "content-type: text/plain", "--data-binary", "x"],
            "/command/res/005cmd-1r",
            400,
        ),
        (
            vec!["-H", "hono-cmd-status: 200", "--data-binary", "x"],
            "/command/res/zz",
            400,
        ),
        (
            vec!["-H", "content-type: text/plain", "--data-binary", "x"],
            "/nowhere",
            404,
        ),
        (vec!["-X", "GET"], "/telemetry", 405),
    ];
    for (args, path, status) in cases {
        let url = p.url(path);
        let mut all = vec!["-u", D1];
        all.extend(args.iter().copied());
        all.push(&url);
        let r = curl(&all);
        assert_eq!(r.status, status, "{args:?} {path}: {r:?}");
    }
    // An empty notification with no body is fine.
    let r = curl(&[
        "-u",
        D1,
        "-X",
        "POST",
        "-H",
        "content-type: application/vnd.eclipse-hono-empty-notification",
        &p.url("/telemetry"),
    ]);
    assert_eq!(r.status, 202, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_publishes_for_its_device_and_others_are_refused() {
    let p = Platform::start().await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 2);
    for path in ["/telemetry/t1/behind", "/telemetry//behind"] {
        let r = curl(&[
            "-X",
            "PUT",
            "-u",
            GW,
            "-H",
            "content-type: text/plain",
            "--data-binary",
            "via gw",
            &p.url(path),
        ]);
        assert_eq!(r.status, 202, "{path}: {r:?}");
        let m = c.next(Duration::from_secs(5)).expect("arrives");
        assert_eq!(m["properties"]["device_id"], "behind", "{m}");
        assert_eq!(m["properties"]["orig_address"], path, "{m}");
    }
    let put = |auth: &str, path: &str| {
        curl(&[
            "-X",
            "PUT",
            "-u",
            auth,
            "-H",
            "content-type: text/plain",
            "--data-binary",
            "x",
            &p.url(path),
        ])
    };
    // d1 is nobody's gateway: the registry refuses.
    assert_eq!(put(D1, "/telemetry/t1/behind").status, 403);
    assert_eq!(put(D1, "/event//behind").status, 403);
    // A device the registry does not know.
    assert_eq!(put(GW, "/telemetry/t1/ghost").status, 404);
    // A device may use the PUT form for itself.
    assert_eq!(put(D1, "/telemetry/t1/d1").status, 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_cannot_reach_another_tenant() {
    let p = Platform::start().await;
    let c2 = p.consumer("app2", "pw2", "telemetry/t2", 1);
    for path in [
        "/telemetry/t2/x",
        "/event/t2/x",
        "/command/res/t2/x/005cmd-1r",
    ] {
        let r = curl(&[
            "-X",
            "PUT",
            "-u",
            D1,
            "-H",
            "content-type: text/plain",
            "-H",
            "hono-cmd-status: 200",
            "--data-binary",
            "intrusion",
            &p.url(path),
        ]);
        assert_eq!(r.status, 403, "{path}: {r:?}");
    }
    assert!(c2.next(Duration::from_millis(500)).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_tenants_adapters_and_devices_are_refused() {
    let p = Platform::start().await;
    let post = |auth: &str| {
        curl(&[
            "-u",
            auth,
            "-H",
            "content-type: text/plain",
            "--data-binary",
            "x",
            &p.url("/telemetry"),
        ])
    };
    // The tenant lists adapters, and hono-http is not among them.
    assert_eq!(post("m1@mqtt-only:pw").status, 403);
    p.manage(
        reqwest::Method::PUT,
        "/v1/devices/t1/d1",
        json!({ "enabled": false }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(post(D1).status, 404);
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        json!({ "enabled": false }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(post(D1).status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_unavailable_gets_503() {
    let p = Platform::start().await;
    p.registry.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = curl(&[
        "-u",
        "unseen@t1:whatever",
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "x",
        &p.url("/telemetry"),
    ]);
    assert_eq!(r.status, 503, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_get_413_declared_or_chunked() {
    let p = Platform::start().await;
    let _c = p.consumer("app1", "pw1", "telemetry/t1", 10);
    let dir = tempfile::tempdir().expect("dir");
    let fits = dir.path().join("fits");
    let big = dir.path().join("big");
    std::fs::write(&fits, vec![b'a'; 2048]).expect("write");
    std::fs::write(&big, vec![b'a'; 2049]).expect("write");
    let post = |file: &std::path::Path, chunked: bool| {
        let data = format!("@{}", file.display());
        let mut args = vec!["-u", D1, "-H", "content-type: text/plain"];
        if chunked {
            args.extend(["-H", "transfer-encoding: chunked"]);
        }
        let url = p.url("/telemetry");
        args.extend(["--data-binary", &data, &url]);
        curl(&args)
    };
    assert_eq!(post(&fits, false).status, 202);
    assert_eq!(post(&fits, true).status, 202);
    let r = post(&big, false);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(post(&big, true).status, 413);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_body_gets_408_and_the_connection_is_closed() {
    let p = Platform::start_with(|c| c.body_timeout_secs = 1).await;
    let addr = p.adapter.addr;
    let started = Instant::now();
    let response = tokio::task::block_in_place(|| {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // "sensor1@t1:hunter2"
        s.write_all(
            b"POST /telemetry HTTP/1.1\r\nhost: x\r\nauthorization: Basic c2Vuc29yMUB0MTpodW50ZXIy\r\n\
              content-type: text/plain\r\ncontent-length: 10\r\n\r\nab",
        )
        .expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_off() {
    let p = Platform::start_with(|c| c.idle_timeout_secs = 1).await;
    let addr = p.adapter.addr;
    let started = Instant::now();
    tokio::task::block_in_place(|| {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"POST /telemetry HTTP/1.1\r\nhost: x\r\n")
            .expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
    });
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Runs a request/response command through a device waiting with `hono-ttd`: `device_args` make the
/// waiting request, `respond` is the response URI for a request id.
async fn command_round_trip(
    p: &Platform,
    device_args: &[&str],
    device: &str,
    respond: impl Fn(&str) -> (&'static str, String, &'static str),
) -> Reply {
    let c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let waiting = curl_spawn(device_args);
    // The ttd notification reaches the application after the device's subscription is in place.
    let m = c.next(Duration::from_secs(10)).expect("ttd notification");
    assert_eq!(m["properties"]["ttd"], 10, "{m}");
    assert_eq!(m["properties"]["device_id"], device, "{m}");
    p.waiting(1).await;
    let app = p.command(device, "setBrightness", "{\"b\":80}");
    let got = tokio::task::block_in_place(|| waiting.join().expect("curl"));
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.header("hono-command"), Some("setBrightness"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.body, "{\"b\":80}");
    let req_id = got
        .header("hono-cmd-req-id")
        .expect("request id")
        .to_owned();
    let (method, path, auth) = respond(&req_id);
    let r = curl(&[
        "-X",
        method,
        "-u",
        auth,
        "-H",
        "hono-cmd-status: 200",
        "-H",
        "content-type: application/json",
        "--data-binary",
        "{\"done\":true}",
        &p.url(&path),
    ]);
    assert_eq!(r.status, 202, "{r:?}");
    let lines = tokio::task::block_in_place(|| app.rest());
    assert!(
        lines.iter().any(|l| l["outcome"] == "accepted"),
        "{lines:?}"
    );
    let response = lines
        .iter()
        .find(|l| l.get("response").is_some())
        .unwrap_or_else(|| panic!("a response in {lines:?}"));
    assert_eq!(response["response"], "{\"done\":true}");
    assert_eq!(response["correlation_id"], "cmd-1");
    assert_eq!(response["properties"]["status"], 200);
    assert_eq!(response["properties"]["device_id"], device);
    p.waiting(0).await;
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_reaches_a_curl_device_waiting_with_ttd_and_its_response_returns() {
    let p = Platform::start().await;
    let url = p.url("/telemetry");
    let got = command_round_trip(
        &p,
        &[
            "-u",
            D1,
            "-X",
            "POST",
            "-H",
            "content-type: application/vnd.eclipse-hono-empty-notification",
            "-H",
            "hono-ttd: 10",
            &url,
        ],
        "d1",
        |id| ("POST", format!("/command/res/{id}"), D1),
    )
    .await;
    assert_eq!(got.header("hono-cmd-target-device"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_waits_for_its_devices_command_and_answers_for_it() {
    let p = Platform::start().await;
    let url = p.url("/telemetry/t1/behind?hono-ttd=10");
    let got = command_round_trip(
        &p,
        &[
            "-u",
            GW,
            "-X",
            "PUT",
            "-H",
            "content-type: text/plain",
            "--data-binary",
            "poll",
            &url,
        ],
        "behind",
        |id| ("PUT", format!("/command/res//behind/{id}"), GW),
    )
    .await;
    assert_eq!(got.header("hono-cmd-target-device"), Some("behind"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ttd_without_a_command_ends_with_202_after_the_tenants_max_ttd() {
    let p = Platform::start().await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        json!({ "adapters": [{ "type": "hono-http", "enabled": true, "max-ttd": 1 }] }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let started = Instant::now();
    let r = curl(&[
        "-u",
        D1,
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "x",
        &p.url("/telemetry?hono-ttd=30"),
    ]);
    assert_eq!(r.status, 202, "{r:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    let m = c.next(Duration::from_secs(5)).expect("arrives");
    assert_eq!(
        m["properties"]["ttd"], 1,
        "the effective ttd goes downstream"
    );
    p.waiting(0).await;
    let metrics = p.admin.encode_metrics();
    assert!(metrics.contains("ttd=\"expired\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_latest_wait_for_a_device_wins() {
    let p = Platform::start().await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 2);
    let url = p.url("/telemetry?hono-ttd=20");
    let args = [
        "-u",
        D1,
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "x",
        url.as_str(),
    ];
    let first = curl_spawn(&args);
    c.next(Duration::from_secs(10)).expect("first notification");
    let started = Instant::now();
    let second = curl_spawn(&args);
    c.next(Duration::from_secs(10))
        .expect("second notification");
    let first = tokio::task::block_in_place(|| first.join().expect("curl"));
    assert_eq!(first.status, 202, "the older wait ends: {first:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    p.waiting(1).await;
    let app = p.command("d1", "reboot", "{}");
    let second = tokio::task::block_in_place(|| second.join().expect("curl"));
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.header("hono-command"), Some("reboot"));
    drop(app);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_devices_own_wait_takes_precedence_over_a_gateways() {
    let p = Platform::start().await;
    p.password("t1", "behind", "behind1", "behindpass").await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 2);
    let own_url = p.url("/telemetry?hono-ttd=3");
    let gateway_url = p.url("/telemetry/t1/behind?hono-ttd=3");
    let own = curl_spawn(&[
        "-u",
        "behind1@t1:behindpass",
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "own",
        own_url.as_str(),
    ]);
    c.next(Duration::from_secs(10))
        .expect("the device's notification");
    // A gateway's newer request for the same device does not end the device's own...
    let gateway = curl_spawn(&[
        "-u",
        GW,
        "-X",
        "PUT",
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "via gateway",
        gateway_url.as_str(),
    ]);
    c.next(Duration::from_secs(10))
        .expect("the gateway's notification");
    p.waiting(1).await;
    // ...and the command goes to the device's own request.
    let app = p.command("behind", "reboot", "{}");
    let own = tokio::task::block_in_place(|| own.join().expect("curl"));
    assert_eq!(own.status, 200, "{own:?}");
    assert_eq!(own.header("hono-command"), Some("reboot"));
    assert_eq!(own.header("hono-cmd-target-device"), None);
    let gateway = tokio::task::block_in_place(|| gateway.join().expect("curl"));
    assert_eq!(gateway.status, 202, "the gateway got nothing: {gateway:?}");
    drop(app);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_response_nobody_waits_for_gets_503() {
    let p = Platform::start().await;
    let r = curl(&[
        "-u",
        D1,
        "-H",
        "hono-cmd-status: 200",
        "--data-binary",
        "late",
        &p.url("/command/res/005cmd-1nobody-listens"),
    ]);
    assert_eq!(r.status, 503, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_for_a_device_that_does_not_wait_is_released() {
    let p = Platform::start().await;
    let lines = tokio::task::block_in_place(|| p.command("d1", "reboot", "{}").rest());
    assert!(
        lines.iter().any(|l| l["outcome"] == "released"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_the_configured_certificate() {
    let pki = ferry_test_support::TestPki::generate();
    let (cert, key) = (pki.server_cert_path.clone(), pki.server_key_path.clone());
    let p = Platform::start_with(move |c| {
        c.tls.cert_path = Some(cert);
        c.tls.key_path = Some(key);
    })
    .await;
    let _c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let tls = p.adapter.tls_addr.expect("HTTPS listener");
    let ca = pki.ca_cert_path.display().to_string();
    let r = curl(&[
        "--cacert",
        &ca,
        "-u",
        D1,
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "secure",
        &format!("https://localhost:{}/telemetry", tls.port()),
    ]);
    assert_eq!(r.status, 202, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_answer() {
    let port = ferry_test_support::free_port();
    let p = Platform::start_with(|c| c.admin_bind = Some(([127, 0, 0, 1], port).into())).await;
    for (path, needle) in [
        ("/live", "ok"),
        ("/ready", "ready"),
        ("/metrics", "hono_telemetry_processing"),
    ] {
        let r = p
            .http
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .expect("admin");
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.text().await.expect("body").contains(needle), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_that_hangs_up_ends_its_wait_and_commands_are_released() {
    let p = Platform::start().await;
    let _c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let url = p.url("/telemetry?hono-ttd=30");
    let mut gone = curl_command(&[
        "--max-time",
        "1",
        "-u",
        D1,
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "x",
        &url,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("curl");
    p.waiting(1).await;
    let status = tokio::task::block_in_place(|| gone.wait()).expect("curl");
    assert!(!status.success(), "curl gave up");
    // The adapter notices the closed connection and stops waiting: the command is not taken.
    p.waiting(0).await;
    let lines = tokio::task::block_in_place(|| p.command("d1", "reboot", "{}").rest());
    assert!(
        lines.iter().any(|l| l["outcome"] == "released"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_waits_with_202_and_stops_the_adapter() {
    let p = Platform::start().await;
    let _c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let url = p.url("/telemetry?hono-ttd=30");
    let waiting = curl_spawn(&[
        "-u",
        D1,
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "x",
        &url,
    ]);
    p.waiting(1).await;
    let Platform {
        adapter,
        adapter_trigger,
        ..
    } = p;
    let started = Instant::now();
    adapter_trigger.trigger();
    let r = tokio::task::block_in_place(|| waiting.join().expect("curl"));
    assert_eq!(r.status, 202, "{r:?}");
    tokio::time::timeout(Duration::from_secs(5), adapter.join())
        .await
        .expect("the adapter stops")
        .expect("cleanly");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_binary_prints_its_defaults_and_exits_64_on_bad_config() {
    let bin = env!("CARGO_BIN_EXE_ferry-http-adapter");
    let out = Command::new(bin)
        .arg("--print-default-config")
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_payload_bytes: 2048"), "{text}");
    assert!(text.contains("instance_id: http-0"), "{text}");
    let out = Command::new(bin)
        .env("FERRY_HTTP_MAX_PAYLOAD_BYTES", "0")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_payload_bytes"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wait_longer_than_the_idle_timeout_is_not_cut_off() {
    let p = Platform::start_with(|c| c.idle_timeout_secs = 1).await;
    let _c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    let started = Instant::now();
    let r = curl(&[
        "-u",
        D1,
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "x",
        &p.url("/telemetry?hono-ttd=3"),
    ]);
    assert_eq!(r.status, 202, "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(2900));
}
