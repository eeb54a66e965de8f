//! Scenario B4: AMQP 1.0 forwarding, 1 sender → broker → 1 receiver, 12-byte bodies, credit 200: the Ferry
//! router beside RabbitMQ 3.10 (AMQP 1.0 plugin) and the Qpid Proton C example broker, with one compiled
//! generator for all three: by default [`raw`] (pre-encoded transfers over `ferry_router::codec`, cheap
//! enough that the broker's core is the bound), or [`gen`] (the fe2o3-amqp client, `--generator fe2o3`,
//! the generator of the figures before December 2026).
//!
//! The path measured at Ferry is the one device messages take: an adapter-authenticated sender on
//! `telemetry/bench` (the adapters' service credential, every message with `device_id` and a real
//! `reg_assertion` from the registry's internal API, which the router verifies (once per token, then
//! cached) and strips), and an application receiver on `telemetry/bench`. The peers get the very same
//! messages (application properties included) on a queue of their own per run.

pub mod client;
pub mod gen;
mod peers;
pub mod raw;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::ensure;
use clap::{Args, ValueEnum};

use crate::machine::{self, Machine};
use crate::platform::BinArgs;
use crate::report::thousands;
use crate::summary::SummaryRow;
use crate::{cpu, report};
pub use gen::Mode;
use peers::Broker;

/// The report section this scenario owns.
pub const SECTION: &str = "b4";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// ferry-router (with a registry for assertions).
    Ferry,
    /// RabbitMQ 3.10 with the rabbitmq_amqp1_0 plugin.
    Rabbitmq,
    /// The Qpid Proton C example broker (broker.c, built with gcc).
    Proton,
}

impl Peer {
    pub fn all() -> Vec<Peer> {
        vec![Peer::Ferry, Peer::Rabbitmq, Peer::Proton]
    }

    pub fn label(self) -> &'static str {
        match self {
            Peer::Ferry => "Ferry router",
            Peer::Rabbitmq => "RabbitMQ 3.10 (AMQP 1.0 plugin)",
            Peer::Proton => "Qpid Proton C example broker",
        }
    }
}

/// Which client drives the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generator {
    /// Pre-encoded transfer frames written in batches, minimal decoding on the receiver ([`raw`]).
    Raw,
    /// The fe2o3-amqp client ([`gen`]): its core was the bound of the earlier figures.
    Fe2o3,
}

impl Generator {
    pub fn label(self) -> &'static str {
        match self {
            Generator::Raw => "raw",
            Generator::Fe2o3 => "fe2o3",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct AmqpArgs {
    /// The generator (the same one drives every broker of the run).
    #[arg(long, value_enum, default_value = "raw")]
    pub generator: Generator,
    /// Warm-up before each run, in seconds.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Measured seconds of each run.
    #[arg(long, short = 'd', default_value_t = 5)]
    pub duration: u64,
    /// Runs per row (interleaved over the brokers); the row shows the median.
    #[arg(long, short = 'r', default_value_t = 3)]
    pub runs: usize,
    /// The receiver's link credit (refilled as it goes); also the unsettled sender's window.
    #[arg(long, default_value_t = 200)]
    pub credit: u32,
    /// Body bytes (at least 12: sequence number and send time).
    #[arg(long, default_value_t = 12)]
    pub body: usize,
    /// Sender settle modes to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "presettled,unsettled"
    )]
    pub modes: Vec<Mode>,
    /// Brokers to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ferry,rabbitmq,proton"
    )]
    pub peers: Vec<Peer>,
    /// CPUs (taskset list) of the broker.
    #[arg(long, default_value = "0")]
    pub server_cpus: String,
    /// CPUs of the generator (sender and receiver); the process re-executes itself under taskset.
    #[arg(long, default_value = "1")]
    pub client_cpus: String,
    /// Do not pin anything.
    #[arg(long)]
    pub no_pin: bool,
    /// The Proton C example broker binary (default: built from /usr/share/proton/examples/c/broker.c into
    /// /var/tmp/ferry-bench-proton/broker when missing).
    #[arg(long)]
    pub proton_broker: Option<PathBuf>,
    #[command(flatten)]
    pub bins: BinArgs,
    /// The report to update (only the b4 section, then the summary).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/REPORT.md"))]
    pub report: PathBuf,
    /// Print the figures without touching the report.
    #[arg(long)]
    pub no_report: bool,
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Run {
    pub counts: gen::Counts,
    pub server_cpu: Duration,
    pub generator_cpu: Duration,
    pub others_cpu: Duration,
}

