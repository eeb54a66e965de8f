//! Commands (HONO-CONTRACT §1.3, docs/router.md "Commands"): the adapter instance's link pair on
//! `command_internal/INSTANCE`: a receiver for the commands of all its devices, and a sender on which it
//! announces which devices it holds (`register` / `unregister`).
//!
//! One task owns both links and follows the downstream connection: after every reconnect it attaches
//! them again and re-registers every device it holds in a few bulk messages, because the router forgets
//! an instance's subscriptions when its link goes. Commands are settled by the adapter through the
//! [`Command`] handle, from any task, without touching the link (a channel to the owning task).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::link::delivery::{Delivery, DeliveryInfo};
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, DeliveryState, Message, Properties, Released,
};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Receiver, Sendable, Sender};
use ferry_core::hono::{app_property, command_internal};
use ferry_core::ids::{DeviceId, TenantId};
use tokio::sync::{mpsc, oneshot, watch};

use super::{outcome_of, DownstreamError, Inner, SessionSlot};

mod command;
mod parse;
pub use command::Command;
use command::{rejected, Disposition, LinkSettle};
pub(super) use command::{NatsSettle, Settle};
use parse::parse;
pub(super) use parse::parse_message;

/// Registers and unregisters this instance's devices: at the router over `command_internal` (embedded
/// mode) or as routes in NATS's key-value bucket (cluster mode); cheap to clone.
#[derive(Clone)]
pub struct CommandLink {
    imp: LinkImp,
}

#[derive(Clone)]
enum LinkImp {
    Amqp(AmqpLink),
    Nats(Arc<super::nats::Routes>),
}

impl std::fmt::Debug for CommandLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandLink")
            .field("instance_id", &self.instance_id())
            .finish_non_exhaustive()
    }
}

macro_rules! dispatch {
    ($self:ident, $l:ident => $e:expr) => {
        match &$self.imp {
            LinkImp::Amqp($l) => $e,
            LinkImp::Nats($l) => $e,
        }
    };
}

impl CommandLink {
    pub(super) fn amqp(link: AmqpLink) -> Self {
        Self {
            imp: LinkImp::Amqp(link),
        }
    }

    pub(super) fn nats(routes: Arc<super::nats::Routes>) -> Self {
        Self {
            imp: LinkImp::Nats(routes),
        }
    }

    /// This adapter instance's id (its address `command_internal/ID`, its subject `ferry.command.ID`).
    pub fn instance_id(&self) -> &str {
        dispatch!(self, l => l.instance_id())
    }

