//! `logs [MACHINE...]`: machines' logs (a container's output, a VM's serial console or
//! journal) as lines, several machines interleaved as their lines come, each line said with
//! its machine; `follow` goes on until every log ends or the command is interrupted.

use std::sync::Mutex;

use envrig_provider_api::{LogRequest, OutputStream};

use super::context::{Context, at};
use super::error::OpError;
use super::observe::{created, observe_all};
use super::project::Project;

/// A longer line is passed on in pieces of this size (a guest that never ends a line).
const MAX_LINE: usize = 64 * 1024;

/// Streams the logs of `machines` (every created machine of `project` when empty) to
/// `emit(machine, stream, line)`, a line at a time without its end of line.
pub async fn logs(
    ctx: &Context,
    project: &Project,
    machines: &[String],
    req: &LogRequest,
    emit: &(dyn Fn(&str, OutputStream, &[u8]) + Sync),
) -> Result<(), OpError> {
    let selected = project.select(machines, false)?;
    let (observed, down) = observe_all(ctx, project).await?;
    let mut targets = Vec::new();
    if machines.is_empty() {
        for m in selected {
            if let Ok(o) = created(m.name.as_str(), &observed) {
                targets.push(o.clone());
            }
        }
        if targets.is_empty() {
            return Err(down.into_iter().next().map_or_else(
                || {
                    OpError::Usage(
                        "no machine of this project is created: `envrig up` first".into(),
                    )
                },
                OpError::Unreachable,
            ));
        }
    } else {
        for m in machines {
            match created(m, &observed) {
                Ok(o) => targets.push(o.clone()),
                Err(e) => return Err(down.into_iter().next().map_or(e, OpError::Unreachable)),
            }
        }
    }
    let emit = Mutex::new(emit);
    let each = targets.iter().map(|o| {
        let emit = &emit;
        async move {
            let p = at(ctx, o).await?;
            let mut lines = Lines::default();
            let mut sink = |s: OutputStream, b: &[u8]| {
                lines.push(s, b, &mut |s, line| {
                    let emit = emit.lock().unwrap_or_else(|e| e.into_inner());
                    emit(&o.machine, s, line)
                })
            };
            let r = p.logs(&o.id, req, &mut sink).await;
            lines.finish(&mut |s, line| {
                let emit = emit.lock().unwrap_or_else(|e| e.into_inner());
                emit(&o.machine, s, line)
            });
            r.map_err(|e| OpError::provider(format!("cannot read the logs of `{}`", o.machine), e))
        }
    });
    // The first machine whose log cannot be read ends the command, saying why.
    let all = futures_util::future::try_join_all(each);
    tokio::select! {
        results = all => results.map(|_| ()),
        // Ctrl-C ends a follow: what was shown is the result.
        _ = ctx.interrupted() => Ok(()),
    }
}

/// Chunks of output cut into lines, per stream.
#[derive(Default)]
struct Lines {
    out: Vec<u8>,
    err: Vec<u8>,
}

impl Lines {
    fn push(&mut self, s: OutputStream, b: &[u8], emit: &mut dyn FnMut(OutputStream, &[u8])) {
        let buf = match s {
            OutputStream::Stdout => &mut self.out,
            OutputStream::Stderr => &mut self.err,
        };
        buf.extend_from_slice(b);
        let mut start = 0;
        while let Some(i) = buf[start..].iter().position(|c| *c == b'\n') {
            let line = &buf[start..start + i];
            emit(s, line.strip_suffix(b"\r").unwrap_or(line));
            start += i + 1;
        }
        while buf.len() - start >= MAX_LINE {
            emit(s, &buf[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        buf.drain(..start);
    }

    fn finish(&mut self, emit: &mut dyn FnMut(OutputStream, &[u8])) {
        for (s, buf) in [
            (OutputStream::Stdout, &mut self.out),
            (OutputStream::Stderr, &mut self.err),
        ] {
            if !buf.is_empty() {
                emit(s, buf);
                buf.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_become_lines_per_stream_and_the_rest_comes_at_the_end() {
        let mut got = Vec::new();
        let mut l = Lines::default();
        let mut emit =
            |s: OutputStream, b: &[u8]| got.push((s, String::from_utf8_lossy(b).into_owned()));
        l.push(OutputStream::Stdout, b"a\r\nb", &mut emit);
        l.push(OutputStream::Stderr, b"e1\n", &mut emit);
        l.push(OutputStream::Stdout, b"c\nd", &mut emit);
        l.finish(&mut emit);
        let o = OutputStream::Stdout;
        assert_eq!(
            got,
            vec![
                (o, "a".into()),
                (OutputStream::Stderr, "e1".into()),
                (o, "bc".into()),
                (o, "d".into())
            ]
        );
    }

    #[test]
    fn an_endless_line_comes_in_pieces() {
        let mut n = 0;
        let mut l = Lines::default();
        l.push(
            OutputStream::Stdout,
            &vec![b'x'; MAX_LINE * 2 + 5],
            &mut |_, b| {
                assert_eq!(b.len(), MAX_LINE);
                n += 1
            },
        );
        assert_eq!(n, 2);
        assert_eq!(l.out.len(), 5);
    }
}
