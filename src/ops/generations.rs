//! An immutable machine's generations as `up` handles them: a changed machine becomes a
//! new generation, built beside the one that serves when its layer is missing, then
//! switched to (the old one stopped and kept); generations beyond `keep` are pruned.
//! `rollback` switches back.

use super::bake::{baked_steps, layer_for};
use super::context::{Context, at};
use super::create::{Job, create};
use super::observe::observe;
use super::project::Project;
use super::provision::{Target, provision_machine, wait_ready};
use super::report::Phase;
use crate::envfile::Machine;
use crate::provision::Mode;

/// Keeps `keep` generations of each machine (the current one and the newest others);
/// removes the older ones. Best effort: what cannot be removed now is said and left for the
/// next `up` or `destroy`.
pub(super) async fn prune_generations(ctx: &Context, project: &Project, selected: &[&Machine]) {
    let Ok(observed) = observe(ctx, project).await else {
        return;
    };
    let keep = project.envfile.project.keep.max(1) as usize;
    for m in selected {
        let name = m.name.as_str();
        let Some(cur) = crate::plan::current(name, &observed).0 else {
            continue;
        };
        let mut others: Vec<&crate::plan::Observed> = observed
            .iter()
            .filter(|o| {
                o.machine == name
                    && o.id != cur.id
                    && !o
                        .labels
                        .contains_key(envrig_provider_api::labels::CANDIDATE)
            })
            .collect();
        others.sort_by_key(|o| std::cmp::Reverse(o.generation));
        for old in others.into_iter().skip(keep - 1) {
            let Ok(p) = at(ctx, old).await else {
                continue;
            };
            match p.remove(&old.id).await {
                Ok(()) => ctx.reporter.event(
                    Some(name),
                    Phase::Remove,
                    &format!("removed generation {} (keep = {keep})", old.generation),
                ),
                Err(e) => ctx.reporter.event(
                    Some(name),
                    Phase::Warning,
                    &format!("cannot remove generation {}: {e}", old.generation),
                ),
            }
        }
    }
}

/// Replaces `old` by generation `generation`, never patching it: when the new generation's
/// provisioned state is not baked yet, it is built beside `old` (which keeps serving) as a
/// candidate with no host ports and no names, provisioned, checked for readiness and baked,
/// then removed. The new generation is created from that layer with the names and ports,
/// and the switch is made: `old` stopped (kept for `rollback`), the new one started. When it
/// cannot start, `old` is started again and kept. A dead `old` is removed. Returns the new
/// generation's id, and the layer built for it when there was none.
pub(super) async fn switch(
    job: Job<'_>,
    old: &str,
    dead: bool,
    generation: u32,
) -> Result<(String, Option<String>), String> {
    let Job {
        ctx, project, p, m, ..
    } = job;
    let name = m.name.as_str();
    let (candidate, built) = if !dead
        && job.resolved.layer(name).is_none()
        && baked_steps(m) > 0
        && project.envfile.project.bake
    {
        let (c, layer) = build_beside(job, generation).await?;
        (Some(c), layer)
    } else {
        (None, None)
    };
    // The new generation starts from the layer just built, when there is one.
    let with_layer = built
        .as_ref()
        .map(|layer| job.resolved.with_layer(name, layer));
    let job = Job {
        resolved: with_layer.as_ref().unwrap_or(job.resolved),
        ..job
    };
    // The build goes once the new generation exists: until then it holds the layer's
    // fingerprint, so a `gc` meanwhile keeps the layer.
    let new = create(job, generation, false).await.map(|(info, _)| info);
    if let Some(c) = &candidate {
        let _ = p.remove(c).await;
    }
    let new = new?;
    if dead {
        let _ = p.remove(old).await;
    } else {
        ctx.reporter.event(
            Some(name),
            Phase::Stop,
            &format!("switching: stopping generation {}", generation - 1),
        );
    }
    let t0 = std::time::Instant::now();
    if !dead
        && let Err(e) = p
            .stop_for_handover(old, std::time::Duration::from_secs(30))
            .await
    {
        let _ = p.remove(&new.id).await;
        return Err(format!("cannot stop the previous generation: {e}"));
    }
    if let Err(e) = p.start(&new.id).await {
        let _ = p.remove(&new.id).await;
        let back = if dead { Ok(()) } else { p.start(old).await };
        return Err(format!(
            "the new generation cannot start ({e}); {}",
            match back {
                Ok(()) if dead => "nothing runs".to_string(),
                Ok(()) => "the previous one runs again".to_string(),
                Err(b) => format!("and the previous one cannot start again either: {b}"),
            }
        ));
    }
    ctx.reporter.event(
        Some(name),
        Phase::Start,
        &format!(
            "switched to generation {generation} in {} ms{}",
            t0.elapsed().as_millis(),
            if dead {
                String::new()
            } else {
                format!(
                    " (generation {} stopped, kept for `envrig rollback`)",
                    generation - 1
                )
            }
        ),
    );
    Ok((new.id, built))
}

/// Builds the provisioned state of `m`'s generation `generation` beside the one that serves:
/// a candidate machine without host ports or names, provisioned, checked and baked into the
/// layer of its fingerprint; later machines of that fingerprint start from it. Returns the
/// candidate, for the caller to remove (it is removed here when the build fails), and the
/// layer when it is now on this host.
async fn build_beside(job: Job<'_>, generation: u32) -> Result<(String, Option<String>), String> {
    let Job {
        ctx,
        session,
        project,
        resolved,
        p,
        m,
        ..
    } = job;
    let name = m.name.as_str();
    ctx.reporter.event(
        Some(name),
        Phase::Create,
        &format!(
            "building generation {generation} beside generation {} (which keeps serving)",
            generation - 1
        ),
    );
    let (info, _) = create(job, generation, true).await?;
    let id = info.id.clone();
    let built = async {
        p.start(&id)
            .await
            .map_err(|e| format!("cannot start the new generation's build: {e}"))?;
        for l in p
            .refresh_synced(&id)
            .await
            .map_err(|e| format!("cannot copy its synced folders: {e}"))?
        {
            ctx.reporter.event(Some(name), Phase::Warning, &l);
        }
        let target = Target {
            provider: p,
            machine: m,
            id: &id,
            fresh: true,
            from_layer: false,
            bake: true,
        };
        provision_machine(ctx, session, project, resolved, target, &Mode::Pending).await?;
        if let Some(ready) = &m.ready {
            wait_ready(ctx, p.as_ref(), name, &id, ready).await?;
        }
        Ok::<(), String>(())
    }
    .await;
    if let Err(e) = built {
        let _ = p.remove(&id).await;
        return Err(e);
    }
    let mut built = None;
    if let Some(fp) = resolved.fingerprint(name) {
        let layer = layer_for(project, m, fp);
        if let Ok(Some(_)) = p.resolve_base(&layer).await {
            built = Some(layer);
        }
    }
    Ok((id, built))
}
