//! `envrig logs` and `envrig cp`: what machines say, and files between the host and a
//! machine.

use std::io::{IsTerminal, Write};

use envrig_provider_api::{LogRequest, OutputStream};

use super::{fail, settle};
use crate::cli::output::Printer;
use crate::ops::{self, Context, Place, Project};

/// The flags of `logs`, as the CLI read them.
pub(crate) struct LogsFlags {
    pub machines: Vec<String>,
    pub follow: bool,
    pub since: Option<i64>,
    pub tail: Option<u64>,
    pub journal: bool,
}

/// `logs`: each line as `[machine] line` (the machine's name in a colour of its own on a
/// terminal) when several machines are shown, as is for one; `--json`: a JSON line each.
pub(super) async fn logs(ctx: &Context, printer: &Printer, project: &Project, f: LogsFlags) -> i32 {
    let req = LogRequest {
        follow: f.follow,
        since: f.since,
        tail: f.tail,
        journal: f.journal,
    };
    let names: Vec<&str> = match project.select(&f.machines, false) {
        Ok(ms) => ms.iter().map(|m| m.name.as_str()).collect(),
        Err(e) => return fail(printer, e),
    };
    let prefixed = names.len() > 1;
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let json = printer.json;
    let emit = |machine: &str, stream: OutputStream, line: &[u8]| {
        let text = String::from_utf8_lossy(line);
        let mut out = std::io::stdout().lock();
        // A reader that went away (`logs -f | head`) ends the command, as it ends `docker
        // compose logs`; nothing in the machines is touched.
        let written = if json {
            let doc = serde_json::json!({
                "schema": "envrig.log/1",
                "machine": machine,
                "stream": match stream { OutputStream::Stdout => "stdout", OutputStream::Stderr => "stderr" },
                "line": text,
            });
            writeln!(out, "{doc}")
        } else if prefixed {
            let i = names.iter().position(|n| *n == machine).unwrap_or(0);
            let tag = format!("[{machine}]");
            if color {
                writeln!(out, "\x1b[{}m{tag}\x1b[0m {text}", COLORS[i % COLORS.len()])
            } else {
                writeln!(out, "{tag} {text}")
            }
        } else {
            writeln!(out, "{text}")
        };
        if let Err(e) = written.and_then(|_| out.flush())
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            std::process::exit(0);
        }
    };
    match settle(ctx, ops::logs(ctx, project, &f.machines, &req, &emit)).await {
        Ok(()) => 0,
        Err(e) => fail(printer, e),
    }
}

/// The colours machines' names take, in turn (as Compose's).
const COLORS: [&str; 6] = ["36", "33", "32", "35", "34", "91"];

/// `cp SRC DST`: one line saying what was copied; `--json`: `envrig.cp/1`.
pub(super) async fn cp(
    ctx: &Context,
    printer: &Printer,
    project: &Project,
    src: &Place,
    dst: &Place,
) -> i32 {
    match settle(ctx, ops::copy(ctx, project, src, dst)).await {
        Ok(r) => {
            let mut doc = serde_json::to_value(&r).unwrap_or_default();
            doc["schema"] = "envrig.cp/1".into();
            if !printer.as_json(doc) {
                printer.done(&format!(
                    "copied {} ({} {}, {:.1} MB) to {}",
                    r.from,
                    r.entries,
                    if r.entries == 1 { "entry" } else { "entries" },
                    r.bytes as f64 / 1e6,
                    r.to
                ));
            }
            0
        }
        Err(e) => fail(printer, e),
    }
}
