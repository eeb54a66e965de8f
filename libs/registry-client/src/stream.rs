//! The change stream (`GET /internal/v1/changes`, server-sent events): [`ChangeParser`], a pure
//! incremental parser (bytes in, events out, tested without a socket), and [`Client::follow_changes`],
//! the connection loop around it.
//!
//! The parser works on bytes and decodes a line only once it is complete, so an event, or a UTF-8
//! sequence inside it, may be split across chunks anywhere.

use std::time::Duration;

use ferry_core::shutdown::Shutdown;
use ferry_registry_model::Change;
use futures_util::StreamExt;

use crate::Client;

/// Lines longer than this are cut, and an event whose data grows beyond it is dropped: the registry's
/// events are a few hundred bytes, and a broken peer must not make a client buffer without bound.
pub const MAX_LINE: usize = 64 * 1024;

/// What one SSE event of the stream means to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The subscription is live.
    Hello,
    /// Something changed.
    Change(Change),
    /// Changes were missed: purge everything.
    Reset,
}

/// What [`Client::follow_changes`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamSignal {
    /// The stream is connected; the registry subscribed this client before answering, so nothing after
    /// this signal is missed, but changes before it may have been: purge everything.
    Connected,
    /// An event of the stream.
    Event(StreamEvent),
    /// The stream is not (or no longer) connected; it is reconnected after a backoff.
    Lost,
}

/// How the stream is kept up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// The stream is reconnected when nothing (not even the registry's 15 s keep-alive) arrived this long.
    pub idle_timeout: Duration,
    /// First wait before reconnecting; doubled on every failed attempt up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait before reconnecting.
    pub max_backoff: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(45),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Incremental SSE parser (the subset the registry uses: `event:`, `data:`, `id:`, comments).
#[derive(Debug, Default)]
pub struct ChangeParser {
    line: Vec<u8>,
    event: String,
    data: String,
    /// The current event's data outgrew [`MAX_LINE`]: it is dropped when it ends.
    oversized: bool,
}

impl ChangeParser {
    /// Feeds received bytes; calls `on_event` for every complete event this client understands. Events
    /// it does not (other event names, a newer registry's change kinds, malformed data) are skipped.
    pub fn feed(&mut self, bytes: &[u8], mut on_event: impl FnMut(StreamEvent)) {
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if let Some(e) = self.line_done(&line) {
                    on_event(e);
                }
                line.clear();
                self.line = line;
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }

    fn line_done(&mut self, line: &[u8]) -> Option<StreamEvent> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            if std::mem::take(&mut self.oversized) {
                return None;
            }
            return match event.as_str() {
                "hello" => Some(StreamEvent::Hello),
                "reset" => Some(StreamEvent::Reset),
                "change" => serde_json::from_str(&data).ok().map(StreamEvent::Change),
                _ => None,
            };
        }
        if line.starts_with(b":") {
            return None; // keep-alive comment
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                if self.data.len() + value.len() >= MAX_LINE {
                    self.oversized = true;
                    self.data.clear();
                } else if !self.oversized {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                }
            }
            _ => {}
        }
        None
    }
}

impl Client {
    /// Follows the registry's change stream until `shutdown`, reporting to `on` what happens
    /// ([`StreamSignal`]). Reconnects with backoff; an established connection resets the backoff.
    pub async fn follow_changes(
        &self,
        shutdown: Shutdown,
        config: &StreamConfig,
        mut on: impl FnMut(StreamSignal) + Send,
    ) {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        let mut backoff = config.min_backoff;
        loop {
            let connected = tokio::select! {
                () = &mut stop => break,
                c = self.stream_once(config.idle_timeout, &mut on) => c,
            };
            if connected {
                on(StreamSignal::Lost);
                backoff = config.min_backoff;
            }
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(config.max_backoff);
        }
        on(StreamSignal::Lost);
    }

    /// One connection of the change stream; true if it was established.
    async fn stream_once(
        &self,
        idle: Duration,
        on: &mut (impl FnMut(StreamSignal) + Send),
    ) -> bool {
        let resp = self
            .stream_http
            .get(self.url("changes"))
            .bearer_auth(self.token())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "registry change stream not available");
                return false;
            }
        };
        on(StreamSignal::Connected);
        let mut body = resp.bytes_stream();
        let mut parser = ChangeParser::default();
        loop {
            match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(Ok(chunk))) => parser.feed(&chunk, |e| on(StreamSignal::Event(e))),
                Ok(Some(Err(e))) => {
                    tracing::debug!(error = %e, "registry change stream broke");
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::debug!("registry change stream silent; reconnecting");
                    break;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;
