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

/// A tenant token (`ferry token create`) lets a tenant's own operator manage its devices with the same
/// CLI and curl, and nothing of another tenant: a device it provisions connects and sends; the other
/// tenant's devices, the tenant list and the application users answer 403; deleted, it answers 401.
#[test]
fn a_tenant_token_provisions_its_own_devices_and_nothing_else() {
    let ferry = Ferry::up();
    ferry.tenant("alpha");
    ferry.tenant("beta");
    ferry.device_with_password("beta", "b-1", "b1", "pw");
    let made = ferry.manage(&["token", "create", "alpha", "--comment", "alpha ops"]);
    let token = made["token"].as_str().expect("the token is printed once");
    let id = made["id"].as_str().expect("its id");

    // The same CLI, given the tenant token instead of the admin token.
    let operator = ferry_e2e::Manager {
        registry: ferry.registry.clone(),
        data_dir: ferry.data_dir.clone(),
        token: Some(token.to_owned()),
    };
    operator.device_with_password("alpha", "a-1", "a1", "pw-a");
    let out = mosquitto_pub(
        ferry.mqtt,
        &[
            "-u",
            "a1@alpha",
            "-P",
            "pw-a",
            "-q",
            "0",
            "-t",
            "telemetry",
            "-m",
            "hello",
        ],
    );
    assert!(
        out.status.success(),
        "the provisioned device logs in: {}",
        text(&out.stderr)
    );
    let refused = operator.cli(&["device", "get", "beta", "b-1"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("403") || text(&refused.stdout).contains("403"),
        "{}{}",
        text(&refused.stdout),
        text(&refused.stderr)
    );

    let bearer = format!("authorization: Bearer {token}");
    let url = |path: &str| format!("{}/v1{path}", ferry.registry);
    for path in [
        "/devices/beta",
        "/tenants",
        "/applications",
        "/tokens/alpha",
    ] {
        let r = curl(&["-H", &bearer, &url(path)]);
        assert_eq!(r.status, 403, "{path}: {r:?}");
    }
    let mine = curl(&["-H", &bearer, &url("/devices/alpha/a-1")]);
    assert_eq!(mine.status, 200, "{mine:?}");

    ferry.manage(&["token", "delete", "alpha", id]);
    let gone = curl(&["-H", &bearer, &url("/devices/alpha/a-1")]);
    assert_eq!(gone.status, 401, "a deleted token: {gone:?}");
}
