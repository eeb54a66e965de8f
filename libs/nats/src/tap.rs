//! The console's live view in cluster mode (docs/console.md "Cluster mode"): a tenant's telemetry and
//! events copied from NATS while someone watches them.
//!
//! The first watcher of a tenant starts one task that subscribes to `ferry.tap.telemetry.T` and
//! `ferry.event.T` with plain subscriptions (no queue group) and announces on
//! [`subjects::TAP_WATCHING`], every [`ANNOUNCE_EVERY`], that it watches the tenant. Routers then publish a
//! copy of each telemetry message of the tenant they forwarded to `ferry.tap.telemetry.T` (as the embedded
//! router's tap copies what it routed), so the live view never subscribes to `ferry.telemetry.T`, where it
//! would count as a responder to the adapters' requests. Events are copied by NATS itself (a plain
//! subscriber beside the stream). The routers' queue group and the event streams get theirs as before,
//! and no credit is given or taken. The last watcher's leaving stops the task and ends both
//! subscriptions (the routers stop copying once the announcements stop).
//!
//! Bounds: [`MAX_TAPS_PER_TENANT`] watchers per tenant and [`MAX_TAPS`] in all; the task decodes at
//! most [`MAX_PER_SEC`] messages a second per tenant (each watcher shows at most that many anyway) and
//! only counts the rest ([`Watch::skipped`]), so a flooding tenant costs a counter per message; each
//! tenant's messages wait in a broadcast channel of [`CAPACITY`] for slow watchers, which skip ahead.
//! The connection given should have a small subscription capacity (the registry uses
//! [`SUBSCRIPTION_CAPACITY`]): NATS drops what a subscription cannot hold.
//!
//! A message is shown only if it passes the router's checks ([`crate::message::device_message`]) and
//! its registration assertion verifies for the tenant and device.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_core::assertion::Verifier;
use ferry_core::console::{
    tap_time, TapError, TapMessage, MAX_TAPS, MAX_TAPS_PER_TENANT, TAP_PAYLOAD_MAX,
};
use ferry_core::ids::{DeviceId, TenantId};
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch, Notify};

use crate::{message, subjects};

/// Messages decoded per tenant and second at most (the live view's per-watcher rate).
pub const MAX_PER_SEC: u32 = 50;

/// Messages a tenant's channel holds for a slow watcher.
pub const CAPACITY: usize = 256;

/// Messages NATS holds per subscription of the live view's connection before it drops them.
pub const SUBSCRIPTION_CAPACITY: usize = 256;

/// The tenants watched now.
pub struct Taps {
    client: async_nats::Client,
    verifier: Option<Arc<Verifier>>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Taps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taps")
            .field("watchers", &self.watchers())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    watchers: AtomicUsize,
    tenants: Mutex<HashMap<TenantId, Tenant>>,
}

