//! `up`: create, start, provision and wait for the readiness of an environment's machines.
//! Each machine waits for its dependencies to be ready; independent machines go in parallel
//! (at most `parallel` at once). Idempotent: a second `up` finds every machine running with
//! its settings and steps unchanged and does nothing (no exec, no engine writes).

use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::sync::Arc;

use envrig_provider_api::{NetworkSpec, Protocol, Provider, ProviderError};
use tokio::sync::{Semaphore, watch};

use super::provision::{Target, provision_machine, wait_ready};
use super::{Context, OpError, Phase, Project, Session, machine_spec, observe, provider};
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
        &project.desired(&selected),
        &declared,
        &observed,
        opts.recreate,
    );
    for o in &plan.orphans {
        ctx.reporter.event(
            Some(&o.machine),
            Phase::Warning,
            "is no longer in the Envfile; `envrig destroy` removes it",
        );
    }
    check_ports(&selected, &plan)?;
    if plan
        .machines
        .iter()
        .any(|m| matches!(m.action, Action::Create | Action::Recreate { .. }))
    {
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
/// keep running (or are replaced, freeing theirs) are theirs already.
fn check_ports(selected: &[&Machine], plan: &crate::plan::Plan) -> Result<(), OpError> {
    let mut busy = Vec::new();
    for m in selected {
        let Some(mp) = plan.machines.iter().find(|p| p.machine == m.name) else {
            continue;
        };
        if !matches!(mp.action, Action::Create | Action::Start { .. }) {
            continue;
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
            ctx.reporter
                .event(Some(&name), Phase::Create, &format!("recreating: {reason}"));
            (
                "recreated",
                replace(ctx, project, &p, m, id, mp.generation).await?,
                true,
            )
        }
    };
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
        let target = Target {
            provider: &p,
            machine: m,
            id: &id,
            fresh,
        };
        steps_run = provision_machine(ctx, session, project, target, mode).await?;
        if let Some(ready) = &m.ready {
            wait_ready(ctx, p.as_ref(), &name, &id, ready).await?;
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
) -> Result<envrig_provider_api::MachineInfo, String> {
    let name = m.name.as_str();
    let spec = machine_spec(project, m, generation, &super::now_rfc3339());
    ctx.reporter.event(Some(name), Phase::Create, "creating");
    match p.create(&spec).await {
        Ok(info) => Ok(info),
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
    let info = create(ctx, project, p, m, generation).await?;
    ctx.reporter
        .event(Some(m.name.as_str()), Phase::Start, "starting");
    p.start(&info.id)
        .await
        .map_err(|e| format!("created {} but cannot start it: {e}", info.resource_name))?;
    Ok(info.id)
}

/// Replaces `old` by a new generation: the new one is created beside it, then the old one
/// stopped (freeing its ports and names) and the new one started; only then is the old one
/// removed. When the new one cannot start, the old one is started again and kept.
async fn replace(
    ctx: &Context,
    project: &Project,
    p: &Arc<dyn Provider>,
    m: &Machine,
    old: &str,
    generation: u32,
) -> Result<String, String> {
    let name = m.name.as_str();
    let new = create(ctx, project, p, m, generation).await?;
    ctx.reporter
        .event(Some(name), Phase::Stop, "stopping the previous generation");
    if let Err(e) = p.stop(old, std::time::Duration::from_secs(30)).await {
        let _ = p.remove(&new.id).await;
        return Err(format!("cannot stop the previous generation: {e}"));
    }
    ctx.reporter.event(Some(name), Phase::Start, "starting");
    if let Err(e) = p.start(&new.id).await {
        let _ = p.remove(&new.id).await;
        let back = p.start(old).await;
        return Err(format!(
            "the new generation cannot start ({e}); {}",
            match back {
                Ok(()) => "the previous one runs again".to_string(),
                Err(b) => format!("and the previous one cannot start again either: {b}"),
            }
        ));
    }
    p.remove(old)
        .await
        .map_err(|e| format!("cannot remove the previous generation: {e}"))?;
    Ok(new.id)
}
