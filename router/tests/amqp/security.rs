//! Authentication and tenant isolation.

use fe2o3_amqp::{Receiver, Sender};

use crate::harness::*;

#[tokio::test]
async fn wrong_password_and_unknown_user_are_refused() {
    let p = Platform::start().await;
    assert!(p.connect("app1", "wrong").await.is_err());
    assert!(p.connect("nobody", "pw").await.is_err());
    assert!(p.connect(ADAPTER_USER, "wrong").await.is_err());
    assert!(p.connect("app1", "pw1").await.is_ok());
}

#[tokio::test]
async fn an_application_cannot_attach_to_another_tenant() {
    let p = Platform::start().await;
    // One session per refused attach: the fe2o3 client loses its session after a second refusal on it.
    // Several refusals on one session are covered with Qpid Proton (tests/proton).
    for address in ["telemetry/t2", "event/t2"] {
        let mut app = p.app("app1", "pw1").await;
        let r = Receiver::attach(&mut app.session, format!("x-{address}"), address).await;
        let e = r.expect_err("refused");
        assert!(
            format!("{e:?}").contains("UnauthorizedAccess"),
            "{address}: {e:?}"
        );
    }
    let mut app = p.app("app1", "pw1").await;
    let _ok = app.receiver("telemetry/t1", 1).await;
}

#[tokio::test]
async fn applications_cannot_produce_and_unknown_addresses_are_refused() {
    let p = Platform::start().await;
    let mut app = p.app("app1", "pw1").await;
    let e = Sender::attach(&mut app.session, "fake", "telemetry/t1")
        .await
        .expect_err("apps do not send telemetry");
    assert!(format!("{e:?}").contains("UnauthorizedAccess"), "{e:?}");
    let mut app = p.app("app1", "pw1").await;
    let e = Receiver::attach(&mut app.session, "q", "queue/anything")
        .await
        .expect_err("unknown address");
    assert!(format!("{e:?}").contains("NotFound"), "{e:?}");
}

#[tokio::test]
async fn one_tenants_telemetry_never_reaches_another() {
    let p = Platform::start().await;
    let mut app2 = p.app("app2", "pw2").await;
    let mut rx2 = app2.receiver("telemetry/t2", 10).await;
    let mut app1 = p.app("app1", "pw1").await;
    let mut rx1 = app1.receiver("telemetry/t1", 10).await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("telemetry/t1").await;
    let token = p.assertion("t1", "d1").await;
    let send =
        tokio::spawn(async move { tx.send(device_message("d1", Some(&token), b"mine")).await });
    let d = recv_within(&mut rx1, 2000).await.expect("t1 gets it");
    rx1.accept(&d).await.expect("accept");
    send.await.expect("join").expect("send");
    assert!(
        recv_within(&mut rx2, 300).await.is_none(),
        "t2 sees nothing"
    );
}

#[tokio::test]
async fn a_changed_application_password_takes_effect_at_once() {
    let p = Platform::start().await;
    // Logged in once: the router caches the login.
    assert!(p.connect("app1", "pw1").await.is_ok());
    p.manage(
        reqwest::Method::PUT,
        "/v1/applications/app1",
        serde_json::json!({ "password": "new-pw", "tenants": ["t1"] }),
    )
    .await;
    // The change stream purges the cached login well within a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        if p.connect("app1", "pw1").await.is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old password still works after a second"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(p.connect("app1", "new-pw").await.is_ok());
}
