//! Commands: applications send on `command/T`; adapters subscribe devices on `command_internal/INSTANCE`
//! and answer on `command_response`.

use std::time::Duration;

use fe2o3_amqp::types::messaging::{ApplicationProperties, Message, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Receiver, Sender};

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
