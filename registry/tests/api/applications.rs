//! Application users (Ferry's AMQP consumers): managed under `/v1/applications`, authenticated by the router
//! through `POST /internal/v1/applications/authenticate`. The password is write-only.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both;
use crate::harness::*;

const AUTHENTICATE: &str = "/internal/v1/applications/authenticate";

/// The router's login check, with the internal token.
async fn authenticate(r: &Registry, name: &str, password: &str) -> Answer {
    r.call_with(
        Method::POST,
        AUTHENTICATE,
        Some(INTERNAL),
        Some(&json!({ "name": name, "password": password })),
        None,
    )
    .await
}

fn assert_no_secret(body: &Value) {
    let text = body.to_string();
    for leak in ["password", "hash", "$2"] {
        assert!(!text.contains(leak), "the answer shows {leak:?}: {text}");
    }
}

both!(create_replace_get_list_and_delete, |r| async move {
    let created = r
        .put(
            "/v1/applications/app1",
            &json!({ "password": "pw", "tenants": ["t1", "t2"] }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let v1 = created.etag();
    assert_eq!(created.header("location"), Some("/v1/applications/app1"));

    let replaced = r
        .put(
            "/v1/applications/app1",
            &json!({ "password": "pw", "tenants": ["t1", "t2"] }),
        )
        .await;
    assert_eq!(
        replaced.status,
        StatusCode::NO_CONTENT,
        "{:?}",
        replaced.body
    );
    assert_ne!(replaced.etag(), v1, "a write changes the version");

    let got = r.get("/v1/applications/app1").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.etag(), replaced.etag());
    assert_eq!(got.body["name"], "app1");
    assert_eq!(got.body["tenants"], json!(["t1", "t2"]));
    assert_eq!(
        got.body["operations"],
        json!(["telemetry", "event", "command"]),
        "all operations by default"
    );
    assert_no_secret(&got.body);

    r.put(
        "/v1/applications/app0",
        &json!({ "password": "pw", "tenants": ["t3"] }),
    )
    .await;
    let list = r.get("/v1/applications").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["total"], 2);
    assert_eq!(list.body["result"][1]["name"], "app1");
    assert_eq!(list.body["result"][1]["tenants"], json!(["t1", "t2"]));
    assert_no_secret(&list.body);

    assert_eq!(
        r.delete("/v1/applications/app1").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        r.get("/v1/applications/app1").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        r.delete("/v1/applications/app1").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        authenticate(&r, "app1", "pw").await.status,
        StatusCode::FORBIDDEN,
        "a deleted user cannot log in"
    );
    assert_eq!(r.get("/v1/applications").await.body["total"], 1);
});

both!(authentication_checks_the_password, |r| async move {
    r.put(
        "/v1/applications/app1",
        &json!({ "password": "pw", "tenants": ["t1", "t2"], "operations": ["telemetry", "event"] }),
    )
    .await;
    let ok = authenticate(&r, "app1", "pw").await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    assert_eq!(ok.body["name"], "app1");
    assert_eq!(ok.body["tenants"], json!(["t1", "t2"]));
    assert_eq!(ok.body["operations"], json!(["telemetry", "event"]));
    assert_no_secret(&ok.body);

    let wrong = authenticate(&r, "app1", "PW").await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let unknown = authenticate(&r, "nobody", "pw").await;
    assert_eq!(unknown.status, StatusCode::FORBIDDEN);
    assert_eq!(
        wrong.error(),
        unknown.error(),
        "an unknown name looks like a wrong password"
    );
    assert_eq!(
        authenticate(&r, "not a name", "pw").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        authenticate(&r, "app1", "").await.status,
        StatusCode::FORBIDDEN
    );

    // A new password replaces the old one.
    r.put(
        "/v1/applications/app1",
        &json!({ "password": "new-pw", "tenants": ["t1"] }),
    )
    .await;
    assert_eq!(
        authenticate(&r, "app1", "pw").await.status,
        StatusCode::FORBIDDEN
    );
    let ok = authenticate(&r, "app1", "new-pw").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body["tenants"], json!(["t1"]));
});

