//! Password guessing against device logins (issue 15, item 6): what a wrong guess costs and tells, and
//! what it leaves for the devices that know their password.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_adapter_core::auth::{AuthError, LoginLimits};

use crate::harness::*;

fn ip(last: u8) -> Option<IpAddr> {
    Some(IpAddr::from([192, 0, 2, last]))
}

fn refused(r: Result<ferry_adapter_core::auth::Device, AuthError>) -> bool {
    matches!(r, Err(AuthError::BadCredentials | AuthError::UnknownTenant))
}

#[tokio::test]
async fn probing_for_auth_ids_costs_a_verification_like_a_wrong_password() {
    let p = Platform::start().await;
    // An auth id with a credential of another type only (no password).
    p.manage(
        reqwest::Method::PUT,
        "/v1/credentials/t1/d2",
        serde_json::json!([{ "type": "psk", "auth-id": "psk-only", "secrets": [{ "key": "c2VjcmV0a2V5" }] }]),
    )
    .await;
    let auth = p.authenticator().await;
    let mut expected = 0;
    for user in [
        "sensor1@t1",     // known, wrong password
        "nobody@t1",      // unknown auth id
        "psk-only@t1",    // no password credential
        "sensor1@nobody", // unknown tenant
    ] {
        assert!(
            refused(auth.authenticate_password(user, b"guess", ip(1)).await),
            "{user}"
        );
        expected += 1;
        assert_eq!(
            auth.stats().verifications,
            expected,
            "{user} costs one verification"
        );
    }
}

#[tokio::test]
async fn guessing_one_auth_ids_password_locks_it_out_but_not_other_devices() {
    let p = Platform::start().await;
    p.set_password("t1", "d2", "sensor2", "secret2").await;
    let auth = p.authenticator().await;
    let max = LoginLimits::default().max_failures;
    for i in 0..max {
        assert!(refused(
            auth.authenticate_password("sensor1@t1", format!("guess{i}").as_bytes(), None)
                .await
        ));
    }
    assert_eq!(auth.stats().verifications, u64::from(max));
    // Locked: even the right password is refused, without a check.
    assert!(refused(
        auth.authenticate_password("sensor1@t1", b"secret1", None)
            .await
    ));
    assert_eq!(
        auth.stats().verifications,
        u64::from(max),
        "no verification while locked"
    );
    assert_eq!(auth.stats().locked_out, 1);
    let d = auth
        .authenticate_password("sensor2@t1", b"secret2", None)
        .await
        .expect("another device still logs in");
    assert_eq!(d.device_id.as_str(), "d2");
}

#[tokio::test]
async fn a_locked_out_device_logs_in_again_after_the_window() {
    let p = Platform::start().await;
    let auth = p
        .authenticator_with(LoginLimits {
            max_failures: 2,
            lockout_secs: 1,
            ..LoginLimits::default()
        })
        .await;
    for guess in [&b"guess1"[..], b"guess2"] {
        assert!(refused(
            auth.authenticate_password("sensor1@t1", guess, ip(1)).await
        ));
    }
    assert!(refused(
        auth.authenticate_password("sensor1@t1", b"secret1", ip(2))
            .await
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    auth.authenticate_password("sensor1@t1", b"secret1", ip(2))
        .await
        .expect("logs in after the lockout");
    // A success clears the name's failures: one more wrong guess does not lock it again.
    assert!(refused(
        auth.authenticate_password("sensor1@t1", b"guess3", ip(2))
            .await
    ));
    auth.authenticate_password("sensor1@t1", b"secret1", ip(2))
        .await
        .expect("not locked by one failure after a success");
}

#[tokio::test]
async fn guessing_many_auth_ids_from_one_address_locks_the_address() {
    let p = Platform::start().await;
    let auth = p
        .authenticator_with(LoginLimits {
            source_max_failures: 3,
            ..LoginLimits::default()
        })
        .await;
    for name in ["a@t1", "b@t1", "c@t1"] {
        assert!(refused(
            auth.authenticate_password(name, b"guess", ip(66)).await
        ));
    }
    let checked = auth.stats().verifications;
    assert!(refused(
        auth.authenticate_password("sensor1@t1", b"secret1", ip(66))
            .await
    ));
    assert_eq!(
        auth.stats().verifications,
        checked,
        "refused without a check"
    );
    auth.authenticate_password("sensor1@t1", b"secret1", ip(7))
        .await
        .expect("the device logs in from its own address");
}

#[tokio::test]
async fn a_wrong_password_flood_cannot_take_the_capacity_kept_for_known_devices() {
    const FLOOD: usize = 8;
    let p = Platform::start().await;
    // sensor1 has two passwords: one makes it known, the other needs a verification later (the verify
    // cache keeps the first).
    p.manage(
        reqwest::Method::PUT,
        "/v1/credentials/t1/d1",
        serde_json::json!([{ "type": "hashed-password", "auth-id": "sensor1",
            "secrets": [{ "pwd-plain": "first" }, { "pwd-plain": "second" }] }]),
    )
    .await;
    // The flood's names exist, with the registry's highest cost, so each wrong guess holds a slot a
    // while.
    let slow = bcrypt::hash("unguessable", 10).expect("bcrypt");
    let flood_credentials: Vec<_> = (0..FLOOD)
        .map(|i| {
            serde_json::json!({ "type": "hashed-password", "auth-id": format!("flood{i}"),
                "secrets": [{ "hash-function": "bcrypt", "pwd-hash": slow }] })
        })
        .collect();
    p.manage(
        reqwest::Method::PUT,
        "/v1/credentials/t1/d2",
        serde_json::Value::Array(flood_credentials),
    )
    .await;
    let auth = p
        .authenticator_with(LoginLimits {
            verify_concurrency: Some(2),
            ..LoginLimits::default()
        })
        .await;
    auth.authenticate_password("sensor1@t1", b"first", None)
        .await
        .expect("sensor1 becomes known");

    let done = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..FLOOD)
        .map(|i| {
            let (auth, done) = (auth.clone(), done.clone());
            tokio::spawn(async move {
                let r = auth
                    .authenticate_password(&format!("flood{i}@t1"), b"guess", ip(100))
                    .await;
                done.fetch_add(1, Ordering::SeqCst);
                refused(r)
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || async {
            auth.stats().waiting >= (FLOOD - 2) as u64
        })
        .await,
        "the flood queues for verification slots"
    );
    auth.authenticate_password("sensor1@t1", b"second", None)
        .await
        .expect("sensor1 logs in during the flood");
    let finished = done.load(Ordering::SeqCst);
    assert!(
        finished < FLOOD / 2,
        "sensor1 waited for {finished} of {FLOOD} flood verifications"
    );
    for f in flood {
        assert!(f.await.expect("flood task"), "the flood is refused");
    }
}
