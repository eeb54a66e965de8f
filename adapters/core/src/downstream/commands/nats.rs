//! Commands in cluster mode (docs/cluster.md "Adapters on NATS"): this instance's subscription on
//! `ferry.command.INSTANCE`, where each request is a command as the router forwards it on
//! `command_internal` in embedded mode and is settled by replying with the device's outcome; and the
//! routes that bring commands here, in the key-value bucket [`routes::BUCKET`] ([`Routes`]), put again
//! after every reconnect. Uses the NATS bus ([`Nats`]); the bus does not know this module.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::kv;
use bytes::Bytes;
use fe2o3_amqp::types::messaging::message::__private::Deserializable;
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::Value;
use ferry_core::ids::{DeviceId, TenantId};
use ferry_core::shutdown::Shutdown;
use ferry_nats::outcome::Outcome;
use ferry_nats::routes::{self, RouteKind};
use ferry_nats::subjects;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Semaphore};

use super::command::{Command, NatsSettle, Settle};
use super::parse::parse_message;
use crate::downstream::nats::{publish_now, Nats};
use crate::downstream::DownstreamError;

/// Last-gateway writes waiting for the key-value store. Full: the update is dropped and counted, and
/// written with the device's next message.
const LAST_GATEWAY_QUEUE: usize = 1024;

/// How often the connection's reconnect count is looked at.
const RECONNECT_POLL: Duration = Duration::from_millis(200);

/// Subscribes to this instance's commands and opens its routes (see [`Routes`]).
pub(super) fn open(bus: &Nats, instance_id: &str) -> (Arc<Routes>, mpsc::Receiver<Command>) {
    let credit = usize::try_from(bus.config.command_credit.max(1)).unwrap_or(1024);
    let (tx, rx) = mpsc::channel(credit);
    let (updates, updates_rx) = mpsc::channel(LAST_GATEWAY_QUEUE);
    let dropped_settlements = Arc::new(AtomicU64::new(0));
    let routes = Arc::new(Routes {
        instance_id: instance_id.to_owned(),
        value: Bytes::from(instance_id.to_owned()),
        kv: bus.routes_kv.clone(),
        presence: bus.presence.clone(),
        client: bus.client.clone(),
        timeout: bus.config.outcome_timeout,
        held: Mutex::new(HashSet::new()),
        last_gateway: Mutex::new(HashMap::new()),
        updates,
        dropped_updates: AtomicU64::new(0),
        dropped_settlements: dropped_settlements.clone(),
    });
    let subscription = Subscription {
        client: bus.client.clone(),
        subject: subjects::command(instance_id),
        commands: tx,
        slots: Arc::new(Semaphore::new(credit)),
        dropped_settlements,
    };
    tokio::spawn(subscription.run(bus.shutdown.clone()));
    tokio::spawn(write_last_gateways(
        Arc::downgrade(&routes),
        updates_rx,
        bus.shutdown.clone(),
    ));
    tokio::spawn(replay_on_reconnect(
        Arc::downgrade(&routes),
        bus.client.statistics(),
        bus.shutdown.clone(),
    ));
    (routes, rx)
}

/// This instance's command subscription: each request is a command as the router forwards it on
/// `command_internal` in embedded mode.
struct Subscription {
    client: async_nats::Client,
    subject: String,
    commands: mpsc::Sender<Command>,
    /// One per command handed out and not settled yet ([`NatsDownstreamConfig::command_credit`]).
    slots: Arc<Semaphore>,
    dropped_settlements: Arc<AtomicU64>,
}

