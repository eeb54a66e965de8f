//! Scenario `registry`: how many credential lookups and registration assertions per second the registry's
//! internal API serves, on SQLite and on PostgreSQL.
//!
//! These are the two calls a protocol adapter makes when a device connects (Hono's credentials and
//! registration assertion lookups); adapters cache the answers, so the figures bound the rate of *new*
//! device sessions per registry core. The registry runs as its own process ([`server`]) pinned to the
//! server cores; the database server, when PostgreSQL, is charged separately by its backends' CPU time.

mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use serde_json::{json, Value};

use crate::cli::{Backend, Endpoint, RegistryArgs};
use crate::client::{Base, Conn};
use crate::load::{self, Counts, Rotation, Shape, Template, Workload};
use crate::machine::{self, Machine};
use crate::postgres::{self, FreshDatabase};
use crate::{cpu, report};
use server::{RegistryProcess, Tokens};

/// The report section this scenario owns.
pub const SECTION: &str = "registry";
const TENANT: &str = "bench";

/// CPU times read at one edge of the window.
#[derive(Debug, Clone, Copy)]
struct Sample {
    registry: Duration,
    database: Option<Duration>,
    generator: Duration,
    machine: Duration,
}

/// One measured run: what the clients saw and the CPU time spent in the window.
#[derive(Debug)]
struct Run {
    counts: Counts,
    registry_cpu: Duration,
    database_cpu: Option<Duration>,
    generator_cpu: Duration,
    /// What other processes on the machine used meanwhile: the noise in this run.
    others_cpu: Duration,
}

impl Run {
    fn cores(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() / self.counts.window.as_secs_f64()
    }
}

/// All runs of one (endpoint, backend).
#[derive(Debug)]
struct Row {
    endpoint: Endpoint,
    backend: Backend,
    runs: Vec<Run>,
}

impl Row {
    /// The run with the median rate (the lower middle one for an even count).
    fn median(&self) -> Option<&Run> {
        let mut by_rate: Vec<&Run> = self.runs.iter().collect();
        by_rate.sort_by(|a, b| a.counts.rate().total_cmp(&b.counts.rate()));
        by_rate.get(by_rate.len().saturating_sub(1) / 2).copied()
    }

    fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.counts.errors).sum()
    }

    fn first_error(&self) -> Option<&str> {
        self.runs
            .iter()
            .find_map(|r| r.counts.first_error.as_deref())
    }
}

/// Runs the scenario and writes its section of the report.
pub async fn run(args: &RegistryArgs) -> anyhow::Result<()> {
    ensure!(args.devices > 0, "--devices must be at least 1");
    ensure!(
        args.load.connections > 0,
        "--connections must be at least 1"
    );
    ensure!(args.load.runs > 0, "--runs must be at least 1");
    ensure!(
        args.load.duration > 0,
        "--duration must be at least 1 second"
    );
    let postgres_url = match (
        args.backends.contains(&Backend::Postgres),
        &args.postgres_url,
    ) {
        (true, None) => {
            bail!("the postgres backend needs --postgres-url or FERRY_TEST_POSTGRES_URL")
        }
        (_, url) => url.clone(),
    };
    let bin = registry_bin(args)?;
    let date = machine::now();
    let commit = machine::commit();
    let id = std::process::id();
    let tokens = Tokens {
        admin: format!("bench-admin-{id}"),
        internal: format!("bench-internal-{id}"),
    };

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &backend in &args.backends {
        let mut db = match (&postgres_url, backend) {
            (Some(url), Backend::Postgres) => Some(FreshDatabase::create(url).await?),
            _ => None,
        };
        if let Some(db) = &db {
            notes.push(format!(
                "PostgreSQL {} on the same machine, not pinned.",
                db.server_version()
            ));
        }
        let measured = measure_backend(args, &bin, backend, db.as_mut(), &tokens, &mut notes).await;
        if let Some(db) = db {
            if let Err(e) = db.drop_database().await {
                eprintln!("warning: {e:#}");
            }
        }
        rows.extend(measured?);
    }

    let section = render(args, &Machine::detect(), &commit, &date, &rows, &notes);
    println!("{section}");
    if !args.no_report {
        report::update_section(&args.report, SECTION, &section)?;
        eprintln!("updated section `{SECTION}` of {}", args.report.display());
    }
    let errors: u64 = rows.iter().map(Row::errors).sum();
    if errors > 0 {
        let first = rows.iter().find_map(Row::first_error).unwrap_or("?");
        bail!("{errors} requests failed (first: {first}); a rate counts only with zero errors");
    }
    Ok(())
}

