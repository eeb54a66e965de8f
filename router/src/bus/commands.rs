//! Commands on the bus: the adapters' routes mirrored from the key-value bucket into the hub, and a
//! stand-in consumer per adapter instance that forwards its commands as NATS requests.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use ferry_core::ids::TenantId;
use ferry_nats::{commands, routes};
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};

use super::mirror::{Mirror, RouteTable};
use super::{delivery_state, lock, Bus};
use crate::events::EventStore;
use crate::hub::{self, AddressRef, ConnHandle, Consumer, Kind, ToConn};
use crate::Shared;

/// An adapter instance's command address here, its stand-in consumer, and how to stop its forwarder.
#[derive(Clone)]
pub(super) struct Instance {
    addr: AddressRef,
    consumer: Arc<Consumer>,
    stop: Arc<Notify>,
}

/// Commands an adapter instance may have in flight from this router.
const COMMAND_CREDIT: u32 = 256;

/// How long an adapter instance may take to settle a command (its device may be slow to answer).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

impl Bus {
    /// Mirrors the command-route bucket into the hub until `shutdown`; re-reads it in full after an
    /// error. Runs for the router's lifetime.
    pub async fn follow_routes<S: EventStore>(
        self: Arc<Self>,
        shared: Arc<Shared<S>>,
        shutdown: ferry_core::shutdown::Shutdown,
    ) {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        let mut mirror = Mirror::default();
        loop {
            let result = tokio::select! {
                () = &mut stop => return,
                r = self.mirror_routes(&shared, &mut mirror) => r,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "following the command routes failed; retrying");
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn routes(&self) -> Result<&kv::Store, ferry_nats::Error> {
        self.routes
            .get_or_try_init(|| routes::bucket(&self.js, self.replicas))
            .await
    }

    /// Watches the bucket into `mirror` until the watch fails. A watch after the first one starts by
    /// undoing what went from the bucket while none ran (it would replay only what is there now).
    async fn mirror_routes<S: EventStore>(
        self: &Arc<Self>,
        shared: &Arc<Shared<S>>,
        mirror: &mut Mirror,
    ) -> anyhow::Result<()> {
        let store = self.routes().await?;
        let mut table = HubRoutes { bus: self, shared };
        if !mirror.is_empty() {
            let mut present = HashSet::new();
            let mut keys = store.keys().await?;
            while let Some(key) = keys.next().await {
                present.insert(key?);
            }
            mirror.keep_only(&mut table, &present);
        }
        let mut watch = store.watch_all().await?;
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            let value = match entry.operation {
                kv::Operation::Put => std::str::from_utf8(&entry.value).ok(),
                kv::Operation::Delete | kv::Operation::Purge => None,
            };
            mirror.apply(&mut table, &entry.key, value);
        }
        anyhow::bail!("the route watch ended")
    }

    /// The command address of adapter instance `id`, with its stand-in consumer (made on first use).
    fn instance<S: EventStore>(
        self: &Arc<Self>,
        shared: &Arc<Shared<S>>,
        id: &str,
    ) -> Option<AddressRef> {
        if let Some(i) = lock(&self.instances).get(id) {
            return Some(i.addr.clone());
        }
        let scope = TenantId::new(id).ok()?;
        let mut addr = shared.hub.address(Kind::CommandInternal, &scope);
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = ConnHandle::new(tx);
        let consumer = shared
            .hub
            .attach_consumer(&mut addr, conn.clone(), hub::next_id());
        shared.hub.consumer_credit(&addr, &consumer, COMMAND_CREDIT);
        let held = Instance {
            addr: addr.clone(),
            consumer,
            stop: Arc::new(Notify::new()),
        };
        lock(&self.instances).insert(id.to_owned(), held.clone());
        shared.hub.metrics.command_instances.inc();
        tokio::spawn(
            self.clone()
                .forward_commands(shared.clone(), id.to_owned(), held, conn, rx),
        );
        Some(addr)
    }

    /// Adapter instance `id` holds no command route any more (it went, or its devices moved): its
    /// stand-in consumer and forwarder go, so instances that come and go do not pile up.
    fn drop_instance<S: EventStore>(&self, shared: &Shared<S>, id: &str) {
        let Some(gone) = lock(&self.instances).remove(id) else {
            return;
        };
        shared
            .hub
            .detach_consumer(&gone.addr, &gone.consumer, Vec::new());
        gone.stop.notify_one();
        shared.hub.metrics.command_instances.dec();
    }

    /// The stand-in consumer of an adapter instance: each command the hub hands it goes to the instance
    /// as a NATS request, and is settled with the answer.
    async fn forward_commands<S: EventStore>(
        self: Arc<Self>,
        shared: Arc<Shared<S>>,
        instance: String,
        held: Instance,
        conn: ConnHandle,
        mut rx: mpsc::UnboundedReceiver<ToConn>,
    ) {
        let Instance {
            addr,
            consumer,
            stop,
        } = held;
        let in_flight = Arc::new(std::sync::atomic::AtomicU32::new(0));
        loop {
            let request = tokio::select! {
                () = stop.notified() => break,
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
            };
            let ToConn::Deliver {
                payload, origin, ..
            } = request
            else {
                continue;
            };
            conn.written(payload.len() + hub::DELIVERY_OVERHEAD);
            consumer.dequeued();
            in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let bus = self.clone();
            let shared = shared.clone();
            let addr = addr.clone();
            let consumer = consumer.clone();
            let in_flight = in_flight.clone();
            let instance = instance.clone();
            tokio::spawn(async move {
                let state = match commands::request(
                    &bus.client,
                    &instance,
                    payload,
                    COMMAND_TIMEOUT,
                )
                .await
                {
                    commands::Answer::Settled(o) => delivery_state(o),
                    commands::Answer::Gone => {
                        bus.forget_instance(&instance).await;
                        hub::release()
                    }
                    commands::Answer::TimedOut => {
                        tracing::debug!(%instance, "command not settled by the adapter in time");
                        hub::release()
                    }
                    commands::Answer::Failed(e) => {
                        tracing::debug!(error = %e, %instance, "command not settled by the adapter");
                        hub::release()
                    }
                };
                shared.hub.consumer_settled(&consumer, origin, state);
                let now = in_flight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) - 1;
                shared
                    .hub
                    .consumer_credit(&addr, &consumer, COMMAND_CREDIT.saturating_sub(now));
            });
        }
    }

