//! The CEL rules of the committed CRDs, evaluated client-side as the API server evaluates them
//! (kube's `cel` feature, with the schema defaults applied first): each rule refuses what it should and
//! lets the rest through.

use kube::core::cel::Validator;
use serde_json::{json, Value};

fn schema(file: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crds")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("committed CRD");
    let crd: Value = serde_saphyr::from_str(&text).expect("CRD YAML");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// The messages of the rules `object` breaks (empty when it is accepted).
fn broken(schema: &Value, object: Value, old: Option<Value>) -> Vec<String> {
    match Validator::new().validate(schema, &object, old.as_ref()) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

fn space(spec: Value) -> Value {
    json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "AddressSpace",
           "metadata": {"name": "iot", "namespace": "prod"}, "spec": spec})
}

fn tenant(spec: Value) -> Value {
    json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Tenant",
           "metadata": {"name": "acme", "namespace": "prod"}, "spec": spec})
}

#[test]
fn sqlite_registry_runs_one_replica_and_postgresql_needs_its_secret() {
    let s = schema("addressspaces.ferry.dev.yaml");
    assert!(
        broken(&s, space(json!({})), None).is_empty(),
        "the defaults are valid"
    );
    assert!(broken(&s, space(json!({"registry": {"replicas": 1}})), None).is_empty());

    let errors = broken(&s, space(json!({"registry": {"replicas": 3}})), None);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("SQLite runs exactly one replica"),
        "{errors:?}"
    );

    let pg = json!({"registry": {"replicas": 3, "database": {"type": "postgresql", "postgresql": {"secretName": "pg"}}}});
    assert!(broken(&s, space(pg), None).is_empty());

    let errors = broken(
        &s,
        space(json!({"registry": {"database": {"type": "postgresql"}}})),
        None,
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("postgresql.secretName is required")),
        "{errors:?}"
    );
    let errors = broken(
        &s,
        space(
            json!({"registry": {"database": {"type": "postgresql", "postgresql": {"secretName": ""}}}}),
        ),
        None,
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("postgresql.secretName is required")),
        "{errors:?}"
    );
}

#[test]
fn tenant_address_space_and_id_are_immutable() {
    let s = schema("tenants.ferry.dev.yaml");
    let old = tenant(json!({"addressSpace": "iot"}));
    assert!(broken(&s, tenant(json!({"addressSpace": "iot"})), None).is_empty());
    assert!(broken(
        &s,
        tenant(json!({"addressSpace": "iot", "enabled": false})),
        Some(old.clone())
    )
    .is_empty());

    let errors = broken(
        &s,
        tenant(json!({"addressSpace": "other"})),
        Some(old.clone()),
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("addressSpace is immutable")),
        "{errors:?}"
    );

    let errors = broken(
        &s,
        tenant(json!({"addressSpace": "iot", "tenantId": "x"})),
        Some(old),
    );
    assert!(
        errors.iter().any(|e| e.contains("tenantId is immutable")),
        "{errors:?}"
    );

    let old = tenant(json!({"addressSpace": "iot", "tenantId": "x"}));
    assert!(broken(
        &s,
        tenant(json!({"addressSpace": "iot", "tenantId": "x"})),
        Some(old.clone())
    )
    .is_empty());
    let errors = broken(
        &s,
        tenant(json!({"addressSpace": "iot", "tenantId": "y"})),
        Some(old),
    );
    assert!(
        errors.iter().any(|e| e.contains("tenantId is immutable")),
        "{errors:?}"
    );
}

#[test]
fn trusted_ca_needs_a_certificate_or_a_key() {
    let s = schema("tenants.ferry.dev.yaml");
    let ok = tenant(
        json!({"addressSpace": "iot", "trustedCa": [{"subjectDn": "CN=x", "publicKey": "AAAA"}]}),
    );
    assert!(broken(&s, ok, None).is_empty());
    let errors = broken(
        &s,
        tenant(json!({"addressSpace": "iot", "trustedCa": [{"subjectDn": "CN=x"}]})),
        None,
    );
    assert!(
        errors.iter().any(|e| e.contains("cert or publicKey")),
        "{errors:?}"
    );
}

#[test]
fn managed_nats_runs_an_odd_number_of_nodes_and_nats_is_external_or_managed() {
    let s = schema("addressspaces.ferry.dev.yaml");
    let managed = |replicas: i64| {
        space(json!({"messaging": {"mode": "nats", "nats": {"managed": {"replicas": replicas}}}}))
    };
    for ok in [1, 3, 5] {
        assert!(broken(&s, managed(ok), None).is_empty(), "{ok} nodes");
    }
    for refused in [2, 4] {
        let errors = broken(&s, managed(refused), None);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("odd number of at least 3")),
            "{refused} nodes: {errors:?}"
        );
    }
    assert!(
        broken(&s, space(json!({"messaging": {"mode": "nats"}})), None).is_empty(),
        "managed with its defaults"
    );
    let external = json!({"urls": ["tls://nats:4222"], "credentialsSecret": "corp-nats"});
    assert!(broken(
        &s,
        space(json!({"messaging": {"mode": "nats", "nats": {"external": external}}})),
        None
    )
    .is_empty());
    let errors = broken(
        &s,
        space(
            json!({"messaging": {"mode": "nats", "nats": {"external": external, "managed": {}}}}),
        ),
        None,
    );
    assert!(errors.iter().any(|e| e.contains("not both")), "{errors:?}");
    let errors = broken(
        &s,
        space(json!({"messaging": {"mode": "embedded", "nats": {"managed": {}}}})),
        None,
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("only read with messaging.mode nats")),
        "{errors:?}"
    );
}
