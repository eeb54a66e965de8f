//! Which gateways may act for a device (its `via`, members of its `viaGroups` included), as the registry
//! says; used only when a command finds no subscription of the device itself but gateways of its tenant
//! have subscribed for all their devices (HONO-CONTRACT §2.2 "Routing precedence").
//!
//! Answers are cached for [`TTL`] and purged as the registry's change stream announces changes to the
//! tenant's devices (a gateway's `memberOf` changes other devices' gateways, so a device change purges the
//! tenant's entries), so a command on this path costs a registry call only once per device and minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferry_core::ids::TenantId;

use crate::registry::{Change, ChangeKind, RegistryClient};

/// How long an answer is used without asking again (changes purge it earlier).
pub const TTL: Duration = Duration::from_secs(60);
/// Most devices remembered; beyond, the cache starts over.
const MAX_ENTRIES: usize = 100_000;
/// Most registry calls in flight at once. Commands that miss the cache beyond that are released at once
/// (the application may retry), so a flood of commands for uncached devices costs the router and the
/// registry a bounded amount.
pub const MAX_CONCURRENT_LOOKUPS: usize = 64;

/// The gateways of one device, in the registry's order.
pub type Via = Arc<[Arc<str>]>;

type Entries = HashMap<(TenantId, Arc<str>), (Instant, Via)>;

#[derive(Debug)]
pub struct ViaLookup {
    registry: Option<RegistryClient>,
    cache: Mutex<Entries>,
    calls: tokio::sync::Semaphore,
}

impl ViaLookup {
    /// `registry` `None`: no device has gateways (tests without a registry).
    pub fn new(registry: Option<RegistryClient>) -> Self {
        Self {
            registry,
            cache: Mutex::new(HashMap::new()),
            calls: tokio::sync::Semaphore::new(MAX_CONCURRENT_LOOKUPS),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The device's gateways; empty when it has none, is unknown or disabled, or the registry cannot
    /// answer (the command is then released and the application may retry).
    pub async fn via(&self, tenant: &TenantId, device: &str) -> Via {
        let key = (tenant.clone(), Arc::<str>::from(device));
        let now = Instant::now();
        if let Some((at, via)) = self.cache().get(&key) {
            if now.duration_since(*at) < TTL {
                return via.clone();
            }
        }
        let Some(registry) = &self.registry else {
            return Arc::from(Vec::new());
        };
        let Ok(_permit) = self.calls.try_acquire() else {
            tracing::debug!(%tenant, device, "too many gateway lookups in flight");
            return Arc::from(Vec::new());
        };
        let via: Via = match registry.via(tenant.as_str(), device).await {
            Ok(list) => list.into_iter().map(Arc::from).collect(),
            Err(e) => {
                tracing::warn!(error = %e, %tenant, device, "cannot look up the device's gateways");
                return Arc::from(Vec::new());
            }
        };
        let mut cache = self.cache();
        if cache.len() >= MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (now, via.clone()));
        via
    }

    /// Forgets what a registry change may have changed (`None`: everything).
    pub fn purge(&self, change: Option<&Change>) {
        let mut cache = self.cache();
        match change {
            Some(c) if c.kind == ChangeKind::Application => {}
            Some(Change {
                tenant: Some(tenant),
                ..
            }) => cache.retain(|(t, _), _| t != tenant),
            _ => cache.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: ChangeKind, tenant: Option<&str>) -> Change {
        Change {
            seq: 1,
            kind,
            op: Some(ferry_registry_client::ChangeOp::Updated),
            tenant: tenant.map(|t| TenantId::new(t).expect("id")),
            device: None,
            name: None,
        }
    }

    #[tokio::test]
    async fn a_device_change_purges_its_tenant_only() {
        let lookup = ViaLookup::new(None);
        let t1 = TenantId::new("t1").expect("id");
        let t2 = TenantId::new("t2").expect("id");
        for (t, d) in [(&t1, "a"), (&t1, "b"), (&t2, "a")] {
            lookup.cache().insert(
                (t.clone(), Arc::from(d)),
                (Instant::now(), Arc::from(vec![Arc::from("gw")])),
            );
        }
        lookup.purge(Some(&change(ChangeKind::Application, None)));
        assert_eq!(lookup.cache().len(), 3);
        lookup.purge(Some(&change(ChangeKind::Device, Some("t1"))));
        assert_eq!(lookup.cache().len(), 1);
        assert_eq!(&*lookup.via(&t2, "a").await[0], "gw");
        // No registry: an unknown device has no gateways.
        assert!(lookup.via(&t1, "a").await.is_empty());
        lookup.purge(None);
        assert!(lookup.cache().is_empty());
    }

    /// A registry that accepts connections and never answers, as a slow or stuck one does.
    async fn silent_registry() -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        (listener, url)
    }

    /// A flood of commands for uncached devices used to start one registry call each, all at once.
    #[tokio::test]
    async fn lookups_beyond_the_bound_are_answered_at_once_without_a_registry_call() {
        let (_listener, url) = silent_registry().await;
        let lookup = Arc::new(ViaLookup::new(Some(
            RegistryClient::new(&url, "token", None).expect("client"),
        )));
        let t1 = TenantId::new("t1").expect("id");
        let mut stuck = Vec::new();
        for i in 0..MAX_CONCURRENT_LOOKUPS {
            let (lookup, t1) = (lookup.clone(), t1.clone());
            stuck.push(tokio::spawn(async move {
                lookup.via(&t1, &format!("d{i}")).await
            }));
        }
        // Let every one of them start its call.
        while lookup.calls.available_permits() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let extra = tokio::time::timeout(Duration::from_secs(2), lookup.via(&t1, "one-more"))
            .await
            .expect("the lookup beyond the bound does not wait for the registry");
        assert!(extra.is_empty());
        for task in stuck {
            task.abort();
        }
    }
}