/// `--registry-bin`, else `ferry-registry` beside this executable (both built into one target directory).
fn registry_bin(args: &RegistryArgs) -> anyhow::Result<PathBuf> {
    let bin = match &args.registry_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("ferry-registry"),
    };
    ensure!(
        bin.is_file(),
        "{} not found: build it with `cargo build --release -p ferry-registry` or pass --registry-bin",
        bin.display()
    );
    Ok(bin)
}

async fn measure_backend(
    args: &RegistryArgs,
    bin: &std::path::Path,
    backend: Backend,
    mut db: Option<&mut FreshDatabase>,
    tokens: &Tokens,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Row>> {
    let cpus = (!args.pinning.no_pin).then_some(args.pinning.server_cpus.as_str());
    let server =
        RegistryProcess::start(bin, cpus, db.as_deref().map(FreshDatabase::url), tokens).await?;
    let began = Instant::now();
    provision(server.addr, tokens, args.devices).await?;
    eprintln!(
        "{}: provisioned {} devices in {:.1} s",
        backend.label(),
        args.devices,
        began.elapsed().as_secs_f64()
    );
    check_answers(server.addr, tokens).await?;
    let log_before = server.log_bytes();
    let shape = Shape {
        connections: args.load.connections,
        warmup: Duration::from_secs(args.load.warmup),
        duration: Duration::from_secs(args.load.duration),
    };

    let mut rows = Vec::new();
    for &endpoint in &args.endpoints {
        let workload = Arc::new(workload(endpoint, server.addr, tokens, args.devices)?);
        let mut runs = Vec::new();
        for n in 1..=args.load.runs {
            let running = load::start(workload.clone(), shape).await?;
            running.window_start().await;
            let db_pids = match db.as_deref_mut() {
                Some(db) => Some(db.backend_pids().await?),
                None => None,
            };
            let before = sample(server.pid(), db_pids.as_deref())?;
            running.window_end().await;
            let after = sample(server.pid(), db_pids.as_deref())?;
            let counts = running.finish().await?;
            let run = Run {
                counts,
                registry_cpu: after.registry.saturating_sub(before.registry),
                database_cpu: after
                    .database
                    .zip(before.database)
                    .map(|(a, b)| a.saturating_sub(b)),
                generator_cpu: after.generator.saturating_sub(before.generator),
                others_cpu: Duration::ZERO,
            };
            let ours = run.registry_cpu + run.database_cpu.unwrap_or_default() + run.generator_cpu;
            let run = Run {
                others_cpu: after
                    .machine
                    .saturating_sub(before.machine)
                    .saturating_sub(ours),
                ..run
            };
            eprintln!(
                "{} / {} run {n}/{}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, registry {:.0} µs/req ({:.0} % core), \
                 generator {:.0} % core, others {:.0} % core, errors {}",
                endpoint.label(),
                backend.label(),
                args.load.runs,
                run.counts.rate(),
                run.counts.latency_ms(0.5),
                run.counts.latency_ms(0.99),
                run.counts.us_per_request(run.registry_cpu),
                run.cores(run.registry_cpu) * 100.0,
                run.cores(run.generator_cpu) * 100.0,
                run.cores(run.others_cpu) * 100.0,
                run.counts.errors,
            );
            runs.push(run);
        }
        rows.push(Row {
            endpoint,
            backend,
            runs,
        });
    }
    let logged = server.log_bytes().saturating_sub(log_before);
    if logged > 0 {
        notes.push(format!(
            "The registry ({}) logged {logged} bytes while under load.",
            backend.label()
        ));
    }
    Ok(rows)
}

fn sample(registry_pid: u32, db_pids: Option<&[u32]>) -> anyhow::Result<Sample> {
    Ok(Sample {
        registry: cpu::process_cpu(registry_pid)?,
        database: db_pids.and_then(database_cpu),
        generator: cpu::own_cpu()?,
        machine: cpu::machine_busy()?,
    })
}

/// CPU time of the PostgreSQL backends, when they are processes on this machine (and so readable here:
/// a server in another pid namespace would report pids that are not its processes here).
fn database_cpu(pids: &[u32]) -> Option<Duration> {
    pids.iter()
        .map(|&pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            if comm.trim() != "postgres" {
                return None;
            }
            cpu::process_cpu(pid).ok()
        })
        .sum()
}