    /// An adapter instance did not answer: it is gone. Its routes are deleted (unless a newer route of
    /// another instance replaced them meanwhile), so later commands for its devices are released at once
    /// without a request, until the devices subscribe elsewhere.
    async fn forget_instance(&self, instance: &str) {
        let Ok(store) = self.routes().await else {
            return;
        };
        let Ok(mut keys) = store.keys().await else {
            return;
        };
        let mut stale = Vec::new();
        while let Some(Ok(key)) = keys.next().await {
            if matches!(
                routes::parse_key(&key),
                Some((routes::RouteKind::Device | routes::RouteKind::Gateway, _, _))
            ) {
                stale.push(key);
            }
        }
        let mut deleted = 0;
        for key in stale {
            if let Ok(true) = routes::delete_if(store, &key, instance.as_bytes()).await {
                deleted += 1;
            }
        }
        if deleted > 0 {
            tracing::info!(%instance, deleted, "adapter instance does not answer; its command routes were deleted");
        }
    }
}

/// The hub's routes and this router's stand-ins, as the route mirror changes them.
struct HubRoutes<'a, S: EventStore> {
    bus: &'a Arc<Bus>,
    shared: &'a Arc<Shared<S>>,
}

impl<S: EventStore> RouteTable for HubRoutes<'_, S> {
    fn subscribe(
        &mut self,
        kind: routes::RouteKind,
        tenant: &TenantId,
        id: &ferry_core::ids::DeviceId,
        instance: &str,
    ) -> bool {
        let Some(a) = self.bus.instance(self.shared, instance) else {
            return false;
        };
        match kind {
            routes::RouteKind::Device => {
                self.shared.hub.subscribe_commands(tenant, id.as_str(), &a)
            }
            routes::RouteKind::Gateway => {
                self.shared.hub.subscribe_gateway(tenant, id.as_str(), &a)
            }
            routes::RouteKind::LastGateway => return false,
        }
        true
    }

    fn unsubscribe(
        &mut self,
        kind: routes::RouteKind,
        tenant: &TenantId,
        id: &ferry_core::ids::DeviceId,
        instance: &str,
    ) {
        let Some(a) = lock(&self.bus.instances)
            .get(instance)
            .map(|i| i.addr.clone())
        else {
            return;
        };
        match kind {
            routes::RouteKind::Device => {
                self.shared
                    .hub
                    .unsubscribe_commands(tenant, id.as_str(), &a)
            }
            routes::RouteKind::Gateway => {
                self.shared.hub.unsubscribe_gateway(tenant, id.as_str(), &a)
            }
            routes::RouteKind::LastGateway => {}
        }
    }

    fn set_last_gateway(
        &mut self,
        tenant: &TenantId,
        id: &ferry_core::ids::DeviceId,
        gateway: &ferry_core::ids::DeviceId,
    ) {
        self.shared
            .hub
            .set_last_gateway(tenant, id.as_str(), gateway.as_str());
    }

    fn drop_instance(&mut self, instance: &str) {
        self.bus.drop_instance(self.shared, instance);
    }
}
