//! `ferry-bench all`: every scenario of BENCHMARKS.md in one run, then the summary table.
//!
//! The summary table itself is built in [`crate::summary`].

use std::path::PathBuf;

use clap::Args;

use crate::summary::{update_summary, SECTION};

/// Options of `ferry-bench all`.
#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    /// Minutes of the B10 soak (BENCHMARKS.md asks for 30; shorter runs say so in the report).
    #[arg(long, default_value_t = 30)]
    pub soak_minutes: u64,
    /// Warm-up before each run, in seconds.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Measured seconds of each run.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Runs per row (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// CPUs (taskset list) for the systems under test.
    #[arg(long, default_value = "0")]
    pub server_cpus: String,
    /// CPUs (taskset list) for the load generators.
    #[arg(long, default_value = "1")]
    pub client_cpus: String,
    /// Scenarios to leave out (e.g. `--skip b6,b10`).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// The report to update.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/REPORT.md"))]
    pub report: PathBuf,
}

impl AllArgs {
    fn skips(&self, id: &str) -> bool {
        self.skip.iter().any(|s| s.eq_ignore_ascii_case(id))
    }
}

/// What one scenario of the run ended with.
#[derive(Debug)]
struct Outcome {
    ids: &'static str,
    result: Result<(), String>,
}

/// Runs every scenario in turn (each writes its own section), then the summary. A scenario that fails is
/// recorded and the run goes on; the exit status says whether all of them ran.
pub async fn run(args: &AllArgs) -> anyhow::Result<()> {
    let mut outcomes = Vec::new();
    let client = Some(args.client_cpus.clone());
    let server = Some(args.server_cpus.clone());

    if !args.skips("b9") {
        let a = crate::footprint::FootprintArgs {
            runs: args.runs,
            idle_secs: 2,
            cpus: server.clone(),
            support_cpus: client.clone(),
            bins: Default::default(),
            report: args.report.clone(),
            no_report: false,
        };
        let result = crate::footprint::run(&a).await;
        outcomes.push(Outcome {
            ids: "B9",
            result: result.map_err(|e| format!("{e:#}")),
        });
    }
    if !args.skips("b8") {
        let a = crate::http::HttpArgs {
            connections: 64,
            warmup: args.warmup,
            duration: args.duration,
            runs: args.runs,
            payload: 32,
            devices: 64,
            server_cpus: args.server_cpus.clone(),
            client_cpus: args.client_cpus.clone(),
            no_pin: false,
            targets: crate::http::Target::all(),
            bins: Default::default(),
            report: args.report.clone(),
            no_report: false,
        };
        let result = crate::http::run(&a).await;
        outcomes.push(Outcome {
            ids: "B8",
            result: result.map_err(|e| format!("{e:#}")),
        });
    }
    if !args.skips("b4") {
        let a = crate::amqp::AmqpArgs {
            generator: crate::amqp::Generator::Raw,
            warmup: args.warmup,
            duration: args.duration,
            runs: args.runs,
            credit: 200,
            body: 12,
            modes: crate::amqp::Mode::all(),
            peers: crate::amqp::Peer::all(),
            server_cpus: args.server_cpus.clone(),
            client_cpus: args.client_cpus.clone(),
            no_pin: false,
            proton_broker: None,
            bins: Default::default(),
            report: args.report.clone(),
            no_report: false,
        };
        let result = crate::amqp::run(&a).await;
        outcomes.push(Outcome {
            ids: "B4",
            result: result.map_err(|e| format!("{e:#}")),
        });
    }
    for (ids, result) in mqtt_scenarios(args).await {
        outcomes.push(Outcome { ids, result });
    }

    update_summary(&args.report)?;
    eprintln!("updated section `{SECTION}` of {}", args.report.display());
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().map(|e| format!("{}: {e}", o.ids)))
        .collect();
    for o in &outcomes {
        eprintln!(
            "{}: {}",
            o.ids,
            match &o.result {
                Ok(()) => "ran".to_owned(),
                Err(e) => format!("failed: {e}"),
            }
        );
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} scenario(s) failed: {}",
        failed.len(),
        failed.join("; ")
    );
    Ok(())
}

/// The pinning and run-length options `all` hands to the MQTT scenarios.
fn common_options(args: &AllArgs) -> Vec<String> {
    vec![
        "--server-cpus".into(),
        args.server_cpus.clone(),
        "--client-cpus".into(),
        args.client_cpus.clone(),
        "--report".into(),
        args.report.display().to_string(),
    ]
}

/// The MQTT scenarios (B1/B2, B7, B6, B5, B3, B13 through `crate::mqtt`, then the B10 soak through
/// `crate::mqtt::soak`), each writing its own section; one outcome per scenario.
async fn mqtt_scenarios(args: &AllArgs) -> Vec<(&'static str, Result<(), String>)> {
    let mut out = Vec::new();
    let mut b1_rate = None;
    let chosen: Vec<&str> = [
        ("b1", "b1"),
        ("b2", "b1"),
        ("b7", "b7"),
        ("b6", "b6"),
        ("b5", "b5"),
        ("b3", "b3"),
        ("b13", "b13"),
    ]
    .into_iter()
    .filter(|(id, _)| !args.skips(id))
    .map(|(_, scenario)| scenario)
    .fold(Vec::new(), |mut v, s| {
        if !v.contains(&s) {
            v.push(s);
        }
        v
    });
    if !chosen.is_empty() {
        let mut options = common_options(args);
        options.extend([
            "--scenarios".to_owned(),
            chosen.join(","),
            "--warmup".into(),
            args.warmup.to_string(),
            "--duration".into(),
            args.duration.to_string(),
            "--runs".into(),
            args.runs.to_string(),
        ]);
        let result = match crate::mqtt::MqttArgs::from_options(&options) {
            Ok(m) => {
                let (b1, result) = crate::mqtt::run_keeping_b1(&m).await;
                b1_rate = b1.ferry;
                result.map_err(|e| format!("{e:#}"))
            }
            Err(e) => Err(format!("bad MQTT options {options:?}: {e:#}")),
        };
        out.push(("B1, B2, B3, B5, B6, B7, B13 (as chosen)", result));
    }
    if !args.skips("b10") {
        let mut options = common_options(args);
        options.extend([
            "--duration".to_owned(),
            (args.soak_minutes.max(1) * 60).to_string(),
        ]);
        // BENCHMARKS.md: at half of B1's rate, as measured above.
        if let Some(rate) = b1_rate {
            options.extend(["--b1-rate".to_owned(), format!("{rate:.0}")]);
        }
        let result = match crate::mqtt::soak::SoakArgs::from_options(&options) {
            Ok(s) => crate::mqtt::soak::run(&s)
                .await
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("bad soak options {options:?}: {e:#}")),
        };
        out.push(("B10", result));
    }
    out
}
