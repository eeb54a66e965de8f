//! Scenario B8: the HTTP adapter under keep-alive load, beside a bare hyper server on the same box.
//!
//! Ferry: registry, router and `ferry-http-adapter`, each its own process, pinned to the server CPUs; one
//! AMQP consumer (fe2o3-amqp, application user, `telemetry/bench`, ample credit) in the generator's
//! process. C connections (default 64), each authenticated as its own device (`Authorization: Basic`,
//! `a-N@bench`), `POST /telemetry` with a fixed body, QoS 0 (no `qos-level`), expecting `202`. The peer:
//! the same generator, the same requests, against [`bare`], a hyper server that reads the body and
//! answers `202`. Zero loss: every `202` of the adapter must reach the consumer.
//!
//! Layout: this file runs and measures both servers; `section` judges the figures and writes the
//! report's section.

pub mod bare;
mod section;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::{HeaderValue, StatusCode, Uri};

use crate::amqp::client::{Client, Consumer, Login};
use crate::load::{self, Counts, Rotation, Shape, Template, Workload};
use crate::machine::{self, Machine};
use crate::platform::{self, BinArgs, Binaries, Platform, Proc};
use crate::{cpu, report};
use section::render;

pub use section::{bound, summary_row};

/// The report section this scenario owns.
pub const SECTION: &str = "b8";
/// BENCHMARKS.md: ≥ 20,000 req/s and ≥ 40 % of bare hyper.
pub const GOAL_RATE: f64 = 20_000.0;
pub const GOAL_SHARE: f64 = 0.40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The HTTP adapter → router → AMQP consumer.
    Ferry,
    /// A bare hyper server that reads the body and answers 202.
    Hyper,
}

impl Target {
    pub fn all() -> Vec<Target> {
        vec![Target::Ferry, Target::Hyper]
    }

    fn label(self) -> &'static str {
        match self {
            Target::Ferry => "Ferry: HTTP adapter → router → consumer",
            Target::Hyper => "bare hyper 1 (reads body, 202)",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Keep-alive HTTP/1.1 connections, one request in flight on each.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub connections: usize,
    /// Warm-up before each run, in seconds.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Measured seconds of each run.
    #[arg(long, short = 'd', default_value_t = 5)]
    pub duration: u64,
    /// Runs per target (interleaved); the row shows the median run.
    #[arg(long, short = 'r', default_value_t = 3)]
    pub runs: usize,
    /// Body bytes of each POST.
    #[arg(long, default_value_t = 32)]
    pub payload: usize,
    /// Devices provisioned; connection k posts as device k mod N.
    #[arg(long, default_value_t = 64)]
    pub devices: usize,
    /// CPUs (taskset list) of the system under test (each of Ferry's processes, or the bare server).
    #[arg(long, default_value = "0")]
    pub server_cpus: String,
    /// CPUs of the generator (and the AMQP consumer); the process re-executes itself under taskset.
    #[arg(long, default_value = "1")]
    pub client_cpus: String,
    /// Do not pin anything.
    #[arg(long)]
    pub no_pin: bool,
    /// What to measure, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ferry,hyper")]
    pub targets: Vec<Target>,
    #[command(flatten)]
    pub bins: BinArgs,
    /// The report to update (only the b8 section, then the summary).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/REPORT.md"))]
    pub report: PathBuf,
    /// Print the figures without touching the report.
    #[arg(long)]
    pub no_report: bool,
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Run {
    pub counts: Counts,
    /// CPU time of each server process in the window, by name.
    pub server_cpu: Vec<(String, Duration)>,
    pub generator_cpu: Duration,
    pub others_cpu: Duration,
    /// `202`s the consumer never received (Ferry only).
    pub lost: u64,
}

impl Run {
    fn server_total(&self) -> Duration {
        self.server_cpu.iter().map(|(_, d)| *d).sum()
    }

    fn cores(&self, d: Duration) -> f64 {
        d.as_secs_f64() / self.counts.window.as_secs_f64().max(1e-9)
    }

    fn us_per_req(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1e6 / (self.counts.ok.max(1) as f64)
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub target: Target,
    pub runs: Vec<Run>,
}

impl Row {
    pub fn median(&self) -> Option<&Run> {
        let mut v: Vec<&Run> = self.runs.iter().collect();
        v.sort_by(|a, b| a.counts.rate().total_cmp(&b.counts.rate()));
        v.get(v.len().saturating_sub(1) / 2).copied()
    }

    fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.counts.errors).sum()
    }

    fn lost(&self) -> u64 {
        self.runs.iter().map(|r| r.lost).sum()
    }

    fn first_error(&self) -> Option<&str> {
        self.runs
            .iter()
            .find_map(|r| r.counts.first_error.as_deref())
    }
}

/// A system under test, started and checked.
enum Sut {
    Ferry {
        platform: Box<Platform>,
        consumer: Consumer,
        _client: Client,
        addr: std::net::SocketAddr,
    },
    Hyper {
        proc: Proc,
        addr: std::net::SocketAddr,
    },
}

impl Sut {
    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Sut::Ferry { addr, .. } | Sut::Hyper { addr, .. } => *addr,
        }
    }

    fn pids(&self) -> Vec<(String, u32)> {
        match self {
            Sut::Ferry { platform, .. } => platform
                .procs()
                .iter()
                .map(|p| (p.name.clone(), p.pid()))
                .collect(),
            Sut::Hyper { proc, .. } => vec![(proc.name.clone(), proc.pid())],
        }
    }
}

