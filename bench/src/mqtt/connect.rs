//! B7: connection setup with a credential check, CONNECT → CONNACK per second, Ferry vs Mosquitto with a
//! password file.
//!
//! C connectors, each with one attempt in flight (closed loop): TCP connect, CONNECT with the device's
//! user and password, wait for CONNACK 0, send DISCONNECT, close. The devices are cycled over; a pass over
//! all of them first (not measured, but reported) fills Ferry's caches, as devices that reconnect do in
//! production.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt as _;
use tokio::task::JoinSet;

use super::stats::{self, quantile_ms, ratio, thousands};
use super::wire::{self, ConnectError, Login};
use super::{CpuSample, CpuUse, Kind, MqttArgs, Sut};
use crate::report;

/// What the connectors saw in one run.
#[derive(Debug, Clone, Default)]
pub struct ConnectRun {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latencies_us: Vec<u32>,
    pub cpu: CpuUse,
}

impl ConnectRun {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.cpu.window.as_secs_f64().max(1e-9)
    }

    pub fn us_per_connect(&self) -> f64 {
        self.cpu.sut_total().as_secs_f64() * 1e6 / self.ok.max(1) as f64
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

/// One attempt; the time to CONNACK on success.
async fn attempt(addr: std::net::SocketAddr, login: &Login) -> Result<Duration, String> {
    let started = Instant::now();
    let mut stream = wire::dial(addr, None).await.map_err(|e| format!("{e:#}"))?;
    let mut rest = BytesMut::with_capacity(64);
    match wire::handshake(&mut stream, login, &mut rest, Duration::from_secs(10)).await {
        Ok(()) => {
            let took = started.elapsed();
            let _ = stream.write_all(&[0xE0, 0x00]).await;
            Ok(took)
        }
        Err(ConnectError::Refused(code)) => {
            Err(format!("{}: CONNACK return code {code}", login.username))
        }
        Err(e) => Err(format!("{}: {e}", login.username)),
    }
}

/// `connectors` closed-loop connectors over `logins` for `warmup` + `duration`.
async fn measure(
    addr: std::net::SocketAddr,
    logins: Arc<Vec<Login>>,
    connectors: usize,
    pids: &[u32],
    warmup: Duration,
    duration: Duration,
) -> ConnectRun {
    let t0 = Instant::now() + warmup;
    let t1 = t0 + duration;
    let mut tasks = JoinSet::new();
    for k in 0..connectors {
        let logins = logins.clone();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut i = k * logins.len() / connectors;
            let mut j = 0u64;
            loop {
                if Instant::now() >= t1 {
                    break;
                }
                let mut login = logins[i % logins.len()].clone();
                login.client_id = format!("c{k}-{j}");
                i += 1;
                j += 1;
                let started = Instant::now();
                match attempt(addr, &login).await {
                    Ok(took) => {
                        if started >= t0 && Instant::now() <= t1 {
                            tally.ok += 1;
                            tally
                                .latencies_us
                                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                        }
                    }
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(e);
                    }
                }
            }
            tally
        });
    }
    tokio::time::sleep_until(t0.into()).await;
    let c0 = CpuSample::take(pids);
    tokio::time::sleep_until(t1.into()).await;
    let c1 = CpuSample::take(pids);
    let mut run = ConnectRun {
        cpu: CpuUse::between(&c0, &c1),
        ..ConnectRun::default()
    };
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(t) => {
                run.ok += t.ok;
                run.errors += t.errors;
                if run.first_error.is_none() {
                    run.first_error = t.first_error;
                }
                run.latencies_us.extend(t.latencies_us);
            }
            Err(e) => {
                run.errors += 1;
                run.first_error
                    .get_or_insert(format!("connector panicked: {e}"));
            }
        }
    }
    run.latencies_us.sort_unstable();
    run
}