struct Tenant {
    tx: broadcast::Sender<Arc<TapMessage>>,
    skipped: Arc<AtomicU64>,
    stop: Arc<Notify>,
    /// True once the tenant's subscriptions are in place at the server.
    ready: watch::Receiver<bool>,
    watchers: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One watcher of a tenant; dropping it ends the watch (the last one of a tenant ends the
/// subscriptions).
pub struct Watch {
    pub messages: broadcast::Receiver<Arc<TapMessage>>,
    ready: watch::Receiver<bool>,
    skipped: Arc<AtomicU64>,
    seen: u64,
    inner: Arc<Inner>,
    tenant: TenantId,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// Waits (up to `within`) until the tenant's subscriptions are in place at the NATS server: every
    /// message published after that is seen. False when they are not by then.
    pub async fn ready(&mut self, within: Duration) -> bool {
        matches!(
            tokio::time::timeout(within, self.ready.wait_for(|r| *r)).await,
            Ok(Ok(_))
        )
    }

    /// Messages of the tenant not decoded for anyone (over [`MAX_PER_SEC`]) since the last call.
    pub fn skipped(&mut self) -> u64 {
        let now = self.skipped.load(Ordering::Relaxed);
        let new = now.saturating_sub(self.seen);
        self.seen = now;
        new
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.inner.watchers.fetch_sub(1, Ordering::AcqRel);
        let mut tenants = lock(&self.inner.tenants);
        let last = match tenants.get_mut(&self.tenant) {
            Some(t) => {
                t.watchers = t.watchers.saturating_sub(1);
                t.watchers == 0
            }
            None => false,
        };
        if last {
            if let Some(t) = tenants.remove(&self.tenant) {
                t.stop.notify_one();
            }
        }
    }
}

impl Taps {
    /// Watches over `client`; messages are shown only if their assertion verifies with `verifier`
    /// (`None`: not checked, for tests).
    pub fn new(client: async_nats::Client, verifier: Option<Arc<Verifier>>) -> Self {
        Self {
            client,
            verifier,
            inner: Arc::default(),
        }
    }

    /// Watchers now, of all tenants.
    pub fn watchers(&self) -> usize {
        self.inner.watchers.load(Ordering::Acquire)
    }

    /// Tenants with a subscription now.
    pub fn tenants(&self) -> usize {
        lock(&self.inner.tenants).len()
    }

    /// Starts watching `tenant`'s telemetry and events.
    pub fn watch(&self, tenant: &TenantId) -> Result<Watch, TapError> {
        let mut tenants = lock(&self.inner.tenants);
        if self.inner.watchers.load(Ordering::Acquire) >= MAX_TAPS {
            return Err(TapError::TooMany);
        }
        let entry = tenants.entry(tenant.clone()).or_insert_with(|| {
            let (tx, _) = broadcast::channel(CAPACITY);
            let skipped = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(Notify::new());
            let (ready_tx, ready) = watch::channel(false);
            tokio::spawn(pump(
                Pump {
                    client: self.client.clone(),
                    verifier: self.verifier.clone(),
                    tenant: tenant.clone(),
                    tx: tx.clone(),
                    skipped: skipped.clone(),
                    ready: ready_tx,
                },
                stop.clone(),
            ));
            Tenant {
                tx,
                skipped,
                stop,
                ready,
                watchers: 0,
            }
        });
        if entry.watchers >= MAX_TAPS_PER_TENANT {
            return Err(TapError::TooMany);
        }
        entry.watchers += 1;
        self.inner.watchers.fetch_add(1, Ordering::AcqRel);
        let skipped = entry.skipped.clone();
        Ok(Watch {
            messages: entry.tx.subscribe(),
            ready: entry.ready.clone(),
            seen: skipped.load(Ordering::Relaxed),
            skipped,
            inner: self.inner.clone(),
            tenant: tenant.clone(),
        })
    }
}

/// What one tenant's task works with.
struct Pump {
    client: async_nats::Client,
    verifier: Option<Arc<Verifier>>,
    tenant: TenantId,
    tx: broadcast::Sender<Arc<TapMessage>>,
    skipped: Arc<AtomicU64>,
    ready: watch::Sender<bool>,
}

/// How often a watched tenant is announced to the routers ([`subjects::TAP_WATCHING`]); a router copies a
/// tenant's telemetry for three times this after the last announcement.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// How long the subscriptions may take to be in place at the server.
const SUBSCRIBED_WITHIN: Duration = Duration::from_secs(5);

/// Takes the tenant's messages from NATS until `stop`.
async fn pump(p: Pump, stop: Arc<Notify>) {
    let Pump {
        client,
        verifier,
        tenant,
        tx,
        skipped,
        ready,
    } = p;
    let subscribe = || async {
        let telemetry = client
            .subscribe(subjects::tap_telemetry(tenant.as_str()))
            .await
            .map_err(|e| e.to_string())?;
        let events = client
            .subscribe(subjects::event(tenant.as_str()))
            .await
            .map_err(|e| e.to_string())?;
        crate::round_trip(&client, SUBSCRIBED_WITHIN)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((telemetry, events))
    };
    // Tried again every second while NATS is away (the client reconnects by itself).
    let (telemetry, events) = loop {
        let failed = tokio::select! {
            () = stop.notified() => return,
            s = subscribe() => match s {
                Ok(s) => break s,
                Err(e) => e,
            },
        };
        tracing::warn!(%tenant, error = %failed, "cannot subscribe for the live view; retrying");
        tokio::select! {
            () = stop.notified() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    // The routers copy what they forward of the tenant's telemetry while they hear this.
    let mut announce = tokio::time::interval(ANNOUNCE_EVERY);
    let watching = bytes::Bytes::copy_from_slice(tenant.as_str().as_bytes());
    let say = || async {
        if let Err(e) = client
            .publish(subjects::TAP_WATCHING, watching.clone())
            .await
        {
            tracing::debug!(%tenant, error = %e, "cannot announce the live view");
        }
    };
    say().await;
    let _ = client.flush().await;
    ready.send_replace(true);
    let mut both = futures_util::stream::select(
        telemetry.map(|m| ("telemetry", m)),
        events.map(|m| ("event", m)),
    );
    let mut window = tokio::time::Instant::now();
    let mut shown = 0u32;
    loop {
        let (kind, m) = tokio::select! {
            () = stop.notified() => break,
            _ = announce.tick() => {
                say().await;
                continue;
            }
            m = both.next() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let now = tokio::time::Instant::now();
        if now.duration_since(window) >= Duration::from_secs(1) {
            window = now;
            shown = 0;
        }
        if shown >= MAX_PER_SEC {
            skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if let Some(message) = read(&tenant, kind, &m.payload, verifier.as_deref()) {
            shown += 1;
            let _ = tx.send(Arc::new(message));
        }
    }
    // Dropping the subscriptions unsubscribes.
}

/// A device message as the live view shows it; `None` when the router would refuse it.
fn read(
    tenant: &TenantId,
    kind: &'static str,
    payload: &[u8],
    verifier: Option<&Verifier>,
) -> Option<TapMessage> {
    let m = message::device_message(payload).ok()?;
    let device = DeviceId::new(&m.device_id).ok()?;
    if let Some(v) = verifier {
        let now = i64::try_from(ferry_core::console::unix_now()).unwrap_or(i64::MAX);
        v.check(&m.assertion, tenant, &device, now).ok()?;
    }
    let body = &m.body[..m.body.len().min(TAP_PAYLOAD_MAX)];
    Some(TapMessage {
        kind,
        device_id: m.device_id.clone(),
        content_type: Some(m.content_type),
        payload: String::from_utf8_lossy(body).into_owned(),
        truncated: body.len() < m.body.len(),
        size: m.body.len(),
        time: tap_time(),
    })
}
