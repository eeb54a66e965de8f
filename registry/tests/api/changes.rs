//! The change stream (server-sent events) announces every change within a second.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both;
use crate::harness::*;

/// Reads SSE events (`event` name, `data` JSON) from a streaming response.
pub struct Events {
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Events {
    pub async fn open(r: &Registry) -> Self {
        let resp = r
            .client
            .get(format!("{}/internal/v1/changes", r.url))
            .bearer_auth(INTERNAL)
            .send()
            .await
            .expect("subscribe");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        let mut events = Self {
            stream: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        };
        let (name, _) = events.next().await;
        assert_eq!(name, "hello", "the stream opens with hello");
        events
    }

    /// The next event, waiting at most a second.
    pub async fn next(&mut self) -> (String, Value) {
        tokio::time::timeout(Duration::from_secs(1), self.next_unbounded())
            .await
            .expect("an event within a second")
    }

    async fn next_unbounded(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if data.is_empty() && name == "message" {
                    continue; // keep-alive comment
                }
                return (name, serde_json::from_str(&data).unwrap_or(Value::Null));
            }
            let chunk = self
                .stream
                .next()
                .await
                .expect("stream open")
                .expect("chunk");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

both!(
    every_kind_of_change_is_announced_within_a_second,
    |r| async move {
        let mut events = Events::open(&r).await;

        r.tenant("t1", json!({})).await;
        let (name, c) = events.next().await;
        assert_eq!(name, "change");
        assert_eq!(
            (c["kind"].as_str(), c["op"].as_str(), c["tenant"].as_str()),
            (Some("tenant"), Some("created"), Some("t1"))
        );

        r.device("t1", "d1", json!({})).await;
        let (_, c) = events.next().await;
        assert_eq!(
            (c["kind"].as_str(), c["op"].as_str(), c["device"].as_str()),
            (Some("device"), Some("created"), Some("d1"))
        );

        r.put("/v1/devices/t1/d1", &json!({ "enabled": false }))
            .await;
        let (_, c) = events.next().await;
        assert_eq!(
            (c["kind"].as_str(), c["op"].as_str()),
            (Some("device"), Some("updated"))
        );

        r.credentials(
            "t1",
            "d1",
            json!([{ "type": "psk", "auth-id": "k", "secrets": [{ "key": "AQID" }] }]),
        )
        .await;
        let (_, c) = events.next().await;
        assert_eq!(
            (c["kind"].as_str(), c["device"].as_str()),
            (Some("credentials"), Some("d1"))
        );

        r.put(
            "/v1/applications/app1",
            &json!({ "password": "pw", "tenants": ["t1"] }),
        )
        .await;
        let (_, c) = events.next().await;
        assert_eq!(
            (c["kind"].as_str(), c["name"].as_str()),
            (Some("application"), Some("app1"))
        );

        r.put("/v1/tenants/t1", &json!({ "enabled": false })).await;
        let (_, c) = events.next().await;
        assert_eq!(
            (c["kind"].as_str(), c["op"].as_str()),
            (Some("tenant"), Some("updated"))
        );

        r.delete("/v1/devices/t1/d1").await;
        let (_, c) = events.next().await;
        assert_eq!(
            (c["kind"].as_str(), c["op"].as_str()),
            (Some("device"), Some("deleted"))
        );
        let (_, c) = events.next().await;
        assert_eq!(
            (c["kind"].as_str(), c["op"].as_str()),
            (Some("credentials"), Some("deleted"))
        );

        r.delete("/v1/tenants/t1").await;
        let (_, c) = events.next().await;
        assert_eq!(
            (c["kind"].as_str(), c["op"].as_str()),
            (Some("tenant"), Some("deleted"))
        );
        let seqs_increase = c["seq"].as_u64().expect("seq") >= 9;
        assert!(seqs_increase, "{c:?}");
    }
);

both!(failed_writes_announce_nothing, |r| async move {
    let mut events = Events::open(&r).await;
    r.tenant("t1", json!({})).await;
    // On PostgreSQL changes travel by NOTIFY, after the response: take t1's before the failed writes.
    assert_eq!(events.next().await.1["tenant"], "t1");
    assert_eq!(
        r.post("/v1/tenants/t1", &json!({})).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        r.put_if("/v1/tenants/t1", &json!({}), "\"stale\"")
            .await
            .status,
        StatusCode::PRECONDITION_FAILED
    );
    r.tenant("t2", json!({})).await;
    let (_, c) = events.next().await;
    assert_eq!(
        c["tenant"], "t2",
        "the first event is the successful write: {c:?}"
    );
});

both!(change_stream_needs_a_token, |r| async move {
    let a = r
        .call_with(
            reqwest::Method::GET,
            "/internal/v1/changes",
            None,
            None,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
});

/// Two registry replicas on one PostgreSQL database (cluster mode): a change made through either
/// reaches the other's change-stream subscribers within a second, in order, and a failed write is
/// announced nowhere.
#[tokio::test]
async fn a_change_through_one_replica_reaches_every_replicas_subscribers() {
    let pg = ferry_test_support::postgres_database().await;
    let replica = || async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        config.database_url = Some(pg.url().to_owned());
        Registry::with_config(config, dir).await
    };
    let a = replica().await;
    let b = replica().await;
    let mut on_a = Events::open(&a).await;
    let mut on_b = Events::open(&b).await;

    a.tenant("t1", json!({})).await;
    a.device("t1", "d1", json!({})).await;
    b.put("/v1/devices/t1/d1", &json!({ "enabled": false }))
        .await;
    assert_eq!(
        a.post("/v1/tenants/t1", &json!({})).await.status,
        StatusCode::CONFLICT
    );
    a.delete("/v1/devices/t1/d1").await;
    for events in [&mut on_a, &mut on_b] {
        let mut seen = Vec::new();
        for _ in 0..5 {
            let (name, c) = events.next().await;
            assert_eq!(name, "change", "{c:?}");
            seen.push(format!(
                "{} {} {}",
                c["kind"].as_str().unwrap_or("?"),
                c["op"].as_str().unwrap_or("?"),
                c["device"].as_str().or(c["tenant"].as_str()).unwrap_or("?")
            ));
        }
        assert_eq!(
            seen,
            [
                "tenant created t1",
                "device created d1",
                "device updated d1",
                "device deleted d1",
                "credentials deleted d1"
            ]
        );
    }
    a.stop().await;
    b.stop().await;
}

/// A replica that loses its `LISTEN` connection may have missed changes: its subscribers are told to
/// purge everything (`reset`), and it hears the other replicas again afterwards.
#[tokio::test]
async fn a_replica_that_loses_its_listener_resets_its_subscribers_and_listens_again() {
    let pg = ferry_test_support::postgres_database().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.database_url = Some(pg.url().to_owned());
    let r = Registry::with_config(config, dir).await;
    let mut events = Events::open(&r).await;

    terminate_listener(pg.url()).await;
    let (name, _) = events.next().await;
    assert_eq!(name, "reset");

    r.tenant("t2", json!({})).await;
    let mut got = None;
    for _ in 0..3 {
        let (name, c) = events.next().await;
        if name == "change" {
            got = Some(c);
            break;
        }
    }
    let c = got.expect("a change after the listener came back");
    assert_eq!(c["tenant"], "t2");
    r.stop().await;
}

/// Ends the registry's `LISTEN` connection from the server side (as a PostgreSQL restart or a network
/// cut would), through a separate connection.
async fn terminate_listener(url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("terminate the listener");
    assert_eq!(killed, 1, "one LISTEN connection");
}
