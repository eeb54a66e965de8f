//! Commands: registration, delivery to the adapter, settlement seen by the application, responses.

use std::time::Duration;

use bytes::Bytes;
use fe2o3_amqp::types::messaging::{Message, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, Value};
use ferry_adapter_core::downstream::{CommandResponse, SendOutcome};

use crate::harness::*;

fn command(
    to: &str,
    name: &str,
    reply_to: Option<&str>,
) -> Message<fe2o3_amqp::types::messaging::Data> {
    let mut props = Properties::builder()
        .to(to)
        .subject(name)
        .message_id(String::from("cmd-1"));
    if let Some(r) = reply_to {
        props = props.reply_to(r);
    }
    Message::builder()
        .properties(props.content_type("application/json").build())
        .data(Binary::from(b"{\"brightness\":80}".to_vec()))
        .build()
}

#[tokio::test]
async fn command_round_trip_with_response() {
    let p = Platform::start().await;
    let down = p.downstream().await;
    let (link, mut commands) = down.commands("mqtt-0");
    assert_eq!(link.instance_id(), "mqtt-0");
    // The links attach in the background; registration answers once they are up.
    assert!(
        eventually(Duration::from_secs(3), || async {
            link.register(&tenant("t1"), &device("d1")).await.is_ok()
        })
        .await
    );

    let mut app = p.app("app1", "pw1").await;
    let mut replies = app.receiver("command_response/t1/replies", 10).await;
    let mut tx = app.sender("command/t1").await;
    let send = tokio::spawn(async move {
        tx.send(command(
            "command/t1/d1",
            "setBrightness",
            Some("command_response/t1/replies"),
        ))
        .await
        .expect("send")
    });
    let cmd = tokio::time::timeout(Duration::from_secs(2), commands.recv())
        .await
        .expect("the command arrives")
        .expect("channel open");
    assert_eq!(
        (cmd.tenant.as_str(), cmd.device.as_str(), cmd.name.as_str()),
        ("t1", "d1", "setBrightness")
    );
    assert_eq!(&cmd.payload[..], b"{\"brightness\":80}");
    assert_eq!(cmd.content_type.as_deref(), Some("application/json"));
    assert_eq!(cmd.response_correlation_id(), Some("cmd-1"));
    assert!(!cmd.is_one_way());
    let reply_to = cmd.reply_to.clone().expect("reply-to");
    let correlation_id = cmd.response_correlation_id().expect("id").to_owned();
    cmd.accept();
    assert!(matches!(send.await.expect("join"), Outcome::Accepted(_)));

    let d2 = down.clone();
    let respond = tokio::spawn(async move {
        d2.send_response(CommandResponse {
            tenant: tenant("t1"),
            device: device("d1"),
            reply_to,
            correlation_id,
            status: 200,
            content_type: Some("application/json".into()),
            payload: Bytes::from_static(b"{\"on\":true}"),
            ttl_ms: None,
        })
        .await
    });
    let r = recv_within(&mut replies, 2000)
        .await
        .expect("response arrives");
    assert_eq!(body_bytes(&r), b"{\"on\":true}");
    assert_eq!(app_prop(&r, "status"), Some(Value::Int(200)));
    assert_eq!(app_prop(&r, "device_id"), Some(Value::String("d1".into())));
    let props = r.message().properties.clone().expect("properties");
    assert_eq!(
        props.correlation_id,
        Some(fe2o3_amqp::types::messaging::MessageId::String(
            "cmd-1".into()
        ))
    );
    replies.accept(&r).await.expect("accept");
    assert_eq!(respond.await.expect("join"), Ok(SendOutcome::Accepted));
}

