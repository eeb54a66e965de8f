//! What the registry's console and presence API need from the messaging side, and the seam through which
//! they get it: [`RouterBridge`].
//!
//! In embedded mode (`ferry up`) the router holds presence and sees every device message; the registry
//! serves the management API and the console. The bridge is made first and handed to both: the router
//! records presence into [`RouterBridge::presence`], publishes device messages to the tenant's tap while
//! someone watches ([`Taps`]), and serves the commands the console sends ([`CommandRequest`]); the
//! registry only reads and asks. Presence sits behind the [`PresenceStore`] trait so that cluster mode can
//! put a store in NATS there (see docs/console.md).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::ids::{DeviceId, TenantId};

/// A boxed future, as the stores' read side returns (a store in NATS answers asynchronously).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What an adapter or a passing message says about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// It connected (MQTT CONNECT accepted, Hono's `connected` notification), or is reachable for
    /// commands for `until` (a `ttd` > 0: until then; -1: until further notice).
    Connected {
        adapter: String,
        gateway: Option<DeviceId>,
        remote_id: Option<String>,
        /// Unix seconds after which it counts as gone (`None`: until it disconnects).
        until: Option<u64>,
        /// Which connection (adapter instance and session), so that the end of an older connection
        /// does not mark a device gone that has connected again meanwhile.
        connection: Option<String>,
    },
    /// It went (disconnect, Hono's `disconnected` notification, `ttd` 0 of a connectionless adapter);
    /// with the connection that ended, when known.
    Disconnected { connection: Option<String> },
    /// It sent a message (last-seen only; coarse).
    Seen,
}

/// One update for one device, at `at` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceUpdate {
    pub tenant: TenantId,
    pub device: DeviceId,
    pub change: PresenceChange,
    pub at: u64,
}

/// A device's presence as the management API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Presence {
    pub connected: bool,
    /// When the current (or last) connection began, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The adapter type of that connection (`hono-mqtt`, `hono-http`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_id: Option<String>,
    /// When it last connected, disconnected or sent a message (coarse: a few seconds), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// When it disconnected last, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected_at: Option<String>,
}

impl Presence {
    /// Nothing known: never seen since the store began.
    pub fn unknown() -> Self {
        Self {
            connected: false,
            since: None,
            adapter: None,
            gateway: None,
            remote_id: None,
            last_seen: None,
            disconnected_at: None,
        }
    }
}

/// The store failed (a remote store unreachable); the API answers 503.
#[derive(Debug, thiserror::Error)]
#[error("presence store unavailable: {0}")]
pub struct PresenceError(pub String);

/// Where presence is kept. Writes never wait (the router calls them from its connection tasks); a store
/// may drop an update it cannot take at once. Reads may wait.
pub trait PresenceStore: Send + Sync + 'static {
    fn record(&self, update: PresenceUpdate);
    /// The device's presence, or `None` when nothing is known of it.
    fn get<'a>(
        &'a self,
        tenant: &'a TenantId,
        device: &'a DeviceId,
    ) -> BoxFuture<'a, Result<Option<Presence>, PresenceError>>;
    /// The devices of `tenant` connected now.
    fn connected<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<Vec<DeviceId>, PresenceError>>;
}

/// What a store keeps of one device, and how an update changes it: the same rules for the router's
/// memory ([`MemoryPresence`]) and a shared store (cluster mode keeps it as JSON in NATS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PresenceRecord {
    connected: bool,
    since: Option<u64>,
    adapter: Option<String>,
    gateway: Option<DeviceId>,
    remote_id: Option<String>,
    until: Option<u64>,
    connection: Option<String>,
    last_seen: u64,
    disconnected_at: Option<u64>,
}

type Entry = PresenceRecord;

impl PresenceRecord {
    /// Nothing known yet but that the device was about at `at`.
    pub fn new(at: u64) -> Self {
        Self {
            connected: false,
            since: None,
            adapter: None,
            gateway: None,
            remote_id: None,
            until: None,
            connection: None,
            last_seen: at,
            disconnected_at: None,
        }
    }

    /// Whether the device is connected at `now` (a `ttd` may have run out).
    pub fn connected_at(&self, now: u64) -> bool {
        self.connected && self.until.is_none_or(|u| u > now)
    }

    /// Applies `change` made at `at`.
    pub fn apply(&mut self, change: PresenceChange, at: u64) {
        let entry = self;
        entry.last_seen = entry.last_seen.max(at);
        match change {
            PresenceChange::Connected {
                adapter,
                gateway,
                remote_id,
                until,
                connection,
            } => {
                // A ttd renewal of a connection already known keeps its start.
                let same = entry.connected_at(at) && entry.adapter.as_deref() == Some(&adapter);
                if !same {
                    entry.since = Some(at);
                }
                entry.connected = true;
                entry.adapter = Some(adapter);
                entry.gateway = gateway;
                if remote_id.is_some() {
                    entry.remote_id = remote_id;
                }
                entry.until = until;
                entry.connection = connection;
            }
            PresenceChange::Disconnected { connection } => {
                if connection.is_some()
                    && entry.connection.is_some()
                    && connection != entry.connection
                {
                    // An older connection ended; a newer one holds the device.
                    return;
                }
                if entry.connected {
                    entry.disconnected_at = Some(at);
                }
                entry.connected = false;
                entry.until = None;
            }
            PresenceChange::Seen => {}
        }
    }

