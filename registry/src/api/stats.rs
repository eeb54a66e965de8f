//! `GET /v1/stats/{tenant}`: one tenant's message counters and connections, for the console's charts
//! (Ferry extension; docs/console.md).
//!
//! Under `ferry up` the adapters and the router report into the process's one Prometheus registry
//! ([`Admin`]); the registry reads the tenant's series from it ([`StatsSource`]), so the figures are the
//! ones `/metrics` shows, counted since the process started. The console polls and turns the counters
//! into rates. In cluster mode (`messaging.mode: nats`) every adapter and router answers a stats request
//! with its own lines of the tenant (`ferry_nats::stats`) and the registry sums them the same way
//! (`source: cluster`, with the number of `answers`). A registry with neither answers 503.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use ferry_core::admin::Admin;
use ferry_core::ids::TenantId;
use serde_json::{json, Value};

use super::extract::PathParams;
use super::AppState;
use crate::error::ApiError;

/// How long one read of the process's metrics serves every caller: however many consoles poll, the
/// metrics are encoded at most about once a second.
const SNAPSHOT_MAX_AGE: Duration = Duration::from_millis(900);

/// The adapters' message statuses (Hono's `status` tag).
const STATUSES: [&str; 3] = ["forwarded", "undeliverable", "unprocessable"];
/// The router's message outcomes.
const OUTCOMES: [&str; 4] = ["forwarded", "stored", "released", "rejected"];
/// The message types charted.
const TYPES: [&str; 2] = ["telemetry", "event"];

/// The `/v1` routes (behind the admin token).
pub fn routes() -> Router<AppState> {
    Router::new().route("/stats/{tenant}", get(stats))
}

/// The metrics of the process the registry shares with the adapters and the router (`ferry up`).
#[derive(Clone, Debug)]
pub struct StatsSource {
    admin: Admin,
    snapshot: Arc<Mutex<Option<Snapshot>>>,
}

#[derive(Debug)]
struct Snapshot {
    taken: Instant,
    time: DateTime<Utc>,
    text: Arc<str>,
}

impl StatsSource {
    pub fn new(admin: Admin) -> Self {
        Self {
            admin,
            snapshot: Arc::default(),
        }
    }

    /// The metrics in Prometheus text and when they were read (shared for [`SNAPSHOT_MAX_AGE`]).
    fn read(&self) -> (DateTime<Utc>, Arc<str>) {
        let mut guard = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = guard.as_ref() {
            if s.taken.elapsed() < SNAPSHOT_MAX_AGE {
                return (s.time, s.text.clone());
            }
        }
        let text: Arc<str> = self.admin.encode_metrics().into();
        let time = Utc::now();
        *guard = Some(Snapshot {
            taken: Instant::now(),
            time,
            text: text.clone(),
        });
        (time, text)
    }
}

/// One sample of the text format: `name{label="value",...} number`.
#[derive(Debug, PartialEq)]
pub(crate) struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

