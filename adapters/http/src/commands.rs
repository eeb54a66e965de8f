//! Commands for devices that wait in a request with `hono-ttd` (HONO-CONTRACT §2.3): which request takes
//! each device's commands, and the device's subscription at the router while one waits.
//!
//! Which request takes a device's commands follows HONO-CONTRACT §2.3: the device's own newest request,
//! else the newest request of a gateway acting for it. A device's request replaces the device's older
//! one, a gateway's request a gateway's older one (the replaced request ends at once with 202); a
//! gateway's request waits behind the device's own and takes the commands only while the device does
//! not wait itself. A wait registers the device at the router (`CommandLink::register`) and its
//! end unregisters it, unless a newer wait holds the device by then. Because the end of one wait and the
//! start of the next run concurrently, an unregister can overtake the newer wait's register on the way to
//! the router; the ending wait therefore checks again afterwards and registers once more if someone
//! waits, so the router's last word always matches this map.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ferry_adapter_core::downstream::{Command, CommandLink, DownstreamError};
use ferry_core::ids::{DeviceId, TenantId};
use ferry_core::shutdown::Shutdown;
use tokio::sync::oneshot;

use crate::request_id::request_id;

/// A command on its way to a waiting request, with the request id its device echoes in the response
/// (`None`: one-way).
#[derive(Debug)]
pub struct Delivered {
    pub command: Command,
    pub request_id: Option<String>,
}

type Key = (TenantId, DeviceId);

struct Slot {
    id: u64,
    tx: oneshot::Sender<Delivered>,
}

/// The requests waiting for one device: its own, and a gateway's acting for it.
#[derive(Default)]
struct Slots {
    device: Option<Slot>,
    gateway: Option<Slot>,
}

impl Slots {
    fn is_empty(&self) -> bool {
        self.device.is_none() && self.gateway.is_none()
    }

    /// Takes the wait with the given id out, if it is still here.
    fn remove(&mut self, id: u64) -> bool {
        for slot in [&mut self.device, &mut self.gateway] {
            if slot.as_ref().is_some_and(|s| s.id == id) {
                *slot = None;
                return true;
            }
        }
        false
    }

    /// The request that takes the next command: the device's own, else the gateway's.
    fn take(&mut self) -> Option<Slot> {
        self.device.take().or_else(|| self.gateway.take())
    }
}