    /// As the management API shows it at `now`.
    pub fn view(&self, now: u64) -> Presence {
        Presence {
            connected: self.connected_at(now),
            since: self.since.map(rfc3339),
            adapter: self.adapter.clone(),
            gateway: self.gateway.as_ref().map(|g| g.as_str().to_owned()),
            remote_id: self.remote_id.clone(),
            last_seen: Some(rfc3339(self.last_seen)),
            disconnected_at: self.disconnected_at.map(rfc3339),
        }
    }
}

/// Unix seconds as RFC 3339 UTC.
fn rfc3339(secs: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Devices a [`MemoryPresence`] keeps by default. At the cap, a new device first pushes out the
/// longest-unseen disconnected ones (a tenth of the cap at a time); when all are connected, it is not
/// recorded.
pub const DEFAULT_PRESENCE_CAP: usize = 1_000_000;

/// Presence in the router's memory (embedded mode): lost when the router restarts, rebuilt as devices
/// connect and send again.
#[derive(Debug)]
pub struct MemoryPresence {
    devices: Mutex<HashMap<TenantId, HashMap<DeviceId, Entry>>>,
    len: AtomicUsize,
    cap: usize,
}

impl Default for MemoryPresence {
    fn default() -> Self {
        Self::with_cap(DEFAULT_PRESENCE_CAP)
    }
}

impl MemoryPresence {
    pub fn with_cap(cap: usize) -> Self {
        Self {
            devices: Mutex::new(HashMap::new()),
            len: AtomicUsize::new(0),
            cap: cap.max(1),
        }
    }

    /// Devices held.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets a tenant's devices (the tenant was deleted).
    pub fn forget_tenant(&self, tenant: &TenantId) {
        let mut all = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(gone) = all.remove(tenant) {
            self.len.fetch_sub(gone.len(), Ordering::Relaxed);
        }
    }

    /// Makes room for one more device; false when every device held is connected.
    fn make_room(&self, all: &mut HashMap<TenantId, HashMap<DeviceId, Entry>>, now: u64) -> bool {
        let mut idle: Vec<(u64, TenantId, DeviceId)> = all
            .iter()
            .flat_map(|(t, ds)| {
                ds.iter()
                    .filter(|(_, e)| !e.connected_at(now))
                    .map(move |(d, e)| (e.last_seen, t.clone(), d.clone()))
            })
            .collect();
        if idle.is_empty() {
            return false;
        }
        let n = (self.cap / 10).clamp(1, idle.len());
        idle.select_nth_unstable_by_key(n - 1, |(seen, _, _)| *seen);
        for (_, t, d) in idle.into_iter().take(n) {
            if let Some(ds) = all.get_mut(&t) {
                if ds.remove(&d).is_some() {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
                if ds.is_empty() {
                    all.remove(&t);
                }
            }
        }
        true
    }

    fn apply(&self, u: PresenceUpdate) {
        let mut all = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        let known = all
            .get(&u.tenant)
            .is_some_and(|ds| ds.contains_key(&u.device));
        if !known {
            if u.change == PresenceChange::Seen && self.len() >= self.cap {
                // Last-seen of a device nobody tracks is not worth evicting for.
                return;
            }
            if self.len() >= self.cap && !self.make_room(&mut all, u.at) {
                return;
            }
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        all.entry(u.tenant)
            .or_default()
            .entry(u.device)
            .or_insert_with(|| Entry::new(u.at))
            .apply(u.change, u.at);
    }
}

impl PresenceStore for MemoryPresence {
    fn record(&self, update: PresenceUpdate) {
        self.apply(update);
    }

    fn get<'a>(
        &'a self,
        tenant: &'a TenantId,
        device: &'a DeviceId,
    ) -> BoxFuture<'a, Result<Option<Presence>, PresenceError>> {
        let now = unix_now();
        let found = self
            .devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .and_then(|ds| ds.get(device))
            .map(|e| e.view(now));
        Box::pin(std::future::ready(Ok(found)))
    }

    fn connected<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<Vec<DeviceId>, PresenceError>> {
        let now = unix_now();
        let list = self
            .devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .map(|ds| {
                ds.iter()
                    .filter(|(_, e)| e.connected_at(now))
                    .map(|(d, _)| d.clone())
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(list)))
    }
}

/// A device message as the live view shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TapMessage {
    /// `telemetry` or `event`.
    pub kind: &'static str,
    pub device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The payload as UTF-8 (invalid bytes replaced), at most [`TAP_PAYLOAD_MAX`] bytes of it.
    pub payload: String,
    pub truncated: bool,
    pub size: usize,
    /// When the router saw it, RFC 3339.
    pub time: String,
}

