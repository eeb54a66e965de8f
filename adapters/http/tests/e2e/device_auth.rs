//! Client certificates over HTTPS (no `Authorization` needed) and unauthenticated devices, with curl.

use super::*;
use ferry_test_support::TestPki;

fn pem_base64(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

async fn https_platform(pki: &TestPki) -> Platform {
    let (cert, key) = (pki.server_cert_path.clone(), pki.server_key_path.clone());
    Platform::start_with(move |c| {
        c.tls.cert_path = Some(cert);
        c.tls.key_path = Some(key);
    })
    .await
}

/// `t1` trusts the test CA; `d1` has an `x509-cert` credential for `CN=device-one`.
async fn trust(p: &Platform, pki: &TestPki) {
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        json!({ "trusted-ca": [{ "subject-dn": pki.ca_subject_dn, "cert": pem_base64(&pki.ca_cert_pem) }] }),
    )
    .await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/credentials/t1/d1",
        json!([
            { "type": "hashed-password", "auth-id": "sensor1", "secrets": [{ "pwd-plain": "hunter2" }] },
            { "type": "x509-cert", "auth-id": ferry_test_support::client_subject_dn("device-one"), "secrets": [{}] }
        ]),
    )
    .await;
}

fn post_with_cert(
    p: &Platform,
    pki: &TestPki,
    cert: &std::path::Path,
    key: &std::path::Path,
    body: &str,
) -> Reply {
    let tls = p.adapter.tls_addr.expect("HTTPS listener");
    curl(&[
        "--cacert",
        &pki.ca_cert_path.display().to_string(),
        "--cert",
        &cert.display().to_string(),
        "--key",
        &key.display().to_string(),
        "-H",
        "content-type: text/plain",
        "--data-binary",
        body,
        &format!("https://localhost:{}/telemetry", tls.port()),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_authenticates_requests_without_authorization() {
    let pki = TestPki::generate();
    let p = https_platform(&pki).await;
    trust(&p, &pki).await;
    let c = p.consumer("app1", "pw1", "telemetry/t1", 2);
    let (cert, key) = pki.client_cert_files("device-one");
    for body in ["by certificate", "verified once, then cached"] {
        let r = post_with_cert(&p, &pki, &cert, &key, body);
        assert_eq!(r.status, 202, "{r:?}");
        let m = c.next(Duration::from_secs(5)).expect("arrives");
        assert_eq!(m["body"], body);
        assert_eq!(m["properties"]["device_id"], "d1", "{m}");
    }
    // The certificate's device is the one a gateway-style URI must match, like a Basic login.
    let tls = p.adapter.tls_addr.expect("HTTPS listener");
    let r = curl(&[
        "--cacert",
        &pki.ca_cert_path.display().to_string(),
        "--cert",
        &cert.display().to_string(),
        "--key",
        &key.display().to_string(),
        "-X",
        "PUT",
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "x",
        &format!("https://localhost:{}/telemetry/t2/x", tls.port()),
    ]);
    assert_eq!(r.status, 403, "another tenant's URI: {r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_certificates_get_401() {
    let pki = TestPki::generate();
    let p = https_platform(&pki).await;
    trust(&p, &pki).await;
    let _c = p.consumer("app1", "pw1", "telemetry/t1", 1);
    // Same issuer DN, another key.
    let impostor = TestPki::generate();
    let (cert, key) = impostor.client_cert_files("device-one");
    let r = post_with_cert(&p, &pki, &cert, &key, "x");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"Hono\""));
    // The tenant's CA, but no credential for this subject.
    let (cert, key) = pki.client_cert_files("device-two");
    let r = post_with_cert(&p, &pki, &cert, &key, "x");
    assert_eq!(r.status, 401, "{r:?}");
    // A disabled device's certificate: 404 as for a Basic login.
    p.manage(
        reqwest::Method::PUT,
        "/v1/devices/t1/d1",
        json!({ "enabled": false }),
    )
    .await;
    let (cert, key) = pki.client_cert_files("device-one");
    let r = post_with_cert(&p, &pki, &cert, &key, "x");
    assert_eq!(r.status, 404, "{r:?}");
}

/// `t3` lets devices on `hono-http` send without authenticating.
async fn open_tenant(p: &Platform) {
    p.manage(
        reqwest::Method::POST,
        "/v1/tenants/t3",
        json!({ "adapters": [{ "type": "hono-http", "enabled": true, "device-authentication-required": false }] }),
    )
    .await;
    p.manage(reqwest::Method::POST, "/v1/devices/t3/d9", json!({}))
        .await;
    p.manage(
        reqwest::Method::PUT,
        "/v1/applications/app3",
        json!({ "password": "pw3", "tenants": ["t3"] }),
    )
    .await;
}

fn put(p: &Platform, path: &str, extra: &[&str]) -> Reply {
    let url = p.url(path);
    let mut args = vec![
        "-X",
        "PUT",
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "anon",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_devices_put_where_the_tenant_allows_it() {
    let p = Platform::start_with(|c| c.authentication_required = false).await;
    open_tenant(&p).await;
    let c = p.consumer("app3", "pw3", "telemetry/t3", 1);
    let r = put(&p, "/telemetry/t3/d9", &[]);
    assert_eq!(r.status, 202, "{r:?}");
    let m = c.next(Duration::from_secs(5)).expect("arrives");
    assert_eq!(m["properties"]["device_id"], "d9", "{m}");
    assert_eq!(m["properties"]["orig_address"], "/telemetry/t3/d9");
    let e = p.consumer("app3", "pw3", "event/t3", 1);
    let r = put(&p, "/event/t3/d9", &[]);
    assert_eq!(r.status, 202, "{r:?}");
    assert!(e.next(Duration::from_secs(5)).is_some());
    // A command response nobody waits for: the unauthenticated form is accepted, then 503.
    let r = put(
        &p,
        "/command/res/t3/d9/005cmd-1r",
        &["-H", "hono-cmd-status: 200"],
    );
    assert_eq!(r.status, 503, "{r:?}");
    // t1 requires authentication; an unknown tenant looks the same; POST forms need a login.
    for path in ["/telemetry/t1/d1", "/telemetry/nope/d9"] {
        let r = put(&p, path, &[]);
        assert_eq!(r.status, 401, "{path}: {r:?}");
        assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"Hono\""));
    }
    let r = curl(&[
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "x",
        &p.url("/telemetry"),
    ]);
    assert_eq!(r.status, 401, "{r:?}");
    // An unknown device of the open tenant.
    let r = put(&p, "/telemetry/t3/nobody", &[]);
    assert_eq!(r.status, 404, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_adapter_setting_every_request_needs_credentials() {
    let p = Platform::start().await;
    open_tenant(&p).await;
    let r = put(&p, "/telemetry/t3/d9", &[]);
    assert_eq!(r.status, 401, "{r:?}");
}
