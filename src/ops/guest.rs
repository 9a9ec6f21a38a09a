//! Talking to a machine through the provider trait's exec and upload, as provisioning and
//! readiness checks do: a command's output streamed line by line (its last lines kept for
//! the error), a command run quietly, and files packed as tar archives for `upload`.

use std::collections::VecDeque;
use std::path::Path;

use envrig_provider_api::{ExecRequest, OutputStream, Provider};

use super::context::Context;
use crate::provision;

/// How many of a failed step's last output lines the error shows.
const TAIL: usize = 12;

/// Splits a step's output into lines, reports each as it completes, and keeps the last few.
struct Lines<'a> {
    ctx: &'a Context,
    machine: &'a str,
    partial: [Vec<u8>; 2],
    tail: VecDeque<String>,
}

impl<'a> Lines<'a> {
    fn new(ctx: &'a Context, machine: &'a str) -> Self {
        Lines {
            ctx,
            machine,
            partial: [Vec::new(), Vec::new()],
            tail: VecDeque::new(),
        }
    }

    fn emit(&mut self, stream: OutputStream, bytes: &[u8]) {
        let line = String::from_utf8_lossy(bytes);
        let line = line.trim_end_matches('\r');
        self.ctx.reporter.output(self.machine, stream, line);
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
    }

    fn push(&mut self, stream: OutputStream, chunk: &[u8]) {
        let i = (stream == OutputStream::Stderr) as usize;
        self.partial[i].extend_from_slice(chunk);
        while let Some(pos) = self.partial[i].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial[i].drain(..=pos).collect();
            self.emit(stream, &line[..line.len() - 1]);
        }
    }

    fn finish(&mut self) {
        for (i, stream) in [(0, OutputStream::Stdout), (1, OutputStream::Stderr)] {
            if !self.partial[i].is_empty() {
                let rest = std::mem::take(&mut self.partial[i]);
                self.emit(stream, &rest);
            }
        }
    }

    fn tail_text(&self) -> String {
        if self.tail.is_empty() {
            return " (it printed nothing)".to_string();
        }
        let lines: Vec<String> = self.tail.iter().map(|l| format!("    | {l}")).collect();
        format!("; its last output:\n{}", lines.join("\n"))
    }
}

/// Runs `argv`, streaming its lines; returns the exit code and the output's tail.
pub(super) async fn run_streamed(
    ctx: &Context,
    p: &dyn Provider,
    machine: &str,
    id: &str,
    req: &ExecRequest,
) -> Result<(i64, String), String> {
    let mut lines = Lines::new(ctx, machine);
    let code = {
        let mut sink = |s: OutputStream, b: &[u8]| lines.push(s, b);
        p.exec(id, req, &mut sink)
            .await
            .map_err(|e| e.to_string())?
    };
    lines.finish();
    Ok((code, lines.tail_text()))
}

/// Runs a command quietly; returns its exit code and combined output.
pub(super) async fn run_quiet(
    p: &dyn Provider,
    id: &str,
    argv: &[&str],
) -> Result<(i64, String), String> {
    let req = ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..ExecRequest::default()
    };
    let mut out = Vec::new();
    let mut sink = |_: OutputStream, b: &[u8]| out.extend_from_slice(b);
    let code = p
        .exec(id, &req, &mut sink)
        .await
        .map_err(|e| e.to_string())?;
    Ok((code, String::from_utf8_lossy(&out).into_owned()))
}

/// A tar archive of one file or folder under `name`, owned by root, modes kept.
pub(super) fn tar_of(source: &Path, name: &str, normalise_text: bool) -> std::io::Result<Vec<u8>> {
    fn add(
        b: &mut tar::Builder<Vec<u8>>,
        path: &Path,
        name: &str,
        normalise_text: bool,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(path)?;
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        if meta.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(meta.permissions().mode() & 0o7777);
            h.set_size(0);
            b.append_data(&mut h, format!("{name}/"), std::io::empty())?;
            let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let child = format!("{name}/{}", e.file_name().to_string_lossy());
                add(b, &e.path(), &child, normalise_text)?;
            }
        } else if meta.file_type().is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, name, std::fs::read_link(path)?)?;
        } else {
            let mut body = std::fs::read(path)?;
            if normalise_text {
                body = provision::normalise(&body);
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(meta.permissions().mode() & 0o7777);
            h.set_size(body.len() as u64);
            b.append_data(&mut h, name, body.as_slice())?;
        }
        Ok(())
    }
    let mut b = tar::Builder::new(Vec::new());
    // The source itself may be a symlink (to a shared file): its target is what is meant.
    let source = std::fs::canonicalize(source)?;
    add(&mut b, &source, name, normalise_text)?;
    b.into_inner()
}

/// A tar archive holding `body` as `name` with `mode`.
pub(super) fn tar_bytes(name: &str, body: &[u8], mode: u32) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(body.len() as u64);
    b.append_data(&mut h, name, body)?;
    b.into_inner()
}