/// One pass over every device, `connectors` at a time; (connections per second, errors, first error).
async fn prime(
    addr: std::net::SocketAddr,
    logins: Arc<Vec<Login>>,
    connectors: usize,
) -> (f64, u64, Option<String>) {
    let began = Instant::now();
    let mut tasks = JoinSet::new();
    for k in 0..connectors {
        let logins = logins.clone();
        tasks.spawn(async move {
            let mut errors = (0u64, None);
            for i in (k..logins.len()).step_by(connectors) {
                let mut login = logins[i].clone();
                login.client_id = format!("prime-{i}");
                if let Err(e) = attempt(addr, &login).await {
                    errors.0 += 1;
                    errors.1.get_or_insert(e);
                }
            }
            errors
        });
    }
    let mut errors = 0;
    let mut first = None;
    while let Some(Ok((n, e))) = tasks.join_next().await {
        errors += n;
        if first.is_none() {
            first = e;
        }
    }
    let rate = logins.len() as f64 / began.elapsed().as_secs_f64().max(1e-9);
    (rate, errors, first)
}

struct SystemB7 {
    kind: Kind,
    prime_rate: f64,
    runs: Vec<ConnectRun>,
    errors: u64,
    first_error: Option<String>,
}

impl SystemB7 {
    fn median(&self) -> Option<&ConnectRun> {
        let rates: Vec<f64> = self.runs.iter().map(ConnectRun::rate).collect();
        stats::median_index(&rates).map(|i| &self.runs[i])
    }
}

/// B7 for Mosquitto and Ferry; section `b7`.
pub async fn run_b7(args: &MqttArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.connectors > 0 && args.connect_devices > 0 && args.runs > 0,
        "nothing to measure"
    );
    let mut results = Vec::new();
    for kind in [Kind::Mosquitto, Kind::Ferry] {
        let mut sut = Sut::start(kind, args, args.connect_devices, false).await?;
        let pids: Vec<u32> = sut.processes().into_iter().map(|(_, p)| p).collect();
        let logins: Arc<Vec<Login>> = Arc::new(
            (0..args.connect_devices)
                .map(|i| sut.login(i, String::new(), 60))
                .collect(),
        );
        let addr = sut.mqtt_addr();
        let (prime_rate, mut errors, mut first_error) =
            prime(addr, logins.clone(), args.connectors).await;
        eprintln!(
            "{} B7 first pass over {} devices: {:.0}/s, {} errors",
            kind.label(),
            args.connect_devices,
            prime_rate,
            errors
        );
        let mut runs = Vec::new();
        for n in 1..=args.runs {
            let run = measure(
                addr,
                logins.clone(),
                args.connectors,
                &pids,
                Duration::from_secs(args.warmup),
                Duration::from_secs(args.duration),
            )
            .await;
            sut.check_alive()?;
            eprintln!(
                "{} B7 run {n}/{}: {:.0} CONNACKs/s, p50 {:.2} ms, p99 {:.2} ms, {:.0} CPU µs/connect, errors {}, core % {}",
                kind.label(),
                args.runs,
                run.rate(),
                quantile_ms(&run.latencies_us, 0.5),
                quantile_ms(&run.latencies_us, 0.99),
                run.us_per_connect(),
                run.errors,
                run.cpu.cores_text()
            );
            errors += run.errors;
            if first_error.is_none() {
                first_error = run.first_error.clone();
            }
            runs.push(run);
        }
        sut.stop();
        results.push(SystemB7 {
            kind,
            prime_rate,
            runs,
            errors,
            first_error,
        });
    }
    let text = render(args, &results);
    super::publish_section(args, "b7", &text)?;
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    anyhow::ensure!(
        errors == 0,
        "{errors} connection attempts failed (first: {})",
        results
            .iter()
            .find_map(|r| r.first_error.clone())
            .unwrap_or_default()
    );
    Ok(())
}

