//! Commands to the device: published on the topic its subscription mirrors, QoS 1 ones held until the
//! device's PUBACK (HONO-CONTRACT §1.3, §2.2).

use std::collections::HashMap;

use ferry_adapter_core::downstream::Command;
use ferry_core::ids::{DeviceId, TenantId};

use super::{Rare, Session};
use crate::metrics::Status;
use crate::topic::{self, Subscription};
use crate::wire::Outgoing;

/// A command subscription of a session: whose commands, and how they are delivered.
#[derive(Debug, Clone)]
pub(super) struct CommandSub {
    pub(super) tenant: TenantId,
    pub(super) device: DeviceId,
    /// The filter, parsed (the delivery topic mirrors it) and as the device wrote it.
    pub(super) sub: Subscription,
    pub(super) filter: String,
    pub(super) qos: u8,
}

/// Commands from the router waiting for a session to write them to its device. The session takes them
/// as fast as it can write to the socket, so a full queue means the device is not reading (or the
/// session is stuck behind a slow socket write): a command beyond it is released at once, so that the
/// application may retry, and counted as undeliverable ([`CommandTarget::offer`]).
pub const COMMAND_QUEUE: usize = 128;

/// A session's command subscription for one device.
#[derive(Debug, Clone)]
pub struct CommandTarget {
    pub session: u64,
    /// Boxed, because the channel allocates its first block of slots with the session: a command is
    /// some 300 bytes, and every idle connection would pay for 32 of them.
    pub tx: tokio::sync::mpsc::Sender<Box<Command>>,
}

/// A session's end of its command queue, and the sending end it hands to the routes.
pub(super) struct Commands {
    tx: tokio::sync::mpsc::Sender<Box<Command>>,
    rx: tokio::sync::mpsc::Receiver<Box<Command>>,
}

/// The next command for the session; never, while no queue was made.
pub(super) async fn next(rare: &mut Option<Box<Rare>>) -> Option<Box<Command>> {
    match rare.as_mut().and_then(|r| r.commands.as_mut()) {
        Some(c) => c.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Why a session did not take a command; the command is handed back to be settled.
#[derive(Debug)]
pub enum NotTaken {
    /// The session's queue is full ([`COMMAND_QUEUE`]).
    Full(Box<Command>),
    /// The session has ended.
    Gone(Box<Command>),
}

impl CommandTarget {
    /// Queues `command` for the session, without waiting.
    pub fn offer(&self, command: Command) -> Result<(), NotTaken> {
        use tokio::sync::mpsc::error::TrySendError;
        match self.tx.try_send(Box::new(command)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(c)) => Err(NotTaken::Full(c)),
            Err(TrySendError::Closed(c)) => Err(NotTaken::Gone(c)),
        }
    }
}

/// Hono's `direction` label of a command.
pub(crate) fn direction(command: &Command) -> &'static str {
    if command.reply_to.is_some() {
        "request"
    } else {
        "one-way"
    }
}

impl Session {
    /// Where the routes send this session's commands (the queue is made on first use).
    pub(super) fn command_target(&mut self) -> CommandTarget {
        let id = self.id;
        let commands = self.rare().commands.get_or_insert_with(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(COMMAND_QUEUE);
            Commands { tx, rx }
        });
        CommandTarget {
            session: id,
            tx: commands.tx.clone(),
        }
    }
    /// Hono's command metrics for a command handed (or not) to the device.
    pub(super) fn count_command(&self, command: &Command, status: Status) {
        self.shared.metrics.command(
            &command.tenant,
            direction(command),
            status,
            command.payload.len(),
        );
    }
    /// Publishes a command to the device on the topic its subscription mirrors; returns the packet id
    /// when the device must PUBACK it (QoS 1).
    pub(super) fn deliver_command(&mut self, command: Command) -> Option<u16> {
        let rare = self.rare.as_deref();
        let own = rare.and_then(|r| {
            r.command_subs
                .iter()
                .find(|c| c.device == command.device && c.tenant == command.tenant)
        });
        // Without a subscription for the device, the router sent it through this gateway (`via`).
        let through_gateway = || {
            rare.and_then(|r| r.all_devices.as_ref())
                .filter(|a| a.tenant == command.tenant && command.via.as_ref() == Some(&a.device))
        };
        let Some((sub, qos)) = own.or_else(through_gateway).map(|c| (c.sub.clone(), c.qos)) else {
            command.release();
            return None;
        };
        if command.name.is_empty()
            || command
                .name
                .chars()
                .any(|c| matches!(c, '/' | '+' | '#' | '\0'))
        {
            command.reject(
                "hono:bad-request",
                "the command name cannot be a topic level",
            );
            return None;
        }
        let request_id = match (&command.reply_to, command.response_correlation_id()) {
            (None, _) => None,
            (Some(reply_to), Some(correlation)) => {
                let prefix = format!("command_response/{}/", command.tenant);
                let reply = reply_to.strip_prefix(&prefix).unwrap_or(reply_to);
                match topic::request_id(correlation, reply, false) {
                    Some(id) => Some(id),
                    None => {
                        command.reject(
                            "hono:bad-request",
                            "correlation or reply id unusable in a topic",
                        );
                        return None;
                    }
                }
            }
            (Some(_), None) => {
                command.reject(
                    "hono:bad-request",
                    "a request needs a message-id or correlation-id",
                );
                return None;
            }
        };
        // A gateway receives commands for its devices with the device level; a device (authenticated,
        // or unauthenticated with the device in its filter) its own as the filter has it.
        let device_in_topic = self
            .who
            .as_ref()
            .is_some_and(|w| command.device != w.device)
            .then(|| command.device.to_string());
        let topic = topic::command_topic(
            &sub,
            device_in_topic.as_deref(),
            request_id.as_deref(),
            &command.name,
        );
        let pkid = if qos == 1 {
            let rare = self.rare();
            match next_packet_id(rare.next_pkid, &rare.inflight) {
                Some(id) => {
                    rare.next_pkid = id;
                    id
                }
                None => {
                    // Every packet id waits for a PUBACK: the device is not keeping up.
                    command.release();
                    return None;
                }
            }
        } else {
            0
        };
        let written = self
            .write(&Outgoing::Publish {
                topic: &topic,
                qos,
                pkid,
                payload: command.payload.clone(),
            })
            .is_ok();
        match (written, qos) {
            (false, _) => {
                self.count_command(&command, Status::Undeliverable);
                command.release();
                None
            }
            (true, 0) => {
                self.count_command(&command, Status::Forwarded);
                command.accept();
                None
            }
            (true, _) => {
                self.rare().inflight.insert(pkid, command);
                Some(pkid)
            }
        }
    }
}

/// The packet id after `last` that no unacknowledged command holds; `None` when all 65,535 are held.
pub(super) fn next_packet_id<T>(last: u16, inflight: &HashMap<u16, T>) -> Option<u16> {
    let mut id = last;
    for _ in 0..u16::MAX {
        id = id.wrapping_add(1);
        if id == 0 {
            id = 1;
        }
        if !inflight.contains_key(&id) {
            return Some(id);
        }
    }
    None
}
