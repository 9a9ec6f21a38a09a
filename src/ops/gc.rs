//! `gc`: removes what nobody needs any more, from the engines' labels alone: machines past
//! their expiry (`ttl`), and every resource of an environment whose Envfile is gone or whose
//! `envrig run` process died. Safe from cron and CI post-steps, also concurrently: an
//! environment busy with another envrig is skipped, and removing what is gone succeeds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use envrig_provider_api::{Selector, labels};
use serde::Serialize;

use super::context::Context;
use super::error::OpError;
use crate::envfile;
use crate::identity::owner_alive;
use crate::plan::Observed;
use crate::state::StateDir;

/// One thing `gc` removed (or would remove).
#[derive(Debug, Clone, Serialize)]
pub struct GcItem {
    pub env_id: String,
    pub project: String,
    pub folder: String,
    /// `machine web`, `network shop-…`.
    pub resource: String,
    pub provider: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub removed: Vec<GcItem>,
    /// Environments left alone because another envrig holds their lock.
    pub busy: Vec<String>,
    /// What could not be removed (the engine refused), and why; gc goes on past them.
    pub failed: Vec<GcItem>,
    /// Environments left alone because gc cannot tell whether they are gone (a folder it
    /// may not read), and why: gc never guesses.
    pub skipped: Vec<GcItem>,
}

/// A file in a run's state folder: the run was kept (`--keep-on-failure`).
pub const KEPT: &str = "kept";

/// The state folder of an environment, from its labels. Labels can come from anywhere (an
/// image's labels pass to its containers), so an instance id that is not one envrig makes
/// (`run-` and letters or digits) yields no folder at all, and a relative folder neither.
fn state_dir(folder: &str, instance: Option<&String>) -> Option<PathBuf> {
    let folder = Path::new(folder);
    if !folder.is_absolute()
        || folder
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return None;
    }
    let top = folder.join(".envrig");
    match instance {
        Some(i) if crate::identity::valid_instance_id(i) => Some(top.join("instances").join(i)),
        Some(_) => None,
        None => Some(top),
    }
}

fn expired(labels: &BTreeMap<String, String>, now: std::time::SystemTime) -> Option<String> {
    let at = labels.get(labels::EXPIRES)?;
    let t = humantime::parse_rfc3339(at).ok()?;
    (t <= now).then(|| format!("expired at {at}"))
}

/// Whether the file at `path` is there: `Err` with why when that cannot be told (a folder on
/// the way that may not be read is not a file that is gone).
fn present(path: &Path) -> Result<bool, String> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.is_file()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(format!(
            "cannot tell whether {} is there: {e}",
            path.display()
        )),
    }
}

/// Why a whole environment is garbage, if it is (`Ok(None)`: it is not); `Err` with why
/// when that cannot be told: the environment is then left alone.
fn env_gone(labels: &BTreeMap<String, String>) -> Result<Option<String>, String> {
    let envfile = labels.get(labels::ENVFILE).filter(|e| !e.is_empty());
    if let Some(e) = envfile
        && !present(Path::new(e))?
    {
        return Ok(Some(format!("its Envfile {e} is gone")));
    }
    if let Some(owner) = labels.get(labels::OWNER)
        && !owner_alive(owner)
    {
        let folder = labels.get(labels::FOLDER).map(String::as_str).unwrap_or("");
        let kept = match state_dir(folder, labels.get(labels::INSTANCE)) {
            Some(d) => present(&d.join(KEPT))?,
            None => false,
        };
        if !kept {
            let pid = owner.split(':').nth(1).unwrap_or("?");
            return Ok(Some(format!("its `envrig run` (pid {pid}) is gone")));
        }
    }
    Ok(None)
}

/// The fingerprints (16 hex) that the lock files envrig knows of pin: those it wrote (the
/// registry) and those beside the Envfiles of `folders`.
fn locked_fingerprints<'a>(folders: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    let registry = std::fs::read_to_string(super::lockfile::registry()).unwrap_or_default();
    let mut paths: BTreeSet<PathBuf> = registry.lines().map(PathBuf::from).collect();
    paths.extend(
        folders
            .filter(|f| Path::new(f).is_absolute())
            .map(|f| Path::new(f).join(crate::lock::FILE_NAME)),
    );
    let mut out = BTreeSet::new();
    for p in paths {
        if let Ok(Some(l)) = crate::lock::read(&p) {
            out.extend(
                l.machines
                    .values()
                    .map(|m| m.fingerprint.chars().take(16).collect::<String>()),
            );
        }
    }
    out
}

