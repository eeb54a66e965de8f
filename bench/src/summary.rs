//! The summary table at the top of bench/REPORT.md.
//!
//! The summary is built from the report itself: each scenario section carries, for each of its rows of
//! BENCHMARKS.md, one machine-readable line `<!-- summary-row {json} -->` ([`SummaryRow::marker`]).
//! [`update_summary`] collects those lines from every section and rewrites the `summary` section at the
//! top of the report, so the table is right whether the scenarios ran together (`all`) or one by one, and
//! a scenario that has not run shows as "not measured" instead of an old figure under a new date.

use std::path::Path;

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::{machine, report};

/// The report section this module owns.
pub const SECTION: &str = "summary";

/// Every row of BENCHMARKS.md, in order, with its goal (as the table states it).
pub const ROWS: &[(&str, &str, &str)] = &[
    (
        "B1",
        "MQTT QoS 0 telemetry, 100 publishers → 1 consumer",
        "≥ 1.0× Mosquitto msg/s (moonshot 1.5×)",
    ),
    (
        "B2",
        "CPU s per delivered message (B1)",
        "≤ 1.5× Mosquitto's",
    ),
    ("B3", "MQTT QoS 1 events, durable", "≥ 1.0× the best peer"),
    (
        "B4",
        "AMQP 1.0 forwarding, 1 sender → 1 receiver, 12 B, credit 200",
        "≥ 3× RabbitMQ, ≥ 1.5× Proton C broker, ≥ 150k msg/s pre-settled",
    ),
    (
        "B5",
        "Latency device → consumer at 50 % of Mosquitto's B1 max",
        "p99 ≤ Mosquitto p99 + 1 ms; p99.9 ≤ 10 ms",
    ),
    (
        "B6",
        "15,000 idle authenticated MQTT connections",
        "≤ 4 KiB/conn (moonshot ≤ 2× Mosquitto)",
    ),
    (
        "B7",
        "MQTT CONNECT → CONNACK with credential check",
        "≥ 1.0× Mosquitto and ≥ 5,000/s",
    ),
    (
        "B8",
        "HTTP adapter, keep-alive, 64 connections, POST /telemetry",
        "≥ 20,000 req/s and ≥ 40 % of bare hyper",
    ),
    (
        "B9",
        "Footprint: idle RSS and time to ready, every binary",
        "≤ 20 MiB idle RSS each; ready ≤ 200 ms",
    ),
    (
        "B10",
        "Soak at 50 % of B1's rate, QoS 1",
        "RSS growth ≤ 5 %, zero lost, p99 drift ≤ 2×",
    ),
    (
        "B11",
        "Cluster mode (3 NATS nodes) CPU per delivered message, all processes summed",
        "≤ 1.5× embedded mode's, zero loss",
    ),
    (
        "B12",
        "Cluster-mode failover under QoS 1 load: kill -9 a router, a NATS node, an adapter",
        "0 accepted lost; resumes ≤ 2 s; only the killed adapter's devices reconnect",
    ),
    (
        "B13",
        "Overload: QoS 0 offered at 2× the loss-free rate, QoS 1 devices beside it",
        "delivered ≥ 90 % of the loss-free rate; no QoS 1 device cut off; memory bounded",
    ),
];

/// One row of the summary, as a scenario reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// `B1` … `B10` (a scenario may add a suffix such as `B4 (presettled)`).
    pub id: String,
    pub peer: String,
    pub ferry: String,
    pub ratio: String,
    /// `None`: not measured (or no verdict possible).
    pub met: Option<bool>,
    /// When missed or not measured: what bounds it, or why.
    pub note: String,
    /// The date the figures were taken.
    pub date: String,
}

const MARK: &str = "<!-- summary-row ";

impl SummaryRow {
    /// The line a scenario puts into its section (an HTML comment, invisible when rendered).
    pub fn marker(&self) -> String {
        let v = json!({
            "id": self.id, "peer": self.peer, "ferry": self.ferry, "ratio": self.ratio,
            "met": self.met, "note": self.note, "date": self.date,
        });
        // `--` may not appear inside an HTML comment.
        format!("{MARK}{} -->", v.to_string().replace("--", "-\\u002d"))
    }

