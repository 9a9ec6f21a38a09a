//! `exec` and `ssh`: run a command in a running machine, non-interactively (output streamed,
//! exit code returned) or attached to the terminal.

use std::io::Write;
use std::sync::Arc;

use envrig_provider_api::{ExecRequest, OutputStream, Provider, Terminal};

use super::context::{Context, at};
use super::error::OpError;
use super::observe::runnable;
use super::project::Project;
use crate::plan::Observed;

/// The running resource of `machine`, and its provider.
pub async fn running_machine(
    ctx: &Context,
    project: &Project,
    machine: &str,
) -> Result<(Arc<dyn Provider>, Observed), OpError> {
    let m = project
        .machine(machine)
        .ok_or_else(|| project.unknown_machine(machine))?;
    let (observed, down) = super::observe::observe_all(ctx, project).await?;
    let o = match runnable(m.name.as_str(), &observed) {
        Ok(o) => o.clone(),
        // Not seen, and an engine it may be on does not answer: say that.
        Err(e) => return Err(down.into_iter().next().map_or(e, OpError::Unreachable)),
    };
    let p = at(ctx, &o).await?;
    Ok((p, o))
}

/// Runs `argv` in `machine`, streaming its output to this process's stdout and stderr;
/// returns its exit code.
/// Runs as `user`, else as the machine's login user, with a login environment (see
/// [`ExecRequest::login`]).
pub async fn exec(
    ctx: &Context,
    project: &Project,
    machine: &str,
    argv: Vec<String>,
    user: Option<String>,
) -> Result<i64, OpError> {
    let (p, o) = running_machine(ctx, project, machine).await?;
    let req = ExecRequest {
        argv,
        user,
        login: true,
        ..ExecRequest::default()
    };
    let mut sink = |s: OutputStream, b: &[u8]| {
        // A closed pipe on our side must not fail the command in the machine.
        let _ = match s {
            OutputStream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(b).and_then(|_| out.flush())
            }
            OutputStream::Stderr => std::io::stderr().lock().write_all(b),
        };
    };
    p.exec(&o.id, &req, &mut sink)
        .await
        .map_err(|e| OpError::provider(format!("cannot run the command in `{machine}`"), e))
}

/// Runs `argv` in `machine` attached to `terminal`; returns its exit code.
pub async fn interactive(
    ctx: &Context,
    project: &Project,
    machine: &str,
    argv: Vec<String>,
    terminal: Terminal,
) -> Result<i64, OpError> {
    let (p, o) = running_machine(ctx, project, machine).await?;
    let req = ExecRequest {
        argv,
        login: true,
        ..ExecRequest::default()
    };
    p.exec_interactive(&o.id, &req, terminal)
        .await
        .map_err(|e| OpError::provider(format!("cannot open a shell in `{machine}`"), e))
}
