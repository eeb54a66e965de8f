//! The registry client: lookups, caching (positive and negative), purging on the change stream, and
//! "unavailable" kept apart from "unknown".

use std::time::Duration;

use ferry_adapter_core::registry::{AssertionOutcome, ChangeKind, RegistryError};
use ferry_core::hono::credential_type::HASHED_PASSWORD;
use ferry_core::ids::AuthId;

use crate::harness::*;

#[tokio::test]
async fn tenant_lookups_are_cached_negative_ones_too() {
    let p = Platform::start().await;
    let r = p.registry_client();
    let t1 = r
        .tenant(&tenant("t1"))
        .await
        .expect("lookup")
        .expect("t1 exists");
    assert!(t1.is_enabled());
    assert!(t1.is_adapter_enabled("hono-mqtt"));
    assert_eq!(t1.id, tenant("t1"));
    assert!(r.tenant(&tenant("t1")).await.expect("lookup").is_some());
    assert_eq!(r.stats().tenant_requests, 1, "the second lookup is cached");

    assert!(r.tenant(&tenant("nope")).await.expect("lookup").is_none());
    assert!(r.tenant(&tenant("nope")).await.expect("lookup").is_none());
    assert_eq!(r.stats().tenant_requests, 2, "unknown is cached too");
}

#[tokio::test]
async fn credentials_lookups_are_cached() {
    let p = Platform::start().await;
    let r = p.registry_client();
    let auth = AuthId::new("sensor1").expect("id");
    let found = r
        .credentials(&tenant("t1"), HASHED_PASSWORD, &auth)
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(found.device_id, device("d1"));
    assert!(found
        .credential
        .verify_password("secret1", chrono::Utc::now()));
    r.credentials(&tenant("t1"), HASHED_PASSWORD, &auth)
        .await
        .expect("lookup");
    let unknown = AuthId::new("nobody").expect("id");
    for _ in 0..2 {
        assert!(r
            .credentials(&tenant("t1"), HASHED_PASSWORD, &unknown)
            .await
            .expect("lookup")
            .is_none());
    }
    assert_eq!(r.stats().credential_requests, 2);
}

#[tokio::test]
async fn assertions_are_cached_and_denials_kept_apart() {
    let p = Platform::start().await;
    let r = p.registry_client();
    let granted = r
        .assertion(&tenant("t1"), &device("d1"), None)
        .await
        .expect("lookup");
    let AssertionOutcome::Granted(a) = &granted else {
        panic!("{granted:?}");
    };
    assert_eq!(a.device_id, device("d1"));
    assert!(a.token.split('.').count() == 3, "a JWT");
    assert!(a.expires > chrono::Utc::now().timestamp());
    let again = r
        .assertion(&tenant("t1"), &device("d1"), None)
        .await
        .expect("lookup");
    assert_eq!(again, granted);
    assert_eq!(
        r.stats().assertion_requests,
        1,
        "the second lookup is cached"
    );

    for _ in 0..2 {
        assert_eq!(
            r.assertion(&tenant("t1"), &device("ghost"), None)
                .await
                .expect("lookup"),
            AssertionOutcome::NotFound
        );
        // d2 is no gateway of d1.
        assert_eq!(
            r.assertion(&tenant("t1"), &device("d1"), Some(&device("d2")))
                .await
                .expect("lookup"),
            AssertionOutcome::Forbidden
        );
    }
    assert_eq!(r.stats().assertion_requests, 3, "denials are cached");
}

