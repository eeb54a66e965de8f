//! The server around the API: tokens, health, OpenAPI, HTTPS, config errors, generated secrets.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both;
use crate::harness::*;

both!(management_api_needs_the_admin_token, |r| async move {
    let none = r
        .call_with(Method::GET, "/v1/tenants", None, None, None)
        .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(none
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Bearer")));
    assert!(!none.error().is_empty());
    let wrong = r
        .call_with(
            Method::POST,
            "/v1/tenants/t1",
            Some("wrong"),
            Some(&json!({})),
            None,
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let internal = r
        .call_with(Method::GET, "/v1/tenants", Some(INTERNAL), None, None)
        .await;
    assert_eq!(
        internal.status,
        StatusCode::UNAUTHORIZED,
        "the internal token does not manage"
    );
    let basic = r
        .client
        .get(format!("{}/v1/tenants", r.url))
        .header("authorization", format!("Basic {ADMIN}"))
        .send()
        .await
        .expect("send");
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.get("/v1/tenants/t1").await.status,
        StatusCode::NOT_FOUND,
        "nothing was created"
    );
});

both!(internal_api_takes_internal_or_admin_token, |r| async move {
    r.tenant("t1", json!({})).await;
    let with_internal = r.internal(Method::GET, "/tenants/t1", None).await;
    assert_eq!(with_internal.status, StatusCode::OK);
    assert_eq!(with_internal.body["tenant-id"], "t1");
    assert!(with_internal
        .header("cache-control")
        .is_some_and(|c| c.starts_with("max-age=")));
    let with_admin = r
        .call_with(
            Method::GET,
            "/internal/v1/tenants/t1",
            Some(ADMIN),
            None,
            None,
        )
        .await;
    assert_eq!(with_admin.status, StatusCode::OK);
    let without = r
        .call_with(Method::GET, "/internal/v1/tenants/t1", None, None, None)
        .await;
    assert_eq!(without.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.internal(Method::GET, "/tenants/none", None).await.status,
        StatusCode::NOT_FOUND
    );
});

both!(health_metrics_and_openapi_are_served, |r| async move {
    let live = r
        .client
        .get(format!("{}/live", r.url))
        .send()
        .await
        .expect("live");
    assert_eq!(live.status(), StatusCode::OK);
    let ready = r
        .client
        .get(format!("{}/ready", r.url))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), StatusCode::OK);
    let metrics = r
        .client
        .get(format!("{}/metrics", r.url))
        .send()
        .await
        .expect("metrics");
    assert!(metrics
        .text()
        .await
        .expect("text")
        .contains("hono_tenants_total"));
    let doc = r
        .call_with(Method::GET, "/v1/openapi.json", None, None, None)
        .await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
    assert!(doc.body["paths"]["/v1/credentials/{tenantId}/{deviceId}"]["put"].is_object());
    assert!(doc.body["components"]["schemas"]["Tenant"].is_object());
    let jwks = r
        .call_with(Method::GET, "/.well-known/jwks.json", None, None, None)
        .await;
    assert_eq!(jwks.body["keys"][0]["kty"], "OKP");
    let unknown = r.get("/v2/nothing").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(!unknown.error().is_empty());
    let wrong_method = r
        .call_with(Method::PATCH, "/v1/tenants/t1", Some(ADMIN), None, None)
        .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
});

#[tokio::test]
async fn https_when_a_certificate_is_configured() {
    let pki = ferry_test_support::TestPki::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.tls.cert_path = Some(pki.server_cert_path.clone());
    config.tls.key_path = Some(pki.server_key_path.clone());
    let r = Registry::with_config(config, dir).await;
    assert!(r.url.starts_with("https://"), "{}", r.url);
    let ca = reqwest::Certificate::from_pem(pki.ca_cert_pem.as_bytes()).expect("ca");
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let url = r.url.replace("127.0.0.1", "localhost");
    let resp = client
        .post(format!("{url}/v1/tenants/secure"))
        .bearer_auth(ADMIN)
        .json(&json!({}))
        .send()
        .await
        .expect("https request");
    assert_eq!(resp.status(), StatusCode::CREATED);
    // Plain HTTP to the TLS port does not get an answer from the API.
    let plain = reqwest::Client::new()
        .get(format!("{}/v1/tenants", url.replace("https://", "http://")))
        .bearer_auth(ADMIN)
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|p| p.status() != StatusCode::OK));
    r.stop().await;
}