/// Runs B8 and writes its section (and the summary).
pub async fn run(args: &HttpArgs) -> anyhow::Result<()> {
    ensure!(
        args.connections > 0 && args.devices > 0 && args.runs > 0 && args.duration > 0,
        "--connections, --devices, --runs and --duration must be at least 1"
    );
    let cpus = (!args.no_pin).then_some(args.server_cpus.as_str());
    let date = machine::now();
    let commit = machine::commit();
    let body = Bytes::from(vec![b'x'; args.payload]);
    let mut suts = Vec::new();
    for &target in &args.targets {
        let sut = match target {
            Target::Ferry => start_ferry(args, cpus, &body).await?,
            Target::Hyper => start_hyper(cpus).await?,
        };
        suts.push((target, sut));
    }
    let shape = Shape {
        connections: args.connections,
        warmup: Duration::from_secs(args.warmup),
        duration: Duration::from_secs(args.duration),
    };
    let mut rows: Vec<Row> = args
        .targets
        .iter()
        .map(|&target| Row {
            target,
            runs: Vec::new(),
        })
        .collect();
    for n in 1..=args.runs {
        for (i, (target, sut)) in suts.iter_mut().enumerate() {
            let workload = Arc::new(Workload {
                addr: sut.addr(),
                templates: templates(args, sut.addr(), &body)?,
                rotation: Rotation::PerConnection,
                expect: StatusCode::ACCEPTED,
            });
            let run = measure(sut, workload, shape).await?;
            eprintln!(
                "{} run {n}/{}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, server {:.0} µs/req ({:.0} % core), \
                 generator {:.0} % core, others {:.0} % core, errors {}, lost {}",
                target.label(),
                args.runs,
                run.counts.rate(),
                run.counts.latency_ms(0.5),
                run.counts.latency_ms(0.99),
                run.us_per_req(run.server_total()),
                run.cores(run.server_total()) * 100.0,
                run.cores(run.generator_cpu) * 100.0,
                run.cores(run.others_cpu) * 100.0,
                run.counts.errors,
                run.lost,
            );
            rows[i].runs.push(run);
        }
    }
    for (_, sut) in suts {
        if let Sut::Ferry { consumer, .. } = sut {
            if let Some(e) = consumer.stop().await {
                eprintln!("consumer: {e}");
            }
        }
    }
    let section = render(args, &Machine::detect(), &commit, &date, &rows);
    println!("{section}");
    if !args.no_report {
        report::update_section(&args.report, SECTION, &section)?;
        crate::summary::update_summary(&args.report)?;
        eprintln!("updated section `{SECTION}` of {}", args.report.display());
    }
    let errors: u64 = rows.iter().map(|r| r.errors() + r.lost()).sum();
    if errors > 0 {
        let first = rows
            .iter()
            .find_map(Row::first_error)
            .unwrap_or("messages lost");
        anyhow::bail!(
            "{errors} requests failed or were lost (first: {first}); a rate counts only with zero"
        );
    }
    Ok(())
}

