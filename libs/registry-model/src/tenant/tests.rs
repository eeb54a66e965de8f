use serde_json::json;

use super::*;

/// A tenant body in the shape of Hono's documentation, using every section.
fn hono_tenant() -> serde_json::Value {
    json!({
        "enabled": true,
        "alias": "acme-prod",
        "trust-anchor-group": "acme",
        "defaults": { "ttl": 30, "content-type": "application/json" },
        "minimum-message-size": 4096,
        "ext": { "messaging-type": "amqp", "invalidate-cache-on-update": true },
        "tracing": {
            "sampling-mode": "default",
            "sampling-mode-per-auth-id": { "sensor1": "all", "noisy": "none" }
        },
        "registration-limits": { "max-devices": 1000, "max-credentials-per-device": 5 },
        "adapters": [
            { "type": "hono-mqtt", "enabled": true, "device-authentication-required": true },
            { "type": "hono-http", "enabled": true, "device-authentication-required": false, "max-ttd": 60 }
        ],
        "resource-limits": {
            "max-connections": 100,
            "max-ttl": 3600,
            "max-ttl-telemetry-qos0": 60,
            "max-ttl-telemetry-qos1": 120,
            "max-ttl-command-response": 30,
            "data-volume": {
                "effective-since": "2019-07-27T14:30:00Z",
                "max-bytes": 2147483648u64,
                "period": { "mode": "days", "no-of-days": 30 }
            },
            "connection-duration": {
                "effective-since": "2019-07-27T14:30:00Z",
                "max-minutes": 100000,
                "period": { "mode": "monthly" }
            }
        },
        "trusted-ca": [{
            "id": "ACME_CA_2019",
            "subject-dn": "CN=devices,OU=iot,O=ACME",
            "public-key": "Tk9UIEEgUFVCTElDIEtFWQ==",
            "algorithm": "EC",
            "auto-provisioning-enabled": true,
            "auto-provision-as-gateway": false,
            "auto-provisioning-device-id-template": "device-{{subject-dn}}",
            "not-before": "2019-10-03T13:45:16+02:00",
            "not-after": "2021-10-03T00:00:00Z"
        }]
    })
}

fn parse(value: serde_json::Value) -> Result<Tenant, serde_json::Error> {
    serde_json::from_value(value)
}

fn invalid(tenant: &Tenant) -> String {
    tenant.validate().expect_err("should be invalid").0
}

#[test]
fn hono_tenant_body_round_trips() {
    let tenant = parse(hono_tenant()).expect("valid body");
    tenant.validate().expect("valid tenant");
    assert_eq!(tenant.alias.as_deref(), Some("acme-prod"));
    let http = tenant.adapter(adapter_type::HTTP).expect("http configured");
    assert!(!http.device_authentication_required);
    assert_eq!(http.extra.get("max-ttd"), Some(&json!(60)));
    let ca = &tenant.trusted_ca[0];
    assert_eq!(ca.key_algorithm(), KeyAlgorithm::Ec);
    assert_eq!(
        ca.not_before.map(|t| t.to_rfc3339()),
        Some("2019-10-03T11:45:16+00:00".to_owned())
    );

    let written = serde_json::to_value(&tenant).expect("serializes");
    assert_eq!(written["adapters"][1]["max-ttd"], json!(60));
    assert_eq!(
        written["resource-limits"]["data-volume"]["period"]["no-of-days"],
        json!(30)
    );
    assert_eq!(
        written["tracing"]["sampling-mode-per-auth-id"]["noisy"],
        json!("none")
    );
    assert_eq!(parse(written).expect("reads back"), tenant);
}

#[test]
fn empty_body_is_an_enabled_tenant_on_all_adapters() {
    let tenant = parse(json!({})).expect("empty body is valid");
    assert_eq!(tenant, Tenant::default());
    tenant.validate().expect("valid");
    for name in adapter_type::ALL {
        assert!(tenant.is_adapter_enabled(name));
        assert!(tenant.is_device_authentication_required(name));
    }
    assert_eq!(
        serde_json::to_value(&tenant).expect("serializes"),
        json!({"enabled": true, "minimum-message-size": 0})
    );
}

#[test]
fn adapter_list_enables_only_listed_enabled_adapters() {
    let tenant = parse(json!({"adapters": [
        {"type": "hono-mqtt", "enabled": true},
        {"type": "hono-http"}
    ]}))
    .expect("valid");
    assert!(tenant.is_adapter_enabled("hono-mqtt"));
    // Hono's spec default for a listed adapter is disabled.
    assert!(!tenant.is_adapter_enabled("hono-http"));
    assert!(!tenant.is_adapter_enabled("hono-amqp"));
    assert!(tenant.is_device_authentication_required("hono-mqtt"));
    assert!(tenant.adapter("hono-coap").is_none());
}

