use futures_util::FutureExt as _;

use super::*;

fn ids(t: &str, a: &str) -> (TenantId, AuthId) {
    (
        TenantId::new(t).expect("tenant"),
        AuthId::new(a).expect("auth id"),
    )
}

fn guard(limits: LoginLimits) -> Guard {
    Guard::new(limits, [7; 16])
}

#[test]
fn defaults_are_valid_and_zeroes_are_refused() {
    LoginLimits::default().validate().expect("defaults");
    for (limits, field) in [
        (
            LoginLimits {
                max_failures: 0,
                ..LoginLimits::default()
            },
            "max_failures",
        ),
        (
            LoginLimits {
                lockout_secs: 0,
                ..LoginLimits::default()
            },
            "lockout_secs",
        ),
        (
            LoginLimits {
                tracked_max: 0,
                ..LoginLimits::default()
            },
            "tracked_max",
        ),
        (
            LoginLimits {
                verify_concurrency: Some(0),
                ..LoginLimits::default()
            },
            "verify_concurrency",
        ),
    ] {
        assert_eq!(
            limits.validate().expect_err(field).field(),
            Some(field),
            "{field}"
        );
    }
}

#[test]
fn unknown_fields_are_refused() {
    let parsed: Result<LoginLimits, _> =
        serde_json::from_value(serde_json::json!({ "max_failure": 3 }));
    assert!(parsed.is_err());
    let parsed: LoginLimits =
        serde_json::from_value(serde_json::json!({ "max_failures": 3 })).expect("partial");
    assert_eq!(
        parsed,
        LoginLimits {
            max_failures: 3,
            ..LoginLimits::default()
        }
    );
}

#[test]
fn bcrypt_costs_are_read_only_from_bcrypt_strings() {
    assert_eq!(bcrypt_cost("$2a$04$abc"), Some(4));
    assert_eq!(bcrypt_cost("$2y$12$abc"), Some(12));
    assert_eq!(bcrypt_cost("$2x$10$abc"), None);
    assert_eq!(bcrypt_cost("$2b$99$abc"), None);
    assert_eq!(bcrypt_cost("$2b$"), None);
    assert_eq!(bcrypt_cost("c2VjcmV0"), None);
}

#[test]
fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
    let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
    let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
    assert_eq!(source_key(a), source_key(b));
    assert_ne!(source_key(a), source_key(c));
    let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
    assert_eq!(
        source_key(mapped),
        "192.0.2.7".parse::<IpAddr>().expect("ip")
    );
}

#[test]
fn tracking_is_bounded() {
    let g = guard(LoginLimits {
        tracked_max: 3,
        ..LoginLimits::default()
    });
    for i in 0..10 {
        let (t, a) = ids("t1", &format!("dev{i}"));
        let source = Some(IpAddr::from([10, 0, 0, i]));
        let keys = g.keys(&t, &a, source);
        g.failed(&keys);
        g.succeeded(&keys);
    }
    assert!(g.failures.len() <= 3, "{}", g.failures.len());
    assert!(g.proven.len() <= 3, "{}", g.proven.len());
}

#[test]
fn sources_are_not_tracked_when_not_limited() {
    let g = guard(LoginLimits {
        max_failures: 2,
        source_max_failures: 0,
        ..LoginLimits::default()
    });
    let source = Some(IpAddr::from([10, 0, 0, 1]));
    for i in 0..5 {
        let (t, a) = ids("t1", &format!("dev{i}"));
        g.failed(&g.keys(&t, &a, source));
    }
    let (t, a) = ids("t1", "other");
    assert!(!g.is_locked(&g.keys(&t, &a, source)));
}

#[tokio::test]
async fn unproven_names_cannot_take_the_reserved_slot() {
    let g = guard(LoginLimits {
        verify_concurrency: Some(2),
        ..LoginLimits::default()
    });
    let (t, a) = ids("t1", "known");
    let known = g.keys(&t, &a, None);
    g.succeeded(&known);
    let (t, a) = ids("t1", "guess1");
    let guess1 = g.keys(&t, &a, None);
    let (t, a) = ids("t1", "guess2");
    let guess2 = g.keys(&t, &a, None);
    let held = g.slot(&guess1).await;
    assert!(held.is_some());
    assert!(
        g.slot(&guess2).now_or_never().is_none(),
        "the one shared slot is taken"
    );
    let reserved = g.slot(&known).now_or_never();
    assert!(
        matches!(reserved, Some(Some(_))),
        "a proven name gets the reserved slot"
    );
}
