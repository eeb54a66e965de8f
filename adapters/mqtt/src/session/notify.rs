//! Events the adapter sends about a device on its own (HONO-CONTRACT §1.2): ttd notifications for command
//! subscriptions and connection events, each chain in the order the device caused them ([`Step`]).

use std::sync::Arc;

use bytes::Bytes;
use ferry_adapter_core::downstream::{DeviceMessage, MessageKind, SendOutcome};
use ferry_adapter_core::registry::{Assertion, AssertionOutcome};
use ferry_core::hono::content_type;
use ferry_core::ids::{DeviceId, TenantId};
use tokio::sync::oneshot;

use super::{Authenticated, Session, ADAPTER_TYPE};
use crate::Shared;

/// One link in a chain of a session's subscription changes, or of its notifications. Their futures
/// run concurrently, so each waits for the one before it: a quick SUBSCRIBE–UNSUBSCRIBE must not
/// unregister before it registered, nor announce ttd 0 before ttd -1. Dropping a step (finished or
/// cancelled) lets the next one go.
pub(super) struct Step {
    pub(super) previous: Option<oneshot::Receiver<()>>,
    pub(super) _done: oneshot::Sender<()>,
}

impl Step {
    /// The next step of the chain whose last step `last` holds.
    pub(super) fn after(last: &mut Option<oneshot::Receiver<()>>) -> Self {
        let (done, next) = oneshot::channel();
        Step {
            previous: last.replace(next),
            _done: done,
        }
    }

    pub(super) async fn ready(&mut self) {
        if let Some(previous) = self.previous.take() {
            // Err only means the previous step was dropped, which is as good as finished.
            let _ = previous.await;
        }
    }
}

/// An event about a device that the adapter sends on its own (HONO-CONTRACT §1.2).
pub(super) struct Notification {
    pub(super) device: DeviceId,
    /// The gateway that subscribed for the device, if it was not the device itself.
    pub(super) gateway: Option<DeviceId>,
    pub(super) content_type: &'static str,
    pub(super) payload: Bytes,
    pub(super) ttd: Option<i32>,
    /// The subscription's filter for ttd notifications; empty for connection events.
    pub(super) orig_address: String,
}

impl Notification {
    pub(super) fn ttd(
        device: DeviceId,
        gateway: Option<DeviceId>,
        ttd: i32,
        filter: String,
    ) -> Self {
        Self {
            device,
            gateway,
            content_type: content_type::EMPTY_NOTIFICATION,
            payload: Bytes::new(),
            ttd: Some(ttd),
            orig_address: filter,
        }
    }

    /// Hono's connection event body: `cause` is `connected` or `disconnected`.
    pub(super) fn connection(device: DeviceId, cause: &str, remote_id: &str) -> Self {
        let body = serde_json::json!({
            "cause": cause,
            "remote-id": remote_id,
            "source": ADAPTER_TYPE,
            "data": {},
        });
        Self {
            device,
            gateway: None,
            content_type: content_type::CONNECTION_NOTIFICATION,
            payload: Bytes::from(body.to_string()),
            ttd: None,
            orig_address: String::new(),
        }
    }
}

/// Sends `notifications` once `step` may go (in a task of their own: nobody waits for them).
pub(super) fn spawn_notify(
    shared: &Arc<Shared>,
    who: &Authenticated,
    mut step: Step,
    notifications: Vec<Notification>,
) {
    if notifications.is_empty() {
        return;
    }
    let shared = shared.clone();
    let tenant = who.tenant.clone();
    let fallback = who.assertion.clone();
    tokio::spawn(async move {
        step.ready().await;
        notify(&shared, &tenant, Some(&fallback), notifications).await;
        drop(step);
    });
}

/// [`spawn_notify`] for an unauthenticated session, whose subscriptions name their tenants.
pub(super) fn spawn_notify_each(
    shared: &Arc<Shared>,
    mut step: Step,
    notifications: Vec<(TenantId, Notification)>,
) {
    if notifications.is_empty() {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        step.ready().await;
        for (tenant, n) in notifications {
            notify(&shared, &tenant, None, vec![n]).await;
        }
        drop(step);
    });
}

/// Sends `notifications` as events, in order. A notification that cannot be sent is logged and
/// skipped: it informs applications, and the device's session does not depend on it.
pub(super) async fn notify(
    shared: &Shared,
    tenant: &TenantId,
    fallback: Option<&Arc<Assertion>>,
    notifications: Vec<Notification>,
) {
    for n in notifications {
        let assertion = match shared
            .registry
            .assertion(tenant, &n.device, n.gateway.as_ref())
            .await
        {
            Ok(AssertionOutcome::Granted(a)) => a,
            _ if n.gateway.is_none() && fallback.is_some_and(|f| f.device_id == n.device) => {
                match fallback {
                    Some(f) => f.clone(),
                    None => continue,
                }
            }
            other => {
                tracing::debug!(%tenant, device = %n.device, ?other, "no assertion for a notification");
                continue;
            }
        };
        let msg = DeviceMessage {
            kind: MessageKind::Event,
            tenant: tenant.clone(),
            device_id: n.device,
            qos: 1,
            content_type: Some(n.content_type.to_owned()),
            payload: n.payload,
            assertion: assertion.token.clone(),
            orig_adapter: ADAPTER_TYPE,
            orig_address: n.orig_address,
            ttl_ms: None,
            ttd: n.ttd,
            extra_properties: Vec::new(),
            stored_limits: None,
        };
        match shared.downstream.send(msg).await {
            Ok(SendOutcome::Accepted) => {}
            other => tracing::debug!(%tenant, ?other, "notification not accepted"),
        }
    }
}

impl Session {
    /// Sends `notifications` after the ones chained before them, without holding up the session.
    pub(super) fn notify_later(&mut self, notifications: Vec<Notification>) {
        if notifications.is_empty() {
            return;
        }
        let Some(who) = &self.who else {
            return;
        };
        let step = Step::after(&mut self.notices);
        spawn_notify(&self.shared, who, step, notifications);
    }
}
