//! Tenants' own limits on stored events (`resource-limits` `max-stored-events`, `max-stored-event-bytes`),
//! as the registry says, for the embedded event store (docs/router.md "Events").
//!
//! A tenant's limits are fetched when its first event producer attaches, in the background: until they
//! come, the router's defaults apply. They are fetched again when the registry's change stream announces a
//! change of the tenant (or may have missed changes), so a new limit holds within about a second. No
//! registry call is made per message or per credit decision: the limits live on the tenant's event
//! address ([`crate::hub::Hub::set_tenant_event_limits`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_core::ids::TenantId;

use crate::events::{EventStore, TenantEventLimits};
use crate::registry::{Change, ChangeKind, RegistryClient};
use crate::Shared;

/// Most tenants followed; beyond, a tenant's events get the router's defaults.
const MAX_TENANTS: usize = 100_000;
/// Longest pause between two tries while the registry cannot answer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Which tenants' limits are followed, each with the number of its latest fetch (so that an older
/// answer that arrives late does not replace a newer one).
#[derive(Debug)]
pub struct TenantLimits {
    registry: Option<RegistryClient>,
    followed: Mutex<HashMap<TenantId, u64>>,
}

impl TenantLimits {
    /// `registry` `None`: every tenant gets the router's defaults (tests without a registry).
    pub fn new(registry: Option<RegistryClient>) -> Self {
        Self {
            registry,
            followed: Mutex::new(HashMap::new()),
        }
    }

    fn followed(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, u64>> {
        self.followed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a fetch of `tenant`'s limits: its number, `None` when there is nothing to do (`only_known`
    /// and the tenant is not followed, or too many tenants are).
    fn next_fetch(&self, tenant: &TenantId, only_known: bool) -> Option<u64> {
        self.registry.as_ref()?;
        let mut followed = self.followed();
        if let Some(n) = followed.get_mut(tenant) {
            *n += 1;
            return Some(*n);
        }
        if only_known || followed.len() >= MAX_TENANTS {
            return None;
        }
        followed.insert(tenant.clone(), 0);
        Some(0)
    }
}

/// An event producer of `tenant` attached: the first time, its limits are fetched (its producers get
/// credit once they are known, or once the registry failed to answer once: then the defaults hold until
/// it does).
pub fn follow<S: EventStore>(shared: &Arc<Shared<S>>, tenant: &TenantId) {
    if shared.tenant_limits.followed().contains_key(tenant) {
        return;
    }
    match shared.tenant_limits.next_fetch(tenant, false) {
        Some(n) => {
            tokio::spawn(fetch(shared.clone(), tenant.clone(), n));
        }
        None => shared
            .hub
            .set_tenant_event_limits(tenant, TenantEventLimits::default()),
    }
}

/// A registry change (`None`: changes may have been missed): the limits of the followed tenants it may
/// concern are fetched again.
pub fn on_change<S: EventStore>(shared: &Arc<Shared<S>>, change: Option<&Change>) {
    let tenants: Vec<TenantId> = match change {
        Some(Change {
            kind: ChangeKind::Tenant,
            tenant: Some(tenant),
            ..
        }) => vec![tenant.clone()],
        Some(c) if c.kind != ChangeKind::Reset && c.kind != ChangeKind::Tenant => return,
        _ => shared.tenant_limits.followed().keys().cloned().collect(),
    };
    for tenant in tenants {
        if let Some(n) = shared.tenant_limits.next_fetch(&tenant, true) {
            tokio::spawn(fetch(shared.clone(), tenant, n));
        }
    }
}

/// Fetches `tenant`'s limits until the registry answers (or a newer fetch started, or shutdown), and
/// puts them on its event address.
async fn fetch<S: EventStore>(shared: Arc<Shared<S>>, tenant: TenantId, n: u64) {
    let Some(registry) = &shared.tenant_limits.registry else {
        return;
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        match registry.tenant_event_limits(&tenant).await {
            Ok(limits) => {
                let followed = shared.tenant_limits.followed();
                // Under the lock, so that a newer fetch's answer cannot come in between.
                if followed.get(&tenant) == Some(&n) {
                    shared.hub.set_tenant_event_limits(&tenant, limits);
                }
                return;
            }
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "cannot fetch the tenant's event limits; retrying");
                if shared.hub.tenant_event_limits(&tenant).is_none() {
                    shared
                        .hub
                        .set_tenant_event_limits(&tenant, TenantEventLimits::default());
                }
            }
        }
        if shared.tenant_limits.followed().get(&tenant) != Some(&n) {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shared.shutdown.clone().wait() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tenants followed are bounded: past `MAX_TENANTS` a new tenant is not followed (its events get
    /// the router's defaults), and a followed one is fetched again on a change; without a registry nothing
    /// is fetched.
    #[test]
    fn the_tenants_followed_are_bounded() {
        let registry = RegistryClient::new("http://127.0.0.1:1", "token", None).expect("client");
        let limits = TenantLimits::new(Some(registry));
        let id = |i: usize| TenantId::new(&format!("t{i}")).expect("id");
        for i in 0..MAX_TENANTS {
            assert_eq!(limits.next_fetch(&id(i), false), Some(0));
        }
        assert_eq!(
            limits.next_fetch(&id(MAX_TENANTS), false),
            None,
            "past the bound"
        );
        assert_eq!(
            limits.next_fetch(&id(0), true),
            Some(1),
            "a change fetches again"
        );
        assert_eq!(
            limits.next_fetch(&id(MAX_TENANTS), true),
            None,
            "not followed"
        );
        assert_eq!(TenantLimits::new(None).next_fetch(&id(0), false), None);
    }
}
