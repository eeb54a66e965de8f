//! Commands: applications send on `command/T`; adapters subscribe devices on `command_internal/INSTANCE`
//! and answer on `command_response`.

use std::time::Duration;

use fe2o3_amqp::types::messaging::{ApplicationProperties, Message, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Receiver, Sender};

use serde_json::json;

use crate::harness::*;

fn command(
    to: &str,
    subject: Option<&str>,
    reply_to: Option<&str>,
) -> Message<fe2o3_amqp::types::messaging::Data> {
    let mut props = Properties::builder()
        .to(to)
        .message_id(String::from("cmd-1"));
    if let Some(s) = subject {
        props = props.subject(s);
    }
    if let Some(r) = reply_to {
        props = props.reply_to(r);
    }
    Message::builder()
        .properties(props.build())
        .data(Binary::from(b"{\"brightness\":80}".to_vec()))
        .build()
}

fn subscription(
    subject: &str,
    tenant: &str,
    device: &str,
) -> Message<fe2o3_amqp::types::messaging::Data> {
    Message::builder()
        .properties(Properties::builder().subject(subject).build())
        .application_properties(
            ApplicationProperties::builder()
                .insert("tenant_id", tenant)
                .insert("device_id", device)
                .build(),
        )
        .data(Binary::from(Vec::new()))
        .build()
}

fn gateway_subscription(
    subject: &str,
    tenant: &str,
    gateway: &str,
) -> Message<fe2o3_amqp::types::messaging::Data> {
    Message::builder()
        .properties(Properties::builder().subject(subject).build())
        .application_properties(
            ApplicationProperties::builder()
                .insert("tenant_id", tenant)
                .insert("device_id", gateway)
                .insert("all_devices", true)
                .build(),
        )
        .data(Binary::from(Vec::new()))
        .build()
}

/// An adapter instance: its command link and its subscription sender.
struct Instance {
    _client: Client,
    commands: Receiver,
    control: Sender,
}

async fn instance(p: &Platform, name: &str) -> Instance {
    let mut client = p.adapter().await;
    let address = format!("command_internal/{name}");
    let commands = client.receiver(&address, 10).await;
    let control = client.sender(&address).await;
    Instance {
        _client: client,
        commands,
        control,
    }
}

impl Instance {
    async fn register(&mut self, tenant: &str, device: &str) {
        let outcome = self
            .control
            .send(subscription("register", tenant, device))
            .await
            .expect("send");
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }

    async fn send_control(&mut self, message: Message<fe2o3_amqp::types::messaging::Data>) {
        let outcome = self.control.send(message).await.expect("send");
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }

    async fn register_gateway(&mut self, tenant: &str, gateway: &str) {
        self.send_control(gateway_subscription("register", tenant, gateway))
            .await;
    }

    async fn unregister_gateway(&mut self, tenant: &str, gateway: &str) {
        self.send_control(gateway_subscription("unregister", tenant, gateway))
            .await;
    }

    async fn set_last_gateway(&mut self, tenant: &str, device: &str, gateway: &str) {
        let message = Message::builder()
            .properties(Properties::builder().subject("set-last-gw").build())
            .application_properties(
                ApplicationProperties::builder()
                    .insert("tenant_id", tenant)
                    .insert("device_id", device)
                    .insert("gateway_id", gateway)
                    .build(),
            )
            .data(Binary::from(Vec::new()))
            .build();
        self.send_control(message).await;
    }

    async fn unregister(&mut self, tenant: &str, device: &str) {
        let outcome = self
            .control
            .send(subscription("unregister", tenant, device))
            .await
            .expect("send");
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }
}

#[tokio::test]
async fn one_way_command_reaches_the_adapter_and_its_outcome_returns() {
    let p = Platform::start().await;
    let mut adapter = instance(&p, "mqtt-1").await;
    adapter.register("t1", "d1").await;
    let mut app = p.app("app1", "pw1").await;
    let mut tx = app.sender("command/t1").await;
    let send = tokio::spawn(async move {
        tx.send(command("command/t1/d1", Some("setBrightness"), None))
            .await
            .expect("send")
    });
    let d = recv_within(&mut adapter.commands, 2000)
        .await
        .expect("the adapter gets the command");
    let props = d.message().properties.clone().expect("properties");
    assert_eq!(props.to.as_deref(), Some("command/t1/d1"));
    assert_eq!(props.subject.as_deref(), Some("setBrightness"));
    assert_eq!(body_bytes(&d), b"{\"brightness\":80}");
    adapter.commands.accept(&d).await.expect("accept");
    let outcome = send.await.expect("join");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
}

