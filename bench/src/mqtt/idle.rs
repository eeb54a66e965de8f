//! B6: authenticated idle MQTT connections, RSS per connection of Ferry's adapter vs Mosquitto.
//!
//! The connections are held by `--idle-workers` child processes of this executable (`ferry-bench
//! mqtt-idle-worker`), each from its own source address 127.0.0.(2+k), so that no process comes near the
//! machine's 20,000 open files and no source address runs out of ports. The server's RSS is read before
//! the first connection and again once all are up and settled.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::BytesMut;
use clap::Args;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::task::JoinSet;

use super::procs;
use super::stats::{ratio, thousands};
use super::wire::{self, Login};
use super::{ferry, Kind, MqttArgs, Sut};
use crate::report;

/// Options of the hidden `mqtt-idle-worker` subcommand.
#[derive(Debug, Clone, Args)]
pub struct IdleWorkerArgs {
    /// The MQTT server.
    #[arg(long)]
    pub addr: SocketAddr,
    /// Source address of every connection.
    #[arg(long)]
    pub source: IpAddr,
    /// Devices first..first+count.
    #[arg(long)]
    pub first: usize,
    #[arg(long)]
    pub count: usize,
    /// Log in as Ferry devices (`a{i}@bench`) instead of broker users (`d{i}`).
    #[arg(long)]
    pub ferry: bool,
    /// Connection attempts in flight.
    #[arg(long, default_value_t = 64)]
    pub parallel: usize,
    /// MQTT keep-alive of the connections, in seconds (no PINGREQ is due within a run).
    #[arg(long, default_value_t = 600)]
    pub keep_alive: u16,
}

/// How device `i` logs in (the same users [`Sut::login`] uses).
pub fn device_login(ferry: bool, i: usize, keep_alive_secs: u16) -> Login {
    Login {
        client_id: format!("idle-{i}"),
        username: if ferry {
            format!("a{i}@{}", ferry::TENANT)
        } else {
            format!("d{i}")
        },
        password: ferry::password(i),
        keep_alive_secs,
        clean_session: true,
    }
}

/// The worker: connects, prints `connected N failed M [first error]` on one line, holds the connections
/// until its standard input closes.
pub async fn worker(args: IdleWorkerArgs) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(args.count);
    let mut failed = 0u64;
    let mut first_error = None;
    let parallel = args.parallel.max(1);
    let ids: Vec<usize> = (args.first..args.first + args.count).collect();
    for chunk in ids.chunks(parallel) {
        let mut tasks = JoinSet::new();
        for &i in chunk {
            let login = device_login(args.ferry, i, args.keep_alive);
            let (addr, source) = (args.addr, args.source);
            tasks.spawn(async move {
                let mut rest = BytesMut::with_capacity(16);
                wire::connect(addr, Some(source), &login, &mut rest).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(stream)) => held.push(stream),
                Ok(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert(format!("{e:#}"));
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(format!("{e}"));
                }
            }
        }
    }
    println!(
        "connected {} failed {failed} {}",
        held.len(),
        first_error.unwrap_or_default().replace('\n', " ")
    );
    // Hold until the parent closes our stdin.
    let _ = tokio::task::spawn_blocking(|| {
        use std::io::Read as _;
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while stdin.read(&mut sink).unwrap_or(0) > 0 {}
    })
    .await;
    drop(held);
    Ok(())
}

/// `connected N failed M rest` → (N, M, rest).
pub fn parse_worker_line(line: &str) -> Option<(u64, u64, String)> {
    let mut words = line.trim().splitn(5, ' ');
    if words.next()? != "connected" {
        return None;
    }
    let ok = words.next()?.parse().ok()?;
    if words.next()? != "failed" {
        return None;
    }
    let failed = words.next()?.parse().ok()?;
    Some((ok, failed, words.next().unwrap_or_default().to_owned()))
}

struct SystemB6 {
    kind: Kind,
    /// (process, RSS KiB before, after)
    rss: Vec<(String, u64, u64)>,
    connected: u64,
    connect_secs: f64,
    server_fds: usize,
}

