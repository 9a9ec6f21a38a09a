//! `up`: create, start, provision and wait for the readiness of an environment's machines.
//! Each machine waits for its dependencies to be ready; independent machines go in parallel
//! (at most `parallel` at once). Idempotent: a second `up` finds every machine running with
//! its settings and steps unchanged and does nothing (no exec, no engine writes).

use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::sync::Arc;

use envrig_provider_api::{NetworkSpec, Protocol, Provider, ProviderError};
use tokio::sync::{Semaphore, watch};

use super::context::{Context, provider};
use super::error::OpError;
use super::observe::observe;
use super::project::Project;
use super::provision::{Target, provision_machine, wait_ready};
use super::report::Phase;
use super::session::Session;
use super::spec::{desired, machine_spec};
use crate::envfile::Machine;
use crate::plan::{Action, MachinePlan, plan_up};
use crate::provision::Mode;

#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Machines to bring up (with their dependencies); all when empty.
    pub machines: Vec<String>,
    /// Replace machines whose settings changed (`reload`, `up --recreate`).
    pub recreate: bool,
    /// How many machines are worked on at once.
    pub parallel: usize,
    /// Run no steps and no readiness checks.
    pub no_provision: bool,
    /// Run every `once` step again.
    pub force_provision: bool,
    /// Refuse when `Envfile.lock` is missing or does not match (`--locked`).
    pub locked: bool,
    /// Ignore baked layers: machines created now run every step (`--fresh`).
    pub fresh: bool,
}

/// What `up` did to one machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpOutcome {
    pub machine: String,
    /// created, started, unchanged, stale, recreated, skipped, failed.
    pub result: String,
    pub id: Option<String>,
    /// Provisioning steps that ran.
    pub steps_run: usize,
}

