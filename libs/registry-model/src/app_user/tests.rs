use serde_json::json;

use super::*;

fn opts() -> HashOptions {
    HashOptions {
        bcrypt_cost: 4,
        ..HashOptions::default()
    }
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).expect("tenant id")
}

fn input(value: serde_json::Value) -> Result<ApplicationUserInput, serde_json::Error> {
    serde_json::from_value(value)
}

#[test]
fn input_defaults_to_every_operation() {
    let user = input(json!({"password": "s3cret", "tenants": ["t1", "t2"]})).expect("valid");
    assert_eq!(user.operations, Operation::ALL);
    user.validate().expect("valid");
}

#[test]
fn stored_form_holds_a_bcrypt_hash_that_verifies() {
    let user = input(json!({"password": "s3cret", "tenants": ["t1"], "operations": ["telemetry"]}))
        .expect("valid")
        .into_stored(&opts())
        .expect("hashes");
    assert!(user.password_hash.starts_with("$2a$04$"));
    assert!(user.verify("s3cret"));
    assert!(!user.verify("S3cret"));
    assert!(user.allows_operation(Operation::Telemetry));
    assert!(!user.allows_operation(Operation::Command));
    user.validate().expect("stored form is valid");

    let written = serde_json::to_value(&user).expect("serializes");
    assert!(written["password-hash"].is_string());
    let back: ApplicationUser = serde_json::from_value(written).expect("reads back");
    assert_eq!(back, user);
    assert!(!format!("{user:?}").contains(&user.password_hash));
}

#[test]
fn tenant_wildcard_allows_every_tenant() {
    let any = input(json!({"password": "pw", "tenants": ["*"]}))
        .expect("valid")
        .into_stored(&opts())
        .expect("hashes");
    assert!(any.allows_tenant(&tenant("t1")));
    assert!(any.allows_tenant(&tenant("DEFAULT_TENANT")));

    let some = input(json!({"password": "pw", "tenants": ["t1", "t2"]}))
        .expect("valid")
        .into_stored(&opts())
        .expect("hashes");
    assert!(some.allows_tenant(&tenant("t2")));
    assert!(!some.allows_tenant(&tenant("t3")));
    assert!(!some.allows_tenant(&tenant("t")));
}

#[test]
fn view_has_no_hash() {
    let user = input(json!({"password": "pw", "tenants": ["*"]}))
        .expect("valid")
        .into_stored(&opts())
        .expect("hashes");
    let name = UserName::new("app@example.com").expect("valid name");
    let view = serde_json::to_value(user.view(&name)).expect("serializes");
    assert_eq!(
        view,
        json!({"name": "app@example.com", "tenants": ["*"], "operations": ["telemetry", "event", "command"]})
    );
}

#[test]
fn bad_input_is_rejected() {
    assert!(input(json!({"password": "pw", "tenants": ["t1"], "role": "admin"})).is_err());
    assert!(input(json!({"password": "pw", "tenants": ["t/1"]})).is_err());
    assert!(
        input(json!({"password": "pw", "tenants": ["t1"], "operations": ["publish"]})).is_err()
    );
    assert!(input(json!({"tenants": ["t1"]})).is_err());

    let empty = input(json!({"password": "pw", "tenants": []})).expect("parses");
    assert!(empty
        .validate()
        .expect_err("no tenants")
        .0
        .starts_with("tenants:"));
    let no_ops =
        input(json!({"password": "pw", "tenants": ["*"], "operations": []})).expect("parses");
    assert!(no_ops
        .validate()
        .expect_err("no operations")
        .0
        .starts_with("operations:"));
    let long = input(json!({"password": "x".repeat(73), "tenants": ["*"]})).expect("parses");
    assert!(long
        .into_stored(&opts())
        .expect_err("too long")
        .0
        .starts_with("password:"));
    assert!(!format!(
        "{:?}",
        input(json!({"password": "hunter2", "tenants": ["*"]})).expect("parses")
    )
    .contains("hunter2"));
}

#[test]
fn user_names_are_validated() {
    for good in ["a", "app-1_x.y@example.com", &"n".repeat(128)] {
        UserName::new(good).expect(good);
    }
    for bad in ["", "with space", "slash/", "colon:", &"n".repeat(129)] {
        assert!(UserName::new(bad).is_err(), "{bad:?}");
    }
    assert!(serde_json::from_value::<UserName>(json!("ok.name")).is_ok());
    assert!(serde_json::from_value::<UserName>(json!("not ok")).is_err());
}

#[test]
fn malformed_stored_hash_does_not_verify() {
    let user = ApplicationUser {
        password_hash: "plain-text".to_owned(),
        tenants: vec![TenantGrant::Any],
        operations: Operation::ALL.to_vec(),
    };
    assert!(!user.verify("plain-text"));
    assert!(user.validate().is_err());
}
