//! What an environment from elsewhere (an archive given to `import`) would take from this
//! host, and whether that needs the user's word (`import --trust`). Pure: the caller reads
//! the Envfile, and says how a host path resolves (symbolic links) and which variables the
//! Envfile took from this host's environment.
//!
//! Host paths outside the import folder, privileges and this host's variables need trust;
//! published ports are shown and need none.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use envrig_provider_api::OptionValue;
use serde::Serialize;

use crate::envfile::{Envfile, StepKind};

/// What kind of thing a machine gets from this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    /// A host file or folder: a synced folder, a provisioning script or `file` source, a
    /// box given as a path.
    HostPath,
    /// Every privilege of the host's kernel: all devices, all capabilities.
    Privileged,
    /// A value of this host's environment, through `${VAR}`.
    HostVariable,
    /// A host port the machine publishes.
    Port,
    /// The memory it was saved with, resumed: the engine loads device state the archive chose.
    SavedMemory,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::HostPath => "host path",
            GrantKind::Privileged => "privileged",
            GrantKind::HostVariable => "host variable",
            GrantKind::Port => "port",
            GrantKind::SavedMemory => "saved memory",
        }
    }
}

/// One thing the environment gets from this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub kind: GrantKind,
    /// The machine it is for; `None` for the whole environment.
    pub machine: Option<String>,
    /// The Envfile key that asks for it.
    pub key: String,
    /// What it is (`/ -> /host (read-write)`).
    pub what: String,
    /// Why it needs `--trust`; `None` when it does not.
    pub risk: Option<String>,
}

/// The grant of resuming `machine` from the memory the archive saved with it.
pub fn saved_memory(machine: &str) -> Grant {
    Grant {
        kind: GrantKind::SavedMemory,
        machine: Some(machine.to_string()),
        key: format!("machines/{machine}.image"),
        what: "resumes where it was saved, from the memory in the archive".to_string(),
        risk: Some(
            "QEMU loads the device state the archive holds, which it does not defend against; `--cold` boots it from its disk instead".to_string(),
        ),
    }
}

/// Everything an imported environment would take from this host.
#[derive(Debug, Clone, Serialize)]
pub struct TrustReport {
    /// The import folder: paths inside it are the archive's own.
    pub folder: String,
    pub grants: Vec<Grant>,
}

impl TrustReport {
    /// The grants that need `--trust`.
    pub fn risky(&self) -> impl Iterator<Item = &Grant> {
        self.grants.iter().filter(|g| g.risk.is_some())
    }

    pub fn needs_trust(&self) -> bool {
        self.risky().next().is_some()
    }
}

/// What `import` does with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Proceed,
    /// Ask the person at the terminal.
    Ask,
    Refuse,
}

/// Nothing risky, or `--trust`: go on. Otherwise ask when someone can answer, else refuse.
pub fn decide(report: &TrustReport, trust: bool, interactive: bool) -> Decision {
    if trust || !report.needs_trust() {
        Decision::Proceed
    } else if interactive {
        Decision::Ask
    } else {
        Decision::Refuse
    }
}

/// `path` with `.` and `..` resolved without the file system (`..` of `/` is `/`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether `path` is `folder` or inside it, both absolute and resolved.
pub fn inside(folder: &Path, path: &Path) -> bool {
    normalize(path).starts_with(normalize(folder))
}

