//! A tenant's figures for the console's charts in cluster mode (docs/console.md "Charts").
//!
//! The adapters and routers count per tenant in their own processes (`/metrics`). The registry asks them
//! all at once: a request on [`STATS`] whose payload is the tenant id, answered by every component (a plain
//! subscription, no queue group) with the lines of its metrics text that name the tenant. The registry
//! gathers the answers that come within a short window ([`gather`]) and sums them as it sums its own
//! process's metrics under `ferry up`. Nothing is sent while no console asks; a component encodes its
//! metrics at most every [`ENCODE_EVERY`], however often it is asked.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_core::ids::TenantId;
use ferry_core::shutdown::Shutdown;
use futures_util::StreamExt;

use crate::Error;

/// The subject of stats requests (payload: a tenant id).
pub const STATS: &str = "ferry.stats";
/// Most bytes of one component's answer.
pub const MAX_ANSWER: usize = 64 * 1024;
/// Most answers gathered for one request (components of one installation).
pub const MAX_ANSWERS: usize = 256;
/// How long the registry waits for answers.
pub const GATHER_WINDOW: Duration = Duration::from_millis(300);
/// A component's metrics are encoded at most this often for stats requests.
pub const ENCODE_EVERY: Duration = Duration::from_millis(500);

/// The lines of a Prometheus / OpenMetrics text that carry `tenant="TENANT"` (exactly), at most
/// [`MAX_ANSWER`] bytes of them.
pub fn tenant_lines(text: &str, tenant: &str) -> String {
    let (first, later) = (
        format!("{{tenant=\"{tenant}\""),
        format!(",tenant=\"{tenant}\""),
    );
    let mut out = String::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && (l.contains(&first) || l.contains(&later)))
    {
        if out.len() + line.len() + 1 > MAX_ANSWER {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Answers stats requests with the tenant's lines of `encode()` (the component's metrics text) until
/// `shutdown`. Resubscribes by itself across reconnects (the client does).
pub async fn serve<F>(client: async_nats::Client, encode: F, shutdown: Shutdown)
where
    F: Fn() -> String + Send + 'static,
{
    let mut requests = match client.subscribe(STATS).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot answer the console's stats requests");
            return;
        }
    };
    let mut cached: Option<(Instant, String)> = None;
    loop {
        let msg = tokio::select! {
            m = requests.next() => match m { Some(m) => m, None => return },
            () = shutdown.clone().wait() => return,
        };
        let Some(reply) = msg.reply else { continue };
        let Some(tenant) = std::str::from_utf8(&msg.payload)
            .ok()
            .and_then(|t| TenantId::new(t).ok())
        else {
            continue;
        };
        let fresh = cached
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < ENCODE_EVERY);
        if !fresh {
            cached = Some((Instant::now(), encode()));
        }
        let text = cached.as_ref().map_or("", |(_, t)| t.as_str());
        let answer = Bytes::from(tenant_lines(text, tenant.as_str()));
        if let Err(e) = client.publish(reply, answer).await {
            tracing::debug!(error = %e, "cannot answer a stats request");
        }
    }
}

/// Asks every component for `tenant`'s lines and returns what came within `window`, concatenated, with
/// the number of answers.
pub async fn gather(
    client: &async_nats::Client,
    tenant: &TenantId,
    window: Duration,
) -> Result<(String, usize), Error> {
    let fail = |e: &dyn std::fmt::Display| Error::RoundTrip(e.to_string());
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| fail(&e))?;
    client
        .publish_with_reply(
            STATS,
            inbox,
            Bytes::copy_from_slice(tenant.as_str().as_bytes()),
        )
        .await
        .map_err(|e| fail(&e))?;
    client.flush().await.map_err(|e| fail(&e))?;
    let deadline = tokio::time::Instant::now() + window;
    let (mut text, mut n) = (String::new(), 0);
    while n < MAX_ANSWERS {
        match tokio::time::timeout_at(deadline, answers.next()).await {
            Ok(Some(m)) => {
                if m.payload.len() <= MAX_ANSWER {
                    text.push_str(&String::from_utf8_lossy(&m.payload));
                    n += 1;
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = answers.unsubscribe().await;
    Ok((text, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tenants_own_lines_are_answered() {
        let text = "# HELP x y\n\
            a_total{tenant=\"t1\",type=\"telemetry\"} 3\n\
            a_total{tenant=\"t10\",type=\"telemetry\"} 9\n\
            a_total{othertenant=\"t1\",tenant=\"t2\"} 5\n\
            b{tenant=\"t1\"} 1\n";
        assert_eq!(
            tenant_lines(text, "t1"),
            "a_total{tenant=\"t1\",type=\"telemetry\"} 3\nb{tenant=\"t1\"} 1\n"
        );
        let big: String = (0..10_000)
            .map(|i| format!("c{{tenant=\"t1\",n=\"{i}\"}} 1\n"))
            .collect();
        assert!(tenant_lines(&big, "t1").len() <= MAX_ANSWER);
    }
}