/// Where a machine is in this `up`: dependants wait for `Ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Waiting,
    Ready,
    Failed,
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
    let had_lock = super::lockfile::before_up(ctx, project, &selected, opts.locked).await?;
    let session = Session::open(ctx, project).await?;
    let observed = observe(ctx, project).await?;
    let declared: Vec<&str> = project
        .envfile
        .machines
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    let plan = plan_up(
        &desired(project, &selected),
        &declared,
        &observed,
        opts.recreate || project.envfile.project.immutable,
    );
    for o in &plan.orphans {
        ctx.reporter.event(
            Some(&o.machine),
            Phase::Warning,
            "is no longer in the Envfile; `envrig destroy` removes it",
        );
    }
    check_ports(&selected, &plan, project.hands_over())?;
    if !opts.fresh && !opts.no_provision {
        let creating: Vec<&Machine> = selected
            .iter()
            .filter(|m| {
                plan.machines.iter().any(|p| {
                    p.machine == m.name
                        && matches!(p.action, Action::Create | Action::Recreate { .. })
                })
            })
            .copied()
            .collect();
        super::bake::choose_layers(ctx, project, &creating).await?;
    }
    // Machines about to be made or started need the network; it is made again when it went
    // away meanwhile (`docker network prune` takes a halted environment's, a host restart
    // leaves a libvirt one inactive). A no-op `up` makes no call for it.
    if plan.machines.iter().any(|m| {
        matches!(
            m.action,
            Action::Create | Action::Recreate { .. } | Action::Start { .. }
        ) || matches!(m.action, Action::Stale { start: true, .. })
    }) {
        ensure_networks(ctx, project, &selected).await?;
    }
    if plan
        .machines
        .iter()
        .any(|m| !matches!(m.action, Action::Keep { .. } | Action::Stale { .. }))
        || !plan.machines.iter().all(|m| m.duplicates.is_empty())
    {
        // Anything about to change: the cache must not claim old facts if we crash.
        session.refresh(&observed)?;
    }

    let mode = if opts.force_provision {
        Mode::Force("--provision")
    } else {
        Mode::Pending
    };
    let permits = Semaphore::new(opts.parallel.max(1));
    let mut senders = BTreeMap::new();
    let mut receivers = BTreeMap::new();
    for m in &selected {
        let (tx, rx) = watch::channel(Progress::Waiting);
        senders.insert(m.name.as_str(), tx);
        receivers.insert(m.name.as_str(), rx);
    }
    let jobs = selected.iter().map(|m| {
        let mp = plan.machines.iter().find(|p| p.machine == m.name);
        let deps: Vec<(String, watch::Receiver<Progress>)> = m
            .depends_on
            .iter()
            .filter_map(|d| {
                receivers
                    .get(d.as_str())
                    .map(|r| (d.to_string(), r.clone()))
            })
            .collect();
        let tx = senders.get(m.name.as_str()).cloned();
        let (permits, session, mode) = (&permits, &session, &mode);
        async move {
            let name = m.name.to_string();
            let result = async {
                for (dep, mut rx) in deps {
                    let state = *rx
                        .wait_for(|p| *p != Progress::Waiting)
                        .await
                        .map_err(|_| format!("lost track of `{dep}`"))?;
                    if state == Progress::Failed {
                        return Err(Skipped(format!(
                            "not started: its dependency `{dep}` failed"
                        )));
                    }
                }
                let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
                if ctx.cancelled() {
                    return Err(Skipped("not started: interrupted".to_string()));
                }
                let mp = mp.ok_or_else(|| "no plan for it".to_string())?;
                run_one(ctx, session, project, m, mp, mode, opts.no_provision)
                    .await
                    .map_err(Skipped::from)
            }
            .await;
            if let Some(tx) = tx {
                let _ = tx.send(if result.is_ok() {
                    Progress::Ready
                } else {
                    Progress::Failed
                });
            }
            (name, result)
        }
    });
    let results = futures_util::future::join_all(jobs).await;

    let mut outcomes = Vec::new();
    let mut failed = Vec::new();
    for (machine, r) in results {
        match r {
            Ok(o) => outcomes.push(o),
            Err(Skipped(e)) => {
                ctx.reporter.event(Some(&machine), Phase::Failed, &e);
                let skipped = e.starts_with("not started:");
                outcomes.push(UpOutcome {
                    machine: machine.clone(),
                    result: if skipped { "skipped" } else { "failed" }.into(),
                    id: None,
                    steps_run: 0,
                });
                failed.push((machine, e));
            }
        }
    }

    if outcomes.iter().any(|o| o.result == "recreated") {
        prune_generations(ctx, project, &selected).await;
    }
    let changed = outcomes
        .iter()
        .any(|o| o.result != "unchanged" && o.result != "stale");
    if changed || !plan.machines.iter().all(|m| m.duplicates.is_empty()) {
        // The cache is refreshed from the engines, so it never records what did not happen.
        session.refresh(&observe(ctx, project).await?)?;
    }
    if ctx.cancelled() {
        let started = outcomes
            .iter()
            .filter(|o| o.result != "skipped" && o.result != "failed")
            .count();
        return Err(OpError::Interrupted {
            done: format!(
                "{started} of {} machines are up; no new work was started",
                selected.len()
            ),
            hint: "`envrig up` resumes; `envrig destroy` removes what was made".to_string(),
        });
    }
    if !failed.is_empty() {
        return Err(OpError::Machines {
            total: selected.len(),
            failures: failed,
        });
    }
    if !had_lock {
        super::lockfile::after_up(ctx, project).await?;
    }
    Ok(outcomes)
}