    /// Routes `device`'s commands to this instance. The device is remembered even when this fails
    /// (not connected): it is registered when the connection comes back.
    pub async fn register(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<(), DownstreamError> {
        dispatch!(self, l => l.register(tenant, device).await)
    }

    /// Stops routing `device`'s commands to this instance.
    pub async fn unregister(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<(), DownstreamError> {
        dispatch!(self, l => l.unregister(tenant, device).await)
    }

    /// Routes to this instance the commands of every device that lists `gateway` in its `via` and has no
    /// subscription of its own (a gateway's `c//+/q/#`); they arrive with [`Command::via`] = `gateway`.
    /// The gateway's own commands need [`CommandLink::register`] as well.
    pub async fn register_gateway(
        &self,
        tenant: &TenantId,
        gateway: &DeviceId,
    ) -> Result<(), DownstreamError> {
        dispatch!(self, l => l.register_gateway(tenant, gateway).await)
    }

    /// Ends [`CommandLink::register_gateway`].
    pub async fn unregister_gateway(
        &self,
        tenant: &TenantId,
        gateway: &DeviceId,
    ) -> Result<(), DownstreamError> {
        dispatch!(self, l => l.unregister_gateway(tenant, gateway).await)
    }

    /// Presence for the console (docs/console.md): on the AMQP link to an embedded router, which holds
    /// it; in cluster mode written to NATS's presence bucket.
    pub fn report_presence(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        adapter: &'static str,
        remote_id: &str,
        session: u64,
        connected: bool,
    ) {
        dispatch!(self, l => l.report_presence(tenant, device, adapter, remote_id, session, connected))
    }

    /// Records that `device` last sent a message through `gateway`, so that among several gateways
    /// subscribed for it, its commands go to this one. Not waited for; lost while disconnected; dropped
    /// and counted when its queue is full.
    pub fn set_last_gateway(&self, tenant: &TenantId, device: &DeviceId, gateway: &DeviceId) {
        dispatch!(self, l => l.set_last_gateway(tenant, device, gateway))
    }

    /// Last-gateway updates dropped because their queue was full.
    pub fn dropped_updates(&self) -> u64 {
        dispatch!(self, l => l.dropped_updates())
    }

    /// Command settlements dropped because their queue was full.
    pub fn dropped_settlements(&self) -> u64 {
        dispatch!(self, l => l.dropped_settlements())
    }

    /// The devices currently registered (or to be registered on reconnect).
    pub fn registered(&self) -> usize {
        dispatch!(self, l => l.registered())
    }
}

/// The `command_internal` control link to the router (embedded mode).
#[derive(Clone)]
pub(super) struct AmqpLink {
    shared: Arc<Shared>,
}

/// A registration: tenant, device, and whether it is a gateway's subscription for all its devices.
type Registration = (TenantId, DeviceId, bool);

struct Shared {
    instance_id: String,
    /// What should be registered; re-sent in full after a reconnect.
    devices: Mutex<HashSet<Registration>>,
    control: mpsc::Sender<Control>,
    timeouts: (Duration, Duration),
    /// `set-last-gw` updates dropped because the control queue was full.
    dropped_updates: AtomicU64,
    /// Command settlements dropped because the settlement queue was full.
    dropped_settlements: Arc<AtomicU64>,
}

/// Registrations and `set-last-gw` updates waiting for the control link. Full: a registration waits and
/// tries again within its bound, as when the link has no credit (the device set is replayed on
/// reconnect in any case); a `set-last-gw`, which nobody waits for, is dropped and counted
/// ([`CommandLink::dropped_updates`]). Sessions that subscribe faster than the router answers fill it.
const CONTROL_QUEUE: usize = 1024;

/// Settlements (accept, release, reject) of commands handed to devices, on their way to the link task.
/// Each comes from a command the router delivered unsettled, and the router holds at most 10,000
/// unsettled commands per consumer (`MAX_UNSETTLED_PER_CONSUMER`), so twice that covers a link and the
/// stale settlements of the one before it. Full (it should never be): the settlement is dropped and
/// counted ([`CommandLink::dropped_settlements`]); the command stays unsettled at the router until the
/// link ends, and the router releases it then.
const SETTLE_QUEUE: usize = 20_000;

/// A message on the control link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Update {
    Register {
        all_devices: bool,
    },
    Unregister {
        all_devices: bool,
    },
    /// `device` last sent through the gateway in [`Control::gateway`].
    LastGateway,
    /// Presence (docs/console.md): `device` connected to this instance, or went.
    Presence {
        connected: bool,
    },
}

struct Control {
    update: Update,
    tenant: TenantId,
    device: DeviceId,
    gateway: Option<DeviceId>,
    /// The adapter type, remote id and connection id of a [`Update::Presence`] report.
    presence: Option<(&'static str, String, String)>,
    /// `None`: nobody waits for the outcome.
    reply: Option<oneshot::Sender<Result<super::link::Delivery, DownstreamError>>>,
}

impl AmqpLink {
    /// This adapter instance's id (its address `command_internal/ID`).
    pub fn instance_id(&self) -> &str {
        &self.shared.instance_id
    }

