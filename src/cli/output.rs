//! Everything the CLI prints: aligned tables and short messages for people (stderr for
//! messages, stdout for data), versioned JSON documents and JSON lines for programs.
//! Colours only on a TTY and never with `NO_COLOR`. The JSON schemas are in `docs/json.md`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use envrig_provider_api::PullProgress;
use serde::Serialize;

use crate::envfile::{Diagnostic, Report, line_col};
use crate::ops::{
    self, DestroySummary, EnvRow, GcItem, GcReport, Phase, Project, Reporter, RunOutcome,
    StatusReport, UpOutcome,
};

pub const SCHEMA_STATUS: &str = "envrig.status/1";
pub const SCHEMA_LS: &str = "envrig.ls/1";
pub const SCHEMA_UP: &str = "envrig.up/1";
pub const SCHEMA_DESTROY: &str = "envrig.destroy/1";
pub const SCHEMA_EVENT: &str = "envrig.event/1";
pub const SCHEMA_VALIDATE: &str = "envrig.validate/1";
pub const SCHEMA_RUN: &str = "envrig.run/1";
pub const SCHEMA_GC: &str = "envrig.gc/1";
pub const SCHEMA_HALT: &str = "envrig.halt/1";
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

    pub fn reporter(&self) -> Arc<dyn Reporter> {
        if self.json {
            Arc::new(JsonReporter)
        } else if !self.quiet
            && std::io::stderr().is_terminal()
            && std::env::var_os("ENVRIG_NO_PROGRESS").is_none()
        {
            Arc::new(TtyReporter {
                color: self.color,
                multi: indicatif::MultiProgress::new(),
                bars: Mutex::new(BTreeMap::new()),
            })
        } else {
            Arc::new(HumanReporter {
                printer: self.clone(),
                pulls: Mutex::new(BTreeMap::new()),
            })
        }
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

    /// A closing one-line summary, on stderr.
    pub fn done(&self, message: &str) {
        if !self.quiet && !self.json {
            eprintln!("{message}");
        }
    }

    pub fn up(&self, project: &Project, outcomes: &[UpOutcome]) {
        if self.json {
            out(&json_line(&serde_json::json!({
                "schema": SCHEMA_UP,
                "project": project.identity.project.as_str(),
                "env_id": project.identity.env_id,
                "machines": outcomes,
            })));
            return;
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for o in outcomes {
            *counts.entry(o.result.as_str()).or_default() += 1;
        }
        let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        self.done(&format!(
            "`{}` is up: {}",
            project.identity.project,
            if summary.is_empty() {
                "no machines".to_string()
            } else {
                summary.join(", ")
            }
        ));
    }

    pub fn status(&self, report: &StatusReport) {
        if self.json {
            out(&json_line(&serde_json::json!({
                "schema": SCHEMA_STATUS,
                "project": report.project,
                "env_id": report.env_id,
                "folder": report.folder,
                "envfile": report.envfile,
                "machines": report.machines,
            })));
            return;
        }
        let mut rows = vec![vec![
            "MACHINE".into(),
            "PROVIDER".into(),
            "STATE".into(),
            "PORTS".into(),
            "AGE".into(),
        ]];
        for r in &report.machines {
            let state = match (&r.state, &r.engine_state) {
                (s, Some(e)) if (s == "stale" || s == "orphan") => format!("{s} ({e})"),
                (s, _) => s.clone(),
            };
            rows.push(vec![
                r.machine.clone(),
                r.provider.clone(),
                state,
                if r.ports.is_empty() {
                    "-".into()
                } else {
                    r.ports.join(", ")
                },
                r.created
                    .as_deref()
                    .and_then(ops::age)
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        table(&rows);
        if report.machines.iter().any(|r| r.state == "stale") {
            self.hint("a stale machine was made from older settings; `envrig reload MACHINE` recreates it");
        }
        if report.machines.iter().any(|r| r.state == "orphan") {
            self.hint("an orphan is no longer in the Envfile; `envrig destroy MACHINE` removes it");
        }
    }

    pub fn ls(&self, rows: &[EnvRow]) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_LS, "environments": rows}),
            ));
            return;
        }
        let mut t = vec![vec![
            "PROJECT".into(),
            "ID".into(),
            "FOLDER".into(),
            "MACHINES".into(),
            "PROVIDERS".into(),
            "AGE".into(),
            "EXPIRES".into(),
        ]];
        for r in rows {
            let machines: Vec<String> =
                r.machines.iter().map(|(m, s)| format!("{m}={s}")).collect();
            t.push(vec![
                r.project.clone(),
                match &r.instance {
                    Some(i) => i.clone(),
                    None => r.env_id.chars().take(8).collect(),
                },
                if r.envfile_exists {
                    r.folder.clone()
                } else {
                    format!("{} (gone)", r.folder)
                },
                machines.join(","),
                r.providers.join(","),
                r.created
                    .as_deref()
                    .and_then(ops::age)
                    .unwrap_or_else(|| "-".into()),
                r.expires
                    .as_deref()
                    .map(ops::until)
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        if rows.is_empty() {
            self.done("no environments on this host");
        } else {
            table(&t);
        }
    }

    pub fn snapshot_done(&self, verb: &str, name: &str, machines: &[String]) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_SNAPSHOT, "action": verb, "name": name, "machines": machines}),
            ));
        } else {
            let list: Vec<String> = machines.iter().map(|m| format!("`{m}`")).collect();
            self.done(&format!("{verb} snapshot `{name}` of {}", list.join(", ")));
        }
    }

    pub fn snapshots(&self, rows: &[ops::SnapshotRow]) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_SNAPSHOTS, "snapshots": rows}),
            ));
            return;
        }
        if rows.is_empty() {
            self.done("no snapshots");
            return;
        }
        let mut t = vec![vec![
            "NAME".to_string(),
            "MACHINES".to_string(),
            "AGE".to_string(),
        ]];
        for r in rows {
            t.push(vec![
                r.name.clone(),
                r.machines.join(","),
                ops::age(&r.created).unwrap_or_else(|| "-".into()),
            ]);
        }
        table(&t);
    }

    pub fn exported(&self, path: &std::path::Path, m: &ops::Manifest) {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if self.json {
            let machines: Vec<&str> = m.machines.iter().map(|x| x.machine.as_str()).collect();
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_EXPORT, "file": path, "bytes": size, "snapshot": m.snapshot, "machines": machines, "members": m.members.len()}),
            ));
        } else {
            self.done(&format!(
                "wrote {} ({:.1} MB, {} machine{})",
                path.display(),
                size as f64 / 1e6,
                m.machines.len(),
                if m.machines.len() == 1 { "" } else { "s" }
            ));
        }
    }

    pub fn imported(&self, r: &ops::ImportReport) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_IMPORT, "folder": r.folder, "project": r.project, "machines": r.machines}),
            ));
        } else {
            self.done(&format!(
                "imported `{}` into {}: {}",
                r.project,
                r.folder,
                r.machines.join(", ")
            ));
        }
    }

    pub fn packaged(&self, machine: &str, as_box: &str, id: &str) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_PACKAGE, "machine": machine, "box": as_box, "id": id}),
            ));
        } else {
            self.done(&format!(
                "packaged `{machine}` as `{as_box}` ({})",
                id.chars().take(19).collect::<String>()
            ));
        }
    }

    pub fn boxes(&self, rows: &[ops::BoxRow]) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_BOXES, "boxes": rows}),
            ));
            return;
        }
        if rows.is_empty() {
            self.done("no boxes; `envrig box add NAME FILE` adds one");
            return;
        }
        let mut t = vec![vec![
            "NAME".to_string(),
            "PROVIDER".into(),
            "SIZE".into(),
            "SHA256".into(),
            "KERNEL".into(),
            "SOURCE".into(),
        ]];
        for r in rows {
            t.push(vec![
                r.stored.name.clone(),
                r.provider.clone(),
                crate::envfile::values::format_size(r.stored.size),
                r.stored.sha256.chars().take(12).collect(),
                if r.stored.kernel { "yes" } else { "no" }.into(),
                r.stored.source.clone(),
            ]);
        }
        table(&t);
    }

    pub fn boxes_added(&self, row: &ops::BoxRow) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_BOXES, "boxes": [row]}),
            ));
        } else {
            self.done(&format!(
                "added box `{}` ({}, sha256 {})",
                row.stored.name,
                crate::envfile::values::format_size(row.stored.size),
                &row.stored.sha256[..12.min(row.stored.sha256.len())]
            ));
        }
    }

    pub fn run(&self, o: &RunOutcome) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_RUN, "instance": o.instance, "machine": o.machine, "exit_code": o.exit_code, "kept": o.kept}),
            ));
        }
    }

    pub fn halt(&self, stopped: &[String]) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_HALT, "machines": stopped}),
            ));
        } else {
            self.done(&format!(
                "halted {} machine{}",
                stopped.len(),
                if stopped.len() == 1 { "" } else { "s" }
            ));
        }
    }

    pub fn provisioned(&self, done: &[(String, usize)]) {
        if self.json {
            let machines: Vec<serde_json::Value> = done
                .iter()
                .map(|(m, n)| serde_json::json!({"machine": m, "steps_run": n}))
                .collect();
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_PROVISION, "machines": machines}),
            ));
        } else {
            let total: usize = done.iter().map(|(_, n)| n).sum();
            self.done(&format!(
                "provisioned {} machine{}: {total} step{} run",
                done.len(),
                if done.len() == 1 { "" } else { "s" },
                if total == 1 { "" } else { "s" }
            ));
        }
    }

    pub fn gc(&self, r: &GcReport) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_GC, "dry_run": r.dry_run, "removed": r.removed, "busy": r.busy, "failed": r.failed, "skipped": r.skipped}),
            ));
            return;
        }
        let verb = if r.dry_run { "would remove" } else { "removed" };
        // Baked layers belong to no environment: no project or folder to name.
        let whose = |i: &GcItem| {
            if i.project.is_empty() && i.folder.is_empty() {
                String::new()
            } else {
                format!(" of `{}` ({})", i.project, i.folder)
            }
        };
        for i in &r.removed {
            out(&format!("{verb} {}{}: {}", i.resource, whose(i), i.reason));
        }
        for f in &r.failed {
            eprintln!(
                "{} cannot remove {}{}: {}",
                self.paint("1;33", "warning:"),
                f.resource,
                whose(f),
                f.reason
            );
        }
        for k in &r.skipped {
            eprintln!(
                "{} skipped `{}` ({}): {}; it is left alone",
                self.paint("1;33", "warning:"),
                k.project,
                k.folder,
                k.reason
            );
        }
        for b in &r.busy {
            self.done(&format!(
                "skipped environment {b}: another envrig is working on it"
            ));
        }
        if r.removed.is_empty() && r.failed.is_empty() {
            self.done("nothing to collect");
        }
    }

    pub fn destroy(&self, s: &DestroySummary) {
        if self.json {
            out(&json_line(
                &serde_json::json!({"schema": SCHEMA_DESTROY, "machines": s.machines, "resources": s.resources}),
            ));
            return;
        }
        if s.machines.is_empty() && s.resources.is_empty() {
            self.done("nothing to destroy");
        } else {
            let mut what: Vec<String> = s.machines.iter().map(|m| format!("`{m}`")).collect();
            what.extend(s.resources.iter().cloned());
            self.done(&format!("destroyed {}", what.join(", ")));
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

/// Progress for people: `[machine] message` lines on stderr.
struct HumanReporter {
    printer: Printer,
    /// The last status line printed per machine, so a pull's repeated lines print once.
    pulls: Mutex<BTreeMap<String, String>>,
}

impl Reporter for HumanReporter {
    fn event(&self, machine: Option<&str>, phase: Phase, message: &str) {
        let p = &self.printer;
        let quiet_ok = matches!(phase, Phase::Warning | Phase::Failed);
        if p.quiet && !quiet_ok {
            return;
        }
        let prefix = match machine {
            Some(m) => format!("{} ", p.paint("1", &format!("[{m}]"))),
            None => String::new(),
        };
        let message = match phase {
            Phase::Warning => format!("{} {message}", p.paint("1;33", "warning:")),
            Phase::Failed => format!("{} {message}", p.paint("1;31", "failed:")),
            _ => message.to_string(),
        };
        eprintln!("{prefix}{message}");
    }

    fn output(&self, machine: &str, _stream: envrig_provider_api::OutputStream, line: &str) {
        if self.printer.quiet {
            return;
        }
        eprintln!(
            "{} {line}",
            self.printer.paint("2", &format!("[{machine}]"))
        );
    }

    fn pull(&self, machine: &str, progress: &PullProgress) {
        if self.printer.quiet {
            return;
        }
        let line = match progress {
            PullProgress::Status(s) => s.clone(),
            PullProgress::Bytes { done, total } => {
                // Whole tens of percent, so a log gets a handful of lines, not thousands.
                let pct = if *total > 0 {
                    done * 100 / total / 10 * 10
                } else {
                    0
                };
                format!("downloading: {pct}%")
            }
        };
        let mut last = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        if last.get(machine) != Some(&line) {
            eprintln!(
                "{} {line}",
                self.printer.paint("1", &format!("[{machine}]"))
            );
            last.insert(machine.to_string(), line);
        }
    }
}

/// Progress on a terminal: one live line per machine (indicatif), with step output and
/// warnings printed above the lines.
struct TtyReporter {
    color: bool,
    multi: indicatif::MultiProgress,
    bars: Mutex<BTreeMap<String, indicatif::ProgressBar>>,
}

impl TtyReporter {
    fn bar(&self, machine: &str) -> indicatif::ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        bars.entry(machine.to_string())
            .or_insert_with(|| {
                let style =
                    indicatif::ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
                let bar = self
                    .multi
                    .add(indicatif::ProgressBar::new_spinner().with_style(style));
                bar.set_prefix(format!("[{machine}]"));
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                bar
            })
            .clone()
    }

    fn paint(&self, code: &str, s: &str) -> String {
        paint(self.color, code, s)
    }

    fn above(&self, line: String) {
        let _ = self.multi.println(line);
    }
}

impl Reporter for TtyReporter {
    fn event(&self, machine: Option<&str>, phase: Phase, message: &str) {
        let prefix = machine
            .map(|m| format!("{} ", self.paint("1", &format!("[{m}]"))))
            .unwrap_or_default();
        match (phase, machine) {
            (Phase::Warning, _) => self.above(format!(
                "{prefix}{} {message}",
                self.paint("1;33", "warning:")
            )),
            (Phase::Failed, Some(m)) => {
                let first = message.lines().next().unwrap_or(message);
                self.bar(m)
                    .finish_with_message(self.paint("1;31", &format!("failed: {first}")));
            }
            (Phase::Failed, None) => {
                self.above(format!("{} {message}", self.paint("1;31", "failed:")))
            }
            (Phase::Done, Some(m)) => self.bar(m).finish_with_message(self.paint("32", message)),
            (_, Some(m)) => self.bar(m).set_message(message.to_string()),
            (_, None) => self.above(message.to_string()),
        }
    }

    fn pull(&self, machine: &str, progress: &PullProgress) {
        let message = match progress {
            PullProgress::Status(s) => s.clone(),
            PullProgress::Bytes { done, total } if *total > 0 => {
                format!(
                    "downloading {:.1}/{:.1} MB ({}%)",
                    *done as f64 / 1e6,
                    *total as f64 / 1e6,
                    done * 100 / total
                )
            }
            PullProgress::Bytes { .. } => "downloading".to_string(),
        };
        self.bar(machine).set_message(message);
    }

    fn output(&self, machine: &str, _stream: envrig_provider_api::OutputStream, line: &str) {
        self.above(format!(
            "{} {line}",
            self.paint("2", &format!("[{machine}]"))
        ));
    }

    fn finish(&self) {
        let bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        for bar in bars.values() {
            if !bar.is_finished() {
                bar.finish();
            }
        }
    }
}

/// Progress for programs: one JSON object per line on stdout.
struct JsonReporter;

impl Reporter for JsonReporter {
    fn event(&self, machine: Option<&str>, phase: Phase, message: &str) {
        out(&json_line(&serde_json::json!({
            "schema": SCHEMA_EVENT,
            "time": ops::now_rfc3339(),
            "machine": machine,
            "phase": phase,
            "message": message,
        })));
    }

    fn output(&self, machine: &str, stream: envrig_provider_api::OutputStream, line: &str) {
        out(&json_line(&serde_json::json!({
            "schema": SCHEMA_EVENT,
            "time": ops::now_rfc3339(),
            "machine": machine,
            "phase": "output",
            "stream": match stream {
                envrig_provider_api::OutputStream::Stdout => "stdout",
                envrig_provider_api::OutputStream::Stderr => "stderr",
            },
            "message": line,
        })));
    }

    fn pull(&self, machine: &str, progress: &PullProgress) {
        let (message, done, total) = match progress {
            PullProgress::Status(s) => (s.clone(), None, None),
            PullProgress::Bytes { done, total } => {
                ("downloading".to_string(), Some(*done), Some(*total))
            }
        };
        out(&json_line(&serde_json::json!({
            "schema": SCHEMA_EVENT,
            "time": ops::now_rfc3339(),
            "machine": machine,
            "phase": Phase::Pull,
            "message": message,
            "bytes_done": done,
            "bytes_total": total,
        })));
    }
}
