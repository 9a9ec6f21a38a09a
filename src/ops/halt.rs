//! `halt`: stops machines gracefully, keeping their disks; hard after the timeout.

use std::time::Duration;

use envrig_provider_api::MachineState;

use super::context::{Context, at};
use super::error::OpError;
use super::observe::observe;
use super::parallel::each_in_wave;
use super::project::Project;
use super::report::Phase;
use super::session::Session;
use crate::plan::current;

/// Stops the named machines (all when empty); returns the machines that were stopped.
pub async fn halt(
    ctx: &Context,
    project: &Project,
    machines: &[String],
    timeout: Duration,
) -> Result<Vec<String>, OpError> {
    let selected = project.select(machines, false)?;
    let session = Session::open(ctx, project).await?;
    let observed = observe(ctx, project).await?;
    // A stopped machine of an immutable environment is stopped again: its provider may
    // still hold its ports and names for it (a generation that exited by itself).
    let immutable = project.hands_over();
    let running: Vec<_> = selected
        .iter()
        .filter_map(|m| current(m.name.as_str(), &observed).0)
        .filter(|o| {
            o.state.can_exec()
                || o.state.is_suspended()
                || (immutable && o.state == MachineState::Stopped)
        })
        .collect();
    // Dependants stop before what they depend on; each wave in parallel.
    let mut stopped = Vec::new();
    let mut failures = Vec::new();
    for wave in project.teardown_waves(&selected) {
        let wave = running
            .iter()
            .copied()
            .filter(|o| wave.contains(&o.machine));
        let failed = each_in_wave(
            wave,
            |o| async move {
                let p = at(ctx, o).await?;
                ctx.reporter
                    .event(Some(&o.machine), Phase::Stop, "stopping");
                // A suspended machine is brought back and shut down as any other: dropping
                // what it was would be a power cut.
                if o.state.is_suspended() {
                    p.unpause(&o.id).await.map_err(|e| {
                        OpError::provider(format!("cannot resume `{}` to stop it", o.machine), e)
                    })?;
                }
                p.stop(&o.id, timeout)
                    .await
                    .map_err(|e| OpError::provider(format!("cannot stop `{}`", o.machine), e))
            },
            |o| {
                ctx.reporter.event(Some(&o.machine), Phase::Done, "stopped");
                stopped.push(o.machine.clone());
            },
        )
        .await;
        failures.extend(failed);
    }
    let observed = observe(ctx, project).await?;
    session.refresh(&observed)?;
    if !failures.is_empty() {
        return Err(OpError::Machines {
            total: running.len(),
            failures,
        });
    }
    stopped.sort();
    Ok(stopped)
}
