//! Bad credentials and oversized payloads are refused with Hono's codes: CONNACK 0x04 (MQTT 3.1.1) or
//! 0x86 (MQTT 5) and HTTP 401 for a wrong password; an MQTT connection closed and HTTP 413 for a payload
//! over the limit (2048 bytes by default).

use std::time::Duration;

use ferry_e2e::{attached, curl, mosquitto_pub, rhea_app, text, Ferry};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn bad_credentials_are_refused_with_connack_4_and_http_401() {
    let ferry = Ferry::up();
    ferry.tenant("bank");
    ferry.device_with_password("bank", "atm-1", "atm1", "right");
    for user in ["atm1@bank", "nobody@bank", "atm1@no-such-tenant"] {
        // MQTT 3.1.1: CONNACK 0x04, which mosquitto_pub reports and exits non-zero with.
        let out = mosquitto_pub(
            ferry.mqtt,
            &["-u", user, "-P", "wrong", "-t", "telemetry", "-m", "x"],
        );
        assert!(!out.status.success(), "{user}");
        let said = text(&out.stderr);
        assert!(
            said.contains("Connection Refused: bad user name or password"),
            "{user}: {said}"
        );
        // MQTT 5: reason code 0x86.
        let out = mosquitto_pub(
            ferry.mqtt,
            &[
                "-V",
                "mqttv5",
                "-u",
                user,
                "-P",
                "wrong",
                "-t",
                "telemetry",
                "-m",
                "x",
            ],
        );
        assert!(!out.status.success(), "{user}");
        let said = text(&out.stderr);
        assert!(said.contains("Bad User Name or Password"), "{user}: {said}");

        let posted = curl(&[
            "-u",
            &format!("{user}:wrong"),
            "-H",
            "content-type: text/plain",
            "--data-binary",
            "x",
            &ferry.http_url("/telemetry"),
        ]);
        assert_eq!(posted.status, 401, "{user}: {posted:?}");
        assert_eq!(
            posted.header("www-authenticate"),
            Some("Basic realm=\"Hono\"")
        );
    }
    let anonymous = curl(&[
        "--data-binary",
        "x",
        "-H",
        "content-type: text/plain",
        &ferry.http_url("/telemetry"),
    ]);
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    // The right password works, so the refusals were about the credentials.
    let out = mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "atm1@bank",
            "-P",
            "right",
            "-t",
            "telemetry",
            "-m",
            "x",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn oversized_payloads_are_refused_with_a_disconnect_and_http_413() {
    let ferry = Ferry::up();
    ferry.tenant("bank");
    ferry.device_with_password("bank", "cam-1", "cam1", "pw");
    ferry.application("audit", "pw", &["bank"]);
    let app = attached(rhea_app(&[
        "consume",
        &ferry.amqp_url("audit", "pw"),
        "telemetry/bank",
        "1",
        "20",
    ]));
    let big = "x".repeat(2049);

    let out = mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "cam1@bank",
            "-P",
            "pw",
            "-q",
            "1",
            "-t",
            "telemetry",
            "-m",
            &big,
        ],
    );
    assert!(
        !out.status.success(),
        "no PUBACK: the adapter closed the connection"
    );
    let posted = curl(&[
        "-u",
        "cam1@bank:pw",
        "-H",
        "content-type: text/plain",
        "--data-binary",
        &big,
        &ferry.http_url("/telemetry"),
    ]);
    assert_eq!(posted.status, 413, "{posted:?}");

    // At the limit it goes through, and it is the first thing the application sees.
    let fits = "y".repeat(2048);
    let out = mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "cam1@bank",
            "-P",
            "pw",
            "-q",
            "1",
            "-t",
            "telemetry",
            "-m",
            &fits,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = app.expect("message", WAIT);
    assert_eq!(m["body"], fits.as_str());
}
