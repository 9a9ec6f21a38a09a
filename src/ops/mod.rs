//! The operations behind the commands. Each takes a loaded [`Project`] (or none, for `ls`)
//! and a [`Context`], talks to providers through the registry, and returns data for the CLI
//! to print. Nothing here knows clap, colours or exit codes.

mod archive;
mod bake;
mod boxes;
mod destroy;
mod drift;
mod exec;
mod gc;
mod halt;
mod import;
mod init;
mod lockfile;
mod ls;
mod provision;
mod rollback;
mod run;
mod snapset;
mod snapshot;
mod spec;
mod staging;
mod start;
mod status;
pub mod trust;
mod up;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envrig_provider_api::{Provider, ProviderError, PullProgress, Selector};

use crate::envfile::{self, Envfile, LoadError, LoadOptions, Machine, Report};
use crate::identity::Identity;
use crate::plan::{Desired, Observed};
use crate::providers::Registry;
use crate::state::{StateCache, StateDir, StateLock};

/// The archive verifier on its own, for the fuzz targets: checks a whole archive into a
/// staging folder and returns its manifest. Blocking.
pub use archive::verify as verify_archive;
pub use archive::{Manifest, export};
pub use boxes::{BoxRow, BoxSource, box_add, box_list, box_remove};
pub use destroy::{DestroySummary, destroy};
pub use drift::{DriftReport, drift};
pub use exec::{exec, interactive, running_machine};
pub use gc::{GcItem, GcReport, gc};
pub use halt::halt;
pub use import::{ImportPlan, ImportReport, import_apply, import_check};
pub use init::{TEMPLATES, Template, init};
pub use lockfile::lock;
pub use ls::{EnvRow, ls};
pub use provision::provision;
pub use rollback::{RolledBack, rollback};
pub use run::{RunOptions, RunOutcome, run};
pub use snapshot::{
    SnapshotRow, package, snapshot_delete, snapshot_list, snapshot_restore, snapshot_save,
};
pub use spec::{config_hash, machine_spec};
pub use status::{StatusReport, status};
pub use up::{UpOptions, UpOutcome, up};

/// envrig's own folder on this host: `$ENVRIG_HOME`, else `$XDG_DATA_HOME/envrig`, else
/// `~/.local/share/envrig` (the libvirt box store and keys live there too).
pub fn home_dir() -> std::path::PathBuf {
    if let Some(h) = std::env::var_os("ENVRIG_HOME") {
        return std::path::PathBuf::from(h);
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from("/tmp"))
        .join("envrig")
}

/// A loaded environment: its Envfile, identity and state folder.
#[derive(Debug)]
pub struct Project {
    pub envfile: Envfile,
    pub identity: Identity,
    pub state: StateDir,
    /// Warnings found while loading the Envfile.
    pub warnings: Report,
    /// `--ttl`: replaces every machine's `ttl` for machines created now.
    pub ttl: Option<std::time::Duration>,
    /// The process owning this environment (`envrig run`): `gc` removes it once it died.
    pub owner: Option<String>,
    /// Bases pinned by `Envfile.lock` that machines are created from, by machine.
    pub pins: std::sync::Mutex<BTreeMap<String, String>>,
    /// Machines' fingerprints (written on their resources), by machine.
    pub fingerprints: std::sync::Mutex<BTreeMap<String, String>>,
    /// Baked layers that machines created now start from, by machine.
    pub layers: std::sync::Mutex<BTreeMap<String, String>>,
    /// Machines' fingerprint inputs (written on their resources), by machine.
    pub inputs: std::sync::Mutex<BTreeMap<String, BTreeMap<String, String>>>,
}

/// How to load a project, beyond its Envfile.
#[derive(Debug, Clone, Default)]
pub struct LoadSettings {
    /// `--provider` / `ENVRIG_PROVIDER`.
    pub provider_override: Option<String>,
    /// The environment of one `envrig run` (`--instance` to reach a kept one).
    pub instance: Option<String>,
}

