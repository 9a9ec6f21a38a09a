//! What the engines report of an environment: every resource labelled with its env id,
//! decoded into [`Observed`].

use std::collections::BTreeMap;

use envrig_provider_api::Selector;

use super::context::{Context, Unreachable, used_engines};
use super::error::OpError;
use super::project::Project;
use super::report::Phase;
use crate::plan::{Observed, current};

/// Every resource of this environment on every provider it may use, decoded. Resources
/// being removed (by a command that died half-way) are waited for, briefly: they are about
/// to be gone and still hold their names.
/// Engines that do not answer are said (a warning) and their machines not seen.
pub async fn observe(ctx: &Context, project: &Project) -> Result<Vec<Observed>, OpError> {
    let (seen, unreachable) = observe_all(ctx, project).await?;
    for u in &unreachable {
        ctx.reporter.event(
            None,
            Phase::Warning,
            &format!(
                "the {} engine `{}` is unreachable ({}): its machines are not seen",
                u.provider, u.engine, u.reason
            ),
        );
    }
    Ok(seen)
}

/// Every resource of this environment on every engine that answers, and the engines that
/// do not. When no engine of a provider the environment uses answers and it has only
/// its local one, that is an error, as it was before endpoints.
pub async fn observe_all(
    ctx: &Context,
    project: &Project,
) -> Result<(Vec<Observed>, Vec<Unreachable>), OpError> {
    for _ in 0..100 {
        let (seen, down) = observe_once(ctx, project).await?;
        if !seen
            .iter()
            .any(|o| o.state == envrig_provider_api::MachineState::Removing)
        {
            return Ok((seen, down));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    observe_once(ctx, project).await
}

async fn observe_once(
    ctx: &Context,
    project: &Project,
) -> Result<(Vec<Observed>, Vec<Unreachable>), OpError> {
    let selector = Selector::env(&project.identity.env_id);
    let (engines, mut down) = used_engines(ctx, project).await;
    local_only_down(ctx, &down)?;
    let lists = engines.iter().map(|e| e.p.list(&selector));
    let lists = futures_util::future::join_all(lists).await;
    let mut out = Vec::new();
    for (e, r) in engines.iter().zip(lists) {
        match r {
            Ok(infos) => out.extend(
                infos
                    .into_iter()
                    .filter_map(|i| Observed::from_info(&e.provider, &e.name, i)),
            ),
            Err(err) if ctx.engines.of(&e.provider).is_none() => {
                return Err(OpError::provider(
                    format!("cannot list the {} machines", e.provider),
                    err,
                ));
            }
            Err(err) => down.push(Unreachable {
                provider: e.provider.clone(),
                engine: e.name.clone(),
                reason: err.to_string(),
            }),
        }
    }
    Ok((out, down))
}

/// A provider with only its local engine, which does not answer: an error, as before
/// endpoints existed (there is nowhere else its machines could be).
pub(super) fn local_only_down(ctx: &Context, down: &[Unreachable]) -> Result<(), OpError> {
    match down.iter().find(|u| ctx.engines.of(&u.provider).is_none()) {
        Some(u) => Err(OpError::Unreachable(u.clone())),
        None => Ok(()),
    }
}

/// The current resource of `machine` (see [`current`]); "not created" when it has none.
pub(super) fn created<'a>(
    machine: &str,
    observed: &'a [Observed],
) -> Result<&'a Observed, OpError> {
    current(machine, observed)
        .0
        .ok_or_else(|| OpError::NotRunning {
            machine: machine.to_string(),
            state: "not created".into(),
        })
}

/// The current resource of `machine` when it can run commands; else why not (its state).
pub(super) fn runnable<'a>(
    machine: &str,
    observed: &'a [Observed],
) -> Result<&'a Observed, OpError> {
    let o = created(machine, observed)?;
    if !o.state.can_exec() {
        let state = if o.state.is_suspended() {
            "suspended".to_string()
        } else {
            o.state.to_string()
        };
        return Err(OpError::NotRunning {
            machine: machine.to_string(),
            state,
        });
    }
    Ok(o)
}

/// Group observed resources by machine.
pub fn by_machine(observed: &[Observed]) -> BTreeMap<&str, Vec<&Observed>> {
    let mut m: BTreeMap<&str, Vec<&Observed>> = BTreeMap::new();
    for o in observed {
        m.entry(o.machine.as_str()).or_default().push(o);
    }
    m
}