/// The waiting requests of this adapter instance.
pub struct Waiters {
    link: CommandLink,
    shutdown: Shutdown,
    waiting: Mutex<HashMap<Key, Slots>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Waiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiters")
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl Waiters {
    pub fn new(link: CommandLink, shutdown: Shutdown) -> Arc<Self> {
        Arc::new(Self {
            link,
            shutdown,
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    // Inserts and removes are single calls, so a panic elsewhere leaves the map intact.
    fn waiting(&self) -> MutexGuard<'_, HashMap<Key, Slots>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many devices wait now.
    pub fn len(&self) -> usize {
        self.waiting().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts waiting for `device`'s commands (ending an older wait of the same kind: the device's own,
    /// or a gateway's when `by_gateway`) and registers the device at the router. Dropping the
    /// [`Waiter`] ends the wait.
    pub async fn wait_for(
        self: &Arc<Self>,
        tenant: &TenantId,
        device: &DeviceId,
        by_gateway: bool,
    ) -> Result<Waiter, DownstreamError> {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut waiting = self.waiting();
            let slots = waiting.entry((tenant.clone(), device.clone())).or_default();
            // The older slot's sender is dropped here, which ends the older request's wait.
            let slot = if by_gateway {
                &mut slots.gateway
            } else {
                &mut slots.device
            };
            *slot = Some(Slot { id, tx });
        }
        let waiter = Waiter {
            waiters: self.clone(),
            tenant: tenant.clone(),
            device: device.clone(),
            id,
            rx,
        };
        // On failure the waiter is dropped, which takes the slot back out.
        self.link.register(tenant, device).await?;
        Ok(waiter)
    }

    /// Hands a command from the router to the request waiting for its device; releases it when none
    /// waits (the application may retry), rejects it when it cannot be put into a response.
    pub fn dispatch(&self, command: Command) {
        if command.name.is_empty() || http::HeaderValue::from_str(&command.name).is_err() {
            command.reject(
                "hono:bad-request",
                "the command name cannot be an HTTP header value",
            );
            return;
        }
        if command
            .content_type
            .as_deref()
            .is_some_and(|c| http::HeaderValue::from_str(c).is_err())
        {
            command.reject(
                "hono:bad-request",
                "the content type cannot be an HTTP header value",
            );
            return;
        }
        let request_id = match (&command.reply_to, command.response_correlation_id()) {
            (None, _) => None,
            (Some(reply_to), Some(correlation)) => {
                match response_request_id(&command.tenant, &command.device, reply_to, correlation) {
                    Some(id) => Some(id),
                    None => {
                        command.reject(
                            "hono:bad-request",
                            "correlation id or reply-to unusable in an HTTP request id",
                        );
                        return;
                    }
                }
            }
            (Some(_), None) => {
                command.reject(
                    "hono:bad-request",
                    "a request needs a message-id or correlation-id",
                );
                return;
            }
        };
        let slot = {
            let mut waiting = self.waiting();
            let key = (command.tenant.clone(), command.device.clone());
            let slot = waiting.get_mut(&key).and_then(Slots::take);
            if waiting.get(&key).is_some_and(Slots::is_empty) {
                waiting.remove(&key);
            }
            slot
        };
        match slot {
            None => command.release(),
            Some(slot) => {
                if let Err(d) = slot.tx.send(Delivered {
                    command,
                    request_id,
                }) {
                    // The request ended in the meantime.
                    d.command.release();
                }
            }
        }
    }

    /// The end of wait `id`: unregisters the device unless a newer wait holds it.
    async fn finish(self: Arc<Self>, tenant: TenantId, device: DeviceId, id: u64) {
        let key = (tenant, device);
        let unregister = {
            let mut waiting = self.waiting();
            match waiting.get_mut(&key) {
                Some(slots) => {
                    slots.remove(id);
                    // Another wait still holds the device; the last one to end unregisters it.
                    if slots.is_empty() {
                        waiting.remove(&key);
                        true
                    } else {
                        false
                    }
                }
                // Our command came (dispatch took the slot) or every wait came and went.
                None => true,
            }
        };
        if !unregister {
            return;
        }
        let _ = self.link.unregister(&key.0, &key.1).await;
        if self.waiting().contains_key(&key) {
            let _ = self.link.register(&key.0, &key.1).await;
        }
    }
}

/// The request id for a command with `reply_to` (`command_response/TENANT/REPLY_ID`): Hono strips a
/// leading `DEVICE/` from the reply id and says so in the flag.
fn response_request_id(
    tenant: &TenantId,
    device: &DeviceId,
    reply_to: &str,
    correlation: &str,
) -> Option<String> {
    let reply = reply_to
        .strip_prefix(ferry_core::hono::address::COMMAND_RESPONSE)?
        .strip_prefix('/')?
        .strip_prefix(tenant.as_str())?
        .strip_prefix('/')?;
    match reply
        .strip_prefix(device.as_str())
        .and_then(|r| r.strip_prefix('/'))
    {
        Some(rest) => request_id(correlation, rest, true),
        None => request_id(correlation, reply, false),
    }
}

/// The `reply-to` a response to request id parts goes to; the inverse of [`response_request_id`].
pub fn response_address(
    tenant: &TenantId,
    device: &DeviceId,
    reply_id: &str,
    device_stripped: bool,
) -> String {
    let base = ferry_core::hono::address::COMMAND_RESPONSE;
    if device_stripped {
        format!("{base}/{tenant}/{device}/{reply_id}")
    } else {
        format!("{base}/{tenant}/{reply_id}")
    }
}

/// One request's wait for a command.
pub struct Waiter {
    waiters: Arc<Waiters>,
    tenant: TenantId,
    device: DeviceId,
    id: u64,
    rx: oneshot::Receiver<Delivered>,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("tenant", &self.tenant)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Waiter {
    /// The command that comes within `within`; `None` when none does, a newer request for the device
    /// took over, or the adapter shuts down.
    pub async fn next(&mut self, within: Duration) -> Option<Delivered> {
        let stop = self.waiters.shutdown.clone().wait();
        tokio::select! {
            r = tokio::time::timeout(within, &mut self.rx) => r.ok()?.ok(),
            () = stop => None,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // A command that arrived after the wait gave up goes back to the application.
        self.rx.close();
        if let Ok(d) = self.rx.try_recv() {
            d.command.release();
        }
        let finish = self
            .waiters
            .clone()
            .finish(self.tenant.clone(), self.device.clone(), self.id);
        // Unregistering talks to the router; the request (possibly cancelled) must not wait for it.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(finish);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (TenantId, DeviceId) {
        (
            TenantId::new("t1").expect("tenant"),
            DeviceId::new("d1").expect("device"),
        )
    }

    #[test]
    fn request_ids_follow_the_reply_to() {
        let (t, d) = ids();
        assert_eq!(
            response_request_id(&t, &d, "command_response/t1/replies", "cmd-1").as_deref(),
            Some("005cmd-1replies")
        );
        assert_eq!(
            response_request_id(&t, &d, "command_response/t1/d1/r7", "c").as_deref(),
            Some("101cr7")
        );
        // Another tenant's reply address, or none Hono would use: not deliverable.
        assert_eq!(
            response_request_id(&t, &d, "command_response/t2/r", "c"),
            None
        );
        assert_eq!(response_request_id(&t, &d, "elsewhere/t1/r", "c"), None);
        assert_eq!(
            response_request_id(&t, &d, "command_response/t1/a/b", "c"),
            None
        );
        assert_eq!(
            response_address(&t, &d, "r7", true),
            "command_response/t1/d1/r7"
        );
        assert_eq!(
            response_address(&t, &d, "replies", false),
            "command_response/t1/replies"
        );
    }
}