fn templates(
    args: &HttpArgs,
    addr: std::net::SocketAddr,
    body: &Bytes,
) -> anyhow::Result<Vec<Template>> {
    (0..args.devices.min(args.connections).max(1))
        .map(|i| {
            Ok(Template {
                method: http::Method::POST,
                uri: Uri::from_static("/telemetry"),
                headers: vec![
                    (
                        http::header::HOST,
                        HeaderValue::from_str(&addr.to_string())?,
                    ),
                    (
                        http::header::AUTHORIZATION,
                        load::basic_auth(
                            &format!("a-{i}@{}", platform::TENANT),
                            &platform::device_password(i),
                        )?,
                    ),
                    (
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    ),
                ],
                body: body.clone(),
            })
        })
        .collect()
}

async fn start_ferry(args: &HttpArgs, cpus: Option<&str>, body: &Bytes) -> anyhow::Result<Sut> {
    let bins = Binaries {
        registry: args.bins.get("ferry-registry")?,
        router: args.bins.get("ferry-router")?,
        http_adapter: Some(args.bins.get("ferry-http-adapter")?),
        mqtt_adapter: None,
    };
    let platform = Platform::start(&bins, cpus, args.devices).await?;
    let addr = platform.http_addr.context("the HTTP adapter's address")?;
    let login = Login::Plain {
        user: platform::APP_USER.into(),
        password: platform::APP_PASSWORD.into(),
    };
    let mut client = Client::open(platform.router_addr, &login, "ferry-bench-b8-consumer").await?;
    let address = format!("telemetry/{}", platform::TENANT);
    let consumer = Consumer::start(&mut client, &address, 1000, |_, _| {}).await?;
    // One request end to end before any load: the path works and the consumer sees it.
    let t = templates(args, addr, body)?;
    let first = t.first().context("a template")?;
    let mut conn = crate::client::Conn::open(addr).await?;
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        // 503 until the adapter's link to the router has credit.
        status = conn.status(first.request()).await?;
        if status == StatusCode::ACCEPTED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        status == StatusCode::ACCEPTED,
        "the HTTP adapter answered {status} to a valid telemetry POST"
    );
    ensure!(
        consumer.wait_for(1, Duration::from_secs(5)).await >= 1,
        "the consumer did not receive the first telemetry message"
    );
    Ok(Sut::Ferry {
        platform: Box::new(platform),
        consumer,
        _client: client,
        addr,
    })
}

async fn start_hyper(cpus: Option<&str>) -> anyhow::Result<Sut> {
    let addr = platform::free_port()?;
    let exe = std::env::current_exe().context("locating this executable")?;
    let log =
        std::env::temp_dir().join(format!("ferry-bench-bare-hyper-{}.log", std::process::id()));
    let mut proc = Proc::spawn(
        "bare hyper",
        &exe,
        &["bare-hyper".into(), "--bind".into(), addr.to_string()],
        &[],
        &["FERRY_BENCH_PINNED"],
        cpus,
        log,
    )?;
    proc.wait_port(addr, Duration::from_secs(10)).await?;
    Ok(Sut::Hyper { proc, addr })
}

