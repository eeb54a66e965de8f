//! The registry's change stream (`GET /internal/v1/changes`, server-sent events; docs/registry.md): the
//! parser for its wire format and the [`Change`] adapters see.
//!
//! The parser is incremental and pure (bytes in, events out) so it is tested without a socket; the
//! connection loop lives in the client.

use ferry_core::ids::{DeviceId, TenantId};
use serde::Deserialize;

/// What a change concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A tenant was created, updated or deleted (deleted: everything of the tenant is gone).
    Tenant,
    /// A device was created, updated (e.g. disabled) or deleted.
    Device,
    /// A device's credentials changed.
    Credentials,
    /// An application user changed (adapters have nothing cached about them).
    Application,
    /// Changes may have been missed (the stream was reconnected, or this client fell behind): every cache
    /// was purged; whoever holds state derived from the registry should check it again.
    Reset,
}

/// How it changed; absent for [`ChangeKind::Reset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// Newly created.
    Created,
    /// Changed (e.g. disabled, new secrets).
    Updated,
    /// Gone.
    Deleted,
}

/// One change, re-broadcast to adapters after the caches were purged (so a lookup made on receipt sees
/// the new state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What changed.
    pub kind: ChangeKind,
    /// How; `None` for a reset.
    pub op: Option<ChangeOp>,
    /// The tenant concerned (`None` for applications and resets).
    pub tenant: Option<TenantId>,
    /// The device concerned (device and credentials changes).
    pub device: Option<DeviceId>,
}

impl Change {
    /// The change that tells subscribers to re-check everything.
    pub fn reset() -> Self {
        Self {
            kind: ChangeKind::Reset,
            op: None,
            tenant: None,
            device: None,
        }
    }

    /// Whether this change may affect `device` of `tenant` (a reset affects everything).
    pub fn affects(&self, tenant: &TenantId, device: &DeviceId) -> bool {
        match self.kind {
            ChangeKind::Reset => true,
            ChangeKind::Application => false,
            ChangeKind::Tenant => self.tenant.as_ref() == Some(tenant),
            ChangeKind::Device | ChangeKind::Credentials => {
                self.tenant.as_ref() == Some(tenant) && self.device.as_ref() == Some(device)
            }
        }
    }
}

/// `data:` of a `change` event.
#[derive(Debug, Deserialize)]
struct WireChange {
    kind: String,
    op: Option<ChangeOp>,
    tenant: Option<String>,
    device: Option<String>,
}

/// What one SSE event means to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamEvent {
    /// The subscription is live.
    Hello,
    Change(Change),
    /// Changes were missed: purge everything.
    Reset,
}

/// Parses a `change` event's data; `None` for data this client does not understand (a newer registry's
/// kinds), which is skipped rather than fatal.
fn parse_change(data: &str) -> Option<Change> {
    let wire: WireChange = serde_json::from_str(data).ok()?;
    let kind = match wire.kind.as_str() {
        "tenant" => ChangeKind::Tenant,
        "device" => ChangeKind::Device,
        "credentials" => ChangeKind::Credentials,
        "application" => ChangeKind::Application,
        _ => return None,
    };
    Some(Change {
        kind,
        op: wire.op,
        tenant: wire.tenant.and_then(|t| TenantId::new(&t).ok()),
        device: wire.device.and_then(|d| DeviceId::new(&d).ok()),
    })
}

/// Incremental SSE parser (the subset the registry uses: `event:`, `data:`, `id:`, comments).
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    event: String,
    data: String,
}

/// Lines longer than this are dropped: the registry's events are a few hundred bytes, and a broken peer
/// must not make the client buffer without bound.
const MAX_LINE: usize = 64 * 1024;

impl SseParser {
    /// Feeds received bytes; calls `on_event` for every complete event.
    pub(crate) fn feed(&mut self, bytes: &[u8], mut on_event: impl FnMut(StreamEvent)) {
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
            return match event.as_str() {
                "hello" => Some(StreamEvent::Hello),
                "reset" => Some(StreamEvent::Reset),
                "change" => parse_change(&data).map(StreamEvent::Change),
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
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value);
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<StreamEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |e| out.push(e));
        }
        out
    }

    #[test]
    fn parses_events_split_anywhere() {
        let stream = b"event: hello\ndata: {\"seq\":41}\n\n:keep-alive\n\nevent: change\nid: 42\ndata: {\"seq\":42,\"kind\":\"device\",\"op\":\"updated\",\"tenant\":\"t1\",\"device\":\"d1\"}\n\nevent: reset\r\ndata: {}\r\n\r\n";
        let expected = vec![
            StreamEvent::Hello,
            StreamEvent::Change(Change {
                kind: ChangeKind::Device,
                op: Some(ChangeOp::Updated),
                tenant: Some(TenantId::new("t1").expect("id")),
                device: Some(DeviceId::new("d1").expect("id")),
            }),
            StreamEvent::Reset,
        ];
        assert_eq!(parse_all(&[stream]), expected);
        for split in [1, 7, 30, 60, 100] {
            let (a, b) = stream.split_at(split);
            assert_eq!(parse_all(&[a, b]), expected, "split at {split}");
        }
    }

    #[test]
    fn unknown_kinds_and_garbage_are_skipped() {
        let stream = b"event: change\ndata: {\"kind\":\"planet\"}\n\nevent: change\ndata: not json\n\nevent: other\ndata: x\n\nevent: change\ndata: {\"kind\":\"tenant\",\"op\":\"deleted\",\"tenant\":\"t9\"}\n\n";
        let events = parse_all(&[stream]);
        assert_eq!(events.len(), 1);
        assert!(matches!(
            &events[0],
            StreamEvent::Change(Change {
                kind: ChangeKind::Tenant,
                op: Some(ChangeOp::Deleted),
                ..
            })
        ));
    }

    #[test]
    fn affects_matches_tenant_and_device() {
        let t1 = TenantId::new("t1").expect("id");
        let d1 = DeviceId::new("d1").expect("id");
        let d2 = DeviceId::new("d2").expect("id");
        let device = Change {
            kind: ChangeKind::Device,
            op: Some(ChangeOp::Updated),
            tenant: Some(t1.clone()),
            device: Some(d1.clone()),
        };
        assert!(device.affects(&t1, &d1));
        assert!(!device.affects(&t1, &d2));
        let tenant = Change {
            kind: ChangeKind::Tenant,
            op: Some(ChangeOp::Updated),
            tenant: Some(t1.clone()),
            device: None,
        };
        assert!(tenant.affects(&t1, &d2));
        assert!(Change::reset().affects(&t1, &d2));
    }
}
