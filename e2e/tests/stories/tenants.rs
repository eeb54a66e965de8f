//! Two tenants never see each other's data: an application of tenant A gets nothing of tenant B and
//! may not attach to B's addresses; a device of A cannot publish into B.

use std::time::Duration;

use ferry_e2e::{attached, curl, mosquitto_pub, proton_app, rhea_app, text, Ferry};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn two_tenants_never_see_each_others_data() {
    let ferry = Ferry::up();
    for (tenant, device, auth) in [("alpha", "a-1", "a1"), ("beta", "b-1", "b1")] {
        ferry.tenant(tenant);
        ferry.device_with_password(tenant, device, auth, "pw");
        ferry.application(&format!("app-{tenant}"), "pw", &[tenant]);
    }
    let alpha_url = ferry.amqp_url("app-alpha", "pw");
    let beta_url = ferry.amqp_url("app-beta", "pw");
    let alpha = attached(rhea_app(&[
        "consume",
        &alpha_url,
        "telemetry/alpha",
        "1",
        "20",
    ]));
    let beta = attached(proton_app(&[
        "consume",
        &beta_url,
        "telemetry/beta",
        "2",
        "20",
    ]));

    // beta's device publishes: beta's application gets it.
    let out = mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "b1@beta",
            "-P",
            "pw",
            "-q",
            "1",
            "-t",
            "telemetry",
            "-m",
            "beta 1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = beta.expect("message", WAIT);
    assert_eq!(
        (&m["properties"]["device_id"], &m["body"]),
        (&"b-1".into(), &"beta 1".into())
    );

    // alpha's device tries beta's topics and URIs: refused, nothing reaches beta.
    let out = mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "a1@alpha",
            "-P",
            "pw",
            "-q",
            "1",
            "-t",
            "telemetry/beta/b-1",
            "-m",
            "intrusion",
        ],
    );
    assert!(
        !out.status.success(),
        "alpha's device may not publish for beta"
    );
    let put = curl(&[
        "-u",
        "a1@alpha:pw",
        "-X",
        "PUT",
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "intrusion",
        &ferry.http_url("/telemetry/beta/b-1"),
    ]);
    assert_eq!(put.status, 403, "{put:?}");

    // alpha's application may not attach to beta's telemetry, events, or send beta commands.
    for (mode, address) in [
        ("consume", "telemetry/beta"),
        ("consume", "event/beta"),
        ("send", "command/beta"),
    ] {
        let args: Vec<&str> = if mode == "consume" {
            vec![mode, &alpha_url, address, "1", "5"]
        } else {
            vec![mode, &alpha_url, address, "5"]
        };
        let refused = rhea_app(&args);
        let error = refused.expect("link_error", WAIT);
        assert_eq!(
            error,
            "amqp:unauthorized-access",
            "{address}: {}",
            refused.log()
        );
    }

    // The next message each application gets is its own tenant's: nothing of the other came first.
    let out = mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "a1@alpha",
            "-P",
            "pw",
            "-q",
            "1",
            "-t",
            "telemetry",
            "-m",
            "alpha 1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = alpha.expect("message", WAIT);
    assert_eq!(
        (&m["properties"]["device_id"], &m["body"]),
        (&"a-1".into(), &"alpha 1".into())
    );
    let out = mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "b1@beta",
            "-P",
            "pw",
            "-q",
            "1",
            "-t",
            "telemetry",
            "-m",
            "beta 2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = beta.expect("message", WAIT);
    assert_eq!(m["body"], "beta 2", "beta saw nothing of alpha's attempts");
}