impl Project {
    /// Loads the Envfile at `path` (absolute).
    pub fn load(
        path: &Path,
        display_path: &str,
        registry: &Registry,
        settings: &LoadSettings,
    ) -> Result<Project, LoadError> {
        let env = |name: &str| std::env::var(name).ok();
        let caps = |name: &str| registry.capabilities(name);
        let opts = LoadOptions {
            env: &env,
            provider_override: settings.provider_override.as_deref(),
            capabilities: &caps,
            check_paths: true,
        };
        let (mut envfile, warnings) = envfile::load(path, display_path, &opts)?;
        let instance = settings.instance.as_deref();
        let identity = Identity::new(&envfile.project.name, &envfile.dir, &envfile.path, instance);
        let state = match instance {
            Some(i) => StateDir::at(envfile.dir.join(".envrig").join("instances").join(i)),
            None => StateDir::new(&envfile.dir),
        };
        if instance.is_some() {
            // Parallel runs of one checkout must not fight over host ports: each published
            // port gets a free one, chosen by the engine (`status` shows which).
            for m in &mut envfile.machines {
                for p in &mut m.ports {
                    p.host_port = 0;
                }
            }
        }
        Ok(Project {
            envfile,
            identity,
            state,
            warnings,
            ttl: None,
            owner: None,
            pins: Default::default(),
            fingerprints: Default::default(),
            layers: Default::default(),
            inputs: Default::default(),
        })
    }

    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.envfile
            .machines
            .iter()
            .find(|m| m.name.as_str() == name)
    }

    /// The machines named (all when `names` is empty), plus, with `with_deps`, everything
    /// they depend on; in Envfile order.
    pub fn select(&self, names: &[String], with_deps: bool) -> Result<Vec<&Machine>, OpError> {
        if names.is_empty() {
            return Ok(self.envfile.machines.iter().collect());
        }
        let mut wanted = BTreeSet::new();
        let mut todo: Vec<String> = Vec::new();
        for n in names {
            if self.machine(n).is_none() {
                return Err(self.unknown_machine(n));
            }
            todo.push(n.clone());
        }
        while let Some(n) = todo.pop() {
            if !wanted.insert(n.clone()) {
                continue;
            }
            if with_deps && let Some(m) = self.machine(&n) {
                todo.extend(m.depends_on.iter().map(|d| d.to_string()));
            }
        }
        Ok(self
            .envfile
            .machines
            .iter()
            .filter(|m| wanted.contains(m.name.as_str()))
            .collect())
    }

    pub fn unknown_machine(&self, name: &str) -> OpError {
        OpError::UnknownMachine {
            name: name.to_string(),
            envfile: self.envfile.path.clone(),
            suggestion: envfile::did_you_mean(
                name,
                self.envfile.machines.iter().map(|m| m.name.as_str()),
            )
            .map(str::to_string),
        }
    }

    /// The providers this environment's resources may live on: those its machines use, and
    /// those the state cache remembers (a machine may have moved to another provider).
    pub fn provider_names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .envfile
            .machines
            .iter()
            .map(|m| m.provider.clone())
            .collect();
        names.extend(
            self.state
                .read()
                .machines
                .values()
                .map(|r| r.provider.clone()),
        );
        names
    }

    /// Whether the environment gets a private network: when it has more than one machine
    /// (they reach each other by name) or declares `[network]`. A single machine needs
    /// none, and starts faster without one.
    pub fn uses_network(&self) -> bool {
        self.envfile.machines.len() > 1 || self.envfile.network.subnet.is_some()
    }

    /// Whether its machines' generations hand over to one another (`immutable`): a
    /// provider may then hold their ports and names beyond a stopped generation
    /// (`MachineSpec::handover`).
    pub fn hands_over(&self) -> bool {
        self.envfile.project.immutable
    }

    /// The private network's engine-side name, when the environment has one.
    pub fn network_name(&self) -> Option<String> {
        self.uses_network()
            .then(|| format!("{}-{}", self.identity.project, self.identity.short_id()))
    }

    /// Labels of environment-wide resources (networks).
    pub fn network_labels(&self) -> BTreeMap<String, String> {
        use envrig_provider_api::labels;
        let mut l = self
            .identity
            .labels(&self.identity.project, 0, &now_rfc3339());
        l.remove(labels::MACHINE);
        l.remove(labels::GENERATION);
        // A killed `run` may leave only its network: `gc` must see whose it was.
        if let Some(owner) = &self.owner {
            l.insert(labels::OWNER.to_string(), owner.clone());
        }
        l
    }

    /// The selected machines' names in the order teardown goes: dependants before what
    /// they depend on.
    pub fn teardown_waves(&self, machines: &[&Machine]) -> Vec<Vec<String>> {
        waves(machines)
            .into_iter()
            .rev()
            .map(|w| w.iter().map(|m| m.name.to_string()).collect())
            .collect()
    }

    pub fn desired(&self, machines: &[&Machine]) -> Vec<Desired> {
        machines
            .iter()
            .map(|m| Desired {
                machine: m.name.clone(),
                provider: m.provider.clone(),
                config: config_hash(&machine_spec(self, m, 1, "")),
                fingerprint: self
                    .fingerprints
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(m.name.as_str())
                    .map(|f| f[..16.min(f.len())].to_string()),
                inputs: self
                    .inputs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(m.name.as_str())
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect()
    }
}

/// What an operation reports while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Pull,
    Create,
    Start,
    Stop,
    Remove,
    Provision,
    Ready,
    Warning,
    Done,
    Failed,
}

