//! Registration assertions (HONO-CONTRACT §3.1 `assert`, §4): the internal API signs them, the JWKS it
//! publishes verifies them, and only enabled devices of enabled tenants, through allowed gateways, get one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ferry_core::assertion::{Jwks, Verifier, VerifierConfig, VerifyError};
use ferry_core::ids::{DeviceId, TenantId};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both;
use crate::harness::*;

/// Asks for an assertion as an adapter does; `path` is `tenant/device[?gateway=gw]`.
async fn assertion(r: &Registry, path: &str) -> Answer {
    r.internal(Method::POST, &format!("/assertions/{path}"), None)
        .await
}

/// An assertion that must be issued: the answer and its token.
async fn issued(r: &Registry, path: &str) -> (Answer, String) {
    let a = assertion(r, path).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "assertion for {path}: {:?}",
        a.body
    );
    let token = a.body["assertion"]
        .as_str()
        .expect("an assertion token")
        .to_owned();
    (a, token)
}

/// A verifier built as the router builds it, from the registry's public JWKS (no token needed).
async fn verifier(r: &Registry) -> Verifier {
    let a = r
        .call_with(Method::GET, "/internal/v1/jwks", None, None, None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let jwks: Jwks = serde_json::from_value(a.body).expect("a JWKS");
    assert!(!jwks.keys.is_empty());
    Verifier::new(&jwks, VerifierConfig::default())
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).expect("tenant id")
}

fn device(id: &str) -> DeviceId {
    DeviceId::new(id).expect("device id")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn via(a: &Answer) -> Vec<&str> {
    a.body["via"]
        .as_array()
        .expect("via")
        .iter()
        .map(|v| v.as_str().expect("gateway id"))
        .collect()
}

both!(
    issued_assertion_verifies_against_the_published_jwks,
    |r| async move {
        r.tenant("t1", json!({})).await;
        r.device(
            "t1",
            "d1",
            json!({ "defaults": { "content-type": "text/plain", "ttl": 60 } }),
        )
        .await;
        let (a, token) = issued(&r, "t1/d1").await;
        assert_eq!(a.body["device-id"], "d1");
        assert_eq!(
            a.body["defaults"],
            json!({ "content-type": "text/plain", "ttl": 60 })
        );
        assert_eq!(a.body["via"], json!([]));
        let max_age: u64 = a
            .header("cache-control")
            .and_then(|c| c.strip_prefix("max-age="))
            .and_then(|s| s.parse().ok())
            .expect("Cache-Control: max-age=N");
        let expires = a.body["expires"].as_i64().expect("expires");
        let before = now();
        assert!(
            max_age > 0 && (max_age as i64) < expires - before,
            "cached for less than the token lives: {max_age}"
        );

        let claims = verifier(&r)
            .await
            .check(&token, &tenant("t1"), &device("d1"), now())
            .expect("the assertion verifies");
        assert_eq!(claims.sub.as_str(), "d1");
        assert_eq!(claims.ten.as_str(), "t1");
        assert_eq!(claims.via, None, "no gateway asked");
        assert_eq!(claims.exp, expires);
        assert!(claims.iat <= now() && claims.exp > now(), "{claims:?}");
    }
);

both!(
    a_device_without_defaults_gets_empty_defaults,
    |r| async move {
        r.tenant("t1", json!({})).await;
        r.device("t1", "d1", json!({})).await;
        let (a, _) = issued(&r, "t1/d1").await;
        assert_eq!(a.body["defaults"], json!({}));
    }
);

both!(
    assertion_is_refused_for_another_tenant_device_time_or_signature,
    |r| async move {
        r.tenant("t1", json!({})).await;
        r.tenant("t2", json!({})).await;
        r.device("t1", "d1", json!({})).await;
        r.device("t2", "d1", json!({})).await;
        r.device("t1", "d2", json!({})).await;
        let (a, token) = issued(&r, "t1/d1").await;
        let exp = a.body["expires"].as_i64().expect("expires");
        let v = verifier(&r).await;
        let leeway = VerifierConfig::default().leeway_secs as i64;

        assert_eq!(
            v.check(&token, &tenant("t2"), &device("d1"), now()).err(),
            Some(VerifyError::WrongTenant)
        );
        assert_eq!(
            v.check(&token, &tenant("t1"), &device("d2"), now()).err(),
            Some(VerifyError::WrongDevice)
        );
        assert!(
            v.check(&token, &tenant("t1"), &device("d1"), exp + leeway)
                .is_ok(),
            "within the leeway"
        );
        assert_eq!(
            v.check(&token, &tenant("t1"), &device("d1"), exp + leeway + 1)
                .err(),
            Some(VerifyError::Expired)
        );

        // One flipped bit in the signature.
        let (signed, signature) = token.rsplit_once('.').expect("three parts");
        let mut bytes = URL_SAFE_NO_PAD
            .decode(signature)
            .expect("base64url signature");
        bytes[10] ^= 0x01;
        let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&bytes));
        assert_eq!(
            v.check(&forged, &tenant("t1"), &device("d1"), now()).err(),
            Some(VerifyError::BadSignature)
        );

        // Claims of another real token under this token's signature do not verify either.
        let (_, other) = issued(&r, "t2/d1").await;
        let payload = other.split('.').nth(1).expect("payload");
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = payload;
        let spliced = parts.join(".");
        assert_eq!(
            v.check(&spliced, &tenant("t2"), &device("d1"), now()).err(),
            Some(VerifyError::BadSignature)
        );
    }
);