    /// Parses a marker line back.
    pub fn parse(line: &str) -> Option<Self> {
        let inner = line.trim().strip_prefix(MARK)?.strip_suffix("-->")?;
        let v: Value = serde_json::from_str(inner.trim()).ok()?;
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Some(Self {
            id: s("id"),
            peer: s("peer"),
            ferry: s("ferry"),
            ratio: s("ratio"),
            met: v.get("met").and_then(Value::as_bool),
            note: s("note"),
            date: s("date"),
        })
    }
}

/// Every summary row found in the report's text, in order of appearance.
pub fn collect_rows(text: &str) -> Vec<SummaryRow> {
    text.lines().filter_map(SummaryRow::parse).collect()
}

/// The base id of a row (`B4 (presettled)` → `B4`).
fn base_id(id: &str) -> &str {
    id.split_whitespace().next().unwrap_or(id)
}

/// The names of the report's sections (`<!-- NAME:begin -->`), in order.
pub fn section_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("<!-- ")?.strip_suffix(":begin -->"))
        .map(str::to_owned)
        .collect()
}

/// The section whose name covers row `id` (`b1-b2` covers B1 and B2), if any.
fn section_for<'a>(sections: &'a [String], id: &str) -> Option<&'a str> {
    sections
        .iter()
        .find(|s| s.split('-').any(|part| part.eq_ignore_ascii_case(id)))
        .map(String::as_str)
}

/// The summary section's text from the rows found (every id of [`ROWS`] appears, measured or not). A
/// goal without a summary line whose figures are in a section of its own points there.
pub fn render_summary(
    rows: &[SummaryRow],
    sections: &[String],
    machine: &str,
    commit: &str,
    date: &str,
) -> String {
    let mut table = Vec::new();
    for (id, scenario, goal) in ROWS {
        let mine: Vec<&SummaryRow> = rows.iter().filter(|r| base_id(&r.id) == *id).collect();
        if let (true, Some(section)) = (mine.is_empty(), section_for(sections, id)) {
            table.push(vec![
                (*id).to_owned(),
                (*scenario).to_owned(),
                (*goal).to_owned(),
                format!("see section `{section}`"),
                format!("see section `{section}`"),
                "–".into(),
                "see section".into(),
                "that section writes no summary line: its own table has the figures and verdict"
                    .into(),
                "–".into(),
            ]);
            continue;
        }
        if mine.is_empty() {
            table.push(vec![
                (*id).to_owned(),
                (*scenario).to_owned(),
                (*goal).to_owned(),
                "–".into(),
                "–".into(),
                "–".into(),
                "not measured".into(),
                "no figures in this report yet".into(),
                "–".into(),
            ]);
        }
        for r in mine {
            let verdict = match r.met {
                Some(true) => "**met**",
                Some(false) => "**missed**",
                None => "not measured",
            };
            table.push(vec![
                r.id.clone(),
                (*scenario).to_owned(),
                (*goal).to_owned(),
                cell(&r.peer),
                cell(&r.ferry),
                cell(&r.ratio),
                verdict.to_owned(),
                cell(&r.note),
                cell(&r.date),
            ]);
        }
    }
    let mut out = String::from("## Summary: B1–B13 against their goals\n\n");
    out.push_str(
        "One row per goal of docs/BENCHMARKS.md, collected from the scenario sections below (each row links \
         to its figures by id; the date says when that scenario last ran). Ratios are Ferry / peer measured \
         in the same run with the same generator. The machine is shared with other work (2 cores): the \
         figures are noisy, see each section's background-load column before trusting a ratio.\n\n",
    );
    out.push_str(&format!(
        "- Machine: {machine}\n- Commit: {commit}\n- Summary written: {date}\n\n"
    ));
    out.push_str(&report::markdown_table(
        &[
            "id",
            "scenario",
            "goal",
            "peer",
            "Ferry",
            "ratio",
            "verdict",
            "what bounds it / note",
            "measured",
        ],
        &table,
    ));
    out.push_str(
        "\nReproduce everything (from the workspace root; about 20 minutes plus the soak):\n\n```sh\n\
         export CARGO_TARGET_DIR=/var/tmp/ferry-target\n\
         cargo build --release -p ferry-bench -p ferry-registry -p ferry-router -p ferry-http-adapter \
         -p ferry-mqtt-adapter -p ferry\n\
         \"$CARGO_TARGET_DIR\"/release/ferry-bench all --soak-minutes 30\n```\n",
    );
    out
}

fn cell(s: &str) -> String {
    if s.is_empty() {
        "–".into()
    } else {
        s.replace('|', "/").replace('\n', " ")
    }
}