/// Where progress goes: a terminal, plain lines, or JSON lines.
pub trait Reporter: Send + Sync {
    fn event(&self, machine: Option<&str>, phase: Phase, message: &str);
    fn pull(&self, machine: &str, progress: &PullProgress);
    /// One line a provisioning step printed.
    fn output(&self, machine: &str, stream: envrig_provider_api::OutputStream, line: &str);
    /// The operation is over: settle any live display.
    fn finish(&self) {}
    /// Another process holds the lock; we wait.
    fn waiting_for_lock(&self, holder: &str) {
        self.event(
            None,
            Phase::Warning,
            &format!("waiting for another envrig working on this environment ({holder})"),
        );
    }
}

/// Shared by every operation.
pub struct Context {
    pub registry: Registry,
    pub reporter: Arc<dyn Reporter>,
    /// Becomes true on Ctrl-C / SIGTERM: start no new work, let in-flight calls finish.
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

impl Context {
    pub fn new(
        registry: Registry,
        reporter: Arc<dyn Reporter>,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> Context {
        Context {
            registry,
            reporter,
            cancel,
        }
    }

    pub fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves when the operation is interrupted.
    pub async fn interrupted(&self) {
        let mut rx = self.cancel.clone();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("no machine named `{name}` in {}", envfile.display())]
    UnknownMachine {
        name: String,
        envfile: PathBuf,
        suggestion: Option<String>,
    },
    #[error("machine `{machine}` is {state}")]
    NotRunning { machine: String, state: String },
    #[error("{context}: {source}")]
    Provider {
        context: String,
        #[source]
        source: ProviderError,
    },
    #[error("{}", machines_failed(failures, *total))]
    Machines {
        failures: Vec<(String, String)>,
        total: usize,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{}", ports_busy(.0))]
    PortsBusy(Vec<String>),
    #[error("interrupted: {done}")]
    Interrupted { done: String, hint: String },
}

fn ports_busy(ports: &[String]) -> String {
    let mut s = "host ports are already in use; nothing was created:".to_string();
    for p in ports {
        s.push_str(&format!("\n  {p}"));
    }
    s
}

fn machines_failed(failures: &[(String, String)], total: usize) -> String {
    let mut s = if failures.len() == 1 {
        let (m, e) = &failures[0];
        return format!("machine `{m}`: {e}");
    } else {
        format!("{} of {total} failed:", failures.len())
    };
    for (m, e) in failures {
        s.push_str(&format!("\n  `{m}`: {e}"));
    }
    s
}

impl OpError {
    pub fn provider(context: impl Into<String>, source: ProviderError) -> OpError {
        OpError::Provider {
            context: context.into(),
            source,
        }
    }

    /// Whether the user asked for something impossible (exit 2) rather than an operation failing (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, OpError::UnknownMachine { .. } | OpError::Usage(_))
    }

    /// A next step for the user, when there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            OpError::UnknownMachine {
                suggestion: Some(s),
                ..
            } => Some(format!("did you mean `{s}`?")),
            OpError::UnknownMachine { .. } => {
                Some("`envrig status` lists the machines".to_string())
            }
            OpError::NotRunning { machine, .. } => {
                Some(format!("start it with `envrig up {machine}`"))
            }
            OpError::Provider { source, .. } => source.hint().map(str::to_string),
            OpError::Interrupted { hint, .. } => Some(hint.clone()),
            OpError::PortsBusy(_) => {
                Some("free them, or change `ports` in the Envfile".to_string())
            }
            _ => None,
        }
    }
}

/// Every provider of this build whose engine answers, for commands that look at the whole
/// host (`ls`, `gc`): an engine that is not running here has nothing of ours, so it is
/// skipped with a warning; when none answers, that is the error.
pub async fn running_providers(
    ctx: &Context,
) -> Result<Vec<(&'static str, Arc<dyn Provider>)>, OpError> {
    let mut out = Vec::new();
    let mut last = None;
    let names: Vec<String> = ctx.registry.names().map(str::to_string).collect();
    for name in &names {
        match ctx.registry.get(name).await {
            Ok(p) => out.push((p.name(), p)),
            Err(e @ ProviderError::Unavailable { .. }) => {
                ctx.reporter.event(
                    None,
                    Phase::Warning,
                    &format!("skipping the {name} provider: {e}"),
                );
                last = Some(OpError::provider(
                    format!("cannot use the {name} provider"),
                    e,
                ));
            }
            Err(e) => {
                return Err(OpError::provider(
                    format!("cannot use the {name} provider"),
                    e,
                ));
            }
        }
    }
    match (out.is_empty(), last) {
        (true, Some(e)) => Err(e),
        _ => Ok(out),
    }
}

