//! Credentials: HONO-CONTRACT §3.1/§3.2. What the management API stores and returns, and what an adapter
//! gets from the internal lookup and can verify with the model (`verify_password`, `psk_key`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Duration, TimeZone, Utc};
use ferry_registry_model::{Credential, DeviceCredential};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both;
use crate::harness::*;
use crate::tenants::form;

/// The internal lookup an adapter makes for (type, auth-id) in a tenant.
async fn lookup(r: &Registry, tenant: &str, cred_type: &str, auth_id: &str) -> Answer {
    let path = format!(
        "/credentials/{tenant}?type={cred_type}&auth-id={}",
        form(auth_id)
    );
    r.internal(Method::GET, &path, None).await
}

/// The lookup that must succeed: the owning device and the credential as the model reads it.
async fn found(r: &Registry, tenant: &str, cred_type: &str, auth_id: &str) -> (String, Credential) {
    let a = lookup(r, tenant, cred_type, auth_id).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "lookup {tenant} {cred_type} {auth_id}: {:?}",
        a.body
    );
    let mut body = a.body;
    let device = body
        .as_object_mut()
        .and_then(|m| m.remove("device-id"))
        .and_then(|d| d.as_str().map(str::to_owned))
        .expect("the lookup names the device");
    let credential = serde_json::from_value(body).expect("the lookup answer is a model Credential");
    (device, credential)
}

fn creds_path(tenant: &str, device: &str) -> String {
    format!("/v1/credentials/{tenant}/{device}")
}

fn password(auth_id: &str, secret: Value) -> Value {
    json!({ "type": "hashed-password", "auth-id": auth_id, "secrets": [secret] })
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("timestamp")
        .with_timezone(&Utc)
}

both!(
    pwd_plain_is_stored_as_bcrypt_returned_redacted_and_verifies,
    |r| async move {
        r.tenant("t1", json!({})).await;
        r.device("t1", "d1", json!({})).await;
        let put = r
            .put(
                &creds_path("t1", "d1"),
                &json!([password("sensor1", json!({ "pwd-plain": "s3cret!" }))]),
            )
            .await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "{:?}", put.body);
        let version = put.etag();

        // The management GET shows metadata and the secret's id, never the password or its hash.
        let got = r.get(&creds_path("t1", "d1")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.etag(), version);
        let list = got.body.as_array().expect("an array of credentials");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["type"], "hashed-password");
        assert_eq!(list[0]["auth-id"], "sensor1");
        assert_eq!(list[0]["enabled"], true);
        let secret = &list[0]["secrets"][0];
        let secret_id = secret["id"].as_str().expect("a secret id");
        assert!(!secret_id.is_empty());
        for field in ["pwd-plain", "pwd-hash", "salt"] {
            assert!(secret.get(field).is_none(), "GET leaks {field}: {secret:?}");
        }

        // The adapter's lookup gets the device and the bcrypt hash, but not the clear text either.
        let a = lookup(&r, "t1", "hashed-password", "sensor1").await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert!(a
            .header("cache-control")
            .is_some_and(|c| c.starts_with("max-age=")));
        assert_eq!(a.body["device-id"], "d1");
        let stored = &a.body["secrets"][0];
        assert_eq!(stored["id"], secret_id, "the same secret as the GET shows");
        assert_eq!(stored["hash-function"], "bcrypt");
        let hash = stored["pwd-hash"].as_str().expect("a pwd-hash");
        assert!(
            hash.starts_with("$2a$04$"),
            "bcrypt $2a$ at the configured cost 4: {hash}"
        );
        assert!(stored.get("pwd-plain").is_none());

        let as_device: DeviceCredential =
            serde_json::from_value(a.body.clone()).expect("a DeviceCredential");
        assert_eq!(as_device.device_id.as_str(), "d1");

        let (device, credential) = found(&r, "t1", "hashed-password", "sensor1").await;
        assert_eq!(device, "d1");
        let now = Utc::now();
        assert!(credential.verify_password("s3cret!", now));
        assert!(!credential.verify_password("s3cret?", now));
        assert!(!credential.verify_password("", now));
        assert_eq!(
            lookup(&r, "t1", "hashed-password", "sensor2").await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            lookup(&r, "t1", "psk", "sensor1").await.status,
            StatusCode::NOT_FOUND
        );
    }
);

