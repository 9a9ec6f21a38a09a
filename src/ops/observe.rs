//! What the engines report of an environment: every resource labelled with its env id,
//! decoded into [`Observed`].

use std::collections::BTreeMap;

use envrig_provider_api::Selector;

use super::context::{Context, used_providers};
use super::error::OpError;
use super::project::Project;
use crate::plan::{Observed, current};

/// Every resource of this environment on every provider it may use, decoded. Resources
/// being removed (by a command that died half-way) are waited for, briefly: they are about
/// to be gone and still hold their names.
pub async fn observe(ctx: &Context, project: &Project) -> Result<Vec<Observed>, OpError> {
    for _ in 0..100 {
        let seen = observe_once(ctx, project).await?;
        if !seen
            .iter()
            .any(|o| o.state == envrig_provider_api::MachineState::Removing)
        {
            return Ok(seen);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    observe_once(ctx, project).await
}

async fn observe_once(ctx: &Context, project: &Project) -> Result<Vec<Observed>, OpError> {
    let selector = Selector::env(&project.identity.env_id);
    let mut out = Vec::new();
    for (name, p) in used_providers(ctx, project).await? {
        let infos = p
            .list(&selector)
            .await
            .map_err(|e| OpError::provider(format!("cannot list the {name} machines"), e))?;
        out.extend(
            infos
                .into_iter()
                .filter_map(|i| Observed::from_info(&name, i)),
        );
    }
    Ok(out)
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
        return Err(OpError::NotRunning {
            machine: machine.to_string(),
            state: o.state.to_string(),
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
