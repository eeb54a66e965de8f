//! The closed-loop HTTP load generator of every HTTP scenario (B5 registry lookups, B8 device POSTs): C
//! keep-alive connections, one request in flight on each, for a warm-up and then a measured window.
//!
//! Every connection is its own task with its own tally, merged only at the end, so the generator shares
//! nothing per request. A request counts toward the rate and the latencies when it both starts and
//! completes inside the window and is answered with the expected status; the caller samples CPU time at
//! the window's edges ([`Running`]). Any other answer, and any transport failure, is an error, whether in
//! the warm-up or the window; a broken connection is replaced.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use tokio::task::JoinSet;

use crate::client::{Base, Conn};

/// One request, ready to be sent again and again.
#[derive(Debug, Clone)]
pub struct Template {
    pub method: Method,
    pub uri: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Template {
    /// A request to a server described by `base` (its `Host` and `Authorization`), with
    /// `Content-Type: application/json` when there is a body.
    pub fn for_base(base: &Base, method: Method, uri: Uri, body: Bytes) -> Self {
        let mut headers = vec![
            (header::HOST, base.host.clone()),
            (header::AUTHORIZATION, base.authorization.clone()),
        ];
        if !body.is_empty() {
            headers.push((
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ));
        }
        Self {
            method,
            uri,
            headers,
            body,
        }
    }

    pub fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        for (name, value) in &self.headers {
            h.insert(name.clone(), value.clone());
        }
        req
    }
}

/// `Authorization: Basic` for `user:password`.
pub fn basic_auth(user: &str, password: &str) -> anyhow::Result<HeaderValue> {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    Ok(HeaderValue::from_str(&format!("Basic {token}"))?)
}

/// Which templates a connection sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Every connection walks through all templates, each from its own offset, so that they do not all
    /// ask for the same rows at once (registry lookups).
    All,
    /// Connection `k` repeats template `k % len` (one device per connection).
    PerConnection,
}

/// What to send, where, and what answer counts.
#[derive(Debug)]
pub struct Workload {
    pub addr: SocketAddr,
    pub templates: Vec<Template>,
    pub rotation: Rotation,
    pub expect: StatusCode,
}

/// How hard and how long.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What the clients saw in one run.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Expected answers inside the window.
    pub ok: u64,
    /// Expected answers in all, warm-up and stragglers included (what a consumer must receive).
    pub ok_total: u64,
    /// Other answers and transport errors, warm-up included.
    pub errors: u64,
    /// The first error seen, to say what went wrong.
    pub first_error: Option<String>,
    pub window: Duration,
    /// Latencies of the counted requests, in µs, sorted.
    pub latencies_us: Vec<u32>,
}

impl Counts {
    /// Expected answers per second of window.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0 < q ≤ 1) by nearest rank, in ms.
    pub fn latency_ms(&self, q: f64) -> f64 {
        f64::from(percentile(&self.latencies_us, q)) / 1000.0
    }

    /// `cpu` spread over the counted requests, in µs per request.
    pub fn us_per_request(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / (self.ok.max(1) as f64)
    }
}

/// Nearest-rank percentile of sorted values; 0 when there are none.
pub fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Default)]
struct Tally {
    ok: u64,
    ok_total: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

impl Tally {
    fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }
}

/// A run under way: the clients are busy; the caller waits for the window's edges to sample what it
/// wants to charge to the window (CPU time of the server, of the database, of the generator).
pub struct Running {
    tasks: JoinSet<Tally>,
    t0: Instant,
    t1: Instant,
    window: Duration,
}

/// Opens the connections, then starts the clients: warm-up first, then the measured window.
pub async fn start(workload: Arc<Workload>, shape: Shape) -> anyhow::Result<Running> {
    anyhow::ensure!(!workload.templates.is_empty(), "nothing to request");
    anyhow::ensure!(shape.connections > 0, "at least one connection is needed");
    // Connection setup belongs to no phase: open all first, then start the clock.
    let mut conns = Vec::with_capacity(shape.connections);
    for _ in 0..shape.connections {
        conns.push(Conn::open(workload.addr).await?);
    }
    let t0 = Instant::now() + shape.warmup;
    let t1 = t0 + shape.duration;
    let n = workload.templates.len();
    let mut tasks = JoinSet::new();
    for (k, conn) in conns.into_iter().enumerate() {
        let first = match workload.rotation {
            Rotation::All => k * n / shape.connections,
            Rotation::PerConnection => k % n,
        };
        tasks.spawn(client(workload.clone(), conn, first, t0, t1));
    }
    Ok(Running {
        tasks,
        t0,
        t1,
        window: shape.duration,
    })
}

impl Running {
    /// Returns when the warm-up is over and the window opens.
    pub async fn window_start(&self) {
        tokio::time::sleep_until(self.t0.into()).await;
    }

    /// Returns when the window closes.
    pub async fn window_end(&self) {
        tokio::time::sleep_until(self.t1.into()).await;
    }

    /// Waits for the clients (each finishes its request in flight) and merges what they counted.
    pub async fn finish(mut self) -> anyhow::Result<Counts> {
        let mut total = Tally::default();
        while let Some(joined) = self.tasks.join_next().await {
            let t = joined?;
            total.ok += t.ok;
            total.ok_total += t.ok_total;
            total.errors += t.errors;
            if total.first_error.is_none() {
                total.first_error = t.first_error;
            }
            total.latencies_us.extend_from_slice(&t.latencies_us);
        }
        total.latencies_us.sort_unstable();
        Ok(Counts {
            ok: total.ok,
            ok_total: total.ok_total,
            errors: total.errors,
            first_error: total.first_error,
            window: self.window,
            latencies_us: total.latencies_us,
        })
    }
}

async fn client(
    workload: Arc<Workload>,
    mut conn: Conn,
    first: usize,
    t0: Instant,
    t1: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut i = first;
    loop {
        let started = Instant::now();
        if started >= t1 {
            break;
        }
        let template = &workload.templates[i];
        if workload.rotation == Rotation::All {
            i = (i + 1) % workload.templates.len();
        }
        match conn.status(template.request()).await {
            Ok(status) if status == workload.expect => {
                tally.ok_total += 1;
                let done = Instant::now();
                if started >= t0 && done <= t1 {
                    tally.ok += 1;
                    let us = done.duration_since(started).as_micros();
                    tally
                        .latencies_us
                        .push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
            Ok(status) => tally.error(|| format!("HTTP {status} for {}", template.uri)),
            Err(e) => {
                tally.error(|| format!("transport: {e}"));
                match Conn::open(workload.addr).await {
                    Ok(fresh) => conn = fresh,
                    Err(e) => {
                        tally.error(|| format!("reconnecting: {e:#}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn basic_auth_is_rfc7617() {
        // RFC 7617's example.
        let h = basic_auth("Aladdin", "open sesame").expect("header");
        assert_eq!(h, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
    }

    #[test]
    fn rates_count_the_window_only() {
        let c = Counts {
            ok: 500,
            ok_total: 900,
            window: Duration::from_secs(5),
            latencies_us: vec![100, 200, 300, 400],
            ..Counts::default()
        };
        assert!((c.rate() - 100.0).abs() < 1e-9);
        assert!((c.latency_ms(0.5) - 0.2).abs() < 1e-9);
        assert!((c.latency_ms(0.99) - 0.4).abs() < 1e-9);
    }
}