fn workload(
    endpoint: Endpoint,
    addr: std::net::SocketAddr,
    tokens: &Tokens,
    devices: usize,
) -> anyhow::Result<Workload> {
    let (method, path): (Method, fn(usize) -> String) = match endpoint {
        Endpoint::Credentials => (Method::GET, |i| {
            format!("/internal/v1/credentials/{TENANT}?type=hashed-password&auth-id=a-{i}")
        }),
        Endpoint::Assertions => (Method::POST, |i| {
            format!("/internal/v1/assertions/{TENANT}/d-{i}")
        }),
    };
    let uris = (0..devices)
        .map(|i| Uri::try_from(path(i)).context("building a request URI"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let base = Base::new(addr, &tokens.internal)?;
    Ok(Workload {
        addr,
        templates: uris
            .into_iter()
            .map(|uri| Template::for_base(&base, method.clone(), uri, Bytes::new()))
            .collect(),
        rotation: Rotation::All,
        expect: StatusCode::OK,
    })
}

/// One tenant, `devices` devices `d-N`, each with the hashed-password credential `a-N`.
///
/// One request at a time: the speed of the setup is not what is measured, and it keeps the setup
/// independent of how the backend copes with concurrent writers.
async fn provision(
    addr: std::net::SocketAddr,
    tokens: &Tokens,
    devices: usize,
) -> anyhow::Result<()> {
    let base = Base::new(addr, &tokens.admin)?;
    let mut conn = Conn::open(addr).await?;
    let tenant = format!("/v1/tenants/{TENANT}");
    send(&mut conn, &base, Method::POST, tenant, "{}".into()).await?;
    for i in 0..devices {
        let device = format!("/v1/devices/{TENANT}/d-{i}");
        send(&mut conn, &base, Method::POST, device, "{}".into()).await?;
        let credentials = json!([{
            "type": "hashed-password",
            "auth-id": format!("a-{i}"),
            "secrets": [{ "pwd-plain": format!("password-{i}") }],
        }]);
        let path = format!("/v1/credentials/{TENANT}/d-{i}");
        send(&mut conn, &base, Method::PUT, path, credentials.to_string()).await?;
    }
    Ok(())
}

/// Both endpoints answer what the scenario means to measure (not, say, a 200 from somewhere else).
async fn check_answers(addr: std::net::SocketAddr, tokens: &Tokens) -> anyhow::Result<()> {
    let base = Base::new(addr, &tokens.internal)?;
    let mut conn = Conn::open(addr).await?;
    for endpoint in [Endpoint::Credentials, Endpoint::Assertions] {
        let w = workload(endpoint, addr, tokens, 1)?;
        let first = w.templates.first().context("a request")?;
        let uri = first.uri.to_string();
        let body = send(
            &mut conn,
            &base,
            first.method.clone(),
            uri.clone(),
            String::new(),
        )
        .await?;
        let body: Value =
            serde_json::from_slice(&body).with_context(|| format!("{uri} answered no JSON"))?;
        let key = if endpoint == Endpoint::Credentials {
            "type"
        } else {
            "assertion"
        };
        ensure!(
            body.get("device-id") == Some(&json!("d-0")) && body.get(key).is_some(),
            "{uri} answered {body}"
        );
    }
    Ok(())
}

async fn send(
    conn: &mut Conn,
    base: &Base,
    method: Method,
    path: String,
    body: String,
) -> anyhow::Result<Bytes> {
    let uri = Uri::try_from(path.as_str()).with_context(|| format!("bad path {path}"))?;
    let (status, answer) = conn
        .fetch(base.request(method.clone(), uri, Bytes::from(body)))
        .await?;
    ensure!(
        status.is_success() || status == StatusCode::NOT_MODIFIED,
        "{method} {path}: HTTP {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(answer)
}

/// The command that reproduces the figures.
fn command(args: &RegistryArgs) -> String {
    let list = |v: Vec<&str>| v.join(",");
    let backends = list(
        args.backends
            .iter()
            .map(|b| match b {
                Backend::Sqlite => "sqlite",
                Backend::Postgres => "postgres",
            })
            .collect(),
    );
    let endpoints = list(
        args.endpoints
            .iter()
            .map(|e| match e {
                Endpoint::Credentials => "credentials",
                Endpoint::Assertions => "assertions",
            })
            .collect(),
    );
    let mut c = format!(
        "\"$CARGO_TARGET_DIR\"/release/ferry-bench registry --devices {} --connections {} --warmup {} \
         --duration {} --runs {} --backends {backends} --endpoints {endpoints}",
        args.devices, args.load.connections, args.load.warmup, args.load.duration, args.load.runs
    );
    if args.backends.contains(&Backend::Postgres) {
        if let Some(url) = &args.postgres_url {
            c.push_str(&format!(" --postgres-url {}", postgres::redacted(url)));
        }
    }
    if args.pinning.no_pin {
        c.push_str(" --no-pin");
    } else {
        c.push_str(&format!(
            " --server-cpus {} --client-cpus {}",
            args.pinning.server_cpus, args.pinning.client_cpus
        ));
    }
    c
}

fn render(
    args: &RegistryArgs,
    machine: &Machine,
    commit: &str,
    date: &str,
    rows: &[Row],
    notes: &[String],
) -> String {
    let table: Vec<Vec<String>> = rows
        .iter()
        .filter_map(|row| {
            let m = row.median()?;
            let rates: Vec<String> = row
                .runs
                .iter()
                .map(|r| thousands(r.counts.rate()))
                .collect();
            Some(vec![
                row.endpoint.label().to_owned(),
                row.backend.label().to_owned(),
                format!("**{}**", thousands(m.counts.rate())),
                format!("{:.2}", m.counts.latency_ms(0.5)),
                format!("{:.2}", m.counts.latency_ms(0.99)),
                format!("{:.0}", m.counts.us_per_request(m.registry_cpu)),
                m.database_cpu.map_or_else(
                    || "–".to_owned(),
                    |d| format!("{:.0}", m.counts.us_per_request(d)),
                ),
                row.errors().to_string(),
                format!(
                    "{:.0} / {:.0} / {:.0}",
                    m.cores(m.registry_cpu) * 100.0,
                    m.cores(m.generator_cpu) * 100.0,
                    m.cores(m.others_cpu) * 100.0
                ),
                rates.join(" / "),
            ])
        })
        .collect();
    let headers = [
        "scenario",
        "backend",
        "req/s (median)",
        "p50 ms",
        "p99 ms",
        "CPU µs/req (registry)",
        "CPU µs/req (PostgreSQL)",
        "errors",
        "core % registry / generator / others",
        "all runs, req/s",
    ];
    let pinning = if args.pinning.no_pin {
        "Nothing pinned".to_owned()
    } else {
        format!(
            "Pinning (taskset): registry on CPU {}, load generator on CPU {}",
            args.pinning.server_cpus, args.pinning.client_cpus
        )
    };
    let mut out = String::new();
    out.push_str("## Registry: internal API requests per second\n\n");
    out.push_str(&format!(
        "`GET /internal/v1/credentials/{{tenant}}?type=hashed-password&auth-id=A` (credential lookup) and \
         `POST /internal/v1/assertions/{{tenant}}/{{device}}` (assertion issuance: reads tenant and device, signs \
         an Ed25519 assertion) against `ferry-registry` in its own process; {} devices with one hashed-password \
         credential each, requests cycling over all of them. {} keep-alive HTTP/1.1 connections, one request \
         in flight on each (closed loop); {} s warm-up, then {} s measured, {} runs per row; the row shows the \
         run with the median rate, errors are summed over all runs and warm-ups (any answer but 200 is one). \
         {pinning}. CPU µs/req: utime + stime from `/proc` over the window, per 200 answer; with SQLite the \
         database's work is inside the registry's figure, with PostgreSQL it is the registry's pool backends. \
         Core %: share of one core used in the window by the registry, the generator, and every other \
         process on the machine (background load; high values mean a noisy run). \
         No peer yet: these are absolute figures, for before/after comparisons on this machine only.\n\n",
        args.devices, args.load.connections, args.load.warmup, args.load.duration, args.load.runs
    ));
    out.push_str(&format!("- Machine: {}\n", machine.describe()));
    out.push_str(&format!("- Commit: {commit}\n"));
    out.push_str(&format!("- Date: {date}\n"));
    for note in notes {
        out.push_str(&format!("- {note}\n"));
    }
    out.push('\n');
    out.push_str(&report::markdown_table(&headers, &table));
    out.push_str("\nReproduce (from the workspace root):\n\n```sh\n");
    out.push_str("export CARGO_TARGET_DIR=/var/tmp/ferry-target\n");
    out.push_str("cargo build --release -p ferry-registry -p ferry-bench\n");
    out.push_str(&command(args));
    out.push_str("\n```\n");
    out
}

/// `12345.6` → `12,346`.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(12345.6), "12,346");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }

    fn run(rate: u64, errors: u64) -> Run {
        Run {
            counts: Counts {
                ok: rate,
                ok_total: rate,
                errors,
                first_error: None,
                window: Duration::from_secs(1),
                latencies_us: vec![100, 200],
            },
            registry_cpu: Duration::from_millis(500),
            database_cpu: None,
            generator_cpu: Duration::from_millis(100),
            others_cpu: Duration::ZERO,
        }
    }

    #[test]
    fn the_row_is_the_median_run_and_errors_add_up() {
        let row = Row {
            endpoint: Endpoint::Credentials,
            backend: Backend::Sqlite,
            runs: vec![run(300, 0), run(100, 2), run(200, 1)],
        };
        assert_eq!(row.median().map(|r| r.counts.ok), Some(200));
        assert_eq!(row.errors(), 3);
    }
}
