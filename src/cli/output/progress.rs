//! Progress while an operation works, three ways: live lines on a terminal
//! ([`TtyReporter`]), plain `[machine] message` lines ([`HumanReporter`]) and JSON lines
//! ([`JsonReporter`]). [`Printer::reporter`] picks one.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use envrig_provider_api::PullProgress;

use super::{Printer, SCHEMA_EVENT, json_line, out, paint};
use crate::ops::{self, Phase, Reporter};

impl Printer {
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