/// Rebuilds the `summary` section of the report at `path` from the rows in its sections, and moves it
/// right under the report's title when it is new.
pub fn update_summary(path: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rows = collect_rows(&text);
    let body = render_summary(
        &rows,
        &section_names(&text),
        &machine::Machine::detect().describe(),
        &machine::commit(),
        &machine::now(),
    );
    let updated = place_summary(&text, &body);
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, updated).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// `text` with the summary section replaced, or inserted before the first other section.
pub fn place_summary(text: &str, body: &str) -> String {
    let begin = format!("<!-- {SECTION}:begin -->");
    if text.contains(&begin) {
        return report::replace_section(text, SECTION, body);
    }
    let block = format!(
        "{begin}\n{}\n<!-- {SECTION}:end -->\n\n",
        body.trim_end_matches('\n')
    );
    // Before the first line that opens a section (the preamble names the markers inline: not those).
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with("<!-- ") && t.ends_with(":begin -->") {
            return format!("{}{block}{}", &text[..at], &text[at..]);
        }
        at += line.len();
    }
    report::replace_section(text, SECTION, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, met: Option<bool>) -> SummaryRow {
        SummaryRow {
            id: id.into(),
            peer: "RabbitMQ 10,000 msg/s".into(),
            ferry: "30,000 msg/s -- fast".into(),
            ratio: "3.00×".into(),
            met,
            note: "bounded by the generator's core".into(),
            date: "2026-11-22 08:00 UTC".into(),
        }
    }

    #[test]
    fn markers_round_trip_and_stay_html_comments() {
        let r = row("B4 (presettled)", Some(true));
        let m = r.marker();
        assert!(m.starts_with("<!-- summary-row ") && m.ends_with(" -->"));
        assert!(
            !m[4..m.len() - 3].contains("--"),
            "no `--` inside the comment: {m}"
        );
        assert_eq!(SummaryRow::parse(&m), Some(r));
        assert_eq!(SummaryRow::parse("<!-- b4:begin -->"), None);
        assert_eq!(SummaryRow::parse("<!-- summary-row {not json} -->"), None);
    }

    #[test]
    fn the_summary_lists_every_goal_measured_or_not() {
        let text = format!(
            "# R\n\n<!-- b4:begin -->\n{}\n{}\n<!-- b4:end -->\n",
            row("B4 (presettled)", Some(true)).marker(),
            row("B4 (unsettled)", Some(false)).marker()
        );
        let rows = collect_rows(&text);
        assert_eq!(rows.len(), 2);
        let sections = section_names(&text);
        assert_eq!(sections, vec!["b4".to_owned()]);
        let out = render_summary(&rows, &sections, "2 CPUs", "abc", "now");
        for (id, _, _) in ROWS {
            assert!(
                out.contains(&format!("| {id} |")) || out.contains(&format!("| {id} (")),
                "{id}"
            );
        }
        assert!(out.contains("| B4 (presettled) |") && out.contains("**met**"));
        assert!(out.contains("| B4 (unsettled) |") && out.contains("**missed**"));
        assert!(out.contains("| B1 |") && out.contains("not measured"));
    }

    #[test]
    fn goals_without_a_line_point_to_their_section() {
        let sections = vec!["registry".to_owned(), "b1-b2".to_owned(), "b6".to_owned()];
        assert_eq!(section_for(&sections, "B2"), Some("b1-b2"));
        assert_eq!(section_for(&sections, "B6"), Some("b6"));
        assert_eq!(section_for(&sections, "B10"), None, "b1 does not cover B10");
        let out = render_summary(&[], &sections, "m", "c", "d");
        assert!(out.contains("| B1 | MQTT QoS 0"), "{out}");
        assert!(out.contains("see section `b1-b2`"));
        assert!(out.contains("| B10 |") && out.contains("not measured"));
    }

    #[test]
    fn the_summary_goes_first_and_is_replaced_in_place() {
        let text =
            "# R\n\nintro names `<!-- NAME:begin -->`\n\n<!-- registry:begin -->\nx\n<!-- registry:end -->\n";
        let once = place_summary(text, "S1");
        assert!(once.starts_with("# R\n\nintro names `<!-- NAME:begin -->`\n\n<!-- summary:begin -->\nS1\n<!-- summary:end -->\n\n<!-- registry:begin -->"));
        let twice = place_summary(&once, "S2");
        assert_eq!(twice, once.replace("S1", "S2"));
    }
}
