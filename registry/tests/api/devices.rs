//! Devices: HONO-CONTRACT §3.2 status codes, cascades, search, limits.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both;
use crate::tenants::form;

both!(create_device_in_unknown_tenant_is_404, |r| async move {
    let a = r.post("/v1/devices/nope/d1", &json!({})).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.error().contains("tenant"));
});

both!(create_get_update_delete_device, |r| async move {
    r.tenant("t1", json!({})).await;
    let a = r
        .post(
            "/v1/devices/t1",
            &json!({ "defaults": { "content-type": "text/plain" } }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let id = a.body["id"].as_str().expect("generated id").to_owned();
    assert_eq!(
        a.header("location"),
        Some(format!("/v1/devices/t1/{id}").as_str())
    );

    let got = r.get(&format!("/v1/devices/t1/{id}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["enabled"], true);
    assert_eq!(got.body["defaults"]["content-type"], "text/plain");
    assert!(got.body["status"]["created"].is_string(), "{:?}", got.body);

    // Device creation adds an empty credentials set.
    let creds = r.get(&format!("/v1/credentials/t1/{id}")).await;
    assert_eq!(creds.status, StatusCode::OK);
    assert_eq!(creds.body, json!([]));

    let dup = r.post(&format!("/v1/devices/t1/{id}"), &json!({})).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);

    let v1 = got.etag();
    let up = r
        .put_if(
            &format!("/v1/devices/t1/{id}"),
            &json!({ "enabled": false }),
            &v1,
        )
        .await;
    assert_eq!(up.status, StatusCode::NO_CONTENT);
    let stale = r
        .put_if(&format!("/v1/devices/t1/{id}"), &json!({}), &v1)
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let got = r.get(&format!("/v1/devices/t1/{id}")).await;
    assert_eq!(got.body["enabled"], false);
    assert!(got.body["status"]["updated"].is_string());

    assert_eq!(
        r.put("/v1/devices/t1/other", &json!({})).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        r.delete_if(&format!("/v1/devices/t1/{id}"), &v1)
            .await
            .status,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        r.delete(&format!("/v1/devices/t1/{id}")).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        r.get(&format!("/v1/devices/t1/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        r.delete(&format!("/v1/devices/t1/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
});

both!(deleting_a_device_deletes_its_credentials, |r| async move {
    r.tenant("t1", json!({})).await;
    r.device("t1", "d1", json!({})).await;
    r.credentials(
        "t1",
        "d1",
        json!([{ "type": "psk", "auth-id": "psk1", "secrets": [{ "key": "c2VjcmV0" }] }]),
    )
    .await;
    assert_eq!(
        r.delete("/v1/devices/t1/d1").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        r.get("/v1/credentials/t1/d1").await.status,
        StatusCode::NOT_FOUND
    );
    let lookup = r
        .internal(Method::GET, "/credentials/t1?type=psk&auth-id=psk1", None)
        .await;
    assert_eq!(lookup.status, StatusCode::NOT_FOUND);
    // The auth-id is free again for another device.
    r.device("t1", "d2", json!({})).await;
    r.credentials(
        "t1",
        "d2",
        json!([{ "type": "psk", "auth-id": "psk1", "secrets": [{ "key": "c2VjcmV0" }] }]),
    )
    .await;
});

both!(delete_all_devices_of_a_tenant, |r| async move {
    r.tenant("t1", json!({})).await;
    r.tenant("t2", json!({})).await;
    for d in ["d1", "d2", "d3"] {
        r.device("t1", d, json!({})).await;
    }
    r.device("t2", "d1", json!({})).await;
    assert_eq!(
        r.delete("/v1/devices/t1").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        r.get("/v1/devices/t1").await.status,
        StatusCode::NOT_FOUND,
        "no devices left to find"
    );
    assert_eq!(
        r.get("/v1/devices/t2/d1").await.status,
        StatusCode::OK,
        "the other tenant is untouched"
    );
    assert_eq!(
        r.delete("/v1/devices/nope").await.status,
        StatusCode::NOT_FOUND
    );
});

both!(
    device_search_with_filters_paging_and_gateways,
    |r| async move {
        r.tenant("t1", json!({})).await;
        r.device("t1", "gw1", json!({ "memberOf": ["g"] })).await;
        r.device("t1", "gw2", json!({})).await;
        r.device(
            "t1",
            "s1",
            json!({ "via": ["gw2"], "ext": { "model": "thermo-1" } }),
        )
        .await;
        r.device(
            "t1",
            "s2",
            json!({ "viaGroups": ["g"], "ext": { "model": "thermo-2" } }),
        )
        .await;
        r.device(
            "t1",
            "s3",
            json!({ "enabled": false, "ext": { "model": "hygro" } }),
        )
        .await;

        let all = r.get("/v1/devices/t1").await;
        assert_eq!(all.body["total"], 5);
        let gws = r.get("/v1/devices/t1?isGateway=true").await;
        let ids: Vec<&str> = gws.body["result"]
            .as_array()
            .expect("array")
            .iter()
            .map(|d| d["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, ["gw1", "gw2"]);
        assert_eq!(
            r.get("/v1/devices/t1?isGateway=false").await.body["total"],
            3
        );
        assert_eq!(
            r.get("/v1/devices/t1?isGateway=maybe").await.status,
            StatusCode::BAD_REQUEST
        );

        let thermo = r
            .get(&format!(
                "/v1/devices/t1?filterJson={}",
                form(r#"{"field":"/ext/model","value":"thermo-*"}"#)
            ))
            .await;
        assert_eq!(thermo.body["total"], 2);
        let disabled = r
            .get(&format!(
                "/v1/devices/t1?filterJson={}",
                form(r#"{"field":"/enabled","value":false}"#)
            ))
            .await;
        assert_eq!(disabled.body["result"][0]["id"], "s3");

        let page = r.get("/v1/devices/t1?pageSize=2&pageOffset=4").await;
        assert_eq!(page.body["total"], 5);
        assert_eq!(page.body["result"].as_array().expect("array").len(), 1);
        assert_eq!(
            r.get("/v1/devices/nope").await.status,
            StatusCode::NOT_FOUND
        );
    }
);

both!(device_body_is_validated, |r| async move {
    r.tenant("t1", json!({})).await;
    let both_ways = r
        .post(
            "/v1/devices/t1/d1",
            &json!({ "via": ["gw"], "memberOf": ["g"] }),
        )
        .await;
    assert_eq!(
        both_ways.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        both_ways.body
    );
    let unknown = r
        .post("/v1/devices/t1/d1", &json!({ "colour": "red" }))
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(unknown.error().contains("colour"), "{}", unknown.error());
    let bad_via = r
        .post("/v1/devices/t1/d1", &json!({ "via": ["a/b"] }))
        .await;
    assert_eq!(bad_via.status, StatusCode::BAD_REQUEST);
    let bad_id = r.post("/v1/devices/t1/a%20b", &json!({})).await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.get("/v1/devices/t1/d1").await.status,
        StatusCode::NOT_FOUND,
        "nothing was stored"
    );
});

both!(registration_limit_on_devices_is_403, |r| async move {
    r.tenant("t1", json!({ "registration-limits": { "max-devices": 2 } }))
        .await;
    r.device("t1", "d1", json!({})).await;
    r.device("t1", "d2", json!({})).await;
    let third = r.post("/v1/devices/t1/d3", &json!({})).await;
    assert_eq!(third.status, StatusCode::FORBIDDEN, "{:?}", third.body);
});
