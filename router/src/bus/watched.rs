//! Which tenants a console watches live (`ferry_nats::tap`): a registry announces each on
//! [`subjects::TAP_WATCHING`] every [`tap::ANNOUNCE_EVERY`]; while it does, this router publishes a copy of
//! each telemetry message of the tenant it forwarded to [`subjects::tap_telemetry`]. A telemetry taker
//! reads its tenant's flag once per message (an atomic load), nothing more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferry_core::ids::TenantId;
use ferry_core::shutdown::Shutdown;
use ferry_nats::{subjects, tap};
use futures_util::StreamExt;

/// How long a tenant stays watched after its last announcement.
const WATCHED_FOR: Duration = Duration::from_secs(6);
/// Most tenants remembered (announcements come only from registries: NATS permissions).
const MAX_TENANTS: usize = 100_000;

type Flags = HashMap<TenantId, (Arc<AtomicBool>, Instant)>;

/// The watched tenants' flags.
#[derive(Debug, Default)]
pub struct Watched {
    tenants: Mutex<Flags>,
}

impl Watched {
    fn tenants(&self) -> std::sync::MutexGuard<'_, Flags> {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `tenant`'s flag: true while a console watches it.
    pub fn flag(&self, tenant: &TenantId) -> Arc<AtomicBool> {
        let mut tenants = self.tenants();
        if let Some((flag, _)) = tenants.get(tenant) {
            return flag.clone();
        }
        let flag = Arc::new(AtomicBool::new(false));
        if tenants.len() < MAX_TENANTS {
            tenants.insert(tenant.clone(), (flag.clone(), Instant::now()));
        }
        flag
    }

    /// A registry watches `tenant`.
    pub fn announced(&self, tenant: &TenantId) {
        let mut tenants = self.tenants();
        if let Some((flag, at)) = tenants.get_mut(tenant) {
            flag.store(true, Ordering::Relaxed);
            *at = Instant::now();
        } else if tenants.len() < MAX_TENANTS {
            tenants.insert(
                tenant.clone(),
                (Arc::new(AtomicBool::new(true)), Instant::now()),
            );
        }
    }

    /// Tenants not announced for [`WATCHED_FOR`] are no longer watched; flags nobody holds are dropped.
    pub fn expire(&self, now: Instant) {
        self.tenants().retain(|_, (flag, at)| {
            if now.duration_since(*at) >= WATCHED_FOR {
                flag.store(false, Ordering::Relaxed);
            }
            flag.load(Ordering::Relaxed) || Arc::strong_count(flag) > 1
        });
    }
}

/// Follows the registries' announcements until `shutdown`.
pub async fn follow(client: async_nats::Client, watched: Arc<Watched>, shutdown: Shutdown) {
    let mut announcements = match client.subscribe(subjects::TAP_WATCHING).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow the console's live views");
            return;
        }
    };
    let mut tick = tokio::time::interval(tap::ANNOUNCE_EVERY);
    loop {
        tokio::select! {
            () = shutdown.clone().wait() => return,
            _ = tick.tick() => watched.expire(Instant::now()),
            m = announcements.next() => {
                let Some(m) = m else { return };
                if let Some(t) = std::str::from_utf8(&m.payload).ok().and_then(|t| TenantId::new(t).ok()) {
                    watched.announced(&t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_is_watched_from_its_announcement_until_they_stop() {
        let w = Watched::default();
        let t = TenantId::new("t1").expect("id");
        let flag = w.flag(&t);
        assert!(!flag.load(Ordering::Relaxed));
        w.announced(&t);
        assert!(
            flag.load(Ordering::Relaxed),
            "the taker's flag is the one announced"
        );
        let now = Instant::now();
        w.expire(now + WATCHED_FOR / 2);
        assert!(flag.load(Ordering::Relaxed));
        w.expire(now + WATCHED_FOR * 2);
        assert!(
            !flag.load(Ordering::Relaxed),
            "no announcement: no longer watched"
        );
        w.announced(&t);
        assert!(flag.load(Ordering::Relaxed), "watched again");
        // A tenant announced but never taken is forgotten once no longer watched.
        let other = TenantId::new("t2").expect("id");
        w.announced(&other);
        w.expire(Instant::now() + WATCHED_FOR * 2);
        assert!(!w.tenants().contains_key(&other));
        assert!(
            w.tenants().contains_key(&t),
            "a taker still holds t1's flag"
        );
    }

    /// Announcements are bounded: past `MAX_TENANTS` a new tenant is not remembered (its telemetry is
    /// not copied), and the tenants already watched stay watched.
    #[test]
    fn the_watched_tenants_are_bounded() {
        let w = Watched::default();
        let first = TenantId::new("t0").expect("id");
        let flag = w.flag(&first);
        for i in 0..MAX_TENANTS {
            w.announced(&TenantId::new(&format!("t{i}")).expect("id"));
        }
        assert_eq!(w.tenants().len(), MAX_TENANTS);
        let late = TenantId::new("late").expect("id");
        w.announced(&late);
        assert!(
            !w.tenants().contains_key(&late),
            "the map grew past its bound"
        );
        assert!(!w.flag(&late).load(Ordering::Relaxed));
        assert!(flag.load(Ordering::Relaxed), "t0 is still watched");
    }
}