/// Keeps `keep` generations of each machine (the current one and the newest others);
/// removes the older ones. Best effort: what cannot be removed now is said and left for the
/// next `up` or `destroy`.
async fn prune_generations(ctx: &Context, project: &Project, selected: &[&Machine]) {
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
            let Ok(p) = provider(ctx, &old.provider).await else {
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

/// A machine's failure message (or why it was not started).
struct Skipped(String);

impl From<String> for Skipped {
    fn from(s: String) -> Self {
        Skipped(s)
    }
}

impl From<&str> for Skipped {
    fn from(s: &str) -> Self {
        Skipped(s.to_string())
    }
}

/// Every published port must be free before anything is created. Ports of machines that
/// keep running (or are replaced, freeing theirs) are theirs already; so are those of a
/// stopped machine of an immutable environment, which its provider may still hold for it
/// (see `MachineSpec::handover`): its start says so if another holds them.
fn check_ports(
    selected: &[&Machine],
    plan: &crate::plan::Plan,
    immutable: bool,
) -> Result<(), OpError> {
    let mut busy = Vec::new();
    for m in selected {
        let Some(mp) = plan.machines.iter().find(|p| p.machine == m.name) else {
            continue;
        };
        match mp.action {
            Action::Create => {}
            Action::Start { .. } if !immutable => {}
            _ => continue,
        }
        for port in &m.ports {
            let addr = (port.host_ip.as_str(), port.host_port);
            let free = match port.protocol {
                Protocol::Tcp => TcpListener::bind(addr).is_ok(),
                Protocol::Udp => UdpSocket::bind(addr).is_ok(),
            };
            if !free {
                busy.push(format!(
                    "{}:{}/{} (machine `{}`)",
                    port.host_ip,
                    port.host_port,
                    port.protocol.as_str(),
                    m.name
                ));
            }
        }
    }
    if busy.is_empty() {
        Ok(())
    } else {
        Err(OpError::PortsBusy(busy))
    }
}

/// Creates the environment's private network on every provider that needs it.
pub(super) async fn ensure_networks(
    ctx: &Context,
    project: &Project,
    selected: &[&Machine],
) -> Result<(), OpError> {
    let Some(name) = project.network_name() else {
        return Ok(());
    };
    let mut done: Vec<&str> = Vec::new();
    for m in selected {
        if done.contains(&m.provider.as_str()) {
            continue;
        }
        done.push(&m.provider);
        if !ctx
            .registry
            .capabilities(&m.provider)
            .is_some_and(|c| c.private_network)
        {
            continue;
        }
        let p = provider(ctx, &m.provider).await?;
        let spec = NetworkSpec {
            name: name.clone(),
            labels: project.network_labels(),
            subnet: project.envfile.network.subnet.map(|s| s.to_string()),
            subnet_pool: std::env::var("ENVRIG_SUBNET_POOL")
                .ok()
                .filter(|s| !s.is_empty()),
            domain: Some(format!("{}.envrig.internal", project.envfile.project.name)),
        };
        p.ensure_network(&spec)
            .await
            .map_err(|e| OpError::provider(format!("cannot create the network `{name}`"), e))?;
    }
    Ok(())
}

async fn run_one(
    ctx: &Context,
    session: &Session,
    project: &Project,
    m: &Machine,
    mp: &MachinePlan,
    mode: &Mode,
    no_provision: bool,
) -> Result<UpOutcome, String> {
    let name = m.name.to_string();
    let p = provider(ctx, &m.provider)
        .await
        .map_err(|e| e.to_string())?;
    for dup in &mp.duplicates {
        ctx.reporter.event(
            Some(&name),
            Phase::Remove,
            &format!("removing duplicate {dup}"),
        );
        p.remove(dup).await.map_err(|e| e.to_string())?;
    }
    let (result, id, fresh) = match &mp.action {
        Action::Keep { id } => ("unchanged", id.clone(), false),
        Action::Stale { id, start } => {
            ctx.reporter.event(
                Some(&name),
                Phase::Warning,
                &format!(
                    "its settings changed since it was created; `envrig reload {name}` recreates it"
                ),
            );
            if *start {
                p.start(id)
                    .await
                    .map_err(|e| format!("cannot start it: {e}"))?;
            }
            ("stale", id.clone(), false)
        }
        Action::Resume { id } => {
            p.unpause(id)
                .await
                .map_err(|e| format!("cannot resume it: {e}"))?;
            ("started", id.clone(), false)
        }
        Action::Start { id } => {
            ctx.reporter.event(Some(&name), Phase::Start, "starting");
            p.start(id)
                .await
                .map_err(|e| format!("cannot start it: {e}"))?;
            ("started", id.clone(), false)
        }
        Action::Create => (
            "created",
            create_and_start(ctx, project, &p, m, mp.generation).await?,
            true,
        ),
        Action::Recreate { id, reason } => {
            ctx.reporter.event(
                Some(&name),
                Phase::Create,
                &format!("out of date ({reason}): generation {}", mp.generation),
            );
            let dead = reason.contains("dead");
            (
                "recreated",
                switch(ctx, session, project, &p, m, id, dead, mp.generation).await?,
                true,
            )
        }
    };
    if !mp.outdated.is_empty() {
        ctx.reporter.event(
            Some(&name),
            Phase::Warning,
            &format!(
                "out of date ({}): changed steps run in place; `envrig up --recreate` builds it anew as generation {} (or set `immutable = true`)",
                mp.outdated.join(", "),
                mp.generation + 1
            ),
        );
    }
    if result != "unchanged" && result != "stale" {
        // Synced folders that are copies, not live mounts, are made now (and said so).
        let lines = p
            .refresh_synced(&id)
            .await
            .map_err(|e| format!("cannot copy its synced folders: {e}"))?;
        for l in lines {
            ctx.reporter.event(Some(&name), Phase::Warning, &l);
        }
    }
    let mut steps_run = 0;
    if !no_provision {
        // Made from a baked layer: the record of what ran is inside it.
        let layer = fresh.then(|| super::bake::layer_of(project, m)).flatten();
        if let Some(layer) = &layer {
            let n = super::bake::baked_steps(m);
            ctx.reporter.event(
                Some(&name),
                Phase::Provision,
                &format!(
                    "using baked layer {}, {n} step{} skipped",
                    layer
                        .trim_start_matches("envrig-baked-")
                        .get(..6)
                        .unwrap_or(layer),
                    if n == 1 { "" } else { "s" }
                ),
            );
        }
        // Only a machine provisioned from nothing is baked: one provisioned before holds
        // what its `always` steps and its users did.
        let target = Target {
            provider: &p,
            machine: m,
            id: &id,
            fresh: fresh && layer.is_none(),
            from_layer: fresh && layer.is_some(),
            bake: fresh && layer.is_none(),
        };
        steps_run = provision_machine(ctx, session, project, target, mode).await?;
        if let Some(ready) = &m.ready {
            wait_ready(ctx, p.as_ref(), &name, &id, ready).await?;
        }
        // What the machine holds now is what `drift` compares with. A new machine on which
        // nothing ran needs none where the engine diffs against the base by itself (Docker:
        // its image, or its baked layer, is the baseline; a baseline file an image carries
        // from the machine it was packaged from only spares paths whose `stat` is unchanged).
        if (steps_run > 0 || (fresh && !p.capabilities().drift_from_base))
            && let Err(e) = p.mark_baseline(&id).await
        {
            ctx.reporter.event(
                Some(&name),
                Phase::Warning,
                &format!("cannot record its files for `envrig drift`: {e}"),
            );
        }
    }
    if result != "unchanged" && result != "stale" || steps_run > 0 {
        ctx.reporter.event(Some(&name), Phase::Done, "running");
    }
    Ok(UpOutcome {
        machine: name,
        result: result.into(),
        id: Some(id),
        steps_run,
    })
}

/// Creates the machine's resource of `generation`, fetching its base when missing; not
/// started.
async fn create(
    ctx: &Context,
    project: &Project,
    p: &Arc<dyn Provider>,
    m: &Machine,
    generation: u32,
    candidate: bool,
) -> Result<
    (
        envrig_provider_api::MachineInfo,
        envrig_provider_api::MachineSpec,
    ),
    String,
> {
    let name = m.name.as_str();
    let mut spec = machine_spec(project, m, generation, &super::time::now_rfc3339());
    if candidate {
        // Beside the generation that serves: no host ports, no names on the network.
        spec.resource_name.push_str("-next");
        spec.handover = false;
        spec.ports.clear();
        if let Some(n) = &mut spec.network {
            n.aliases.clear();
        }
        spec.labels.insert(
            envrig_provider_api::labels::CANDIDATE.to_string(),
            "1".to_string(),
        );
    }
    ctx.reporter.event(Some(name), Phase::Create, "creating");
    match p.create(&spec).await {
        Ok(info) => Ok((info, spec)),
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
                .map(|info| (info, spec))
                .map_err(|e| format!("cannot create it: {e}"))
        }
        Err(e) => Err(format!("cannot create it: {e}")),
    }
}

async fn create_and_start(
    ctx: &Context,
    project: &Project,
    p: &Arc<dyn Provider>,
    m: &Machine,
    generation: u32,
) -> Result<String, String> {
    let (info, spec) = create(ctx, project, p, m, generation, false).await?;
    ctx.reporter
        .event(Some(m.name.as_str()), Phase::Start, "starting");
    p.start_created(&info.id, &spec)
        .await
        .map_err(|e| format!("created {} but cannot start it: {e}", info.resource_name))?;
    Ok(info.id)
}

/// Replaces `old` by generation `generation`, never patching it: when the new generation's
/// provisioned state is not baked yet, it is built beside `old` (which keeps serving) as a
/// candidate with no host ports and no names, provisioned, checked for readiness and baked,
/// then removed. The new generation is created from that layer with the names and ports,
/// and the switch is made: `old` stopped (kept for `rollback`), the new one started. When it
/// cannot start, `old` is started again and kept. A dead `old` is removed.
#[allow(clippy::too_many_arguments)]
async fn switch(
    ctx: &Context,
    session: &Session,
    project: &Project,
    p: &Arc<dyn Provider>,
    m: &Machine,
    old: &str,
    dead: bool,
    generation: u32,
) -> Result<String, String> {
    let name = m.name.as_str();
    let candidate = if !dead
        && super::bake::layer_of(project, m).is_none()
        && super::bake::baked_steps(m) > 0
        && project.envfile.project.bake
    {
        Some(build_beside(ctx, session, project, p, m, generation).await?)
    } else {
        None
    };
    // The build goes once the new generation exists: until then it holds the layer's
    // fingerprint, so a `gc` meanwhile keeps the layer.
    let new = create(ctx, project, p, m, generation, false)
        .await
        .map(|(info, _)| info);
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
    Ok(new.id)
}

/// Builds the provisioned state of `m`'s generation `generation` beside the one that serves:
/// a candidate machine without host ports or names, provisioned, checked and baked into the
/// layer of its fingerprint; later machines of that fingerprint start from it. Returns the
/// candidate, for the caller to remove (it is removed here when the build fails).
async fn build_beside(
    ctx: &Context,
    session: &Session,
    project: &Project,
    p: &Arc<dyn Provider>,
    m: &Machine,
    generation: u32,
) -> Result<String, String> {
    let name = m.name.as_str();
    ctx.reporter.event(
        Some(name),
        Phase::Create,
        &format!(
            "building generation {generation} beside generation {} (which keeps serving)",
            generation - 1
        ),
    );
    let (info, _) = create(ctx, project, p, m, generation, true).await?;
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
        provision_machine(ctx, session, project, target, &Mode::Pending).await?;
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
    let fp = project
        .fingerprints
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned();
    if let Some(fp) = fp {
        let layer = super::bake::layer_name(&fp);
        if let Ok(Some(_)) = p.resolve_base(&layer).await {
            project
                .layers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.to_string(), layer);
        }
    }
    Ok(id)
}