#[test]
fn unknown_fields_are_rejected_except_in_free_objects() {
    let err = parse(json!({"enabeld": false})).expect_err("typo rejected");
    assert!(err.to_string().contains("enabeld"), "{err}");
    assert!(parse(json!({"resource-limits": {"max-conections": 1}})).is_err());
    assert!(parse(json!({"registration-limits": {"devices": 1}})).is_err());
    assert!(
        parse(json!({"trusted-ca": [{"subject-dn": "CN=x", "cert": "AA==", "foo": 1}]})).is_err()
    );
    parse(json!({"ext": {"anything": {"nested": [1]}}, "defaults": {"whatever": true}}))
        .expect("free objects");
}

#[test]
fn unknown_adapter_type_is_rejected() {
    let err = parse(json!({"adapters": [{"type": "hono-zigbee", "enabled": true}]}))
        .expect_err("unknown type");
    assert!(
        err.to_string()
            .contains("unknown adapter type `hono-zigbee`"),
        "{err}"
    );
    assert!(AdapterType::new("hono-lora").is_ok());
}

#[test]
fn unknown_enum_values_are_rejected() {
    assert!(parse(json!({"tracing": {"sampling-mode": "some"}})).is_err());
    assert!(parse(json!({"resource-limits": {"data-volume": {
        "effective-since": "2020-01-01T00:00:00Z", "period": {"mode": "weekly"}}}}))
    .is_err());
    assert!(parse(
        json!({"trusted-ca": [{"subject-dn": "CN=x", "public-key": "AA==", "algorithm": "DSA"}]})
    )
    .is_err());
}

#[test]
fn data_volume_needs_effective_since() {
    let err = parse(json!({"resource-limits": {"data-volume": {"max-bytes": 10}}}))
        .expect_err("required");
    assert!(err.to_string().contains("effective-since"), "{err}");
}

#[test]
fn adapters_must_be_non_empty_and_unique() {
    let mut tenant = Tenant {
        adapters: Some(vec![]),
        ..Tenant::default()
    };
    assert!(invalid(&tenant).starts_with("adapters: must not be empty"));
    let mqtt = AdapterType::new("hono-mqtt").expect("known");
    tenant.adapters = Some(vec![Adapter::new(mqtt), Adapter::new(mqtt)]);
    assert_eq!(
        invalid(&tenant),
        "adapters[1].type: hono-mqtt is configured more than once"
    );
}

#[test]
fn limits_must_be_at_least_minus_one() {
    let tenant = Tenant {
        registration_limits: Some(RegistrationLimits {
            max_devices: -2,
            ..RegistrationLimits::default()
        }),
        ..Tenant::default()
    };
    assert_eq!(
        invalid(&tenant),
        "registration-limits.max-devices: must be -1 (no limit) or more, got -2"
    );
    let tenant = Tenant {
        resource_limits: Some(ResourceLimits {
            max_ttl_telemetry_qos1: -5,
            ..ResourceLimits::default()
        }),
        ..Tenant::default()
    };
    assert!(invalid(&tenant).starts_with("resource-limits.max-ttl-telemetry-qos1:"));
    let tenant = Tenant {
        minimum_message_size: -1,
        ..Tenant::default()
    };
    assert!(invalid(&tenant).starts_with("minimum-message-size:"));
    assert_eq!(limit(-1), None);
    assert_eq!(limit(0), Some(0));
    assert_eq!(limit(42), Some(42));
}

#[test]
fn days_period_needs_a_positive_day_count() {
    let mut tenant = parse(json!({"resource-limits": {"data-volume": {
        "effective-since": "2020-01-01T00:00:00Z", "period": {"mode": "days"}}}}))
    .expect("parses");
    assert_eq!(
        invalid(&tenant),
        "resource-limits.data-volume.period.no-of-days: is required when mode is days"
    );
    if let Some(p) = tenant
        .resource_limits
        .as_mut()
        .and_then(|l| l.data_volume.as_mut())
        .and_then(|v| v.period.as_mut())
    {
        p.no_of_days = Some(0);
    }
    assert!(invalid(&tenant).contains("must be 1 or more"));
}

fn ca(value: serde_json::Value) -> Tenant {
    parse(json!({ "trusted-ca": [value] })).expect("parses")
}

