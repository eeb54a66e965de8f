//! `GET /v1/stats/{tenant}` (docs/console.md): one tenant's figures from the metrics the registry shares
//! with the adapters and the router under `ferry up`, admin token only, each tenant under its own path.
//! The metric families are registered here under the adapters' and the router's names and labels; the
//! console's browser story (e2e/tests/stories/console.rs) reads them from the real ones.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::admin::Admin;
use ferry_core::console::{
    MemoryPresence, PresenceChange, PresenceStore, PresenceUpdate, RouterBridge,
};
use ferry_core::ids::{DeviceId, TenantId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::*;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn telemetry(tenant: &str, kind: &str, status: &str, adapter: &str) -> Labels {
    labels(&[
        ("component_type", "adapter"),
        ("component_name", adapter),
        ("tenant", tenant),
        ("type", kind),
        ("status", status),
        ("qos", "1"),
        ("ttd", "none"),
    ])
}

struct Process {
    registry: Registry,
    messages: Family<Labels, Counter>,
}

/// A registry with a bridge and the adapters' and router's families in its `Admin`, tenants t1 and
/// t2, and some traffic: t1 has 3 + 4 telemetry forwarded (two adapters), 2 events undeliverable, 2
/// connections and one device present; t2 has 100 telemetry forwarded and 7 connections.
async fn process() -> Process {
    let admin = Admin::new();
    let messages: Family<Labels, Counter> = Family::default();
    let connections: Family<Labels, Gauge> = Family::default();
    let router: Family<Labels, Counter> = Family::default();
    let depth: Family<Labels, Gauge> = Family::default();
    admin.register("hono_telemetry_processing", "test", messages.clone());
    admin.register(
        "hono_connections_authenticated",
        "test",
        connections.clone(),
    );
    admin.register("ferry_router_messages", "test", router.clone());
    admin.register("ferry_router_event_store_depth", "test", depth.clone());
    messages
        .get_or_create(&telemetry("t1", "telemetry", "forwarded", "hono-mqtt"))
        .inc_by(3);
    messages
        .get_or_create(&telemetry("t1", "telemetry", "forwarded", "hono-http"))
        .inc_by(4);
    messages
        .get_or_create(&telemetry("t1", "event", "undeliverable", "hono-mqtt"))
        .inc_by(2);
    messages
        .get_or_create(&telemetry("t2", "telemetry", "forwarded", "hono-mqtt"))
        .inc_by(100);
    let adapter = |t: &str| {
        labels(&[
            ("component_type", "adapter"),
            ("component_name", "hono-mqtt"),
            ("tenant", t),
        ])
    };
    connections.get_or_create(&adapter("t1")).set(2);
    connections.get_or_create(&adapter("t2")).set(7);
    router
        .get_or_create(&labels(&[
            ("tenant", "t1"),
            ("type", "event"),
            ("outcome", "stored"),
        ]))
        .inc_by(5);
    depth.get_or_create(&labels(&[("tenant", "t1")])).set(4);

    let presence = Arc::new(MemoryPresence::default());
    presence.record(PresenceUpdate {
        tenant: TenantId::new("t1").expect("id"),
        device: DeviceId::new("d1").expect("id"),
        change: PresenceChange::Connected {
            adapter: "hono-mqtt".into(),
            gateway: None,
            remote_id: None,
            until: None,
            connection: None,
        },
        at: ferry_core::console::unix_now(),
    });
    let registry = Registry::with_bridge(admin, RouterBridge::new(presence)).await;
    registry.tenant("t1", json!({})).await;
    registry.tenant("t2", json!({})).await;
    Process { registry, messages }
}

fn counts(body: &Value) -> Value {
    json!({
        "connections": body["connections"],
        "connected-devices": body["connected-devices"],
        "telemetry": body["telemetry"],
        "event": body["event"],
        "stored-events": body["stored-events"],
        "router-event-stored": body["router"]["event"]["stored"],
    })
}

#[tokio::test]
async fn a_tenants_figures_from_the_shared_metrics_under_its_own_path_only() {
    let p = process().await;
    let r = &p.registry;

    let a = r.get("/v1/stats/t1").await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["tenant"], "t1");
    assert_eq!(a.body["source"], "process");
    assert!(
        a.body["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{}",
        a.body
    );
    assert_eq!(
        counts(&a.body),
        json!({
            "connections": 2,
            "connected-devices": 1,
            "telemetry": { "forwarded": 7, "undeliverable": 0, "unprocessable": 0 },
            "event": { "forwarded": 0, "undeliverable": 2, "unprocessable": 0 },
            "stored-events": 4,
            "router-event-stored": 5,
        })
    );

    // t2 sees its own figures, none of t1's.
    let a = r.get("/v1/stats/t2").await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(
        counts(&a.body),
        json!({
            "connections": 7,
            "connected-devices": 0,
            "telemetry": { "forwarded": 100, "undeliverable": 0, "unprocessable": 0 },
            "event": { "forwarded": 0, "undeliverable": 0, "unprocessable": 0 },
            "stored-events": 0,
            "router-event-stored": 0,
        })
    );

    // The counters are read live (a snapshot serves for under a second).
    p.messages
        .get_or_create(&telemetry("t1", "telemetry", "unprocessable", "hono-mqtt"))
        .inc_by(9);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let a = r.get("/v1/stats/t1").await;
    assert_eq!(a.body["telemetry"]["unprocessable"], 9, "{}", a.body);

    // Unknown tenant 404, a bad id 400.
    let a = r.get("/v1/stats/nobody").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{:?}", a.body);
    let a = r.get("/v1/stats/bad%20id").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);

    // Only the admin token.
    for token in [None, Some("wrong"), Some(INTERNAL)] {
        let a = r
            .call_with(Method::GET, "/v1/stats/t1", token, None, None)
            .await;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "{token:?}: {:?}",
            a.body
        );
        assert!(a.body.get("telemetry").is_none(), "{:?}", a.body);
    }
    p.registry.stop().await;
}

#[tokio::test]
async fn without_the_adapters_in_the_process_the_figures_are_not_available() {
    let r = Registry::sqlite().await;
    r.tenant("t1", json!({})).await;
    let a = r.get("/v1/stats/t1").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", a.body);
    assert!(a.error().contains("ferry up"), "{:?}", a.body);
    // The tenant is checked first, and the token before anything.
    let a = r.get("/v1/stats/nobody").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{:?}", a.body);
    let a = r
        .call_with(Method::GET, "/v1/stats/t1", Some(INTERNAL), None, None)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{:?}", a.body);
    r.stop().await;
}
