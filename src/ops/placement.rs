//! Where `up` creates machines: the engines of each provider (its configured endpoints,
//! else its local engine), asked at once what they have and hold, and [`crate::placement`]
//! deciding. With only local engines nothing is asked (a no-op `up` stays one list call).

use std::collections::BTreeMap;

use envrig_provider_api::{Selector, labels};

use super::context::{Context, Unreachable, provider_at};
use super::error::OpError;
use super::observe::observe_all;
use super::project::Project;
use super::report::Phase;
use super::resolved::Resolved;
use super::session::Session;
use super::spec::desired;
use crate::engines::LOCAL;
use crate::envfile::Machine;
use crate::placement::{Candidate, DEFAULT_MEMORY, Placement, Want, place};
use crate::plan::{Action, Observed, Plan, current, plan_up};

/// Where every selected machine is or goes, by provider.
#[derive(Debug, Clone, Default)]
pub struct Placed {
    pub by_provider: BTreeMap<String, Placement>,
}

impl Placed {
    /// The engine machine `m` is on or goes to.
    pub fn engine(&self, m: &Machine) -> String {
        self.by_provider
            .get(&m.provider)
            .and_then(|p| p.engine_of.get(m.name.as_str()))
            .cloned()
            .unwrap_or_else(|| LOCAL.to_string())
    }

    /// The manager engine through which `provider`'s network spans a cluster, when its
    /// machines are on several engines of one.
    pub fn span_through(&self, provider: &str) -> Option<String> {
        self.by_provider
            .get(provider)
            .and_then(|p| p.span_through.clone())
    }

    /// Every machine on its provider's first engine (what `import` makes).
    pub fn on_first(ctx: &Context, machines: &[&Machine]) -> Placed {
        let mut placed = Placed::default();
        for m in machines {
            let first = ctx.engine_names(&m.provider).remove(0);
            placed
                .by_provider
                .entry(m.provider.clone())
                .or_default()
                .engine_of
                .insert(m.name.to_string(), first);
        }
        placed
    }

    /// Why there, when a choice was made.
    pub fn why(&self, m: &Machine) -> Option<&str> {
        self.by_provider
            .get(&m.provider)
            .and_then(|p| p.why.get(m.name.as_str()))
            .map(String::as_str)
    }
}

/// What `up` will do (the plan) and where (the placement), from what the engines hold.
pub(super) async fn planned(
    ctx: &Context,
    project: &Project,
    session: &Session,
    selected: &[&Machine],
    resolved: &Resolved,
    (recreate, reschedule): (bool, bool),
) -> Result<(Vec<Observed>, Plan, Placed), OpError> {
    let (observed, down) = observe_all(ctx, project).await?;
    for u in &down {
        ctx.reporter.event(
            None,
            Phase::Warning,
            &format!(
                "the {} engine `{}` is unreachable ({}): its machines are left as they are",
                u.provider, u.engine, u.reason
            ),
        );
    }
    let declared: Vec<&str> = project
        .envfile
        .machines
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    let mut plan = plan_up(
        &desired(project, resolved, selected),
        &declared,
        &observed,
        recreate || project.envfile.project.immutable,
    );
    let placed = place_machines(
        ctx,
        project,
        selected,
        &plan,
        (&observed, &down),
        (|m: &str| session.placed(m), session.knows_environment()),
        reschedule,
    )
    .await?;
    for mp in &mut plan.machines {
        if let Some(m) = selected.iter().find(|m| m.name == mp.machine)
            && matches!(mp.action, Action::Create)
        {
            mp.engine = placed.engine(m);
        }
    }
    Ok((observed, plan, placed))
}

/// One row of `up --plan`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanRow {
    pub machine: String,
    pub provider: String,
    /// create, start, keep, stale, recreate, resume.
    pub action: String,
    pub engine: String,
    pub why: Option<String>,
}

/// What `up --plan` is asked: the machines (all when none), and `up`'s flags that change
/// the plan.
#[derive(Debug, Clone, Default)]
pub struct PlanAsk {
    pub machines: Vec<String>,
    pub locked: bool,
    pub recreate: bool,
    pub reschedule: bool,
}

/// `up --plan`: what `up` would do and where, doing nothing.
pub async fn up_plan(
    ctx: &Context,
    project: &Project,
    ask: &PlanAsk,
) -> Result<Vec<PlanRow>, OpError> {
    let selected = project.select(&ask.machines, true)?;
    let (_, resolved) = super::lockfile::before_up(ctx, project, &selected, ask.locked).await?;
    let session = Session::open(ctx, project).await?;
    let flags = (ask.recreate, ask.reschedule);
    let (_, plan, placed) = planned(ctx, project, &session, &selected, &resolved, flags).await?;
    Ok(plan
        .machines
        .iter()
        .filter_map(|mp| {
            let m = selected.iter().find(|m| m.name == mp.machine)?;
            Some(PlanRow {
                machine: mp.machine.to_string(),
                provider: m.provider.clone(),
                action: match &mp.action {
                    Action::Create => "create",
                    Action::Start { .. } => "start",
                    Action::Keep { .. } => "keep",
                    Action::Stale { .. } => "stale",
                    Action::Recreate { .. } => "recreate",
                    Action::Resume { .. } => "resume",
                }
                .to_string(),
                engine: mp.engine.clone(),
                why: placed.why(m).map(str::to_string),
            })
        })
        .collect())
}

/// What a machine reserves, as written on it ([`labels::RESERVES`]).
pub fn reserves(m: &Machine) -> String {
    format!(
        "{},{}",
        m.memory.unwrap_or(DEFAULT_MEMORY),
        m.cpus.unwrap_or(1)
    )
}

