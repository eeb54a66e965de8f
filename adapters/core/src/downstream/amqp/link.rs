//! One sender link to the router, owned by one task and fed through a channel.
//!
//! fe2o3's `Sender` needs `&mut` to send, and an outcome may take a while (an event is accepted once it
//! is on disk). So the link's task only writes transfers: for each job it waits for credit (bounded by the
//! job's wait: short for pre-settled messages, which are shed under load, longer for unsettled ones, since
//! the router answers a message without consumer with `released` at once) and hands the
//! delivery future back to the caller, who awaits the outcome on its own. Many deliveries are thus in
//! flight at once, and no lock is held while anyone waits.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use fe2o3_amqp::link::delivery::DeliveryFut;
use fe2o3_amqp::link::SendError;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::messaging::{Data, Outcome};
use fe2o3_amqp::Sendable;
use fe2o3_amqp::Sender;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::SessionSlot;
use crate::downstream::DownstreamError;

/// What a job's caller gets back: the future of the router's outcome.
pub(crate) type Delivery = DeliveryFut<Result<Outcome, SendError>>;

/// A message to send and where to report.
pub(crate) struct Job {
    pub(crate) sendable: Sendable<Data>,
    /// Give up waiting for credit at this moment.
    pub(crate) deadline: Instant,
    /// How long it may wait for credit once its turn comes while credit flows.
    pub(crate) wait: Duration,
    pub(crate) reply: oneshot::Sender<Result<Delivery, DownstreamError>>,
}

/// How to attach the link.
pub(crate) struct LinkSpec {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) settle_mode: SenderSettleMode,
    /// Granted to the first jobs on top of their own deadline: they waited for the attach, not for
    /// credit.
    pub(crate) grace: Duration,
    pub(crate) attach_timeout: Duration,
}

/// Attaches the link on `session` and sends the jobs of `rx` until the link or the session fails, or
/// every sender of `rx` is gone. `on_exit` runs before the remaining jobs are failed, so new jobs go to a
/// fresh link instead of this dying one.
pub(crate) async fn run(
    session: std::sync::Arc<SessionSlot>,
    spec: LinkSpec,
    mut rx: mpsc::Receiver<Job>,
    stall: std::sync::Arc<Stall>,
    on_exit: impl FnOnce(),
) {
    let attach = async {
        let mut handle = session.handle.lock().await;
        Sender::builder()
            .name(spec.name.as_str())
            .target(spec.address.as_str())
            .sender_settle_mode(spec.settle_mode)
            .attach(&mut *handle)
            .await
            .map_err(|e| e.to_string())
    };
    // Bounded, because the session lock is held meanwhile and other links wait for it.
    let attached = tokio::time::timeout(spec.attach_timeout, attach)
        .await
        .unwrap_or_else(|_| Err("attach timed out".to_owned()));
    let mut sender = match attached {
        Ok(s) => s,
        Err(reason) => {
            tracing::debug!(address = %spec.address, %reason, "router refused a sender link");
            on_exit();
            rx.close();
            while let Ok(job) = rx.try_recv() {
                let _ = job.reply.send(Err(DownstreamError::LinkRefused {
                    address: spec.address.clone(),
                    reason: reason.clone(),
                }));
            }
            return;
        }
    };
    let ready_by = Instant::now() + spec.grace;
    let mut failed = false;
    // Whether the last job found credit. While credit flows, a job's wait is counted from when its
    // turn comes, not from when it was queued: time spent behind other messages on a busy link is not
    // "no consumer", and must not fail a QoS 1 message (which would disconnect its device). Once a job
    // waited its whole wait in vain, the jobs behind it keep their own deadlines, so a link without
    // credit fails its queue within about one wait instead of one per job.
    let mut credit_flows = false;
    while let Some(job) = next_job(&mut rx).await {
        let deadline = if credit_flows {
            job.deadline.max(Instant::now() + job.wait)
        } else {
            job.deadline.max(ready_by)
        };
        // `send_batchable` is cancel-safe: a timed-out job was never written. With credit, it is ready
        // at the first poll and needs no timer; without, the link is marked stalled while it waits.
        let send = sender.send_batchable(job.sendable);
        tokio::pin!(send);
        let first = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
        let sent = match first {
            Poll::Ready(sent) => Ok(sent),
            Poll::Pending => {
                stall.begin();
                let sent = tokio::time::timeout_at(deadline, send).await;
                stall.end();
                sent
            }
        };
        match sent {
            Err(_) => {
                credit_flows = false;
                let _ = job.reply.send(Err(DownstreamError::NoCredit));
            }
            Ok(Ok(delivery)) => {
                credit_flows = true;
                let _ = job.reply.send(Ok(delivery));
            }
            Ok(Err(e)) => {
                tracing::debug!(address = %spec.address, error = %e, "sender link failed");
                let _ = job.reply.send(Err(DownstreamError::Disconnected));
                failed = true;
                break;
            }
        }
    }
    on_exit();
    rx.close();
    while let Ok(job) = rx.try_recv() {
        let _ = job.reply.send(Err(DownstreamError::Disconnected));
    }
    if !failed {
        let _ = tokio::time::timeout(Duration::from_secs(1), sender.close()).await;
    }
}

/// Since when a link's task has been waiting for credit: read by the callers that find the link's queue
/// full, to tell a stalled link (shed pre-settled telemetry at once) from a busy one (wait for room).
#[derive(Debug)]
pub(crate) struct Stall {
    base: std::time::Instant,
    /// Milliseconds after `base` at which the wait began, plus one; 0 while the link is not waiting.
    since: AtomicU64,
}

impl Default for Stall {
    fn default() -> Self {
        Self {
            base: std::time::Instant::now(),
            since: AtomicU64::new(0),
        }
    }
}

impl Stall {
    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn begin(&self) {
        self.since.store(self.now(), Ordering::Relaxed);
    }

    fn end(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    /// Whether the link has been waiting for credit for longer than `d`.
    pub(crate) fn longer_than(&self, d: Duration) -> bool {
        match self.since.load(Ordering::Relaxed) {
            0 => false,
            since => {
                let waited = self.now().saturating_sub(since);
                u128::from(waited) > d.as_millis()
            }
        }
    }
}

/// The next job of `rx`. When the queue had run dry, the job that arrives first waits one yield to the
/// runtime before it is sent: the sessions woken with this task (MQTT connections whose packets arrived
/// in the same poll of the reactor) queue their messages meanwhile, and the link sends them back to back,
/// so they leave in one write and cost the router one wake-up. Without it, tokio runs a task woken by a
/// message right after the task that woke it, and every message went through the link, fe2o3's session
/// and connection tasks and the socket on its own (bench/REPORT.md, "Where the device path's regression
/// comes from"). At rest the runtime is idle and the yield costs one more poll.
async fn next_job<T>(rx: &mut mpsc::Receiver<T>) -> Option<T> {
    match rx.try_recv() {
        Ok(job) => Some(job),
        Err(mpsc::error::TryRecvError::Disconnected) => None,
        Err(mpsc::error::TryRecvError::Empty) => {
            let job = rx.recv().await?;
            tokio::task::yield_now().await;
            Some(job)
        }
    }
}

#[cfg(test)]
mod tests;