impl SystemB6 {
    /// KiB per connection of the process that holds the connections (the adapter, or Mosquitto).
    fn per_connection(&self) -> f64 {
        let holder = match self.kind {
            Kind::Ferry => self.rss.iter().find(|(n, _, _)| n == "ferry-mqtt-adapter"),
            _ => self.rss.first(),
        };
        holder.map_or(0.0, |(_, b, a)| {
            a.saturating_sub(*b) as f64 / self.connected.max(1) as f64
        })
    }
}

async fn measure(kind: Kind, args: &MqttArgs) -> anyhow::Result<SystemB6> {
    let n = args.idle_connections;
    let mut sut = Sut::start(kind, args, n, false).await?;
    let result = async {
        let processes = sut.processes();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before: Vec<u64> = processes
            .iter()
            .map(|(_, pid)| procs::rss_kib(*pid).unwrap_or(0))
            .collect();
        let exe = std::env::current_exe().context("locating this executable")?;
        let workers = args.idle_workers.max(1);
        let began = Instant::now();
        let mut children = Vec::new();
        for w in 0..workers {
            let first = w * n / workers;
            let count = (w + 1) * n / workers - first;
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(w).unwrap_or(0)));
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.arg("mqtt-idle-worker")
                .arg("--addr")
                .arg(sut.mqtt_addr().to_string())
                .arg("--source")
                .arg(source.to_string())
                .arg("--first")
                .arg(first.to_string())
                .arg("--count")
                .arg(count.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true);
            if kind == Kind::Ferry {
                cmd.arg("--ferry");
            }
            children.push(cmd.spawn().context("starting an idle worker")?);
        }
        let mut connected = 0;
        let mut failures = Vec::new();
        for child in &mut children {
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).await?;
            let (ok, failed, err) = parse_worker_line(&line)
                .with_context(|| format!("an idle worker said {line:?}"))?;
            connected += ok;
            if failed > 0 {
                failures.push(format!("{failed} failed: {err}"));
            }
        }
        let connect_secs = began.elapsed().as_secs_f64();
        sut.check_alive()?;
        // Let allocators and caches settle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after: Vec<u64> = processes
            .iter()
            .map(|(_, pid)| procs::rss_kib(*pid).unwrap_or(0))
            .collect();
        let holder = processes
            .iter()
            .find(|(name, _)| name == "ferry-mqtt-adapter" || name == "mosquitto")
            .map_or(0, |(_, pid)| procs::open_fds(*pid));
        for mut child in children {
            drop(child.stdin.take());
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        if !failures.is_empty() {
            bail!(
                "{}: {connected} of {n} connections up; {}",
                kind.label(),
                failures.join("; ")
            );
        }
        eprintln!(
            "{} B6: {connected} connections in {connect_secs:.1} s, RSS KiB before {before:?} after {after:?}",
            kind.label()
        );
        Ok(SystemB6 {
            kind,
            rss: processes
                .into_iter()
                .zip(before.into_iter().zip(after))
                .map(|((name, _), (b, a))| (name, b, a))
                .collect(),
            connected,
            connect_secs,
            server_fds: holder,
        })
    }
    .await;
    sut.stop();
    result
}