/// Most payload bytes a tap message carries.
pub const TAP_PAYLOAD_MAX: usize = 1024;

/// Messages a tap holds for a slow watcher before it skips ahead (the watcher is told how many it missed).
const TAP_CAPACITY: usize = 256;

/// Watchers of one tenant at once, and of all tenants.
pub const MAX_TAPS_PER_TENANT: usize = 8;
pub const MAX_TAPS: usize = 64;

/// The tenants' live taps. Device messages are copied here only while someone watches their tenant: the
/// router checks one atomic counter per message when nobody watches anything.
#[derive(Debug, Default)]
pub struct Taps {
    watchers: AtomicUsize,
    tenants: Mutex<HashMap<TenantId, broadcast::Sender<Arc<TapMessage>>>>,
}

/// A watcher's subscription; dropping it ends the watch.
#[derive(Debug)]
pub struct TapSubscription {
    pub messages: broadcast::Receiver<Arc<TapMessage>>,
    taps: Arc<RouterBridge>,
    tenant: TenantId,
}

impl Drop for TapSubscription {
    fn drop(&mut self) {
        let taps = &self.taps.taps;
        taps.watchers.fetch_sub(1, Ordering::AcqRel);
        let mut tenants = taps.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        // Our receiver is still alive here, hence <= 1.
        if tenants
            .get(&self.tenant)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            tenants.remove(&self.tenant);
        }
    }
}

impl Taps {
    /// Whether anyone watches any tenant (the router's per-message check).
    pub fn active(&self) -> bool {
        self.watchers.load(Ordering::Acquire) > 0
    }

    /// Whether anyone watches `tenant`.
    pub fn watched(&self, tenant: &TenantId) -> bool {
        self.active()
            && self
                .tenants
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(tenant)
    }

    /// Hands a message to `tenant`'s watchers, if any.
    pub fn publish(&self, tenant: &TenantId, message: TapMessage) {
        if let Some(tx) = self
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
        {
            let _ = tx.send(Arc::new(message));
        }
    }
}

/// Why the live view cannot start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TapError {
    #[error(
        "too many live views open (at most {MAX_TAPS_PER_TENANT} per tenant, {MAX_TAPS} in all)"
    )]
    TooMany,
}

/// A command the console sends to a device.
#[derive(Debug)]
pub struct CommandRequest {
    pub tenant: TenantId,
    pub device: DeviceId,
    pub name: String,
    pub content_type: Option<String>,
    pub payload: Vec<u8>,
    /// `false`: one-way; no response is awaited.
    pub expect_response: bool,
    pub timeout: Duration,
    pub reply: oneshot::Sender<CommandResult>,
}

/// What became of a console's command, in Hono's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CommandResult {
    /// The disposition the router gave the command: `accepted`, `released` (device not connected or
    /// did not take it), `rejected`, or `timeout` (no disposition in time).
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<CommandResponse>,
}

/// The device's response to a request/response command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CommandResponse {
    pub status: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub payload: String,
}

/// Console commands waiting for the router; more are refused at once (503).
const COMMAND_QUEUE: usize = 64;

/// The seam between the registry (console, presence API) and the messaging side in one process.
pub struct RouterBridge {
    pub presence: Arc<dyn PresenceStore>,
    pub taps: Taps,
    commands: mpsc::Sender<CommandRequest>,
    command_rx: Mutex<Option<mpsc::Receiver<CommandRequest>>>,
}

impl std::fmt::Debug for RouterBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterBridge").finish_non_exhaustive()
    }
}

impl RouterBridge {
    pub fn new(presence: Arc<dyn PresenceStore>) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        Arc::new(Self {
            presence,
            taps: Taps::default(),
            commands: tx,
            command_rx: Mutex::new(Some(rx)),
        })
    }

    /// The router takes the console's command queue (once).
    pub fn take_commands(&self) -> Option<mpsc::Receiver<CommandRequest>> {
        self.command_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Queues a command for the router; false when the queue is full or no router serves it.
    pub fn send_command(&self, request: CommandRequest) -> bool {
        self.commands.try_send(request).is_ok()
    }

    /// Starts watching `tenant`'s device messages.
    pub fn watch(self: &Arc<Self>, tenant: &TenantId) -> Result<TapSubscription, TapError> {
        let mut tenants = self
            .taps
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.taps.watchers.load(Ordering::Acquire) >= MAX_TAPS {
            return Err(TapError::TooMany);
        }
        let tx = tenants
            .entry(tenant.clone())
            .or_insert_with(|| broadcast::channel(TAP_CAPACITY).0);
        if tx.receiver_count() >= MAX_TAPS_PER_TENANT {
            return Err(TapError::TooMany);
        }
        let messages = tx.subscribe();
        self.taps.watchers.fetch_add(1, Ordering::AcqRel);
        Ok(TapSubscription {
            messages,
            taps: self.clone(),
            tenant: tenant.clone(),
        })
    }
}

/// A tap message's time stamp.
pub fn tap_time() -> String {
    rfc3339(unix_now())
}

#[cfg(test)]
mod tests;