fn render(args: &MqttArgs, results: &[SystemB7]) -> String {
    let mut out = String::from(
        "## B7: MQTT connection setup with a credential check, Ferry vs Mosquitto\n\n",
    );
    out.push_str(&format!(
        "{} connectors, each with one attempt in flight: TCP connect, CONNECT (MQTT 3.1.1, user and \
         password of one of {} devices, cycled; a fresh client id each time), wait for CONNACK 0, \
         DISCONNECT, close. The figure is CONNACKs per second in the window; latency is connect → \
         CONNACK. **Ferry**: user `auth-id@tenant`, checked against hashed-password credentials (bcrypt, \
         cost 4 in this set-up) through the registry, with the adapter's credential and verify caches \
         (bcrypt once per device and password, until the registry's change stream says otherwise); \
         **Mosquitto**: `password_file` made with `mosquitto_passwd -U` (PBKDF2-SHA512, checked on \
         every CONNECT). Before the runs, one pass connects every device once (column \"first \
         connect\"; for Ferry that pass pays the registry lookups and bcrypt). {} runs of {} s warm-up + \
         {} s measured; the row is the median run. CPU: all processes of the system (Ferry: registry, \
         router, adapter) per CONNACK.\n\n",
        args.connectors, args.connect_devices, args.runs, args.warmup, args.duration
    ));
    out.push_str(&super::preamble(args));
    out.push('\n');
    let mut rows = Vec::new();
    for s in results {
        let Some(m) = s.median() else { continue };
        rows.push(vec![
            s.kind.label().to_owned(),
            format!("**{}**", thousands(m.rate())),
            format!("{:.2}", quantile_ms(&m.latencies_us, 0.5)),
            format!("{:.2}", quantile_ms(&m.latencies_us, 0.99)),
            format!("{:.0}", m.us_per_connect()),
            thousands(s.prime_rate),
            s.errors.to_string(),
            m.cpu.cores_text(),
            s.runs
                .iter()
                .map(|r| thousands(r.rate()))
                .collect::<Vec<_>>()
                .join(" / "),
        ]);
    }
    out.push_str(&report::markdown_table(
        &[
            "system",
            "CONNACKs/s (median)",
            "p50 ms",
            "p99 ms",
            "CPU µs/connect (system)",
            "first connect of each device, /s",
            "errors",
            "core % system / generator / others",
            "all runs, /s",
        ],
        &rows,
    ));
    let rate = |k: Kind| {
        results
            .iter()
            .find(|s| s.kind == k)
            .and_then(SystemB7::median)
            .map_or(0.0, ConnectRun::rate)
    };
    let (m, f) = (rate(Kind::Mosquitto), rate(Kind::Ferry));
    out.push('\n');
    out.push_str(&super::throughput::summary_marker(
        "B7",
        format!("Mosquitto {}/s", thousands(m)),
        format!("{}/s", thousands(f)),
        ratio(f, m),
        (m > 0.0).then_some(f >= m && f >= 5000.0),
        "CONNECT → CONNACK with a password check; Ferry's verify cache warm (first connects listed apart)".to_owned(),
        &crate::machine::now(),
    ));
    out.push_str(&report::markdown_table(
        &["goal", "Mosquitto", "Ferry", "ratio", "goal", "result"],
        &[vec![
            "B7 CONNACKs/s".to_owned(),
            thousands(m),
            thousands(f),
            ratio(f, m),
            "≥ 1.0× Mosquitto and ≥ 5,000/s".to_owned(),
            if m > 0.0 && f >= m && f >= 5000.0 {
                "**met**".to_owned()
            } else {
                "**missed**".to_owned()
            },
        ]],
    ));
    out.push_str(&format!(
        "\nReproduce (from the workspace root):\n\n```sh\nexport CARGO_TARGET_DIR=/var/tmp/ferry-target\n\
         cargo build --release -p ferry-registry -p ferry-router -p ferry-mqtt-adapter -p ferry-bench\n\
         \"$CARGO_TARGET_DIR\"/release/ferry-bench mqtt --scenarios b7 --connectors {} --connect-devices {} {}\n```\n",
        args.connectors,
        args.connect_devices,
        args.common_options()
    ));
    out
}