#[tokio::test]
async fn negative_entries_expire_quickly() {
    let p = Platform::start().await;
    let mut config = p.registry_config();
    config.negative_ttl = Duration::from_millis(300);
    let r = ferry_adapter_core::registry::RegistryClient::new(config).expect("client");
    let d3 = device("d3");
    assert_eq!(
        r.assertion(&tenant("t1"), &d3, None).await.expect("lookup"),
        AssertionOutcome::NotFound
    );
    p.manage(
        reqwest::Method::POST,
        "/v1/devices/t1/d3",
        serde_json::json!({}),
    )
    .await;
    // Without the change stream only expiry helps.
    assert_eq!(
        r.assertion(&tenant("t1"), &d3, None).await.expect("lookup"),
        AssertionOutcome::NotFound
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(matches!(
        r.assertion(&tenant("t1"), &d3, None).await.expect("lookup"),
        AssertionOutcome::Granted(_)
    ));
}

#[tokio::test]
async fn disabled_device_loses_its_assertion_within_a_second() {
    let p = Platform::start().await;
    let r = p.following_client(p.registry_config()).await;
    let mut changes = r.subscribe();
    assert!(matches!(
        r.assertion(&tenant("t1"), &device("d1"), None)
            .await
            .expect("lookup"),
        AssertionOutcome::Granted(_)
    ));
    let started = std::time::Instant::now();
    p.set_device_enabled("t1", "d1", false).await;
    let change = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let c = changes.recv().await.expect("change");
            if c.kind == ChangeKind::Device {
                return c;
            }
        }
    })
    .await
    .expect("the change is re-broadcast within a second");
    assert!(change.affects(&tenant("t1"), &device("d1")));
    // The cache was purged before the broadcast: the next lookup asks the registry.
    assert_eq!(
        r.assertion(&tenant("t1"), &device("d1"), None)
            .await
            .expect("lookup"),
        AssertionOutcome::NotFound
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // Re-enabled: the NotFound is purged as well.
    p.set_device_enabled("t1", "d1", true).await;
    assert!(
        eventually(Duration::from_secs(1), || async {
            matches!(
                r.assertion(&tenant("t1"), &device("d1"), None).await,
                Ok(AssertionOutcome::Granted(_))
            )
        })
        .await
    );
}

#[tokio::test]
async fn disabled_tenant_is_seen_within_a_second() {
    let p = Platform::start().await;
    let r = p.following_client(p.registry_config()).await;
    assert!(r
        .tenant(&tenant("t1"))
        .await
        .expect("lookup")
        .expect("t1")
        .is_enabled());
    p.manage(
        reqwest::Method::PUT,
        "/v1/tenants/t1",
        serde_json::json!({ "enabled": false }),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(1), || async {
            matches!(r.tenant(&tenant("t1")).await, Ok(Some(t)) if !t.is_enabled())
        })
        .await
    );
    assert_eq!(
        r.assertion(&tenant("t1"), &device("d1"), None)
            .await
            .expect("lookup"),
        AssertionOutcome::NotFound
    );
}

#[tokio::test]
async fn registry_down_is_unavailable_not_unknown() {
    let mut p = Platform::start().await;
    let r = p.following_client(p.registry_config()).await;
    r.tenant(&tenant("t1")).await.expect("lookup");
    p.stop_registry().await;
    assert!(matches!(
        r.tenant(&tenant("t2")).await,
        Err(RegistryError::Unavailable(_))
    ));
    assert!(matches!(
        r.assertion(&tenant("t1"), &device("d1"), None).await,
        Err(RegistryError::Unavailable(_))
    ));
    // What is cached keeps working while the registry is away.
    assert!(r.tenant(&tenant("t1")).await.expect("cached").is_some());
}

#[tokio::test]
async fn the_change_stream_reconnects_and_purges() {
    let mut p = Platform::start().await;
    let r = p.following_client(p.registry_config()).await;
    assert!(matches!(
        r.assertion(&tenant("t1"), &device("d1"), None)
            .await
            .expect("lookup"),
        AssertionOutcome::Granted(_)
    ));
    p.stop_registry().await;
    p.start_registry().await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            r.stats().change_stream_connects == 2 && r.is_following_changes()
        })
        .await,
        "the stream reconnects"
    );
    // Everything was purged on reconnect (changes may have been missed meanwhile)...
    r.assertion(&tenant("t1"), &device("d1"), None)
        .await
        .expect("lookup");
    assert_eq!(r.stats().assertion_requests, 2);
    // ...and changes flow again.
    p.set_device_enabled("t1", "d1", false).await;
    assert!(
        eventually(Duration::from_secs(1), || async {
            matches!(
                r.assertion(&tenant("t1"), &device("d1"), None).await,
                Ok(AssertionOutcome::NotFound)
            )
        })
        .await
    );
}
