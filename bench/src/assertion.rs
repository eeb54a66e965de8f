//! Registration assertions in-process: how long the registry takes to issue one and the router to verify
//! one it has not seen (the uncached path; a cached token costs a hash lookup). No network, no peers:
//! a timing loop over `ferry_core::assertion`, so a change of JWT code can be compared before and after.

use std::time::Instant;

use clap::Args;
use ferry_core::assertion::{Claims, SigningKey, Verifier, VerifierConfig};
use ferry_core::ids::{DeviceId, TenantId};

/// Knobs of `ferry-bench assertion`.
#[derive(Debug, Args)]
pub struct AssertionArgs {
    /// Tokens issued, then verified, per round.
    #[arg(long, default_value_t = 20_000)]
    pub tokens: usize,
    /// Rounds; the best (least disturbed) round is reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

/// Issues `tokens` assertions for distinct devices, verifies each once with a fresh verifier (so every
/// check pays the signature), and prints microseconds per operation of the best round.
pub fn run(args: &AssertionArgs) -> anyhow::Result<()> {
    let key = SigningKey::generate();
    let tenant = TenantId::new("bench")?;
    let devices = (0..args.tokens)
        .map(|i| DeviceId::new(&format!("device-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let now = chrono::Utc::now().timestamp();
    let (mut best_issue, mut best_verify) = (f64::MAX, f64::MAX);
    for _ in 0..args.rounds.max(1) {
        let started = Instant::now();
        let tokens: Vec<String> = devices
            .iter()
            .map(|d| key.sign(&Claims::new(tenant.clone(), d.clone(), None, now, 300)))
            .collect();
        let issue = started.elapsed().as_secs_f64() * 1e6 / tokens.len().max(1) as f64;

        let verifier = Verifier::new(&key.jwks(), VerifierConfig::default());
        let started = Instant::now();
        for (token, device) in tokens.iter().zip(&devices) {
            verifier
                .check(token, &tenant, device, now)
                .map_err(|e| anyhow::anyhow!("bench token refused: {e}"))?;
        }
        let verify = started.elapsed().as_secs_f64() * 1e6 / tokens.len().max(1) as f64;
        best_issue = best_issue.min(issue);
        best_verify = best_verify.min(verify);
    }
    println!(
        "assertion issue: {best_issue:.2} µs/token, verify (uncached): {best_verify:.2} µs/token \
         (best of {} rounds of {} tokens)",
        args.rounds.max(1),
        args.tokens
    );
    Ok(())
}
