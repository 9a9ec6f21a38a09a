//! `up`: create, start, provision and wait for the readiness of an environment's machines.
//! Each machine waits for its dependencies to be ready; independent machines go in parallel
//! (at most `parallel` at once). Idempotent: a second `up` finds every machine running with
//! its settings and steps unchanged and does nothing (no exec, no engine writes).

use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};

use envrig_provider_api::Protocol;
use tokio::sync::{Semaphore, watch};

use super::bake::{baked_steps, choose_layers};
use super::context::{Context, provider_at};
use super::create::{Job, create_and_start};
use super::error::OpError;
use super::generations::{prune_generations, switch};
use super::lockfile::{after_up, before_up};
use super::network::{ensure_networks, name_on_shared};
use super::observe::observe;
use super::placement::planned;
use super::project::Project;
use super::provision::{Target, provision_machine, wait_ready};
use super::report::Phase;
use super::resolved::Resolved;
use super::session::Session;
use crate::envfile::Machine;
use crate::plan::{Action, MachinePlan};
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
    /// Make machines the cache places on an engine that does not answer again elsewhere.
    pub reschedule: bool,
    /// Push the layers baked (or found) here to the team's layer cache (`--push`).
    pub push: bool,
}

/// What `up` did to one machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpOutcome {
    pub machine: String,
    pub result: UpResult,
    pub id: Option<String>,
    /// Provisioning steps that ran.
    pub steps_run: usize,
}

/// What became of one machine in an `up`, as `up --json` writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpResult {
    Created,
    Started,
    Unchanged,
    Stale,
    Recreated,
    /// Not started: a dependency failed, or `up` was interrupted.
    Skipped,
    Failed,
}

