//! A loaded environment ([`Project`]): its Envfile, identity and state folder, and what is
//! derived from them alone (selected machines, networks' names and labels, teardown order).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::error::OpError;
use super::time::now_rfc3339;
use crate::envfile::{self, Envfile, LoadError, LoadOptions, Machine, Report};
use crate::identity::Identity;
use crate::providers::Registry;
use crate::state::StateDir;

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
        let opts = LoadOptions {
            env: &env,
            provider_override: settings.provider_override.as_deref(),
            providers: registry,
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

/// Each of `selected` with what `find` finds for it, for an operation on the machines
/// `named` (every machine when none is): a machine `find` finds nothing for (`Err`) is the
/// error when machines were named and is passed over when not; `none` is the error when
/// nothing is found at all.
pub(super) fn found_for<'m, T>(
    selected: &[&'m Machine],
    named: &[String],
    mut find: impl FnMut(&'m Machine) -> Result<T, OpError>,
    none: impl FnOnce() -> OpError,
) -> Result<Vec<(&'m Machine, T)>, OpError> {
    let mut out = Vec::new();
    for m in selected {
        match find(m) {
            Ok(t) => out.push((*m, t)),
            Err(_) if named.is_empty() => {}
            Err(e) => return Err(e),
        }
    }
    if out.is_empty() {
        return Err(none());
    }
    Ok(out)
}