    /// Routes `device`'s commands to this instance. The device is remembered even when this fails
    /// (not connected): it is registered when the connection comes back.
    pub async fn register(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<(), DownstreamError> {
        self.update(Update::Register { all_devices: false }, tenant, device)
            .await
    }

    /// Stops routing `device`'s commands to this instance.
    pub async fn unregister(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<(), DownstreamError> {
        self.update(Update::Unregister { all_devices: false }, tenant, device)
            .await
    }

    /// Routes to this instance the commands of every device that lists `gateway` in its `via` and has no
    /// subscription of its own (a gateway's `c//+/q/#`); they arrive with [`Command::via`] = `gateway`.
    /// The gateway's own commands need [`CommandLink::register`] as well.
    pub async fn register_gateway(
        &self,
        tenant: &TenantId,
        gateway: &DeviceId,
    ) -> Result<(), DownstreamError> {
        self.update(Update::Register { all_devices: true }, tenant, gateway)
            .await
    }

    /// Ends [`CommandLink::register_gateway`].
    pub async fn unregister_gateway(
        &self,
        tenant: &TenantId,
        gateway: &DeviceId,
    ) -> Result<(), DownstreamError> {
        self.update(Update::Unregister { all_devices: true }, tenant, gateway)
            .await
    }

    /// Tells the router that `device` last sent a message through `gateway`, so that among several
    /// gateways subscribed for it, its commands go to this one. Not waited for; lost while disconnected.
    /// Dropped, and counted, when the control queue is full ([`CONTROL_QUEUE`]).
    pub fn set_last_gateway(&self, tenant: &TenantId, device: &DeviceId, gateway: &DeviceId) {
        let sent = self.shared.control.try_send(Control {
            update: Update::LastGateway,
            tenant: tenant.clone(),
            device: device.clone(),
            gateway: Some(gateway.clone()),
            presence: None,
            reply: None,
        });
        if let Err(mpsc::error::TrySendError::Full(_)) = sent {
            self.shared.dropped_updates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tells the router that `device` connected to this instance through `adapter` (`connected` =
    /// true, with the MQTT client id or peer address as `remote_id`) or went, for the presence API
    /// (docs/console.md). `session` tells this instance's connections apart. Not waited for; lost while disconnected from the router; dropped, and
    /// counted, when the control queue is full, like [`CommandLink::set_last_gateway`].
    pub fn report_presence(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        adapter: &'static str,
        remote_id: &str,
        session: u64,
        connected: bool,
    ) {
        let sent = self.shared.control.try_send(Control {
            update: Update::Presence { connected },
            tenant: tenant.clone(),
            device: device.clone(),
            gateway: None,
            presence: Some((
                adapter,
                remote_id.chars().take(256).collect(),
                format!("{}/{session}", self.shared.instance_id),
            )),
            reply: None,
        });
        if let Err(mpsc::error::TrySendError::Full(_)) = sent {
            self.shared.dropped_updates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `set-last-gw` updates dropped because the control queue was full.
    pub fn dropped_updates(&self) -> u64 {
        self.shared.dropped_updates.load(Ordering::Relaxed)
    }

    /// Command settlements dropped because the settlement queue was full (see [`SETTLE_QUEUE`]).
    pub fn dropped_settlements(&self) -> u64 {
        self.shared.dropped_settlements.load(Ordering::Relaxed)
    }

    /// The devices currently registered (or to be registered on reconnect).
    pub fn registered(&self) -> usize {
        self.shared.devices.lock().map_or(0, |d| d.len())
    }

    /// Applies `update` to the set the link replays, and sends it. While the links are not attached
    /// (at start, or while the router reconnects) or the control link has no credit yet, it is sent
    /// again every [`RETRY`] until the bound, unless a newer update of the same entry replaced it: a
    /// device subscribing just as the adapter starts is registered rather than refused.
    async fn update(
        &self,
        update: Update,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<(), DownstreamError> {
        let (credit_wait, outcome_wait) = self.shared.timeouts;
        let deadline = tokio::time::Instant::now() + credit_wait * 2 + outcome_wait;
        let mut first = true;
        loop {
            let (reply, rx) = oneshot::channel();
            let queued = {
                // Under the lock, so that the wire sees updates in the order the set does.
                let mut devices = self
                    .shared
                    .devices
                    .lock()
                    .map_err(|_| DownstreamError::Disconnected)?;
                let still_wanted = match update {
                    Update::Register { all_devices } => {
                        let key = (tenant.clone(), device.clone(), all_devices);
                        first && devices.insert(key.clone()) || devices.contains(&key)
                    }
                    Update::Unregister { all_devices } => {
                        let key = (tenant.clone(), device.clone(), all_devices);
                        first && devices.remove(&key) || !devices.contains(&key)
                    }
                    Update::LastGateway | Update::Presence { .. } => true,
                };
                if !still_wanted {
                    // A newer update of the same entry took over; it is on its way.
                    return Ok(());
                }
                first = false;
                let queued = self.shared.control.try_send(Control {
                    update,
                    tenant: tenant.clone(),
                    device: device.clone(),
                    gateway: None,
                    presence: None,
                    reply: Some(reply),
                });
                match queued {
                    Ok(()) => true,
                    // The control queue is full: tried again like an update without credit.
                    Err(mpsc::error::TrySendError::Full(_)) => false,
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return Err(DownstreamError::Disconnected)
                    }
                }
            };
            let result = async {
                if !queued {
                    return Err(DownstreamError::NoCredit);
                }
                let delivery = tokio::time::timeout_at(deadline, rx)
                    .await
                    .map_err(|_| DownstreamError::Timeout)?
                    .map_err(|_| DownstreamError::Disconnected)??;
                match outcome_of(delivery, outcome_wait).await? {
                    super::SendOutcome::Accepted => Ok(()),
                    other => Err(DownstreamError::NotAccepted(other)),
                }
            }
            .await;
            match result {
                Err(DownstreamError::NotConnected | DownstreamError::NoCredit)
                    if tokio::time::Instant::now() + RETRY < deadline =>
                {
                    tokio::time::sleep(RETRY).await;
                }
                other => return other,
            }
        }
    }
}

/// How often an update is tried again while the command links are not attached.
const RETRY: Duration = Duration::from_millis(25);

/// A bulk registration (`body`, a JSON list), or the control message for `c`.
fn subscription(c: Option<&Control>, body: Vec<u8>) -> Sendable<Data> {
    let subject = match c.map(|c| c.update) {
        None | Some(Update::Register { .. }) => command_internal::REGISTER,
        Some(Update::Unregister { .. }) => command_internal::UNREGISTER,
        Some(Update::LastGateway) => command_internal::SET_LAST_GATEWAY,
        Some(Update::Presence { connected: true }) => command_internal::CONNECTED,
        Some(Update::Presence { connected: false }) => command_internal::DISCONNECTED,
    };
    let properties = Properties {
        subject: Some(subject.to_owned()),
        ..Properties::default()
    };
    let application_properties = c.map(|c| {
        let mut props = ApplicationProperties::builder()
            .insert(app_property::TENANT_ID, c.tenant.as_str())
            .insert(app_property::DEVICE_ID, c.device.as_str());
        if let Some(gateway) = &c.gateway {
            props = props.insert(app_property::GATEWAY_ID, gateway.as_str());
        }
        if let Some((adapter, remote_id, connection)) = &c.presence {
            props = props
                .insert(app_property::ORIG_ADAPTER, *adapter)
                .insert(command_internal::REMOTE_ID, remote_id.as_str())
                .insert(command_internal::CONNECTION_ID, connection.as_str());
        }
        if let Update::Register { all_devices: true } | Update::Unregister { all_devices: true } =
            c.update
        {
            props = props.insert(command_internal::ALL_DEVICES, true);
        }
        props.build()
    });
    Sendable {
        message: Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(properties),
            application_properties,
            body: Data(Binary::from(body)),
            footer: None,
        },
        message_format: 0,
        settled: None,
    }
}

/// Most devices per bulk registration message.
const BULK: usize = 1000;

pub(super) fn open(inner: &Arc<Inner>, instance_id: &str) -> (AmqpLink, mpsc::Receiver<Command>) {
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let dropped_settlements = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(Shared {
        instance_id: instance_id.to_owned(),
        devices: Mutex::new(HashSet::new()),
        control,
        timeouts: (inner.config.no_credit_timeout, inner.config.outcome_timeout),
        dropped_updates: AtomicU64::new(0),
        dropped_settlements: dropped_settlements.clone(),
    });
    let credit = inner.config.command_credit.max(1);
    // As deep as the link's credit: the router sends no more than that unsettled, so forwarding never
    // waits on the adapter while a settlement is queued behind it.
    let (tx, rx) = mpsc::channel(usize::try_from(credit).unwrap_or(1024));
    let task = Task {
        shared: Arc::downgrade(&shared),
        sessions: inner.session.subscribe(),
        shutdown: inner.shutdown.clone(),
        control: control_rx,
        commands: tx,
        credit,
        no_credit_timeout: inner.config.no_credit_timeout,
        attach_timeout: inner.config.connect_timeout,
        instance_id: instance_id.to_owned(),
        control_closed: false,
        dropped_settlements,
    };
    tokio::spawn(task.run());
    (AmqpLink { shared }, rx)
}

struct Task {
    shared: std::sync::Weak<Shared>,
    sessions: watch::Receiver<Option<Arc<SessionSlot>>>,
    shutdown: ferry_core::shutdown::Shutdown,
    control: mpsc::Receiver<Control>,
    commands: mpsc::Sender<Command>,
    credit: u32,
    no_credit_timeout: Duration,
    attach_timeout: Duration,
    instance_id: String,
    /// Every [`CommandLink`] is gone: no more registrations will come.
    control_closed: bool,
    dropped_settlements: Arc<AtomicU64>,
}

/// Why a connected phase ended.
enum End {
    /// The link or connection failed: wait for the next connection.
    Lost,
    /// Shutdown, or nobody holds the [`CommandLink`] and the command receiver any more.
    Done,
}

impl Task {
    async fn run(mut self) {
        let stop = self.shutdown.clone().wait();
        tokio::pin!(stop);
        let (settle_tx, mut settle_rx) = mpsc::channel::<Disposition>(SETTLE_QUEUE);
        let mut attempts_on_this_session = 0u32;
        let mut last_generation = 0;
        loop {
            let current = self.sessions.borrow_and_update().clone();
            let session = match current {
                Some(s) => s,
                None => {
                    // Disconnected: say so to whoever registers now; the set is replayed later.
                    tokio::select! {
                        () = &mut stop => return,
                        changed = self.sessions.changed() => {
                            if changed.is_err() {
                                return;
                            }
                        }
                        ctl = self.control.recv(), if !self.control_closed => match ctl {
                            Some(c) => {
                                if let Some(reply) = c.reply {
                                    let _ = reply.send(Err(DownstreamError::NotConnected));
                                }
                            }
                            None if self.commands.is_closed() => return,
                            None => self.control_closed = true,
                        },
                        Some(_) = settle_rx.recv() => {}
                    }
                    continue;
                }
            };
            if session.generation == last_generation {
                attempts_on_this_session += 1;
                // The router refused or dropped our links without dropping the connection: retry, but
                // not in a tight loop.
                let pause = Duration::from_millis(200) * attempts_on_this_session.min(25);
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(pause) => {}
                    _ = self.sessions.changed() => {}
                }
                if self.sessions.borrow().as_ref().map(|s| s.generation) != Some(session.generation)
                {
                    continue;
                }
            } else {
                attempts_on_this_session = 0;
                last_generation = session.generation;
            }
            let connected = tokio::select! {
                () = &mut stop => return,
                c = self.connected(&session, &settle_tx, &mut settle_rx) => c,
            };
            match connected {
                End::Lost => continue,
                End::Done => return,
            }
        }
    }

    /// Attaches the links on `session`, re-registers every device, then serves commands, settlements
    /// and registrations until something fails.
    async fn connected(
        &mut self,
        session: &Arc<SessionSlot>,
        settle_tx: &mpsc::Sender<Disposition>,
        settle_rx: &mut mpsc::Receiver<Disposition>,
    ) -> End {
        let address = format!("command_internal/{}", self.instance_id);
        let attach = async {
            let mut handle = session.handle.lock().await;
            let receiver = Receiver::builder()
                .name(format!("{address}#in-{}", session.generation))
                .source(address.as_str())
                .credit_mode(CreditMode::Auto(self.credit))
                .attach(&mut *handle)
                .await;
            match receiver {
                Ok(r) => Sender::builder()
                    .name(format!("{address}#ctl-{}", session.generation))
                    .target(address.as_str())
                    .sender_settle_mode(SenderSettleMode::Unsettled)
                    .attach(&mut *handle)
                    .await
                    .map(|s| (r, s))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        // Bounded, because the session lock is held meanwhile.
        let links = tokio::time::timeout(self.attach_timeout, attach)
            .await
            .unwrap_or_else(|_| Err("attach timed out".to_owned()));
        let (mut receiver, mut sender) = match links {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%address, error = %e, "cannot attach the command links");
                return End::Lost;
            }
        };
        if !self.replay(&mut sender).await {
            return End::Lost;
        }
        tracing::debug!(%address, "command links attached");
        let generation = session.generation;
        loop {
            tokio::select! {
                delivery = receiver.recv::<Body<Value>>() => match delivery {
                    Ok(d) => {
                        if let Err(state) = self.forward(d, generation, settle_tx).await {
                            if receiver.dispose(state.0, terminal(state.1)).await.is_err() {
                                return End::Lost;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%address, error = %e, "command link lost");
                        return End::Lost;
                    }
                },
                Some(d) = settle_rx.recv() => {
                    // Settlements of an earlier link's commands are moot: the router released them.
                    if d.generation == generation
                        && receiver.dispose(d.info, terminal(d.state)).await.is_err()
                    {
                        return End::Lost;
                    }
                }
                ctl = self.control.recv(), if !self.control_closed => match ctl {
                    Some(c) => {
                        let sendable = subscription(Some(&c), Vec::new());
                        let sent = tokio::time::timeout(self.no_credit_timeout, sender.send_batchable(sendable)).await;
                        let (answer, lost) = match sent {
                            Ok(Ok(delivery)) => (Ok(delivery), false),
                            Ok(Err(_)) => (Err(DownstreamError::Disconnected), true),
                            Err(_) => (Err(DownstreamError::NoCredit), false),
                        };
                        if let Some(reply) = c.reply {
                            let _ = reply.send(answer);
                        }
                        if lost {
                            return End::Lost;
                        }
                    }
                    None => {
                        self.control_closed = true;
                        if self.commands.is_closed() {
                            let _ = receiver.close().await;
                            let _ = sender.close().await;
                            return End::Done;
                        }
                    }
                },
            }
        }
    }

    /// Registers every device held, in bulk messages; false if the link failed.
    async fn replay(&self, sender: &mut Sender) -> bool {
        let devices: Vec<Registration> = match self.shared.upgrade() {
            Some(shared) => match shared.devices.lock() {
                Ok(d) => d.iter().cloned().collect(),
                Err(_) => Vec::new(),
            },
            None => Vec::new(),
        };
        for chunk in devices.chunks(BULK) {
            let list: Vec<serde_json::Value> = chunk
                .iter()
                .map(|(t, d, all)| {
                    serde_json::json!({
                        "tenant_id": t.as_str(),
                        "device_id": d.as_str(),
                        "all_devices": all,
                    })
                })
                .collect();
            let body = serde_json::to_vec(&list).unwrap_or_default();
            match sender.send(subscription(None, body)).await {
                Ok(fe2o3_amqp::types::messaging::Outcome::Accepted(_)) => {}
                Ok(other) => {
                    tracing::warn!(outcome = ?other, "router did not accept a bulk command registration");
                }
                Err(_) => return false,
            }
        }
        if !devices.is_empty() {
            tracing::info!(
                devices = devices.len(),
                "command subscriptions re-registered"
            );
        }
        true
    }

    /// Hands a command to the adapter; `Err` with the disposition to give it at once when it is
    /// malformed or nobody listens.
    async fn forward(
        &self,
        delivery: Delivery<Body<Value>>,
        generation: u64,
        settle_tx: &mpsc::Sender<Disposition>,
    ) -> Result<(), (DeliveryInfo, DeliveryState)> {
        let info = DeliveryInfo::from(&delivery);
        let mut command = match parse(delivery) {
            Ok(c) => c,
            Err(why) => {
                return Err((info, rejected("hono:bad-request", why)));
            }
        };
        command.settle = Some(Settle::Link(LinkSettle {
            tx: settle_tx.clone(),
            dropped: self.dropped_settlements.clone(),
            generation,
            info: info.clone(),
        }));
        match self.commands.send(command).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(mut c)) => {
                // Nobody receives commands: release without going through the channel.
                c.settle = None;
                Err((info, DeliveryState::Released(Released {})))
            }
        }
    }
}

fn terminal(state: DeliveryState) -> fe2o3_amqp::link::receiver::TerminalDeliveryState {
    use fe2o3_amqp::link::receiver::TerminalDeliveryState as T;
    match state {
        DeliveryState::Accepted(a) => T::Accepted(a),
        DeliveryState::Rejected(r) => T::Rejected(r),
        DeliveryState::Modified(m) => T::Modified(m),
        _ => T::Released(Released {}),
    }
}

#[cfg(test)]
mod tests;
