//! SUBSCRIBE and UNSUBSCRIBE: command filters register the device(s) with the router, error filters switch
//! error reports on; subscription changes form one chain per session ([`Step`]).

use ferry_adapter_core::registry::AssertionOutcome;
use ferry_core::ids::DeviceId;

use super::notify::{spawn_notify, spawn_notify_each, Notification, Step};
use super::{CommandSub, Done, InOrder, Session};
use crate::topic::{self, DeviceFilter, Subscription, SubscriptionKind};

impl Session {
    /// SUBSCRIBE: command filters register the device(s) with the router; error filters switch on error
    /// reports. The SUBACK follows once the router knows, in order with the PUBACKs; then applications
    /// hear that each subscribed device can be reached (ttd -1).
    pub(super) fn on_subscribe(
        &mut self,
        pkid: u16,
        filters: Vec<(String, u8)>,
        pending: &mut InOrder,
    ) {
        let Some(who) = self.who.clone() else {
            self.on_subscribe_unauthenticated(pkid, filters, pending);
            return;
        };
        let mut granted = Vec::with_capacity(filters.len());
        // Command subscriptions to set up: where in `granted`, for which device, the filter, and
        // whether it is the gateway's subscription for all its devices.
        let mut wanted: Vec<(usize, DeviceId, String, bool)> = Vec::new();
        for (filter, qos) in filters {
            let sub = match topic::parse_subscription(&filter) {
                Ok(s) if qos <= 1 && s.tenant.as_ref().is_none_or(|t| *t == who.tenant) => s,
                _ => {
                    granted.push(None);
                    continue;
                }
            };
            let device = match (sub.kind, &sub.device) {
                (SubscriptionKind::Error, _) => {
                    self.rare().error_sub = Some(sub);
                    granted.push(Some(0));
                    continue;
                }
                (SubscriptionKind::Command, DeviceFilter::Own | DeviceFilter::All) => {
                    who.device.clone()
                }
                (SubscriptionKind::Command, DeviceFilter::One(d)) => d.clone(),
            };
            let all = sub.device == DeviceFilter::All;
            let command_sub = CommandSub {
                tenant: who.tenant.clone(),
                device: device.clone(),
                sub,
                filter: filter.clone(),
                qos,
            };
            if all {
                // All its devices, and itself: its own commands come on this filter too.
                self.rare().all_devices = Some(command_sub.clone());
            }
            let subs = &mut self.rare().command_subs;
            subs.retain(|c| c.device != device);
            subs.push(command_sub);
            wanted.push((granted.len(), device, filter, all));
            granted.push(Some(qos));
        }
        if wanted.is_empty() {
            // Nothing for the router: the SUBACK only keeps its place among the PUBACKs.
            pending.push_back(Box::pin(async move { Done::SubAck { pkid, granted } }));
            return;
        }
        let mut change = Step::after(&mut self.changes);
        let notice = Step::after(&mut self.notices);
        let shared = self.shared.clone();
        let gateway = who.device.clone();
        let tenant = who.tenant.clone();
        let target = self.command_target();
        pending.push_back(Box::pin(async move {
            change.ready().await;
            let mut notifications = Vec::with_capacity(wanted.len());
            for (index, device, filter, all) in wanted {
                let for_gateway = (device != gateway).then(|| gateway.clone());
                // A gateway for one of its devices: the registry decides. The route waits for its
                // answer, as it replaces the device's own and would hand its commands to any gateway.
                let allowed = for_gateway.is_none()
                    || matches!(
                        shared
                            .registry
                            .assertion(&tenant, &device, for_gateway.as_ref())
                            .await,
                        Ok(AssertionOutcome::Granted(_))
                    );
                let registered = allowed && {
                    shared.route(&tenant, &device, target.clone());
                    let mut ok = shared.command_link.register(&tenant, &device).await.is_ok();
                    if ok && all {
                        shared.route_gateway(&tenant, &device, target.clone());
                        ok = shared
                            .command_link
                            .register_gateway(&tenant, &device)
                            .await
                            .is_ok();
                        if !ok {
                            shared.unroute_gateway(&tenant, &device, target.session);
                        }
                    }
                    if !ok {
                        shared.unroute(&tenant, &device, target.session);
                    }
                    ok
                };
                if registered {
                    notifications.push(Notification::ttd(device, for_gateway, -1, filter));
                } else if let Some(g) = granted.get_mut(index) {
                    // Not allowed, or transient: the device should subscribe again (§2.2: 0x80).
                    *g = None;
                }
            }
            drop(change);
            spawn_notify(&shared, &who, notice, notifications);
            Done::SubAck { pkid, granted }
        }));
    }
    /// SUBSCRIBE of an unauthenticated device: only command filters naming tenant and device
    /// (`c/TENANT/DEVICE/q/#`), for tenants that let `hono-mqtt` devices go unauthenticated and devices
    /// that are registered and enabled; anything else gets SUBACK 0x80.
    pub(super) fn on_subscribe_unauthenticated(
        &mut self,
        pkid: u16,
        filters: Vec<(String, u8)>,
        pending: &mut InOrder,
    ) {
        let mut granted = Vec::with_capacity(filters.len());
        let mut wanted: Vec<(usize, CommandSub)> = Vec::new();
        for (filter, qos) in filters {
            match topic::parse_subscription(&filter) {
                Ok(Subscription {
                    kind: SubscriptionKind::Command,
                    tenant: Some(tenant),
                    device: DeviceFilter::One(device),
                    long_form,
                }) if qos <= 1 => {
                    let sub = Subscription {
                        kind: SubscriptionKind::Command,
                        tenant: Some(tenant.clone()),
                        device: DeviceFilter::One(device.clone()),
                        long_form,
                    };
                    wanted.push((
                        granted.len(),
                        CommandSub {
                            tenant,
                            device,
                            sub,
                            filter,
                            qos,
                        },
                    ));
                    granted.push(Some(qos));
                }
                _ => granted.push(None),
            }
        }
        if wanted.is_empty() {
            pending.push_back(Box::pin(async move { Done::SubAck { pkid, granted } }));
            return;
        }
        // Recorded at once, so that a command arriving before the SUBACK finds its topic; a refused
        // one never gets a route, so it never receives commands.
        let subs = &mut self.rare().command_subs;
        for (_, c) in &wanted {
            subs.retain(|o| !(o.tenant == c.tenant && o.device == c.device));
            subs.push(c.clone());
        }
        let mut change = Step::after(&mut self.changes);
        let notice = Step::after(&mut self.notices);
        let shared = self.shared.clone();
        let target = self.command_target();
        pending.push_back(Box::pin(async move {
            change.ready().await;
            let mut notifications = Vec::with_capacity(wanted.len());
            for (index, c) in wanted {
                let allowed = shared
                    .pipeline()
                    .unauthenticated_tenant(&c.tenant)
                    .await
                    .is_ok()
                    && matches!(
                        shared.registry.assertion(&c.tenant, &c.device, None).await,
                        Ok(AssertionOutcome::Granted(_))
                    );
                let registered = allowed && {
                    shared.route(&c.tenant, &c.device, target.clone());
                    let ok = shared
                        .command_link
                        .register(&c.tenant, &c.device)
                        .await
                        .is_ok();
                    if !ok {
                        shared.unroute(&c.tenant, &c.device, target.session);
                    }
                    ok
                };
                if registered {
                    notifications.push((c.tenant, Notification::ttd(c.device, None, -1, c.filter)));
                } else if let Some(g) = granted.get_mut(index) {
                    *g = None;
                }
            }
            drop(change);
            spawn_notify_each(&shared, notice, notifications);
            Done::SubAck { pkid, granted }
        }));
    }
    /// UNSUBSCRIBE of an unauthenticated device: the named devices' subscriptions end (ttd 0).
    pub(super) fn on_unsubscribe_unauthenticated(
        &mut self,
        pkid: u16,
        filters: Vec<String>,
        pending: &mut InOrder,
    ) {
        let count = filters.len();
        let mut gone: Vec<CommandSub> = Vec::new();
        for filter in filters {
            let Ok(Subscription {
                kind: SubscriptionKind::Command,
                tenant: Some(tenant),
                device: DeviceFilter::One(device),
                ..
            }) = topic::parse_subscription(&filter)
            else {
                continue;
            };
            let subs = &mut self.rare().command_subs;
            if let Some(i) = subs
                .iter()
                .position(|c| c.tenant == tenant && c.device == device)
            {
                gone.push(subs.swap_remove(i));
            }
        }
        let mut change = Step::after(&mut self.changes);
        let notice = Step::after(&mut self.notices);
        let shared = self.shared.clone();
        let session = self.id;
        pending.push_back(Box::pin(async move {
            change.ready().await;
            let mut notifications = Vec::with_capacity(gone.len());
            for c in gone {
                if shared.unroute(&c.tenant, &c.device, session) {
                    let _ = shared.command_link.unregister(&c.tenant, &c.device).await;
                    notifications.push((c.tenant, Notification::ttd(c.device, None, 0, c.filter)));
                }
            }
            drop(change);
            spawn_notify_each(&shared, notice, notifications);
            Done::UnsubAck { pkid, count }
        }));
    }
    /// UNSUBSCRIBE: the router forgets the device(s); then applications hear they are gone (ttd 0).
    pub(super) fn on_unsubscribe(
        &mut self,
        pkid: u16,
        filters: Vec<String>,
        pending: &mut InOrder,
    ) {
        let count = filters.len();
        let Some(who) = self.who.clone() else {
            self.on_unsubscribe_unauthenticated(pkid, filters, pending);
            return;
        };
        let mut gone: Vec<(DeviceId, String)> = Vec::new();
        // The gateway's subscription for all its devices ends.
        let mut all_gone = false;
        for filter in filters {
            let Ok(sub) = topic::parse_subscription(&filter) else {
                continue;
            };
            let device = match (sub.kind, sub.device) {
                (SubscriptionKind::Error, _) => {
                    self.rare().error_sub = None;
                    continue;
                }
                (SubscriptionKind::Command, DeviceFilter::Own) => who.device.clone(),
                (SubscriptionKind::Command, DeviceFilter::One(d)) => d,
                (SubscriptionKind::Command, DeviceFilter::All) => {
                    let rare = self.rare();
                    if rare.all_devices.take().is_none() {
                        continue;
                    }
                    all_gone = true;
                    // Its own commands stay if a newer filter of its own took them over.
                    let own_on_all = rare
                        .command_subs
                        .iter()
                        .any(|c| c.device == who.device && c.sub.device == DeviceFilter::All);
                    if !own_on_all {
                        continue;
                    }
                    who.device.clone()
                }
            };
            gone.push((device, filter));
        }
        self.rare()
            .command_subs
            .retain(|c| !gone.iter().any(|(g, _)| *g == c.device));
        if all_gone
            && self
                .shared
                .unroute_gateway(&who.tenant, &who.device, self.id)
        {
            // In the chain of subscription changes, so that a SUBSCRIBE right after cannot be undone.
            let link = self.shared.command_link.clone();
            let (tenant, gateway) = (who.tenant.clone(), who.device.clone());
            let mut change = Step::after(&mut self.changes);
            tokio::spawn(async move {
                change.ready().await;
                let _ = link.unregister_gateway(&tenant, &gateway).await;
            });
        }
        if gone.is_empty() {
            pending.push_back(Box::pin(async move { Done::UnsubAck { pkid, count } }));
            return;
        }
        let mut change = Step::after(&mut self.changes);
        let notice = Step::after(&mut self.notices);
        let shared = self.shared.clone();
        let tenant = who.tenant.clone();
        let own = who.device.clone();
        let session = self.id;
        pending.push_back(Box::pin(async move {
            change.ready().await;
            let mut notifications = Vec::with_capacity(gone.len());
            for (device, filter) in gone {
                // Only when the device's commands still came here: a newer session may hold them.
                if shared.unroute(&tenant, &device, session) {
                    let _ = shared.command_link.unregister(&tenant, &device).await;
                    let gateway = (device != own).then(|| own.clone());
                    notifications.push(Notification::ttd(device, gateway, 0, filter));
                }
            }
            drop(change);
            spawn_notify(&shared, &who, notice, notifications);
            Done::UnsubAck { pkid, count }
        }));
    }
    /// The device is gone: its commands go back, its subscriptions end (ttd 0), and with connection
    /// events on, applications hear that it disconnected.
    pub(super) async fn cleanup(&mut self) {
        let rare = self.rare.take().map(|r| *r).unwrap_or_default();
        for (_, c) in rare.inflight {
            c.release();
        }
        let Some(who) = self.who.clone() else {
            let mut notifications = Vec::new();
            for c in rare.command_subs {
                if self.shared.unroute(&c.tenant, &c.device, self.id) {
                    let _ = self
                        .shared
                        .command_link
                        .unregister(&c.tenant, &c.device)
                        .await;
                    notifications.push((c.tenant, Notification::ttd(c.device, None, 0, c.filter)));
                }
            }
            let step = Step::after(&mut self.notices);
            spawn_notify_each(&self.shared, step, notifications);
            return;
        };
        if rare.all_devices.is_some()
            && self
                .shared
                .unroute_gateway(&who.tenant, &who.device, self.id)
        {
            let _ = self
                .shared
                .command_link
                .unregister_gateway(&who.tenant, &who.device)
                .await;
        }
        let mut notifications = Vec::new();
        for CommandSub { device, filter, .. } in rare.command_subs {
            if self.shared.unroute(&who.tenant, &device, self.id) {
                let _ = self
                    .shared
                    .command_link
                    .unregister(&who.tenant, &device)
                    .await;
                let gateway = (device != who.device).then(|| who.device.clone());
                notifications.push(Notification::ttd(device, gateway, 0, filter));
            }
        }
        if self.presence_reported {
            self.shared.command_link.report_presence(
                &who.tenant,
                &who.device,
                ferry_core::hono::adapter_type::MQTT,
                &self.remote_id(),
                self.id,
                false,
            );
        }
        if self.announced {
            let remote_id = self.remote_id();
            notifications.push(Notification::connection(
                who.device.clone(),
                "disconnected",
                &remote_id,
            ));
        }
        self.notify_later(notifications);
    }
}
