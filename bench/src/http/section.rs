//! The report's B8 section: what bounds a run, the summary row, and the section itself.

use super::{HttpArgs, Row, Target, GOAL_RATE, GOAL_SHARE};
use crate::machine::Machine;
use crate::platform;
use crate::report::{self, thousands};
use crate::summary::SummaryRow;

/// What bounds a run: the saturated core, if any, or the whole machine when background load filled it.
pub fn bound(
    server_cores: f64,
    generator_cores: f64,
    others_cores: f64,
    server_cpus: usize,
    machine_cpus: usize,
) -> &'static str {
    if others_cores >= 0.25
        && server_cores + generator_cores + others_cores >= 0.85 * machine_cpus as f64
    {
        "the machine was saturated, largely by background load (other processes' core share): the figure \
         is a lower bound"
    } else if generator_cores >= 0.9 {
        "the generator's core is saturated (the figure is a lower bound)"
    } else if server_cores >= 0.9 * server_cpus as f64 {
        "the server core is saturated: CPU per request is the bound"
    } else {
        "neither core saturated: latency of the path (closed loop) is the bound"
    }
}

/// The summary row of B8.
pub fn summary_row(
    rows: &[Row],
    server_cpus: usize,
    machine_cpus: usize,
    date: &str,
) -> SummaryRow {
    let find = |t: Target| rows.iter().find(|r| r.target == t).and_then(Row::median);
    let (ferry, hyper) = (find(Target::Ferry), find(Target::Hyper));
    let errors: u64 = rows.iter().map(|r| r.errors() + r.lost()).sum();
    let share = ferry
        .zip(hyper)
        .map(|(f, h)| f.counts.rate() / h.counts.rate().max(1e-9));
    let met = ferry.map(|f| {
        errors == 0 && f.counts.rate() >= GOAL_RATE && share.is_some_and(|s| s >= GOAL_SHARE)
    });
    let note = match ferry {
        None => "Ferry not measured".to_owned(),
        Some(f) => {
            let mut n = bound(
                f.cores(f.server_total()),
                f.cores(f.generator_cpu),
                f.cores(f.others_cpu),
                server_cpus,
                machine_cpus,
            )
            .to_owned();
            let parts: Vec<String> = f
                .server_cpu
                .iter()
                .map(|(name, d)| format!("{name} {:.0} µs", f.us_per_req(*d)))
                .collect();
            n.push_str(&format!(" (CPU per request: {})", parts.join(", ")));
            if errors > 0 {
                n.push_str(&format!("; {errors} errors or lost messages"));
            }
            n
        }
    };
    SummaryRow {
        id: "B8".into(),
        peer: hyper.map_or_else(
            || "–".into(),
            |h| format!("bare hyper {} req/s", thousands(h.counts.rate())),
        ),
        ferry: ferry.map_or_else(
            || "–".into(),
            |f| {
                format!(
                    "{} req/s, p99 {:.2} ms",
                    thousands(f.counts.rate()),
                    f.counts.latency_ms(0.99)
                )
            },
        ),
        ratio: share.map_or_else(
            || "–".into(),
            |s| format!("{:.0} % of bare hyper", s * 100.0),
        ),
        met,
        note,
        date: date.to_owned(),
    }
}

