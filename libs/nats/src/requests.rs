//! Requests whose responder reports progress ([`PROGRESS`]) while it waits for the answer, so that the
//! asker can tell a router that works slowly (an application that takes its time to settle) from one
//! that died holding the request: NATS says nothing when a responder's process goes away, and a plain
//! request would wait out the whole outcome bound (the device then hears 503 and, over MQTT, is cut
//! off). A request that hears nothing for [`QUIET`] is sent again, to whichever router NATS picks
//! (at least once: a router that died after its application accepted leaves a duplicate).
//!
//! One wildcard subscription per client carries every answer ([`Requests`]), as `async_nats`'s own
//! request multiplexer does; a request costs a map entry and a small channel, no subscription.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::{HeaderMap, Message, StatusCode, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::Error;

/// Header of a progress report: the responder still holds the request and will answer.
pub const PROGRESS: &str = "Ferry-Progress";
/// How often a responder reports progress for a request it has held at least that long.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long an asker waits without a word (answer or progress) before it sends the request again.
pub const QUIET: Duration = Duration::from_millis(1500);

type Pending = Arc<Mutex<HashMap<u64, mpsc::Sender<Message>>>>;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unanswered {
    /// Nobody subscribes to the subject.
    NoResponders,
    /// Nothing within the bound.
    TimedOut,
    /// Over the server's payload limit, or a subject the client refuses.
    Refused(String),
    /// The client could not send it.
    Failed(String),
}

/// The asking side: one inbox subscription, answers handed to the request that waits for them.
#[derive(Debug, Clone)]
pub struct Requests {
    client: async_nats::Client,
    inbox: String,
    pending: Pending,
    next: Arc<AtomicU64>,
}

impl Requests {
    /// Subscribes `client`'s inbox for answers; the subscription lives as long as the client.
    pub async fn open(client: async_nats::Client) -> Result<Self, Error> {
        let inbox = client.new_inbox();
        let mut answers = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| Error::RoundTrip(e.to_string()))?;
        let pending: Pending = Arc::default();
        let routes = pending.clone();
        tokio::spawn(async move {
            while let Some(m) = answers.next().await {
                let Some(id) = m
                    .subject
                    .rsplit_once('.')
                    .and_then(|(_, id)| id.parse::<u64>().ok())
                else {
                    continue;
                };
                let to = routes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&id)
                    .cloned();
                // A full channel means the asker is not reading (it is resending or gone): dropped.
                if let Some(to) = to {
                    let _ = to.try_send(m);
                }
            }
        });
        Ok(Self {
            client,
            inbox,
            pending,
            next: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Sends a request and waits up to `within` for its answer. With `quiet`, a request that hears
    /// nothing (no answer, no progress) for that long is sent again; without, it is sent once.
    pub async fn ask(
        &self,
        subject: Subject,
        headers: HeaderMap,
        payload: Bytes,
        quiet: Option<Duration>,
        within: Duration,
    ) -> Result<Message, Unanswered> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let (tx, mut rx) = mpsc::channel(4);
            let guard = Entry::new(&self.pending, id, tx);
            self.client
                .publish_with_reply_and_headers(
                    subject.clone(),
                    format!("{}.{id}", self.inbox),
                    headers.clone(),
                    payload.clone(),
                )
                .await
                .map_err(|e| match e.kind() {
                    async_nats::PublishErrorKind::Send => Unanswered::Failed(e.to_string()),
                    _ => Unanswered::Refused(e.to_string()),
                })?;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let wait = quiet.map_or(left, |q| q.min(left));
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(Some(m)) if m.status == Some(StatusCode::NO_RESPONDERS) => {
                        return Err(Unanswered::NoResponders)
                    }
                    Ok(Some(m)) if is_progress(&m) => {}
                    Ok(Some(m)) => return Ok(m),
                    Ok(None) => return Err(Unanswered::Failed("answer channel closed".into())),
                    Err(_) if left <= wait => return Err(Unanswered::TimedOut),
                    // Quiet for too long: its responder is gone; sent again.
                    Err(_) => break,
                }
            }
            drop(guard);
            tracing::debug!(%subject, "no word from the request's responder; sending it again");
        }
    }
}

/// A request's place in the pending map, taken out when it is dropped (answered, resent, given up).
struct Entry<'a> {
    pending: &'a Pending,
    id: u64,
}

impl<'a> Entry<'a> {
    fn new(pending: &'a Pending, id: u64, tx: mpsc::Sender<Message>) -> Self {
        pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        Self { pending, id }
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Whether `m` is a progress report rather than an answer.
pub fn is_progress(m: &Message) -> bool {
    m.headers
        .as_ref()
        .is_some_and(|h| h.get(PROGRESS).is_some())
}

/// A progress report, as a responder sends it to a request's reply subject.
pub fn progress_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(PROGRESS, "1");
    h
}