#[tokio::test]
async fn request_response_round_trip() {
    let p = Platform::start().await;
    let mut adapter = instance(&p, "mqtt-1").await;
    adapter.register("t1", "d1").await;
    let mut responses = p.adapter().await;
    let mut response_tx = responses.sender("command_response").await;

    let mut app = p.app("app1", "pw1").await;
    let mut reply_rx = app.receiver("command_response/t1/my-app-replies", 10).await;
    let mut tx = app.sender("command/t1").await;
    let send = tokio::spawn(async move {
        tx.send(command(
            "command/t1/d1",
            Some("getState"),
            Some("command_response/t1/my-app-replies"),
        ))
        .await
        .expect("send")
    });
    let d = recv_within(&mut adapter.commands, 2000)
        .await
        .expect("command arrives");
    let props = d.message().properties.clone().expect("properties");
    assert_eq!(
        props.reply_to.as_deref(),
        Some("command_response/t1/my-app-replies")
    );
    adapter.commands.accept(&d).await.expect("accept");
    assert!(matches!(send.await.expect("join"), Outcome::Accepted(_)));

    let response = Message::builder()
        .properties(
            Properties::builder()
                .to("command_response/t1/my-app-replies")
                .correlation_id(String::from("cmd-1"))
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
    let outcome = tokio::spawn(async move { response_tx.send(response).await.expect("send") });
    let r = recv_within(&mut reply_rx, 2000)
        .await
        .expect("the response reaches the application");
    assert_eq!(body_bytes(&r), b"{\"on\":true}");
    assert_eq!(app_prop(&r, "status"), Some(Value::Int(200)));
    reply_rx.accept(&r).await.expect("accept");
    assert!(matches!(outcome.await.expect("join"), Outcome::Accepted(_)));
}

#[tokio::test]
async fn a_command_for_an_unconnected_device_is_released() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    let mut tx = app.sender("command/t1").await;
    let outcome = tx
        .send(command("command/t1/d1", Some("x"), None))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Released(_)), "{outcome:?}");

    // Subscribed, then unsubscribed: released again.
    let mut adapter = instance(&p, "mqtt-1").await;
    adapter.register("t1", "d1").await;
    adapter.unregister("t1", "d1").await;
    let outcome = tx
        .send(command("command/t1/d1", Some("x"), None))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Released(_)), "{outcome:?}");
}

#[tokio::test]
async fn commands_follow_the_newest_subscription_and_die_with_the_adapter() {
    let p = Platform::start().await;
    let mut first = instance(&p, "mqtt-1").await;
    first.register("t1", "d1").await;
    let mut second = instance(&p, "mqtt-2").await;
    second.register("t1", "d1").await;
    let mut app = p.app("app1", "pw1").await;
    let mut tx = app.sender("command/t1").await;
    let send = tokio::spawn(async move {
        let o = tx
            .send(command("command/t1/d1", Some("x"), None))
            .await
            .expect("send");
        (tx, o)
    });
    let d = recv_within(&mut second.commands, 2000)
        .await
        .expect("the newest subscription gets it");
    second.commands.accept(&d).await.expect("accept");
    assert!(recv_within(&mut first.commands, 200).await.is_none());
    let (mut tx, _) = send.await.expect("join");

    // The second instance goes away: its subscriptions go with it.
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outcome = tx
        .send(command("command/t1/d1", Some("x"), None))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Released(_)), "{outcome:?}");
}

#[tokio::test]
async fn malformed_commands_and_other_tenants_devices_are_rejected() {
    let p = Platform::start().await;
    let mut adapter = instance(&p, "mqtt-1").await;
    adapter.register("t2", "d1").await;
    let mut app = p.app("app1", "pw1").await;
    let mut tx = app.sender("command/t1").await;
    for (msg, why) in [
        (command("command/t1/d1", None, None), "no subject"),
        (
            command("command/t2/d1", Some("x"), None),
            "another tenant's device",
        ),
        (
            command("telemetry/t1", Some("x"), None),
            "not a command address",
        ),
    ] {
        let outcome = tx.send(msg).await.expect("send");
        assert!(
            matches!(outcome, Outcome::Rejected(_)),
            "{why}: {outcome:?}"
        );
    }
    assert!(
        recv_within(&mut adapter.commands, 200).await.is_none(),
        "nothing reached t2's device"
    );
}