/// B6 for Mosquitto and Ferry; section `b6`.
pub async fn run_b6(args: &MqttArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.idle_connections > 0, "nothing to measure");
    anyhow::ensure!(
        args.idle_workers <= 200,
        "--idle-workers: at most 200 (one 127.0.0.x address each)"
    );
    let mut results = Vec::new();
    for kind in [Kind::Mosquitto, Kind::Ferry] {
        results.push(measure(kind, args).await?);
    }
    let text = render(args, &results);
    super::publish_section(args, "b6", &text)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn render(args: &MqttArgs, results: &[SystemB6]) -> String {
    let mut out =
        String::from("## B6: authenticated idle MQTT connections, RSS per connection\n\n");
    out.push_str(&format!(
        "{} MQTT 3.1.1 connections, each a different device logged in with its password (keep-alive \
         600 s, so no PINGREQ falls in the run), held by {} generator processes, each from its own \
         127.0.0.x source address. RSS (`VmRSS` of `/proc/PID/status`) of every process of the system \
         before the first connection and 3 s after the last CONNACK; per connection = growth of the \
         process holding the connections (Ferry: `ferry-mqtt-adapter`; its per-device credential and \
         assertion cache entries are part of it) / connections. Ferry's registry and router are listed \
         too. One run per system (RSS does not vary like rates do).\n\n",
        thousands(args.idle_connections as f64),
        args.idle_workers
    ));
    out.push_str(&super::preamble(args));
    out.push('\n');
    let mut rows = Vec::new();
    for s in results {
        for (name, b, a) in &s.rss {
            let holder = matches!(name.as_str(), "ferry-mqtt-adapter" | "mosquitto");
            rows.push(vec![
                s.kind.label().to_owned(),
                format!("`{name}`"),
                thousands(s.connected as f64),
                mib(*b),
                mib(*a),
                if holder {
                    format!("**{:.2}**", s.per_connection())
                } else {
                    format!(
                        "({:.2})",
                        a.saturating_sub(*b) as f64 / s.connected.max(1) as f64
                    )
                },
                if holder {
                    format!("{:.1}", s.connect_secs)
                } else {
                    "–".to_owned()
                },
                if holder {
                    s.server_fds.to_string()
                } else {
                    "–".to_owned()
                },
            ]);
        }
    }
    out.push_str(&report::markdown_table(
        &[
            "system",
            "process",
            "connections",
            "RSS before, MiB",
            "RSS with connections, MiB",
            "KiB per connection",
            "time to connect all, s",
            "open fds",
        ],
        &rows,
    ));
    let per = |k: Kind| {
        results
            .iter()
            .find(|s| s.kind == k)
            .map_or(0.0, SystemB6::per_connection)
    };
    let (m, f) = (per(Kind::Mosquitto), per(Kind::Ferry));
    out.push('\n');
    out.push_str(&super::throughput::summary_marker(
        "B6",
        format!("Mosquitto {m:.2} KiB/conn"),
        format!("{f:.2} KiB/conn"),
        ratio(f, m),
        // BENCHMARKS.md: the goal is ≤ 4 KiB; ≤ 2× Mosquitto is the moonshot, reported beside it.
        (m > 0.0 && f > 0.0).then_some(f <= 4.0),
        format!(
            "{} connections; adapter RSS growth per connection",
            thousands(args.idle_connections as f64)
        ),
        &crate::machine::now(),
    ));
    out.push_str(&report::markdown_table(
        &[
            "goal",
            "Mosquitto",
            "Ferry (adapter)",
            "ratio",
            "goal",
            "result",
        ],
        &[vec![
            "B6 KiB per idle connection".to_owned(),
            format!("{m:.2}"),
            format!("{f:.2}"),
            ratio(f, m),
            "≤ 4 KiB (moonshot ≤ 2× Mosquitto)".to_owned(),
            if f <= 4.0 && m > 0.0 && f <= 2.0 * m {
                "**met**, moonshot too".to_owned()
            } else if f <= 4.0 && m > 0.0 {
                "**met** (moonshot missed)".to_owned()
            } else {
                "**missed**".to_owned()
            },
        ]],
    ));
    out.push_str(&format!(
        "\nReproduce (from the workspace root):\n\n```sh\nexport CARGO_TARGET_DIR=/var/tmp/ferry-target\n\
         cargo build --release -p ferry-registry -p ferry-router -p ferry-mqtt-adapter -p ferry-bench\n\
         \"$CARGO_TARGET_DIR\"/release/ferry-bench mqtt --scenarios b6 --idle-connections {} --idle-workers {} {}\n```\n",
        args.idle_connections,
        args.idle_workers,
        args.common_options()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_lines_parse() {
        assert_eq!(
            parse_worker_line("connected 5000 failed 0 \n"),
            Some((5000, 0, String::new()))
        );
        assert_eq!(
            parse_worker_line(
                "connected 10 failed 2 a0@bench at 127.0.0.1:1: CONNACK return code 4"
            ),
            Some((
                10,
                2,
                "a0@bench at 127.0.0.1:1: CONNACK return code 4".to_owned()
            ))
        );
        assert_eq!(parse_worker_line("hello"), None);
        assert_eq!(parse_worker_line("connected x failed 0"), None);
    }

    #[test]
    fn logins_match_the_provisioned_users() {
        let f = device_login(true, 7, 600);
        assert_eq!(
            (f.username.as_str(), f.password.as_str()),
            ("a7@bench", "p7-secret")
        );
        let m = device_login(false, 7, 600);
        assert_eq!(m.username, "d7");
        assert_eq!(m.client_id, "idle-7");
    }
}
