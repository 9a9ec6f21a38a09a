//! Baked layers: a machine's provisioned state kept on this host as a base, keyed by the
//! machine's fingerprint, so that a later `up` of the same fingerprint (another checkout,
//! a CI job, a recreate) starts from it and runs no `once` step.
//!
//! A layer is made with the provider's `package` (docker: a committed image; libvirt: a
//! qcow2 layer in the box store backed by the box) under the name [`layer_name`], and found
//! again with `resolve_base`: the core needs nothing else from a provider.

use std::collections::BTreeMap;
use std::sync::Arc;

use envrig_provider_api::{Provider, labels};

use super::context::{Context, provider_at};
use super::error::OpError;
use super::project::Project;
use super::report::Phase;
use super::resolved::Resolved;
use crate::envfile::{Machine, RunPolicy};

/// The base name of the layer of fingerprint `fp`, the same on every provider (a valid
/// docker image name and a valid box name).
pub fn layer_name(fp: &str) -> String {
    format!("{}{}", labels::BAKED_NAME_PREFIX, short(fp))
}

/// The name of the layer `m` (of fingerprint `fp`) starts from and bakes into: a warm
/// layer's memory is of a machine with or without a NIC on a private network (a device
/// the memory knows), so it is named apart from a cold one and by that.
pub fn layer_for(project: &Project, m: &Machine, fp: &str) -> String {
    match (warm(project, m), project.network_name().is_some()) {
        (false, _) => layer_name(fp),
        (true, false) => format!("{}-w", layer_name(fp)),
        (true, true) => format!("{}-wn", layer_name(fp)),
    }
}

/// A layer being baked by a task of this process; released when dropped.
struct Baking(String);

static BAKING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl Baking {
    fn claim(name: &str) -> Option<Baking> {
        let mut b = BAKING.lock().unwrap_or_else(|e| e.into_inner());
        if b.iter().any(|n| n == name) {
            return None;
        }
        b.push(name.to_string());
        Some(Baking(name.to_string()))
    }
}

impl Drop for Baking {
    fn drop(&mut self) {
        BAKING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|n| *n != self.0);
    }
}

/// The 16 hex digits of a fingerprint written on resources and layers' names.
fn short(fp: &str) -> &str {
    &fp[..fp.len().min(16)]
}

/// How many of `m`'s steps a layer holds: its `once` steps.
pub fn baked_steps(m: &Machine) -> usize {
    m.provision
        .iter()
        .filter(|s| s.run == RunPolicy::Once)
        .count()
}

/// Whether `m` takes part in baking at all.
fn bakes(project: &Project, m: &Machine) -> bool {
    project.envfile.project.bake && baked_steps(m) > 0
}

/// Whether `m` keeps its running memory with its layer and starts from it (`warm`, the
/// machine's or the project's): only where it bakes at all. Providers without
/// `warm_start` ignore it (the Envfile refuses `warm = true` on such a machine).
pub fn warm(project: &Project, m: &Machine) -> bool {
    bakes(project, m) && m.warm.unwrap_or(project.envfile.project.warm)
}

/// Before machines are created: the layers that `machines` start from, by machine: those
/// of their fingerprints that are on the engine each goes to, or that the team's cache
/// ([`Resolved::cache`]) has and gives (for [`Resolved::layers`], read by `machine_spec`).
/// A layer found here is pushed to the cache when pushing is asked. Each layer is looked
/// for once, on each engine, all at once.
pub async fn choose_layers(
    ctx: &Context,
    project: &Project,
    resolved: &Resolved,
    machines: &[&Machine],
    placed: &super::placement::Placed,
) -> Result<BTreeMap<String, String>, OpError> {
    // (provider, engine, layer, base) -> the machines that start from it.
    let mut wanted: BTreeMap<(String, String, String, String), Vec<String>> = BTreeMap::new();
    for m in machines {
        if !bakes(project, m) {
            continue;
        }
        let Some(fp) = resolved.fingerprint(m.name.as_str()) else {
            continue;
        };
        // On the engine it goes to: a layer is on the engine that baked it.
        let key = (
            m.provider.clone(),
            placed.engine(m),
            layer_for(project, m, fp),
            resolved.pin(m.name.as_str()).unwrap_or(&m.base).to_string(),
        );
        wanted.entry(key).or_default().push(m.name.to_string());
    }
    let looks = wanted
        .iter()
        .map(|((provider, engine, name, base), users)| async move {
            let p = provider_at(ctx, provider, engine).await?;
            let here = matches!(p.resolve_base(name).await, Ok(Some(_)));
            let there = match (&resolved.cache, here) {
                (Some(cache), false) => {
                    super::cache::pull(ctx, &p, cache, &users[0], name, base).await
                }
                (Some(cache), true) if cache.push => {
                    super::cache::push(ctx, &p, cache, &users[0], name).await;
                    false
                }
                _ => false,
            };
            Ok::<_, OpError>((here || there).then_some((users, name)))
        });
    let mut found = BTreeMap::new();
    for r in futures_util::future::join_all(looks).await {
        if let Some((users, name)) = r? {
            for u in users {
                found.insert(u.clone(), name.clone());
            }
        }
    }
    Ok(found)
}

/// After `m`'s steps ran in machine `id`: bakes its state into the layer of its fingerprint
/// unless that layer exists already. A failure to bake is said, never fatal: the machine is
/// provisioned either way.
pub async fn bake(
    ctx: &Context,
    project: &Project,
    resolved: &Resolved,
    p: &Arc<dyn Provider>,
    m: &Machine,
    id: &str,
) {
    if !bakes(project, m) {
        return;
    }
    let Some(fp) = resolved.fingerprint(m.name.as_str()) else {
        return;
    };
    let name = layer_for(project, m, fp);
    if let Ok(Some(_)) = p.resolve_base(&name).await {
        return;
    }
    // Machines of one recipe provisioned at once: the first bakes, the others need not.
    let Some(_baking) = Baking::claim(&name) else {
        return;
    };
    let machine = m.name.as_str();
    let started = std::time::Instant::now();
    let mut l = BTreeMap::new();
    l.insert(labels::BAKED.to_string(), fp.to_string());
    l.insert(labels::FINGERPRINT.to_string(), short(fp).to_string());
    l.insert(labels::CREATED.to_string(), super::time::now_rfc3339());
    if warm(project, m) {
        l.insert(labels::WARM.to_string(), "1".to_string());
    }
    // What is in memory goes to disk first, so the layer holds every file the steps wrote.
    let _ = p.flush(id).await;
    match p.package(id, &name, &l).await {
        Ok(_) => {
            ctx.reporter.event(
                Some(machine),
                Phase::Done,
                &format!(
                    "baked layer {} in {:.1}s (the next `up` of this fingerprint skips its {} step{})",
                    &fp[..6],
                    started.elapsed().as_secs_f64(),
                    baked_steps(m),
                    if baked_steps(m) == 1 { "" } else { "s" }
                ),
            );
            if let Some(cache) = resolved.cache.as_ref().filter(|c| c.push) {
                super::cache::push(ctx, p, cache, machine, &name).await;
            }
        }
        Err(e) => ctx.reporter.event(
            Some(machine),
            Phase::Warning,
            &format!("cannot bake its layer ({e}); the next `up` provisions it again"),
        ),
    }
}
