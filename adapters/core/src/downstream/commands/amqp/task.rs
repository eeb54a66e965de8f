//! The task that owns the `command_internal` link pair: it follows the downstream connection, attaches
//! the links after every reconnect, replays the device set in bulk, hands commands to the adapter and
//! applies their settlements and the control queue's registrations to the links.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
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
use tokio::sync::{mpsc, watch};

use super::super::command::{rejected, Disposition, LinkSettle, Settle};
use super::super::parse::parse;
use super::{Control, Registration, Shared, Update, SETTLE_QUEUE};
use crate::downstream::amqp::SessionSlot;
use crate::downstream::{Command, DownstreamError};

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

pub(super) struct Task {
    pub(super) shared: std::sync::Weak<Shared>,
    pub(super) sessions: watch::Receiver<Option<Arc<SessionSlot>>>,
    pub(super) shutdown: ferry_core::shutdown::Shutdown,
    pub(super) control: mpsc::Receiver<Control>,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) credit: u32,
    pub(super) no_credit_timeout: Duration,
    pub(super) attach_timeout: Duration,
    pub(super) instance_id: String,
    /// Every [`CommandLink`] is gone: no more registrations will come.
    pub(super) control_closed: bool,
    pub(super) dropped_settlements: Arc<AtomicU64>,
}

/// Why a connected phase ended.
enum End {
    /// The link or connection failed: wait for the next connection.
    Lost,
    /// Shutdown, or nobody holds the [`CommandLink`] and the command receiver any more.
    Done,
}

impl Task {
    pub(super) async fn run(mut self) {
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