both!(authentication_needs_a_token, |r| async move {
    r.put(
        "/v1/applications/app1",
        &json!({ "password": "pw", "tenants": ["t1"] }),
    )
    .await;
    let body = json!({ "name": "app1", "password": "pw" });
    let none = r
        .call_with(Method::POST, AUTHENTICATE, None, Some(&body), None)
        .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(!none.error().is_empty());
    let wrong = r
        .call_with(Method::POST, AUTHENTICATE, Some("wrong"), Some(&body), None)
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    // The application's own password is no token.
    let own = r
        .call_with(Method::POST, AUTHENTICATE, Some("pw"), Some(&body), None)
        .await;
    assert_eq!(own.status, StatusCode::UNAUTHORIZED);
    // Managing users takes the admin token.
    let manage = r
        .call_with(
            Method::GET,
            "/v1/applications/app1",
            Some(INTERNAL),
            None,
            None,
        )
        .await;
    assert_eq!(manage.status, StatusCode::UNAUTHORIZED);
});

/// bcrypt reads 72 bytes at most; the registry takes a 72-byte password but no longer one.
async fn longest_password_login(r: Registry) {
    let password = "correct horse battery staple ".repeat(3)[..72].to_owned();
    let longer = format!("{password}-and-more");
    let a = r
        .put(
            "/v1/applications/app1",
            &json!({ "password": password, "tenants": ["t1"] }),
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "72 bytes are allowed: {:?}",
        a.body
    );
    assert_eq!(
        authenticate(&r, "app1", &password).await.status,
        StatusCode::OK
    );
    assert_eq!(
        authenticate(&r, "app1", &password[..71]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        authenticate(&r, "app1", &longer).await.status,
        StatusCode::FORBIDDEN,
        "a longer password is a wrong password, even if its first 72 bytes match"
    );
}

both!(
    a_72_byte_password_is_accepted_but_not_with_more_appended,
    |r| longest_password_login(r)
);

both!(every_tenant_grant_round_trips, |r| async move {
    let a = r
        .put(
            "/v1/applications/ops@example.com",
            &json!({ "password": "pw", "tenants": ["*"], "operations": ["command"] }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let got = r.get("/v1/applications/ops@example.com").await;
    assert_eq!(got.body["tenants"], json!(["*"]));
    assert_eq!(got.body["operations"], json!(["command"]));
    let ok = authenticate(&r, "ops@example.com", "pw").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body["tenants"], json!(["*"]));
});

both!(invalid_application_requests_are_400, |r| async move {
    for path in [
        "/v1/applications/a%20b",
        "/v1/applications/a%2Fb",
        "/v1/applications/a%3Ab",
    ] {
        let put = r
            .put(path, &json!({ "password": "pw", "tenants": ["t1"] }))
            .await;
        assert_eq!(
            put.status,
            StatusCode::BAD_REQUEST,
            "{path}: {:?}",
            put.body
        );
        assert!(!put.error().is_empty());
        assert_eq!(r.get(path).await.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(
            r.delete(path).await.status,
            StatusCode::BAD_REQUEST,
            "{path}"
        );
    }
    let long = format!("/v1/applications/{}", "a".repeat(129));
    assert_eq!(
        r.put(&long, &json!({ "password": "pw", "tenants": ["t1"] }))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    let cases = [
        ("no password", json!({ "tenants": ["t1"] })),
        (
            "empty password",
            json!({ "password": "", "tenants": ["t1"] }),
        ),
        (
            "password over 72 bytes",
            json!({ "password": "x".repeat(73), "tenants": ["t1"] }),
        ),
        ("no tenants", json!({ "password": "pw" })),
        ("empty tenants", json!({ "password": "pw", "tenants": [] })),
        (
            "bad tenant id",
            json!({ "password": "pw", "tenants": ["a/b"] }),
        ),
        (
            "unknown operation",
            json!({ "password": "pw", "tenants": ["t1"], "operations": ["delete"] }),
        ),
        (
            "empty operations",
            json!({ "password": "pw", "tenants": ["t1"], "operations": [] }),
        ),
        (
            "unknown field",
            json!({ "password": "pw", "tenants": ["t1"], "colour": "red" }),
        ),
        (
            "a stored hash",
            json!({ "password-hash": "$2a$04$UuTkLRZZ6QofpDOlMz32MuuxEHA43WOemOYHPz6.SjsVsyO1tDU96", "tenants": ["t1"] }),
        ),
    ];
    for (what, body) in cases {
        let a = r.put("/v1/applications/app1", &body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{what}: {:?}", a.body);
        assert!(!a.error().is_empty(), "{what}");
    }
    assert_eq!(
        r.get("/v1/applications").await.status,
        StatusCode::NOT_FOUND,
        "nothing was stored"
    );

    let no_password = r
        .call_with(
            Method::POST,
            AUTHENTICATE,
            Some(INTERNAL),
            Some(&json!({ "name": "app1" })),
            None,
        )
        .await;
    assert_eq!(
        no_password.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        no_password.body
    );
    let extra = r
        .call_with(
            Method::POST,
            AUTHENTICATE,
            Some(INTERNAL),
            Some(&json!({ "name": "app1", "password": "pw", "x": 1 })),
            None,
        )
        .await;
    assert_eq!(extra.status, StatusCode::BAD_REQUEST);
});

both!(applications_honour_if_match, |r| async move {
    let body = json!({ "password": "pw", "tenants": ["t1"] });
    let absent = r
        .put_if("/v1/applications/app1", &body, "\"some-version\"")
        .await;
    assert_eq!(
        absent.status,
        StatusCode::PRECONDITION_FAILED,
        "a version of nothing does not match"
    );
    assert_eq!(
        r.get("/v1/applications/app1").await.status,
        StatusCode::NOT_FOUND
    );

    let v1 = r.put("/v1/applications/app1", &body).await.etag();
    let v2 = r
        .put_if(
            "/v1/applications/app1",
            &json!({ "password": "pw2", "tenants": ["t2"] }),
            &v1,
        )
        .await;
    assert_eq!(v2.status, StatusCode::NO_CONTENT);
    let v2 = v2.etag();

    let stale = r
        .put_if(
            "/v1/applications/app1",
            &json!({ "password": "pw3", "tenants": ["t3"] }),
            &v1,
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert!(!stale.error().is_empty());
    let got = r.get("/v1/applications/app1").await;
    assert_eq!(
        got.body["tenants"],
        json!(["t2"]),
        "the refused write changed nothing"
    );
    assert_eq!(got.etag(), v2);
    assert_eq!(authenticate(&r, "app1", "pw2").await.status, StatusCode::OK);
    assert_eq!(
        authenticate(&r, "app1", "pw3").await.status,
        StatusCode::FORBIDDEN
    );

    assert_eq!(
        r.delete_if("/v1/applications/app1", &v1).await.status,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(r.get("/v1/applications/app1").await.status, StatusCode::OK);
    assert_eq!(
        r.delete_if("/v1/applications/app1", &v2).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        r.get("/v1/applications/app1").await.status,
        StatusCode::NOT_FOUND
    );
});

/// Six clients create the same application user at once, twenty times over: one creates it (201), the others
/// replace it (204); none fails.
async fn concurrent_first_puts(r: Registry) {
    let body = json!({ "password": "pw", "tenants": ["t1"] });
    for round in 0..20 {
        let path = format!("/v1/applications/app{round}");
        let answers = futures_util::future::join_all((0..6).map(|_| r.put(&path, &body))).await;
        let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
        let created = statuses.iter().filter(|s| **s == 201).count();
        let replaced = statuses.iter().filter(|s| **s == 204).count();
        assert_eq!(
            (created, replaced),
            (1, 5),
            "round {round}: {statuses:?} {:?}",
            answers.iter().map(|a| &a.body).collect::<Vec<_>>()
        );
    }
}

both!(concurrent_first_puts_of_one_application_all_succeed, |r| {
    concurrent_first_puts(r)
});

/// Six clients replace one application user with the same `If-Match`, twenty times over: one wins, five 412.
async fn concurrent_if_match_puts(r: Registry) {
    let path = "/v1/applications/app1";
    r.put(path, &json!({ "password": "pw", "tenants": ["t1"] }))
        .await;
    for round in 0..20 {
        let version = r.get(path).await.etag();
        let bodies: Vec<Value> = (0..6)
            .map(|i| json!({ "password": format!("pw{i}"), "tenants": [format!("t{i}")] }))
            .collect();
        let answers =
            futures_util::future::join_all(bodies.iter().map(|b| r.put_if(path, b, &version)))
                .await;
        let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
        let winners = statuses.iter().filter(|s| **s == 204).count();
        let refused = statuses.iter().filter(|s| **s == 412).count();
        assert_eq!((winners, refused), (1, 5), "round {round}: {statuses:?}");
        let i = statuses.iter().position(|s| *s == 204).expect("a winner");
        assert_eq!(
            r.get(path).await.body["tenants"],
            json!([format!("t{i}")]),
            "round {round}: the winner's write is stored"
        );
    }
}

both!(concurrent_if_match_puts_let_exactly_one_win, |r| {
    concurrent_if_match_puts(r)
});

/// The registry's count of bcrypt verifications of application passwords.
fn verifications(r: &Registry) -> u64 {
    r.metrics()
        .lines()
        .find_map(|l| l.strip_prefix("ferry_registry_password_verifications_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A registry whose logins lock after `max_failures` within `lockout_secs`.
async fn guarded(max_failures: u32, lockout_secs: u64) -> Registry {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.login_max_failures = max_failures;
    config.login_lockout_secs = lockout_secs;
    Registry::with_config(config, dir).await
}

both!(
    unknown_name_costs_a_bcrypt_like_a_known_one,
    |r| async move {
        r.put(
            "/v1/applications/app1",
            &json!({ "password": "pw", "tenants": ["t1"] }),
        )
        .await;
        let before = verifications(&r);
        assert_eq!(
            authenticate(&r, "app1", "wrong").await.status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(verifications(&r), before + 1, "a known name is verified");
        assert_eq!(
            authenticate(&r, "nobody", "wrong").await.status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            verifications(&r),
            before + 2,
            "an unknown name is verified against a dummy hash, so timing does not tell it apart"
        );
    }
);

#[tokio::test]
async fn password_guessing_locks_the_name_without_bcrypt_but_not_other_users() {
    let r = guarded(3, 600).await;
    for (name, password) in [("app1", "right"), ("app2", "other")] {
        r.put(
            &format!("/v1/applications/{name}"),
            &json!({ "password": password, "tenants": ["t1"] }),
        )
        .await;
    }
    for guess in ["a", "b", "c"] {
        assert_eq!(
            authenticate(&r, "app1", guess).await.status,
            StatusCode::FORBIDDEN
        );
    }
    let before = verifications(&r);
    let locked = authenticate(&r, "app1", "right").await;
    assert_eq!(
        locked.status,
        StatusCode::FORBIDDEN,
        "after 3 failures even the right password is refused: {:?}",
        locked.body
    );
    assert_eq!(
        locked.error(),
        "unknown application or wrong password",
        "a lockout looks like any refusal"
    );
    assert_eq!(
        authenticate(&r, "app1", "d").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(verifications(&r), before, "a locked name costs no bcrypt");
    assert!(r
        .metrics()
        .contains("ferry_registry_logins_locked_out_total 2"));

    // Another user is not affected.
    let other = authenticate(&r, "app2", "other").await;
    assert_eq!(other.status, StatusCode::OK, "{:?}", other.body);

    // Unknown names are locked alike (a lockout does not tell that a name exists).
    for guess in ["a", "b", "c"] {
        authenticate(&r, "nobody", guess).await;
    }
    let before = verifications(&r);
    authenticate(&r, "nobody", "d").await;
    assert_eq!(verifications(&r), before);
    r.stop().await;
}

#[tokio::test]
async fn locked_name_logs_in_again_after_the_window() {
    let r = guarded(2, 1).await;
    r.put(
        "/v1/applications/app1",
        &json!({ "password": "right", "tenants": ["t1"] }),
    )
    .await;
    for guess in ["a", "b"] {
        authenticate(&r, "app1", guess).await;
    }
    assert_eq!(
        authenticate(&r, "app1", "right").await.status,
        StatusCode::FORBIDDEN,
        "locked"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let ok = authenticate(&r, "app1", "right").await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    // The success cleared the failures: one wrong guess does not lock again.
    authenticate(&r, "app1", "a").await;
    assert_eq!(
        authenticate(&r, "app1", "right").await.status,
        StatusCode::OK
    );
    r.stop().await;
}

both!(a_source_address_is_optional_and_checked, |r| async move {
    r.put(
        "/v1/applications/app1",
        &json!({ "password": "pw", "tenants": ["t1"] }),
    )
    .await;
    let ok = r
        .call_with(
            Method::POST,
            AUTHENTICATE,
            Some(INTERNAL),
            Some(&json!({ "name": "app1", "password": "pw", "source": "192.0.2.7" })),
            None,
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let bad = r
        .call_with(
            Method::POST,
            AUTHENTICATE,
            Some(INTERNAL),
            Some(&json!({ "name": "app1", "password": "pw", "source": "nowhere" })),
            None,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);
    assert!(bad.error().contains("source"), "{}", bad.error());
});
