//! `run`: for CI. Brings up an environment of its own (an instance: parallel runs in one
//! checkout never collide), runs a command in one machine with its output streamed, and
//! destroys the environment whatever happened: on success, failure and interruption.

use super::context::Context;
use super::destroy::destroy;
use super::error::OpError;
use super::exec::exec;
use super::project::Project;
use super::report::Phase;
use super::up::{UpOptions, up};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The machine to run in; the only machine, or the first declared, when `None`.
    pub machine: Option<String>,
    pub command: Vec<String>,
    /// Keep the environment when the command fails (or the environment could not be made).
    pub keep_on_failure: bool,
    pub parallel: usize,
}

/// How a run ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunOutcome {
    pub instance: String,
    pub machine: String,
    /// The command's exit status; `None` when it never ran.
    pub exit_code: Option<i64>,
    /// Whether the environment was kept (`--keep-on-failure`).
    pub kept: bool,
}

/// Runs; `Ok` carries the command's status, also when it failed. `Err` means the
/// environment could not be made or the run was interrupted (after cleaning up).
pub async fn run(
    ctx: &Context,
    project: &Project,
    opts: &RunOptions,
) -> Result<RunOutcome, (OpError, RunOutcome)> {
    let instance = project.identity.instance.clone().unwrap_or_default();
    let machine = match &opts.machine {
        Some(m) => m.clone(),
        None => project
            .envfile
            .machines
            .first()
            .map(|m| m.name.to_string())
            .unwrap_or_default(),
    };
    let mut outcome = RunOutcome {
        instance: instance.clone(),
        machine: machine.clone(),
        exit_code: None,
        kept: false,
    };
    if project.machine(&machine).is_none() {
        return Err((project.unknown_machine(&machine), outcome));
    }
    let up_opts = UpOptions {
        reschedule: false,
        machines: Vec::new(),
        recreate: false,
        parallel: opts.parallel,
        no_provision: false,
        force_provision: false,
        locked: false,
        fresh: false,
        push: false,
    };
    let made = up(ctx, project, &up_opts).await;
    let result = match made {
        Err(e) => Err(e),
        Ok(_) if ctx.cancelled() => Err(interrupted()),
        Ok(_) => {
            ctx.reporter.event(
                Some(&machine),
                Phase::Start,
                &format!("running `{}`", opts.command.join(" ")),
            );
            tokio::select! {
                r = exec(ctx, project, &machine, opts.command.clone(), None) => r.map(Some),
                _ = ctx.interrupted() => Err(interrupted()),
            }
        }
    };
    let failed = !matches!(result, Ok(Some(0)));
    if failed && opts.keep_on_failure && !ctx.cancelled() {
        outcome.kept = true;
        outcome.exit_code = result.as_ref().ok().copied().flatten();
        // `gc` leaves a kept environment alone when its process is gone (only its ttl counts).
        let _ = std::fs::create_dir_all(&project.state.path);
        let _ = std::fs::write(
            project.state.path.join(super::gc::KEPT),
            "kept by --keep-on-failure\n",
        );
        ctx.reporter.event(
            None,
            Phase::Warning,
            &format!(
                "kept the environment for debugging: `envrig --instance {instance} status`, `envrig --instance {instance} ssh {machine}`; `envrig --instance {instance} destroy -f` removes it (`envrig gc` does once its ttl passes)"
            ),
        );
        return match result {
            Ok(_) => Ok(outcome),
            Err(e) => Err((e, outcome)),
        };
    }
    // Destroy whatever happened; a failure here must not hide the command's status.
    let cleanup = destroy(ctx, project, &[]).await;
    match &cleanup {
        Ok(_) => {
            let _ = project.state.remove();
        }
        Err(e) => ctx.reporter.event(
            None,
            Phase::Failed,
            &format!("cannot destroy the run's environment: {e}; `envrig gc` removes it"),
        ),
    }
    match result {
        Ok(code) => {
            outcome.exit_code = code;
            Ok(outcome)
        }
        Err(e) => Err((e, outcome)),
    }
}

fn interrupted() -> OpError {
    OpError::Interrupted {
        done: "the run was stopped and its environment destroyed".to_string(),
        hint: "nothing is left behind; `envrig gc` removes anything a killed run left".to_string(),
    }
}
