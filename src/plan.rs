//! The planner: desired machines (from the Envfile) × observed resources (from the engines'
//! labels) → actions. Pure: it never calls a provider, so every case is a unit test.

use std::collections::BTreeMap;
use std::fmt;

use envrig_provider_api::{MachineInfo, MachineState, PortSpec, labels};

use crate::envfile::Name;

/// A machine as the Envfile wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub machine: Name,
    pub provider: String,
    /// Hash of the settings that shape the resource.
    pub config: String,
    /// The machine's fingerprint (16 hex), when its base is known.
    pub fingerprint: Option<String>,
    /// Its fingerprint's inputs, readable (`lock::inputs`), to say what changed.
    pub inputs: BTreeMap<String, String>,
}

/// A machine resource as an engine reports it, decoded from its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub provider: String,
    /// The engine endpoint it was found on (`local`: the provider's local engine).
    pub engine: String,
    pub machine: String,
    pub generation: u32,
    pub id: String,
    pub resource_name: String,
    pub state: MachineState,
    pub config: String,
    pub created: String,
    pub ports: Vec<PortSpec>,
    pub labels: BTreeMap<String, String>,
}

impl Observed {
    /// Decodes a provider's report; resources without a machine label are not envrig's.
    /// `engine`: the endpoint the provider listed it on.
    pub fn from_info(provider: &str, engine: &str, mut info: MachineInfo) -> Option<Observed> {
        // An empty label is no label: images baked from machines blank out the labels they
        // must not pass on (an owner, an expiry) and containers inherit image labels.
        info.labels.retain(|_, v| !v.is_empty());
        let machine = info.labels.get(labels::MACHINE)?.clone();
        let label = |k: &str| info.labels.get(k).cloned().unwrap_or_default();
        // Labels pass from an image to the containers made from it: a container someone
        // runs from a snapshot or a baked layer carries a machine's labels without being
        // one. envrig names what it makes from those labels; anything else is not its own.
        let made = format!(
            "{}-{}-{machine}-{}",
            label(labels::PROJECT),
            label(labels::ENV).get(..8)?,
            label(labels::GENERATION)
        );
        // The one exception: the Docker provider's relabel helper, a container it creates
        // (nameless) to give an imported image this environment's labels; a killed import
        // leaves it for `destroy` and `gc`. Images never pass that label on (blanked).
        let helper = info.labels.get(labels::CANDIDATE).map(String::as_str) == Some("relabel");
        if !helper && info.resource_name != made && info.resource_name != format!("{made}-next") {
            return None;
        }
        Some(Observed {
            provider: info
                .labels
                .get(labels::PROVIDER)
                .cloned()
                .unwrap_or_else(|| provider.to_string()),
            engine: engine.to_string(),
            generation: label(labels::GENERATION).parse().unwrap_or(1),
            config: label(labels::CONFIG),
            created: label(labels::CREATED),
            machine,
            id: info.id,
            resource_name: info.resource_name,
            state: info.state,
            ports: info.ports,
            labels: info.labels,
        })
    }
}

