//! Commands (HONO-CONTRACT §1.3, docs/router.md "Commands"): how an adapter instance hears the commands
//! of its devices and tells the bus which devices it holds, behind one [`CommandLink`] for both buses.
//!
//! Layout: this file holds [`CommandLink`]; `command` the [`Command`] handle and how it is settled;
//! `parse` how a command is read; `amqp` the `command_internal` link pair to an embedded router; `nats`
//! the command subscription and routes in cluster mode. Both buses' halves use the handle and the bus
//! they ride on; neither bus (`downstream::amqp`, `downstream::nats`) knows commands.

use std::sync::Arc;

use ferry_core::ids::{DeviceId, TenantId};
use tokio::sync::mpsc;

use super::amqp::Inner;
use super::nats::Nats;
use super::DownstreamError;

mod amqp;
mod command;
mod nats;
mod parse;
pub use command::Command;

/// Registers and unregisters this instance's devices: at the router over `command_internal` (embedded
/// mode) or as routes in NATS's key-value bucket (cluster mode); cheap to clone.
#[derive(Clone)]
pub struct CommandLink {
    imp: LinkImp,
}

#[derive(Clone)]
enum LinkImp {
    Amqp(amqp::AmqpLink),
    Nats(Arc<nats::Routes>),
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
    /// Opens this instance's command links to an embedded router (see [`amqp::open`]).
    pub(super) fn open_amqp(
        inner: &Arc<Inner>,
        instance_id: &str,
    ) -> (Self, mpsc::Receiver<Command>) {
        let (link, rx) = amqp::open(inner, instance_id);
        let imp = LinkImp::Amqp(link);
        (Self { imp }, rx)
    }

    /// Subscribes to this instance's commands on NATS and opens its routes (see [`nats::open`]).
    pub(super) fn open_nats(bus: &Nats, instance_id: &str) -> (Self, mpsc::Receiver<Command>) {
        let (routes, rx) = nats::open(bus, instance_id);
        let imp = LinkImp::Nats(routes);
        (Self { imp }, rx)
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

#[cfg(test)]
mod tests;