pub(super) fn render(
    args: &HttpArgs,
    machine: &Machine,
    commit: &str,
    date: &str,
    rows: &[Row],
) -> String {
    let hyper_rate = rows
        .iter()
        .find(|r| r.target == Target::Hyper)
        .and_then(Row::median)
        .map(|r| r.counts.rate());
    let table: Vec<Vec<String>> = rows
        .iter()
        .filter_map(|row| {
            let m = row.median()?;
            let breakdown: Vec<String> = m
                .server_cpu
                .iter()
                .map(|(name, d)| format!("{name} {:.1}", m.us_per_req(*d)))
                .collect();
            Some(vec![
                row.target.label().to_owned(),
                format!("**{}**", thousands(m.counts.rate())),
                hyper_rate.map_or_else(
                    || "–".into(),
                    |h| format!("{:.0} %", m.counts.rate() / h * 100.0),
                ),
                format!("{:.2}", m.counts.latency_ms(0.5)),
                format!("{:.2}", m.counts.latency_ms(0.99)),
                format!("{:.1}", m.us_per_req(m.server_total())),
                breakdown.join(", "),
                format!("{:.1}", m.us_per_req(m.generator_cpu)),
                row.errors().to_string(),
                if row.target == Target::Ferry {
                    row.lost().to_string()
                } else {
                    "–".into()
                },
                format!(
                    "{:.0} / {:.0} / {:.0}",
                    m.cores(m.server_total()) * 100.0,
                    m.cores(m.generator_cpu) * 100.0,
                    m.cores(m.others_cpu) * 100.0
                ),
                row.runs
                    .iter()
                    .map(|r| thousands(r.counts.rate()))
                    .collect::<Vec<_>>()
                    .join(" / "),
            ])
        })
        .collect();
    let pinning = if args.no_pin {
        "Nothing pinned.".to_owned()
    } else {
        format!(
            "Pinning (taskset): every server process (Ferry's registry, router and HTTP adapter; or the bare \
             server) on CPU {}, the generator and the AMQP consumer on CPU {}.",
            args.server_cpus, args.client_cpus
        )
    };
    let mut out =
        String::from("## B8: HTTP adapter, keep-alive POST /telemetry, vs bare hyper\n\n");
    out.push_str(&format!(
        "{} keep-alive HTTP/1.1 connections (hyper client, `TCP_NODELAY`), one request in flight on each \
         (closed loop), connection k authenticated as device `a-k@{}` (`Authorization: Basic`, {} devices, \
         hashed-password credentials; the adapter verifies each password once and caches it), `POST /telemetry` \
         with a {}-byte `application/octet-stream` body, QoS 0 (no `qos-level` header), expecting `202`. \
         **Ferry**: `ferry-registry` (SQLite), `ferry-router` and `ferry-http-adapter`, each its own release \
         process as in a deployment; one AMQP 1.0 consumer (fe2o3-amqp, application user, `telemetry/{}`, \
         credit 1000, accepting every message) in the generator's process. **Peer**: the same generator and \
         requests against a bare hyper 1 server (`ferry-bench bare-hyper`: reads the body, answers `202`, \
         nothing else) on the same box. {} s warm-up, then {} s measured, {} runs per target, interleaved; \
         the row shows the median run. A request counts when it starts and ends in the window with `202`; \
         anything else (warm-up included) is an error. **Lost**: `202`s the consumer never received (after \
         each run the harness waits until 10 s pass without a new arrival; zero-loss rule). CPU µs/req: utime + stime from `/proc` over the window per counted \
         request, summed over the server processes (and broken down). {pinning} Core %: share of one core \
         used in the window by the server processes, the generator, and every other process on the machine \
         (background load: other helpers compile on this 2-core box, so the figures are noisy).\n\n",
        args.connections,
        platform::TENANT,
        args.devices,
        args.payload,
        platform::TENANT,
        args.warmup,
        args.duration,
        args.runs,
    ));
    out.push_str(&format!(
        "- Machine: {}\n- Commit: {commit}\n- Date: {date}\n\n",
        machine.describe()
    ));
    out.push_str(&report::markdown_table(
        &[
            "target",
            "req/s (median)",
            "of bare hyper",
            "p50 ms",
            "p99 ms",
            "CPU µs/req (servers)",
            "by process, µs/req",
            "CPU µs/req (generator + consumer)",
            "errors",
            "lost",
            "core % servers / generator / others",
            "all runs, req/s",
        ],
        &table,
    ));
    out.push('\n');
    let server_cpus = crate::pin::parse_cpu_list(&args.server_cpus).map_or(1, |s| s.len());
    let s = summary_row(rows, server_cpus, machine.cpus.max(1), date);
    out.push_str(&format!(
        "**Against the goal** (≥ 20,000 req/s and ≥ 40 % of bare hyper): {}. Ferry {}, peer {}, {}. {}.\n\n",
        match s.met {
            Some(true) => "met",
            Some(false) => "missed",
            None => "not measured",
        },
        s.ferry,
        s.peer,
        s.ratio,
        s.note
    ));
    out.push_str(&s.marker());
    out.push_str("\n\nReproduce (from the workspace root):\n\n```sh\nexport CARGO_TARGET_DIR=/var/tmp/ferry-target\n");
    out.push_str("cargo build --release -p ferry-bench -p ferry-registry -p ferry-router -p ferry-http-adapter\n");
    out.push_str(&format!(
        "\"$CARGO_TARGET_DIR\"/release/ferry-bench http --connections {} --warmup {} --duration {} --runs {} \
         --payload {} --devices {}{}\n```\n",
        args.connections,
        args.warmup,
        args.duration,
        args.runs,
        args.payload,
        args.devices,
        if args.no_pin {
            " --no-pin".to_owned()
        } else {
            format!(" --server-cpus {} --client-cpus {}", args.server_cpus, args.client_cpus)
        }
    ));
    out
}
