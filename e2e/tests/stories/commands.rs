//! Commands go from an application to a device and the device's response comes back: over MQTT to a
//! paho device subscribed to its commands, and over HTTP to a curl device waiting with `hono-ttd`.

use std::time::Duration;

use ferry_e2e::{curl, curl_in_background, paho_device, proton_app, rhea_app, Ferry};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn a_command_from_a_rhea_application_reaches_a_paho_device_and_its_response_returns() {
    let ferry = Ferry::up();
    ferry.tenant("city");
    ferry.device_with_password("city", "lamp-12", "lamp12", "pw-lamp");
    ferry.application("lighting", "pw-light", &["city"]);
    let device = paho_device(
        "commands",
        ferry.mqtt,
        &["lamp12@city", "pw-lamp", "command///req/#", "20"],
    );
    assert_eq!(device.expect("subscribed", WAIT), serde_json::json!([1]));

    let app = rhea_app(&[
        "command",
        &ferry.amqp_url("lighting", "pw-light"),
        "city",
        "lamp-12",
        "setBrightness",
        r#"{"brightness":80}"#,
        "20",
    ]);
    let command = device.try_expect("command", WAIT).unwrap_or_else(|| {
        panic!(
            "no command reached the device.\napplication:\n{}\ndevice:\n{}",
            app.log(),
            device.log()
        )
    });
    let topic = command["topic"].as_str().expect("topic");
    // command///req/REQ-ID/NAME: a request id to answer with, then the command's name.
    let parts: Vec<&str> = topic.split('/').collect();
    assert_eq!(parts[..3], ["command", "", ""], "{topic}");
    assert_eq!(parts[3], "req", "{topic}");
    assert!(!parts[4].is_empty(), "a request id: {topic}");
    assert_eq!(parts[5], "setBrightness", "{topic}");
    assert_eq!(command["payload"], r#"{"brightness":80}"#);

    let response = app.try_expect("response", WAIT).unwrap_or_else(|| {
        panic!(
            "no response reached the application.\napplication:\n{}\ndevice:\n{}\nferry up:\n{}",
            app.log(),
            device.log(),
            ferry.process.log()
        )
    });
    assert_eq!(response["properties"]["status"], 200, "{response}");
    assert_eq!(response["properties"]["device_id"], "lamp-12", "{response}");
    assert_eq!(response["correlation_id"], "cmd-1", "{response}");
    let body: serde_json::Value =
        serde_json::from_str(response["body"].as_str().expect("body")).expect("JSON");
    assert_eq!(body["echo"], r#"{"brightness":80}"#);
    assert_eq!(app.expect("done", WAIT), 1, "{}", app.log());
}

#[test]
fn a_command_from_a_proton_application_reaches_a_curl_device_waiting_with_ttd() {
    let ferry = Ferry::up();
    ferry.tenant("city");
    ferry.device_with_password("city", "meter-4", "meter4", "pw-meter");
    ferry.application("billing", "pw-bill", &["city"]);

    // The device says it stays reachable for 10 s for a command, with an empty notification.
    let waiting = curl_in_background(&[
        "-u",
        "meter4@city:pw-meter",
        "-H",
        "content-type: application/vnd.eclipse-hono-empty-notification",
        "-H",
        "hono-ttd: 10",
        "-X",
        "POST",
        &ferry.http_url("/event"),
    ]);
    // The application retries while the command is released (the device's request not there yet).
    let app = proton_app(&[
        "command",
        &ferry.amqp_url("billing", "pw-bill"),
        "city",
        "meter-4",
        "readNow",
        r#"{"register":"A+"}"#,
        "20",
    ]);
    let got = waiting.join().expect("curl thread");
    assert_eq!(got.status, 200, "the command comes in the answer: {got:?}");
    assert_eq!(got.header("hono-command"), Some("readNow"), "{got:?}");
    assert_eq!(got.body, r#"{"register":"A+"}"#);
    let req_id = got.header("hono-cmd-req-id").expect("a request id");

    let answered = curl(&[
        "-u",
        "meter4@city:pw-meter",
        "-H",
        "hono-cmd-status: 200",
        "-H",
        "content-type: application/json",
        "--data-binary",
        r#"{"kWh":1234}"#,
        &ferry.http_url(&format!("/command/res/{req_id}")),
    ]);
    assert_eq!(answered.status, 202, "{answered:?}");
    let response = app.expect("response", WAIT);
    assert_eq!(response["body"], r#"{"kWh":1234}"#);
    assert_eq!(response["content_type"], "application/json");
    assert_eq!(response["properties"]["status"], 200);
    assert_eq!(response["properties"]["device_id"], "meter-4");
    assert_eq!(app.expect("done", WAIT), 1, "{}", app.log());

    // A response without its status is refused, as Hono does.
    let bad = curl(&[
        "-u",
        "meter4@city:pw-meter",
        "--data-binary",
        "x",
        &ferry.http_url(&format!("/command/res/{req_id}")),
    ]);
    assert_eq!(bad.status, 400, "{bad:?}");
}

#[test]
// Found by this suite: the router used to release a response that arrived before the application's
// response receiver had granted credit (rhea grants it only after the router's attach returns); it now
// holds the response for up to 3 s (router/src/hub.rs, RESPONSE_CREDIT_WAIT).
fn a_command_response_waits_for_a_slow_applications_credit() {
    let ferry = Ferry::up();
    ferry.tenant("city");
    ferry.device_with_password("city", "lamp-12", "lamp12", "pw-lamp");
    ferry.application("lighting", "pw-light", &["city"]);
    let device = paho_device(
        "commands",
        ferry.mqtt,
        &["lamp12@city", "pw-lamp", "command///req/#", "20"],
    );
    assert_eq!(device.expect("subscribed", WAIT), serde_json::json!([1]));
    let mut cmd = std::process::Command::new(ferry_e2e::require_program("node"));
    cmd.arg(ferry_e2e::clients_dir().join("rhea_app.js"))
        .args([
            "command",
            &ferry.amqp_url("lighting", "pw-light"),
            "city",
            "lamp-12",
            "setBrightness",
            "{}",
            "10",
        ])
        .env("LATE_CREDIT_MS", "500");
    let app = ferry_e2e::Process::spawn("rhea_app.js", cmd);
    device.expect("command", WAIT);
    let response = app.try_expect("response", WAIT).unwrap_or_else(|| {
        panic!(
            "no response.\napplication:\n{}\ndevice:\n{}",
            app.log(),
            device.log()
        )
    });
    assert_eq!(response["properties"]["status"], 200);
}