/// Connects to the provider called `name`.
pub async fn provider(ctx: &Context, name: &str) -> Result<Arc<dyn Provider>, OpError> {
    ctx.registry
        .get(name)
        .await
        .map_err(|e| OpError::provider(format!("cannot use the {name} provider"), e))
}

/// Waits (at most 15 s) until the engines look the same for 1.5 s (four looks half a second
/// apart): calls a killed envrig made (a removal, a start, a commit) finish on the engine
/// after it died, and a busy engine may take over a second to begin one.
async fn settle(ctx: &Context, project: &Project) -> Result<(), OpError> {
    let key = |v: &[Observed]| {
        let mut k: Vec<(String, &'static str)> =
            v.iter().map(|o| (o.id.clone(), o.state.as_str())).collect();
        k.sort();
        k
    };
    let mut last = key(&observe(ctx, project).await?);
    let mut same = 0;
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = key(&observe(ctx, project).await?);
        if now == last {
            same += 1;
            if same >= 3 {
                return Ok(());
            }
        } else {
            same = 0;
        }
        last = now;
    }
    Ok(())
}

/// Every resource of this environment on every provider it may use, decoded. Resources
/// being removed (by a command that died half-way) are waited for, briefly: they are about
/// to be gone and still hold their names.
pub async fn observe(ctx: &Context, project: &Project) -> Result<Vec<Observed>, OpError> {
    for _ in 0..100 {
        let seen = observe_once(ctx, project).await?;
        if !seen
            .iter()
            .any(|o| o.state == envrig_provider_api::MachineState::Removing)
        {
            return Ok(seen);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    observe_once(ctx, project).await
}

async fn observe_once(ctx: &Context, project: &Project) -> Result<Vec<Observed>, OpError> {
    let selector = Selector::env(&project.identity.env_id);
    let mut out = Vec::new();
    for name in project.provider_names() {
        if ctx.registry.capabilities(&name).is_none() {
            continue;
        }
        let p = provider(ctx, &name).await?;
        let infos = p
            .list(&selector)
            .await
            .map_err(|e| OpError::provider(format!("cannot list the {name} machines"), e))?;
        out.extend(
            infos
                .into_iter()
                .filter_map(|i| Observed::from_info(&name, i)),
        );
    }
    Ok(out)
}

/// A mutating command's hold on a project: the lock, and the state cache it keeps current.
pub struct Session {
    lock: StateLock,
    dir: StateDir,
    cache: std::sync::Mutex<StateCache>,
}

impl Session {
    /// Takes the project's lock (off the async threads: it may wait for another process)
    /// and reads the cache.
    pub async fn open(ctx: &Context, project: &Project) -> Result<Session, OpError> {
        let dir = project.state.clone();
        let reporter = ctx.reporter.clone();
        let d = dir.clone();
        let lock =
            tokio::task::spawn_blocking(move || d.lock(|holder| reporter.waiting_for_lock(holder)))
                .await
                .map_err(|e| OpError::Io {
                    context: "cannot take the state lock".into(),
                    source: std::io::Error::other(e),
                })?
                .map_err(|source| OpError::Io {
                    context: format!("cannot lock {}", project.state.path.display()),
                    source,
                })?;
        if let Some(holder) = &lock.previous_crashed {
            ctx.reporter.event(
                None,
                Phase::Warning,
                &format!("the previous envrig on this environment ({holder}) stopped mid-way; waiting for its engine calls to settle"),
            );
            settle(ctx, project).await?;
        }
        let mut cache = dir.read();
        if cache.env_id != project.identity.env_id {
            cache = StateCache {
                env_id: project.identity.env_id.clone(),
                project: project.identity.project.to_string(),
                ..StateCache::default()
            };
        }
        Ok(Session {
            lock,
            dir,
            cache: std::sync::Mutex::new(cache),
        })
    }

    fn write(&self, cache: &StateCache) -> Result<(), OpError> {
        self.dir
            .write(&self.lock, cache)
            .map_err(|source| OpError::Io {
                context: format!("cannot write {}", self.dir.path.display()),
                source,
            })
    }

    fn with<T>(&self, f: impl FnOnce(&mut StateCache) -> T) -> Result<T, OpError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let t = f(&mut cache);
        self.write(&cache)?;
        Ok(t)
    }

    /// Rewrites the machines from what the engines report now, keeping what is known of the
    /// provisioning of resources that are still the same.
    pub fn refresh(&self, observed: &[Observed]) -> Result<(), OpError> {
        self.with(|cache| {
            let old = std::mem::take(&mut cache.machines);
            for o in observed {
                let (cur, _) = crate::plan::current(&o.machine, observed);
                if cur.map(|c| &c.id) != Some(&o.id) {
                    continue;
                }
                let provisioned = old
                    .get(&o.machine)
                    .filter(|r| r.id == o.id)
                    .and_then(|r| r.provisioned.clone());
                cache.machines.insert(
                    o.machine.clone(),
                    crate::state::MachineRecord {
                        provider: o.provider.clone(),
                        id: o.id.clone(),
                        resource_name: o.resource_name.clone(),
                        generation: o.generation,
                        config: o.config.clone(),
                        state: o.state.as_str().to_string(),
                        provisioned,
                    },
                );
            }
        })
    }

    /// What the cache knows ran on resource `id` of `machine`; `None` when it does not know.
    pub fn provisioned(&self, machine: &str, id: &str) -> Option<crate::provision::Record> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .machines
            .get(machine)
            .filter(|r| r.id == id)
            .and_then(|r| r.provisioned.clone())
    }

    /// Records what ran on resource `id` of `machine` (`None`: unknown, e.g. while it runs).
    pub fn set_provisioned(
        &self,
        machine: &str,
        provider: &str,
        id: &str,
        record: Option<crate::provision::Record>,
    ) -> Result<(), OpError> {
        self.with(|cache| {
            let entry = cache
                .machines
                .entry(machine.to_string())
                .or_insert_with(|| crate::state::MachineRecord {
                    provider: provider.to_string(),
                    id: id.to_string(),
                    resource_name: String::new(),
                    generation: 1,
                    config: String::new(),
                    state: String::new(),
                    provisioned: None,
                });
            if entry.id != id {
                entry.id = id.to_string();
            }
            entry.provisioned = record;
        })
    }
}

