//! `lock`, and what `up` does with `Envfile.lock`: resolve every machine's base to its
//! immutable identity on this host, fingerprint every machine, write the lock when there
//! is none, pin what it says, and refuse (`--locked`) when this host or the Envfile differs.

use std::collections::BTreeMap;

use envrig_provider_api::BaseIdentity;

use super::context::{Context, provider};
use super::error::OpError;
use super::project::Project;
use super::report::Phase;
use super::resolved::Resolved;
use crate::envfile::Machine;
use crate::lock::{self, Lock, LockedMachine};

/// One machine's base resolved: its identity on this host (none when missing) and the
/// machine's fingerprint (when the base is known).
pub struct Resolution {
    pub base: Option<BaseIdentity>,
    pub fingerprint: Option<String>,
    /// Its steps' content hashes, in order.
    pub steps: Vec<String>,
    /// Its fingerprint's inputs, readable (when the base is known).
    pub inputs: Option<BTreeMap<String, String>>,
}

/// Resolves `machines`' bases (fetching the missing ones when `fetch`) and fingerprints
/// them; a base is looked up once per provider and reference.
pub async fn resolve(
    ctx: &Context,
    project: &Project,
    machines: &[&Machine],
    fetch: bool,
) -> Result<BTreeMap<String, Resolution>, OpError> {
    let mut bases: BTreeMap<(String, String), Option<BaseIdentity>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for m in machines {
        let key = (m.provider.clone(), m.base.clone());
        if !bases.contains_key(&key) {
            let p = provider(ctx, &m.provider).await?;
            let mut found = p.resolve_base(&m.base).await.map_err(|e| {
                OpError::provider(format!("cannot look up box `{}`", m.box_name), e)
            })?;
            if found.is_none() && fetch {
                ctx.reporter.event(
                    Some(m.name.as_str()),
                    Phase::Pull,
                    &format!("fetching {}", m.base),
                );
                let reporter = ctx.reporter.clone();
                let name = m.name.to_string();
                let mut progress =
                    |pr: envrig_provider_api::PullProgress| reporter.pull(&name, &pr);
                p.ensure_base(&m.base, &mut progress)
                    .await
                    .map_err(|e| OpError::provider(format!("cannot fetch `{}`", m.base), e))?;
                found = p.resolve_base(&m.base).await.map_err(|e| {
                    OpError::provider(format!("cannot look up box `{}`", m.box_name), e)
                })?;
            }
            bases.insert(key.clone(), found);
        }
        let base = bases[&key].clone();
        let hashed: Vec<(String, String)> =
            crate::provision::hash_steps(&project.envfile.dir, &m.provision)
                .map_err(|e| OpError::Io {
                    context: format!("cannot read the steps of `{}`", m.name),
                    source: e,
                })?
                .into_iter()
                .map(|h| (h.label, h.hash))
                .collect();
        let steps: Vec<String> = hashed.iter().map(|(_, h)| h.clone()).collect();
        let fingerprint = base
            .as_ref()
            .map(|b| lock::fingerprint(m, b, &steps, &project.envfile.dir));
        let inputs = base
            .as_ref()
            .map(|b| lock::inputs(m, b, &hashed, &project.envfile.dir));
        out.insert(
            m.name.to_string(),
            Resolution {
                base,
                fingerprint,
                steps,
                inputs,
            },
        );
    }
    Ok(out)
}

/// The lock of every machine of the Envfile, when every base resolved.
fn build(project: &Project, resolved: &BTreeMap<String, Resolution>) -> Option<Lock> {
    let mut l = Lock {
        version: 1,
        ..Lock::default()
    };
    for m in &project.envfile.machines {
        let r = resolved.get(m.name.as_str())?;
        let base = r.base.clone()?;
        l.boxes
            .entry(m.box_name.clone())
            .or_default()
            .insert(m.provider.clone(), base);
        l.machines.insert(
            m.name.to_string(),
            LockedMachine {
                provider: m.provider.clone(),
                box_name: m.box_name.clone(),
                fingerprint: r.fingerprint.clone()?,
            },
        );
    }
    Some(l)
}

fn lock_path(project: &Project) -> std::path::PathBuf {
    project.envfile.dir.join(lock::FILE_NAME)
}

/// The list of lock files envrig wrote on this host (`$ENVRIG_HOME/locks`, one path per
/// line): `gc` keeps the baked layers they reference.
pub fn registry() -> std::path::PathBuf {
    super::home_dir().join("locks")
}

