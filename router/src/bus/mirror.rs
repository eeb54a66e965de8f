//! The command-route bucket as this router mirrors it into the hub: what each key holds and how many
//! routes each adapter instance holds. It outlives one watch of the bucket: when a watch fails and a new one
//! starts, the new one replays only what the bucket holds now, so what this mirror still holds from before
//! is the only record of the routes to undo (keys deleted or expired meanwhile) and of the instances whose
//! stand-ins can go.

use std::collections::{HashMap, HashSet};

use ferry_core::ids::{DeviceId, TenantId};
use ferry_nats::routes::{self, RouteKind};

/// What the mirror changes: the hub's routes and the instances' stand-in consumers.
pub(super) trait RouteTable {
    /// Routes `id`'s commands (its own, or as gateway for all its devices) to adapter instance
    /// `instance`; false when there is no such instance to route to.
    fn subscribe(
        &mut self,
        kind: RouteKind,
        tenant: &TenantId,
        id: &DeviceId,
        instance: &str,
    ) -> bool;
    /// Ends that route, if it still points at `instance`.
    fn unsubscribe(&mut self, kind: RouteKind, tenant: &TenantId, id: &DeviceId, instance: &str);
    fn set_last_gateway(&mut self, tenant: &TenantId, id: &DeviceId, gateway: &DeviceId);
    /// `instance` holds no route any more.
    fn drop_instance(&mut self, instance: &str);
}

#[derive(Debug, Default)]
pub(super) struct Mirror {
    /// What each key holds now, to undo a route when its key is deleted or changes.
    known: HashMap<String, String>,
    /// Device and gateway routes per adapter instance: at none, the instance's stand-in goes.
    held: HashMap<String, usize>,
}

impl Mirror {
    /// Whether anything is mirrored (a watch that starts on an empty mirror has nothing to reconcile).
    pub(super) fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Key `key` now holds `value` (`None`: it was deleted or purged, or holds no text).
    pub(super) fn apply(&mut self, table: &mut impl RouteTable, key: &str, value: Option<&str>) {
        let Some((kind, tenant, id)) = routes::parse_key(key) else {
            return;
        };
        let (Ok(tenant), Ok(id)) = (TenantId::new(&tenant), DeviceId::new(&id)) else {
            return;
        };
        // A new watch replays what is mirrored already: nothing to do.
        if value.is_some() && self.known.get(key).map(String::as_str) == value {
            return;
        }
        if let Some(prev) = self.known.remove(key) {
            self.undo(table, kind, &tenant, &id, &prev);
        }
        let Some(value) = value else {
            return;
        };
        match kind {
            RouteKind::Device | RouteKind::Gateway => {
                if !table.subscribe(kind, &tenant, &id, value) {
                    return;
                }
                *self.held.entry(value.to_owned()).or_default() += 1;
            }
            RouteKind::LastGateway => match DeviceId::new(value) {
                Ok(gateway) => table.set_last_gateway(&tenant, &id, &gateway),
                Err(_) => return,
            },
        }
        self.known.insert(key.to_owned(), value.to_owned());
    }

    /// A new watch is about to start and the bucket holds `present`: every mirrored key not among them
    /// went while no watch ran, and is undone.
    pub(super) fn keep_only(&mut self, table: &mut impl RouteTable, present: &HashSet<String>) {
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.apply(table, &key, None);
        }
    }

    fn undo(
        &mut self,
        table: &mut impl RouteTable,
        kind: RouteKind,
        tenant: &TenantId,
        id: &DeviceId,
        instance: &str,
    ) {
        if kind == RouteKind::LastGateway {
            return;
        }
        table.unsubscribe(kind, tenant, id, instance);
        if let Some(n) = self.held.get_mut(instance) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.held.remove(instance);
                table.drop_instance(instance);
            }
        }
    }
}

#[cfg(test)]
mod tests;
