use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Sha256, Sha512};

use super::*;
use crate::hashing::salted_digest;

fn opts() -> HashOptions {
    HashOptions {
        bcrypt_cost: 4,
        max_bcrypt_cost: 10,
        ..HashOptions::default()
    }
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("RFC 3339 timestamp")
}

fn now() -> DateTime<Utc> {
    at("2024-06-01T12:00:00Z")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn creds(value: Value) -> Vec<Credential> {
    serde_json::from_value(value).expect("valid credentials body")
}

fn one(value: Value) -> Credential {
    serde_json::from_value(value).expect("valid credential")
}

fn invalid(value: Value) -> String {
    validate_credentials(&creds(value), &opts())
        .expect_err("should be invalid")
        .0
}

fn sha256_secret(salt: &[u8], password: &str) -> Value {
    json!({"hash-function": "sha-256", "salt": b64(salt), "pwd-hash": b64(&salted_digest::<Sha256>(salt, password))})
}

fn bcrypt_of(password: &str) -> String {
    crate::hashing::bcrypt_hash(password, &opts()).expect("hashing works")
}

fn password_credential(secrets: Value) -> Credential {
    one(json!({"type": "hashed-password", "auth-id": "sensor1", "secrets": secrets}))
}

#[test]
fn hono_example_bodies_round_trip() {
    // Hono's documented "set pre-hashed password" and "change password" PUT bodies.
    let set = json!([{
        "auth-id": "sensor1",
        "type": "hashed-password",
        "secrets": [{
            "pwd-hash": "AQIDBAUGBwg=",
            "salt": "Mq7wFw==",
            "hash-function": "sha-512",
            "not-after": "2027-12-24T19:00:00Z"
        }]
    }]);
    let parsed = creds(set.clone());
    let written = serde_json::to_value(&parsed).expect("serializes");
    // The writer adds the defaults it applied.
    assert_eq!(written[0]["enabled"], json!(true));
    assert_eq!(written[0]["secrets"][0]["enabled"], json!(true));
    assert_eq!(written[0]["secrets"][0]["hash-function"], json!("sha-512"));
    assert_eq!(creds(written), parsed);

    let change = json!([{
        "auth-id": "sensor1",
        "type": "hashed-password",
        "secrets": [{
            "id": "349556ea-4902-47c7-beb0-1009ab693fb4",
            "pwd-plain": "newpassword",
            "not-after": "2027-12-24T19:00:00Z"
        }]
    }]);
    let parsed = creds(change);
    let Credential::HashedPassword(c) = &parsed[0] else {
        panic!("wrong type")
    };
    assert_eq!(
        c.secrets[0].id.as_deref(),
        Some("349556ea-4902-47c7-beb0-1009ab693fb4")
    );
    assert_eq!(c.secrets[0].data.pwd_plain.as_deref(), Some("newpassword"));
}

#[test]
fn every_type_parses_and_round_trips() {
    let body = json!([
        {"type": "psk", "auth-id": "psk-id", "secrets": [{"key": b64(b"shared"), "comment": "v1"}]},
        {"type": "x509-cert", "auth-id": "CN=Device 1,O=ACME Corporation", "secrets": [{}]},
        {"type": "rpk", "auth-id": "jwt-dev", "enabled": false, "ext": {"x": 1},
         "secrets": [{"key": "AAEC", "algorithm": "EC", "not-before": "2024-01-01T00:00:00Z"}]}
    ]);
    let parsed = creds(body);
    validate_credentials(&parsed, &opts()).expect("valid set");
    assert_eq!(
        parsed.iter().map(Credential::type_name).collect::<Vec<_>>(),
        ["psk", "x509-cert", "rpk"]
    );
    assert!(!parsed[2].is_enabled());
    assert_eq!(parsed[2].ext()["x"], json!(1));
    assert_eq!(
        parsed[1].auth_id().as_str(),
        "CN=Device 1,O=ACME Corporation"
    );
    let written = serde_json::to_value(&parsed).expect("serializes");
    assert_eq!(written[1]["secrets"], json!([{"enabled": true}]));
    assert_eq!(creds(written), parsed);
}

#[test]
fn unknown_types_fields_and_values_are_rejected() {
    let parse = |v: Value| serde_json::from_value::<Credential>(v);
    let err =
        parse(json!({"type": "token", "auth-id": "a", "secrets": [{}]})).expect_err("unknown type");
    assert!(err.to_string().contains("token"), "{err}");
    assert!(parse(json!({"auth-id": "a", "secrets": [{}]})).is_err());
    assert!(parse(
        json!({"type": "psk", "auth-id": "a", "secrets": [{"key": "AA=="}], "device": 1})
    )
    .is_err());
    assert!(parse(
        json!({"type": "psk", "auth-id": "a", "secrets": [{"key": "AA==", "pwd-hash": "x"}]})
    )
    .is_err());
    assert!(parse(json!({"type": "hashed-password", "auth-id": "a",
        "secrets": [{"pwd-hash": "x", "hash-function": "md5"}]}))
    .is_err());
    assert!(
        parse(json!({"type": "x509-cert", "auth-id": "a", "secrets": [{"key": "AA=="}]})).is_err()
    );
    assert!(parse(json!({"type": "psk", "auth-id": "", "secrets": [{"key": "AA=="}]})).is_err());
}

#[test]
fn type_and_auth_id_are_unique_within_a_set() {
    let err = invalid(json!([
        {"type": "psk", "auth-id": "a", "secrets": [{"key": "AA=="}]},
        {"type": "hashed-password", "auth-id": "a", "secrets": [{"pwd-plain": "x"}]},
        {"type": "psk", "auth-id": "a", "secrets": [{"key": "AQ=="}]}
    ]));
    assert_eq!(
        err,
        "credentials[2]: duplicates credentials[0]: type psk with auth-id `a` may appear once"
    );
}

#[test]
fn secret_rules_name_the_field() {
    let cases = [
        (json!([{"type": "psk", "auth-id": "a", "secrets": []}]), "credentials[0].secrets: at least one secret is required"),
        (
            json!([{"type": "hashed-password", "auth-id": "a", "secrets": [{"pwd-plain": "x"}, {"pwd-plain": "x", "pwd-hash": "y"}]}]),
            "credentials[0].secrets[1]: pwd-plain and pwd-hash are exclusive",
        ),
        (
            json!([{"type": "hashed-password", "auth-id": "a", "secrets": [{"comment": "nothing"}]}]),
            "credentials[0].secrets[0]: a new secret needs pwd-plain or pwd-hash (or the id of a stored secret to keep)",
        ),
        (
            json!([{"type": "hashed-password", "auth-id": "a", "secrets": [{"id": "s1", "salt": "AA=="}]}]),
            "credentials[0].secrets[0]: salt and hash-function describe a pwd-hash; send them with one or not at all",
        ),
        (
            json!([{"type": "hashed-password", "auth-id": "a", "secrets": [{"pwd-plain": ""}]}]),
            "credentials[0].secrets[0].pwd-plain: must not be empty",
        ),
        (
            json!([{"type": "psk", "auth-id": "a", "secrets": [{"key": "***"}]}]),
            "credentials[0].secrets[0].key: is not valid base64 (standard alphabet, padded)",
        ),
        (
            json!([{"type": "psk", "auth-id": "a", "secrets": [{"id": "x", "key": "AA=="}, {"id": "x", "key": "AA=="}]}]),
            "credentials[0].secrets[1].id: `x` is used by another secret of this credential",
        ),
        (
            json!([{"type": "rpk", "auth-id": "a", "secrets": [{"key": "AA==", "cert": "AA=="}]}]),
            "credentials[0].secrets[0]: key and cert are exclusive",
        ),
        (
            json!([{"type": "rpk", "auth-id": "a", "secrets": [{"algorithm": "EC"}]}]),
            "credentials[0].secrets[0]: a new secret needs a key or a cert (or the id of a stored secret to keep)",
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(invalid(body), expected);
    }
    let long = "x".repeat(73);
    assert!(invalid(
        json!([{"type": "hashed-password", "auth-id": "a", "secrets": [{"pwd-plain": long}]}])
    )
    .contains("longer than 72 bytes"));
}

#[test]
fn validity_window_must_not_be_inverted() {
    let err = invalid(json!([{"type": "psk", "auth-id": "a", "secrets": [{
        "key": "AA==", "not-before": "2025-01-01T00:00:00Z", "not-after": "2025-01-01T00:00:00Z"}]}]));
    assert!(
        err.starts_with("credentials[0].secrets[0]: not-before"),
        "{err}"
    );
}

#[test]
fn pre_hashed_passwords_are_checked() {
    let bad_prefix = bcrypt_of("pw").replacen("$2a$", "$2x$", 1);
    let err = invalid(json!([{"type": "hashed-password", "auth-id": "a",
        "secrets": [{"hash-function": "bcrypt", "pwd-hash": bad_prefix}]}]));
    assert!(
        err.starts_with("credentials[0].secrets[0].pwd-hash: is not a bcrypt hash"),
        "{err}"
    );

    let costly = bcrypt::hash_with_result("pw", 4)
        .expect("hash")
        .format_for_version(bcrypt::Version::TwoB)
        .replacen("$04$", "$12$", 1);
    let err = invalid(json!([{"type": "hashed-password", "auth-id": "a",
        "secrets": [{"hash-function": "bcrypt", "pwd-hash": costly}]}]));
    assert_eq!(
        err,
        "credentials[0].secrets[0].pwd-hash: bcrypt cost 12 exceeds the maximum of 10"
    );

    let err = invalid(json!([{"type": "hashed-password", "auth-id": "a",
        "secrets": [{"hash-function": "bcrypt", "pwd-hash": bcrypt_of("pw"), "salt": "AA=="}]}]));
    assert!(
        err.starts_with("credentials[0].secrets[0].salt: must be absent for bcrypt"),
        "{err}"
    );

    // Hono's documentation example carries an 8-byte placeholder where a SHA-512 digest belongs.
    let err = invalid(json!([{"type": "hashed-password", "auth-id": "a",
        "secrets": [{"hash-function": "sha-512", "pwd-hash": "AQIDBAUGBwg=", "salt": "Mq7wFw=="}]}]));
    assert_eq!(
        err,
        "credentials[0].secrets[0].pwd-hash: decodes to 8 bytes, but a sha-512 digest has 64"
    );

    let mut secret = sha256_secret(b"salt", "pw");
    secret["salt"] = json!("??");
    let err = invalid(json!([{"type": "hashed-password", "auth-id": "a", "secrets": [secret]}]));
    assert!(
        err.starts_with("credentials[0].secrets[0].salt: is not valid base64"),
        "{err}"
    );

    let restricted = HashOptions {
        allowed_hash_functions: vec![HashFunction::Bcrypt],
        ..opts()
    };
    let set = creds(
        json!([{"type": "hashed-password", "auth-id": "a", "secrets": [sha256_secret(b"s", "pw")]}]),
    );
    let err = validate_credentials(&set, &restricted)
        .expect_err("not allowed")
        .0;
    assert_eq!(
        err,
        "credentials[0].secrets[0].hash-function: sha-256 is not allowed here; use one of: bcrypt"
    );

    for version in [
        bcrypt::Version::TwoA,
        bcrypt::Version::TwoB,
        bcrypt::Version::TwoY,
    ] {
        let hash = bcrypt::hash_with_result("pw", 4)
            .expect("hash")
            .format_for_version(version);
        validate_credentials(
            &creds(json!([{"type": "hashed-password", "auth-id": "a",
                "secrets": [{"hash-function": "bcrypt", "pwd-hash": hash}]}])),
            &opts(),
        )
        .expect("bcrypt variants accepted");
    }
}

#[test]
fn sha_passwords_verify_with_salt() {
    let c = password_credential(json!([sha256_secret(b"\x00\x01salt", "secret")]));
    assert!(c.verify_password("secret", now()));
    assert!(!c.verify_password("Secret", now()));
    assert!(!c.verify_password("", now()));

    let salt = b"pepper";
    let c = password_credential(json!([{"hash-function": "sha-512", "salt": b64(salt),
        "pwd-hash": b64(&salted_digest::<Sha512>(salt, "secret"))}]));
    assert!(c.verify_password("secret", now()));
    assert!(!c.verify_password("secret2", now()));

    // No hash-function means sha-256; no salt means an empty one.
    let c =
        password_credential(json!([{"pwd-hash": b64(&salted_digest::<Sha256>(b"", "secret"))}]));
    assert!(c.verify_password("secret", now()));

    // The salt matters: the same digest under another salt does not verify.
    let mut secret = sha256_secret(b"one", "secret");
    secret["salt"] = json!(b64(b"two"));
    assert!(!password_credential(json!([secret])).verify_password("secret", now()));
}

#[test]
fn bcrypt_passwords_verify_for_all_accepted_prefixes() {
    for version in [
        bcrypt::Version::TwoA,
        bcrypt::Version::TwoB,
        bcrypt::Version::TwoY,
    ] {
        let hash = bcrypt::hash_with_result("secret", 4)
            .expect("hash")
            .format_for_version(version);
        let c = password_credential(json!([{"hash-function": "bcrypt", "pwd-hash": hash}]));
        assert!(c.verify_password("secret", now()));
        assert!(!c.verify_password("wrong", now()));
    }
}

#[test]
fn malformed_stored_data_never_verifies() {
    for secret in [
        json!({"hash-function": "bcrypt", "pwd-hash": "$2a$04$garbage"}),
        json!({"hash-function": "sha-256", "pwd-hash": "not base64"}),
        json!({"hash-function": "sha-256", "pwd-hash": "AA==", "salt": "%%%"}),
        json!({"id": "metadata-only"}),
    ] {
        assert!(!password_credential(json!([secret])).verify_password("secret", now()));
    }
    let psk = one(json!({"type": "psk", "auth-id": "a", "secrets": [{"key": "@@@"}]}));
    assert_eq!(psk.psk_key(now()), None);
    assert!(!psk.verify_password("anything", now()));
}

#[test]
fn disabled_and_expired_secrets_are_skipped() {
    let good = sha256_secret(b"s", "pw");
    let with = |extra: Value| {
        let mut s = good.clone();
        if let (Some(s), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
            s.extend(extra.clone());
        }
        s
    };
    assert!(
        !password_credential(json!([with(json!({"enabled": false}))])).verify_password("pw", now())
    );
    assert!(
        !password_credential(json!([with(json!({"not-before": "2024-06-01T12:00:01Z"}))]))
            .verify_password("pw", now())
    );
    assert!(
        !password_credential(json!([with(json!({"not-after": "2024-06-01T11:59:59Z"}))]))
            .verify_password("pw", now())
    );
    // The window is inclusive at both ends, and null means unbounded.
    assert!(
        password_credential(json!([with(json!({"not-before": "2024-06-01T12:00:00Z"}))]))
            .verify_password("pw", now())
    );
    assert!(password_credential(json!([with(
        json!({"not-after": "2024-06-01T12:00:00Z", "not-before": null})
    )]))
    .verify_password("pw", now()));
    // One usable secret among unusable ones is enough (password rollover).
    assert!(
        password_credential(json!([with(json!({"enabled": false})), good.clone()]))
            .verify_password("pw", now())
    );

    let mut disabled = password_credential(json!([good]));
    if let Credential::HashedPassword(c) = &mut disabled {
        c.enabled = false;
    }
    assert!(!disabled.verify_password("pw", now()));
}

#[test]
fn psk_key_comes_from_the_first_usable_secret() {
    let c = one(json!({"type": "psk", "auth-id": "a", "secrets": [
        {"key": b64(b"old"), "not-after": "2024-01-01T00:00:00Z"},
        {"key": b64(b"off"), "enabled": false},
        {"key": b64(b"current")},
        {"key": b64(b"later")}
    ]}));
    assert_eq!(c.psk_key(now()), Some(b"current".to_vec()));
    assert_eq!(c.psk_key(at("2023-12-31T00:00:00Z")), Some(b"old".to_vec()));
    let mut disabled = c.clone();
    if let Credential::Psk(c) = &mut disabled {
        c.enabled = false;
    }
    assert_eq!(disabled.psk_key(now()), None);
    assert_eq!(
        password_credential(json!([sha256_secret(b"", "pw")])).psk_key(now()),
        None
    );
    let built = Credential::psk(AuthId::new("a").expect("auth id"), b"key");
    assert_eq!(built.psk_key(now()), Some(b"key".to_vec()));
}

#[test]
fn plain_passwords_are_hashed_and_dropped() {
    let incoming = vec![Credential::password(
        AuthId::new("sensor1").expect("auth id"),
        "hunter2",
    )];
    let stored = prepare_for_storage(incoming, &[], &opts()).expect("valid");
    let Credential::HashedPassword(c) = &stored[0] else {
        panic!("wrong type")
    };
    let secret = &c.secrets[0];
    assert_eq!(secret.data.pwd_plain, None);
    assert_eq!(secret.data.hash_function, Some(HashFunction::Bcrypt));
    assert!(secret
        .data
        .pwd_hash
        .as_deref()
        .is_some_and(|h| h.starts_with("$2a$04$")));
    let id = secret.id.as_deref().expect("id assigned");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(stored[0].verify_password("hunter2", now()));
    assert!(!serde_json::to_string(&stored)
        .expect("serializes")
        .contains("hunter2"));
}

#[test]
fn bcrypt_cost_is_capped_by_the_maximum() {
    let capped = HashOptions {
        bcrypt_cost: 12,
        max_bcrypt_cost: 4,
        ..HashOptions::default()
    };
    let incoming = vec![Credential::password(
        AuthId::new("a").expect("auth id"),
        "pw",
    )];
    let stored = prepare_for_storage(incoming, &[], &capped).expect("valid");
    let Credential::HashedPassword(c) = &stored[0] else {
        panic!("wrong type")
    };
    assert!(c.secrets[0]
        .data
        .pwd_hash
        .as_deref()
        .is_some_and(|h| h.starts_with("$2a$04$")));
}

/// A stored set with two secrets on one password credential and one PSK.
fn stored_set() -> Vec<Credential> {
    let incoming = creds(json!([
        {"type": "hashed-password", "auth-id": "sensor1", "secrets": [
            {"pwd-plain": "first", "comment": "old"},
            sha256_secret(b"s", "second")
        ]},
        {"type": "psk", "auth-id": "sensor1", "secrets": [{"key": b64(b"k")}]}
    ]));
    prepare_for_storage(incoming, &[], &opts()).expect("valid")
}

fn secret_ids(c: &Credential) -> Vec<String> {
    let value = serde_json::to_value(c).expect("serializes");
    value["secrets"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| s["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn patch_keeps_stored_data_for_known_ids_and_deletes_omitted() {
    let stored = stored_set();
    let ids = secret_ids(&stored[0]);
    // The client PUTs back the first secret by id with new metadata, adds a new one, drops the second
    // secret and the whole PSK credential.
    let incoming = creds(
        json!([{"type": "hashed-password", "auth-id": "sensor1", "secrets": [
            {"id": ids[0], "comment": "renamed", "not-after": "2030-01-01T00:00:00Z"},
            {"pwd-plain": "third"}
        ]}]),
    );
    let result = prepare_for_storage(incoming, &stored, &opts()).expect("valid patch");
    assert_eq!(result.len(), 1, "omitted psk credential is deleted");
    let Credential::HashedPassword(c) = &result[0] else {
        panic!("wrong type")
    };
    assert_eq!(c.secrets.len(), 2);
    assert_eq!(c.secrets[0].id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(c.secrets[0].comment.as_deref(), Some("renamed"));
    assert_eq!(c.secrets[0].not_after, Some(at("2030-01-01T00:00:00Z")));
    let Credential::HashedPassword(old) = &stored[0] else {
        panic!("wrong type")
    };
    assert_eq!(c.secrets[0].data, old.secrets[0].data, "stored hash kept");
    assert!(c.secrets[1]
        .id
        .as_deref()
        .is_some_and(|id| !ids.contains(&id.to_owned())));
    assert!(result[0].verify_password("first", now()));
    assert!(result[0].verify_password("third", now()));
    assert!(!result[0].verify_password("second", now()));
}

#[test]
fn patch_with_new_data_replaces_the_stored_data() {
    let stored = stored_set();
    let ids = secret_ids(&stored[0]);
    let incoming = creds(json!([{"type": "hashed-password", "auth-id": "sensor1",
        "secrets": [{"id": ids[1], "pwd-plain": "changed"}]}]));
    let result = prepare_for_storage(incoming, &stored, &opts()).expect("valid patch");
    assert_eq!(secret_ids(&result[0]), [ids[1].clone()]);
    assert!(result[0].verify_password("changed", now()));
    assert!(!result[0].verify_password("second", now()));
    let Credential::HashedPassword(c) = &result[0] else {
        panic!("wrong type")
    };
    assert_eq!(
        c.secrets[0].data.salt, None,
        "the old salt does not leak into the new hash"
    );
}

#[test]
fn patch_with_unknown_id_is_an_error() {
    let stored = stored_set();
    let incoming = creds(json!([{"type": "hashed-password", "auth-id": "sensor1",
        "secrets": [{"id": "no-such-secret"}]}]));
    let err = prepare_for_storage(incoming, &stored, &opts())
        .expect_err("unknown id")
        .0;
    assert_eq!(
        err,
        "credentials[0].secrets[0].id: `no-such-secret` is not a stored secret of this credential; omit the id to add a new secret"
    );
    // An id is only known within the same (type, auth-id): the PSK's id cannot be used for a password.
    let psk_id = secret_ids(&stored[1]).remove(0);
    let incoming = creds(
        json!([{"type": "hashed-password", "auth-id": "sensor1", "secrets": [{"id": psk_id}]}]),
    );
    assert!(prepare_for_storage(incoming, &stored, &opts()).is_err());
    let incoming = creds(json!([{"type": "psk", "auth-id": "other", "secrets": [{"id": psk_id}]}]));
    assert!(prepare_for_storage(incoming, &stored, &opts()).is_err());
}

#[test]
fn redacted_get_body_can_be_put_back_unchanged() {
    let stored = stored_set();
    let redacted = redact_all(&stored);
    let text = serde_json::to_string(&redacted).expect("serializes");
    for secret_field in ["pwd-hash", "salt", "pwd-plain", "hash-function", "\"key\""] {
        assert!(
            !text.contains(secret_field),
            "{secret_field} leaked: {text}"
        );
    }
    assert_eq!(secret_ids(&redacted[0]), secret_ids(&stored[0]));
    let Credential::HashedPassword(c) = &redacted[0] else {
        panic!("wrong type")
    };
    assert_eq!(c.secrets[0].comment.as_deref(), Some("old"));
    assert!(c.secrets[0].enabled);

    let round_tripped = creds(serde_json::from_str(&text).expect("json"));
    let result = prepare_for_storage(round_tripped, &stored, &opts()).expect("valid");
    assert_eq!(result, stored);
}

#[test]
fn rpk_patch_keeps_key_and_algorithm() {
    let stored = prepare_for_storage(
        creds(json!([{"type": "rpk", "auth-id": "a", "secrets": [{"key": "AAEC", "algorithm": "EC"}]}])),
        &[],
        &opts(),
    )
    .expect("valid");
    let redacted = stored[0].redacted();
    let written = serde_json::to_value(&redacted).expect("serializes");
    assert_eq!(written["secrets"][0].get("key"), None);
    assert_eq!(written["secrets"][0]["algorithm"], json!("EC"));
    let result = prepare_for_storage(vec![redacted], &stored, &opts()).expect("valid");
    assert_eq!(result, stored);
}

#[test]
fn internal_form_carries_device_id_and_full_secrets() {
    let stored = stored_set();
    let full = DeviceCredential {
        device_id: DeviceId::new("4711").expect("device id"),
        credential: stored[0].clone(),
    };
    let written = serde_json::to_value(&full).expect("serializes");
    assert_eq!(written["device-id"], json!("4711"));
    assert_eq!(written["type"], json!("hashed-password"));
    assert_eq!(written["auth-id"], json!("sensor1"));
    assert!(written["secrets"][0]["pwd-hash"].is_string());
    let back: DeviceCredential = serde_json::from_value(written).expect("reads back");
    assert_eq!(back, full);
    assert!(back.credential.verify_password("first", now()));
}

#[test]
fn debug_output_hides_secret_data() {
    let incoming = Credential::password(AuthId::new("a").expect("auth id"), "hunter2");
    let text = format!("{incoming:?}");
    assert!(!text.contains("hunter2"), "{text}");
    let psk = Credential::psk(AuthId::new("a").expect("auth id"), b"key");
    assert!(!format!("{psk:?}").contains(&b64(b"key")));
}

#[test]
fn schema_generates_for_the_credentials_set() {
    let schema =
        serde_json::to_value(schemars::schema_for!(Vec<Credential>)).expect("schema serializes");
    let text = schema.to_string();
    assert!(text.contains("\"x509-cert\""));
    assert!(text.contains("\"pwd-plain\""));
    assert!(schema["$defs"].get("PasswordSecret").is_some(), "{text}");
    assert!(schema["$defs"].get("RpkSecret").is_some(), "{text}");
    let internal =
        serde_json::to_value(schemars::schema_for!(DeviceCredential)).expect("schema serializes");
    assert!(internal.to_string().contains("\"device-id\""));
}