impl Run {
    fn cores(&self, d: Duration) -> f64 {
        d.as_secs_f64() / self.counts.window.as_secs_f64().max(1e-9)
    }

    fn us_per_msg(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1e6 / (self.counts.received_window.max(1) as f64)
    }
}

/// All runs of one (broker, mode), or why there are none.
#[derive(Debug, Clone)]
pub struct Row {
    pub peer: Peer,
    pub mode: Mode,
    pub runs: Vec<Run>,
    pub not_measured: Option<String>,
}

impl Row {
    pub fn median(&self) -> Option<&Run> {
        let mut v: Vec<&Run> = self.runs.iter().collect();
        v.sort_by(|a, b| a.counts.rate().total_cmp(&b.counts.rate()));
        v.get(v.len().saturating_sub(1) / 2).copied()
    }

    pub fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.counts.errors()).sum()
    }

    fn rate(&self) -> Option<f64> {
        self.median().map(|r| r.counts.rate())
    }
}

/// Runs B4 and writes its section (and the summary).
pub async fn run(args: &AmqpArgs) -> anyhow::Result<()> {
    ensure!(
        args.runs > 0 && args.duration > 0,
        "--runs and --duration must be at least 1"
    );
    ensure!(args.credit > 0, "--credit must be at least 1");
    let cpus = (!args.no_pin).then_some(args.server_cpus.as_str());
    let date = machine::now();
    let commit = machine::commit();
    let mut notes = Vec::new();
    let mut brokers: Vec<(Peer, Result<Broker, String>)> = Vec::new();
    for &peer in &args.peers {
        let started = Broker::start(peer, args, cpus).await;
        match &started {
            Ok(b) => {
                eprintln!("{} ready in {:.1} s", peer.label(), b.ready.as_secs_f64());
                if let Some(n) = b.note() {
                    notes.push(n);
                }
            }
            Err(e) => eprintln!("{}: not measured: {e}", peer.label()),
        }
        brokers.push((peer, started));
    }
    // The peers carry the same application properties as Ferry's messages, a real assertion included.
    let mut assertion = None;
    for (_, b) in &brokers {
        if let Ok(b) = b {
            if let Some(a) = b.assertion().await {
                assertion = Some(a);
            }
        }
    }
    for (_, b) in &mut brokers {
        if let Ok(b) = b {
            b.borrowed_assertion = assertion.clone();
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    for &mode in &args.modes {
        for (peer, b) in &brokers {
            rows.push(Row {
                peer: *peer,
                mode,
                runs: Vec::new(),
                not_measured: b.as_ref().err().cloned(),
            });
        }
    }
    for n in 1..=args.runs {
        for row in rows.iter_mut().filter(|r| r.not_measured.is_none()) {
            let Some((_, Ok(broker))) = brokers.iter_mut().find(|(p, _)| *p == row.peer) else {
                continue;
            };
            let tag = format!("{}-{}-{n}", row.mode.label(), std::process::id());
            let result = measure(broker, args, row.mode, &tag).await;
            match result {
                Ok(run) => {
                    eprintln!(
                        "{} / {} run {n}/{}: {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms, broker {:.2} µs/msg \
                         ({:.0} % core), generator {:.0} % core, others {:.0} % core, sent {}, released {}, \
                         rejected {}, lost {}{}",
                        row.peer.label(),
                        row.mode.label(),
                        args.runs,
                        run.counts.rate(),
                        run.counts.latency_ms(0.5),
                        run.counts.latency_ms(0.99),
                        run.us_per_msg(run.server_cpu),
                        run.cores(run.server_cpu) * 100.0,
                        run.cores(run.generator_cpu) * 100.0,
                        run.cores(run.others_cpu) * 100.0,
                        run.counts.sent,
                        run.counts.released,
                        run.counts.rejected,
                        run.counts.lost,
                        run.counts
                            .first_error
                            .as_ref()
                            .map_or_else(String::new, |e| format!(", first error: {e}")),
                    );
                    row.runs.push(run);
                }
                Err(e) => {
                    eprintln!("{} / {}: {e:#}", row.peer.label(), row.mode.label());
                    row.not_measured = Some(format!("run {n} failed: {e:#}"));
                }
            }
        }
    }
    drop(brokers);
    let section = render(args, &Machine::detect(), &commit, &date, &rows, &notes);
    println!("{section}");
    if !args.no_report {
        report::update_section(&args.report, SECTION, &section)?;
        crate::summary::update_summary(&args.report)?;
        eprintln!("updated section `{SECTION}` of {}", args.report.display());
    }
    let ferry_errors: u64 = rows
        .iter()
        .filter(|r| r.peer == Peer::Ferry)
        .map(Row::errors)
        .sum();
    ensure!(
        ferry_errors == 0,
        "{ferry_errors} messages rejected or lost at Ferry; a rate counts only with zero"
    );
    Ok(())
}

async fn measure(
    broker: &mut Broker,
    args: &AmqpArgs,
    mode: Mode,
    tag: &str,
) -> anyhow::Result<Run> {
    let spec = broker.spec(args, mode, tag).await?;
    let pid = broker.pid();
    let running = match args.generator {
        Generator::Raw => Load::Raw(raw::start(spec).await?),
        Generator::Fe2o3 => Load::Fe2o3(Box::new(gen::start(spec).await?)),
    };
    running.window_start().await;
    let s0 = (
        cpu::process_cpu(pid)?,
        cpu::own_cpu()?,
        cpu::machine_busy()?,
    );
    running.window_end().await;
    let s1 = (
        cpu::process_cpu(pid)?,
        cpu::own_cpu()?,
        cpu::machine_busy()?,
    );
    let counts = running.finish().await?;
    broker.check_alive()?;
    let server_cpu = s1.0.saturating_sub(s0.0);
    let generator_cpu = s1.1.saturating_sub(s0.1);
    Ok(Run {
        counts,
        server_cpu,
        generator_cpu,
        others_cpu: s1
            .2
            .saturating_sub(s0.2)
            .saturating_sub(server_cpu + generator_cpu),
    })
}

/// A run of either generator.
enum Load {
    Raw(raw::Running),
    Fe2o3(Box<gen::Running>),
}

impl Load {
    async fn window_start(&self) {
        match self {
            Load::Raw(r) => r.window_start().await,
            Load::Fe2o3(r) => r.window_start().await,
        }
    }

    async fn window_end(&self) {
        match self {
            Load::Raw(r) => r.window_end().await,
            Load::Fe2o3(r) => r.window_end().await,
        }
    }

    async fn finish(self) -> anyhow::Result<gen::Counts> {
        match self {
            Load::Raw(r) => r.finish().await,
            Load::Fe2o3(r) => r.finish().await,
        }
    }
}

/// The summary row of B4 for `mode`.
pub fn summary_row(rows: &[Row], mode: Mode, machine_cpus: usize, date: &str) -> SummaryRow {
    let find = |p: Peer| rows.iter().find(|r| r.peer == p && r.mode == mode);
    let ferry = find(Peer::Ferry);
    let rabbit = find(Peer::Rabbitmq);
    let proton = find(Peer::Proton);
    let rate = |r: Option<&Row>| r.and_then(Row::rate);
    let (f, rb, pr) = (rate(ferry), rate(rabbit), rate(proton));
    let fmt_peer = |name: &str, row: Option<&Row>, v: Option<f64>| match (
        v,
        row.and_then(|r| r.not_measured.as_ref()),
    ) {
        (Some(v), _) => format!("{name} {} msg/s", thousands(v)),
        (None, Some(why)) => format!(
            "{name} not measured ({})",
            why.lines().next().unwrap_or_default()
        ),
        (None, None) => format!("{name} not measured"),
    };
    let ratio = |peer: Option<f64>| f.zip(peer).map(|(f, p)| f / p.max(1e-9));
    let ferry_errors = ferry.map_or(0, Row::errors);
    let mut missed = Vec::new();
    if let Some(fr) = f {
        if fr < 150_000.0 && mode == Mode::Presettled {
            missed.push("below 150k msg/s".to_owned());
        }
    }
    if let Some(r) = ratio(rb) {
        if r < 3.0 {
            missed.push(format!("{r:.2}× RabbitMQ < 3×"));
        }
    }
    if let Some(r) = ratio(pr) {
        if r < 1.5 {
            missed.push(format!("{r:.2}× Proton C < 1.5×"));
        }
    }
    if ferry_errors > 0 {
        missed.push(format!("{ferry_errors} rejected or lost"));
    }
    let complete = f.is_some() && rb.is_some() && pr.is_some();
    let met = f
        .map(|_| missed.is_empty() && complete)
        .filter(|_| complete || !missed.is_empty());
    let mut note = String::new();
    if let Some(m) = ferry.and_then(Row::median) {
        let gen_cores = m.cores(m.generator_cpu);
        let srv_cores = m.cores(m.server_cpu);
        note.push_str(&format!(
            "router {:.2} µs/msg at {:.0} % of its core, generator {:.0} % of its core",
            m.us_per_msg(m.server_cpu),
            srv_cores * 100.0,
            gen_cores * 100.0
        ));
        let others = m.cores(m.others_cpu);
        if others >= 0.25 && gen_cores + srv_cores + others >= 0.85 * machine_cpus as f64 {
            note.push_str(&format!(
                ": the machine was saturated, {:.0} % of a core by background load, so the figure is a lower \
                 bound",
                others * 100.0
            ));
        } else if gen_cores >= 0.9 {
            note.push_str(": the generator's core is saturated, so the figure is a lower bound");
        } else if srv_cores >= 0.9 {
            note.push_str(": the router's core is saturated (CPU per message is the bound)");
        }
    }
    let released: u64 = ferry.map_or(0, |r| r.runs.iter().map(|r| r.counts.released).sum());
    if released > 0 {
        note.push_str(&format!(
            "; the router released {released} messages (refused while the receiver still granted credit)"
        ));
    }
    if !missed.is_empty() {
        note = format!("{}; {note}", missed.join(", "));
    }
    if !complete {
        note.push_str("; a peer is missing, so no verdict");
    }
    SummaryRow {
        id: format!("B4 ({})", mode.label()),
        peer: format!(
            "{}; {}",
            fmt_peer("RabbitMQ", rabbit, rb),
            fmt_peer("Proton C", proton, pr)
        ),
        ferry: f.map_or_else(
            || {
                format!(
                    "not measured{}",
                    ferry
                        .and_then(|r| r.not_measured.as_ref())
                        .map_or_else(String::new, |w| format!(" ({w})"))
                )
            },
            |v| format!("{} msg/s", thousands(v)),
        ),
        ratio: format!(
            "{} RabbitMQ, {} Proton C",
            ratio(rb).map_or_else(|| "–".into(), |r| format!("{r:.2}×")),
            ratio(pr).map_or_else(|| "–".into(), |r| format!("{r:.2}×")),
        ),
        met,
        note,
        date: date.to_owned(),
    }
}

fn generator_text(g: Generator) -> &'static str {
    match g {
        Generator::Raw => {
            "`--generator raw`, a client on the router's own codec (`ferry_router::codec`): the sender \
             copies one pre-encoded transfer frame per message, patching the delivery id, the tag and the \
             body's stamp, and writes what credit allows (up to 512 transfers) in one write; the receiver \
             decodes each performative, grants the credit again when half is used, and accepts unsettled \
             deliveries with one disposition per range"
        }
        Generator::Fe2o3 => {
            "`--generator fe2o3`, the fe2o3-amqp client, one message per send call; the generator of the \
             figures before December 2026"
        }
    }
}

fn render(
    args: &AmqpArgs,
    machine: &Machine,
    commit: &str,
    date: &str,
    rows: &[Row],
    notes: &[String],
) -> String {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let ferry_rate = rows
                .iter()
                .find(|r| r.peer == Peer::Ferry && r.mode == row.mode)
                .and_then(Row::rate);
            match row.median() {
                None => vec![
                    row.mode.label().to_owned(),
                    row.peer.label().to_owned(),
                    "not measured".into(),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                    row.not_measured
                        .clone()
                        .unwrap_or_default()
                        .replace('|', "/")
                        .replace('\n', " "),
                ],
                Some(m) => vec![
                    row.mode.label().to_owned(),
                    row.peer.label().to_owned(),
                    format!("**{}**", thousands(m.counts.rate())),
                    match (row.peer, ferry_rate) {
                        (Peer::Ferry, _) | (_, None) => "–".into(),
                        (_, Some(f)) => format!("{:.2}×", f / m.counts.rate().max(1e-9)),
                    },
                    format!("{:.2}", m.counts.latency_ms(0.5)),
                    format!("{:.2}", m.counts.latency_ms(0.99)),
                    format!("{:.2}", m.us_per_msg(m.server_cpu)),
                    format!("{:.2}", m.us_per_msg(m.generator_cpu)),
                    format!(
                        "{} / {} / {}",
                        row.runs.iter().map(|r| r.counts.released).sum::<u64>(),
                        row.runs.iter().map(|r| r.counts.rejected).sum::<u64>(),
                        row.runs.iter().map(|r| r.counts.lost).sum::<u64>(),
                    ),
                    format!(
                        "{:.0} / {:.0} / {:.0}",
                        m.cores(m.server_cpu) * 100.0,
                        m.cores(m.generator_cpu) * 100.0,
                        m.cores(m.others_cpu) * 100.0
                    ),
                    row.runs
                        .iter()
                        .map(|r| thousands(r.counts.rate()))
                        .collect::<Vec<_>>()
                        .join(" / "),
                ],
            }
        })
        .collect();
    let pinning = if args.no_pin {
        "Nothing pinned.".to_owned()
    } else {
        format!(
            "Pinning (taskset): the broker on CPU {} (for Ferry also its registry, idle once the assertion \
             is cached), the generator (sender and receiver, one tokio worker) on CPU {}.",
            args.server_cpus, args.client_cpus
        )
    };
    let mut out =
        String::from("## B4: AMQP 1.0 forwarding, Ferry router vs RabbitMQ vs Proton C broker\n\n");
    out.push_str(&format!(
        "One sender connection and one receiver connection (`TCP_NODELAY`; one compiled generator for all \
         three brokers: {}). Every message: a {}-byte Data body (sequence number and send time), \
         `content-type`, and the application properties `device_id` and `reg_assertion` (a real Ed25519 JWT \
         from the registry's internal API, about 300 bytes); the peers get exactly the same messages. \
         **Ferry**: the path device messages take, an adapter-authenticated sender (the adapters' service \
         credential, SASL PLAIN) on `telemetry/bench` → `ferry-router` (verifies the assertion, cached per \
         token; strips it; routes directly) → an application receiver (SASL PLAIN application user) on \
         `telemetry/bench`. **RabbitMQ 3.10** (Debian's `rabbitmq-server`, `rabbitmq_amqp1_0` plugin, fresh \
         node per run of the harness, SASL PLAIN guest/guest): `/queue/NAME` both ways, a fresh queue per \
         run. **Proton C**: the example broker (`broker.c` built with gcc -O2, 4 threads, SASL ANONYMOUS), a \
         fresh queue name per run. The receiver grants credit {} (refilled by the client as it goes) and \
         accepts every message. Modes: **presettled** (sender `settled`: at most once), **unsettled** (sender \
         `unsettled`, receiver `first`; up to {} messages in flight awaiting their outcome). Rate: messages \
         received in the window; {} s warm-up, {} s measured, {} runs per row, interleaved over the brokers; \
         the row shows the median run. Zero loss: every message sent presettled, or accepted unsettled, must \
         reach the receiver (released ones are refusals, counted apart). {pinning} CPU µs/msg: utime + stime \
         of the broker's process from `/proc` over the window, per received message. Core %: share of one \
         core used by the broker, the generator, and every other process (background load: other helpers \
         compile on this 2-core box, so the figures are noisy).\n\n",
        generator_text(args.generator),
        args.body.max(12),
        args.credit,
        args.credit,
        args.warmup,
        args.duration,
        args.runs,
    ));
    out.push_str(&format!(
        "- Machine: {}\n- Commit: {commit}\n- Date: {date}\n",
        machine.describe()
    ));
    for n in notes {
        out.push_str(&format!("- {n}\n"));
    }
    out.push('\n');
    out.push_str(&report::markdown_table(
        &[
            "mode",
            "broker",
            "msg/s (median)",
            "Ferry ÷ this",
            "p50 ms",
            "p99 ms",
            "CPU µs/msg (broker)",
            "CPU µs/msg (generator)",
            "released / rejected / lost",
            "core % broker / generator / others",
            "all runs, msg/s",
        ],
        &table,
    ));
    out.push('\n');
    let ferry_dropped: u64 = rows
        .iter()
        .filter(|r| r.peer == Peer::Ferry)
        .flat_map(|r| &r.runs)
        .map(|r| r.counts.lost + r.counts.released)
        .sum();
    if ferry_dropped > 0 {
        out.push_str(&format!(
            "**Ferry dropped or released {ferry_dropped} messages while its receiver kept granting credit** \
             (lost = presettled messages that never arrived; released = unsettled ones the \
             router refused). The router gives a telemetry producer a fixed window of credit \
             (256 at a time, `PRODUCER_WINDOW` in router/src/connection.rs, when this was \
             written) whenever *some* consumer of the address has *any* credit, not as much as \
             the consumers have: with a receiver granting 200, bursts beyond the receiver's \
             remaining credit find no consumer and are dropped (presettled) or released \
             (unsettled). Credit is end to end in direction but not in amount; the rows above \
             count those messages as lost, which voids Ferry's presettled rate by the zero-loss \
             rule.\n\n"
        ));
    }
    for &mode in &args.modes {
        let s = summary_row(rows, mode, machine.cpus.max(1), date);
        out.push_str(&format!(
            "**{}** against the goal (≥ 3× RabbitMQ, ≥ 1.5× Proton C, ≥ 150k msg/s pre-settled): {}. Ferry {}; {}; {}. {}.\n\n",
            mode.label(),
            match s.met {
                Some(true) => "met",
                Some(false) => "missed",
                None => "no verdict",
            },
            s.ferry,
            s.peer,
            s.ratio,
            s.note
        ));
    }
    for &mode in &args.modes {
        out.push_str(&summary_row(rows, mode, machine.cpus.max(1), date).marker());
        out.push('\n');
    }
    out.push_str("\nReproduce (from the workspace root; needs `apt-get install -y rabbitmq-server libqpid-proton11-dev libqpid-proton11-dev-examples`):\n\n```sh\nexport CARGO_TARGET_DIR=/var/tmp/ferry-target\n");
    out.push_str("cargo build --release -p ferry-bench -p ferry-registry -p ferry-router\n");
    let list = |v: Vec<&str>| v.join(",");
    out.push_str(&format!(
        "\"$CARGO_TARGET_DIR\"/release/ferry-bench amqp --generator {} --warmup {} --duration {} --runs {} --credit {} \
         --body {} --modes {} --peers {}{}\n```\n",
        args.generator.label(),
        args.warmup,
        args.duration,
        args.runs,
        args.credit,
        args.body,
        list(args.modes.iter().map(|m| m.label()).collect()),
        list(args.peers.iter().map(|p| match p {
            Peer::Ferry => "ferry",
            Peer::Rabbitmq => "rabbitmq",
            Peer::Proton => "proton",
        }).collect()),
        if args.no_pin {
            " --no-pin".to_owned()
        } else {
            format!(" --server-cpus {} --client-cpus {}", args.server_cpus, args.client_cpus)
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(peer: Peer, rate: u64, lost: u64) -> Row {
        Row {
            peer,
            mode: Mode::Presettled,
            runs: vec![Run {
                counts: gen::Counts {
                    received_window: rate,
                    lost,
                    window: Duration::from_secs(1),
                    ..gen::Counts::default()
                },
                server_cpu: Duration::from_millis(500),
                generator_cpu: Duration::from_millis(950),
                others_cpu: Duration::ZERO,
            }],
            not_measured: None,
        }
    }

    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: AmqpArgs,
    }

    #[test]
    fn the_generator_is_raw_unless_fe2o3_is_asked_for() {
        use clap::Parser as _;
        let d = Wrapper::parse_from(["b4"]).args;
        assert_eq!(d.generator, Generator::Raw);
        assert_eq!((d.credit, d.body), (200, 12));
        let old = Wrapper::parse_from(["b4", "--generator", "fe2o3"]).args;
        assert_eq!(old.generator, Generator::Fe2o3);
        assert!(Wrapper::try_parse_from(["b4", "--generator", "proton"]).is_err());
        assert!(generator_text(Generator::Raw).contains("ferry_router::codec"));
    }

    #[test]
    fn all_three_goals_must_hold() {
        let rows = vec![
            row(Peer::Ferry, 160_000, 0),
            row(Peer::Rabbitmq, 40_000, 0),
            row(Peer::Proton, 100_000, 0),
        ];
        let s = summary_row(&rows, Mode::Presettled, 2, "d");
        assert_eq!(s.met, Some(true), "{s:?}");
        assert_eq!(s.ratio, "4.00× RabbitMQ, 1.60× Proton C");
        assert!(s.note.contains("lower bound"), "{}", s.note);

        let slow = vec![
            row(Peer::Ferry, 80_000, 0),
            row(Peer::Rabbitmq, 20_000, 0),
            row(Peer::Proton, 70_000, 0),
        ];
        let s = summary_row(&slow, Mode::Presettled, 2, "d");
        assert_eq!(s.met, Some(false));
        assert!(s.note.starts_with("below 150k msg/s"), "{}", s.note);

        let lossy = vec![
            row(Peer::Ferry, 200_000, 1),
            row(Peer::Rabbitmq, 20_000, 0),
            row(Peer::Proton, 70_000, 0),
        ];
        assert_eq!(
            summary_row(&lossy, Mode::Presettled, 2, "d").met,
            Some(false)
        );
    }

    #[test]
    fn a_missing_peer_leaves_no_verdict_unless_already_missed() {
        let mut rabbit = row(Peer::Rabbitmq, 0, 0);
        rabbit.runs.clear();
        rabbit.not_measured = Some("rabbitmq-server not installed".into());
        let rows = vec![
            row(Peer::Ferry, 150_000, 0),
            rabbit.clone(),
            row(Peer::Proton, 100_000, 0),
        ];
        let s = summary_row(&rows, Mode::Presettled, 2, "d");
        assert_eq!(s.met, None);
        assert!(
            s.peer
                .contains("RabbitMQ not measured (rabbitmq-server not installed)"),
            "{}",
            s.peer
        );
        let rows = vec![
            row(Peer::Ferry, 50_000, 0),
            rabbit,
            row(Peer::Proton, 100_000, 0),
        ];
        assert_eq!(
            summary_row(&rows, Mode::Presettled, 2, "d").met,
            Some(false)
        );
    }
}