/// Whether a layer baked at `created` is younger than the grace period (`up` may be about
/// to create a machine from it): `ENVRIG_GC_LAYER_GRACE` seconds, default 600.
fn too_young(created: &str, now: std::time::SystemTime) -> bool {
    let grace = std::env::var("ENVRIG_GC_LAYER_GRACE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(600);
    humantime::parse_rfc3339(created)
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .is_none_or(|age| age.as_secs() < grace)
}

/// An environment's generations beyond its Envfile's `keep` (the current one and the
/// newest others are kept), and builds of new generations a crashed `up` left behind.
fn surplus_generations<'a>(
    mine: &[&'a Observed],
    env_labels: &BTreeMap<String, String>,
) -> Vec<(&'a Observed, String)> {
    let keep = env_labels
        .get(labels::ENVFILE)
        .map(|p| envfile::keep_of(Path::new(p)))
        .unwrap_or(envfile::DEFAULT_KEEP)
        .max(1) as usize;
    let mut out = Vec::new();
    let names: BTreeSet<&str> = mine.iter().map(|m| m.machine.as_str()).collect();
    for name in names {
        let all: Vec<&Observed> = mine.iter().copied().filter(|m| m.machine == name).collect();
        for c in all
            .iter()
            .filter(|m| m.labels.contains_key(labels::CANDIDATE))
        {
            out.push((
                *c,
                "a new generation's build left by an interrupted `up`".to_string(),
            ));
        }
        let Some(cur) =
            crate::plan::current(name, &all.iter().map(|m| (*m).clone()).collect::<Vec<_>>())
                .0
                .map(|c| c.id.clone())
        else {
            continue;
        };
        let mut others: Vec<&Observed> = all
            .iter()
            .copied()
            .filter(|m| m.id != cur && !m.labels.contains_key(labels::CANDIDATE))
            .collect();
        others.sort_by_key(|m| std::cmp::Reverse(m.generation));
        for old in others.into_iter().skip(keep - 1) {
            out.push((
                old,
                format!(
                    "generation {} is older than the {keep} kept",
                    old.generation
                ),
            ));
        }
    }
    out
}

pub async fn gc(ctx: &Context, dry_run: bool) -> Result<GcReport, OpError> {
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    let now = std::time::SystemTime::now();
    let here = crate::identity::host_token();
    let (engines, mut down) = super::context::running_engines(ctx).await?;
    let all = Selector::all_envrig();
    // Every machine on every engine that answers: an environment spread over engines has
    // machines left while one engine holds only its network.
    let lists = futures_util::future::join_all(engines.iter().map(|e| e.p.list(&all))).await;
    let mut listed = Vec::new();
    for (e, r) in engines.iter().zip(lists) {
        match r {
            Ok(infos) => {
                let ms: Vec<Observed> = infos
                    .into_iter()
                    .filter_map(|i| Observed::from_info(&e.provider, &e.name, i))
                    .collect();
                listed.push((e, ms));
            }
            Err(err) => down.push(super::context::Unreachable {
                provider: e.provider.clone(),
                engine: e.name.clone(),
                reason: err.to_string(),
            }),
        }
    }
    let everywhere: Vec<&Observed> = listed.iter().flat_map(|(_, ms)| ms.iter()).collect();
    for (e, machines) in &listed {
        let (name, p) = (e.provider.as_str(), &e.p);
        // An engine of this provider that does not answer may hold any environment's
        // machines: "no machine of it is left" cannot be known.
        let blind = down.iter().find(|u| u.provider == name);
        let others = p.list_other(&all).await.map_err(|e| {
            OpError::provider(format!("cannot list the {name} networks and volumes"), e)
        })?;

        // Every environment seen, by id, with the labels of one of its resources.
        let mut envs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for l in machines
            .iter()
            .map(|m| &m.labels)
            .chain(others.iter().map(|o| &o.labels))
        {
            if let Some(id) = l.get(labels::ENV) {
                envs.entry(id.clone()).or_insert_with(|| l.clone());
            }
        }
        // `ENVRIG_GC_SCOPE`: only environments whose folder is under it (a CI job's
        // workspace; a test's own folders).
        let scope = std::env::var_os("ENVRIG_GC_SCOPE")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        for (env_id, l) in envs {
            if let Some(scope) = &scope
                && !l
                    .get(labels::FOLDER)
                    .is_some_and(|f| Path::new(f).starts_with(scope))
            {
                continue;
            }
            let label = |k: &str| l.get(k).cloned().unwrap_or_default();
            let item = |resource: String, reason: String| GcItem {
                env_id: env_id.clone(),
                project: label(labels::PROJECT),
                folder: label(labels::FOLDER),
                resource,
                provider: name.to_string(),
                reason,
            };
            // Another host's or container's environment: its folders and processes are not
            // ours to judge (only its expiry is absolute).
            let foreign = l.get(labels::HOST).is_some_and(|h| *h != here);
            // What a killed export or import left in the project's work folder.
            let folder = label(labels::FOLDER);
            if !foreign && !dry_run && Path::new(&folder).is_absolute() {
                for f in super::staging::sweep(Path::new(&folder)) {
                    report.removed.push(item(
                        format!("file {}", f.display()),
                        "left by an envrig that was killed".to_string(),
                    ));
                }
            }
            let mine: Vec<&Observed> = machines
                .iter()
                .filter(|m| m.labels.get(labels::ENV) == Some(&env_id))
                .collect();
            // Nothing but networks and volumes left (a `destroy` the engine refused a network
            // to, or one interrupted after its machines went): nothing uses them. An `up`
            // making them right now holds the environment's lock, and is skipped below.
            let whole = if foreign {
                None
            } else {
                match env_gone(&l) {
                    Ok(gone) => gone.or_else(|| {
                        let anywhere = everywhere
                            .iter()
                            .any(|m| m.labels.get(labels::ENV) == Some(&env_id));
                        (!anywhere && blind.is_none())
                            .then(|| "no machine of it is left".to_string())
                    }),
                    Err(why) => {
                        report.skipped.push(item("environment".into(), why));
                        continue;
                    }
                }
            };
            let mut doomed: Vec<(&Observed, String)> = match &whole {
                Some(reason) => mine.iter().map(|m| (*m, reason.clone())).collect(),
                None => mine
                    .iter()
                    .filter_map(|m| expired(&m.labels, now).map(|r| (*m, r)))
                    .collect(),
            };
            if whole.is_none() {
                for (m, reason) in surplus_generations(&mine, &l) {
                    if !doomed.iter().any(|(d, _)| d.id == m.id) {
                        doomed.push((m, reason));
                    }
                }
            }
            if doomed.is_empty() && whole.is_none() {
                continue;
            }
            // A live project's lock: skip it while another envrig works on it.
            let folder = label(labels::FOLDER);
            let dir = state_dir(&folder, l.get(labels::INSTANCE)).map(StateDir::at);
            let _lock = if let Some(dir) = dir
                .as_ref()
                .filter(|_| Path::new(&folder).is_dir() && !dry_run)
            {
                match dir.try_lock() {
                    Ok(Some(lock)) => Some(lock),
                    Ok(None) => {
                        report.busy.push(env_id.clone());
                        continue;
                    }
                    Err(_) => None,
                }
            } else {
                None
            };
            for (m, reason) in doomed {
                let what = format!("machine {} ({})", m.machine, m.resource_name);
                if !dry_run && let Err(e) = p.remove(&m.id).await {
                    report.failed.push(item(what, e.to_string()));
                    continue;
                }
                report.removed.push(item(what, reason));
            }
            if let Some(reason) = whole {
                let selector = Selector::env(&env_id);
                if dry_run {
                    for o in others
                        .iter()
                        .filter(|o| o.labels.get(labels::ENV) == Some(&env_id))
                    {
                        report
                            .removed
                            .push(item(format!("{} {}", o.kind, o.name), reason.clone()));
                    }
                } else {
                    // One stuck resource (Docker sometimes keeps a stale endpoint on a
                    // network) must not stop the collection of everything else.
                    match p.purge(&selector).await {
                        Ok(removed) => {
                            for r in removed {
                                report.removed.push(item(r, reason.clone()));
                            }
                        }
                        Err(e) => report
                            .failed
                            .push(item("networks and volumes".into(), e.to_string())),
                    }
                    if let Some(dir) = dir.as_ref().filter(|_| l.contains_key(labels::INSTANCE)) {
                        let _ = dir.remove();
                    }
                }
            }
        }

        // Work files and folders of killed envrigs in the provider's own store.
        if !dry_run {
            for w in p.sweep_work().await.unwrap_or_default() {
                report.removed.push(GcItem {
                    env_id: String::new(),
                    project: String::new(),
                    folder: String::new(),
                    resource: w,
                    provider: name.to_string(),
                    reason: "left by an envrig that was killed".to_string(),
                });
            }
        }

        // Baked layers nobody references: no machine of any generation made from it or
        // provisioned to its fingerprint, and no lock file pinning that fingerprint.
        let mut refs: BTreeSet<String> = machines
            .iter()
            .flat_map(|m| {
                [
                    m.labels.get(labels::FINGERPRINT),
                    m.labels.get(labels::LAYER),
                ]
            })
            .flatten()
            .cloned()
            .collect();
        refs.extend(locked_fingerprints(
            machines
                .iter()
                .filter_map(|m| m.labels.get(labels::FOLDER).map(String::as_str)),
        ));
        for layer in p.baked_layers().await.unwrap_or_default() {
            let short: String = layer.fingerprint.chars().take(16).collect();
            if refs.contains(&short) || too_young(&layer.created, now) {
                continue;
            }
            let item = GcItem {
                env_id: String::new(),
                project: String::new(),
                folder: String::new(),
                resource: format!("layer {}", layer.name),
                provider: name.to_string(),
                reason: "no machine, kept generation or lock file uses it".to_string(),
            };
            if !dry_run && let Err(e) = p.remove_baked(&layer.name).await {
                report.failed.push(GcItem {
                    reason: e.to_string(),
                    ..item
                });
                continue;
            }
            report.removed.push(item);
        }
    }
    Ok(report)
}