impl Subscription {
    async fn run(self, shutdown: Shutdown) {
        // Not a queue group: the subject is this instance's alone. The client subscribes again by
        // itself after a reconnect.
        let mut sub = match self.client.subscribe(self.subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(subject = %self.subject, error = %e, "cannot subscribe to commands");
                return;
            }
        };
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = self.commands.closed() => break,
                m = sub.next() => match m {
                    Some(m) => self.on_command(m),
                    None => break,
                },
            }
        }
        let _ = sub.unsubscribe().await;
    }

    fn on_command(&self, m: async_nats::Message) {
        let answer = |outcome: Outcome| {
            if let Some(reply) = &m.reply {
                let _ = publish_now(&self.client, reply.clone(), None, outcome.encode());
            }
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            // As many commands unsettled as the adapter may hold: the application may retry.
            answer(Outcome::Released);
            return;
        };
        let parsed = serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(&m.payload)
            .map_err(|_| "not an AMQP message")
            .and_then(|d| parse_message(d.0));
        let mut command = match parsed {
            Ok(c) => c,
            Err(why) => {
                answer(Outcome::Rejected {
                    condition: Some("hono:bad-request".into()),
                    description: Some(why.into()),
                });
                return;
            }
        };
        if let Some(reply) = m.reply {
            command.settle = Some(Settle::Nats(NatsSettle {
                client: self.client.clone(),
                reply,
                dropped: self.dropped_settlements.clone(),
                _slot: slot,
            }));
        }
        // Never full while every queued command holds a slot; full or closed, the command is dropped
        // and so released.
        let _ = self.commands.try_send(command);
    }
}

