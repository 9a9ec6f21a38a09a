//! `destroy`: removes machines and everything created for them, dependants first, each wave
//! in parallel; idempotent.

use serde::Serialize;

use envrig_provider_api::Selector;

use super::context::{Context, at, used_engines};
use super::error::OpError;
use super::observe::{observe, observe_all};
use super::parallel::each_in_wave;
use super::project::Project;
use super::report::Phase;
use super::session::Session;

#[derive(Debug, Clone, Default, Serialize)]
pub struct DestroySummary {
    /// Machines whose resources were removed.
    pub machines: Vec<String>,
    /// Other resources removed (networks, volumes).
    pub resources: Vec<String>,
}

/// Removes the named machines (every resource of them, every generation), or the whole
/// environment, orphans and networks included, when `machines` is empty.
pub async fn destroy(
    ctx: &Context,
    project: &Project,
    machines: &[String],
) -> Result<DestroySummary, OpError> {
    // Only to check the names: an orphan's resources are removed too.
    project.select(machines, false)?;
    let session = Session::open(ctx, project).await?;
    let (observed, unreachable) = observe_all(ctx, project).await?;
    let doomed: Vec<_> = observed
        .iter()
        .filter(|o| machines.is_empty() || machines.contains(&o.machine))
        .collect();
    // Orphans (no longer in the Envfile) first, then dependants before their dependencies.
    let declared: Vec<&crate::envfile::Machine> = project.envfile.machines.iter().collect();
    let mut order: Vec<Vec<String>> = vec![
        doomed
            .iter()
            .filter(|o| project.machine(&o.machine).is_none())
            .map(|o| o.machine.clone())
            .collect(),
    ];
    order.extend(project.teardown_waves(&declared));

    let mut summary = DestroySummary::default();
    let mut failures = Vec::new();
    for wave in order {
        let wave = doomed.iter().copied().filter(|o| wave.contains(&o.machine));
        let failed = each_in_wave(
            wave,
            |o| async move {
                let p = at(ctx, o).await?;
                ctx.reporter.event(
                    Some(&o.machine),
                    Phase::Remove,
                    &format!("removing {}", o.resource_name),
                );
                p.remove(&o.id)
                    .await
                    .map_err(|e| OpError::provider(format!("cannot remove {}", o.resource_name), e))
            },
            |o| {
                if !summary.machines.contains(&o.machine) {
                    summary.machines.push(o.machine.clone());
                }
            },
        )
        .await;
        failures.extend(failed);
    }
    summary.machines.sort();
    if failures.is_empty() && unreachable.is_empty() {
        // A machine's snapshots go with it.
        let gone = super::snapshot::delete_snapshots_of(ctx, project, machines).await?;
        summary.resources.extend(gone);
    }
    // What the engine would not remove once every machine was gone (Docker 20.10 now and
    // then keeps an endpoint on a network after many containers went at once).
    let mut stuck = None;
    if machines.is_empty() && failures.is_empty() && unreachable.is_empty() {
        let selector = Selector::env(&project.identity.env_id);
        let (engines, _) = used_engines(ctx, project).await;
        for e in engines {
            match e.p.purge(&selector).await {
                Ok(removed) => summary.resources.extend(removed),
                Err(err) => stuck = Some(err),
            }
        }
    }
    let left = if failures.is_empty() && machines.is_empty() && unreachable.is_empty() {
        Vec::new()
    } else {
        observe(ctx, project).await?
    };
    session.refresh_reachable(&left, &unreachable)?;
    // What is on engines that do not answer stays, and is said.
    for u in &unreachable {
        let there = session.machines_on(&u.provider, &u.engine);
        let there: Vec<_> = there
            .into_iter()
            .filter(|m| machines.is_empty() || machines.contains(m))
            .collect();
        failures.push((
            format!("engine `{}`", u.engine),
            format!(
                "unreachable ({}): {} left there; `envrig destroy` again once it answers",
                u.reason,
                if there.is_empty() {
                    "whatever of this environment is".to_string()
                } else {
                    format!("machines {}", there.join(", "))
                }
            ),
        ));
    }
    if let Some(e) = stuck {
        return Err(OpError::provider(
            format!(
                "every machine of `{}` is removed, but not all of its networks and volumes; `envrig gc` removes them once nothing holds them (a Docker network that \"has active endpoints\" while no container uses it is a Docker 20.10 leak that only a restart of dockerd clears)", // names-provider: a known engine bug, explained
                project.envfile.project.name
            ),
            e,
        ));
    }
    if machines.is_empty() {
        // What a killed export or import left in the project's work folder.
        super::staging::sweep(&project.identity.folder);
    }
    if project.identity.instance.is_some() && machines.is_empty() && failures.is_empty() {
        // A run's environment is gone whole: so is its state folder.
        drop(session);
        let _ = project.state.remove();
    }
    if !failures.is_empty() {
        return Err(OpError::Machines {
            total: doomed.len(),
            failures,
        });
    }
    Ok(summary)
}
