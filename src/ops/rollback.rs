//! `rollback [MACHINE...]`: switches machines back to their previous kept generation. The
//! generation left is removed: the Envfile still describes it, so the next `up` of an
//! immutable environment builds it again (from its baked layer, quickly); to stay on the
//! older one, change the Envfile back.

use std::sync::Arc;
use std::time::Duration;

use envrig_provider_api::{Provider, labels};
use serde::Serialize;

use super::context::{Context, at};
use super::error::OpError;
use super::observe::{created, observe};
use super::project::{Project, found_for};
use super::provision::{run_always, wait_ready};
use super::report::Phase;
use super::session::Session;
use super::start::StartRecipe;
use crate::envfile::Machine;
use crate::plan::Observed;

/// One machine switched back.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBack {
    pub machine: String,
    pub from: u32,
    pub to: u32,
    pub id: String,
}

pub async fn rollback(
    ctx: &Context,
    project: &Project,
    machines: &[String],
) -> Result<Vec<RolledBack>, OpError> {
    let selected = project.select(machines, false)?;
    let session = Session::open(ctx, project).await?;
    let observed = observe(ctx, project).await?;
    // Every machine must have somewhere to go back to before anything moves.
    let find = |m: &Machine| {
        let name = m.name.as_str();
        let cur = created(name, &observed)?;
        let prev = observed
            .iter()
            .filter(|o| {
                o.machine == name
                    && o.generation < cur.generation
                    && !o.labels.contains_key(labels::CANDIDATE)
            })
            .max_by_key(|o| o.generation)
            .ok_or_else(|| OpError::Usage(format!(
                "`{name}` has no kept generation to roll back to (generation {} is its only one; `keep` in [project] says how many are kept)",
                cur.generation
            )))?;
        Ok((cur.clone(), prev.clone()))
    };
    let work = found_for(&selected, machines, find, || {
        OpError::Usage("no machine has a kept generation to roll back to".into())
    })?;
    let mut done = Vec::new();
    let mut failures = Vec::new();
    for (m, (cur, prev)) in work {
        let name = m.name.as_str();
        let p = at(ctx, &cur).await?;
        ctx.reporter.event(
            Some(name),
            Phase::Stop,
            &format!(
                "rolling back: generation {} -> {}",
                cur.generation, prev.generation
            ),
        );
        let t0 = std::time::Instant::now();
        if let Err(e) = p.stop_for_handover(&cur.id, Duration::from_secs(30)).await {
            failures.push((
                name.to_string(),
                format!("cannot stop generation {}: {e}", cur.generation),
            ));
            continue;
        }
        if let Err(e) = p.start(&prev.id).await {
            let back = start_again(ctx, project, &p, m, &cur).await;
            failures.push((
                name.to_string(),
                format!("generation {} cannot start ({e}); {back}", prev.generation),
            ));
            continue;
        }
        let switched = t0.elapsed();
        // A rollback is a start: the generation's `always` steps and readiness check run as
        // they did when it was made.
        if let Err(e) = start_as_made(ctx, project, &p, m, &prev).await {
            let _ = p.stop_for_handover(&prev.id, Duration::from_secs(30)).await;
            let back = start_again(ctx, project, &p, m, &cur).await;
            failures.push((
                name.to_string(),
                format!(
                    "generation {} {e}; {back}; fix what it needs and run `envrig rollback {name}` again",
                    prev.generation,
                ),
            ));
            continue;
        }
        ctx.reporter.event(
            Some(name),
            Phase::Done,
            &format!(
                "generation {} runs again (switched in {} ms)",
                prev.generation,
                switched.as_millis()
            ),
        );
        if let Err(e) = p.remove(&cur.id).await {
            ctx.reporter.event(
                Some(name),
                Phase::Warning,
                &format!("cannot remove generation {}: {e}", cur.generation),
            );
        }
        done.push(RolledBack {
            machine: name.to_string(),
            from: cur.generation,
            to: prev.generation,
            id: prev.id.clone(),
        });
    }
    session.refresh(&observe(ctx, project).await?)?;
    if !failures.is_empty() {
        return Err(OpError::Machines {
            total: selected.len(),
            failures,
        });
    }
    Ok(done)
}

/// Starts the generation a failed rollback left, as it was made; says how that went.
async fn start_again(
    ctx: &Context,
    project: &Project,
    p: &Arc<dyn Provider>,
    m: &Machine,
    cur: &Observed,
) -> String {
    let back = match p.start(&cur.id).await {
        Ok(()) => start_as_made(ctx, project, p, m, cur).await,
        Err(e) => Err(format!("cannot start: {e}")),
    };
    match back {
        Ok(()) => format!("generation {} runs again", cur.generation),
        Err(e) => format!("and generation {} {e}", cur.generation),
    }
}

/// Runs the `always` steps and the readiness check that `prev` was made with (its
/// [`StartRecipe`]); a generation made before recipes were written uses the Envfile's.
async fn start_as_made(
    ctx: &Context,
    project: &Project,
    p: &Arc<dyn Provider>,
    m: &Machine,
    prev: &Observed,
) -> Result<(), String> {
    let name = m.name.as_str();
    let recipe = StartRecipe::from_labels(&prev.labels).unwrap_or_else(|| {
        ctx.reporter.event(
            Some(name),
            Phase::Warning,
            "this generation does not say how it was started: running the Envfile's `always` steps and readiness check",
        );
        StartRecipe::of(&project.envfile.dir, m).unwrap_or(StartRecipe {
            always: Vec::new(),
            ready: m.ready.clone().map(|r| super::start::ReadyCheck {
                command: r.command,
                timeout_ms: u64::try_from(r.timeout.as_millis()).unwrap_or(u64::MAX),
                interval_ms: u64::try_from(r.interval.as_millis()).unwrap_or(u64::MAX),
            }),
        })
    });
    if !recipe.always.is_empty() {
        let dir =
            tempfile::tempdir().map_err(|e| format!("cannot make a temporary folder: {e}"))?;
        let steps = recipe
            .steps(dir.path())
            .map_err(|e| format!("cannot prepare its `always` steps: {e}"))?;
        run_always(ctx, p.as_ref(), m, &prev.id, dir.path(), &steps)
            .await
            .map_err(|e| format!("failed its `always` steps: {e}"))?;
    }
    if let Some(ready) = recipe.ready() {
        wait_ready(ctx, p.as_ref(), name, &prev.id, &ready)
            .await
            .map_err(|e| format!("is not ready: {e}"))?;
    }
    Ok(())
}