#[tokio::test]
async fn released_rejected_and_dropped_commands() {
    let p = Platform::start().await;
    let down = p.downstream().await;
    let (link, mut commands) = down.commands("mqtt-0");
    assert!(
        eventually(Duration::from_secs(3), || async {
            link.register(&tenant("t1"), &device("d1")).await.is_ok()
        })
        .await
    );
    let mut app = p.app("app1", "pw1").await;
    let mut tx = app.sender("command/t1").await;
    for (how, expect_released) in [("release", true), ("reject", false), ("drop", true)] {
        let mut sender = tx;
        let send = tokio::spawn(async move {
            let o = sender
                .send(command("command/t1/d1", "x", None))
                .await
                .expect("send");
            (sender, o)
        });
        let cmd = tokio::time::timeout(Duration::from_secs(2), commands.recv())
            .await
            .expect("arrives")
            .expect("open");
        assert!(cmd.is_one_way());
        match how {
            "release" => cmd.release(),
            "reject" => cmd.reject("amqp:resource-limit-exceeded", "too many"),
            _ => drop(cmd),
        }
        let (sender, outcome) = send.await.expect("join");
        tx = sender;
        if expect_released {
            assert!(
                matches!(outcome, Outcome::Released(_)),
                "{how}: {outcome:?}"
            );
        } else {
            assert!(
                matches!(outcome, Outcome::Rejected(_)),
                "{how}: {outcome:?}"
            );
        }
    }

    // Unregistered: the router has nobody for the device.
    link.unregister(&tenant("t1"), &device("d1"))
        .await
        .expect("unregister");
    let outcome = tx
        .send(command("command/t1/d1", "x", None))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Released(_)), "{outcome:?}");
}

#[tokio::test]
async fn subscriptions_survive_a_router_restart() {
    let mut p = Platform::start().await;
    let mut config = p.downstream_config();
    config.max_reconnect_delay = Duration::from_millis(200);
    let down = ferry_adapter_core::downstream::Downstream::start(
        config,
        ferry_core::shutdown::Shutdown::never(),
    );
    assert!(down.wait_connected(Duration::from_secs(5)).await);
    let (link, mut commands) = down.commands("mqtt-0");
    assert!(
        eventually(Duration::from_secs(3), || async {
            link.register(&tenant("t1"), &device("d1")).await.is_ok()
        })
        .await
    );
    link.register(&tenant("t1"), &device("d2"))
        .await
        .expect("register");
    assert_eq!(link.registered(), 2);

    p.stop_router().await;
    p.start_router().await;
    assert!(down.wait_connected(Duration::from_secs(5)).await);

    let mut app = p.app("app1", "pw1").await;
    let mut tx = app.sender("command/t1").await;
    // The re-registration races with this application: retry until the command is routed.
    let mut delivered = false;
    for _ in 0..50 {
        let send = tx.send(command("command/t1/d2", "x", None));
        let accept = async {
            if let Ok(Some(cmd)) =
                tokio::time::timeout(Duration::from_millis(500), commands.recv()).await
            {
                assert_eq!(cmd.device.as_str(), "d2");
                cmd.accept();
            }
        };
        let (outcome, ()) = tokio::join!(send, accept);
        if matches!(outcome.expect("send"), Outcome::Accepted(_)) {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(delivered, "the command reaches the re-registered device");
}

#[tokio::test]
async fn a_registration_made_before_the_links_are_attached_succeeds_once_they_are() {
    let p = Platform::start().await;
    // Not waiting for the connection: the device subscribes as the adapter starts.
    let (_running, shutdown) = ferry_core::shutdown::channel();
    let down = ferry_adapter_core::downstream::Downstream::start(p.downstream_config(), shutdown);
    let (link, mut commands) = down.commands("mqtt-early");
    link.register(&tenant("t1"), &device("d1"))
        .await
        .expect("registered once the links are up");
    // And it is routed: a command reaches this instance.
    let mut app = p.app("app1", "pw1").await;
    let mut tx = app.sender("command/t1").await;
    let send = tokio::spawn(async move {
        tx.send(command("command/t1/d1", "on", None))
            .await
            .expect("send")
    });
    let cmd = tokio::time::timeout(Duration::from_secs(2), commands.recv())
        .await
        .expect("the command arrives")
        .expect("channel open");
    cmd.accept();
    assert!(matches!(send.await.expect("join"), Outcome::Accepted(_)));
}
