//! `bench/REPORT.md`: one file, one marked section per scenario.
//!
//! A scenario owns the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` and replaces only that
//! (appending the section the first time), so scenarios written by different people, run at different
//! times, never clobber each other's figures. Text outside the markers is left alone.

use std::path::Path;

use anyhow::Context as _;

/// What a new report starts with.
const PREAMBLE: &str = "# Ferry benchmark report\n\n\
Written by `ferry-bench` (see [README.md](README.md) and docs/BENCHMARKS.md). Each scenario owns the \
section between its `<!-- NAME:begin -->` and `<!-- NAME:end -->` markers and rewrites only that; every \
section names its machine, commit, date and the command that reproduces it.\n";

/// Replaces section `name` of the report at `path` with `body` (created or appended as needed).
pub fn update_section(path: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let current = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PREAMBLE.to_owned(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let updated = replace_section(&current, name, body);
    // Write beside and rename, so a reader (or a crash) never sees half a report.
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, updated).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// `text` with section `name` replaced by `body`, or with the section appended when it is not there.
pub fn replace_section(text: &str, name: &str, body: &str) -> String {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let body = body.trim_end_matches('\n');
    let block = format!("{begin}\n{body}\n{end}");
    if let Some(b) = text.find(&begin) {
        if let Some(e) = text[b..].find(&end) {
            let e = b + e + end.len();
            return format!("{}{block}{}", &text[..b], &text[e..]);
        }
    }
    let mut out = text.trim_end_matches('\n').to_owned();
    out.push_str("\n\n");
    out.push_str(&block);
    out.push('\n');
    out
}

/// A Markdown table; cells must not contain `|`.
pub fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", headers.join(" | "));
    out.push_str(&format!("|{}\n", "---|".repeat(headers.len())));
    for row in rows {
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}

/// `12345.6` → `12,346`.
pub fn thousands(v: f64) -> String {
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
    fn a_missing_section_is_appended() {
        let out = replace_section("# R\n\nintro\n", "registry", "figures\n");
        assert_eq!(
            out,
            "# R\n\nintro\n\n<!-- registry:begin -->\nfigures\n<!-- registry:end -->\n"
        );
    }

    #[test]
    fn a_section_is_replaced_in_place_and_others_are_kept() {
        let text =
            "# R\n\n<!-- b1:begin -->\nmqtt\n<!-- b1:end -->\n\n<!-- registry:begin -->\nold\n\
                    <!-- registry:end -->\n\n<!-- b4:begin -->\namqp\n<!-- b4:end -->\nfooter\n";
        let out = replace_section(text, "registry", "new");
        assert_eq!(out, text.replace("\nold\n", "\nnew\n"));
        assert_eq!(replace_section(&out, "registry", "new"), out, "idempotent");
    }

    #[test]
    fn reports_are_written_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("REPORT.md");
        update_section(&path, "a", "one").expect("create");
        update_section(&path, "b", "two").expect("append");
        update_section(&path, "a", "three").expect("replace");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# Ferry benchmark report"));
        assert!(text.contains("<!-- a:begin -->\nthree\n<!-- a:end -->\n\n<!-- b:begin -->\ntwo\n"));
        assert!(!text.contains("one"));
    }

    #[test]
    fn tables_are_markdown() {
        let t = markdown_table(&["a", "b"], &[vec!["1".into(), "2".into()]]);
        assert_eq!(t, "| a | b |\n|---|---|\n| 1 | 2 |\n");
    }
}
