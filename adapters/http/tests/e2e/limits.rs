//! Device and tenant `defaults`, the tenant's `max-ttl`, and the tenant's data volume (429).

use super::*;

/// A Qpid Proton receiver (argv: URL, address) printing content type, `ttl` (seconds) and application
/// properties of each message as JSON.
const PROTON_HEADERS: &str = r#"
import sys, json
from proton.handlers import MessagingHandler
from proton.reactor import Container
class R(MessagingHandler):
    def __init__(self, url, address):
        super().__init__()
        self.url, self.address = url, address
    def on_start(self, event):
        conn = event.container.connect(self.url, allowed_mechs="PLAIN", allow_insecure_mechs=True)
        event.container.create_receiver(conn, self.address)
    def on_link_opened(self, event):
        if event.receiver:
            print(json.dumps({"opened": self.address}), flush=True)
    def on_message(self, event):
        m = event.message
        print(json.dumps({"content_type": m.content_type, "ttl": m.ttl,
                          "properties": m.properties or {}}), flush=True)
        self.accept(event.delivery)
Container(R(sys.argv[1], sys.argv[2])).run()
"#;

fn header_consumer(p: &Platform, address: &str) -> Lines {
    let mut child = Command::new(ferry_test_support::test_python())
        .arg("-c")
        .arg(PROTON_HEADERS)
        .arg(format!("amqp://app1:pw1@{}", p.amqp))
        .arg(address)
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
    let lines = Lines { child, rx };
    let opened = lines
        .next(Duration::from_secs(10))
        .expect("consumer starts");
    assert_eq!(opened["opened"], address, "{opened}");
    lines
}

#[tokio::test(flavor = "multi_thread")]
async fn defaults_fill_in_and_the_tenant_caps_the_ttl() {
    let p = Platform::start().await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        json!({
            "defaults": { "content-type": "application/vnd.tenant+json", "ttl": 600, "region": "eu" },
            "resource-limits": { "max-ttl": 30 }
        }),
    )
    .await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/devices/t1/d1",
        json!({ "defaults": { "content-type": "application/vnd.device+json", "line": 7 } }),
    )
    .await;
    let events = header_consumer(&p, "event/t1");
    let r = curl(&[
        "-u",
        D1,
        "--data-binary",
        "{}",
        "-H",
        "content-type:",
        &p.url("/event?hono-ttl=3600"),
    ]);
    assert_eq!(r.status, 202, "{r:?}");
    let m = events.next(Duration::from_secs(5)).expect("arrives");
    assert_eq!(
        m["content_type"], "application/vnd.device+json",
        "the device's default first: {m}"
    );
    assert_eq!(m["ttl"], 30.0, "capped by max-ttl: {m}");
    assert_eq!(m["properties"]["region"], "eu", "{m}");
    assert_eq!(m["properties"]["line"], 7, "{m}");
    // Without hono-ttl: the tenant's default TTL, capped as well.
    let r = curl(&[
        "-u",
        D1,
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "x",
        &p.url("/event"),
    ]);
    assert_eq!(r.status, 202, "{r:?}");
    let m = events.next(Duration::from_secs(5)).expect("arrives");
    assert_eq!(m["content_type"], "text/plain", "{m}");
    assert_eq!(m["ttl"], 30.0, "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_volume_answers_429_once_used_up() {
    let p = Platform::start().await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        json!({ "resource-limits": { "data-volume": {
            "effective-since": "2020-01-01T00:00:00Z", "max-bytes": 10, "period": { "mode": "days", "no-of-days": 30 }
        } } }),
    )
    .await;
    let _c = p.consumer("app1", "pw1", "telemetry/t1", 10);
    let post = |body: &str| {
        curl(&[
            "-u",
            D1,
            "-H",
            "content-type: text/plain",
            "--data-binary",
            body,
            &p.url("/telemetry"),
        ])
    };
    assert_eq!(post("123456").status, 202);
    let r = post("abcdef");
    assert_eq!(r.status, 429, "6 + 6 > 10: {r:?}");
    assert_eq!(post("wxyz").status, 202, "6 + 4 fits");
    assert_eq!(post("z").status, 429);
    // Another tenant is not affected.
    p.password("t2", "x", "x1", "xpw").await;
    let _c2 = p.consumer("app2", "pw2", "telemetry/t2", 1);
    let r = curl(&[
        "-u",
        "x1@t2:xpw",
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "0123456789abc",
        &p.url("/telemetry"),
    ]);
    assert_eq!(r.status, 202, "{r:?}");
    let text = p.admin.encode_metrics();
    assert!(
        text.contains(r#"hono_telemetry_processing_total{component_type="adapter",component_name="hono-http",tenant="t1",type="telemetry",status="unprocessable",qos="0",ttd="none"} 2"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_are_rejected_once_the_data_volume_is_used_up() {
    let p = Platform::start().await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        json!({ "resource-limits": { "data-volume": {
            "effective-since": "2020-01-01T00:00:00Z", "max-bytes": 10
        } } }),
    )
    .await;
    let _c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    // The device's 10 bytes use the volume up; then it waits for a command.
    let url = p.url("/telemetry");
    let device = curl_spawn(&[
        "-u",
        D1,
        "-H",
        "content-type: text/plain",
        "-H",
        "hono-ttd: 3",
        "--data-binary",
        "0123456789",
        &url,
    ]);
    p.waiting(1).await;
    let app = p.command("d1", "reboot", "{}").rest();
    assert!(app.iter().any(|l| l["outcome"] == "rejected"), "{app:?}");
    let r = tokio::task::block_in_place(|| device.join()).expect("curl thread");
    assert_eq!(r.status, 202, "no command came: {r:?}");
}