/// What `up` does for one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing exists: create and start it.
    Create,
    /// It exists, matches, and is not running.
    Start { id: String },
    /// It exists, matches, and runs.
    Keep { id: String },
    /// It exists but was made from other settings; left as it is, with a hint (started
    /// when it was stopped, so `up` still returns running machines).
    Stale { id: String, start: bool },
    /// It exists, matches, and is paused (a snapshot was interrupted): resume it.
    Resume { id: String },
    /// It exists but must be replaced (stale and a recreate was asked for, or broken).
    Recreate { id: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachinePlan {
    pub machine: Name,
    pub action: Action,
    /// Duplicate resources of the same machine and generation (left by a crash or a race):
    /// removed, keeping the best one.
    pub duplicates: Vec<String>,
    /// The generation the machine has, or gets.
    pub generation: u32,
    /// Why the machine's resource is out of date with the Envfile (its fingerprint's inputs
    /// changed), when it is kept all the same (not immutable, no `--recreate`).
    pub outdated: Vec<String>,
    /// The engine it is on (a new generation goes beside the old one), or goes to: set
    /// by placement for a machine to create (`local` until then).
    pub engine: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub machines: Vec<MachinePlan>,
    /// Resources of machines the Envfile no longer declares.
    pub orphans: Vec<Observed>,
}

/// How a machine's resources rank for "current": a running one (the generation that serves)
/// beats the others; then the newest generation; then the best state; then the newest.
fn rank(o: &Observed) -> (bool, u32, u8, &str) {
    let s = match o.state {
        MachineState::Running => 3,
        MachineState::Stopped
        | MachineState::Created
        | MachineState::Paused
        | MachineState::Suspended => 2,
        MachineState::Transitioning => 1,
        MachineState::Dead | MachineState::Removing => 0,
    };
    (
        o.state == MachineState::Running,
        o.generation,
        s,
        o.created.as_str(),
    )
}

/// The current resource of each machine (the highest generation, best state) and the
/// duplicates of that same generation.
pub fn current<'a>(
    machine: &str,
    observed: &'a [Observed],
) -> (Option<&'a Observed>, Vec<&'a Observed>) {
    let mut mine: Vec<&Observed> = observed
        .iter()
        .filter(|o| o.machine == machine && !o.labels.contains_key(labels::CANDIDATE))
        .collect();
    mine.sort_by(|a, b| rank(b).cmp(&rank(a)));
    let Some(best) = mine.first().copied() else {
        return (None, Vec::new());
    };
    let dups = mine[1..]
        .iter()
        .copied()
        .filter(|o| o.generation == best.generation)
        .collect();
    (Some(best), dups)
}

/// Plans `up` for `desired` (already narrowed to the machines asked for); `declared` are all
/// the Envfile's machines (anything else is an orphan). With `rebuild` (an immutable
/// environment, or `up --recreate`), a machine whose settings or fingerprint changed is
/// replaced by a new generation; without, changed settings leave it `stale` and changed steps
/// are run in place (by provisioning).
pub fn plan_up(
    desired: &[Desired],
    declared: &[&str],
    observed: &[Observed],
    rebuild: bool,
) -> Plan {
    let mut machines = Vec::new();
    for d in desired {
        let (cur, dups) = current(d.machine.as_str(), observed);
        let engine = cur.map_or_else(|| "local".to_string(), |o| o.engine.clone());
        let mut outdated = Vec::new();
        let (action, generation) = match cur {
            None => (Action::Create, 1),
            Some(o) => {
                let id = o.id.clone();
                let config_changed = o.config != d.config || o.provider != d.provider;
                let fp_changed = match (o.labels.get(labels::FINGERPRINT), &d.fingerprint) {
                    (Some(old), Some(new)) => old != new,
                    _ => false,
                };
                let why = || {
                    let old: BTreeMap<String, String> = o
                        .labels
                        .get(labels::INPUTS)
                        .and_then(|j| serde_json::from_str(j).ok())
                        .unwrap_or_default();
                    let r = crate::lock::reasons(&old, &d.inputs);
                    if r.is_empty() {
                        vec!["its settings changed".to_string()]
                    } else {
                        r
                    }
                };
                let action = if o.state == MachineState::Dead {
                    Action::Recreate {
                        id,
                        reason: "its engine reports it dead".to_string(),
                    }
                } else if (config_changed || fp_changed) && rebuild {
                    Action::Recreate {
                        id,
                        reason: why().join(", "),
                    }
                } else if config_changed {
                    Action::Stale {
                        id,
                        start: o.state.can_start(),
                    }
                } else {
                    if fp_changed {
                        outdated = why();
                    }
                    if o.state.can_start() {
                        Action::Start { id }
                    } else if o.state.is_suspended() {
                        Action::Resume { id }
                    } else {
                        Action::Keep { id }
                    }
                };
                // A replacement is a new generation, made beside the old one: above every
                // generation kept.
                let generation = if matches!(action, Action::Recreate { .. }) {
                    observed
                        .iter()
                        .filter(|x| x.machine == d.machine.as_str())
                        .map(|x| x.generation)
                        .max()
                        .unwrap_or(o.generation)
                        + 1
                } else {
                    o.generation
                };
                (action, generation)
            }
        };
        // A new generation's build left by a crash goes too.
        let candidates = observed.iter().filter(|o| {
            o.machine == d.machine.as_str() && o.labels.contains_key(labels::CANDIDATE)
        });
        machines.push(MachinePlan {
            machine: d.machine.clone(),
            action,
            duplicates: dups
                .into_iter()
                .chain(candidates)
                .map(|o| o.id.clone())
                .collect(),
            generation,
            outdated,
            engine,
        });
    }
    Plan {
        machines,
        orphans: orphans(declared, observed),
    }
}