/// This instance's command routes in the key-value bucket [`routes::BUCKET`].
pub(crate) struct Routes {
    instance_id: String,
    /// The value of this instance's routes (its id).
    value: Bytes,
    kv: kv::Store,
    client: async_nats::Client,
    timeout: Duration,
    /// Keys of the device and gateway routes this instance holds, put again after a reconnect.
    held: Mutex<HashSet<String>>,
    /// The last gateway written per tenant and device, so that it is written when it changes only.
    last_gateway: Mutex<HashMap<TenantId, HashMap<DeviceId, DeviceId>>>,
    updates: mpsc::Sender<(TenantId, DeviceId, DeviceId)>,
    dropped_updates: AtomicU64,
    dropped_settlements: Arc<AtomicU64>,
    presence: ferry_nats::presence::NatsPresence,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Routes {
    /// `device` connected to this instance (or went): written to the presence bucket, not waited for.
    pub(super) fn report_presence(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        adapter: &'static str,
        remote_id: &str,
        session: u64,
        connected: bool,
    ) {
        use ferry_core::console::{PresenceChange, PresenceStore as _, PresenceUpdate};
        let connection = Some(format!("{}/{session}", self.instance_id));
        let change = if connected {
            PresenceChange::Connected {
                adapter: adapter.to_owned(),
                gateway: None,
                remote_id: Some(remote_id.chars().take(256).collect()),
                until: None,
                connection,
            }
        } else {
            PresenceChange::Disconnected { connection }
        };
        self.presence.record(PresenceUpdate {
            tenant: tenant.clone(),
            device: device.clone(),
            change,
            at: ferry_core::console::unix_now(),
        });
    }

    pub(super) fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub(super) async fn register(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<(), DownstreamError> {
        self.put(RouteKind::Device, tenant, device).await
    }

    pub(super) async fn unregister(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<(), DownstreamError> {
        self.delete(RouteKind::Device, tenant, device).await
    }

    pub(super) async fn register_gateway(
        &self,
        tenant: &TenantId,
        gateway: &DeviceId,
    ) -> Result<(), DownstreamError> {
        self.put(RouteKind::Gateway, tenant, gateway).await
    }

    pub(super) async fn unregister_gateway(
        &self,
        tenant: &TenantId,
        gateway: &DeviceId,
    ) -> Result<(), DownstreamError> {
        self.delete(RouteKind::Gateway, tenant, gateway).await
    }

    pub(super) fn set_last_gateway(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        gateway: &DeviceId,
    ) {
        {
            let mut known = lock(&self.last_gateway);
            if known.get(tenant).and_then(|d| d.get(device)) == Some(gateway) {
                return;
            }
            known
                .entry(tenant.clone())
                .or_default()
                .insert(device.clone(), gateway.clone());
        }
        if self
            .updates
            .try_send((tenant.clone(), device.clone(), gateway.clone()))
            .is_err()
        {
            self.dropped_updates.fetch_add(1, Ordering::Relaxed);
            self.forget_last_gateway(tenant, device, gateway);
        }
    }

    /// Forgets that `gateway` was written for `device` (it was not), so the next message writes it.
    fn forget_last_gateway(&self, tenant: &TenantId, device: &DeviceId, gateway: &DeviceId) {
        let mut known = lock(&self.last_gateway);
        if let Some(devices) = known.get_mut(tenant) {
            if devices.get(device) == Some(gateway) {
                devices.remove(device);
            }
            if devices.is_empty() {
                known.remove(tenant);
            }
        }
    }

    pub(super) fn dropped_updates(&self) -> u64 {
        self.dropped_updates.load(Ordering::Relaxed)
    }

    pub(super) fn dropped_settlements(&self) -> u64 {
        self.dropped_settlements.load(Ordering::Relaxed)
    }

    pub(super) fn registered(&self) -> usize {
        lock(&self.held).len()
    }

    /// Writes the route and remembers it (also when writing fails while disconnected: it is put again
    /// when the connection is back).
    async fn put(
        &self,
        kind: RouteKind,
        tenant: &TenantId,
        id: &DeviceId,
    ) -> Result<(), DownstreamError> {
        let key = routes::key(kind, tenant.as_str(), id.as_str());
        lock(&self.held).insert(key.clone());
        if self.client.connection_state() != State::Connected {
            return Err(DownstreamError::NotConnected);
        }
        self.put_key(key).await
    }

    async fn put_key(&self, key: String) -> Result<(), DownstreamError> {
        match tokio::time::timeout(self.timeout, self.kv.put(key, self.value.clone())).await {
            Err(_) => Err(DownstreamError::Timeout),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot write a command route");
                Err(DownstreamError::Disconnected)
            }
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Deletes the route while it still names this instance: a newer route of another instance stays.
    async fn delete(
        &self,
        kind: RouteKind,
        tenant: &TenantId,
        id: &DeviceId,
    ) -> Result<(), DownstreamError> {
        let key = routes::key(kind, tenant.as_str(), id.as_str());
        lock(&self.held).remove(&key);
        if self.client.connection_state() != State::Connected {
            return Err(DownstreamError::NotConnected);
        }
        match tokio::time::timeout(self.timeout, routes::delete_if(&self.kv, &key, &self.value))
            .await
        {
            Err(_) => Err(DownstreamError::Timeout),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot delete a command route");
                Err(DownstreamError::Disconnected)
            }
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Puts every route this instance holds again; false if one failed.
    async fn replay(&self) -> bool {
        let keys: Vec<String> = lock(&self.held).iter().cloned().collect();
        let failed = futures_util::stream::iter(keys)
            .map(|k| self.put_key(k))
            .buffer_unordered(32)
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await;
        failed == 0
    }
}

/// Writes last-gateway updates one after the other, off the message path.
async fn write_last_gateways(
    routes: Weak<Routes>,
    mut updates: mpsc::Receiver<(TenantId, DeviceId, DeviceId)>,
    shutdown: Shutdown,
) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let (tenant, device, gateway) = tokio::select! {
            () = &mut stop => return,
            u = updates.recv() => match u {
                Some(u) => u,
                None => return,
            },
        };
        let Some(routes) = routes.upgrade() else {
            return;
        };
        let key = routes::key(RouteKind::LastGateway, tenant.as_str(), device.as_str());
        let value = Bytes::copy_from_slice(gateway.as_str().as_bytes());
        let written = tokio::time::timeout(routes.timeout, routes.kv.put(key, value)).await;
        if !matches!(written, Ok(Ok(_))) {
            routes.forget_last_gateway(&tenant, &device, &gateway);
        }
    }
}

/// After every reconnect, puts this instance's routes again (a router may have deleted them as dead
/// while this instance was away).
async fn replay_on_reconnect(
    routes: Weak<Routes>,
    stats: Arc<async_nats::Statistics>,
    shutdown: Shutdown,
) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut seen = stats.connects.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(RECONNECT_POLL) => {}
        }
        let Some(routes) = routes.upgrade() else {
            return;
        };
        let now = stats.connects.load(Ordering::Relaxed);
        if now != seen
            && routes.client.connection_state() == State::Connected
            && routes.replay().await
        {
            seen = now;
            tracing::info!(
                routes = routes.registered(),
                "command routes put again after a reconnect"
            );
        }
    }
}
