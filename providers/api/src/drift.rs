//! Drift: what changed inside a machine since its generation was provisioned.
//!
//! Providers report raw changes ([`PathChange`]); the core leaves out volatile and ignored
//! paths. For engines that cannot diff a file system themselves, this module has a listing
//! run inside the guest ([`LIST_SCRIPT`]) and the comparison of two listings ([`compare`]):
//! pure logic, unit-tested here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Changed,
    Deleted,
}

impl ChangeKind {
    /// One letter, as `docker diff` prints them (A, C, D).
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One path added, changed or deleted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PathChange {
    pub path: String,
    pub kind: ChangeKind,
}

/// Where envrig keeps its own records inside a machine: never drift.
pub const ENVRIG_DIR: &str = "/var/lib/envrig";

/// Lists the guest's root file system, one entry per line: path, type, size, modification
/// time, mode, separated by tabs; kernel and runtime file systems are not descended into.
/// GNU find's `-printf` when it has it (sub-second times), else busybox `stat`.
pub const LIST_SCRIPT: &str = r#"set -e
if find / -maxdepth 0 -printf '' >/dev/null 2>&1; then
  exec find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp -o -path /var/lib/envrig \) -prune -o -printf '%p\t%y\t%s\t%T@\t%m\n'
else
  exec find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp -o -path /var/lib/envrig \) -prune -o -exec stat -c '%n	%F	%s	%Y	%a' {} +
fi
"#;

/// One listed path: type, size, modification time, mode (as printed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: String,
    pub size: String,
    pub mtime: String,
    pub mode: String,
}

impl Entry {
    fn is_dir(&self) -> bool {
        self.kind == "d" || self.kind == "directory"
    }
}

/// Parses [`LIST_SCRIPT`]'s output; malformed lines are skipped.
pub fn parse(text: &str) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split('\t');
        let (Some(path), Some(kind), Some(size), Some(mtime), Some(mode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if path.is_empty() {
            continue;
        }
        out.insert(
            path.to_string(),
            Entry {
                kind: kind.to_string(),
                size: size.to_string(),
                mtime: mtime.to_string(),
                mode: mode.to_string(),
            },
        );
    }
    out
}

/// The changes from listing `base` to listing `now`. A directory counts as changed only when
/// its type or mode changed (its time moves whenever a child is added or removed).
pub fn compare(base: &BTreeMap<String, Entry>, now: &BTreeMap<String, Entry>) -> Vec<PathChange> {
    let mut out = Vec::new();
    for (path, e) in now {
        let kind = match base.get(path) {
            None => Some(ChangeKind::Added),
            Some(b) if b.kind != e.kind || b.mode != e.mode => Some(ChangeKind::Changed),
            Some(b) if !e.is_dir() && (b.size != e.size || b.mtime != e.mtime) => {
                Some(ChangeKind::Changed)
            }
            Some(_) => None,
        };
        if let Some(kind) = kind {
            out.push(PathChange {
                path: path.clone(),
                kind,
            });
        }
    }
    for path in base.keys() {
        if !now.contains_key(path) {
            out.push(PathChange {
                path: path.clone(),
                kind: ChangeKind::Deleted,
            });
        }
    }
    out.sort();
    out
}

/// Drops changed directories that only hold other changes (engines that diff layers mark
/// every parent of a changed path as changed).
pub fn without_parents(mut changes: Vec<PathChange>) -> Vec<PathChange> {
    changes.sort();
    let paths: Vec<String> = changes.iter().map(|c| c.path.clone()).collect();
    changes.retain(|c| {
        c.kind != ChangeKind::Changed || {
            let prefix = format!("{}/", c.path.trim_end_matches('/'));
            !paths.iter().any(|p| p.starts_with(&prefix))
        }
    });
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_compare_into_added_changed_deleted() {
        let base = parse(
            "/\td\t4096\t1.0\t755\n/etc\td\t4096\t1.0\t755\n/etc/a\tf\t3\t5.5\t644\n/etc/b\tf\t3\t5.5\t644\n/etc/c\tf\t3\t5.5\t644\nbad line\n",
        );
        let now = parse(
            "/\td\t4096\t9.0\t755\n/etc\td\t4096\t9.0\t755\n/etc/a\tf\t4\t9.5\t644\n/etc/c\tf\t3\t5.5\t600\n/etc/d\tf\t1\t9.0\t644\n",
        );
        let got: Vec<(char, String)> = compare(&base, &now)
            .into_iter()
            .map(|c| (c.kind.letter(), c.path))
            .collect();
        assert_eq!(
            got,
            vec![
                ('C', "/etc/a".to_string()),
                ('D', "/etc/b".to_string()),
                ('C', "/etc/c".to_string()),
                ('A', "/etc/d".to_string()),
            ]
        );
    }

    #[test]
    fn busybox_listings_know_directories_too() {
        let base = parse("/srv\tdirectory\t40\t1\t755\n");
        let now = parse("/srv\tdirectory\t60\t2\t755\n");
        assert!(compare(&base, &now).is_empty());
    }

    #[test]
    fn parents_of_changes_are_dropped() {
        let c = |p: &str, kind| PathChange {
            path: p.to_string(),
            kind,
        };
        let out = without_parents(vec![
            c("/etc", ChangeKind::Changed),
            c("/etc/x", ChangeKind::Added),
            c("/etcetera", ChangeKind::Changed),
            c("/srv", ChangeKind::Added),
        ]);
        let paths: Vec<&str> = out.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["/etc/x", "/etcetera", "/srv"]);
    }
}