impl Sample<'_> {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one line of the Prometheus / OpenMetrics text format; `None` for comments, blank lines and
/// anything it does not understand (never an error: the text is our own).
pub(crate) fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Vec::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let end = loop {
            // A label name up to `="`, or the closing brace.
            let (start, c) = chars.next()?;
            if c == '}' {
                break start;
            }
            if c == ',' {
                continue;
            }
            let eq = body[start..].find("=\"")? + start;
            let key = &body[start..eq];
            // Skip to just after `="`.
            while chars.next()?.0 < eq + 1 {}
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.push((key, value));
        };
        &body[end + 1..]
    } else {
        rest
    };
    // The value, then perhaps a timestamp or an exemplar.
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The tenant's figures from the process's metrics text.
pub(crate) fn tenant_figures(text: &str, tenant: &str) -> Value {
    let needle = format!("tenant=\"{tenant}\"");
    let mut connections = 0.0;
    let mut stored_events = 0.0;
    let mut adapters: BTreeMap<&str, BTreeMap<&str, f64>> = TYPES
        .iter()
        .map(|t| (*t, STATUSES.iter().map(|s| (*s, 0.0)).collect()))
        .collect();
    let mut router: BTreeMap<&str, BTreeMap<&str, f64>> = TYPES
        .iter()
        .map(|t| (*t, OUTCOMES.iter().map(|o| (*o, 0.0)).collect()))
        .collect();
    for line in text.lines().filter(|l| l.contains(&needle)) {
        let Some(sample) = parse_line(line) else {
            continue;
        };
        if sample.label("tenant") != Some(tenant) {
            continue;
        }
        let kind = sample.label("type").unwrap_or_default();
        match sample.name {
            "hono_connections_authenticated" => connections += sample.value,
            "ferry_router_event_store_depth" => stored_events += sample.value,
            "hono_telemetry_processing_total" => {
                let status = sample.label("status").unwrap_or_default();
                if let Some(n) = adapters.get_mut(kind).and_then(|m| m.get_mut(status)) {
                    *n += sample.value;
                }
            }
            "ferry_router_messages_total" => {
                let outcome = sample.label("outcome").unwrap_or_default();
                if let Some(n) = router.get_mut(kind).and_then(|m| m.get_mut(outcome)) {
                    *n += sample.value;
                }
            }
            _ => {}
        }
    }
    // Counters are integers; f64 only because the text format says so.
    let int = |v: f64| json!(v.max(0.0).round() as u64);
    let table = |m: &BTreeMap<&str, BTreeMap<&str, f64>>, kind: &str| -> Value {
        m.get(kind).map_or(Value::Null, |inner| {
            Value::Object(
                inner
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), int(*v)))
                    .collect(),
            )
        })
    };
    json!({
        "connections": int(connections),
        "telemetry": table(&adapters, "telemetry"),
        "event": table(&adapters, "event"),
        "router": { "telemetry": table(&router, "telemetry"), "event": table(&router, "event") },
        "stored-events": int(stored_events),
    })
}