#[test]
fn trusted_ca_rules() {
    let tenant = ca(json!({"subject-dn": " ", "public-key": "AA=="}));
    assert_eq!(
        invalid(&tenant),
        "trusted-ca[0].subject-dn: must not be empty"
    );
    let tenant = ca(json!({"subject-dn": "CN=x"}));
    assert_eq!(
        invalid(&tenant),
        "trusted-ca[0]: one of public-key or cert is required"
    );
    let tenant = ca(json!({"subject-dn": "CN=x", "public-key": "not base64!"}));
    assert!(invalid(&tenant).starts_with("trusted-ca[0].public-key: is not valid base64"));
    let tenant = ca(json!({"subject-dn": "CN=x", "cert": "AA==", "ocsp-responder-cert": "%"}));
    assert!(invalid(&tenant).starts_with("trusted-ca[0].ocsp-responder-cert:"));
    let tenant = ca(json!({"subject-dn": "CN=x", "public-key": "AA==",
        "not-before": "2022-01-01T00:00:00Z", "not-after": "2021-01-01T00:00:00Z"}));
    assert!(invalid(&tenant).starts_with("trusted-ca[0]: not-before"));
    let tenant =
        ca(json!({"subject-dn": "CN=x", "public-key": "AA==", "auth-id-template": "fixed"}));
    assert!(invalid(&tenant).starts_with("trusted-ca[0].auth-id-template: must contain"));
    let tenant =
        ca(json!({"subject-dn": "CN=x", "public-key": "AA==", "ocsp-revocation-enabled": true}));
    assert!(invalid(&tenant).contains("ocsp-revocation-enabled needs cert"));
    ca(json!({"subject-dn": "CN=x", "public-key": "AA==", "auth-id-template": "{{subject-cn}}-x"}))
        .validate()
        .expect("valid");
}

#[test]
fn trusted_ca_ids_are_unique_and_assignable() {
    let mut tenant = parse(json!({"trusted-ca": [
        {"id": "a", "subject-dn": "CN=x", "public-key": "AA=="},
        {"id": "a", "subject-dn": "CN=x", "cert": "AA=="}
    ]}))
    .expect("parses");
    assert_eq!(
        invalid(&tenant),
        "trusted-ca[1].id: `a` is used by another trusted CA of this tenant"
    );
    tenant.trusted_ca[1].id = None;
    tenant.assign_trusted_ca_ids();
    tenant.validate().expect("ids now unique");
    assert_eq!(tenant.trusted_ca[0].id.as_deref(), Some("a"));
    assert_eq!(tenant.trusted_ca[1].id.as_ref().map(String::len), Some(32));
    assert_eq!(tenant.trusted_cas_for("CN=x").count(), 2);
}

#[test]
fn trusted_ca_validity_window_is_inclusive() {
    let tenant = ca(json!({"subject-dn": "CN=x", "public-key": "AA==",
        "not-before": "2020-01-01T00:00:00Z", "not-after": "2021-01-01T00:00:00Z"}));
    let ca = &tenant.trusted_ca[0];
    let at = |s: &str| s.parse::<DateTime<Utc>>().expect("timestamp");
    assert!(ca.is_valid_at(at("2020-01-01T00:00:00Z")));
    assert!(ca.is_valid_at(at("2021-01-01T00:00:00Z")));
    assert!(!ca.is_valid_at(at("2019-12-31T23:59:59Z")));
    assert!(!ca.is_valid_at(at("2021-01-01T00:00:01Z")));
}

#[test]
fn alias_must_be_an_ldh_label() {
    for bad in [
        "",
        "Upper",
        "-lead",
        "trail-",
        "dot.ted",
        "under_score",
        &"a".repeat(64),
    ] {
        let tenant = Tenant {
            alias: Some(bad.to_owned()),
            ..Tenant::default()
        };
        assert!(invalid(&tenant).starts_with("alias:"), "{bad:?}");
    }
    for good in ["a", "acme-1", "0", &"a".repeat(63)] {
        let tenant = Tenant {
            alias: Some(good.to_owned()),
            ..Tenant::default()
        };
        tenant.validate().expect(good);
    }
}

#[test]
fn schema_lists_adapter_types_and_kebab_names() {
    let schema = serde_json::to_value(schemars::schema_for!(Tenant)).expect("schema serializes");
    let text = schema.to_string();
    assert!(text.contains("\"trusted-ca\""));
    assert!(text.contains("\"hono-sigfox\""));
    assert!(text.contains("\"date-time\""));
}

#[test]
fn stored_event_limits_are_read_checked_and_left_out_when_default() {
    let tenant = parse(json!({"resource-limits": {"max-connections": 3}})).expect("parses");
    let limits = tenant.resource_limits.clone().expect("limits");
    assert_eq!(limits.stored_events(), StoredEventLimits::default());
    let out = serde_json::to_value(&limits).expect("serializes");
    assert!(out.get("max-stored-events").is_none(), "{out}");
    assert!(out.get("max-stored-event-bytes").is_none(), "{out}");

    let tenant = parse(json!({"resource-limits": {
        "max-stored-events": 5, "max-stored-event-bytes": 4096}}))
    .expect("parses");
    let limits = tenant.resource_limits.clone().expect("limits");
    assert_eq!(
        limits.stored_events(),
        StoredEventLimits {
            max_events: Some(5),
            max_bytes: Some(4096)
        }
    );
    let out = serde_json::to_value(&limits).expect("serializes");
    assert_eq!(out["max-stored-events"], 5);
    assert_eq!(out["max-stored-event-bytes"], 4096);

    let tenant = parse(json!({"resource-limits": {"max-stored-events": -3}})).expect("parses");
    assert!(invalid(&tenant).starts_with("resource-limits.max-stored-events:"));
}
