//! B8's load generator: C keep-alive HTTP/1.1 connections (hyper client, `TCP_NODELAY`), each a task with
//! one `POST` in flight (closed loop), each connection authenticated as its own device. A request counts
//! toward the rate and the latencies when it starts and completes inside the window and is answered with
//! the expected status; any other answer or a transport failure, warm-up included, is an error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use tokio::task::JoinSet;

use crate::client::Conn;
use crate::load::percentile;

/// The request each connection repeats.
#[derive(Debug, Clone)]
pub struct Template {
    pub uri: Uri,
    pub host: HeaderValue,
    pub authorization: HeaderValue,
    pub content_type: HeaderValue,
    pub body: Bytes,
}

impl Template {
    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        h.insert(header::AUTHORIZATION, self.authorization.clone());
        h.insert(header::CONTENT_TYPE, self.content_type.clone());
        req
    }
}

/// `Authorization: Basic` for `user:password`.
pub fn basic_auth(user: &str, password: &str) -> anyhow::Result<HeaderValue> {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    Ok(HeaderValue::from_str(&format!("Basic {token}"))?)
}

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
    /// Expected answers in all, warm-up and stragglers included (what the consumer must receive).
    pub ok_total: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub window: Duration,
    /// Latencies of the counted requests, µs, sorted.
    pub latencies_us: Vec<u32>,
}

impl Counts {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64().max(1e-9)
    }

    pub fn latency_ms(&self, q: f64) -> f64 {
        f64::from(percentile(&self.latencies_us, q)) / 1000.0
    }
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

/// A run under way.
pub struct Running {
    tasks: JoinSet<Tally>,
    t0: Instant,
    t1: Instant,
    window: Duration,
}

/// Opens the connections (connection `k` sends `templates[k % len]`), then starts the clients.
pub async fn start(
    addr: SocketAddr,
    templates: Arc<Vec<Template>>,
    expect: StatusCode,
    shape: Shape,
) -> anyhow::Result<Running> {
    anyhow::ensure!(!templates.is_empty(), "nothing to send");
    anyhow::ensure!(shape.connections > 0, "at least one connection is needed");
    let mut conns = Vec::with_capacity(shape.connections);
    for _ in 0..shape.connections {
        conns.push(Conn::open(addr).await?);
    }
    let t0 = Instant::now() + shape.warmup;
    let t1 = t0 + shape.duration;
    let mut tasks = JoinSet::new();
    for (k, conn) in conns.into_iter().enumerate() {
        let template = templates[k % templates.len()].clone();
        tasks.spawn(client(template, conn, expect, t0, t1));
    }
    Ok(Running {
        tasks,
        t0,
        t1,
        window: shape.duration,
    })
}

impl Running {
    pub async fn window_start(&self) {
        tokio::time::sleep_until(self.t0.into()).await;
    }

    pub async fn window_end(&self) {
        tokio::time::sleep_until(self.t1.into()).await;
    }

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
    template: Template,
    mut conn: Conn,
    expect: StatusCode,
    t0: Instant,
    t1: Instant,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let start = Instant::now();
        if start >= t1 {
            break;
        }
        match conn.status(template.request()).await {
            Ok(status) if status == expect => {
                tally.ok_total += 1;
                let end = Instant::now();
                if start >= t0 && end <= t1 {
                    tally.ok += 1;
                    let us = end.duration_since(start).as_micros();
                    tally
                        .latencies_us
                        .push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
            Ok(status) => tally.error(|| format!("HTTP {status}")),
            Err(e) => {
                tally.error(|| format!("transport: {e}"));
                // A broken connection cannot be reused: this client stops.
                break;
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

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
