//! Provisioning steps by content: each step's identity is the hash of what it does (inline
//! text or file bytes, args, env, destination, user), so a `run = "once"` step runs again only
//! when that hash changes, and envrig can say why a step runs.
//!
//! Pure logic: hashing, the record of what ran, and which steps to run. Running them is
//! `ops::provision`, through the provider trait.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::envfile::{RunPolicy, Step, StepKind};
use crate::identity::hex;

/// Where, inside a machine, the record of what ran is kept.
pub const RECORD_PATH: &str = "/var/lib/envrig/provisioned.json";
/// Where scripts are copied to before they run.
pub const SCRIPT_DIR: &str = "/tmp/envrig";

/// Line endings normalised for a Linux guest.
pub fn normalise(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\r' && text.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// One step with its content hash and a name for people.
#[derive(Debug, Clone)]
pub struct HashedStep<'a> {
    pub step: &'a Step,
    pub hash: String,
    pub label: String,
}

/// How a step is named in messages: its `name`, else its kind and what it works on.
pub fn label(step: &Step) -> String {
    if let Some(n) = &step.name {
        return format!("step `{n}`");
    }
    match &step.kind {
        StepKind::Shell(_) => format!("step #{} (shell)", step.index + 1),
        StepKind::Script { path, .. } => {
            let base = Path::new(path)
                .file_name()
                .map_or(path.clone(), |f| f.to_string_lossy().into_owned());
            format!("script `{base}`")
        }
        StepKind::File { destination, .. } => format!("file `{destination}`"),
    }
}

fn feed_file_tree(h: &mut Sha256, root: &Path, rel: &Path) -> std::io::Result<()> {
    let full = root.join(rel);
    let meta = std::fs::symlink_metadata(&full)?;
    h.update(rel.to_string_lossy().as_bytes());
    h.update([0]);
    if meta.is_dir() {
        h.update(b"d");
        let mut entries: Vec<_> = std::fs::read_dir(&full)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            feed_file_tree(h, root, &rel.join(e.file_name()))?;
        }
    } else if meta.file_type().is_symlink() {
        h.update(b"l");
        h.update(std::fs::read_link(&full)?.to_string_lossy().as_bytes());
    } else {
        use std::os::unix::fs::PermissionsExt;
        h.update(if meta.permissions().mode() & 0o111 != 0 {
            b"x"
        } else {
            b"f"
        });
        h.update(std::fs::read(&full)?);
    }
    h.update([0]);
    Ok(())
}

/// The content hash of a step; files are read relative to `dir` (the Envfile's folder).
pub fn hash_step(dir: &Path, step: &Step) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let field = |h: &mut Sha256, k: &str, v: &[u8]| {
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    };
    match &step.kind {
        StepKind::Shell(text) => field(&mut h, "shell", &normalise(text.as_bytes())),
        StepKind::Script { path, args } => {
            field(
                &mut h,
                "script",
                &normalise(&std::fs::read(dir.join(path))?),
            );
            for a in args {
                field(&mut h, "arg", a.as_bytes());
            }
        }
        StepKind::File {
            source,
            destination,
        } => {
            let src = dir.join(source);
            let mut tree = Sha256::new();
            let (root, rel) = match (src.parent(), src.file_name()) {
                (Some(p), Some(f)) => (p.to_path_buf(), Path::new(f).to_path_buf()),
                _ => (src.clone(), Path::new(".").to_path_buf()),
            };
            // The tree is hashed relative to the source's own name, so moving the project
            // folder does not change the hash.
            feed_file_tree(&mut tree, &root, &rel)?;
            field(&mut h, "file", &tree.finalize());
            field(&mut h, "destination", destination.as_bytes());
        }
    }
    for (k, v) in &step.env {
        field(&mut h, "env", format!("{k}={v}").as_bytes());
    }
    if let Some(u) = &step.user {
        field(&mut h, "user", u.as_bytes());
    }
    Ok(hex(&h.finalize())[..16].to_string())
}