impl UpResult {
    pub fn as_str(self) -> &'static str {
        match self {
            UpResult::Created => "created",
            UpResult::Started => "started",
            UpResult::Unchanged => "unchanged",
            UpResult::Stale => "stale",
            UpResult::Recreated => "recreated",
            UpResult::Skipped => "skipped",
            UpResult::Failed => "failed",
        }
    }

    /// Whether the machine was made, started or replaced (not left as it was).
    pub fn changed(self) -> bool {
        !matches!(self, UpResult::Unchanged | UpResult::Stale)
    }
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
        match ctx.registry.describe(&m.provider) {
            Ok(_) => {}
            Err(envrig_provider_api::ProviderError::NotSupported { .. }) => {
                return Err(OpError::Usage(format!(
                    "machine `{}` uses the `{}` provider, which this envrig does not have (no `envrig-provider-{}` plugin found)",
                    m.name, m.provider, m.provider
                )));
            }
            Err(e) => {
                return Err(OpError::provider(
                    format!(
                        "machine `{}` cannot use the `{}` provider",
                        m.name, m.provider
                    ),
                    e,
                ));
            }
        }
    }
    let (had_lock, mut resolved) = before_up(ctx, project, &selected, opts.locked).await?;
    resolved.cache = super::cache::setting(project, opts.push)?;
    let session = Session::open(ctx, project).await?;
    let (observed, plan, placed) = planned(
        ctx,
        project,
        &session,
        &selected,
        &resolved,
        (opts.recreate, opts.reschedule),
    )
    .await?;
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
        resolved.layers = choose_layers(ctx, project, &resolved, &creating, &placed).await?;
    }
    let resolved = &resolved;
    // Machines about to be made or started need the network; it is made again when it went
    // away meanwhile (`docker network prune` takes a halted environment's, a host restart
    // leaves a libvirt one inactive). A no-op `up` makes no call for it.
    if plan.machines.iter().any(|m| {
        matches!(
            m.action,
            Action::Create | Action::Recreate { .. } | Action::Start { .. }
        ) || matches!(m.action, Action::Stale { start: true, .. })
    }) {
        ensure_networks(ctx, project, &selected, &placed).await?;
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
                run_one(
                    ctx,
                    session,
                    project,
                    resolved,
                    m,
                    mp,
                    mode,
                    opts.no_provision,
                )
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
                    result: if skipped {
                        UpResult::Skipped
                    } else {
                        UpResult::Failed
                    },
                    id: None,
                    steps_run: 0,
                });
                failed.push((machine, e));
            }
        }
    }

    if outcomes.iter().any(|o| o.result == UpResult::Recreated) {
        prune_generations(ctx, project, &selected).await;
    }
    let changed = outcomes.iter().any(|o| o.result.changed());
    if changed || !plan.machines.iter().all(|m| m.duplicates.is_empty()) {
        // The cache is refreshed from the engines, so it never records what did not happen.
        session.refresh(&observe(ctx, project).await?)?;
    }
    if ctx.cancelled() {
        let started = outcomes
            .iter()
            .filter(|o| !matches!(o.result, UpResult::Skipped | UpResult::Failed))
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
        after_up(ctx, project).await?;
    }
    Ok(outcomes)
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
            let bound = match port.protocol {
                Protocol::Tcp => TcpListener::bind(addr).map(drop),
                Protocol::Udp => UdpSocket::bind(addr).map(drop),
            };
            if let Err(e) = bound {
                // A port below the host's unprivileged start is not busy: this user may not
                // have it (rootless engines, libvirt's session daemon).
                let why = match e.kind() {
                    std::io::ErrorKind::PermissionDenied => {
                        ": not busy, but this user may not bind it (ports below net.ipv4.ip_unprivileged_port_start need root)"
                    }
                    _ => "",
                };
                busy.push(format!(
                    "{}:{}/{} (machine `{}`){why}",
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

#[allow(clippy::too_many_arguments)]
async fn run_one(
    ctx: &Context,
    session: &Session,
    project: &Project,
    resolved: &Resolved,
    m: &Machine,
    mp: &MachinePlan,
    mode: &Mode,
    no_provision: bool,
) -> Result<UpOutcome, String> {
    let name = m.name.to_string();
    let p = provider_at(ctx, &m.provider, &mp.engine)
        .await
        .map_err(|e| e.to_string())?;
    let job = Job {
        ctx,
        session,
        project,
        resolved,
        p: &p,
        m,
        engine: &mp.engine,
    };
    for dup in &mp.duplicates {
        ctx.reporter.event(
            Some(&name),
            Phase::Remove,
            &format!("removing duplicate {dup}"),
        );
        p.remove(dup).await.map_err(|e| e.to_string())?;
    }
    // The baked layer it is created from, if any.
    let mut layer = resolved.layer(&name).map(str::to_string);
    let (result, id, fresh) = match &mp.action {
        Action::Keep { id } => (UpResult::Unchanged, id.clone(), false),
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
            (UpResult::Stale, id.clone(), false)
        }
        Action::Resume { id } => {
            p.unpause(id)
                .await
                .map_err(|e| format!("cannot resume it: {e}"))?;
            (UpResult::Started, id.clone(), false)
        }
        Action::Start { id } => {
            ctx.reporter.event(Some(&name), Phase::Start, "starting");
            p.start(id)
                .await
                .map_err(|e| format!("cannot start it: {e}"))?;
            (UpResult::Started, id.clone(), false)
        }
        Action::Create => (
            UpResult::Created,
            create_and_start(job, mp.generation).await?,
            true,
        ),
        Action::Recreate { id, reason } => {
            ctx.reporter.event(
                Some(&name),
                Phase::Create,
                &format!("out of date ({reason}): generation {}", mp.generation),
            );
            let dead = reason.contains("dead");
            let (new, built) = switch(job, id, dead, mp.generation).await?;
            if built.is_some() {
                layer = built;
            }
            (UpResult::Recreated, new, true)
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
    if result.changed() {
        // Synced folders that are copies, not live mounts, are made now (and said so).
        let lines = p
            .refresh_synced(&id)
            .await
            .map_err(|e| format!("cannot copy its synced folders: {e}"))?;
        for l in lines {
            ctx.reporter.event(Some(&name), Phase::Warning, &l);
        }
        // Before it provisions: machines of the provider sharing the network find it.
        if let Err(w) = name_on_shared(ctx, project, m, p.as_ref(), &id).await {
            ctx.reporter.event(Some(&name), Phase::Warning, &w);
        }
    }
    let mut steps_run = 0;
    if !no_provision {
        // Made from a baked layer: the record of what ran is inside it.
        let layer = layer.filter(|_| fresh);
        if let Some(layer) = &layer {
            let n = baked_steps(m);
            ctx.reporter.event(
                Some(&name),
                Phase::Provision,
                &format!(
                    "using baked layer {}, {n} step{} skipped",
                    layer
                        .trim_start_matches(envrig_provider_api::labels::BAKED_NAME_PREFIX)
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
        steps_run = provision_machine(ctx, session, project, resolved, target, mode).await?;
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
    if result.changed() || steps_run > 0 {
        ctx.reporter.event(Some(&name), Phase::Done, "running");
    }
    Ok(UpOutcome {
        machine: name,
        result,
        id: Some(id),
        steps_run,
    })
}
