//! Cluster mode end to end: `ferry up --cluster` (three NATS nodes with JetStream, two routers, two MQTT
//! adapters, an HTTP adapter, registries; every part its own process) with clients no one here wrote:
//! paho-mqtt and mosquitto devices, curl, Qpid Proton and rhea applications. What a Hono device or
//! application sees must not tell it which mode it talks to; what survives which failure is in
//! docs/cluster.md.

use std::time::{Duration, Instant};

use ferry_e2e::{attached, curl, paho_device, proton_app, rhea_app, Cluster, Manager, Process};
use serde_json::Value;

mod console;

const WAIT: Duration = Duration::from_secs(15);

/// A tenant `plant` with device `press-1` (`press1@plant` / `pw-press`) and application `ops`.
fn plant(c: &Cluster) {
    c.tenant("plant");
    c.device_with_password("plant", "press-1", "press1", "pw-press");
    c.application("ops", "pw-ops", &["plant"]);
}

/// The `seq` of each message a paho device sent, as the application got them.
fn seqs(messages: &[Value]) -> Vec<i64> {
    let mut s: Vec<i64> = messages
        .iter()
        .map(|m| {
            let body: Value =
                serde_json::from_str(m["body"].as_str().expect("text body")).expect("a JSON body");
            body["seq"].as_i64().expect("seq")
        })
        .collect();
    s.sort_unstable();
    s
}

/// The messages a consumer printed so far.
fn received(p: &Process) -> Vec<Value> {
    p.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("message").cloned())
        .collect()
}

#[test]
fn a_device_on_adapter_2_reaches_applications_on_both_routers_which_share_the_tenants_telemetry() {
    let c = Cluster::up(None);
    plant(&c);
    let on_router_1 = attached(proton_app(&[
        "consume",
        &c.amqp_url(0, "ops", "pw-ops"),
        "telemetry/plant",
        "1000",
        "30",
    ]));
    let on_router_2 = attached(rhea_app(&[
        "consume",
        &c.amqp_url(1, "ops", "pw-ops"),
        "telemetry/plant",
        "1000",
        "30",
    ]));
    // QoS 1 through MQTT adapter 2: each PUBACK comes after an application accepted the message.
    let mut device = paho_device("telemetry", c.mqtt[1], &["press1@plant", "pw-press", "40"]);
    assert_eq!(device.expect("done", WAIT), 40, "{}", device.log());
    assert!(device.wait_exit(WAIT).success());
    std::thread::sleep(Duration::from_millis(500));
    let (one, two) = (received(&on_router_1), received(&on_router_2));
    let mut all = one.clone();
    all.extend(two.iter().cloned());
    assert_eq!(
        seqs(&all),
        (0..40).collect::<Vec<_>>(),
        "each message exactly once"
    );
    assert!(
        !one.is_empty() && !two.is_empty(),
        "both routers' consumers got some: {} / {}",
        one.len(),
        two.len()
    );
    for m in &all {
        assert_eq!(m["properties"]["device_id"], "press-1");
        assert_eq!(m["properties"]["orig_adapter"], "hono-mqtt");
        assert!(m["properties"].get("reg_assertion").is_none(), "{m}");
    }
    // The console's figures: summed over the adapters (Hono's counters) and both routers.
    let stats = stats(&c);
    assert_eq!(stats["source"], "cluster", "{stats}");
    assert_eq!(
        stats["answers"], 5,
        "2 routers, 2 MQTT adapters, 1 HTTP adapter: {stats}"
    );
    assert_eq!(stats["telemetry"]["forwarded"], 40, "{stats}");
    assert_eq!(stats["router"]["telemetry"]["forwarded"], 40, "{stats}");
}

/// The admin token `ferry up --cluster` wrote.
fn admin_token(c: &Cluster) -> String {
    std::fs::read_to_string(c.data_dir.join("admin-token"))
        .expect("the admin token")
        .trim()
        .to_owned()
}

/// `press-1` on MQTT adapter 1 and `press-2` (which the caller registered) on adapter 2, each subscribed
/// to its commands for `secs`.
fn command_subscribers(c: &Cluster, secs: &str) -> (Process, Process) {
    let first = paho_device(
        "commands",
        c.mqtt[0],
        &["press1@plant", "pw-press", "command///req/#", secs],
    );
    assert_eq!(first.expect("subscribed", WAIT), serde_json::json!([1]));
    let second = paho_device(
        "commands",
        c.mqtt[1],
        &["press2@plant", "pw-press2", "command///req/#", secs],
    );
    assert_eq!(second.expect("subscribed", WAIT), serde_json::json!([1]));
    (first, second)
}

/// `GET /v1/stats/plant` with the admin token.
fn stats(c: &Cluster) -> Value {
    let token = admin_token(c);
    let r = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{}/v1/stats/plant", c.registry),
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).expect("JSON")
}

