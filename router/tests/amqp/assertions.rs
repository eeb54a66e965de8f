//! Registration assertions: HONO-CONTRACT §4's rejections, each kind.

use fe2o3_amqp::types::definitions::{AmqpError, ErrorCondition};
use fe2o3_amqp::types::messaging::Outcome;
use ferry_core::assertion::{Claims, SigningKey};
use ferry_core::ids::{DeviceId, TenantId};

use crate::harness::*;

fn condition(outcome: &Outcome) -> Option<ErrorCondition> {
    match outcome {
        Outcome::Rejected(r) => r.error.as_ref().map(|e| e.condition.clone()),
        _ => None,
    }
}

async fn send_one(
    p: &Platform,
    address: &str,
    msg: fe2o3_amqp::types::messaging::Message<fe2o3_amqp::types::messaging::Data>,
) -> Outcome {
    // A consumer so that telemetry producers get credit.
    let mut app = p.app("app1", "pw1").await;
    let _rx = app.receiver("telemetry/t1", 10).await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender(address).await;
    tx.send(msg).await.expect("send")
}

fn mint(tenant: &str, device: &str, exp_offset: i64) -> String {
    let key = SigningKey::from_seed_b64(SIGNING_SEED).expect("seed");
    let now = chrono_now();
    let mut claims = Claims::new(
        TenantId::new(tenant).expect("t"),
        DeviceId::new(device).expect("d"),
        None,
        now,
        600,
    );
    claims.exp = now + exp_offset;
    key.sign(&claims)
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[tokio::test]
async fn missing_assertion_is_a_decode_error() {
    let p = Platform::start().await;
    let outcome = send_one(&p, "telemetry/t1", device_message("d1", None, b"x")).await;
    assert_eq!(
        condition(&outcome),
        Some(ErrorCondition::AmqpError(AmqpError::DecodeError)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn malformed_assertion_is_a_decode_error() {
    let p = Platform::start().await;
    let outcome = send_one(
        &p,
        "telemetry/t1",
        device_message("d1", Some("not.a.jwt"), b"x"),
    )
    .await;
    assert_eq!(
        condition(&outcome),
        Some(ErrorCondition::AmqpError(AmqpError::DecodeError)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn missing_device_id_is_a_decode_error() {
    let p = Platform::start().await;
    let token = p.assertion("t1", "d1").await;
    let mut msg = device_message("d1", Some(&token), b"x");
    if let Some(props) = msg.application_properties.as_mut() {
        props.0.swap_remove("device_id");
    }
    let outcome = send_one(&p, "telemetry/t1", msg).await;
    assert_eq!(
        condition(&outcome),
        Some(ErrorCondition::AmqpError(AmqpError::DecodeError)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn bad_signature_is_a_precondition_failure() {
    let p = Platform::start().await;
    let token = p.assertion("t1", "d1").await;
    let mut bytes = token.into_bytes();
    let last = bytes.len() - 2;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(bytes).expect("utf8");
    let outcome = send_one(
        &p,
        "telemetry/t1",
        device_message("d1", Some(&forged), b"x"),
    )
    .await;
    assert_eq!(
        condition(&outcome),
        Some(ErrorCondition::AmqpError(AmqpError::PreconditionFailed)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn expired_assertion_is_a_precondition_failure() {
    let p = Platform::start().await;
    let expired = mint("t1", "d1", -60);
    let outcome = send_one(
        &p,
        "telemetry/t1",
        device_message("d1", Some(&expired), b"x"),
    )
    .await;
    assert_eq!(
        condition(&outcome),
        Some(ErrorCondition::AmqpError(AmqpError::PreconditionFailed)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn assertion_of_another_tenant_is_a_precondition_failure() {
    let p = Platform::start().await;
    let other = p.assertion("t2", "d1").await;
    let outcome = send_one(&p, "telemetry/t1", device_message("d1", Some(&other), b"x")).await;
    assert_eq!(
        condition(&outcome),
        Some(ErrorCondition::AmqpError(AmqpError::PreconditionFailed)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn assertion_of_another_device_is_a_precondition_failure() {
    let p = Platform::start().await;
    let d2 = p.assertion("t1", "d2").await;
    let outcome = send_one(&p, "telemetry/t1", device_message("d1", Some(&d2), b"x")).await;
    assert_eq!(
        condition(&outcome),
        Some(ErrorCondition::AmqpError(AmqpError::PreconditionFailed)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn events_are_checked_too() {
    let p = Platform::start().await;
    let mut adapter = p.adapter().await;
    let mut tx = adapter.sender("event/t1").await;
    let outcome = tx
        .send(device_message("d1", None, b"x"))
        .await
        .expect("send");
    assert_eq!(
        condition(&outcome),
        Some(ErrorCondition::AmqpError(AmqpError::DecodeError))
    );
    let mut app = p.app("app1", "pw1").await;
    let mut rx = app.receiver("event/t1", 10).await;
    assert!(
        recv_within(&mut rx, 300).await.is_none(),
        "a rejected event is not stored"
    );
}
