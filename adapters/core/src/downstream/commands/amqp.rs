//! Commands in embedded mode (HONO-CONTRACT §1.3, docs/router.md "Commands"): the adapter instance's link pair on
//! `command_internal/INSTANCE`: a receiver for the commands of all its devices, and a sender on which it
//! announces which devices it holds (`register` / `unregister`).
//!
//! One task owns both links and follows the downstream connection: after every reconnect it attaches
//! them again and re-registers every device it holds in a few bulk messages, because the router forgets
//! an instance's subscriptions when its link goes. Commands are settled by the adapter through the
//! [`Command`] handle, from any task, without touching the link (a channel to the owning task).
//!
//! Layout: this file holds the handle the [`CommandLink`] drives ([`AmqpLink`]) and its control queue;
//! `task` the task that owns the two links.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::ids::{DeviceId, TenantId};
use tokio::sync::{mpsc, oneshot};

use super::Command;
use crate::downstream::amqp::Delivery;
use crate::downstream::amqp::{outcome_of, Inner};
use crate::downstream::{DownstreamError, SendOutcome};
use task::Task;

mod task;

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
    reply: Option<oneshot::Sender<Result<Delivery, DownstreamError>>>,
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
                    SendOutcome::Accepted => Ok(()),
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

/// Opens this instance's command links (`command_internal/INSTANCE`): the returned [`AmqpLink`]
/// registers devices, the receiver yields their commands. Call once per instance; the links follow
/// reconnects and re-register every device. Dropping both ends closes the links.
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

#[cfg(test)]
mod tests;