/// bcrypt reads 72 bytes at most; the registry takes a 72-byte `pwd-plain` but no longer one.
async fn longest_pwd_plain(r: Registry) {
    let plain = "correct horse battery staple ".repeat(3)[..72].to_owned();
    r.tenant("t1", json!({})).await;
    r.device("t1", "d1", json!({})).await;
    r.credentials(
        "t1",
        "d1",
        json!([password("a1", json!({ "pwd-plain": plain }))]),
    )
    .await;
    let (_, credential) = found(&r, "t1", "hashed-password", "a1").await;
    let now = Utc::now();
    assert!(credential.verify_password(&plain, now));
    assert!(!credential.verify_password(&plain[..71], now));
    assert!(
        !credential.verify_password(&format!("{plain}-and-more"), now),
        "a longer password is a wrong password, even if its first 72 bytes match"
    );
    let too_long = r
        .put(
            &creds_path("t1", "d1"),
            &json!([password("a1", json!({ "pwd-plain": format!("{plain}x") }))]),
        )
        .await;
    assert_eq!(
        too_long.status,
        StatusCode::BAD_REQUEST,
        "73 bytes would be truncated: {:?}",
        too_long.body
    );
}

both!(
    a_72_byte_pwd_plain_does_not_verify_with_more_appended,
    |r| longest_pwd_plain(r)
);

