//! Tenant-scoped tokens of the management API: made by the admin, good for their own tenant's devices,
//! credentials, presence, live messages and commands only; refused once deleted, expired, or their
//! tenant is gone. The secret is shown once and never stored.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both;
use crate::harness::*;

async fn with(
    r: &Registry,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Answer {
    r.call_with(method, path, Some(token), body, None).await
}

/// A new token of `tenant`: (id, token).
async fn new_token(r: &Registry, tenant: &str, body: &Value) -> (String, String) {
    let made = r.post(&format!("/v1/tokens/{tenant}"), body).await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.body);
    let token = made.body["token"].as_str().expect("the token").to_owned();
    let id = made.body["id"].as_str().expect("an id").to_owned();
    assert!(token.starts_with("ftt_") && token.contains(&id), "{token}");
    (id, token)
}

both!(
    a_tenant_token_manages_its_own_tenant_and_nothing_else,
    |r| async move {
        r.tenant("t1", json!({})).await;
        r.tenant("t2", json!({})).await;
        r.post("/v1/devices/t2/other", &json!({})).await;
        let (id, token) = new_token(&r, "t1", &json!({"comment": "line 3 team"})).await;

        // Its own tenant: read it, manage devices and credentials.
        let t1 = with(&r, &token, Method::GET, "/v1/tenants/t1", None).await;
        assert_eq!(t1.status, StatusCode::OK, "{:?}", t1.body);
        let made = with(
            &r,
            &token,
            Method::POST,
            "/v1/devices/t1/d1",
            Some(&json!({})),
        )
        .await;
        assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.body);
        let creds = json!([{"type": "hashed-password", "auth-id": "d1",
        "secrets": [{"pwd-plain": "s3cret-pw"}]}]);
        let set = with(
            &r,
            &token,
            Method::PUT,
            "/v1/credentials/t1/d1",
            Some(&creds),
        )
        .await;
        assert_eq!(set.status, StatusCode::NO_CONTENT, "{:?}", set.body);
        let search = with(&r, &token, Method::GET, "/v1/devices/t1", None).await;
        assert_eq!(search.status, StatusCode::OK);
        assert_eq!(search.body["total"], 1);
        let me = with(&r, &token, Method::GET, "/v1/whoami", None).await;
        assert_eq!(me.body, json!({"scope": "tenant", "tenant": "t1"}));
        assert_eq!(r.get("/v1/whoami").await.body, json!({"scope": "admin"}));

        // Everything else: 403, and another tenant's data is not even looked at.
        for (method, path) in [
            (Method::GET, "/v1/tenants/t2"),
            (Method::GET, "/v1/devices/t2"),
            (Method::GET, "/v1/devices/t2/other"),
            (Method::DELETE, "/v1/devices/t2/other"),
            (Method::GET, "/v1/credentials/t2/other"),
            (Method::GET, "/v1/tenants"),
            (Method::PUT, "/v1/tenants/t1"),
            (Method::DELETE, "/v1/tenants/t1"),
            (Method::GET, "/v1/applications"),
            (Method::GET, "/v1/tokens/t1"),
            (Method::POST, "/v1/tokens/t1"),
        ] {
            let a = with(&r, &token, method.clone(), path, Some(&json!({}))).await;
            assert_eq!(
                a.status,
                StatusCode::FORBIDDEN,
                "{method} {path}: {:?}",
                a.body
            );
            assert!(a.error().contains("t1"), "{:?}", a.body);
        }
        assert_eq!(
            r.get("/v1/devices/t2/other").await.status,
            StatusCode::OK,
            "t2's device is untouched"
        );
        // Not the internal API either.
        let internal = with(&r, &token, Method::GET, "/internal/v1/tenants/t1", None).await;
        assert_eq!(internal.status, StatusCode::UNAUTHORIZED);

        // Listed without the secret; deleted, it is refused from the next request on.
        let listed = r.get("/v1/tokens/t1").await;
        assert_eq!(listed.status, StatusCode::OK);
        let tokens = listed.body["tokens"].as_array().expect("tokens");
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0]["id"], id.as_str());
        assert_eq!(tokens[0]["comment"], "line 3 team");
        assert!(
            !listed.body.to_string().contains(&token[20..]),
            "{:?}",
            listed.body
        );
        assert!(tokens[0].get("hash").is_none());
        assert_eq!(
            r.delete(&format!("/v1/tokens/t1/{id}")).await.status,
            StatusCode::NO_CONTENT
        );
        let gone = with(&r, &token, Method::GET, "/v1/tenants/t1", None).await;
        assert_eq!(gone.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.delete(&format!("/v1/tokens/t1/{id}")).await.status,
            StatusCode::NOT_FOUND
        );
    }
);

both!(
    forged_expired_and_orphaned_tokens_are_refused,
    |r| async move {
        r.tenant("t1", json!({})).await;
        let (id, token) = new_token(&r, "t1", &json!({})).await;
        // The right id with another secret.
        let forged = format!("ftt_{id}_{}", "A".repeat(43));
        let a = with(&r, &forged, Method::GET, "/v1/tenants/t1", None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        // A token that expires.
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
        let (_, short) = new_token(&r, "t1", &json!({"expires-at": soon})).await;
        let ok = with(&r, &short, Method::GET, "/v1/tenants/t1", None).await;
        assert_eq!(ok.status, StatusCode::OK);
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        let late = with(&r, &short, Method::GET, "/v1/tenants/t1", None).await;
        assert_eq!(late.status, StatusCode::UNAUTHORIZED, "an expired token");
        // The tenant deleted and made again: its old tokens are gone with it.
        assert_eq!(
            r.delete("/v1/tenants/t1").await.status,
            StatusCode::NO_CONTENT
        );
        r.tenant("t1", json!({})).await;
        let orphan = with(&r, &token, Method::GET, "/v1/tenants/t1", None).await;
        assert_eq!(orphan.status, StatusCode::UNAUTHORIZED);
    }
);

both!(token_requests_are_checked, |r| async move {
    r.tenant("t1", json!({})).await;
    let past = r
        .post(
            "/v1/tokens/t1",
            &json!({"expires-at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(past.status, StatusCode::BAD_REQUEST, "{:?}", past.body);
    let unknown = r.post("/v1/tokens/t1", &json!({"scope": "all"})).await;
    assert_eq!(
        unknown.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        unknown.body
    );
    let long = r
        .post("/v1/tokens/t1", &json!({"comment": "x".repeat(300)}))
        .await;
    assert_eq!(long.status, StatusCode::BAD_REQUEST);
    let nobody = r.post("/v1/tokens/nope", &json!({})).await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND, "{:?}", nobody.body);
    assert_eq!(r.get("/v1/tokens/nope").await.status, StatusCode::NOT_FOUND);
    let anonymous = r
        .call_with(Method::POST, "/v1/tokens/t1", None, Some(&json!({})), None)
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    // A bounded number per tenant.
    for _ in 0..100 {
        new_token(&r, "t1", &json!({})).await;
    }
    let over = r.post("/v1/tokens/t1", &json!({})).await;
    assert_eq!(over.status, StatusCode::FORBIDDEN, "{:?}", over.body);
});