/// Machines grouped into waves: every machine comes after the machines it depends on.
pub fn waves<'a>(machines: &[&'a Machine]) -> Vec<Vec<&'a Machine>> {
    let names: BTreeSet<&str> = machines.iter().map(|m| m.name.as_str()).collect();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut left: Vec<&Machine> = machines.to_vec();
    let mut out = Vec::new();
    while !left.is_empty() {
        let (ready, rest): (Vec<&Machine>, Vec<&Machine>) = left.iter().partition(|m| {
            m.depends_on
                .iter()
                .all(|d| done.contains(d.as_str()) || !names.contains(d.as_str()))
        });
        if ready.is_empty() {
            // Cycles are Envfile errors, so this is unreachable; run the rest in one wave.
            out.push(rest);
            break;
        }
        done.extend(ready.iter().map(|m| m.name.as_str()));
        out.push(ready);
        left = rest;
    }
    out
}

/// Now, as written in `created` labels.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// How long ago an RFC 3339 time was, short: `12s`, `5m`, `3h`, `2d`.
pub fn age(created: &str) -> Option<String> {
    let t = humantime::parse_rfc3339(created).ok()?;
    let secs = std::time::SystemTime::now()
        .duration_since(t)
        .ok()?
        .as_secs();
    Some(match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    })
}

/// How long until an RFC 3339 time, short (`in 2h`), or `expired`.
pub fn until(at: &str) -> String {
    let Ok(t) = humantime::parse_rfc3339(at) else {
        return at.to_string();
    };
    match t.duration_since(std::time::SystemTime::now()) {
        Err(_) => "expired".to_string(),
        Ok(d) => {
            let s = d.as_secs();
            match s {
                s if s < 60 => format!("in {s}s"),
                s if s < 3600 => format!("in {}m", s / 60),
                s if s < 86400 => format!("in {}h", s / 3600),
                s => format!("in {}d", s / 86400),
            }
        }
    }
}

/// Group observed resources by machine.
pub fn by_machine(observed: &[Observed]) -> BTreeMap<&str, Vec<&Observed>> {
    let mut m: BTreeMap<&str, Vec<&Observed>> = BTreeMap::new();
    for o in observed {
        m.entry(o.machine.as_str()).or_default().push(o);
    }
    m
}