/// What `envfile`, to be imported into `folder`, takes from this host. `host_vars` are the
/// variables its `${VAR}` took from this host's environment; `real` resolves a host path
/// as the file system does (symbolic links), or returns it as it is.
pub fn assess(
    envfile: &Envfile,
    folder: &Path,
    host_vars: &BTreeSet<String>,
    real: &dyn Fn(&Path) -> PathBuf,
) -> TrustReport {
    let folder_real = normalize(&real(folder));
    let path_grant = |machine: &str, key: String, host: &Path, what: String| {
        let written = normalize(host);
        let resolved = normalize(&real(&written));
        let risk = (!inside(&folder_real, &resolved)).then(|| {
            if resolved == written {
                format!("`{}` is outside the import folder", written.display())
            } else {
                format!(
                    "`{}` leads to `{}`, outside the import folder",
                    written.display(),
                    resolved.display()
                )
            }
        });
        Grant {
            kind: GrantKind::HostPath,
            machine: Some(machine.to_string()),
            key,
            what,
            risk,
        }
    };
    let mut grants = Vec::new();
    for m in &envfile.machines {
        let name = m.name.as_str();
        let key = |k: &str| format!("machines.{name}.{k}");
        // A base given as a path is a disk of this host; `..` in it leaves the box store.
        let base = Path::new(&m.base);
        if base.is_absolute() {
            grants.push(path_grant(
                name,
                key("box"),
                base,
                format!("box {}", m.base),
            ));
        } else if base.components().any(|c| c == Component::ParentDir) {
            grants.push(Grant {
                kind: GrantKind::HostPath,
                machine: Some(name.to_string()),
                key: key("box"),
                what: format!("box {}", m.base),
                risk: Some(format!("`{}` leaves the box store", m.base)),
            });
        }
        for (i, s) in m.synced.iter().enumerate() {
            let mode = if s.read_only {
                "read-only"
            } else {
                "read-write"
            };
            grants.push(path_grant(
                name,
                key(&format!("synced[{i}]")),
                &s.host,
                format!("{} -> {} ({mode})", normalize(&s.host).display(), s.guest),
            ));
        }
        for s in &m.provision {
            let (k, rel) = match &s.kind {
                StepKind::Script { path, .. } => ("script", path),
                StepKind::File { source, .. } => ("file.source", source),
                StepKind::Shell(_) => continue,
            };
            let host = envfile.dir.join(rel);
            grants.push(path_grant(
                name,
                key(&format!("provision[{}].{k}", s.index)),
                &host,
                format!("{} copied into the machine", normalize(&host).display()),
            ));
        }
        if m.options().get("privileged") == Some(&OptionValue::Bool(true)) {
            grants.push(Grant {
                kind: GrantKind::Privileged,
                machine: Some(name.to_string()),
                key: key(&format!("{}.privileged", m.provider)),
                what: "every privilege of this host's kernel (all devices, all capabilities)"
                    .to_string(),
                risk: Some("a privileged machine can take over this host".to_string()),
            });
        }
        for p in &m.ports {
            grants.push(Grant {
                kind: GrantKind::Port,
                machine: Some(name.to_string()),
                key: key("ports"),
                what: p.to_string(),
                risk: None,
            });
        }
    }
    for v in host_vars {
        grants.push(Grant {
            kind: GrantKind::HostVariable,
            machine: None,
            key: format!("${{{v}}}"),
            what: format!("the value of `{v}` in this host's environment"),
            risk: Some(format!("`{v}` may hold a secret of this host")),
        });
    }
    TrustReport {
        folder: folder.display().to_string(),
        grants,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envfile::{LoadOptions, parse};

    const FOLDER: &str = "/imports/shop";

    fn envfile(src: &str) -> Envfile {
        let providers = crate::envfile::tests::providers();
        let env = |v: &str| (v == "HOME").then(|| "/home/me".to_string());
        let opts = LoadOptions {
            env: &env,
            provider_override: None,
            providers: &providers,
            check_paths: false,
        };
        let path = Path::new(FOLDER).join("Envfile");
        parse(src, &path, "Envfile", &opts)
            .unwrap_or_else(|e| panic!("{e}"))
            .0
    }

    fn report(src: &str, vars: &[&str]) -> TrustReport {
        let vars = vars.iter().map(|v| v.to_string()).collect();
        assess(&envfile(src), Path::new(FOLDER), &vars, &|p| {
            p.to_path_buf()
        })
    }

    fn risky(r: &TrustReport) -> Vec<(&str, &str)> {
        r.risky()
            .map(|g| (g.kind.as_str(), g.key.as_str()))
            .collect()
    }

    const HEAD: &str = "[boxes.bb]\ndocker = \"busybox\"\nlibvirt = \"/var/lib/disks/x\"\n";

    #[test]
    fn an_honest_environment_needs_no_trust() {
        let r = report(
            &format!(
                "{HEAD}[machines.web]\nbox = \"bb\"\nports = [\"8080:80\"]\n\
                 synced = [{{ host = \"app\", guest = \"/app\" }}]\n\
                 [[machines.web.provision]]\nscript = \"setup.sh\"\n\
                 [[machines.web.provision]]\nshell = \"echo ${{HOME}}\"\n"
            ),
            &[],
        );
        assert!(!r.needs_trust(), "{r:?}");
        let kinds: Vec<&str> = r.grants.iter().map(|g| g.kind.as_str()).collect();
        assert_eq!(kinds, ["host path", "host path", "port"]);
        assert_eq!(r.grants[0].what, "/imports/shop/app -> /app (read-write)");
        assert_eq!(decide(&r, false, false), Decision::Proceed);
    }

    #[test]
    fn paths_outside_the_folder_privileges_and_host_variables_need_trust() {
        let r = report(
            &format!(
                "{HEAD}[machines.web]\nbox = \"bb\"\n\
                 synced = [{{ host = \"/\", guest = \"/host\" }}, \
                 {{ host = \"../../etc\", guest = \"/e\", mode = \"ro\" }}, \
                 {{ host = \"sub/../ok\", guest = \"/ok\" }}]\n\
                 env = {{ H = \"${{HOME}}\" }}\n\
                 [machines.web.docker]\nprivileged = true\n\
                 [[machines.web.provision]]\nfile = {{ source = \"/etc/shadow\", destination = \"/x\" }}\n"
            ),
            &["HOME"],
        );
        assert_eq!(
            risky(&r),
            [
                ("host path", "machines.web.synced[0]"),
                ("host path", "machines.web.synced[1]"),
                ("host path", "machines.web.provision[0].file.source"),
                ("privileged", "machines.web.docker.privileged"),
                ("host variable", "${HOME}"),
            ]
        );
        let g = &r.grants[1];
        assert_eq!(g.what, "/etc -> /e (read-only)");
        assert_eq!(
            g.risk.as_deref(),
            Some("`/etc` is outside the import folder")
        );
        assert_eq!(decide(&r, false, false), Decision::Refuse);
        assert_eq!(decide(&r, false, true), Decision::Ask);
        assert_eq!(decide(&r, true, false), Decision::Proceed);
    }

    #[test]
    fn a_disk_outside_the_box_store_needs_trust() {
        let src = format!("{HEAD}[project]\nprovider = \"libvirt\"\n[machines.vm]\nbox = \"bb\"\n");
        let r = report(&src, &[]);
        assert_eq!(risky(&r), [("host path", "machines.vm.box")]);
        assert_eq!(r.grants[0].what, "box /var/lib/disks/x");
        let src = src.replace("/var/lib/disks/x", "../../../etc/disk");
        let r = report(&src, &[]);
        assert_eq!(
            r.grants[0].risk.as_deref(),
            Some("`../../../etc/disk` leaves the box store")
        );
    }

    #[test]
    fn a_link_inside_the_folder_that_leads_out_is_outside() {
        let e = envfile(&format!(
            "{HEAD}[machines.web]\nbox = \"bb\"\nsynced = [{{ host = \"link\", guest = \"/l\" }}]\n"
        ));
        let real = |p: &Path| {
            if p == Path::new("/imports/shop/link") {
                PathBuf::from("/")
            } else {
                p.to_path_buf()
            }
        };
        let r = assess(&e, Path::new(FOLDER), &BTreeSet::new(), &real);
        assert_eq!(
            r.grants[0].risk.as_deref(),
            Some("`/imports/shop/link` leads to `/`, outside the import folder")
        );
    }

    #[test]
    fn containment_is_by_component() {
        assert!(inside(Path::new("/a/b"), Path::new("/a/b")));
        assert!(inside(Path::new("/a/b"), Path::new("/a/b/c/../d")));
        assert!(!inside(Path::new("/a/b"), Path::new("/a/bc")));
        assert!(!inside(Path::new("/a/b"), Path::new("/a/b/../c")));
        assert!(!inside(Path::new("/a/b"), Path::new("/a/b/../../../..")));
    }
}
