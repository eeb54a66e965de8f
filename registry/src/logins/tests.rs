//! Unit tests of the login guard; the HTTP-level ones are in tests/api/applications.rs.

use super::*;

fn opts() -> HashOptions {
    HashOptions {
        bcrypt_cost: 4,
        ..HashOptions::default()
    }
}

fn guard(max_failures: u32, lockout: Duration, tracked_max: usize) -> LoginGuard {
    LoginGuard::new(
        LoginLimits {
            max_failures,
            lockout,
            tracked_max,
            verify_concurrency: 2,
        },
        &opts(),
        LoginCounters::default(),
    )
    .expect("guard")
}

fn user(password: &str) -> ApplicationUser {
    ferry_registry_model::ApplicationUserInput {
        password: password.into(),
        tenants: vec![ferry_registry_model::TenantGrant::Any],
        operations: ferry_registry_model::Operation::ALL.to_vec(),
    }
    .into_stored(&opts())
    .expect("user")
}

fn name(n: &str) -> UserName {
    UserName::new(n).expect("name")
}

#[tokio::test]
async fn a_source_is_locked_across_names() {
    let g = guard(2, Duration::from_secs(60), 100);
    let src: IpAddr = "192.0.2.1".parse().expect("ip");
    for n in ["a", "b"] {
        assert_eq!(
            g.login(&name(n), Some(src), None, "x".into()).await.err(),
            Some(Refusal::Denied)
        );
    }
    assert_eq!(
        g.login(&name("c"), Some(src), Some(user("pw")), "pw".into())
            .await
            .err(),
        Some(Refusal::LockedOut),
        "the source guessed two names"
    );
    assert!(g
        .login(&name("c"), None, Some(user("pw")), "pw".into())
        .await
        .is_ok());
    assert_eq!(g.counters().verifications.get(), 3);
}

#[tokio::test]
async fn tracked_keys_are_bounded() {
    let g = guard(2, Duration::from_secs(60), 3);
    for i in 0..10 {
        let _ = g
            .login(&name(&format!("n{i}")), None, None, "x".into())
            .await;
    }
    assert!(g.inner.failures.len() <= 3);
}

#[tokio::test]
async fn proven_names_keep_a_slot_while_others_wait() {
    let g = guard(5, Duration::from_secs(60), 100);
    let ok = user("pw");
    assert!(g
        .login(&name("good"), None, Some(ok.clone()), "pw".into())
        .await
        .is_ok());
    // Unknown names hold every shared slot.
    let held = g.inner.slots.take(false).await.expect("permit");
    let good = name("good");
    let login = g.login(&good, None, Some(ok), "pw".into());
    tokio::time::timeout(Duration::from_secs(5), login)
        .await
        .expect("a proven name gets a reserved slot")
        .expect("logged in");
    let other = name("other");
    let waiting = g.login(&other, None, None, "pw".into());
    assert!(
        tokio::time::timeout(Duration::from_millis(50), waiting)
            .await
            .is_err(),
        "an unproven name waits for a shared slot"
    );
    drop(held);
}
