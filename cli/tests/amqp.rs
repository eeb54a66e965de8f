//! `ferry consume` and `ferry command`, the real binary, against a registry and a router started in this
//! process; an fe2o3-amqp client plays the protocol adapter (telemetry, events, command subscriptions and
//! responses).

use std::process::{Output, Stdio};
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, Timestamp, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use ferry_test_support::platform::{TestRegistry, TestRouter};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const ADAPTER_USER: &str = "ferry-adapter";
const ADAPTER_PASSWORD: &str = "adapter-secret";

/// A registry (tenants t1 and t2, device d1 of t1, application user app1 of t1) and a router.
struct Platform {
    amqp: std::net::SocketAddr,
    registry: TestRegistry,
    _router: TestRouter,
    _data_dir: tempfile::TempDir,
}

impl Platform {
    async fn start() -> Self {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let registry = TestRegistry::start(&data_dir.path().join("registry"), |_| {}).await;
        for t in ["t1", "t2"] {
            registry.tenant(t, json!({})).await;
        }
        registry.device("t1", "d1", json!({})).await;
        registry.application("app1", "pw1", &["t1"]).await;
        let router = TestRouter::start(&registry.url, &data_dir.path().join("router"), |c| {
            c.adapter_password = ADAPTER_PASSWORD.into();
        })
        .await;
        Self {
            amqp: router.addr,
            registry,
            _router: router,
            _data_dir: data_dir,
        }
    }

    /// A registration assertion for `device` of `tenant`, as an adapter gets it.
    async fn assertion(&self, tenant: &str, device: &str) -> String {
        self.registry.assertion(tenant, device).await
    }

    /// An fe2o3 connection with a session, logged in as the protocol adapters' service user.
    async fn adapter(&self) -> (ConnectionHandle<()>, SessionHandle<()>) {
        let stream = tokio::net::TcpStream::connect(self.amqp)
            .await
            .expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut conn = Connection::builder()
            .container_id("test-adapter")
            .sasl_profile(SaslProfile::Plain {
                username: ADAPTER_USER.into(),
                password: ADAPTER_PASSWORD.into(),
            })
            .open_with_stream(stream)
            .await
            .expect("adapter connects");
        let session = Session::begin(&mut conn).await.expect("session");
        (conn, session)
    }

    /// `ferry SUBCOMMAND ARGS --amqp URL`, without credentials from the environment.
    fn ferry(&self, args: &[&str]) -> Command {
        let mut c = Command::new(FERRY);
        c.args(args)
            .arg("--amqp")
            .arg(format!("amqp://{}", self.amqp))
            .env_remove("FERRY_AMQP_USER")
            .env_remove("FERRY_AMQP_PASSWORD")
            .env_remove("FERRY_AMQP_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Runs `ferry ARGS` to its end (at most 20 s).
    async fn run(&self, args: &[&str]) -> Output {
        let child = self.ferry(args).spawn().expect("spawn ferry");
        tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .expect("ferry exits within 20 s")
            .expect("ferry output")
    }

    /// Starts `ferry consume ARGS` and waits until it says it is receiving.
    async fn consumer(&self, args: &[&str]) -> Consumer {
        let mut all = vec!["consume", "--user", "app1", "--password", "pw1"];
        all.extend_from_slice(args);
        let mut child = self.ferry(&all).spawn().expect("spawn ferry consume");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = stderr.next_line().await.expect("read stderr") {
                if line.contains("receiving") {
                    return line;
                }
            }
            panic!("ferry consume ended before it attached");
        })
        .await
        .expect("ferry consume attaches within 10 s");
        assert!(ready.contains("tenant t1"), "{ready}");
        Consumer { child }
    }
}

struct Consumer {
    child: Child,
}