/// Hashes every step of a machine.
pub fn hash_steps<'a>(dir: &Path, steps: &'a [Step]) -> std::io::Result<Vec<HashedStep<'a>>> {
    steps
        .iter()
        .map(|s| {
            Ok(HashedStep {
                step: s,
                hash: hash_step(dir, s)?,
                label: label(s),
            })
        })
        .collect()
}

/// What ran on a machine: written inside it and in `.envrig/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub steps: Vec<RanStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RanStep {
    pub index: usize,
    pub hash: String,
    pub label: String,
}

impl Record {
    pub fn has(&self, hash: &str) -> bool {
        self.steps.iter().any(|s| s.hash == hash)
    }

    /// The record a baked layer holds: it was baked right after every `once` step of its
    /// fingerprint (whose hashes are `steps`) ran, before any `always` step.
    pub fn baked(steps: &[HashedStep<'_>]) -> Record {
        let mut r = Record::default();
        for s in steps.iter().filter(|s| s.step.run == RunPolicy::Once) {
            r.ran(s, steps);
        }
        r
    }

    /// Notes that a step ran. `current` are the machine's steps now: an older entry at the
    /// same index is dropped only when no current step has its hash (it was changed, not
    /// moved), so inserting a step never makes others run again.
    pub fn ran(&mut self, s: &HashedStep<'_>, current: &[HashedStep<'_>]) {
        self.steps.retain(|r| {
            r.hash != s.hash
                && (r.index != s.step.index || current.iter().any(|c| c.hash == r.hash))
        });
        self.steps.push(RanStep {
            index: s.step.index,
            hash: s.hash.clone(),
            label: s.label.clone(),
        });
        self.steps.sort_by_key(|r| r.index);
    }
}

/// Which steps a run is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `up` (and `provision`): pending `once` steps and every `always` step.
    Pending,
    /// `up --provision`, `provision --force`: every `once` and `always` step.
    Force(&'static str),
    /// `provision --step NAME...`: only these, `never` steps included.
    Only(Vec<String>),
}

/// A step chosen to run, and why.
#[derive(Debug, Clone)]
pub struct ToRun<'a> {
    pub step: HashedStep<'a>,
    pub reason: String,
}

/// Puts the `once` steps of `to_run` before its other steps, each group in its own order,
/// and returns where the others begin: a machine baked at that point holds what its `once`
/// steps made and nothing an `always` step did.
pub fn once_steps_first(to_run: &mut [ToRun<'_>]) -> usize {
    to_run.sort_by_key(|t| t.step.step.run != RunPolicy::Once);
    to_run
        .iter()
        .take_while(|t| t.step.step.run == RunPolicy::Once)
        .count()
}

/// Chooses the steps to run, in order, each with the reason shown to people.
pub fn choose<'a>(steps: &[HashedStep<'a>], record: &Record, mode: &Mode) -> Vec<ToRun<'a>> {
    let by_index: BTreeMap<usize, &RanStep> = record.steps.iter().map(|r| (r.index, r)).collect();
    let mut out = Vec::new();
    for s in steps {
        let reason = match (mode, s.step.run) {
            (Mode::Only(names), _) => {
                let named = s
                    .step
                    .name
                    .as_deref()
                    .is_some_and(|n| names.iter().any(|x| x == n));
                if !named {
                    continue;
                }
                "--step".to_string()
            }
            (_, RunPolicy::Never) => continue,
            (_, RunPolicy::Always) => "run = \"always\"".to_string(),
            (Mode::Force(flag), RunPolicy::Once) => flag.to_string(),
            (Mode::Pending, RunPolicy::Once) => {
                if record.has(&s.hash) {
                    continue;
                }
                match by_index.get(&s.step.index) {
                    Some(r) if r.label == s.label => format!("{} changed", s.label),
                    _ if record.steps.is_empty() => "first run".to_string(),
                    _ => "new step".to_string(),
                }
            }
        };
        out.push(ToRun {
            step: s.clone(),
            reason,
        });
    }
    out
}

/// A step's names, for `--step`: those that match nothing are a usage error.
pub fn unknown_step_names(steps: &[Step], names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| !steps.iter().any(|s| s.name.as_deref() == Some(n.as_str())))
        .cloned()
        .collect()
}