#[test]
fn without_a_consumer_http_telemetry_gets_503_and_events_are_stored_until_an_application_comes() {
    let c = Cluster::up(None);
    plant(&c);
    let telemetry = curl(&[
        "-u",
        "press1@plant:pw-press",
        "-H",
        "content-type: application/json",
        "-d",
        "{\"t\": 1}",
        &c.http_url("/telemetry"),
    ]);
    assert_eq!(telemetry.status, 503, "nobody consumes: {telemetry:?}");
    // Events: acknowledged (stored, replicated) although nobody consumes.
    let mut device = paho_device("events", c.mqtt[0], &["press1@plant", "pw-press", "5"]);
    assert_eq!(device.expect("done", WAIT), 5, "{}", device.log());
    assert!(device.wait_exit(WAIT).success());
    let event = curl(&[
        "-u",
        "press1@plant:pw-press",
        "-H",
        "content-type: application/json",
        "-d",
        "{\"seq\": 5}",
        &c.http_url("/event"),
    ]);
    assert_eq!(event.status, 202, "{event:?}");
    // An application on router 2 gets them all.
    let app = attached(proton_app(&[
        "consume",
        &c.amqp_url(1, "ops", "pw-ops"),
        "event/plant",
        "6",
        "20",
    ]));
    let events = app.messages(6, WAIT);
    assert_eq!(seqs(&events), [0, 1, 2, 3, 4, 5]);
}

#[test]
fn events_held_by_a_router_killed_with_kill_9_and_a_lost_nats_node_are_all_delivered_again() {
    let c = Cluster::up(None);
    plant(&c);
    // Router 1's application takes the events and settles none of them.
    let holder = attached(proton_app(&[
        "hold",
        &c.amqp_url(0, "ops", "pw-ops"),
        "event/plant",
        "100",
        "60",
    ]));
    let mut device = paho_device("events", c.mqtt[0], &["press1@plant", "pw-press", "20"]);
    assert_eq!(device.expect("done", WAIT), 20, "{}", device.log());
    assert!(device.wait_exit(WAIT).success());
    let deadline = Instant::now() + WAIT;
    while received(&holder).len() < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        received(&holder).len(),
        20,
        "router 1 handed out every event"
    );
    // Router 1 crashes holding all 20 unsettled, and one of the three NATS nodes with it.
    c.kill9("router-1");
    c.kill9("nats-1");
    // Router 2 gets every one of them (after the redelivery wait) and accepts them.
    let app = attached(proton_app(&[
        "consume",
        &c.amqp_url(1, "ops", "pw-ops"),
        "event/plant",
        "20",
        "60",
    ]));
    let events = app.messages(20, Duration::from_secs(60));
    assert_eq!(seqs(&events), (0..20).collect::<Vec<_>>(), "no event lost");
}

#[test]
fn commands_from_router_2_reach_devices_on_either_adapter_and_responses_return() {
    let c = Cluster::up(None);
    plant(&c);
    c.device_with_password("plant", "press-2", "press2", "pw-press2");
    let (first, second) = command_subscribers(&c, "30");
    for device in ["press-1", "press-2"] {
        let app = proton_app(&[
            "command",
            &c.amqp_url(1, "ops", "pw-ops"),
            "plant",
            device,
            "stop",
            "{\"now\": true}",
            "20",
        ]);
        let response = app.expect("response", WAIT);
        assert_eq!(response["properties"]["status"], 200, "{response}");
        assert_eq!(app.expect("done", WAIT), 1);
    }
    assert!(first.log().contains("\"command\""), "{}", first.log());
    assert!(second.log().contains("\"command\""), "{}", second.log());
}

