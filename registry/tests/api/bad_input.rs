//! Bad input of every kind gets a clear 4xx with `{"error": ...}`, never a 500, and changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both;
use crate::harness::*;

async fn raw(
    r: &Registry,
    method: Method,
    path: &str,
    body: &'static [u8],
    content_type: &str,
) -> Answer {
    let resp = r
        .client
        .request(method, format!("{}{path}", r.url))
        .bearer_auth(ADMIN)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("send");
    Registry::answer(resp).await
}

both!(malformed_json_is_400, |r| async move {
    r.tenant("t1", json!({})).await;
    for body in [
        &b"{"[..],
        b"{\"enabled\": tru}",
        b"[1,2",
        b"\xff\xfe",
        b"{} trailing",
        b"null",
    ] {
        let a = raw(&r, Method::POST, "/v1/tenants/t2", body, "application/json").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body:?}: {:?}", a.body);
        assert!(!a.error().is_empty());
        let a = raw(
            &r,
            Method::PUT,
            "/v1/credentials/t1/d1",
            body,
            "application/json",
        )
        .await;
        assert!(
            a.status == StatusCode::BAD_REQUEST || a.status == StatusCode::NOT_FOUND,
            "{:?}",
            a.status
        );
    }
    assert_eq!(r.get("/v1/tenants/t2").await.status, StatusCode::NOT_FOUND);
});

both!(
    wrong_types_unknown_fields_and_enum_values_are_400,
    |r| async move {
        let cases = [
            json!({ "enabled": "yes" }),
            json!({ "colour": "blue" }),
            json!({ "adapters": [{ "type": "hono-carrier-pigeon", "enabled": true }] }),
            json!({ "adapters": [] }),
            json!({ "adapters": [{ "type": "hono-mqtt" }, { "type": "hono-mqtt" }] }),
            json!({ "registration-limits": { "max-devices": -5 } }),
            json!({ "resource-limits": { "data-volume": { "max-bytes": 10 } } }),
            json!({ "trusted-ca": [{ "id": "x", "subject-dn": "", "public-key": "AQID", "algorithm": "EC" }] }),
            json!({ "trusted-ca": [{ "id": "x", "subject-dn": "CN=x", "public-key": "!!notbase64", "algorithm": "EC" }] }),
            json!({ "trusted-ca": [{ "id": "x", "subject-dn": "CN=x", "public-key": "AQID", "algorithm": "DSA" }] }),
            json!([1, 2]),
        ];
        for body in cases {
            let a = r.post("/v1/tenants/t1", &body).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {:?}", a.body);
            assert!(!a.error().is_empty());
        }
        assert_eq!(
            r.get("/v1/tenants/t1").await.status,
            StatusCode::NOT_FOUND,
            "nothing stored"
        );
        let unknown = r.post("/v1/tenants/t1", &json!({ "colour": "blue" })).await;
        assert!(
            unknown.error().contains("colour"),
            "the error names the field: {}",
            unknown.error()
        );
    }
);

both!(bodies_over_the_limit_are_413, |r| async move {
    r.tenant("t1", json!({})).await;
    let big = json!({ "ext": { "blob": "x".repeat(70 * 1024) } });
    let a = r.put("/v1/tenants/t1", &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.error().contains("larger"), "{}", a.error());
    let a = r.post("/v1/devices/t1/d1", &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        r.get("/v1/devices/t1/d1").await.status,
        StatusCode::NOT_FOUND
    );
});

both!(non_json_content_type_is_415, |r| async move {
    let a = raw(
        &r,
        Method::POST,
        "/v1/tenants/t1",
        b"<tenant/>",
        "application/xml",
    )
    .await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(!a.error().is_empty());
});

both!(invalid_ids_are_400_everywhere, |r| async move {
    r.tenant("t1", json!({})).await;
    let long = "x".repeat(300);
    for path in [
        "/v1/tenants/bad%20id".to_owned(),
        "/v1/devices/bad%20id".to_owned(),
        "/v1/devices/t1/bad%2Fid".to_owned(),
        format!("/v1/devices/t1/{long}"),
        "/v1/credentials/t1/bad%40id".to_owned(),
        "/v1/applications/bad%20name".to_owned(),
        "/v1/tenants/%FF".to_owned(),
    ] {
        let a = r.get(&path).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {:?}", a.body);
    }
    for path in [
        "/internal/v1/credentials/t1?type=psk",
        "/internal/v1/tenants?subject-dn=",
    ] {
        let a = r
            .call_with(Method::GET, path, Some(INTERNAL), None, None)
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {:?}", a.body);
    }
});