#[tokio::test]
async fn responses_without_a_waiting_application_are_released() {
    let p = Platform::start().await;
    let mut responses = p.adapter().await;
    let mut tx = responses.sender("command_response").await;
    let response = Message::builder()
        .properties(
            Properties::builder()
                .to("command_response/t1/nobody")
                .correlation_id(String::from("c"))
                .build(),
        )
        .application_properties(
            ApplicationProperties::builder()
                .insert("status", 200i32)
                .build(),
        )
        .data(Binary::from(Vec::new()))
        .build();
    let outcome = tx.send(response).await.expect("send");
    assert!(matches!(outcome, Outcome::Released(_)), "{outcome:?}");
}

/// Sends `message` on `tx` in the background; the outcome comes back with the sender.
fn send_later(
    mut tx: Sender,
    message: Message<fe2o3_amqp::types::messaging::Data>,
) -> tokio::task::JoinHandle<(Sender, Outcome)> {
    tokio::spawn(async move {
        let o = tx.send(message).await.expect("send");
        (tx, o)
    })
}

/// Registry: t1's d1 and d2 may be served by gateways gw-a and gw-b (d2 through the via group `g`).
async fn gateways(p: &Platform) {
    for gw in ["gw-a", "gw-b"] {
        p.manage(
            reqwest::Method::POST,
            &format!("/v1/devices/t1/{gw}"),
            json!({ "memberOf": ["g"] }),
        )
        .await;
    }
    p.manage(
        reqwest::Method::PUT,
        "/v1/devices/t1/d1",
        json!({ "via": ["gw-a", "gw-b"] }),
    )
    .await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/devices/t1/d2",
        json!({ "viaGroups": ["g"] }),
    )
    .await;
}

#[tokio::test]
async fn a_gateways_subscription_for_all_its_devices_gets_their_commands_with_via() {
    let p = Platform::start().await;
    gateways(&p).await;
    let mut gw = instance(&p, "mqtt-1").await;
    gw.register_gateway("t1", "gw-a").await;
    let mut app = p.app("app1", "pw1").await;
    let tx = app.sender("command/t1").await;

    // d1 lists gw-a in via; an application's own `via` is replaced by the router's.
    let mut forged = command("command/t1/d1", Some("on"), None);
    forged.application_properties = Some(
        ApplicationProperties::builder()
            .insert("via", "gw-b")
            .build(),
    );
    let send = send_later(tx, forged);
    let d = recv_within(&mut gw.commands, 2000)
        .await
        .expect("the gateway's instance gets d1's command");
    assert_eq!(app_prop(&d, "via"), Some(Value::String("gw-a".into())));
    let props = d.message().properties.clone().expect("properties");
    assert_eq!(props.to.as_deref(), Some("command/t1/d1"));
    assert_eq!(body_bytes(&d), b"{\"brightness\":80}");
    gw.commands.accept(&d).await.expect("accept");
    let (tx, outcome) = send.await.expect("join");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");

    // d2 reaches gw-a through its via group.
    let send = send_later(tx, command("command/t1/d2", Some("on"), None));
    let d = recv_within(&mut gw.commands, 2000)
        .await
        .expect("d2's command, through the via group");
    assert_eq!(app_prop(&d, "via"), Some(Value::String("gw-a".into())));
    gw.commands.accept(&d).await.expect("accept");
    let (tx, outcome) = send.await.expect("join");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");

    // gw-a may not act for t1's gw-b, nor for anything of t2: released, nothing delivered.
    let send = send_later(tx, command("command/t1/gw-b", Some("on"), None));
    let (mut tx, outcome) = send.await.expect("join");
    assert!(matches!(outcome, Outcome::Released(_)), "{outcome:?}");
    let mut app2 = p.app("app2", "pw2").await;
    let mut tx2 = app2.sender("command/t2").await;
    let outcome = tx2
        .send(command("command/t2/d1", Some("on"), None))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Released(_)), "{outcome:?}");
    assert!(recv_within(&mut gw.commands, 200).await.is_none());

    // Unsubscribed: d1's commands find nobody.
    gw.unregister_gateway("t1", "gw-a").await;
    let outcome = tx
        .send(command("command/t1/d1", Some("on"), None))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Released(_)), "{outcome:?}");
}

