//! `envrig logs` on libvirt: the serial console log envrig keeps for every VM (here, or a
//! volume on a remote host), followed by polling it; or, with `--journal`, the guest's
//! journal through the agent or SSH, followed by its cursor.

use std::time::Duration;

use envrig_provider_api::{
    ExecRequest, LogRequest, MachineState, OutputSink, OutputStream, ProviderError, Result,
};

use crate::LibvirtProvider;

/// At most this much of a console log is read at once (the tail of a longer one).
const WINDOW: u64 = 16 << 20;
/// How often a followed log is looked at.
const POLL: Duration = Duration::from_millis(250);
/// A follow ends after a week at most (bounded, like every loop here).
const FOLLOW_POLLS: u32 = 7 * 24 * 3600 * 4;
/// The exit code that says the guest has no `journalctl`.
const NO_JOURNAL: i64 = 127;

impl LibvirtProvider {
    pub(crate) async fn machine_logs(
        &self,
        id: &str,
        req: &LogRequest,
        output: OutputSink<'_>,
    ) -> Result<()> {
        if req.journal {
            return self.journal(id, req, output).await;
        }
        let res = self.info(id).await?.resource_name;
        let (first, mut offset) = self
            .note_read_from(&res, "console.log", 0, WINDOW)
            .await
            .unwrap_or_default();
        output(OutputStream::Stdout, last_lines(&first, req.tail));
        if !req.follow {
            return Ok(());
        }
        for n in 0..FOLLOW_POLLS {
            tokio::time::sleep(POLL).await;
            let mut read = self
                .note_read_from(&res, "console.log", offset, WINDOW)
                .await;
            // A log shorter than what was read is a new one (the machine was made again).
            if matches!(read, Some((_, size)) if size < offset) {
                read = self.note_read_from(&res, "console.log", 0, WINDOW).await;
            }
            if let Some((more, size)) = read {
                output(OutputStream::Stdout, &more);
                offset = size;
            }
            if n % 4 == 3 && !self.still_running(id).await {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn still_running(&self, id: &str) -> bool {
        matches!(self.info(id).await, Ok(i) if i.state == MachineState::Running)
    }

    /// The guest's journal: `journalctl`, then (following) what came after its cursor,
    /// asked again each second: the same through the agent (whose output comes when a
    /// command ends) and SSH.
    async fn journal(&self, id: &str, req: &LogRequest, output: OutputSink<'_>) -> Result<()> {
        let mut args = String::new();
        if let Some(n) = req.tail {
            args.push_str(&format!(" -n {n}"));
        }
        if let Some(s) = req.since {
            args.push_str(&format!(" --since @{s}"));
        }
        let mut cursor = self.journal_part(id, &args, output).await?;
        if !req.follow {
            return Ok(());
        }
        for _ in 0..FOLLOW_POLLS / 4 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !self.still_running(id).await {
                return Ok(());
            }
            let after = match &cursor {
                Some(c) => format!(" --after-cursor {}", crate::exec::sh_quote(c)),
                None => args.clone(),
            };
            if let Some(c) = self.journal_part(id, &after, output).await? {
                cursor = Some(c);
            }
        }
        Ok(())
    }

    /// One `journalctl` with `args`: its entries to `output`; the cursor after the last.
    async fn journal_part(
        &self,
        id: &str,
        args: &str,
        output: OutputSink<'_>,
    ) -> Result<Option<String>> {
        let req = ExecRequest {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "command -v journalctl >/dev/null 2>&1 || exit {NO_JOURNAL}; \
                     exec journalctl --no-pager -q -o short-iso --show-cursor{args}"
                ),
            ],
            ..ExecRequest::default()
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = self
            .exec_command(id, &req, &mut |s: OutputStream, b: &[u8]| match s {
                OutputStream::Stdout => out.extend_from_slice(b),
                OutputStream::Stderr => err.extend_from_slice(b),
            })
            .await?;
        match code {
            0 => {
                let (entries, cursor) = split_cursor(&out);
                output(OutputStream::Stdout, entries);
                Ok(cursor)
            }
            NO_JOURNAL => Err(ProviderError::Conflict {
                message: "this guest has no journal (no journalctl); `envrig logs` without \
                          --journal shows its console"
                    .into(),
            }),
            code => Err(ProviderError::Conflict {
                message: format!(
                    "journalctl failed in the guest ({code}): {}",
                    String::from_utf8_lossy(&err).trim()
                ),
            }),
        }
    }
}

/// The last `n` lines of `log` (all of it without `n`).
fn last_lines(log: &[u8], n: Option<u64>) -> &[u8] {
    let Some(n) = n else { return log };
    let body = log.strip_suffix(b"\n").unwrap_or(log);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &log[i + 1..];
            }
        }
    }
    if n == 0 { &log[log.len()..] } else { log }
}

/// `journalctl --show-cursor`'s output: the entries, and the cursor its last line names.
fn split_cursor(out: &[u8]) -> (&[u8], Option<String>) {
    let body = out.strip_suffix(b"\n").unwrap_or(out);
    let (entries, last) = match body.iter().rposition(|b| *b == b'\n') {
        Some(i) => (&out[..=i], &body[i + 1..]),
        None => (&out[..0], body),
    };
    match std::str::from_utf8(last)
        .ok()
        .and_then(|l| l.strip_prefix("-- cursor: "))
    {
        Some(c) => (entries, Some(c.trim().to_string())),
        None => (out, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_of_a_log_are_cut_at_line_ends() {
        let log = b"a\nb\nc\n";
        assert_eq!(last_lines(log, None), log);
        assert_eq!(last_lines(log, Some(2)), b"b\nc\n");
        assert_eq!(last_lines(log, Some(3)), log);
        assert_eq!(last_lines(log, Some(9)), log);
        assert_eq!(last_lines(log, Some(0)), b"");
        assert_eq!(last_lines(b"a\nb", Some(1)), b"b");
    }

    #[test]
    fn the_journal_cursor_is_split_off_its_output() {
        let (e, c) = split_cursor(b"x 1\ny 2\n-- cursor: s=ab;i=1\n");
        assert_eq!((e, c.as_deref()), (&b"x 1\ny 2\n"[..], Some("s=ab;i=1")));
        let (e, c) = split_cursor(b"-- cursor: s=1\n");
        assert_eq!((e, c.as_deref()), (&b""[..], Some("s=1")));
        let (e, c) = split_cursor(b"no cursor\n");
        assert_eq!((e, c), (&b"no cursor\n"[..], None));
    }
}