/// Resources whose machine is not declared.
fn orphans(declared: &[&str], observed: &[Observed]) -> Vec<Observed> {
    observed
        .iter()
        .filter(|o| !declared.contains(&o.machine.as_str()))
        .cloned()
        .collect()
}

/// One row of `status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StatusRow {
    pub machine: String,
    pub provider: String,
    /// not-created, running, stopped, created, paused, transitioning, dead, stale, orphan.
    pub state: String,
    /// The engine state behind `stale` and `orphan`; the same as `state` otherwise.
    pub engine_state: Option<String>,
    pub id: Option<String>,
    pub resource_name: Option<String>,
    pub generation: Option<u32>,
    pub created: Option<String>,
    pub ports: Vec<String>,
    /// The fingerprint written on the resource (see `Envfile.lock`), when it has one.
    pub fingerprint: Option<String>,
    /// The engine it is on (`local`, or an endpoint's name).
    pub engine: Option<String>,
    /// Why it is `unreachable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Status rows for `desired` in order, then orphans (when `with_orphans`).
pub fn status(desired: &[Desired], observed: &[Observed], with_orphans: bool) -> Vec<StatusRow> {
    let mut rows = Vec::new();
    let row = |machine: &str, provider: &str, state: String, o: Option<&Observed>| StatusRow {
        machine: machine.to_string(),
        provider: provider.to_string(),
        state,
        engine_state: o.map(|o| o.state.as_str().to_string()),
        id: o.map(|o| o.id.clone()),
        resource_name: o.map(|o| o.resource_name.clone()),
        generation: o.map(|o| o.generation),
        created: o.map(|o| o.created.clone()).filter(|c| !c.is_empty()),
        ports: o
            .map(|o| o.ports.iter().map(|p| p.to_string()).collect())
            .unwrap_or_default(),
        fingerprint: o.and_then(|o| {
            o.labels
                .get(envrig_provider_api::labels::FINGERPRINT)
                .cloned()
        }),
        engine: o.map(|o| o.engine.clone()),
        reason: None,
    };
    for d in desired {
        let (cur, _) = current(d.machine.as_str(), observed);
        let state = match cur {
            None => "not-created".to_string(),
            Some(o) if o.config != d.config || o.provider != d.provider => "stale".to_string(),
            // Paused (Docker) or its memory saved (libvirt): either way, suspended.
            Some(o) if o.state.is_suspended() => "suspended".to_string(),
            Some(o) => o.state.as_str().to_string(),
        };
        rows.push(row(d.machine.as_str(), &d.provider, state, cur));
    }
    if with_orphans {
        let declared: Vec<&str> = desired.iter().map(|d| d.machine.as_str()).collect();
        for o in orphans(&declared, observed) {
            rows.push(row(&o.machine, &o.provider, "orphan".to_string(), Some(&o)));
        }
    }
    rows
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.machines {
            let a = match &m.action {
                Action::Create => "create".to_string(),
                Action::Start { id } => format!("start {id}"),
                Action::Keep { id } => format!("keep {id}"),
                Action::Stale { id, start: false } => format!("stale {id} (left as it is)"),
                Action::Stale { id, start: true } => format!("stale {id} (started, left as it is)"),
                Action::Resume { id } => format!("resume {id}"),
                Action::Recreate { id, reason } => format!("recreate {id}: {reason}"),
            };
            write!(f, "{} (gen {}): {a}", m.machine, m.generation)?;
            if !m.duplicates.is_empty() {
                write!(f, "; remove duplicates {}", m.duplicates.join(", "))?;
            }
            writeln!(f)?;
        }
        for o in &self.orphans {
            writeln!(f, "orphan {} ({})", o.machine, o.id)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_is_a_machine_only_under_the_name_its_labels_give() {
        let info = |name: &str| MachineInfo {
            id: "c1".into(),
            resource_name: name.into(),
            state: MachineState::Running,
            labels: BTreeMap::from([
                (labels::ENV.to_string(), "0123456789abcdef".to_string()),
                (labels::PROJECT.to_string(), "shop".to_string()),
                (labels::MACHINE.to_string(), "web".to_string()),
                (labels::GENERATION.to_string(), "2".to_string()),
            ]),
            ports: vec![],
        };
        assert!(Observed::from_info("docker", "local", info("shop-01234567-web-2")).is_some());
        assert!(Observed::from_info("docker", "local", info("shop-01234567-web-2-next")).is_some());
        // Run by hand from a snapshot image: the image's labels, another name.
        assert!(Observed::from_info("docker", "local", info("festive_bell")).is_none());
        assert!(Observed::from_info("docker", "local", info("shop-01234567-web-1")).is_none());
        // The relabel helper of an import is the provider's own, whatever its name.
        let mut helper = info("brave_turing");
        helper
            .labels
            .insert(labels::CANDIDATE.to_string(), "relabel".to_string());
        assert!(Observed::from_info("docker", "local", helper).is_some());
    }

    fn d(name: &str, config: &str) -> Desired {
        Desired {
            machine: Name::parse(name).unwrap(),
            provider: "docker".into(),
            config: config.into(),
            fingerprint: None,
            inputs: BTreeMap::new(),
        }
    }

    fn o(machine: &str, id: &str, state: MachineState, config: &str, created: &str) -> Observed {
        Observed {
            provider: "docker".into(),
            engine: "local".into(),
            machine: machine.into(),
            generation: 1,
            id: id.into(),
            resource_name: format!("p-x-{machine}-1"),
            state,
            config: config.into(),
            created: created.into(),
            ports: Vec::new(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn up_plans_every_case() {
        use MachineState::*;
        let desired = [
            d("new", "c"),
            d("stopped", "c"),
            d("running", "c"),
            d("changed", "c2"),
            d("dead", "c"),
            d("twice", "c"),
        ];
        let observed = [
            o("stopped", "s1", Stopped, "c", "t1"),
            o("running", "r1", Running, "c", "t1"),
            o("changed", "c1", Running, "c1", "t1"),
            o("dead", "d1", Dead, "c", "t1"),
            o("twice", "w1", Stopped, "c", "t1"),
            o("twice", "w2", Running, "c", "t2"),
            o("gone", "g1", Running, "c", "t1"),
        ];
        let declared: Vec<&str> = desired.iter().map(|d| d.machine.as_str()).collect();
        insta::assert_snapshot!(plan_up(&desired, &declared, &observed, false).to_string(), @r"
        new (gen 1): create
        stopped (gen 1): start s1
        running (gen 1): keep r1
        changed (gen 1): stale c1 (left as it is)
        dead (gen 2): recreate d1: its engine reports it dead
        twice (gen 1): keep w2; remove duplicates w1
        orphan gone (g1)
        ");
        let p = plan_up(&desired[3..4], &declared, &observed, true);
        assert_eq!(
            p.machines[0].action,
            Action::Recreate {
                id: "c1".into(),
                reason: "its settings changed".into()
            }
        );
    }

    #[test]
    fn changed_fingerprints_rebuild_or_say_why() {
        let mut want = d("web", "c");
        want.fingerprint = Some("f2".into());
        want.inputs = BTreeMap::from([("step `s`".to_string(), "22".to_string())]);
        let mut g1 = o("web", "g1", MachineState::Stopped, "c", "t1");
        let mut g2 = o("web", "g2", MachineState::Running, "c", "t2");
        g2.generation = 2;
        for (x, fp) in [(&mut g1, "f0"), (&mut g2, "f1")] {
            x.labels.insert(labels::FINGERPRINT.into(), fp.into());
            x.labels
                .insert(labels::INPUTS.into(), r#"{"step `s`":"11"}"#.into());
        }
        let mut build = o("web", "b3", MachineState::Running, "c", "t3");
        build.generation = 3;
        build.labels.insert(labels::CANDIDATE.into(), "1".into());
        let observed = [g1.clone(), g2.clone(), build];
        // Immutable: generation 3 beside 2 (the running one), the crashed build removed.
        let p = plan_up(std::slice::from_ref(&want), &["web"], &observed, true);
        assert_eq!(
            p.machines[0].action,
            Action::Recreate {
                id: "g2".into(),
                reason: "step `s` changed".into()
            }
        );
        assert_eq!(
            p.machines[0].generation, 4,
            "above every generation there is"
        );
        assert_eq!(p.machines[0].duplicates, ["b3"]);
        // Not immutable: kept, with the reason.
        let p = plan_up(std::slice::from_ref(&want), &["web"], &observed, false);
        assert_eq!(p.machines[0].action, Action::Keep { id: "g2".into() });
        assert_eq!(p.machines[0].outdated, ["step `s` changed"]);
        // After a rollback the older generation runs: it is the current one.
        g1.state = MachineState::Running;
        g2.state = MachineState::Stopped;
        assert_eq!(current("web", &[g1, g2]).0.unwrap().id, "g1");
    }

    #[test]
    fn a_second_up_is_all_keep() {
        let desired = [d("a", "c"), d("b", "c")];
        let observed = [
            o("a", "1", MachineState::Running, "c", "t"),
            o("b", "2", MachineState::Running, "c", "t"),
        ];
        let p = plan_up(&desired, &["a", "b"], &observed, false);
        assert!(
            p.machines
                .iter()
                .all(|m| matches!(m.action, Action::Keep { .. }))
        );
        assert!(p.orphans.is_empty());
        // `up a` of a project that also declares b: b is not an orphan.
        let p = plan_up(&desired[..1], &["a", "b"], &observed, false);
        assert!(p.orphans.is_empty());
        // A stopped stale machine is started; a paused one resumed.
        let other = [
            o("a", "1", MachineState::Stopped, "old", "t"),
            o("b", "2", MachineState::Paused, "c", "t"),
        ];
        let p = plan_up(&desired, &["a", "b"], &other, false);
        assert_eq!(
            p.machines[0].action,
            Action::Stale {
                id: "1".into(),
                start: true
            }
        );
        assert_eq!(p.machines[1].action, Action::Resume { id: "2".into() });
    }

    #[test]
    fn status_marks_stale_missing_and_orphans() {
        let desired = [d("a", "c"), d("b", "c"), d("c", "new")];
        let observed = [
            o("a", "1", MachineState::Running, "c", "t"),
            o("c", "3", MachineState::Stopped, "old", "t"),
            o("z", "9", MachineState::Running, "c", "t"),
        ];
        let rows = status(&desired, &observed, true);
        let states: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.machine.as_str(), r.state.as_str()))
            .collect();
        assert_eq!(
            states,
            [
                ("a", "running"),
                ("b", "not-created"),
                ("c", "stale"),
                ("z", "orphan")
            ]
        );
        assert_eq!(rows[2].engine_state.as_deref(), Some("stopped"));
    }
}
