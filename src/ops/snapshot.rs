//! Named snapshots of machines: `snapshot save|restore|list|delete`, and `package`.
//!
//! With no machine named, every machine of the environment is saved at one moment: all
//! running machines are paused, then all saved, then all resumed (resumed also when a save
//! fails), so the set is consistent.

use std::collections::BTreeMap;

use envrig_provider_api::{ProviderError, Selector, Snapshot, labels};
use serde::Serialize;

use super::context::{Context, EngineRef, at, on, used_engines};
use super::error::OpError;
use super::observe::{created, observe};
use super::project::{Project, found_for};
use super::report::Phase;
use super::resolved::Resolved;
use super::session::Session;
use super::spec::machine_spec;
use crate::envfile::{Machine, Name};
use crate::plan::{Observed, current};

/// One snapshot name of an environment, over its machines.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRow {
    pub name: String,
    pub machines: Vec<String>,
    pub created: String,
}

/// Every snapshot of the environment, on every engine it uses (an engine that does not
/// answer is an error: a set would be listed without its machines there).
pub async fn snapshots(
    ctx: &Context,
    project: &Project,
) -> Result<Vec<(EngineRef, Snapshot)>, OpError> {
    let selector = Selector::env(&project.identity.env_id);
    let (engines, down) = used_engines(ctx, project).await;
    if let Some(u) = down.into_iter().next() {
        return Err(OpError::Unreachable(u));
    }
    let lists = engines.iter().map(|e| e.p.snapshot_list(&selector));
    let mut out = Vec::new();
    for (e, r) in engines
        .iter()
        .zip(futures_util::future::join_all(lists).await)
    {
        let where_ = EngineRef {
            provider: e.provider.clone(),
            engine: e.name.clone(),
        };
        for s in r.map_err(|err| {
            OpError::provider(
                format!("cannot list the {} snapshots on `{}`", e.provider, e.name),
                err,
            )
        })? {
            out.push((where_.clone(), s));
        }
    }
    Ok(out)
}

/// The snapshots `snapshot list` shows and `restore` and `export` use: whole sets only
/// (see [`super::snapset`]).
pub async fn listed_snapshots(
    ctx: &Context,
    project: &Project,
) -> Result<Vec<(EngineRef, Snapshot)>, OpError> {
    Ok(super::snapset::listed(&snapshots(ctx, project).await?))
}

/// Deletes the temporary snapshots of exports that were killed (their process is gone).
async fn delete_abandoned(ctx: &Context, all: &[(EngineRef, Snapshot)]) {
    for (pname, s) in all.iter().filter(|(_, s)| super::snapset::abandoned(s)) {
        if let Ok(p) = on(ctx, pname).await {
            let _ = p.snapshot_delete(s).await;
        }
    }
}

fn check_name(name: &str) -> Result<(), OpError> {
    Name::parse(name)
        .map(|_| ())
        .map_err(|e| OpError::Usage(format!("snapshot name: {e}")))
}

/// The machines a snapshot command works on, with their current resources.
async fn targets<'a>(
    ctx: &Context,
    project: &'a Project,
    machines: &[String],
) -> Result<(Vec<&'a Machine>, Vec<Observed>), OpError> {
    let selected = project.select(machines, false)?;
    let observed = observe(ctx, project).await?;
    Ok((selected, observed))
}

/// `snapshot save NAME [MACHINE...] [--force]`.
pub async fn snapshot_save(
    ctx: &Context,
    project: &Project,
    name: &str,
    machines: &[String],
    force: bool,
) -> Result<Vec<String>, OpError> {
    check_name(name)?;
    let _session = Session::open(ctx, project).await?;
    Ok(
        save_locked(ctx, project, name, machines, force, false, false)
            .await?
            .into_iter()
            .map(|(_, s)| s.machine)
            .collect(),
    )
}