#[tokio::test]
async fn a_devices_own_subscription_beats_a_gateways_and_the_last_known_gateway_wins() {
    let p = Platform::start().await;
    gateways(&p).await;
    let mut a = instance(&p, "mqtt-a").await;
    a.register_gateway("t1", "gw-a").await;
    let mut b = instance(&p, "http-b").await;
    b.register_gateway("t1", "gw-b").await;
    let mut own = instance(&p, "mqtt-own").await;
    let mut app = p.app("app1", "pw1").await;
    let mut tx = app.sender("command/t1").await;

    // d1 last sent through gw-b: its commands go there, whichever instance said so, every time.
    a.set_last_gateway("t1", "d1", "gw-b").await;
    for _ in 0..4 {
        let send = send_later(tx, command("command/t1/d1", Some("x"), None));
        let d = recv_within(&mut b.commands, 2000)
            .await
            .expect("the last-known gateway gets it");
        assert_eq!(app_prop(&d, "via"), Some(Value::String("gw-b".into())));
        b.commands.accept(&d).await.expect("accept");
        let (back, outcome) = send.await.expect("join");
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
        tx = back;
    }
    assert!(recv_within(&mut a.commands, 100).await.is_none());

    // Its gateway goes away: the other subscribed gateway takes over.
    b.unregister_gateway("t1", "gw-b").await;
    let send = send_later(tx, command("command/t1/d1", Some("x"), None));
    let d = recv_within(&mut a.commands, 2000)
        .await
        .expect("the remaining gateway gets it");
    assert_eq!(app_prop(&d, "via"), Some(Value::String("gw-a".into())));
    a.commands.accept(&d).await.expect("accept");
    let (tx, _) = send.await.expect("join");

    // The device subscribes itself: its own subscription wins, and carries no via.
    own.register("t1", "d1").await;
    let send = send_later(tx, command("command/t1/d1", Some("x"), None));
    let d = recv_within(&mut own.commands, 2000)
        .await
        .expect("the device's own subscription gets it");
    assert_eq!(app_prop(&d, "via"), None);
    own.commands.accept(&d).await.expect("accept");
    let (mut tx, _) = send.await.expect("join");
    assert!(recv_within(&mut a.commands, 100).await.is_none());

    // The gateway's instance goes away with its subscriptions; the device's own stays.
    own.unregister("t1", "d1").await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outcome = tx
        .send(command("command/t1/d1", Some("x"), None))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Released(_)), "{outcome:?}");
}

#[tokio::test]
async fn a_device_leaving_a_gateways_via_is_no_longer_served_by_it() {
    let p = Platform::start().await;
    gateways(&p).await;
    let mut gw = instance(&p, "mqtt-1").await;
    gw.register_gateway("t1", "gw-a").await;
    let mut app = p.app("app1", "pw1").await;
    let tx = app.sender("command/t1").await;
    let send = send_later(tx, command("command/t1/d1", Some("x"), None));
    let d = recv_within(&mut gw.commands, 2000).await.expect("served");
    gw.commands.accept(&d).await.expect("accept");
    let (mut tx, _) = send.await.expect("join");

    // The registry's change stream purges the router's cached via at once.
    p.manage(
        reqwest::Method::PUT,
        "/v1/devices/t1/d1",
        json!({ "via": ["gw-b"] }),
    )
    .await;
    let mut released = false;
    for _ in 0..20 {
        let outcome = tx
            .send(command("command/t1/d1", Some("x"), None))
            .await
            .expect("send");
        if matches!(outcome, Outcome::Released(_)) {
            released = true;
            break;
        }
        let d = recv_within(&mut gw.commands, 100).await;
        if let Some(d) = d {
            gw.commands.accept(&d).await.expect("accept");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        released,
        "gw-a still got d1's commands after d1 left its via"
    );
}

#[tokio::test]
async fn bad_gateway_subscription_messages_are_rejected() {
    let p = Platform::start().await;
    let mut adapter = instance(&p, "mqtt-1").await;
    let no_gateway = Message::builder()
        .properties(Properties::builder().subject("set-last-gw").build())
        .application_properties(
            ApplicationProperties::builder()
                .insert("tenant_id", "t1")
                .insert("device_id", "d1")
                .build(),
        )
        .data(Binary::from(Vec::new()))
        .build();
    let outcome = adapter.control.send(no_gateway).await.expect("send");
    assert!(matches!(outcome, Outcome::Rejected(_)), "{outcome:?}");
    let bulk = Message::builder()
        .properties(Properties::builder().subject("register").build())
        .data(Binary::from(
            br#"[{"tenant_id":"t1","device_id":"gw","all_devices":"yes"}]"#.to_vec(),
        ))
        .build();
    let outcome = adapter.control.send(bulk).await.expect("send");
    assert!(matches!(outcome, Outcome::Rejected(_)), "{outcome:?}");
    // A valid bulk registration of a gateway works.
    let bulk = Message::builder()
        .properties(Properties::builder().subject("register").build())
        .data(Binary::from(
            br#"[{"tenant_id":"t1","device_id":"gw-x","all_devices":true}]"#.to_vec(),
        ))
        .build();
    let outcome = adapter.control.send(bulk).await.expect("send");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
}
