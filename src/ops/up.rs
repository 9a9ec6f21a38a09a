//! `up`: create, start (and later provision) the machines of an environment, in dependency
//! order, independent machines in parallel. Idempotent: a second `up` finds every machine
//! running with its settings unchanged and does nothing.

use std::sync::Arc;

use envrig_provider_api::{Provider, ProviderError};
use futures_util::StreamExt;

use super::{
    Context, OpError, Phase, Project, lock, machine_spec, observe, provider, record, waves,
};
use crate::envfile::Machine;
use crate::plan::{Action, MachinePlan, plan_up};

#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Machines to bring up (with their dependencies); all when empty.
    pub machines: Vec<String>,
    /// Replace machines whose settings changed (`reload`, `up --recreate`).
    pub recreate: bool,
    /// How many machines are worked on at once.
    pub parallel: usize,
}

/// What `up` did to one machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpOutcome {
    pub machine: String,
    /// created, started, unchanged, stale, recreated, skipped, failed.
    pub result: String,
    pub id: Option<String>,
}

pub async fn up(
    ctx: &Context,
    project: &Project,
    opts: &UpOptions,
) -> Result<Vec<UpOutcome>, OpError> {
    let selected = project.select(&opts.machines, true)?;
    for m in &selected {
        if ctx.registry.capabilities(&m.provider).is_none() {
            return Err(OpError::Usage(format!(
                "machine `{}` uses the `{}` provider, which this build of envrig does not have",
                m.name, m.provider
            )));
        }
    }
    if selected
        .iter()
        .any(|m| !m.provision.is_empty() || m.ready.is_some())
    {
        ctx.reporter.event(
            None,
            Phase::Warning,
            "this version of envrig does not run `provision` steps or `ready` checks yet; they were validated but not run",
        );
    }
    let _lock = lock(ctx, project).await?;
    let observed = observe(ctx, project).await?;
    let plan = plan_up(&project.desired(&selected), &observed, opts.recreate);
    for o in &plan.orphans {
        ctx.reporter.event(
            Some(&o.machine),
            Phase::Warning,
            &format!(
                "is no longer in the Envfile; `envrig destroy {}` removes it",
                o.machine
            ),
        );
    }

    let mut outcomes = Vec::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    for wave in waves(&selected) {
        let mut jobs = Vec::new();
        for m in wave {
            let Some(mp) = plan.machines.iter().find(|p| p.machine == m.name) else {
                continue;
            };
            if let Some(dep) = m
                .depends_on
                .iter()
                .find(|d| failed.iter().any(|(f, _)| f == d.as_str()))
            {
                outcomes.push(UpOutcome {
                    machine: m.name.to_string(),
                    result: "skipped".into(),
                    id: None,
                });
                failed.push((m.name.to_string(), format!("its dependency `{dep}` failed")));
                continue;
            }
            jobs.push(run_one(ctx, project, m, mp));
        }
        let mut results = futures_util::stream::iter(jobs).buffer_unordered(opts.parallel.max(1));
        while let Some((machine, r)) = results.next().await {
            match r {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    ctx.reporter.event(Some(&machine), Phase::Failed, &e);
                    outcomes.push(UpOutcome {
                        machine: machine.clone(),
                        result: "failed".into(),
                        id: None,
                    });
                    failed.push((machine, e));
                }
            }
        }
    }

    // The cache is refreshed from the engines, so it never records what did not happen;
    // when nothing changed, what was seen before is still true.
    let changed = outcomes
        .iter()
        .any(|o| o.result != "unchanged" && o.result != "stale");
    let observed = if changed || !plan.machines.iter().all(|m| m.duplicates.is_empty()) {
        observe(ctx, project).await?
    } else {
        observed
    };
    record(project, &_lock, &observed)?;
    if !failed.is_empty() {
        return Err(OpError::Machines {
            total: selected.len(),
            failures: failed,
        });
    }
    Ok(outcomes)
}

async fn run_one(
    ctx: &Context,
    project: &Project,
    m: &Machine,
    mp: &MachinePlan,
) -> (String, Result<UpOutcome, String>) {
    let name = m.name.to_string();
    let r = async {
        let p = provider(ctx, &m.provider).await.map_err(|e| e.to_string())?;
        for dup in &mp.duplicates {
            ctx.reporter.event(Some(&name), Phase::Remove, &format!("removing duplicate {dup}"));
            p.remove(dup).await.map_err(|e| e.to_string())?;
        }
        let outcome = |result: &str, id: &str| UpOutcome {
            machine: name.clone(),
            result: result.into(),
            id: Some(id.to_string()),
        };
        match &mp.action {
            Action::Keep { id } => Ok(outcome("unchanged", id)),
            Action::Stale { id } => {
                ctx.reporter.event(
                    Some(&name),
                    Phase::Warning,
                    &format!("its settings changed since it was created; `envrig reload {name}` recreates it"),
                );
                Ok(outcome("stale", id))
            }
            Action::Start { id } => {
                ctx.reporter.event(Some(&name), Phase::Start, "starting");
                p.start(id).await.map_err(|e| format!("cannot start it: {e}"))?;
                ctx.reporter.event(Some(&name), Phase::Done, "started");
                Ok(outcome("started", id))
            }
            Action::Create => {
                let id = create_and_start(ctx, project, &p, m, mp.generation).await?;
                Ok(outcome("created", &id))
            }
            Action::Recreate { id, reason } => {
                ctx.reporter.event(Some(&name), Phase::Remove, &format!("recreating: {reason}"));
                p.remove(id).await.map_err(|e| format!("cannot remove the old one: {e}"))?;
                let id = create_and_start(ctx, project, &p, m, mp.generation).await?;
                Ok(outcome("recreated", &id))
            }
        }
    }
    .await;
    (name, r)
}

async fn create_and_start(
    ctx: &Context,
    project: &Project,
    p: &Arc<dyn Provider>,
    m: &Machine,
    generation: u32,
) -> Result<String, String> {
    let name = m.name.as_str();
    let spec = machine_spec(project, m, generation, &super::now_rfc3339());
    ctx.reporter.event(Some(name), Phase::Create, "creating");
    let info = match p.create(&spec).await {
        Ok(info) => info,
        Err(ProviderError::NotFound { .. }) => {
            // The base is missing: fetch it (with progress), then create again.
            ctx.reporter
                .event(Some(name), Phase::Pull, &format!("fetching {}", spec.base));
            let reporter = ctx.reporter.clone();
            let mut progress = |pr: envrig_provider_api::PullProgress| reporter.pull(name, &pr);
            p.ensure_base(&spec.base, &mut progress)
                .await
                .map_err(|e| format!("cannot fetch `{}`: {e}", spec.base))?;
            p.create(&spec)
                .await
                .map_err(|e| format!("cannot create it: {e}"))?
        }
        Err(e) => return Err(format!("cannot create it: {e}")),
    };
    ctx.reporter.event(Some(name), Phase::Start, "starting");
    p.start(&info.id)
        .await
        .map_err(|e| format!("created {} but cannot start it: {e}", info.resource_name))?;
    ctx.reporter.event(Some(name), Phase::Done, "running");
    Ok(info.id)
}