/// Adds `path` to the [`registry`] (best effort: a lock that is not listed only loses its
/// layers to `gc` sooner).
fn register(path: &std::path::Path) {
    let file = registry();
    let line = path.display().to_string();
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    if text.lines().any(|l| l == line) {
        return;
    }
    let _ = std::fs::create_dir_all(super::home_dir());
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn read(project: &Project) -> Result<Option<Lock>, OpError> {
    lock::read(&lock_path(project)).map_err(|e| OpError::Usage(e.to_string()))
}

/// `envrig lock`: resolves every box (fetching what is missing) and writes the lock.
pub async fn lock(ctx: &Context, project: &Project) -> Result<Lock, OpError> {
    let all: Vec<&Machine> = project.envfile.machines.iter().collect();
    let resolved = resolve(ctx, project, &all, true).await?;
    let l = build(project, &resolved)
        .ok_or_else(|| OpError::Usage("a box could not be resolved on this host".into()))?;
    lock::write(&lock_path(project), &l).map_err(|e| OpError::Io {
        context: format!("cannot write {}", lock_path(project).display()),
        source: e,
    })?;
    register(&lock_path(project));
    Ok(l)
}

/// Before `up`: with `locked`, refuses when the lock is missing or differs from this host
/// and the Envfile; without, pins the bases the lock names where they are here (a box that
/// now resolves elsewhere is said), and resolves the fingerprints (and their inputs) for
/// the resources' labels. Returns whether a lock exists, and what was resolved.
pub async fn before_up(
    ctx: &Context,
    project: &Project,
    selected: &[&Machine],
    locked: bool,
) -> Result<(bool, Resolved), OpError> {
    let mut out = Resolved::default();
    let existing = read(project)?;
    if locked && existing.is_none() {
        return Err(OpError::Usage(format!(
            "--locked, but there is no {} beside the Envfile; `envrig lock` writes it (commit it)",
            lock::FILE_NAME
        )));
    }
    let mut resolved = resolve(ctx, project, selected, false).await?;
    if let Some(l) = &existing {
        let rows: Vec<(&Machine, Option<&BaseIdentity>, Option<&str>)> = selected
            .iter()
            .map(|m| {
                let r = &resolved[m.name.as_str()];
                (*m, r.base.as_ref(), r.fingerprint.as_deref())
            })
            .collect();
        let diffs = lock::differences(l, &rows);
        if locked && !diffs.is_empty() {
            return Err(OpError::Usage(format!(
                "the Envfile or this host does not match {}:\n  {}\n`envrig lock` updates the lock when the change is wanted",
                lock::FILE_NAME,
                diffs.join("\n  ")
            )));
        }
        // Pinned bases that are here are used, whatever the reference resolves to now.
        let mut pins = BTreeMap::new();
        for m in selected {
            let Some(pinned) = l.boxes.get(&m.box_name).and_then(|b| b.get(&m.provider)) else {
                continue;
            };
            let now = resolved[m.name.as_str()]
                .base
                .as_ref()
                .map(|b| b.id.clone());
            let now = now.as_deref();
            if now == Some(pinned.id.as_str()) {
                continue;
            }
            let p = provider(ctx, &m.provider).await?;
            let here = p.resolve_base(&pinned.id).await.ok().flatten().is_some();
            let msg = if here {
                pins.insert(m.name.to_string(), pinned.id.clone());
                // The machine is made from the pinned base: so is its fingerprint.
                if let Some(r) = resolved.get_mut(m.name.as_str()) {
                    r.fingerprint =
                        Some(lock::fingerprint(m, pinned, &r.steps, &project.envfile.dir));
                    if let Some(i) = &mut r.inputs {
                        i.insert("box".into(), pinned.id.chars().take(19).collect());
                    }
                }
                format!(
                    "box `{}` ({}) now resolves to {}; using {} as {} pins it (`envrig lock` moves the pin)",
                    m.box_name,
                    m.base,
                    now.unwrap_or("nothing here"),
                    pinned.id,
                    lock::FILE_NAME
                )
            } else {
                format!(
                    "box `{}` ({}) is not the {} that {} pins, which is not on this host; `up --locked` would refuse",
                    m.box_name,
                    m.base,
                    pinned.id,
                    lock::FILE_NAME
                )
            };
            ctx.reporter
                .event(Some(m.name.as_str()), Phase::Warning, &msg);
        }
        out.pins = pins;
    }
    for (name, r) in resolved {
        if let Some(f) = r.fingerprint {
            out.fingerprints.insert(name.clone(), f);
        }
        if let Some(i) = r.inputs {
            out.inputs.insert(name, i);
        }
    }
    Ok((existing.is_some(), out))
}

/// After a successful `up` that found no lock: writes one when every machine's base is
/// on this host (not for `envrig run`'s own environments, whose ports differ).
pub async fn after_up(ctx: &Context, project: &Project) -> Result<(), OpError> {
    if project.owner.is_some() {
        return Ok(());
    }
    let all: Vec<&Machine> = project.envfile.machines.iter().collect();
    let resolved = resolve(ctx, project, &all, false).await?;
    if let Some(l) = build(project, &resolved) {
        lock::write(&lock_path(project), &l).map_err(|e| OpError::Io {
            context: format!("cannot write {}", lock_path(project).display()),
            source: e,
        })?;
        register(&lock_path(project));
        ctx.reporter.event(
            None,
            Phase::Done,
            &format!("wrote {} (commit it beside the Envfile)", lock::FILE_NAME),
        );
    }
    Ok(())
}
