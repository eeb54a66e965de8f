//! `ferry-bench`: Ferry's benchmark harness (see bench/README.md and docs/BENCHMARKS.md).
//!
//! One compiled load generator drives the system under test, which runs as a separate process pinned to
//! its own core; the generator pins itself to another. Each scenario measures warm-up plus several runs,
//! reports the median, and writes its own marked section of `bench/REPORT.md` ([`report`]), so scenarios
//! added later never overwrite each other's figures.

pub mod cli;
pub mod client;
pub mod cpu;
pub mod events;
pub mod load;
pub mod machine;
pub mod pin;
pub mod postgres;
pub mod registry;
pub mod report;

use anyhow::Context as _;

/// Pins the process (re-executing it under `taskset` if needed), then runs the chosen scenario.
pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.scenario {
        cli::Scenario::Registry(args) => {
            if !args.pinning.no_pin {
                pin::ensure_pinned(&args.pinning.client_cpus)?;
            }
            // Built after pinning so that the worker count follows the generator's cores.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(registry::run(&args))
        }
        cli::Scenario::Events(args) => {
            if let Some(cpus) = &args.cpus {
                pin::ensure_pinned(cpus)?;
            }
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(workers) = args.workers {
                anyhow::ensure!(workers > 0, "--workers must be at least 1");
                builder.worker_threads(workers);
            }
            let runtime = builder
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(events::run(&args))
        }
    }
}