impl Consumer {
    /// Waits for the end (it was given `--count`) and returns its exit status and stdout.
    async fn finish(self) -> (std::process::ExitStatus, String) {
        let out = tokio::time::timeout(Duration::from_secs(10), self.child.wait_with_output())
            .await
            .expect("ferry consume exits after --count messages")
            .expect("output");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

/// A device message as an adapter sends it: content type, creation time, `device_id`, assertion.
fn device_message(
    device: &str,
    assertion: &str,
    body: &[u8],
    extra: Option<(&str, i32)>,
) -> Message<Data> {
    let mut props = ApplicationProperties::builder()
        .insert("device_id", device)
        .insert("reg_assertion", assertion);
    if let Some((k, v)) = extra {
        props = props.insert(k, v);
    }
    Message::builder()
        .properties(
            Properties::builder()
                .content_type("text/plain")
                .creation_time(Timestamp::from_milliseconds(1_700_000_000_000))
                .build(),
        )
        .application_properties(props.build())
        .data(Binary::from(body.to_vec()))
        .build()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn consume_prints_telemetry_as_json() {
    let p = Platform::start().await;
    let consumer = p
        .consumer(&["--tenant", "t1", "--json", "--count", "2"])
        .await;
    let (_conn, mut session) = p.adapter().await;
    let mut tx = Sender::attach(&mut session, "telemetry", "telemetry/t1")
        .await
        .expect("adapter sender");
    let token = p.assertion("t1", "d1").await;
    for (body, extra) in [
        (&b"{\"temp\": 21}"[..], Some(("qos", 0))),
        (&[0xff, 0x00][..], None),
    ] {
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            tx.send(device_message("d1", &token, body, extra)),
        )
        .await
        .expect("telemetry is taken")
        .expect("send");
        assert!(
            matches!(outcome, Outcome::Accepted(_)),
            "the consumer accepts: {outcome:?}"
        );
    }
    let (status, out) = consumer.finish().await;
    assert!(status.success(), "{status}: {out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["device_id"], "d1");
    assert_eq!(lines[0]["content_type"], "text/plain");
    assert_eq!(lines[0]["body"], "{\"temp\": 21}");
    assert_eq!(lines[0]["properties"]["qos"], 0);
    assert_eq!(lines[0]["properties"]["device_id"], "d1");
    assert!(
        lines[0]["properties"].get("reg_assertion").is_none(),
        "the router strips the assertion"
    );
    assert_eq!(lines[0]["annotations"]["resource"], "telemetry/t1/d1");
    assert_eq!(lines[0]["creation_time"], "2023-11-14T22:13:20.000Z");
    assert_eq!(lines[1]["device_id"], "d1");
    assert_eq!(lines[1]["body"], "/wA=", "not UTF-8: base64");
    assert_eq!(lines[1]["body_encoding"], "base64");
}

#[tokio::test]
async fn consume_events_receives_a_stored_event() {
    let p = Platform::start().await;
    let (_conn, mut session) = p.adapter().await;
    let mut tx = Sender::attach(&mut session, "event", "event/t1")
        .await
        .expect("adapter sender");
    let token = p.assertion("t1", "d1").await;
    let outcome = tx
        .send(device_message("d1", &token, b"alarm on", Some(("qos", 1))))
        .await
        .expect("send");
    assert!(
        matches!(outcome, Outcome::Accepted(_)),
        "stored: {outcome:?}"
    );

    let consumer = p
        .consumer(&["--tenant", "t1", "--events", "--count", "1"])
        .await;
    let (status, out) = consumer.finish().await;
    assert!(status.success(), "{status}: {out}");
    assert_eq!(
        out.trim_end(),
        "device=d1 content-type=text/plain qos=1 body=alarm on",
        "a readable line"
    );
}

#[tokio::test]
async fn a_wrong_password_fails_with_authentication_failed() {
    let p = Platform::start().await;
    let o = p
        .run(&[
            "consume",
            "--tenant",
            "t1",
            "--user",
            "app1",
            "--password",
            "wrong",
        ])
        .await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("authentication failed"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("ferry application put"),
        "{}",
        stderr(&o)
    );

    let o = p.run(&["consume", "--tenant", "t1"]).await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("ferry application put"),
        "no password: {}",
        stderr(&o)
    );
}

#[tokio::test]
async fn another_tenant_is_not_authorized() {
    let p = Platform::start().await;
    for extra in [None, Some("--events")] {
        let mut args = vec![
            "consume",
            "--tenant",
            "t2",
            "--user",
            "app1",
            "--password",
            "pw1",
        ];
        args.extend(extra);
        let o = p.run(&args).await;
        assert!(!o.status.success());
        assert!(stderr(&o).contains("not authorized"), "{}", stderr(&o));
        assert!(stderr(&o).contains("/t2"), "{}", stderr(&o));
    }
}

#[tokio::test]
async fn a_command_to_an_unconnected_device_is_released() {
    let p = Platform::start().await;
    let o = p
        .run(&[
            "command",
            "--tenant",
            "t1",
            "--device",
            "d1",
            "--name",
            "setBrightness",
            "--payload",
            "80",
            "--user",
            "app1",
            "--password",
            "pw1",
        ])
        .await;
    assert!(!o.status.success());
    assert!(stdout(&o).contains("released"), "{}", stdout(&o));
    assert!(stderr(&o).contains("not connected"), "{}", stderr(&o));
}

#[tokio::test]
async fn a_command_with_wait_prints_the_response() {
    let p = Platform::start().await;
    // The adapter instance: subscribes d1, takes the command, answers it.
    let (_conn, mut session) = p.adapter().await;
    let mut commands = Receiver::builder()
        .name("commands")
        .source("command_internal/test-1")
        .credit_mode(CreditMode::Auto(10))
        .attach(&mut session)
        .await
        .expect("command link");
    let mut control = Sender::attach(&mut session, "control", "command_internal/test-1")
        .await
        .expect("control link");
    let register = Message::builder()
        .properties(Properties::builder().subject("register").build())
        .application_properties(
            ApplicationProperties::builder()
                .insert("tenant_id", "t1")
                .insert("device_id", "d1")
                .build(),
        )
        .data(Binary::from(Vec::new()))
        .build();
    let outcome = control.send(register).await.expect("register");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let mut responses = Sender::attach(&mut session, "responses", "command_response")
        .await
        .expect("response link");

    // One-way first: accepted.
    let one_way = p
        .ferry(&[
            "command",
            "--tenant",
            "t1",
            "--device",
            "d1",
            "--name",
            "reset",
            "--user",
            "app1",
            "--password",
            "pw1",
        ])
        .spawn()
        .expect("spawn");
    let d = tokio::time::timeout(Duration::from_secs(10), commands.recv::<Body<Value>>())
        .await
        .expect("the one-way command arrives")
        .expect("recv");
    let props = d.message().properties.clone().expect("properties");
    assert_eq!(props.subject.as_deref(), Some("reset"));
    assert!(props.reply_to.is_none(), "one-way");
    assert!(props.message_id.is_some());
    commands.accept(&d).await.expect("accept");
    let o = tokio::time::timeout(Duration::from_secs(10), one_way.wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "accepted");

    // Request/response, JSON.
    let waiting = p
        .ferry(&[
            "command",
            "--tenant",
            "t1",
            "--device",
            "d1",
            "--name",
            "getState",
            "--payload",
            "{\"verbose\":true}",
            "--content-type",
            "application/json",
            "--wait",
            "--json",
            "--user",
            "app1",
            "--password",
            "pw1",
        ])
        .spawn()
        .expect("spawn");
    let d = tokio::time::timeout(Duration::from_secs(10), commands.recv::<Body<Value>>())
        .await
        .expect("the command arrives")
        .expect("recv");
    let props = d.message().properties.clone().expect("properties");
    assert_eq!(props.to.as_deref(), Some("command/t1/d1"));
    assert_eq!(props.subject.as_deref(), Some("getState"));
    assert_eq!(
        props.content_type.as_ref().map(|c| c.0.as_str()),
        Some("application/json")
    );
    let reply_to = props.reply_to.clone().expect("reply-to with --wait");
    assert!(reply_to.starts_with("command_response/t1/"), "{reply_to}");
    let message_id: MessageId = props.message_id.clone().expect("message-id");
    match d.body() {
        Body::Data(b) => assert_eq!(
            b.iter().flat_map(|d| d.0.to_vec()).collect::<Vec<u8>>(),
            b"{\"verbose\":true}"
        ),
        other => panic!("expected Data, got {other:?}"),
    }
    commands.accept(&d).await.expect("accept");
    let response = Message::builder()
        .properties(
            Properties::builder()
                .to(reply_to)
                .correlation_id(message_id)
                .content_type("application/json")
                .build(),
        )
        .application_properties(
            ApplicationProperties::builder()
                .insert("status", 200i32)
                .insert("device_id", "d1")
                .insert("tenant_id", "t1")
                .build(),
        )
        .data(Binary::from(b"{\"on\":true}".to_vec()))
        .build();
    let outcome = responses.send(response).await.expect("send response");
    assert!(
        matches!(outcome, Outcome::Accepted(_)),
        "ferry takes the response: {outcome:?}"
    );
    let o = tokio::time::timeout(Duration::from_secs(10), waiting.wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON");
    assert_eq!(r["status"], 200);
    assert_eq!(r["content_type"], "application/json");
    assert_eq!(r["body"], "{\"on\":true}");
    assert_eq!(r["properties"]["device_id"], "d1");
}

#[tokio::test]
async fn a_command_with_wait_times_out_without_a_response() {
    let p = Platform::start().await;
    let (_conn, mut session) = p.adapter().await;
    let mut commands = Receiver::builder()
        .name("commands")
        .source("command_internal/test-1")
        .credit_mode(CreditMode::Auto(10))
        .attach(&mut session)
        .await
        .expect("command link");
    let mut control = Sender::attach(&mut session, "control", "command_internal/test-1")
        .await
        .expect("control link");
    let register = Message::builder()
        .properties(Properties::builder().subject("register").build())
        .application_properties(
            ApplicationProperties::builder()
                .insert("tenant_id", "t1")
                .insert("device_id", "d1")
                .build(),
        )
        .data(Binary::from(Vec::new()))
        .build();
    control.send(register).await.expect("register");
    let waiting = p
        .ferry(&[
            "command",
            "--tenant",
            "t1",
            "--device",
            "d1",
            "--name",
            "getState",
            "--wait",
            "--timeout",
            "1",
            "--user",
            "app1",
            "--password",
            "pw1",
        ])
        .spawn()
        .expect("spawn");
    let d = tokio::time::timeout(Duration::from_secs(10), commands.recv::<Body<Value>>())
        .await
        .expect("the command arrives")
        .expect("recv");
    commands.accept(&d).await.expect("accept");
    let o = tokio::time::timeout(Duration::from_secs(10), waiting.wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no response"), "{}", stderr(&o));
}

#[tokio::test]
async fn consume_stops_cleanly_on_sigterm() {
    let p = Platform::start().await;
    let consumer = p.consumer(&["--tenant", "t1"]).await;
    let pid = consumer.child.id().expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let (status, _) = consumer.finish().await;
    assert!(status.success(), "exit 0 after SIGTERM: {status}");
}
