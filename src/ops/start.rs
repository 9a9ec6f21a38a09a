//! What starting a generation means: its `always` steps and its readiness check, as the
//! Envfile said when the generation was made. Each generation carries them on its resource
//! (label [`START`]), so `rollback` starts an older generation the way `up` started it, even
//! after the Envfile moved on (a readiness check that names the new version, a changed
//! `always` step).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::envfile::{Machine, Ready, RunPolicy, Step, StepKind};

use envrig_provider_api::labels::START;

/// Recipes larger than this are not written on the resource (labels travel with every list
/// call); a generation without one is started with the Envfile's steps, and says so.
const MAX_LEN: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRecipe {
    pub always: Vec<AlwaysStep>,
    pub ready: Option<ReadyCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlwaysStep {
    pub index: usize,
    pub name: Option<String>,
    pub user: Option<String>,
    pub env: BTreeMap<String, String>,
    pub kind: AlwaysKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlwaysKind {
    Shell {
        text: String,
    },
    /// The script's text as it was, and its path relative to the Envfile (its name in
    /// messages and in the guest).
    Script {
        path: String,
        args: Vec<String>,
        body: String,
    },
    /// A host file copied in: the host's file as it is at the time of the start.
    File {
        source: String,
        destination: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyCheck {
    pub command: String,
    pub timeout_ms: u64,
    pub interval_ms: u64,
}

impl StartRecipe {
    /// The recipe of `m` as the Envfile in `dir` says now; `None` when a script cannot be
    /// read as text.
    pub fn of(dir: &Path, m: &Machine) -> Option<StartRecipe> {
        let mut always = Vec::new();
        for s in m.provision.iter().filter(|s| s.run == RunPolicy::Always) {
            let kind = match &s.kind {
                StepKind::Shell(text) => AlwaysKind::Shell { text: text.clone() },
                StepKind::Script { path, args } => AlwaysKind::Script {
                    path: path.clone(),
                    args: args.clone(),
                    body: String::from_utf8(std::fs::read(dir.join(path)).ok()?).ok()?,
                },
                StepKind::File {
                    source,
                    destination,
                } => AlwaysKind::File {
                    source: dir.join(source).to_string_lossy().into_owned(),
                    destination: destination.clone(),
                },
            };
            always.push(AlwaysStep {
                index: s.index,
                name: s.name.clone(),
                user: s.user.clone(),
                env: s.env.clone(),
                kind,
            });
        }
        let ready = m.ready.as_ref().map(|r| ReadyCheck {
            command: r.command.clone(),
            timeout_ms: u64::try_from(r.timeout.as_millis()).unwrap_or(u64::MAX),
            interval_ms: u64::try_from(r.interval.as_millis()).unwrap_or(u64::MAX),
        });
        Some(StartRecipe { always, ready })
    }

    /// The label value, when it is small enough to carry.
    pub fn to_label(&self) -> Option<String> {
        serde_json::to_string(self)
            .ok()
            .filter(|j| j.len() <= MAX_LEN)
    }

    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<StartRecipe> {
        serde_json::from_str(labels.get(START)?).ok()
    }

    pub fn ready(&self) -> Option<Ready> {
        self.ready.as_ref().map(|r| Ready {
            command: r.command.clone(),
            timeout: Duration::from_millis(r.timeout_ms),
            interval: Duration::from_millis(r.interval_ms),
        })
    }

    /// The `always` steps as Envfile steps whose files are under `dir`: scripts are written
    /// there (at their relative paths, which the Envfile's validation kept inside it);
    /// copied files keep their absolute host paths.
    pub fn steps(&self, dir: &Path) -> std::io::Result<Vec<Step>> {
        let mut out = Vec::new();
        for a in &self.always {
            let kind = match &a.kind {
                AlwaysKind::Shell { text } => StepKind::Shell(text.clone()),
                AlwaysKind::Script { path, args, body } => {
                    let rel = Path::new(path);
                    if rel.is_absolute()
                        || rel
                            .components()
                            .any(|c| !matches!(c, std::path::Component::Normal(_)))
                    {
                        return Err(std::io::Error::other(format!(
                            "script path `{path}` is not relative"
                        )));
                    }
                    let host = dir.join(rel);
                    if let Some(parent) = host.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&host, body)?;
                    StepKind::Script {
                        path: path.clone(),
                        args: args.clone(),
                    }
                }
                AlwaysKind::File {
                    source,
                    destination,
                } => StepKind::File {
                    source: source.clone(),
                    destination: destination.clone(),
                },
            };
            out.push(Step {
                index: a.index,
                name: a.name.clone(),
                kind,
                run: RunPolicy::Always,
                user: a.user.clone(),
                env: a.env.clone(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipe_round_trips_through_its_label_and_rebuilds_its_steps() {
        let r = StartRecipe {
            always: vec![
                AlwaysStep {
                    index: 1,
                    name: Some("serve".into()),
                    user: None,
                    env: BTreeMap::new(),
                    kind: AlwaysKind::Shell {
                        text: "httpd -p 80".into(),
                    },
                },
                AlwaysStep {
                    index: 2,
                    name: None,
                    user: Some("app".into()),
                    env: BTreeMap::from([("A".into(), "1".into())]),
                    kind: AlwaysKind::Script {
                        path: "bin/start.sh".into(),
                        args: vec!["x".into()],
                        body: "#!/bin/sh\necho hi\n".into(),
                    },
                },
            ],
            ready: Some(ReadyCheck {
                command: "true".into(),
                timeout_ms: 20_000,
                interval_ms: 500,
            }),
        };
        let labels = BTreeMap::from([(START.to_string(), r.to_label().unwrap())]);
        let back = StartRecipe::from_labels(&labels).unwrap();
        assert_eq!(back, r);
        let dir = tempfile::tempdir().unwrap();
        let steps = back.steps(dir.path()).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("bin/start.sh")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        assert_eq!(back.ready().unwrap().timeout, Duration::from_secs(20));
    }

    #[test]
    fn a_script_path_from_a_label_never_leaves_the_folder() {
        let r = StartRecipe {
            always: vec![AlwaysStep {
                index: 0,
                name: None,
                user: None,
                env: BTreeMap::new(),
                kind: AlwaysKind::Script {
                    path: "../../etc/x".into(),
                    args: vec![],
                    body: String::new(),
                },
            }],
            ready: None,
        };
        let dir = tempfile::tempdir().unwrap();
        assert!(r.steps(dir.path()).is_err());
    }
}