/// `GET /v1/stats/{tenant}`. Embedded (`ferry up`): `{"tenant", "time", "source": "process",
/// "connections", "connected-devices", "telemetry", "event", "router", "stored-events"}`, counters since
/// the process started. Cluster mode: the same figures summed over the adapters and routers that
/// answered within [`ferry_nats::stats::GATHER_WINDOW`], `"source": "cluster"`, `"answers"`.
async fn stats(State(s): State<AppState>, path: PathParams) -> Result<Response, ApiError> {
    let tenant = TenantId::new(path.0.first().map_or("", String::as_str))?;
    s.store.get_tenant(tenant.as_str()).await?;
    if s.stats.is_none() && s.presence.is_none() && s.cluster.is_none() {
        return Err(ApiError::NotAvailable(
            "tenant statistics need the adapters and the router in the same process (ferry up), \
             or messaging.mode nats for connected devices only"
                .into(),
        ));
    }
    let connected = match &s.presence {
        Some(p) => Some(
            p.connected(&tenant)
                .await
                .map_err(|e| ApiError::NotAvailable(e.to_string()))?
                .len(),
        ),
        None => None,
    };
    let mut body = match &s.stats {
        Some(source) => {
            let (time, text) = source.read();
            let mut figures = tenant_figures(&text, tenant.as_str());
            figures["time"] = json!(time.to_rfc3339_opts(SecondsFormat::Millis, true));
            figures["source"] = json!("process");
            figures
        }
        None => match &s.cluster {
            // Cluster mode: every adapter and router answers with its own lines of the tenant.
            Some(cluster) => {
                let time = Utc::now();
                let (text, answers) = ferry_nats::stats::gather(
                    &cluster.client,
                    &tenant,
                    ferry_nats::stats::GATHER_WINDOW,
                )
                .await
                .map_err(|e| ApiError::NotAvailable(e.to_string()))?;
                let mut figures = tenant_figures(&text, tenant.as_str());
                figures["time"] = json!(time.to_rfc3339_opts(SecondsFormat::Millis, true));
                figures["source"] = json!("cluster");
                figures["answers"] = json!(answers);
                figures
            }
            None => json!({
                "time": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
                "source": "presence",
            }),
        },
    };
    body["tenant"] = json!(tenant.as_str());
    if let Some(n) = connected {
        body["connected-devices"] = json!(n);
    }
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_labels_escapes_and_without() {
        let s = parse_line(r#"a_total{x="1",y="q\"uo\\te",z=""} 12 1700000000"#).expect("sample");
        assert_eq!(s.name, "a_total");
        assert_eq!(
            s.labels,
            vec![
                ("x", "1".to_owned()),
                ("y", "q\"uo\\te".to_owned()),
                ("z", String::new())
            ]
        );
        assert!((s.value - 12.0).abs() < f64::EPSILON);
        let s = parse_line("plain 3.5").expect("sample");
        assert_eq!((s.name, s.labels.len()), ("plain", 0));
        assert!((s.value - 3.5).abs() < f64::EPSILON);
        for junk in [
            "# HELP a b",
            "",
            "a{x=\"1\"",
            "a{x=\"1\"} nope",
            "a{x} 1",
            "lonely",
        ] {
            assert_eq!(parse_line(junk), None, "{junk}");
        }
    }

    #[test]
    fn sums_one_tenants_series_only() {
        let text = "\
# TYPE hono_telemetry_processing counter
hono_telemetry_processing_total{component_type=\"adapter\",component_name=\"hono-mqtt\",tenant=\"t1\",type=\"telemetry\",status=\"forwarded\",qos=\"0\",ttd=\"none\"} 3
hono_telemetry_processing_total{component_type=\"adapter\",component_name=\"hono-http\",tenant=\"t1\",type=\"telemetry\",status=\"forwarded\",qos=\"1\",ttd=\"none\"} 4
hono_telemetry_processing_total{component_type=\"adapter\",component_name=\"hono-mqtt\",tenant=\"t1\",type=\"event\",status=\"undeliverable\",qos=\"1\",ttd=\"none\"} 2
hono_telemetry_processing_total{component_type=\"adapter\",component_name=\"hono-mqtt\",tenant=\"t10\",type=\"telemetry\",status=\"forwarded\",qos=\"0\",ttd=\"none\"} 100
hono_telemetry_processing_total{component_type=\"adapter\",component_name=\"hono-mqtt\",othertenant=\"t1\",tenant=\"t2\",type=\"telemetry\",status=\"forwarded\",qos=\"0\",ttd=\"none\"} 100
hono_connections_authenticated{component_type=\"adapter\",component_name=\"hono-mqtt\",tenant=\"t1\"} 2
hono_connections_authenticated{component_type=\"adapter\",component_name=\"hono-mqtt\",tenant=\"t2\"} 7
ferry_router_messages_total{tenant=\"t1\",type=\"telemetry\",outcome=\"released\"} 5
ferry_router_event_store_depth{tenant=\"t1\"} 6
# EOF
";
        let f = tenant_figures(text, "t1");
        assert_eq!(f["connections"], 2, "{f}");
        assert_eq!(f["telemetry"]["forwarded"], 7, "{f}");
        assert_eq!(f["telemetry"]["undeliverable"], 0, "{f}");
        assert_eq!(f["event"]["undeliverable"], 2, "{f}");
        assert_eq!(f["router"]["telemetry"]["released"], 5, "{f}");
        assert_eq!(f["stored-events"], 6, "{f}");
        let f = tenant_figures(text, "t2");
        assert_eq!(
            (&f["connections"], &f["telemetry"]["forwarded"]),
            (&json!(7), &json!(100)),
            "{f}"
        );
        let f = tenant_figures(text, "nobody");
        assert_eq!(
            (&f["connections"], &f["telemetry"]["forwarded"]),
            (&json!(0), &json!(0))
        );
    }
}