#[test]
fn a_killed_adapters_devices_get_released_commands_at_once_instead_of_a_hang() {
    let c = Cluster::up(None);
    plant(&c);
    let device = paho_device(
        "commands",
        c.mqtt[1],
        &["press1@plant", "pw-press", "command///req/#", "60"],
    );
    assert_eq!(device.expect("subscribed", WAIT), serde_json::json!([1]));
    c.kill9("mqtt-2");
    let started = Instant::now();
    let app = proton_app(&[
        "command",
        &c.amqp_url(0, "ops", "pw-ops"),
        "plant",
        "press-1",
        "stop",
        "{}",
        "5",
    ]);
    let outcome = app.expect("outcome", WAIT);
    assert_eq!(
        outcome, "released",
        "Hono's outcome for an unreachable device"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_device_disabled_through_registry_2_is_cut_off_within_a_second_on_an_adapter_following_registry_1(
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let db = runtime.block_on(ferry_test_support::postgres_database());
    let c = Cluster::up(Some(db.url()));
    assert_eq!(c.registries.len(), 2);
    plant(&c);
    // MQTT adapter 1 follows registry 1.
    let device = paho_device(
        "commands",
        c.mqtt[0],
        &["press1@plant", "pw-press", "command///req/#", "30"],
    );
    assert_eq!(device.expect("subscribed", WAIT), serde_json::json!([1]));
    let through_2 = Manager {
        registry: c.registries[1].clone(),
        data_dir: c.manager.data_dir.clone(),
        token: None,
    };
    through_2.manage(&[
        "device",
        "update",
        "plant",
        "press-1",
        "--json",
        r#"{"enabled": false}"#,
    ]);
    let disabled_at = Instant::now();
    let dropped = device.expect("disconnected", Duration::from_secs(5));
    let after = disabled_at.elapsed();
    assert!(
        after < Duration::from_secs(1),
        "cut off after {after:?} ({dropped})"
    );
}

#[test]
fn another_tenants_application_gets_nothing_in_cluster_mode() {
    let c = Cluster::up(None);
    plant(&c);
    c.tenant("other");
    c.application("spy", "pw-spy", &["other"]);
    let spy = proton_app(&[
        "consume",
        &c.amqp_url(1, "spy", "pw-spy"),
        "telemetry/plant",
        "1",
        "5",
    ]);
    let refused = spy.expect("link_error", WAIT);
    assert_eq!(refused, "amqp:unauthorized-access", "{}", spy.log());
}

/// The presence API in cluster mode: the adapters and routers keep presence in NATS, the registry reads
/// it there, so it follows a paho device on adapter 2 and survives both routers being killed.
#[test]
fn presence_is_kept_in_nats_and_survives_losing_every_router() {
    let c = Cluster::up(None);
    plant(&c);
    let token = admin_token(&c);
    let presence = || -> Value {
        let r = curl(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{}/v1/devices/plant/press-1/presence", c.registry),
        ]);
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).expect("JSON")
    };
    let becomes = |want: bool| -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let p = presence();
            if p["connected"] == want {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "presence did not become connected={want}: {p}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(presence()["connected"], false);

    let mut device = paho_device(
        "commands",
        c.mqtt[1],
        &["press1@plant", "pw-press", "nothing/to/see", "60"],
    );
    device.expect("connected", WAIT);
    let online = becomes(true);
    assert_eq!(online["adapter"], "hono-mqtt", "{online}");
    assert!(online["since"].is_string(), "{online}");

    // The tenant's figures (docs/console.md): gathered from every adapter and router over NATS, the
    // connected devices from presence.
    let stats = stats(&c);
    assert_eq!(stats["source"], "cluster", "{stats}");
    assert_eq!(stats["connected-devices"], 1, "{stats}");
    assert_eq!(stats["connections"], 1, "adapter 2's connection: {stats}");

    // Every router goes: nothing they held was presence.
    c.kill9("router-1");
    c.kill9("router-2");
    let still = presence();
    assert_eq!(still["connected"], true, "{still}");
    assert_eq!(still["since"], online["since"], "{still}");

    device.kill();
    let offline = becomes(false);
    assert!(offline["disconnected-at"].is_string(), "{offline}");
}

/// A tenant's own `max-stored-events` is its event stream's limit: past it the device hears 503 and
/// nothing stored is dropped; raised through the management API, it takes effect at the next event.
/// Another tenant keeps the default.
#[test]
fn a_tenants_max_stored_events_limits_its_event_stream() {
    let c = Cluster::up(None);
    let limit = |n: u32| format!("{{\"resource-limits\": {{\"max-stored-events\": {n}}}}}");
    c.manage(&["tenant", "create", "plant", "--json", &limit(2)]);
    c.device_with_password("plant", "press-1", "press1", "pw-press");
    c.application("ops", "pw-ops", &["plant"]);
    c.tenant("mill");
    c.device_with_password("mill", "saw-1", "saw1", "pw-saw");
    // An application comes first, as they usually do: its router makes the tenant's stream (with the
    // defaults, routers know no tenant's limits), which the adapter then brings to the tenant's.
    let early = attached(proton_app(&[
        "consume",
        &c.amqp_url(1, "ops", "pw-ops"),
        "event/plant",
        "1",
        "1",
    ]));
    drop(early);
    let event = |login: &str, seq: u32| {
        curl(&[
            "-u",
            login,
            "-H",
            "content-type: application/json",
            "-d",
            &format!("{{\"seq\": {seq}}}"),
            &c.http_url("/event"),
        ])
        .status
    };
    assert_eq!(event("press1@plant:pw-press", 0), 202);
    assert_eq!(event("press1@plant:pw-press", 1), 202);
    assert_eq!(
        event("press1@plant:pw-press", 2),
        503,
        "a third event was stored past max-stored-events 2"
    );
    for seq in 0..4 {
        assert_eq!(event("saw1@mill:pw-saw", seq), 202, "mill has the default");
    }
    c.manage(&["tenant", "update", "plant", "--json", &limit(3)]);
    // The adapters learn the change from the registry's change stream.
    let deadline = Instant::now() + WAIT;
    while event("press1@plant:pw-press", 2) != 202 {
        assert!(Instant::now() < deadline, "the raised limit never held");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(event("press1@plant:pw-press", 3), 503, "3 is the new limit");
    let app = attached(proton_app(&[
        "consume",
        &c.amqp_url(0, "ops", "pw-ops"),
        "event/plant",
        "3",
        "20",
    ]));
    assert_eq!(
        seqs(&app.messages(3, WAIT)),
        [0, 1, 2],
        "every accepted event"
    );
}