#[tokio::test]
async fn generated_tokens_and_key_persist_in_the_data_dir() {
    // The data dir outlives both registries; each gets a throwaway dir of its own to hold.
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(data.path());
    config.admin_token = None;
    config.internal_token = None;
    let data_dir = data.path().to_owned();
    let r = Registry::with_config(config.clone(), tempfile::tempdir().expect("tempdir")).await;
    let token = std::fs::read_to_string(data_dir.join("admin-token")).expect("token written");
    let token = token.trim().to_owned();
    assert!(token.len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data_dir.join("admin-token"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the token file is private");
    }
    let a = r
        .call_with(
            Method::POST,
            "/v1/tenants/t1",
            Some(&token),
            Some(&json!({})),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let kid = r
        .call_with(Method::GET, "/internal/v1/jwks", None, None, None)
        .await
        .body["keys"][0]["kid"]
        .clone();
    r.stop().await;

    // A restart on the same data dir keeps the token, the signing key and the data.
    let dir2 = tempfile::TempDir::new().expect("tempdir");
    let mut config2 = config;
    config2.data_dir = data_dir.clone();
    let r2 = Registry::with_config(config2, dir2).await;
    let again = r2
        .call_with(Method::GET, "/v1/tenants/t1", Some(&token), None, None)
        .await;
    assert_eq!(again.status, StatusCode::OK);
    let kid2 = r2
        .call_with(Method::GET, "/internal/v1/jwks", None, None, None)
        .await
        .body["keys"][0]["kid"]
        .clone();
    assert_eq!(kid, kid2);
    r2.stop().await;
}

#[test]
fn bad_config_exits_64_naming_the_field() {
    let bin = env!("CARGO_BIN_EXE_ferry-registry");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(bin)
        .env("FERRY_REGISTRY_BOGUS_FIELD", "1")
        .env("FERRY_REGISTRY_DATA_DIR", dir.path())
        .output()
        .expect("run ferry-registry");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bogus_field"), "{stderr}");

    let file = dir.path().join("registry.yaml");
    std::fs::write(&file, "max_body_bytes: lots\n").expect("write");
    let out = std::process::Command::new(bin)
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run ferry-registry");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_body_bytes"));

    let out = std::process::Command::new(bin)
        .env("FERRY_REGISTRY_TLS__CERT_PATH", "/x.pem")
        .output()
        .expect("run ferry-registry");
    assert_eq!(out.status.code(), Some(64), "cert without key is refused");
}

#[test]
fn print_default_config_is_loadable_yaml() {
    let bin = env!("CARGO_BIN_EXE_ferry-registry");
    let out = std::process::Command::new(bin)
        .arg("--print-default-config")
        .output()
        .expect("run ferry-registry");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bind: 0.0.0.0:28080"), "{text}");
    assert!(text.contains("assertion_lifetime_secs: 600"));
}

#[tokio::test]
async fn sigterm_stops_the_binary_gracefully() {
    let bin = env!("CARGO_BIN_EXE_ferry-registry");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = ferry_test_support::free_port();
    let mut child = tokio::process::Command::new(bin)
        .env("FERRY_REGISTRY_BIND", format!("127.0.0.1:{port}"))
        .env("FERRY_REGISTRY_DATA_DIR", dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if client
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(up, "registry became ready");
    let pid = child.id().expect("pid");
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}
