//! Everything the CLI prints: aligned tables and short messages for people (stderr for
//! messages, stdout for data), versioned JSON documents and JSON lines for programs.
//! Colours only on a TTY and never with `NO_COLOR`. The JSON schemas are in `docs/json.md`.

mod host;
mod machines;
mod progress;
mod snapshots;

use std::io::{IsTerminal, Write};

use serde::Serialize;

use crate::envfile::{Diagnostic, Report, line_col};

pub const SCHEMA_STATUS: &str = "envrig.status/1";
pub const SCHEMA_LS: &str = "envrig.ls/1";
pub const SCHEMA_UP: &str = "envrig.up/1";
pub const SCHEMA_PLAN: &str = "envrig.plan/1";
pub const SCHEMA_DESTROY: &str = "envrig.destroy/1";
pub const SCHEMA_EVENT: &str = "envrig.event/1";
pub const SCHEMA_VALIDATE: &str = "envrig.validate/1";
pub const SCHEMA_RUN: &str = "envrig.run/1";
pub const SCHEMA_GC: &str = "envrig.gc/1";
pub const SCHEMA_ENGINES: &str = "envrig.engines/1";
pub const SCHEMA_HALT: &str = "envrig.halt/1";
pub const SCHEMA_SUSPEND: &str = "envrig.suspend/1";
pub const SCHEMA_RESUME: &str = "envrig.resume/1";
pub const SCHEMA_PROVISION: &str = "envrig.provision/1";
pub const SCHEMA_SNAPSHOT: &str = "envrig.snapshot/1";
pub const SCHEMA_SNAPSHOTS: &str = "envrig.snapshots/1";
pub const SCHEMA_EXPORT: &str = "envrig.export/1";
pub const SCHEMA_IMPORT: &str = "envrig.import/1";
pub const SCHEMA_PACKAGE: &str = "envrig.package/1";
pub const SCHEMA_BOXES: &str = "envrig.boxes/1";

pub fn json_line<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode output: {e}\"}}"))
}

/// Writes one line to stdout; a closed pipe (`| head`) is not an error.
pub(super) fn out(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
}

pub fn diagnostic_json(report: &Report, d: &Diagnostic) -> serde_json::Value {
    let (line, column) = line_col(&report.source, d.span.start);
    serde_json::json!({
        "severity": d.severity,
        "file": report.display_path,
        "line": line,
        "column": column,
        "key": d.key_path,
        "message": d.message,
        "help": d.help,
    })
}

/// Asks a yes/no question on the terminal; anything but y/yes is no.
pub fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[derive(Clone)]
pub struct Printer {
    pub json: bool,
    pub quiet: bool,
    pub color: bool,
}

impl Printer {
    pub fn new(json: bool, quiet: bool) -> Printer {
        let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Printer { json, quiet, color }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        paint(self.color, code, s)
    }

    pub fn error(&self, message: &str, hint: Option<&str>) {
        eprintln!("{} {message}", self.paint("1;31", "error:"));
        if let Some(h) = hint {
            eprintln!("{} {h}", self.paint("1;36", "hint:"));
        }
    }

    pub fn hint(&self, message: &str) {
        if !self.quiet && !self.json {
            eprintln!("{} {message}", self.paint("1;36", "hint:"));
        }
    }

    /// With `--json`, prints `doc` on stdout as one line and says so; else prints nothing
    /// (the caller prints for people).
    pub fn as_json(&self, doc: serde_json::Value) -> bool {
        if self.json {
            out(&json_line(&doc));
        }
        self.json
    }

    /// Whether a listing is printed already: as `doc` with `--json`, else as the message
    /// `none` when it has no rows.
    fn listed_already(&self, doc: serde_json::Value, rows: usize, none: &str) -> bool {
        if self.as_json(doc) {
            return true;
        }
        if rows == 0 {
            self.done(none);
            return true;
        }
        false
    }

    /// A closing one-line summary, on stderr.
    pub fn done(&self, message: &str) {
        if !self.quiet && !self.json {
            eprintln!("{message}");
        }
    }
}

/// `s` in the ANSI style `code`, when colour is on.
fn paint(color: bool, code: &str, s: &str) -> String {
    if color {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

/// A table with only its first row: the column names.
fn header(names: &[&str]) -> Vec<Vec<String>> {
    vec![names.iter().map(|n| n.to_string()).collect()]
}

/// Prints rows as left-aligned columns on stdout.
fn table(rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |x| x.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!(
                    "{cell:<w$}  ",
                    w = widths.get(c).copied().unwrap_or(0)
                ));
            }
        }
        out(line.trim_end());
    }
}
