//! Tenants: HONO-CONTRACT §3.2 status codes, ETag / If-Match, search.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both;
use crate::harness::*;

both!(
    create_with_generated_id_returns_location_etag_and_id,
    |r| async move {
        let a = r.post("/v1/tenants", &json!({})).await;
        assert_eq!(a.status, StatusCode::CREATED);
        let id = a.body["id"].as_str().expect("id").to_owned();
        assert_eq!(
            a.header("location"),
            Some(format!("/v1/tenants/{id}").as_str())
        );
        assert!(!a.etag().is_empty());
        let got = r.get(&format!("/v1/tenants/{id}")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.etag(), a.etag());
    }
);

both!(create_without_body_and_with_id, |r| async move {
    let a = r
        .call_with(Method::POST, "/v1/tenants/plain", Some(ADMIN), None, None)
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    assert_eq!(a.body["id"], "plain");
    let got = r.get("/v1/tenants/plain").await;
    assert_eq!(got.body["enabled"], true);
});

both!(duplicate_tenant_is_409, |r| async move {
    r.tenant("t1", json!({})).await;
    let a = r.post("/v1/tenants/t1", &json!({})).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(a.error().contains("t1"));
});

both!(unknown_tenant_is_404_and_bad_id_is_400, |r| async move {
    assert_eq!(
        r.get("/v1/tenants/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        r.get("/v1/tenants/a%20b").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        r.post("/v1/tenants/a%2Fb", &json!({})).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        r.put("/v1/tenants/nope", &json!({})).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        r.delete("/v1/tenants/nope").await.status,
        StatusCode::NOT_FOUND
    );
});

both!(body_round_trips_hono_tenant_fields, |r| async move {
    let body = json!({
        "enabled": true,
        "defaults": { "ttl": 30 },
        "ext": { "messaging-type": "amqp" },
        "adapters": [
            { "type": "hono-mqtt", "enabled": true, "device-authentication-required": true },
            { "type": "hono-http", "enabled": false, "max-ttd": 30 }
        ],
        "resource-limits": { "max-connections": 10, "max-ttl": 60 },
        "registration-limits": { "max-devices": 5, "max-credentials-per-device": 2 },
        "trusted-ca": [{ "id": "ca1", "subject-dn": "CN=ca,O=ACME", "public-key": "AQID", "algorithm": "EC" }]
    });
    r.tenant("full", body).await;
    let got = r.get("/v1/tenants/full").await;
    assert_eq!(got.body["defaults"]["ttl"], 30);
    assert_eq!(got.body["ext"]["messaging-type"], "amqp");
    assert_eq!(got.body["adapters"][1]["max-ttd"], 30);
    assert_eq!(got.body["resource-limits"]["max-connections"], 10);
    assert_eq!(got.body["registration-limits"]["max-devices"], 5);
    assert_eq!(got.body["trusted-ca"][0]["subject-dn"], "CN=ca,O=ACME");
});

both!(update_with_if_match_flow, |r| async move {
    let created = r.post("/v1/tenants/t1", &json!({})).await;
    let v1 = created.etag();
    let updated = r
        .put_if("/v1/tenants/t1", &json!({ "enabled": false }), &v1)
        .await;
    assert_eq!(updated.status, StatusCode::NO_CONTENT);
    let v2 = updated.etag();
    assert_ne!(v1, v2, "a write changes the version");
    // The old version no longer matches.
    let stale = r
        .put_if("/v1/tenants/t1", &json!({ "enabled": true }), &v1)
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert!(!stale.error().is_empty());
    let got = r.get("/v1/tenants/t1").await;
    assert_eq!(
        got.body["enabled"], false,
        "the refused write changed nothing"
    );
    assert_eq!(got.etag(), v2);
    // Without If-Match the write is unconditional; `*` matches any version.
    assert_eq!(
        r.put("/v1/tenants/t1", &json!({})).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        r.put_if("/v1/tenants/t1", &json!({}), "*").await.status,
        StatusCode::NO_CONTENT
    );
    // Delete honours If-Match too.
    assert_eq!(
        r.delete_if("/v1/tenants/t1", &v2).await.status,
        StatusCode::PRECONDITION_FAILED
    );
    let current = r.get("/v1/tenants/t1").await.etag();
    assert_eq!(
        r.delete_if("/v1/tenants/t1", &current).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(r.get("/v1/tenants/t1").await.status, StatusCode::NOT_FOUND);
});

both!(
    deleting_a_tenant_deletes_its_devices_and_credentials,
    |r| async move {
        r.tenant("t1", json!({})).await;
        r.device("t1", "d1", json!({})).await;
        r.credentials(
        "t1",
        "d1",
        json!([{ "type": "hashed-password", "auth-id": "a1", "secrets": [{ "pwd-plain": "pw" }] }]),
    )
    .await;
        assert_eq!(
            r.delete("/v1/tenants/t1").await.status,
            StatusCode::NO_CONTENT
        );
        // Recreating the tenant does not resurrect anything.
        r.tenant("t1", json!({})).await;
        assert_eq!(
            r.get("/v1/devices/t1/d1").await.status,
            StatusCode::NOT_FOUND
        );
        let lookup = r
            .internal(
                Method::GET,
                "/credentials/t1?type=hashed-password&auth-id=a1",
                None,
            )
            .await;
        assert_eq!(lookup.status, StatusCode::NOT_FOUND);
    }
);

both!(search_filters_sorts_and_pages, |r| async move {
    for (id, enabled, group) in [
        ("a1", true, "x"),
        ("a2", false, "x"),
        ("b1", true, "y"),
        ("b2", true, "x"),
    ] {
        r.tenant(id, json!({ "enabled": enabled, "ext": { "group": group } }))
            .await;
    }
    let all = r.get("/v1/tenants").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.body["total"], 4);
    assert_eq!(all.body["result"][0]["id"], "a1", "sorted by id by default");

    let f = |json: &str| form(json);
    let enabled = r
        .get(&format!(
            "/v1/tenants?filterJson={}",
            f(r#"{"field":"/enabled","value":true}"#)
        ))
        .await;
    assert_eq!(enabled.body["total"], 3);

    let two = r
        .get(&format!(
            "/v1/tenants?filterJson={}&filterJson={}",
            f(r#"{"field":"/enabled","value":true}"#),
            f(r#"{"field":"/ext/group","value":"x"}"#)
        ))
        .await;
    assert_eq!(
        two.body["total"], 2,
        "filters combine with AND: {:?}",
        two.body
    );

    let wildcard = r
        .get(&format!(
            "/v1/tenants?filterJson={}",
            f(r#"{"field":"/id","value":"b*"}"#)
        ))
        .await;
    assert_eq!(wildcard.body["total"], 2);
    let single = r
        .get(&format!(
            "/v1/tenants?filterJson={}",
            f(r#"{"field":"/id","value":"?2"}"#)
        ))
        .await;
    assert_eq!(single.body["total"], 2);

    let page = r
        .get(&format!(
            "/v1/tenants?pageSize=2&pageOffset=1&sortJson={}",
            f(r#"{"field":"/id","direction":"desc"}"#)
        ))
        .await;
    assert_eq!(
        page.body["total"], 4,
        "total counts every match, not the page"
    );
    let ids: Vec<&str> = page.body["result"]
        .as_array()
        .expect("array")
        .iter()
        .map(|t| t["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["b1", "a2"]);

    let none = r
        .get(&format!(
            "/v1/tenants?filterJson={}",
            f(r#"{"field":"/id","value":"zzz"}"#)
        ))
        .await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);

    for bad in [
        "pageSize=201".to_owned(),
        "pageSize=-1".to_owned(),
        "pageOffset=x".to_owned(),
        format!("filterJson={}", f("{not json")),
        format!("filterJson={}", f(r#"{"field":"/id","op":"gt","value":1}"#)),
        format!(
            "sortJson={}",
            f(r#"{"field":"/id","direction":"sideways"}"#)
        ),
    ] {
        let a = r.get(&format!("/v1/tenants?{bad}")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {:?}", a.body);
    }
});

both!(
    tenants_total_metric_follows_creates_and_deletes,
    |r| async move {
        r.tenant("m1", json!({})).await;
        r.tenant("m2", json!({})).await;
        assert!(
            r.metrics().contains("hono_tenants_total 2"),
            "{}",
            r.metrics()
        );
        r.delete("/v1/tenants/m1").await;
        assert!(
            r.metrics().contains("hono_tenants_total 1"),
            "{}",
            r.metrics()
        );
        assert!(r.metrics().contains("ferry_registry_requests_total{method=\"POST\",path=\"/v1/tenants/{tenant}\",status=\"201\"} 2"), "{}", r.metrics());
    }
);

pub fn form(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