async fn measure(sut: &mut Sut, workload: Arc<Workload>, shape: Shape) -> anyhow::Result<Run> {
    let before_received = match sut {
        Sut::Ferry { consumer, .. } => consumer.received(),
        Sut::Hyper { .. } => 0,
    };
    let pids = sut.pids();
    let running = load::start(workload, shape).await?;
    running.window_start().await;
    let s0 = sample(&pids)?;
    running.window_end().await;
    let s1 = sample(&pids)?;
    let counts = running.finish().await?;
    let lost = match sut {
        Sut::Ferry {
            consumer, platform, ..
        } => {
            platform.check_alive()?;
            let expected = before_received + counts.ok_total;
            let got = consumer.wait_for(expected, Duration::from_secs(10)).await;
            expected.saturating_sub(got)
        }
        Sut::Hyper { proc, .. } => {
            proc.check_alive()?;
            0
        }
    };
    let server_cpu: Vec<(String, Duration)> = pids
        .iter()
        .zip(s0.servers.iter().zip(&s1.servers))
        .map(|((name, _), (a, b))| (name.clone(), b.saturating_sub(*a)))
        .collect();
    let generator_cpu = s1.generator.saturating_sub(s0.generator);
    let ours: Duration = server_cpu.iter().map(|(_, d)| *d).sum::<Duration>() + generator_cpu;
    Ok(Run {
        counts,
        others_cpu: s1.machine.saturating_sub(s0.machine).saturating_sub(ours),
        server_cpu,
        generator_cpu,
        lost,
    })
}

struct Sample {
    servers: Vec<Duration>,
    generator: Duration,
    machine: Duration,
}

fn sample(pids: &[(String, u32)]) -> anyhow::Result<Sample> {
    Ok(Sample {
        servers: pids
            .iter()
            .map(|(_, pid)| cpu::process_cpu(*pid))
            .collect::<anyhow::Result<_>>()?,
        generator: cpu::own_cpu()?,
        machine: cpu::machine_busy()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rate: u64, server_ms: u64) -> Run {
        Run {
            counts: Counts {
                ok: rate,
                ok_total: rate,
                window: Duration::from_secs(1),
                latencies_us: vec![500, 900],
                ..Counts::default()
            },
            server_cpu: vec![(
                "ferry-http-adapter".into(),
                Duration::from_millis(server_ms),
            )],
            generator_cpu: Duration::from_millis(300),
            others_cpu: Duration::ZERO,
            lost: 0,
        }
    }

    #[test]
    fn the_summary_judges_rate_and_share_together() {
        let rows = vec![
            Row {
                target: Target::Ferry,
                runs: vec![run(21_000, 950), run(25_000, 950), run(19_000, 950)],
            },
            Row {
                target: Target::Hyper,
                runs: vec![run(50_000, 900)],
            },
        ];
        let s = summary_row(&rows, 1, 2, "d");
        assert_eq!(s.met, Some(true), "{s:?}");
        assert_eq!(s.ratio, "42 % of bare hyper");
        assert!(s.note.contains("server core is saturated"), "{}", s.note);
        let rows = vec![
            Row {
                target: Target::Ferry,
                runs: vec![run(21_000, 500)],
            },
            Row {
                target: Target::Hyper,
                runs: vec![run(100_000, 900)],
            },
        ];
        assert_eq!(
            summary_row(&rows, 1, 2, "d").met,
            Some(false),
            "21 % of hyper misses"
        );
        let mut lossy = run(30_000, 500);
        lossy.lost = 3;
        let rows = vec![
            Row {
                target: Target::Ferry,
                runs: vec![lossy],
            },
            Row {
                target: Target::Hyper,
                runs: vec![run(60_000, 900)],
            },
        ];
        assert_eq!(
            summary_row(&rows, 1, 2, "d").met,
            Some(false),
            "a loss voids the rate"
        );
    }

    #[test]
    fn bounds_name_the_saturated_core() {
        assert!(bound(0.5, 0.95, 0.0, 1, 2).contains("generator"));
        assert!(bound(0.97, 0.5, 0.1, 1, 2).contains("server core"));
        assert!(bound(0.5, 0.5, 0.1, 1, 2).contains("neither"));
        assert!(bound(0.6, 0.3, 1.0, 1, 2).contains("background load"));
    }
}
