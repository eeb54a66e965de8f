//! The operator's metrics, served on `/metrics` by the admin server.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use ferry_core::admin::Admin;

/// Reconcile counters by kind, errors by kind and error, and whether this replica leads.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    reconciles: Family<[(&'static str, &'static str); 1], Counter>,
    errors: Family<[(&'static str, &'static str); 2], Counter>,
    leader: Gauge,
}

impl Metrics {
    pub fn new(admin: &Admin) -> Self {
        let m = Self::default();
        admin.register(
            "ferry_operator_reconciliations",
            "Reconciles run, by kind",
            m.reconciles.clone(),
        );
        admin.register(
            "ferry_operator_reconcile_errors",
            "Reconciles that failed, by kind and error",
            m.errors.clone(),
        );
        admin.register(
            "ferry_operator_leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        m
    }

    pub fn reconciled(&self, kind: &'static str) {
        self.reconciles.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn failed(&self, kind: &'static str, error: &'static str) {
        self.errors
            .get_or_create(&[("kind", kind), ("error", error)])
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }
}