/// Saves with the project's lock already held; returns the snapshots made, each with its provider. With `flush`,
/// running machines first write what they hold in memory to their disks (so a disk alone
/// holds every file: an export made now), and the snapshots say so (`dev.envrig.flushed`);
/// without, the moment is taken at once (memory included where the engine keeps it), and
/// an export of it later does what is needed. With `temp`, the snapshots are temporary
/// (never listed; an export's moment) and owned by this process.
pub(super) async fn save_locked(
    ctx: &Context,
    project: &Project,
    name: &str,
    machines: &[String],
    force: bool,
    flush: bool,
    temp: bool,
) -> Result<Vec<(EngineRef, Snapshot)>, OpError> {
    // What exists and which snapshots exist, asked at once.
    let (targets, found) = tokio::join!(targets(ctx, project, machines), snapshots(ctx, project));
    let (selected, observed) = targets?;
    let work = found_for(
        &selected,
        machines,
        |m| created(m.name.as_str(), &observed).cloned(),
        || OpError::Usage("no machine of this environment exists: `envrig up` first".into()),
    )?;
    // A machine whose memory is saved away is not saved again beside it.
    if let Some((m, _)) = work
        .iter()
        .find(|(_, o)| o.state == envrig_provider_api::MachineState::Suspended)
    {
        return Err(OpError::Usage(format!(
            "`{}` is suspended: `envrig resume {}` first, then save it",
            m.name, m.name
        )));
    }
    let all = found?;
    delete_abandoned(ctx, &all).await;
    // A set a killed save left half-made is not listed, and is replaced without `--force`.
    let existing = super::snapset::listed(&all);
    // Running machines flush their files to disk first, all at once.
    let flushes = work
        .iter()
        .filter(|(_, o)| flush && o.state.can_exec())
        .map(|(_, o)| async move {
            if let Ok(p) = at(ctx, o).await {
                let _ = p.flush(&o.id).await;
            }
        });
    futures_util::future::join_all(flushes).await;
    let clash: Vec<&(EngineRef, Snapshot)> = existing
        .iter()
        .filter(|(_, s)| s.name == name && work.iter().any(|(m, _)| m.name.as_str() == s.machine))
        .collect();
    if !clash.is_empty() && !force {
        return Err(OpError::Usage(format!(
            "snapshot `{name}` exists (machines {}); `--force` replaces it",
            clash
                .iter()
                .map(|(_, s)| format!("`{}`", s.machine))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }

    // One moment for all: pause every running machine, save each, resume all. A single
    // machine is saved consistently by its provider alone (one pause fewer).
    let mut paused = Vec::new();
    let mut result: Result<Vec<(EngineRef, Snapshot)>, OpError> = Ok(Vec::new());
    for (m, o) in &work {
        if work.len() > 1 && o.state.can_exec() {
            let p = at(ctx, o).await?;
            match p.pause(&o.id).await {
                Ok(()) => paused.push((p, o.id.clone())),
                // An engine that cannot freeze a machine: saved running, and said.
                Err(e @ ProviderError::NotSupported { .. }) => ctx.reporter.event(
                    Some(m.name.as_str()),
                    Phase::Warning,
                    &format!("saved as it runs, not at one moment with the others: {e}"),
                ),
                Err(e) => {
                    result = Err(OpError::provider(format!("cannot pause `{}`", m.name), e));
                    break;
                }
            }
        }
    }
    if result.is_ok() {
        let created = super::time::now_rfc3339();
        let mut set = super::snapset::set_labels(
            &work
                .iter()
                .map(|(m, _)| m.name.as_str())
                .collect::<Vec<_>>(),
        );
        if temp {
            set.insert(
                labels::SNAPSHOT_TEMP.to_string(),
                crate::identity::owner_token(),
            );
        }
        let set = &set;
        let saves = work.iter().map(|(m, o)| {
            let created = created.clone();
            async move {
                let p = at(ctx, o).await?;
                ctx.reporter.event(
                    Some(m.name.as_str()),
                    Phase::Create,
                    &format!("saving snapshot `{name}`"),
                );
                let spec = spec_of(project, m, o);
                let mut l = project.identity.labels(&m.name, o.generation, &created);
                l.insert(labels::PROVIDER.to_string(), o.provider.clone());
                if flush {
                    l.insert(labels::FLUSHED.to_string(), "1".to_string());
                }
                l.extend(set.clone());
                p.snapshot_save(
                    &o.id,
                    name,
                    &spec,
                    &l,
                    o.state.can_exec() || o.state == envrig_provider_api::MachineState::Paused,
                )
                .await
                .map(|s| {
                    let r = EngineRef {
                        provider: o.provider.clone(),
                        engine: o.engine.clone(),
                    };
                    (r, s)
                })
                .map_err(|e| OpError::provider(format!("cannot save `{}`", m.name), e))
            }
        });
        result = futures_util::future::join_all(saves)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>();
    }
    for (p, id) in paused {
        if let Err(e) = p.unpause(&id).await {
            ctx.reporter
                .event(None, Phase::Warning, &format!("cannot resume {id}: {e}"));
        }
    }
    // A replaced snapshot lost its name (its tag) to the new one: what is left of it goes
    // with the environment (`destroy`).
    let saved = result?;
    Ok(saved)
}

/// The spec a machine's resource was made with: the Envfile's, with the labels it has.
fn spec_of(project: &Project, m: &Machine, o: &Observed) -> envrig_provider_api::MachineSpec {
    let mut spec = machine_spec(
        project,
        &Resolved::default(),
        m,
        o.generation,
        o.labels
            .get(labels::CREATED)
            .map(String::as_str)
            .unwrap_or(""),
    );
    spec.labels = o.labels.clone();
    spec.resource_name = o.resource_name.clone();
    spec
}

/// `snapshot restore NAME [MACHINE...]`: every machine the snapshot holds (or those named)
/// goes back to the saved state, in place: same name, same ports.
pub async fn snapshot_restore(
    ctx: &Context,
    project: &Project,
    name: &str,
    machines: &[String],
) -> Result<Vec<String>, OpError> {
    check_name(name)?;
    let session = Session::open(ctx, project).await?;
    let (selected, observed) = targets(ctx, project, machines).await?;
    let all = super::snapset::listed(&snapshots(ctx, project).await?);
    let find = |m: &Machine| {
        all.iter()
            .find(|(_, s)| s.name == name && s.machine == m.name.as_str())
            .ok_or_else(|| OpError::Usage(format!("snapshot `{name}` has no machine `{}`", m.name)))
    };
    let work = found_for(&selected, machines, find, || {
        OpError::Usage(format!(
            "no snapshot named `{name}`; `envrig snapshot list` lists them"
        ))
    })?;
    let jobs = work.iter().map(|(m, (pname, snap))| {
        let cur = current(m.name.as_str(), &observed).0.map(|o| o.id.clone());
        async move {
            let p = on(ctx, pname).await?;
            ctx.reporter.event(
                Some(m.name.as_str()),
                Phase::Create,
                &format!("restoring snapshot `{name}`"),
            );
            let info = p
                .snapshot_restore(snap, cur.as_deref(), &snap.spec)
                .await
                .map_err(|e| OpError::provider(format!("cannot restore `{}`", m.name), e))?;
            if info.state == envrig_provider_api::MachineState::Running
                && let Err(w) =
                    super::network::name_on_shared(ctx, project, m, p.as_ref(), &info.id).await
            {
                ctx.reporter
                    .event(Some(m.name.as_str()), Phase::Warning, &w);
            }
            Ok::<_, OpError>(m.name.to_string())
        }
    });
    let restored = futures_util::future::join_all(jobs)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    session.refresh(&observe(ctx, project).await?)?;
    Ok(restored)
}

/// `snapshot list`: one row per name.
pub async fn snapshot_list(ctx: &Context, project: &Project) -> Result<Vec<SnapshotRow>, OpError> {
    let mut rows: BTreeMap<String, SnapshotRow> = BTreeMap::new();
    for (_, s) in listed_snapshots(ctx, project).await? {
        let row = rows.entry(s.name.clone()).or_insert_with(|| SnapshotRow {
            name: s.name.clone(),
            machines: Vec::new(),
            created: s.created.clone(),
        });
        row.machines.push(s.machine.clone());
        row.machines.sort();
        if s.created < row.created {
            row.created = s.created.clone();
        }
    }
    Ok(rows.into_values().collect())
}

/// `snapshot delete NAME`.
pub async fn snapshot_delete(
    ctx: &Context,
    project: &Project,
    name: &str,
) -> Result<Vec<String>, OpError> {
    check_name(name)?;
    let _session = Session::open(ctx, project).await?;
    let mut deleted = Vec::new();
    for (pname, s) in snapshots(ctx, project)
        .await?
        .into_iter()
        .filter(|(_, s)| s.name == name)
    {
        let p = on(ctx, &pname).await?;
        p.snapshot_delete(&s).await.map_err(|e| {
            OpError::provider(
                format!("cannot delete snapshot `{name}` of `{}`", s.machine),
                e,
            )
        })?;
        deleted.push(s.machine);
    }
    if deleted.is_empty() {
        return Err(OpError::Usage(format!("no snapshot named `{name}`")));
    }
    deleted.sort();
    Ok(deleted)
}

/// Deletes the snapshots of `machines` (all when empty); used by `destroy`.
pub async fn delete_snapshots_of(
    ctx: &Context,
    project: &Project,
    machines: &[String],
) -> Result<Vec<String>, OpError> {
    let mut deleted = Vec::new();
    for (pname, s) in snapshots(ctx, project).await? {
        if !machines.is_empty() && !machines.contains(&s.machine) {
            continue;
        }
        let p = on(ctx, &pname).await?;
        p.snapshot_delete(&s)
            .await
            .map_err(|e| OpError::provider("cannot delete a snapshot", e))?;
        deleted.push(format!("snapshot {} of {}", s.name, s.machine));
    }
    Ok(deleted)
}

/// `package MACHINE --as BOX`: bakes a machine into a new base, labelled with the
/// fingerprint of what made it (its settings and the steps that ran).
pub async fn package(
    ctx: &Context,
    project: &Project,
    machine: &str,
    as_box: &str,
) -> Result<String, OpError> {
    crate::envfile::values::check_image_ref(as_box).map_err(OpError::Usage)?;
    let m = project
        .machine(machine)
        .ok_or_else(|| project.unknown_machine(machine))?;
    let session = Session::open(ctx, project).await?;
    let observed = observe(ctx, project).await?;
    let o = created(machine, &observed)?;
    let p = at(ctx, o).await?;
    let steps = session
        .provisioned(machine, &o.id)
        .map(|r| {
            r.steps
                .iter()
                .map(|s| s.hash.clone())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let fingerprint =
        crate::identity::sha256_hex(format!("{}|{steps}", o.config).as_bytes())[..16].to_string();
    let l = BTreeMap::from([
        (labels::FINGERPRINT.to_string(), fingerprint),
        (
            labels::PROJECT.to_string(),
            project.identity.project.to_string(),
        ),
        (labels::MACHINE.to_string(), m.name.to_string()),
        (labels::VERSION.to_string(), crate::VERSION.to_string()),
    ]);
    ctx.reporter.event(
        Some(machine),
        Phase::Create,
        &format!("packaging as `{as_box}`"),
    );
    if o.state.can_exec() {
        let _ = p.flush(&o.id).await;
    }
    let base = p
        .package(&o.id, as_box, &l)
        .await
        .map_err(|e| OpError::provider(format!("cannot package `{machine}`"), e))?;
    Ok(base.id)
}