both!(
    pre_hashed_sha_secrets_verify_as_hono_stores_them,
    |r| async move {
        // pwd-hash = base64(H(salt ‖ password)). The digests are the FIPS 180-2 test vectors of the whole
        // message, split into a salt and a password.
        let sha256_msg = (
            "abcdbcde",
            "cdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        );
        let sha256 = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
        let sha512_msg = (
        "abcdefgh",
        "bcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
    );
        let sha512 = "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018\
                  501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909";
        let default_msg = ("a", "bc");
        let sha256_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

        r.tenant("t1", json!({})).await;
        r.device("t1", "d1", json!({})).await;
        r.credentials(
        "t1",
        "d1",
        json!([
            password("u256", json!({ "hash-function": "sha-256", "pwd-hash": b64(&unhex(sha256)), "salt": b64(sha256_msg.0.as_bytes()) })),
            password("u512", json!({ "hash-function": "sha-512", "pwd-hash": b64(&unhex(sha512)), "salt": b64(sha512_msg.0.as_bytes()) })),
            // No hash-function: Hono's default, sha-256.
            password("udefault", json!({ "pwd-hash": b64(&unhex(sha256_abc)), "salt": b64(default_msg.0.as_bytes()) })),
            // No salt: H(password) alone (the SHA-512 of "password").
            password("unsalted", json!({
                "hash-function": "sha-512",
                "pwd-hash": "sQnzu7wkTrgkQZF+0G1hi5AI3Qmzvv0bXgc5THBqi7mAsdd4Xll27ASbRt9fEyavWi6m0QP9B8lThf+rDKy8hg=="
            })),
        ]),
    )
    .await;

        // The management GET shows none of it.
        let got = r.get(&creds_path("t1", "d1")).await;
        for credential in got.body.as_array().expect("array") {
            let secret = &credential["secrets"][0];
            for field in ["pwd-hash", "salt", "hash-function"] {
                assert!(secret.get(field).is_none(), "GET leaks {field}: {secret:?}");
            }
        }

        let now = Utc::now();
        for (auth_id, right, wrong) in [
            (
                "u256",
                sha256_msg.1,
                "cdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopQ",
            ),
            ("u512", sha512_msg.1, "bcdefghi"),
            ("udefault", default_msg.1, "abc"),
            ("unsalted", "password", "Password"),
        ] {
            let (device, credential) = found(&r, "t1", "hashed-password", auth_id).await;
            assert_eq!(device, "d1");
            assert!(
                credential.verify_password(right, now),
                "{auth_id}: the right password is refused"
            );
            assert!(
                !credential.verify_password(wrong, now),
                "{auth_id}: a wrong password is accepted"
            );
        }
        // Salt and hash-function travel to the adapter as they were stored.
        let a = lookup(&r, "t1", "hashed-password", "u512").await;
        assert_eq!(a.body["secrets"][0]["hash-function"], "sha-512");
        assert_eq!(a.body["secrets"][0]["salt"], b64(b"abcdefgh"));
    }
);

both!(pre_hashed_bcrypt_secrets_verify, |r| async move {
    // bcrypt hashes made by other tools (neither this registry nor Rust's bcrypt crate): an online tool
    // and node.js, as collected in the bcrypt crate's own test suite.
    let online = (
        "$2a$04$UuTkLRZZ6QofpDOlMz32MuuxEHA43WOemOYHPz6.SjsVsyO1tDU96",
        "password",
    );
    let node = (
        "$2a$04$n4Uy0eSnMfvnESYL.bLwuuj0U/ETSsoTpRT9GVk5bektyVVa5xnIi",
        "correctbatteryhorsestapler",
    );

    r.tenant("t1", json!({})).await;
    r.device("t1", "d1", json!({})).await;
    r.device("t1", "d2", json!({})).await;
    r.credentials(
        "t1",
        "d1",
        json!([
            password(
                "online",
                json!({ "hash-function": "bcrypt", "pwd-hash": online.0 })
            ),
            password(
                "node",
                json!({ "hash-function": "bcrypt", "pwd-hash": node.0 })
            ),
            password("plain", json!({ "pwd-plain": "from the registry" })),
        ]),
    )
    .await;
    // A hash the registry made from pwd-plain, moved to another device as a pre-hashed secret.
    let made = lookup(&r, "t1", "hashed-password", "plain").await;
    let made_hash = made.body["secrets"][0]["pwd-hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    r.credentials(
        "t1",
        "d2",
        json!([password(
            "copied",
            json!({ "hash-function": "bcrypt", "pwd-hash": made_hash })
        )]),
    )
    .await;

    let now = Utc::now();
    for (auth_id, right) in [
        ("online", online.1),
        ("node", node.1),
        ("plain", "from the registry"),
        ("copied", "from the registry"),
    ] {
        let (_, credential) = found(&r, "t1", "hashed-password", auth_id).await;
        assert!(
            credential.verify_password(right, now),
            "{auth_id}: the right password is refused"
        );
        assert!(
            !credential.verify_password("wrong", now),
            "{auth_id}: a wrong password is accepted"
        );
        assert!(
            !credential.verify_password(&format!("{right} "), now),
            "{auth_id}: a near miss is accepted"
        );
    }
    assert_eq!(found(&r, "t1", "hashed-password", "copied").await.0, "d2");
    assert_eq!(
        lookup(&r, "t1", "hashed-password", "online").await.body["secrets"][0]["pwd-hash"],
        online.0
    );
});

both!(psk_key_and_x509_subject_dn_are_found, |r| async move {
    r.tenant("t1", json!({})).await;
    r.device("t1", "d1", json!({})).await;
    let dn = "CN=Device 1,OU=Sensors + Actors,O=ACME Corp.,C=DE";
    r.credentials(
        "t1",
        "d1",
        json!([
            { "type": "psk", "auth-id": "psk-identity-1", "secrets": [{ "key": b64(b"a shared key") }] },
            { "type": "x509-cert", "auth-id": dn, "secrets": [{}] },
        ]),
    )
    .await;

    let got = r.get(&creds_path("t1", "d1")).await;
    assert_eq!(got.body[0]["type"], "psk");
    assert!(
        got.body[0]["secrets"][0].get("key").is_none(),
        "GET leaks the key: {:?}",
        got.body
    );
    assert_eq!(got.body[1]["auth-id"], dn);

    let (device, psk) = found(&r, "t1", "psk", "psk-identity-1").await;
    assert_eq!(device, "d1");
    assert_eq!(
        psk.psk_key(Utc::now()).as_deref(),
        Some(&b"a shared key"[..])
    );
    assert!(
        !psk.verify_password("a shared key", Utc::now()),
        "a psk is not a password"
    );

    let (device, cert) = found(&r, "t1", "x509-cert", dn).await;
    assert_eq!(device, "d1");
    assert_eq!(cert.type_name(), "x509-cert");
    assert_eq!(cert.auth_id().as_str(), dn);
    // A DN that differs only slightly is another auth-id.
    let other = lookup(
        &r,
        "t1",
        "x509-cert",
        "CN=Device 1,OU=Sensors + Actors,O=ACME Corp.,C=FR",
    )
    .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
});

both!(
    secrets_outside_their_window_or_disabled_do_not_verify,
    |r| async move {
        r.tenant("t1", json!({})).await;
        r.device("t1", "d1", json!({})).await;
        let now = Utc::now();
        let hour = Duration::hours(1);
        r.credentials(
        "t1",
        "d1",
        json!([
            password("current", json!({ "pwd-plain": "pw", "not-before": (now - hour).to_rfc3339(), "not-after": (now + hour).to_rfc3339() })),
            password("expired", json!({ "pwd-plain": "pw", "not-before": "2000-01-01T00:00:00Z", "not-after": "2001-01-01T00:00:00Z" })),
            password("future", json!({ "pwd-plain": "pw", "not-before": "2999-01-01T00:00:00Z", "not-after": null })),
            password("disabled-secret", json!({ "pwd-plain": "pw", "enabled": false })),
            { "type": "hashed-password", "auth-id": "disabled-credential", "enabled": false, "secrets": [{ "pwd-plain": "pw" }] },
            { "type": "psk", "auth-id": "disabled-psk", "enabled": false, "secrets": [{ "key": b64(b"k") }] },
        ]),
    )
    .await;

        let (_, current) = found(&r, "t1", "hashed-password", "current").await;
        assert!(current.verify_password("pw", now));

        let (_, expired) = found(&r, "t1", "hashed-password", "expired").await;
        assert!(!expired.verify_password("pw", now), "the window has passed");
        assert!(
            expired.verify_password("pw", at("2000-06-01T00:00:00Z")),
            "inside the window it is the right password"
        );

        let (_, future) = found(&r, "t1", "hashed-password", "future").await;
        assert!(
            !future.verify_password("pw", now),
            "the window has not begun"
        );
        assert!(future.verify_password(
            "pw",
            Utc.with_ymd_and_hms(3000, 1, 1, 0, 0, 0)
                .single()
                .expect("date")
        ));

        for auth_id in ["disabled-secret", "disabled-credential"] {
            let (_, credential) = found(&r, "t1", "hashed-password", auth_id).await;
            assert!(!credential.verify_password("pw", now), "{auth_id} verifies");
        }
        let (_, psk) = found(&r, "t1", "psk", "disabled-psk").await;
        assert_eq!(psk.psk_key(now), None);

        // The window comes back from the management GET as it was set.
        let got = r.get(&creds_path("t1", "d1")).await;
        let expired = got
            .body
            .as_array()
            .expect("array")
            .iter()
            .find(|c| c["auth-id"] == "expired")
            .expect("expired");
        assert_eq!(
            at(expired["secrets"][0]["not-after"]
                .as_str()
                .expect("not-after")),
            at("2001-01-01T00:00:00Z")
        );
        let disabled = got
            .body
            .as_array()
            .expect("array")
            .iter()
            .find(|c| c["auth-id"] == "disabled-credential")
            .expect("it");
        assert_eq!(disabled["enabled"], false);
    }
);

both!(an_inverted_validity_window_is_400, |r| async move {
    r.tenant("t1", json!({})).await;
    r.device("t1", "d1", json!({})).await;
    let a = r
        .put(
            &creds_path("t1", "d1"),
            &json!([password("a1", json!({ "pwd-plain": "pw", "not-before": "2030-01-01T00:00:00Z", "not-after": "2020-01-01T00:00:00Z" }))]),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
    assert!(a.error().contains("not-before"), "{}", a.error());
});

both!(patch_mode_keeps_adds_and_deletes_secrets, |r| async move {
    r.tenant("t1", json!({})).await;
    r.device("t1", "d1", json!({})).await;
    r.credentials(
        "t1",
        "d1",
        json!([
            password("a1", json!({ "pwd-plain": "old-password" })),
            { "type": "psk", "auth-id": "k1", "secrets": [{ "key": b64(b"psk") }] },
        ]),
    )
    .await;

    // What the GET returns, with changed metadata, goes back without any secret data.
    let got = r.get(&creds_path("t1", "d1")).await;
    let pw_id = got.body[0]["secrets"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let psk_id = got.body[1]["secrets"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    r.credentials(
        "t1",
        "d1",
        json!([
            password("a1", json!({ "id": pw_id, "comment": "rotate in May" })),
            { "type": "psk", "auth-id": "k1", "secrets": [{ "id": psk_id }] },
        ]),
    )
    .await;
    let (_, a1) = found(&r, "t1", "hashed-password", "a1").await;
    assert!(
        a1.verify_password("old-password", Utc::now()),
        "the stored password was kept"
    );
    let (_, k1) = found(&r, "t1", "psk", "k1").await;
    assert_eq!(
        k1.psk_key(Utc::now()).as_deref(),
        Some(&b"psk"[..]),
        "the stored key was kept"
    );
    let got = r.get(&creds_path("t1", "d1")).await;
    assert_eq!(got.body[0]["secrets"][0]["comment"], "rotate in May");
    assert_eq!(
        got.body[0]["secrets"][0]["id"],
        pw_id.as_str(),
        "the secret keeps its id"
    );

    // An id the credential does not have is refused, and changes nothing.
    let version = got.etag();
    let unknown = r
        .put(
            &creds_path("t1", "d1"),
            &json!([password("a1", json!({ "id": "no-such-secret" }))]),
        )
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        unknown.body
    );
    assert!(
        unknown.error().contains("no-such-secret"),
        "{}",
        unknown.error()
    );
    assert_eq!(r.get(&creds_path("t1", "d1")).await.etag(), version);
    assert_eq!(lookup(&r, "t1", "psk", "k1").await.status, StatusCode::OK);

    // A secret without id is added beside the kept one; the psk credential left out is deleted.
    r.credentials(
        "t1",
        "d1",
        json!([{ "type": "hashed-password", "auth-id": "a1", "secrets": [{ "id": pw_id }, { "pwd-plain": "new-password" }] }]),
    )
    .await;
    let (_, a1) = found(&r, "t1", "hashed-password", "a1").await;
    assert_eq!(a1.secret_count(), 2);
    assert!(a1.verify_password("old-password", Utc::now()));
    assert!(a1.verify_password("new-password", Utc::now()));
    let got = r.get(&creds_path("t1", "d1")).await;
    assert_eq!(
        got.body.as_array().expect("array").len(),
        1,
        "{:?}",
        got.body
    );
    let ids: Vec<&str> = got.body[0]["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], pw_id);
    assert_ne!(ids[1], pw_id, "the new secret has an id of its own");
    assert_eq!(
        lookup(&r, "t1", "psk", "k1").await.status,
        StatusCode::NOT_FOUND
    );

    // Dropping the old secret's entry deletes it.
    let new_id = ids[1].to_owned();
    r.credentials("t1", "d1", json!([password("a1", json!({ "id": new_id }))]))
        .await;
    let (_, a1) = found(&r, "t1", "hashed-password", "a1").await;
    assert!(!a1.verify_password("old-password", Utc::now()));
    assert!(a1.verify_password("new-password", Utc::now()));
});

both!(
    auth_id_is_unique_per_type_within_a_tenant_only,
    |r| async move {
        r.tenant("t1", json!({})).await;
        r.tenant("t2", json!({})).await;
        r.device("t1", "d1", json!({})).await;
        r.device("t1", "d2", json!({})).await;
        r.device("t2", "d9", json!({})).await;
        let mine = json!([password("shared", json!({ "pwd-plain": "pw-of-t1" }))]);
        r.credentials("t1", "d1", mine.clone()).await;
        // Writing the same set again to the same device is no conflict.
        r.credentials("t1", "d1", mine.clone()).await;

        let taken = r.put(&creds_path("t1", "d2"), &mine).await;
        assert_eq!(taken.status, StatusCode::CONFLICT, "{:?}", taken.body);
        assert!(taken.error().contains("shared"), "{}", taken.error());
        assert_eq!(
            r.get(&creds_path("t1", "d2")).await.body,
            json!([]),
            "nothing was stored"
        );
        assert_eq!(found(&r, "t1", "hashed-password", "shared").await.0, "d1");

        // The same auth-id with another type is another credential.
        r.credentials(
            "t1",
            "d2",
            json!([{ "type": "psk", "auth-id": "shared", "secrets": [{ "key": b64(b"k") }] }]),
        )
        .await;
        assert_eq!(found(&r, "t1", "psk", "shared").await.0, "d2");

        // Another tenant may use the same auth-id, and each tenant's lookup finds only its own device.
        r.credentials(
            "t2",
            "d9",
            json!([password("shared", json!({ "pwd-plain": "pw-of-t2" }))]),
        )
        .await;
        let now = Utc::now();
        let (device, in_t1) = found(&r, "t1", "hashed-password", "shared").await;
        assert_eq!(device, "d1");
        assert!(in_t1.verify_password("pw-of-t1", now));
        assert!(!in_t1.verify_password("pw-of-t2", now));
        let (device, in_t2) = found(&r, "t2", "hashed-password", "shared").await;
        assert_eq!(device, "d9");
        assert!(in_t2.verify_password("pw-of-t2", now));
        assert!(!in_t2.verify_password("pw-of-t1", now));
        assert_eq!(
            lookup(&r, "t2", "psk", "shared").await.status,
            StatusCode::NOT_FOUND
        );

        // Once d1 gives the auth-id up, d2 can have it.
        r.credentials("t1", "d1", json!([])).await;
        r.credentials(
            "t1",
            "d2",
            json!([password("shared", json!({ "pwd-plain": "pw" }))]),
        )
        .await;
        assert_eq!(found(&r, "t1", "hashed-password", "shared").await.0, "d2");
    }
);

both!(credentials_honour_if_match, |r| async move {
    r.tenant("t1", json!({})).await;
    r.device("t1", "d1", json!({})).await;
    let v0 = r.get(&creds_path("t1", "d1")).await.etag();
    let body = json!([password("a1", json!({ "pwd-plain": "first" }))]);
    let first = r.put_if(&creds_path("t1", "d1"), &body, &v0).await;
    assert_eq!(first.status, StatusCode::NO_CONTENT, "{:?}", first.body);
    let v1 = first.etag();
    assert_ne!(v0, v1, "a write changes the version");

    let stale = r
        .put_if(
            &creds_path("t1", "d1"),
            &json!([password("a1", json!({ "pwd-plain": "second" }))]),
            &v0,
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert!(!stale.error().is_empty());
    let (_, a1) = found(&r, "t1", "hashed-password", "a1").await;
    assert!(
        a1.verify_password("first", Utc::now()),
        "the refused write changed nothing"
    );
    assert_eq!(r.get(&creds_path("t1", "d1")).await.etag(), v1);

    let current = r
        .put_if(
            &creds_path("t1", "d1"),
            &json!([password("a1", json!({ "pwd-plain": "second" }))]),
            &v1,
        )
        .await;
    assert_eq!(current.status, StatusCode::NO_CONTENT);
    let (_, a1) = found(&r, "t1", "hashed-password", "a1").await;
    assert!(a1.verify_password("second", Utc::now()));
});

both!(
    invalid_credentials_are_400_and_change_nothing,
    |r| async move {
        r.tenant("t1", json!({})).await;
        r.device("t1", "d1", json!({})).await;
        r.credentials(
            "t1",
            "d1",
            json!([password("keep", json!({ "pwd-plain": "pw" }))]),
        )
        .await;
        let version = r.get(&creds_path("t1", "d1")).await.etag();
        let cases = [
            (
                "unknown type",
                json!([{ "type": "retina-scan", "auth-id": "a1", "secrets": [{}] }]),
            ),
            (
                "no secrets",
                json!([{ "type": "hashed-password", "auth-id": "a1", "secrets": [] }]),
            ),
            (
                "plain and hash",
                json!([password(
                    "a1",
                    json!({ "pwd-plain": "pw", "pwd-hash": b64(&[0; 32]) })
                )]),
            ),
            (
                "unknown secret field",
                json!([password(
                    "a1",
                    json!({ "pwd-plain": "pw", "colour": "red" })
                )]),
            ),
            (
                "unknown credential field",
                json!([{ "type": "psk", "auth-id": "a1", "colour": "red", "secrets": [{ "key": "AQID" }] }]),
            ),
            (
                "no type",
                json!([{ "auth-id": "a1", "secrets": [{ "pwd-plain": "pw" }] }]),
            ),
            (
                "empty auth-id",
                json!([password("", json!({ "pwd-plain": "pw" }))]),
            ),
            (
                "secret without data",
                json!([password("a1", json!({ "comment": "nothing else" }))]),
            ),
            (
                "sha-256 of the wrong length",
                json!([password(
                    "a1",
                    json!({ "hash-function": "sha-256", "pwd-hash": b64(&[0; 20]) })
                )]),
            ),
            (
                "hash not base64",
                json!([password(
                    "a1",
                    json!({ "hash-function": "sha-512", "pwd-hash": "***" })
                )]),
            ),
            (
                "unknown hash function",
                json!([password(
                    "a1",
                    json!({ "hash-function": "md5", "pwd-hash": b64(&[0; 16]) })
                )]),
            ),
            (
                "bcrypt cost above the maximum of 10",
                json!([password(
                    "a1",
                    json!({ "hash-function": "bcrypt", "pwd-hash": "$2a$12$......................21jzCB1r6pN6rp5O2Ev0ejjTAboskKm" })
                )]),
            ),
            (
                "psk key not base64",
                json!([{ "type": "psk", "auth-id": "a1", "secrets": [{ "key": "not base64!" }] }]),
            ),
            (
                "duplicate (type, auth-id)",
                json!([
                    password("a1", json!({ "pwd-plain": "pw" })),
                    password("a1", json!({ "pwd-plain": "pw2" }))
                ]),
            ),
            (
                "not an array",
                json!({ "type": "psk", "auth-id": "a1", "secrets": [{ "key": "AQID" }] }),
            ),
        ];
        for (what, body) in cases {
            let a = r.put(&creds_path("t1", "d1"), &body).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{what}: {:?}", a.body);
            assert!(!a.error().is_empty(), "{what}");
        }
        assert_eq!(
            r.get(&creds_path("t1", "d1")).await.etag(),
            version,
            "nothing was stored"
        );
        assert_eq!(found(&r, "t1", "hashed-password", "keep").await.0, "d1");
        assert_eq!(
            lookup(&r, "t1", "hashed-password", "a1").await.status,
            StatusCode::NOT_FOUND
        );
    }
);

both!(
    credentials_of_unknown_devices_and_tenants_are_404,
    |r| async move {
        r.tenant("t1", json!({})).await;
        let body = json!([password("a1", json!({ "pwd-plain": "pw" }))]);
        let a = r.put(&creds_path("t1", "nope"), &body).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{:?}", a.body);
        assert!(!a.error().is_empty());
        assert_eq!(
            r.get(&creds_path("t1", "nope")).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            r.put(&creds_path("nope", "d1"), &body).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            r.get(&creds_path("nope", "d1")).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            lookup(&r, "t1", "hashed-password", "a1").await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            lookup(&r, "nope", "hashed-password", "a1").await.status,
            StatusCode::NOT_FOUND
        );
    }
);

both!(
    internal_lookup_needs_type_auth_id_and_token,
    |r| async move {
        r.tenant("t1", json!({})).await;
        let no_type = r
            .internal(Method::GET, "/credentials/t1?auth-id=a1", None)
            .await;
        assert_eq!(no_type.status, StatusCode::BAD_REQUEST);
        let no_auth_id = r
            .internal(Method::GET, "/credentials/t1?type=psk", None)
            .await;
        assert_eq!(no_auth_id.status, StatusCode::BAD_REQUEST);
        let bad_tenant = r
            .internal(Method::GET, "/credentials/a%20b?type=psk&auth-id=a1", None)
            .await;
        assert_eq!(bad_tenant.status, StatusCode::BAD_REQUEST);
        let no_token = r
            .call_with(
                Method::GET,
                "/internal/v1/credentials/t1?type=psk&auth-id=a1",
                None,
                None,
                None,
            )
            .await;
        assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    }
);

both!(
    registration_limit_on_credentials_per_device_is_403,
    |r| async move {
        r.tenant(
            "t1",
            json!({ "registration-limits": { "max-credentials-per-device": 2 } }),
        )
        .await;
        r.device("t1", "d1", json!({})).await;
        let three = json!([
            password("a1", json!({ "pwd-plain": "pw" })),
            password("a2", json!({ "pwd-plain": "pw" })),
            { "type": "psk", "auth-id": "a3", "secrets": [{ "key": "AQID" }] },
        ]);
        let a = r.put(&creds_path("t1", "d1"), &three).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{:?}", a.body);
        assert!(!a.error().is_empty());
        assert_eq!(
            r.get(&creds_path("t1", "d1")).await.body,
            json!([]),
            "nothing was stored"
        );
        // At the limit is fine; several secrets of one credential count once.
        r.credentials(
        "t1",
        "d1",
        json!([
            { "type": "hashed-password", "auth-id": "a1", "secrets": [{ "pwd-plain": "pw" }, { "pwd-plain": "pw2" }] },
            { "type": "psk", "auth-id": "a3", "secrets": [{ "key": "AQID" }] },
        ]),
    )
    .await;
    }
);

/// Six writers PUT different credentials with the same `If-Match`, ten times over: each time exactly one
/// may win, the others must get 412, and an auth-id that lost must stay free for other devices.
async fn concurrent_if_match_writes(r: Registry) {
    r.tenant("t1", json!({})).await;
    r.device("t1", "d1", json!({})).await;
    r.device("t1", "other", json!({})).await;
    let path = creds_path("t1", "d1");
    let psk = |auth_id: &str| json!([{ "type": "psk", "auth-id": auth_id, "secrets": [{ "key": "AQID" }] }]);
    for round in 0..10 {
        let version = r.get(&path).await.etag();
        let auth_ids: Vec<String> = (0..6).map(|i| format!("r{round}-k{i}")).collect();
        let bodies: Vec<Value> = auth_ids.iter().map(|a| psk(a)).collect();
        let answers =
            futures_util::future::join_all(bodies.iter().map(|b| r.put_if(&path, b, &version)))
                .await;
        let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
        let winners = statuses.iter().filter(|s| **s == 204).count();
        let refused = statuses.iter().filter(|s| **s == 412).count();
        assert_eq!(
            (winners, refused),
            (1, 5),
            "round {round}: one write wins, the rest are 412: {statuses:?}"
        );

        let kept = r.get(&path).await.body[0]["auth-id"]
            .as_str()
            .expect("auth-id")
            .to_owned();
        for auth_id in auth_ids.iter().filter(|a| **a != kept) {
            let lookup = lookup(&r, "t1", "psk", auth_id).await;
            assert_eq!(
                lookup.status,
                StatusCode::NOT_FOUND,
                "round {round}: {auth_id} lost"
            );
            let claim = r.put(&creds_path("t1", "other"), &psk(auth_id)).await;
            assert_eq!(
                claim.status,
                StatusCode::NO_CONTENT,
                "round {round}: {auth_id} is not stored but still reserved: {:?}",
                claim.body
            );
        }
    }
}

both!(concurrent_if_match_writes_let_exactly_one_win, |r| {
    concurrent_if_match_writes(r)
});

/// Six devices write their credentials at once, twice: first each its own auth-id, then all the same one.
async fn concurrent_writes_of_several_devices(r: Registry) {
    r.tenant("t1", json!({})).await;
    let devices: Vec<String> = (0..6).map(|d| format!("d{d}")).collect();
    for d in &devices {
        r.device("t1", d, json!({})).await;
    }
    let paths: Vec<String> = devices.iter().map(|d| creds_path("t1", d)).collect();
    let own: Vec<Value> = devices
        .iter()
        .map(|d| {
            json!([password(
                &format!("{d}-login"),
                json!({ "pwd-plain": "pw" })
            )])
        })
        .collect();
    let answers =
        futures_util::future::join_all(paths.iter().zip(&own).map(|(p, b)| r.put(p, b))).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert_eq!(
        statuses,
        [204; 6],
        "independent writes all succeed: {:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );

    let same = json!([{ "type": "psk", "auth-id": "contested", "secrets": [{ "key": "AQID" }] }]);
    let answers = futures_util::future::join_all(paths.iter().map(|p| r.put(p, &same))).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    let winners = statuses.iter().filter(|s| **s == 204).count();
    let conflicts = statuses.iter().filter(|s| **s == 409).count();
    assert_eq!(
        (winners, conflicts),
        (1, 5),
        "one device gets the auth-id, the others 409: {statuses:?}"
    );
    let winner = &devices[statuses.iter().position(|s| *s == 204).expect("a winner")];
    assert_eq!(&found(&r, "t1", "psk", "contested").await.0, winner);
}

both!(
    concurrent_writes_of_several_devices_succeed_or_conflict,
    |r| concurrent_writes_of_several_devices(r)
);