fn reserved(l: &BTreeMap<String, String>) -> (u64, u32) {
    l.get(labels::RESERVES)
        .and_then(|r| r.split_once(','))
        .and_then(|(m, c)| Some((m.parse().ok()?, c.parse().ok()?)))
        .unwrap_or((DEFAULT_MEMORY, 1))
}

/// Places `selected` given the plan; `down`: engines that do not answer; `cached`: where
/// the cache last saw each machine. A machine the cache puts on an engine that does not
/// answer is not made elsewhere unless `reschedule`.
pub async fn place_machines(
    ctx: &Context,
    project: &Project,
    selected: &[&Machine],
    plan: &Plan,
    (observed, down): (&[Observed], &[Unreachable]),
    (cached, knows): (impl Fn(&str) -> Option<(String, String)>, bool),
    reschedule: bool,
) -> Result<Placed, OpError> {
    let mut placed = Placed::default();
    let mut providers: Vec<&str> = selected.iter().map(|m| m.provider.as_str()).collect();
    providers.sort();
    providers.dedup();
    for provider in providers {
        let mine: Vec<&&Machine> = selected.iter().filter(|m| m.provider == provider).collect();
        let configured = ctx.engines.of(provider).is_some();
        let mut wants = Vec::new();
        for m in &mine {
            let name = m.name.as_str();
            let existing = current(name, observed).0.map(|o| o.engine.clone());
            if existing.is_none()
                && let Some((p, e)) = cached(name)
                && p == provider
                && let Some(u) = down.iter().find(|u| u.provider == p && u.engine == e)
                && !reschedule
            {
                return Err(OpError::Usage(format!(
                    "machine `{name}` is on the engine `{e}`, which is unreachable ({}); `envrig up --reschedule` makes it again elsewhere",
                    u.reason
                )));
            }
            // Nothing says where it was, and an engine it may be on does not answer: making
            // it elsewhere could make a second one (a `run`'s environment is new: never).
            if existing.is_none()
                && cached(name).is_none()
                && !knows
                && !reschedule
                && project.identity.instance.is_none()
                && let Some(u) = down.iter().find(|u| u.provider == provider)
            {
                return Err(OpError::Usage(format!(
                    "machine `{name}` may be on the engine `{}`, which is unreachable ({}), and this checkout cannot tell (no state of it in .envrig); `envrig up --reschedule` makes it anyway",
                    u.engine, u.reason
                )));
            }
            if !configured && (m.engine.is_some() || !m.engine_labels.is_empty()) {
                return Err(OpError::Usage(format!(
                    "machine `{name}` asks for an engine endpoint (`engine`/`engine_labels`), but none of the {provider} provider is configured; `envrig engine add NAME URI` adds one"
                )));
            }
            wants.push(Want {
                machine: name.to_string(),
                memory: m.memory.unwrap_or(DEFAULT_MEMORY),
                cpus: m.cpus.unwrap_or(1),
                pin: m.engine.clone(),
                labels: m.engine_labels.clone(),
                existing,
            });
        }
        let creating = plan.machines.iter().any(|p| {
            matches!(p.action, Action::Create | Action::Recreate { .. })
                && mine.iter().any(|m| m.name == p.machine)
        });
        if !configured || !creating || wants.iter().all(|w| w.existing.is_some()) {
            // Nothing to choose: each stays where it is (or on the only engine).
            let mut p = Placement::default();
            for w in wants {
                p.engine_of.insert(
                    w.machine.clone(),
                    w.existing.unwrap_or_else(|| LOCAL.to_string()),
                );
            }
            placed.by_provider.insert(provider.to_string(), p);
            continue;
        }
        if let Some(pin) = wants
            .iter()
            .filter_map(|w| w.pin.as_ref())
            .find(|pin| ctx.engines.get(provider, pin).is_none())
        {
            return Err(OpError::Usage(format!(
                "`engine = \"{pin}\"`: no {provider} engine of that name is configured (`envrig engine ls` lists them)"
            )));
        }
        let cands = candidates(ctx, provider).await;
        let caps = ctx.registry.capabilities(provider).unwrap_or_default();
        let together = project.envfile.machines.len() > 1 && caps.private_network;
        // Machines already made on one engine keep the environment there.
        let mut at: Vec<&String> = wants.iter().filter_map(|w| w.existing.as_ref()).collect();
        at.dedup();
        let spread = project.envfile.project.spread && at.len() != 1;
        let p = place(&wants, &cands, spread, together, caps.spanning_network)
            .map_err(OpError::Usage)?;
        placed.by_provider.insert(provider.to_string(), p);
    }
    Ok(placed)
}

/// Every engine of `provider` that answers, with its headroom now.
async fn candidates(ctx: &Context, provider: &str) -> Vec<Candidate> {
    let names = ctx.engine_names(provider);
    let asks = names.iter().map(|name| async move {
        let p = provider_at(ctx, provider, name).await.ok()?;
        let all = Selector::all_envrig();
        let (info, list) = tokio::join!(p.engine_info(), p.list(&all));
        let (info, list) = (info.ok()?, list.ok()?);
        let machines: Vec<_> = list
            .iter()
            .filter(|i| i.labels.contains_key(labels::MACHINE))
            .collect();
        let (mem, cpus) = machines.iter().fold((0u64, 0u32), |(m, c), i| {
            let (rm, rc) = reserved(&i.labels);
            (m + rm, c + rc)
        });
        let e = ctx.engines.get(provider, name);
        Some(Candidate {
            name: name.clone(),
            labels: e.map(|e| e.labels.clone()).unwrap_or_default(),
            max_machines: e.and_then(|e| e.max_machines),
            cpus: info.cpus,
            memory: info.memory,
            reserved_memory: mem,
            reserved_cpus: cpus,
            machines: machines.len(),
            cluster: info.cluster.map(|c| (c.id, c.manager)),
        })
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}
