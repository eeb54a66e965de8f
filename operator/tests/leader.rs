//! Leader election on a Lease, against the mocked API server: the first candidate creates the lease,
//! a second waits while it is renewed, takes over once it lapses, and a released lease is free at once.

#[path = "fake/api.rs"]
mod fake;

use fake::FakeApi;
use ferry_operator::leader::LeaseLock;
use serde_json::json;

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ferry-system/leases/ferry-operator";

#[tokio::test]
async fn one_candidate_leads_and_the_other_takes_over_a_lapsed_lease() {
    let (client, api) = FakeApi::start();
    let a = LeaseLock::new(client.clone(), "ferry-system", "ferry-operator", "pod-a");
    let b = LeaseLock::new(client, "ferry-system", "ferry-operator", "pod-b");

    assert!(
        a.try_acquire_or_renew().await.expect("a"),
        "first candidate creates the lease"
    );
    let lease = api.get(LEASE).expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "pod-a");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
    assert!(
        !b.try_acquire_or_renew().await.expect("b"),
        "a fresh lease is not taken"
    );
    assert!(
        a.try_acquire_or_renew().await.expect("renew"),
        "the holder renews"
    );
    assert_eq!(
        api.get(LEASE).expect("lease")["spec"]["leaseTransitions"],
        0
    );

    // a stops renewing: after leaseDurationSeconds b takes over, counting a transition.
    api.edit(LEASE, |o| {
        o["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z")
    });
    assert!(b.try_acquire_or_renew().await.expect("b takes over"));
    let lease = api.get(LEASE).expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "pod-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert!(!a.try_acquire_or_renew().await.expect("a"), "a lost it");

    // Releasing frees it for a at once.
    b.release().await.expect("release");
    assert!(a.try_acquire_or_renew().await.expect("a again"));
    assert_eq!(
        api.get(LEASE).expect("lease")["spec"]["holderIdentity"],
        "pod-a"
    );
}

#[tokio::test]
async fn a_write_on_a_stale_lease_loses_the_race() {
    let (client, api) = FakeApi::start();
    let a = LeaseLock::new(client.clone(), "ferry-system", "ferry-operator", "pod-a");
    assert!(a.try_acquire_or_renew().await.expect("a"));
    api.edit(LEASE, |o| {
        o["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z")
    });
    // Another candidate wrote between this one's read and its replace: the replace gets 409, and this
    // candidate does not lead.
    api.fail_method("PUT", LEASE, 409);
    let b = LeaseLock::new(client, "ferry-system", "ferry-operator", "pod-b");
    assert!(!b
        .try_acquire_or_renew()
        .await
        .expect("a conflict is not an error"));
    // Any other failure is an error (the caller keeps trying, and gives up leading only after a lease
    // duration of failures).
    api.fail_method("PUT", LEASE, 500);
    assert!(b.try_acquire_or_renew().await.is_err());
}

#[tokio::test]
async fn run_leads_then_releases_the_lease_on_shutdown() {
    let (client, api) = FakeApi::start();
    let config = ferry_operator::Config {
        lease_namespace: "ferry-system".into(),
        identity: "pod-a".into(),
        ..ferry_operator::Config::default()
    };
    let admin = ferry_core::admin::Admin::new();
    let metrics = ferry_operator::metrics::Metrics::new(&admin);
    let readiness = admin.readiness("operator");
    // An address space is waiting: the running operator reconciles it.
    let space = "/apis/ferry.dev/v1alpha1/namespaces/prod/addressspaces/iot";
    api.put(
        space,
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "AddressSpace",
               "metadata": {"name": "iot", "namespace": "prod", "uid": "as-1"}, "spec": {}}),
    );
    let (trigger, shutdown) = ferry_core::shutdown::channel();
    let run = tokio::spawn(ferry_operator::run_with_client(
        client, config, metrics, readiness, shutdown,
    ));
    let mut leading = false;
    for _ in 0..100 {
        if admin
            .encode_metrics()
            .lines()
            .any(|l| l == "ferry_operator_leader 1")
        {
            leading = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(leading, "{}", admin.encode_metrics());
    assert!(admin.not_ready().is_empty());
    assert_eq!(
        api.get(LEASE).expect("lease")["spec"]["holderIdentity"],
        "pod-a"
    );
    // The controllers list and watch, and reconcile what they find.
    for _ in 0..200 {
        if api
            .get(space)
            .is_some_and(|o| o["status"]["phase"].is_string())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(api.get(space).expect("space")["status"]["phase"], "Pending");
    let calls = api.take_calls();
    assert!(calls
        .iter()
        .any(|c| c.path == "/apis/ferry.dev/v1alpha1/addressspaces"
            && c.query.contains("watch=true")));
    assert!(calls
        .iter()
        .any(|c| c.path == "/apis/apps/v1/deployments" && c.query.contains("managed-by")));

    trigger.trigger();
    tokio::time::timeout(std::time::Duration::from_secs(4), run)
        .await
        .expect("stops on shutdown")
        .expect("task")
        .expect("clean exit");
    let lease = api.get(LEASE).expect("lease");
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released: {lease}"
    );
    assert!(admin
        .encode_metrics()
        .lines()
        .any(|l| l == "ferry_operator_leader 0"));
}
