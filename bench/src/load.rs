//! The closed-loop HTTP load generator: C connections, one request in flight on each, for a warm-up and
//! then a measured window.
//!
//! Every connection is its own task with its own tally, merged only at the end, so the generator shares
//! nothing per request. A request counts toward the rate and the latencies when it both starts and
//! completes inside the window; the caller samples CPU time at the window's edges ([`Running`]). Any
//! answer other than 200, and any transport failure, is an error, whether in the warm-up or the window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use tokio::task::JoinSet;

use crate::client::{Base, Conn};

/// What to send: one request per entry of `uris`, in turn.
#[derive(Debug)]
pub struct Workload {
    pub base: Base,
    pub method: Method,
    pub uris: Vec<Uri>,
}

/// How hard and how long.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What the clients saw in one run.
#[derive(Debug, Clone)]
pub struct Counts {
    /// 200 answers inside the window.
    pub ok: u64,
    /// Non-200 answers and transport errors, warm-up included.
    pub errors: u64,
    /// The first error seen, to say what went wrong.
    pub first_error: Option<String>,
    pub window: Duration,
    /// Latencies of the counted requests, in µs, sorted.
    pub latencies_us: Vec<u32>,
}

impl Counts {
    /// 200 answers per second of window.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
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
    anyhow::ensure!(!workload.uris.is_empty(), "nothing to request");
    anyhow::ensure!(shape.connections > 0, "at least one connection is needed");
    // Connection setup belongs to no phase: open all first, then start the clock.
    let mut conns = Vec::with_capacity(shape.connections);
    for _ in 0..shape.connections {
        conns.push(Conn::open(workload.base.addr).await?);
    }
    let t0 = Instant::now() + shape.warmup;
    let t1 = t0 + shape.duration;
    let n = workload.uris.len();
    let mut tasks = JoinSet::new();
    for (k, conn) in conns.into_iter().enumerate() {
        // Spread the clients over the keys so that they do not all ask for the same rows at once.
        tasks.spawn(client(
            workload.clone(),
            conn,
            k * n / shape.connections,
            t0,
            t1,
        ));
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
            total.errors += t.errors;
            if total.first_error.is_none() {
                total.first_error = t.first_error;
            }
            total.latencies_us.extend_from_slice(&t.latencies_us);
        }
        total.latencies_us.sort_unstable();
        Ok(Counts {
            ok: total.ok,
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
        let uri = &workload.uris[i];
        i = (i + 1) % workload.uris.len();
        let req = workload
            .base
            .request(workload.method.clone(), uri.clone(), Bytes::new());
        match conn.status(req).await {
            Ok(StatusCode::OK) => {
                let done = Instant::now();
                if started >= t0 && done <= t1 {
                    tally.ok += 1;
                    let us = done.duration_since(started).as_micros();
                    tally
                        .latencies_us
                        .push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
            Ok(status) => tally.error(|| format!("HTTP {status} for {uri}")),
            Err(e) => {
                tally.error(|| format!("transport: {e}"));
                match Conn::open(workload.base.addr).await {
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
}
