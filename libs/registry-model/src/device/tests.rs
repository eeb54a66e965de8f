use serde_json::json;

use super::*;

fn parse(value: serde_json::Value) -> Result<Device, serde_json::Error> {
    serde_json::from_value(value)
}

fn invalid(device: &Device) -> String {
    device.validate().expect_err("should be invalid").0
}

#[test]
fn device_body_round_trips_with_hono_spelling() {
    let body = json!({
        "enabled": true,
        "defaults": { "content-type": "application/json", "ttl": 60 },
        "via": ["gw-1", "gw-2"],
        "viaGroups": ["building-a"],
        "downstream-message-mapper": "payload-decoder",
        "upstream-message-mapper": "command-encoder",
        "command-endpoint": {
            "uri": "https://devices.example.com/{{deviceId}}/commands",
            "headers": { "Authorization": "Bearer x" },
            "payload-properties": { "version": 2 }
        },
        "ext": { "ep": "IMEI4711" }
    });
    let device = parse(body.clone()).expect("valid body");
    device.validate().expect("valid device");
    assert_eq!(device.via.len(), 2);
    assert_eq!(device.via_groups, ["building-a"]);
    assert_eq!(serde_json::to_value(&device).expect("serializes"), body);
}

#[test]
fn gateway_body_with_member_of_and_authorities() {
    let body = json!({
        "memberOf": ["building-a", "building-b"],
        "authorities": ["auto-provisioning-enabled"]
    });
    let gateway = parse(body).expect("valid body");
    gateway.validate().expect("valid gateway");
    assert!(gateway.may_auto_provision());
    assert!(gateway.enabled);
    let written = serde_json::to_value(&gateway).expect("serializes");
    assert_eq!(written["memberOf"], json!(["building-a", "building-b"]));
}

#[test]
fn kebab_spelling_of_camel_case_fields_is_rejected() {
    assert!(parse(json!({"via-groups": ["g"]})).is_err());
    assert!(parse(json!({"member-of": ["g"]})).is_err());
    assert!(parse(json!({"downstreamMessageMapper": "m"})).is_err());
}

#[test]
fn unknown_fields_and_authorities_are_rejected() {
    let err = parse(json!({"enabled": true, "colour": "red"})).expect_err("unknown field");
    assert!(err.to_string().contains("colour"), "{err}");
    assert!(parse(json!({"authorities": ["root"]})).is_err());
    assert!(parse(json!({"command-endpoint": {"uri": "x", "method": "POST"}})).is_err());
    assert!(parse(json!({"via": ["bad/id"]})).is_err());
}

#[test]
fn status_is_ignored_on_input_and_rendered_on_output() {
    let device =
        parse(json!({"status": {"created": "2020-01-01T00:00:00Z", "auto-provisioned": true}}))
            .expect("status accepted");
    assert_eq!(device.status, None);
    // Even garbage in the read-only field is dropped rather than refused.
    assert_eq!(parse(json!({"status": 42})).expect("ignored").status, None);

    let device = Device {
        status: Some(DeviceStatus {
            created: Some("2020-01-01T00:00:00Z".parse().expect("timestamp")),
            updated: None,
            last_user: Some("admin".to_owned()),
            auto_provisioned: true,
            auto_provisioning_notification_sent: false,
        }),
        ..Device::default()
    };
    let written = serde_json::to_value(&device).expect("serializes");
    assert_eq!(
        written["status"],
        json!({
            "created": "2020-01-01T00:00:00Z",
            "last-user": "admin",
            "auto-provisioned": true,
            "auto-provisioning-notification-sent": false
        })
    );
    let stored: DeviceStatus =
        serde_json::from_value(written["status"].clone()).expect("status reads back");
    assert_eq!(Some(stored), device.status);
}

#[test]
fn member_of_excludes_via_and_via_groups() {
    let device = parse(json!({"memberOf": ["g"], "via": ["gw"]})).expect("parses");
    assert!(invalid(&device).starts_with("memberOf: a gateway group member cannot"));
    let device = parse(json!({"memberOf": ["g"], "viaGroups": ["h"]})).expect("parses");
    assert!(invalid(&device).starts_with("memberOf:"));
}

#[test]
fn lists_must_not_repeat_and_group_ids_must_be_ids() {
    let device = parse(json!({"via": ["gw", "gw"]})).expect("parses");
    assert_eq!(invalid(&device), "via[1]: gateway `gw` is listed twice");
    let device = parse(json!({"viaGroups": ["a", "a"]})).expect("parses");
    assert_eq!(invalid(&device), "viaGroups[1]: group `a` is listed twice");
    let device = parse(json!({"memberOf": ["has space"]})).expect("parses");
    assert!(invalid(&device).starts_with("memberOf[0]: group id:"));
}

#[test]
fn mappers_and_command_endpoint_must_not_be_blank() {
    let device = parse(json!({"upstream-message-mapper": ""})).expect("parses");
    assert!(invalid(&device).starts_with("upstream-message-mapper:"));
    let device = parse(json!({"command-endpoint": {"uri": " "}})).expect("parses");
    assert_eq!(invalid(&device), "command-endpoint.uri: must not be empty");
}

#[test]
fn empty_body_is_an_enabled_device() {
    let device = parse(json!({})).expect("valid");
    assert_eq!(device, Device::default());
    assert_eq!(
        serde_json::to_value(&device).expect("serializes"),
        json!({"enabled": true})
    );
}

#[test]
fn schema_marks_status_read_only() {
    let schema = serde_json::to_value(schemars::schema_for!(Device)).expect("schema serializes");
    assert_eq!(schema["properties"]["status"]["readOnly"], json!(true));
    assert!(schema["properties"].get("viaGroups").is_some());
}