/// The command that runs an uploaded script: by its shebang (the kernel reads it, the file
/// is executable), else with `/bin/sh`.
pub fn script_argv(guest_path: &str, body: &[u8], args: &[String]) -> Vec<String> {
    let mut argv = if body.starts_with(b"#!") {
        vec![guest_path.to_string()]
    } else {
        vec!["/bin/sh".to_string(), guest_path.to_string()]
    };
    argv.extend(args.iter().cloned());
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(index: usize, kind: StepKind, run: RunPolicy, name: Option<&str>) -> Step {
        Step {
            index,
            name: name.map(str::to_string),
            kind,
            run,
            user: None,
            env: BTreeMap::new(),
        }
    }

    #[test]
    fn crlf_is_normalised_and_does_not_change_the_hash() {
        assert_eq!(normalise(b"a\r\nb\rc\n"), b"a\nb\rc\n");
        let dir = tempfile::tempdir().unwrap();
        let a = step(
            0,
            StepKind::Shell("echo a\r\necho b\r\n".into()),
            RunPolicy::Once,
            None,
        );
        let b = step(
            0,
            StepKind::Shell("echo a\necho b\n".into()),
            RunPolicy::Once,
            None,
        );
        assert_eq!(
            hash_step(dir.path(), &a).unwrap(),
            hash_step(dir.path(), &b).unwrap()
        );
    }

    #[test]
    fn the_hash_follows_content_args_env_and_destination() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.sh"), "echo 1\n").unwrap();
        let script = |args: Vec<&str>| {
            step(
                0,
                StepKind::Script {
                    path: "s.sh".into(),
                    args: args.into_iter().map(String::from).collect(),
                },
                RunPolicy::Once,
                None,
            )
        };
        let h1 = hash_step(dir.path(), &script(vec!["a"])).unwrap();
        assert_ne!(
            h1,
            hash_step(dir.path(), &script(vec!["a", ""])).unwrap(),
            "an empty argument counts"
        );
        std::fs::write(dir.path().join("s.sh"), "echo 2\n").unwrap();
        assert_ne!(
            h1,
            hash_step(dir.path(), &script(vec!["a"])).unwrap(),
            "the file's bytes count"
        );
        let mut with_env = script(vec!["a"]);
        with_env.env.insert("K".into(), "V".into());
        assert_ne!(
            hash_step(dir.path(), &script(vec!["a"])).unwrap(),
            hash_step(dir.path(), &with_env).unwrap()
        );

        std::fs::create_dir_all(dir.path().join("conf/sub")).unwrap();
        std::fs::write(dir.path().join("conf/sub/x"), "1").unwrap();
        let file = |dest: &str| {
            step(
                0,
                StepKind::File {
                    source: "conf".into(),
                    destination: dest.into(),
                },
                RunPolicy::Once,
                None,
            )
        };
        let f1 = hash_step(dir.path(), &file("/etc/conf")).unwrap();
        assert_ne!(f1, hash_step(dir.path(), &file("/etc/other")).unwrap());
        std::fs::write(dir.path().join("conf/sub/x"), "2").unwrap();
        assert_ne!(
            f1,
            hash_step(dir.path(), &file("/etc/conf")).unwrap(),
            "a folder's contents count"
        );
    }

    #[test]
    fn choose_runs_pending_once_steps_and_always_steps_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("setup.sh"), "echo v1\n").unwrap();
        let steps = vec![
            step(
                0,
                StepKind::Shell("echo once".into()),
                RunPolicy::Once,
                Some("pkgs"),
            ),
            step(
                1,
                StepKind::Script {
                    path: "setup.sh".into(),
                    args: vec![],
                },
                RunPolicy::Once,
                None,
            ),
            step(
                2,
                StepKind::Shell("echo always".into()),
                RunPolicy::Always,
                None,
            ),
            step(
                3,
                StepKind::Shell("echo never".into()),
                RunPolicy::Never,
                Some("debug"),
            ),
        ];
        let hashed = hash_steps(dir.path(), &steps).unwrap();
        let why = |r: &Record, m: &Mode| -> Vec<String> {
            choose(&hashed, r, m)
                .iter()
                .map(|t| format!("{}: {}", t.step.label, t.reason))
                .collect()
        };
        let mut record = Record::default();
        assert_eq!(
            why(&record, &Mode::Pending),
            [
                "step `pkgs`: first run",
                "script `setup.sh`: first run",
                "step #3 (shell): run = \"always\""
            ]
        );
        for h in &hashed[..3] {
            record.ran(h, &hashed);
        }
        assert_eq!(
            why(&record, &Mode::Pending),
            ["step #3 (shell): run = \"always\""]
        );
        assert_eq!(why(&record, &Mode::Force("--force")).len(), 3);
        assert_eq!(
            why(&record, &Mode::Only(vec!["debug".into()])),
            ["step `debug`: --step"]
        );

        std::fs::write(dir.path().join("setup.sh"), "echo v2\n").unwrap();
        let hashed2 = hash_steps(dir.path(), &steps).unwrap();
        let got: Vec<String> = choose(&hashed2, &record, &Mode::Pending)
            .iter()
            .map(|t| t.reason.clone())
            .collect();
        assert_eq!(got, ["script `setup.sh` changed", "run = \"always\""]);

        let mut added = steps.clone();
        added.insert(
            0,
            step(0, StepKind::Shell("echo new".into()), RunPolicy::Once, None),
        );
        for (i, s) in added.iter_mut().enumerate() {
            s.index = i;
        }
        std::fs::write(dir.path().join("setup.sh"), "echo v1\n").unwrap();
        let hashed3 = hash_steps(dir.path(), &added).unwrap();
        let got: Vec<String> = choose(&hashed3, &record, &Mode::Pending)
            .iter()
            .map(|t| t.reason.clone())
            .collect();
        assert_eq!(
            got,
            ["new step", "run = \"always\""],
            "moved steps are recognised by content"
        );
    }

    #[test]
    fn a_baked_record_leaves_only_always_steps_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let steps = vec![
            step(
                0,
                StepKind::Shell("echo once".into()),
                RunPolicy::Once,
                None,
            ),
            step(
                1,
                StepKind::Shell("echo always".into()),
                RunPolicy::Always,
                None,
            ),
            step(
                2,
                StepKind::Shell("echo never".into()),
                RunPolicy::Never,
                None,
            ),
        ];
        let hashed = hash_steps(dir.path(), &steps).unwrap();
        let record = Record::baked(&hashed);
        assert!(record.has(&hashed[0].hash));
        assert!(
            !record.has(&hashed[1].hash),
            "a layer is baked before `always` steps"
        );
        assert!(!record.has(&hashed[2].hash), "a `never` step was not baked");
        let chosen: Vec<usize> = choose(&hashed, &record, &Mode::Pending)
            .iter()
            .map(|t| t.step.step.index)
            .collect();
        assert_eq!(chosen, [1]);
    }

    #[test]
    fn once_steps_go_first_for_baking_each_group_in_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let policies = [
            RunPolicy::Always,
            RunPolicy::Once,
            RunPolicy::Always,
            RunPolicy::Once,
        ];
        let steps: Vec<_> = policies
            .iter()
            .enumerate()
            .map(|(i, p)| step(i, StepKind::Shell(format!("echo {i}")), *p, None))
            .collect();
        let hashed = hash_steps(dir.path(), &steps).unwrap();
        let mut to_run = choose(&hashed, &Record::default(), &Mode::Pending);
        let at = once_steps_first(&mut to_run);
        let order: Vec<usize> = to_run.iter().map(|t| t.step.step.index).collect();
        assert_eq!((order, at), (vec![1, 3, 0, 2], 2));
    }

    #[test]
    fn scripts_run_by_shebang_else_sh() {
        assert_eq!(
            script_argv("/tmp/x", b"#!/bin/bash\n", &["a".into()]),
            ["/tmp/x", "a"]
        );
        assert_eq!(script_argv("/tmp/x", b"echo\n", &[]), ["/bin/sh", "/tmp/x"]);
    }
}
