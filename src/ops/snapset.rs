//! Snapshot sets: the machines one `snapshot save` (or `export`, or `import`) took at one
//! moment. Each snapshot names its set and the set's machines in its labels, so a set that
//! a killed envrig left half-made is recognised from the engines alone and never listed: a
//! snapshot is listed whole or not at all.
//!
//! A set missing some of its machines is still listed when a later whole save of the same
//! name replaced each missing machine's snapshot (`snapshot save NAME web --force`). A set
//! that lost a machine any other way (a killed save, import or destroy; `destroy MACHINE`,
//! which deletes that machine's snapshots) is not: it is not the moment it was.
//! Temporary snapshots (an export's moment) are never listed.

use std::collections::{BTreeMap, BTreeSet};

use envrig_provider_api::{Snapshot, labels};

/// The labels that make `machines` one set, saved now.
pub fn set_labels(machines: &[&str]) -> BTreeMap<String, String> {
    let id = crate::identity::new_instance_id();
    BTreeMap::from([
        (
            labels::SNAPSHOT_SET.to_string(),
            id.trim_start_matches("run-").to_string(),
        ),
        (labels::SNAPSHOT_MACHINES.to_string(), machines.join(",")),
    ])
}

/// A label's value; an empty one counts as absent (Docker cannot remove an image's label,
/// only blank it, so an imported image carries the exporter's labels blanked).
fn label<'a>(s: &'a Snapshot, key: &str) -> Option<&'a String> {
    s.labels.get(key).filter(|v| !v.is_empty())
}

fn set_of(s: &Snapshot) -> Option<(&str, BTreeSet<&str>)> {
    let id = label(s, labels::SNAPSHOT_SET)?;
    let machines = label(s, labels::SNAPSHOT_MACHINES)?
        .split(',')
        .filter(|m| !m.is_empty())
        .collect();
    Some((id.as_str(), machines))
}

/// Whether `s` is a temporary snapshot.
pub fn temporary(s: &Snapshot) -> bool {
    label(s, labels::SNAPSHOT_TEMP).is_some()
}

/// Whether `s` is a temporary snapshot whose process is gone.
pub fn abandoned(s: &Snapshot) -> bool {
    label(s, labels::SNAPSHOT_TEMP).is_some_and(|owner| !crate::identity::owner_alive(owner))
}

/// The snapshots of `all` that are listed: whole sets, and sets whose missing machines a
/// later whole save replaced. Snapshots saved before sets were recorded count as whole.
pub fn listed<T: Clone>(all: &[(T, Snapshot)]) -> Vec<(T, Snapshot)> {
    // name -> set id -> (declared machines, present machines, created)
    type Sets<'a> = BTreeMap<&'a str, (BTreeSet<&'a str>, BTreeSet<&'a str>, &'a str)>;
    let mut by_name: BTreeMap<&str, Sets<'_>> = BTreeMap::new();
    for (_, s) in all.iter().filter(|(_, s)| !temporary(s)) {
        if let Some((id, declared)) = set_of(s) {
            let e = by_name
                .entry(s.name.as_str())
                .or_default()
                .entry(id)
                .or_insert_with(|| (declared, BTreeSet::new(), s.created.as_str()));
            e.1.insert(s.machine.as_str());
        }
    }
    let complete = |d: &BTreeSet<&str>, p: &BTreeSet<&str>| d.is_subset(p);
    let shown = |name: &str, id: &str| -> bool {
        let Some(sets) = by_name.get(name) else {
            return true;
        };
        let Some((declared, present, created)) = sets.get(id) else {
            return true;
        };
        declared.difference(present).all(|missing| {
            sets.iter().any(|(other, (d, p, c))| {
                *other != id && p.contains(missing) && complete(d, p) && c >= created
            })
        })
    };
    all.iter()
        .filter(|(_, s)| !temporary(s))
        .filter(|(_, s)| match set_of(s) {
            Some((id, _)) => shown(&s.name, id),
            None => true,
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, machine: &str, set: &str, machines: &str, created: &str) -> Snapshot {
        let mut labels = BTreeMap::new();
        if !set.is_empty() {
            labels.insert(labels::SNAPSHOT_SET.to_string(), set.to_string());
            labels.insert(labels::SNAPSHOT_MACHINES.to_string(), machines.to_string());
        }
        Snapshot {
            id: format!("{name}-{machine}-{set}"),
            name: name.to_string(),
            machine: machine.to_string(),
            created: created.to_string(),
            running: true,
            spec: serde_json::from_str(
                r#"{"resource_name":"r","machine":"m","base":"b","cpus":null,"memory_bytes":null,"hostname":"h","env":{},"command":null,"ports":[],"synced":[],"labels":{},"options":{},"network":null}"#,
            )
            .unwrap(),
            labels,
        }
    }

    fn names(v: &[((), Snapshot)]) -> Vec<String> {
        v.iter()
            .map(|(_, s)| format!("{}:{}", s.name, s.machine))
            .collect()
    }

    #[test]
    fn a_set_a_killed_save_left_half_made_is_not_listed() {
        let all = vec![
            ((), snap("s", "a", "1", "a,b,c", "t1")),
            ((), snap("s", "b", "1", "a,b,c", "t1")),
            ((), snap("old", "a", "", "", "t0")),
        ];
        let l = listed(&all);
        assert_eq!(names(&l), vec!["old:a"], "legacy snapshots stay listed");
    }

    #[test]
    fn a_machine_saved_again_alone_leaves_the_rest_listed() {
        // `a` was saved again alone under the same name.
        let all = vec![
            ((), snap("s", "a", "2", "a", "t2")),
            ((), snap("s", "b", "1", "a,b", "t1")),
        ];
        assert_eq!(names(&listed(&all)), vec!["s:a", "s:b"]);
    }

    #[test]
    fn a_replacement_killed_half_way_lists_neither_set() {
        // The new set took `a` only; the old one lost `a` to it.
        let all = vec![
            ((), snap("s", "a", "2", "a,b", "t2")),
            ((), snap("s", "b", "1", "a,b", "t1")),
        ];
        assert!(listed(&all).is_empty());
    }

    #[test]
    fn temporary_snapshots_are_never_listed() {
        let mut t = snap("export-1", "a", "1", "a", "t1");
        t.labels
            .insert(labels::SNAPSHOT_TEMP.to_string(), "x:1:2".to_string());
        assert!(listed(&[((), t)]).is_empty());
    }
}
