//! `suspend` and `resume` (Vagrant's commands): a running machine is held where it was and
//! what it can free is freed (libvirt: its memory saved to disk; Docker: paused, its memory
//! kept), and brought back running where it was. `up` resumes a suspended machine too.

use super::context::{Context, at};
use super::error::OpError;
use super::observe::observe;
use super::parallel::each_in_wave;
use super::project::Project;
use super::report::Phase;
use super::session::Session;
use crate::plan::current;

/// Which way: hold machines, or bring them back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Suspend,
    Resume,
}

/// Suspends (or resumes) the named machines (all when empty); returns the machines it did.
/// Machines already so are left alone; a machine that is not running (to suspend) or not
/// suspended (to resume) is an error naming its state, unless no machine was named.
pub async fn suspend(
    ctx: &Context,
    project: &Project,
    machines: &[String],
    how: Hold,
) -> Result<Vec<String>, OpError> {
    let selected = project.select(machines, false)?;
    let session = Session::open(ctx, project).await?;
    let observed = observe(ctx, project).await?;
    let mut todo = Vec::new();
    for m in &selected {
        let Some(o) = current(m.name.as_str(), &observed).0 else {
            if !machines.is_empty() {
                return Err(OpError::NotRunning {
                    machine: m.name.to_string(),
                    state: "not created".into(),
                });
            }
            continue;
        };
        let (wanted, done) = match how {
            Hold::Suspend => (o.state.can_exec(), o.state.is_suspended()),
            Hold::Resume => (o.state.is_suspended(), o.state.can_exec()),
        };
        if wanted {
            todo.push(o);
        } else if !done && !machines.is_empty() {
            return Err(OpError::NotRunning {
                machine: m.name.to_string(),
                state: o.state.to_string(),
            });
        }
    }
    let mut did = Vec::new();
    let failures = each_in_wave(
        todo.iter().copied(),
        |o| async move {
            let p = at(ctx, o).await?;
            let (phase, doing, verb) = match how {
                Hold::Suspend => (Phase::Stop, "suspending", "suspend"),
                Hold::Resume => (Phase::Start, "resuming", "resume"),
            };
            ctx.reporter.event(Some(&o.machine), phase, doing);
            match how {
                Hold::Suspend => p.suspend(&o.id).await,
                Hold::Resume => p.unpause(&o.id).await,
            }
            .map_err(|e| OpError::provider(format!("cannot {verb} `{}`", o.machine), e))
        },
        |o| did.push(o.machine.clone()),
    )
    .await;
    session.refresh(&observe(ctx, project).await?)?;
    if !failures.is_empty() {
        return Err(OpError::Machines {
            total: todo.len(),
            failures,
        });
    }
    did.sort();
    Ok(did)
}
