//! Device login with `auth-id@tenant` and a password, and the verify cache.

use std::time::Duration;

use ferry_adapter_core::auth::AuthError;

use crate::harness::*;

#[tokio::test]
async fn password_login_pays_bcrypt_once() {
    let p = Platform::start().await;
    let auth = p.authenticator().await;
    let d = auth
        .authenticate_password("sensor1@t1", b"secret1", None)
        .await
        .expect("login");
    assert_eq!(
        (d.tenant.as_str(), d.device_id.as_str(), d.auth_id.as_str()),
        ("t1", "d1", "sensor1")
    );
    let again = auth
        .authenticate_password("sensor1@t1", b"secret1", None)
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
                auth.authenticate_password(user, pw, None).await,
                Err(AuthError::BadCredentials)
            ),
            "{user}"
        );
    }
    assert!(matches!(
        auth.authenticate_password("sensor1@t9", b"secret1", None)
            .await,
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
                auth.authenticate_password("x@t2", b"y", None).await,
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
        .authenticate_password("user@example.com@t1", b"pw2", None)
        .await
        .expect("login");
    assert_eq!(d.device_id.as_str(), "d2");
}

#[tokio::test]
async fn changed_password_is_refused_within_a_second() {
    let p = Platform::start().await;
    let auth = p.authenticator().await;
    auth.authenticate_password("sensor1@t1", b"secret1", None)
        .await
        .expect("login");
    auth.authenticate_password("sensor1@t1", b"secret1", None)
        .await
        .expect("login from the verify cache");
    p.set_password("t1", "d1", "sensor1", "secret2").await;
    assert!(
        eventually(Duration::from_secs(1), || async {
            matches!(
                auth.authenticate_password("sensor1@t1", b"secret1", None)
                    .await,
                Err(AuthError::BadCredentials)
            )
        })
        .await,
        "the old password is refused within a second"
    );
    auth.authenticate_password("sensor1@t1", b"secret2", None)
        .await
        .expect("the new password works");
}

#[tokio::test]
async fn registry_down_is_unavailable() {
    let mut p = Platform::start().await;
    let auth = p.authenticator().await;
    p.stop_registry().await;
    assert!(matches!(
        auth.authenticate_password("sensor1@t1", b"secret1", None)
            .await,
        Err(AuthError::Unavailable(_))
    ));
}

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("base64")
}

/// `t1` trusts the test CA; `d1` has an `x509-cert` credential for `CN=<cn>`.
async fn trust_certificates(p: &Platform, pki: &ferry_test_support::TestPki, cn: &str) {
    let ca: String = pki
        .ca_cert_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        serde_json::json!({ "trusted-ca": [{ "subject-dn": pki.ca_subject_dn, "cert": ca }] }),
    )
    .await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/credentials/t1/d1",
        serde_json::json!([{ "type": "x509-cert", "auth-id": ferry_test_support::client_subject_dn(cn), "secrets": [{}] }]),
    )
    .await;
}

#[tokio::test]
async fn a_certificate_names_tenant_and_device_and_is_verified_once() {
    let p = Platform::start().await;
    let pki = ferry_test_support::TestPki::generate();
    trust_certificates(&p, &pki, "dev-1").await;
    let auth = p.authenticator().await;
    let cert = pem_der(&pki.client_cert("dev-1").0);
    let d = auth
        .authenticate_certificate(&cert)
        .await
        .expect("certificate login");
    assert_eq!(
        (d.tenant.as_str(), d.device_id.as_str(), d.auth_id.as_str()),
        ("t1", "d1", "CN=dev-1,O=Ferry Tests")
    );
    let requests = auth.registry().stats();
    assert_eq!(
        auth.authenticate_certificate(&cert).await.expect("again"),
        d
    );
    assert_eq!(auth.stats().cache_hits, 1);
    assert_eq!(
        auth.registry().stats(),
        requests,
        "a verified certificate needs no registry call"
    );
    // Another CA's key under the same DN, a subject without credential, garbage.
    let impostor = ferry_test_support::TestPki::generate();
    for der in [
        pem_der(&impostor.client_cert("dev-1").0),
        pem_der(&pki.client_cert("dev-2").0),
        b"not a certificate".to_vec(),
    ] {
        assert!(matches!(
            auth.authenticate_certificate(&der).await,
            Err(AuthError::BadCredentials)
        ));
    }
    // Removing the credential forgets the verified certificate within a second.
    p.manage(
        reqwest::Method::PUT,
        "/v1/credentials/t1/d1",
        serde_json::json!([]),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(1), || async {
            matches!(
                auth.authenticate_certificate(&cert).await,
                Err(AuthError::BadCredentials)
            )
        })
        .await,
        "the purged certificate is refused"
    );
}

#[tokio::test]
async fn certificates_of_untrusted_issuers_and_disabled_tenants_are_refused() {
    let p = Platform::start().await;
    let pki = ferry_test_support::TestPki::generate();
    let auth = p.authenticator().await;
    let cert = pem_der(&pki.client_cert("dev-1").0);
    assert!(matches!(
        auth.authenticate_certificate(&cert).await,
        Err(AuthError::UnknownTenant)
    ));
    trust_certificates(&p, &pki, "dev-1").await;
    let ca: String = pki
        .ca_cert_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        serde_json::json!({ "enabled": false, "trusted-ca": [{ "subject-dn": pki.ca_subject_dn, "cert": ca }] }),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(1), || async {
            matches!(
                auth.authenticate_certificate(&cert).await,
                Err(AuthError::TenantDisabled)
            )
        })
        .await
    );
}
