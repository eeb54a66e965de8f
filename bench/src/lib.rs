//! `ferry-bench`: Ferry's benchmark harness (see bench/README.md and docs/BENCHMARKS.md).
//!
//! One compiled load generator drives the system under test, which runs as a separate process pinned to
//! its own core; the generator pins itself to another. Each scenario measures warm-up plus several runs,
//! reports the median, and writes its own marked section of `bench/REPORT.md` ([`report`]), so scenarios
//! added later never overwrite each other's figures.

pub mod all;
pub mod amqp;
pub mod assertion;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod cpu;
pub mod events;
pub mod footprint;
pub mod http;
pub mod load;
pub mod machine;
pub mod mqtt;
pub mod pin;
pub mod platform;
pub mod postgres;
pub mod registry;
pub mod report;
pub mod summary;

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
        cli::Scenario::Assertion(args) => assertion::run(&args),
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
        // B4, B8, B9 and `all`: the generator pins itself to the client CPUs; the systems under test are
        // pinned by the scenario as it starts them.
        cli::Scenario::Footprint(args) => generator_runtime(None)?.block_on(footprint::run(&args)),
        cli::Scenario::Http(args) => {
            let cpus = (!args.no_pin).then_some(args.client_cpus.as_str());
            generator_runtime(cpus)?.block_on(http::run(&args))
        }
        cli::Scenario::Amqp(args) => {
            let cpus = (!args.no_pin).then_some(args.client_cpus.as_str());
            generator_runtime(cpus)?.block_on(amqp::run(&args))
        }
        cli::Scenario::All(args) => {
            generator_runtime(Some(args.client_cpus.as_str()))?.block_on(all::run(&args))
        }
        cli::Scenario::Mqtt(args) => {
            let cpus = (!args.pinning.no_pin).then_some(args.pinning.client_cpus.as_str());
            generator_runtime(cpus)?.block_on(mqtt::run(&args))
        }
        cli::Scenario::Cluster(args) => {
            let cpus = (!args.pinning.no_pin).then_some(args.pinning.client_cpus.as_str());
            generator_runtime(cpus)?.block_on(cluster::run(&args))
        }
        cli::Scenario::Soak(args) => {
            let cpus = (!args.pinning.no_pin).then_some(args.pinning.client_cpus.as_str());
            generator_runtime(cpus)?.block_on(mqtt::soak::run(&args))
        }
        cli::Scenario::MqttIdleWorker(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(mqtt::idle::worker(args)),
        cli::Scenario::Summary { report } => summary::update_summary(&report),
        cli::Scenario::BareHyper { bind } => {
            generator_runtime(None)?.block_on(http::bare::serve(bind))
        }
    }
}

/// Pins this process to `cpus` (re-executing it under taskset) and builds a runtime with one worker per
/// CPU it may use.
fn generator_runtime(cpus: Option<&str>) -> anyhow::Result<tokio::runtime::Runtime> {
    if let Some(cpus) = cpus {
        pin::ensure_pinned(cpus)?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}
