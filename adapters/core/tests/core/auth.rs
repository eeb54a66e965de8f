//! Device login with `auth-id@tenant` and a password, and the verify cache.

use std::time::Duration;

use ferry_adapter_core::auth::AuthError;

use crate::harness::*;

#[tokio::test]
async fn password_login_pays_bcrypt_once() {
    let p = Platform::start().await;
    let auth = p.authenticator().await;
    let d = auth
        .authenticate_password("sensor1@t1", b"secret1")
        .await
        .expect("login");
    assert_eq!(
        (d.tenant.as_str(), d.device_id.as_str(), d.auth_id.as_str()),
        ("t1", "d1", "sensor1")
    );
    let again = auth
        .authenticate_password("sensor1@t1", b"secret1")
        .await
        .expect("login");
    assert_eq!(again, d);
    assert_eq!(auth.stats().verifications, 1);
    assert_eq!(auth.stats().cache_hits, 1);
    assert_eq!(
        auth.registry().stats().credential_requests,
        1,
        "a verify-cache hit needs no credentials lookup"
    );
}

#[tokio::test]
async fn bad_logins_are_told_apart() {
    let p = Platform::start().await;
    let auth = p.authenticator().await;
    for (user, pw) in [
        ("sensor1@t1", &b"wrong"[..]),
        ("nobody@t1", b"secret1"),
        ("sensor1", b"secret1"),
        ("sensor1@t1", b"\xff\xfe"),
    ] {
        assert!(
            matches!(
                auth.authenticate_password(user, pw).await,
                Err(AuthError::BadCredentials)
            ),
            "{user}"
        );
    }
    assert!(matches!(
        auth.authenticate_password("sensor1@t9", b"secret1").await,
        Err(AuthError::UnknownTenant)
    ));
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t2",
        serde_json::json!({ "enabled": false }),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(1), || async {
            matches!(
                auth.authenticate_password("x@t2", b"y").await,
                Err(AuthError::TenantDisabled)
            )
        })
        .await
    );
}

#[tokio::test]
async fn auth_ids_may_contain_at_signs() {
    let p = Platform::start().await;
    p.set_password("t1", "d2", "user@example.com", "pw2").await;
    let auth = p.authenticator().await;
    let d = auth
        .authenticate_password("user@example.com@t1", b"pw2")
        .await
        .expect("login");
    assert_eq!(d.device_id.as_str(), "d2");
}

#[tokio::test]
async fn changed_password_is_refused_within_a_second() {
    let p = Platform::start().await;
    let auth = p.authenticator().await;
    auth.authenticate_password("sensor1@t1", b"secret1")
        .await
        .expect("login");
    auth.authenticate_password("sensor1@t1", b"secret1")
        .await
        .expect("login from the verify cache");
    p.set_password("t1", "d1", "sensor1", "secret2").await;
    assert!(
        eventually(Duration::from_secs(1), || async {
            matches!(
                auth.authenticate_password("sensor1@t1", b"secret1").await,
                Err(AuthError::BadCredentials)
            )
        })
        .await,
        "the old password is refused within a second"
    );
    auth.authenticate_password("sensor1@t1", b"secret2")
        .await
        .expect("the new password works");
}

#[tokio::test]
async fn registry_down_is_unavailable() {
    let mut p = Platform::start().await;
    let auth = p.authenticator().await;
    p.stop_registry().await;
    assert!(matches!(
        auth.authenticate_password("sensor1@t1", b"secret1").await,
        Err(AuthError::Unavailable(_))
    ));
}