both!(
    unknown_or_disabled_devices_and_tenants_get_404,
    |r| async move {
        r.tenant("t1", json!({})).await;
        r.tenant("off", json!({ "enabled": false })).await;
        r.device("t1", "d1", json!({})).await;
        r.device("t1", "d-off", json!({ "enabled": false })).await;
        r.device("off", "d1", json!({})).await;
        for path in ["t1/nope", "t1/d-off", "nope/d1", "off/d1"] {
            let a = assertion(&r, path).await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}: {:?}", a.body);
            assert!(!a.error().is_empty());
        }
    }
);

both!(
    disabling_takes_effect_on_the_next_assertion,
    |r| async move {
        r.tenant("t1", json!({})).await;
        r.device("t1", "d1", json!({})).await;
        issued(&r, "t1/d1").await;

        assert_eq!(
            r.put("/v1/devices/t1/d1", &json!({ "enabled": false }))
                .await
                .status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(assertion(&r, "t1/d1").await.status, StatusCode::NOT_FOUND);
        assert_eq!(
            r.put("/v1/devices/t1/d1", &json!({})).await.status,
            StatusCode::NO_CONTENT
        );
        issued(&r, "t1/d1").await;

        assert_eq!(
            r.put("/v1/tenants/t1", &json!({ "enabled": false }))
                .await
                .status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(assertion(&r, "t1/d1").await.status, StatusCode::NOT_FOUND);
        assert_eq!(
            r.put("/v1/tenants/t1", &json!({})).await.status,
            StatusCode::NO_CONTENT
        );
        issued(&r, "t1/d1").await;

        assert_eq!(
            r.delete("/v1/devices/t1/d1").await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(assertion(&r, "t1/d1").await.status, StatusCode::NOT_FOUND);
    }
);

both!(only_gateways_in_via_may_act_for_a_device, |r| async move {
    r.tenant("t1", json!({})).await;
    r.device("t1", "gw1", json!({})).await;
    r.device("t1", "gw2", json!({})).await;
    r.device("t1", "gw-off", json!({ "enabled": false })).await;
    r.device("t1", "d1", json!({ "via": ["gw1", "gw-off"] }))
        .await;

    let (a, token) = issued(&r, "t1/d1?gateway=gw1").await;
    assert_eq!(a.body["device-id"], "d1");
    assert!(via(&a).contains(&"gw1"), "{:?}", a.body);
    let claims = verifier(&r)
        .await
        .check(&token, &tenant("t1"), &device("d1"), now())
        .expect("verifies");
    assert_eq!(claims.via.as_ref().map(DeviceId::as_str), Some("gw1"));

    for gateway in ["gw2", "unknown-gw", "gw-off"] {
        let a = assertion(&r, &format!("t1/d1?gateway={gateway}")).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{gateway}: {:?}", a.body);
        assert!(!a.error().is_empty());
    }

    // Disabling the gateway stops it at once.
    assert_eq!(
        r.put("/v1/devices/t1/gw1", &json!({ "enabled": false }))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        assertion(&r, "t1/d1?gateway=gw1").await.status,
        StatusCode::FORBIDDEN
    );
    // The device itself, connecting directly, is still fine.
    issued(&r, "t1/d1").await;
});

both!(members_of_via_groups_may_act_for_a_device, |r| async move {
    r.tenant("t1", json!({})).await;
    r.device("t1", "gw-a", json!({ "memberOf": ["g"] })).await;
    r.device("t1", "gw-b", json!({ "memberOf": ["other"] }))
        .await;
    r.device("t1", "d1", json!({ "viaGroups": ["g"] })).await;

    let (a, token) = issued(&r, "t1/d1?gateway=gw-a").await;
    assert_eq!(
        via(&a),
        ["gw-a"],
        "the answer lists the group's members: {:?}",
        a.body
    );
    let claims = verifier(&r)
        .await
        .check(&token, &tenant("t1"), &device("d1"), now())
        .expect("verifies");
    assert_eq!(claims.via.as_ref().map(DeviceId::as_str), Some("gw-a"));

    assert_eq!(
        assertion(&r, "t1/d1?gateway=gw-b").await.status,
        StatusCode::FORBIDDEN
    );

    let (direct, token) = issued(&r, "t1/d1").await;
    assert_eq!(via(&direct), ["gw-a"]);
    let claims = verifier(&r)
        .await
        .check(&token, &tenant("t1"), &device("d1"), now())
        .expect("verifies");
    assert_eq!(claims.via, None);
});

both!(assertion_requests_are_checked, |r| async move {
    r.tenant("t1", json!({})).await;
    r.device("t1", "d1", json!({})).await;
    for path in ["t1/a%20b", "a%20b/d1", "t1/d%40t", "t1/d1?gateway=a%20b"] {
        let a = assertion(&r, path).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {:?}", a.body);
        assert!(!a.error().is_empty());
    }
    let none = r
        .call_with(
            Method::POST,
            "/internal/v1/assertions/t1/d1",
            None,
            None,
            None,
        )
        .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    let wrong = r
        .call_with(
            Method::POST,
            "/internal/v1/assertions/t1/d1",
            Some("wrong"),
            None,
            None,
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let get = r.internal(Method::GET, "/assertions/t1/d1", None).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
});
