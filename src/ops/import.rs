//! `import`, in two phases, because an archive is untrusted.
//!
//! [`import_check`] reads the archive into a staging folder (module `archive` checks every
//! member), reads the Envfile it carries without writing it, validates every manifest field
//! against that Envfile, and says what the environment would take from this host
//! ([`super::trust`]). It writes nothing but the staging folder (removed again, with any
//! folder it had to create, unless the plan is applied) and touches no engine.
//! [`import_apply`] asks each provider to check the machine states it will load, and only
//! then writes the Envfile and recreates the machines. Nothing from the manifest is ever
//! used as a path: members are found by the names the archive check gave them, machines
//! and snapshots are [`Name`]s, and the machines' specs come from the Envfile.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use envrig_provider_api::{ProviderError, Snapshot, labels};
use serde::Serialize;

use super::archive::{Manifest, io_err, staged, verify};
use super::context::{Context, provider};
use super::error::OpError;
use super::observe::observe;
use super::project::{LoadSettings, Project};
use super::report::Phase;
use super::resolved::Resolved;
use super::session::Session;
use super::trust::{self, TrustReport};
use crate::envfile::{self, Envfile, LoadError, LoadOptions, Name};
use crate::plan::current;

/// What `import` made.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub folder: String,
    pub project: String,
    pub machines: Vec<String>,
    /// Machines saved running that resumed from their saved memory, processes kept.
    pub resumed: Vec<String>,
    /// Machines saved running that were brought back from their files and started.
    pub restarted: Vec<String>,
}

/// One machine state the archive holds, checked.
#[derive(Debug)]
struct Incoming {
    machine: Name,
    provider: String,
    running: bool,
    created: String,
    /// The staged file holding its state.
    state: PathBuf,
}

/// A checked archive, ready to be applied. Dropped unapplied, it removes its staging folder
/// and the folders [`import_check`] created.
#[derive(Debug)]
pub struct ImportPlan {
    /// The archive, as given.
    pub file: PathBuf,
    /// The import folder.
    pub dir: PathBuf,
    /// The project named by the archive's Envfile.
    pub project: String,
    /// The machines it holds, with their providers.
    pub machines: Vec<(String, String)>,
    /// What it would take from this host.
    pub report: TrustReport,
    /// The name its states take here: the snapshot exported, else `imported` (the moment
    /// an export took is a temporary snapshot, never listed).
    snapshot: Name,
    incoming: Vec<Incoming>,
    members: BTreeMap<String, PathBuf>,
    staging: Option<super::staging::WorkDir>,
    created: Vec<PathBuf>,
    /// `--cold`: machines come back from their disks, booted, whatever memory they carry.
    cold: bool,
}

impl Drop for ImportPlan {
    fn drop(&mut self) {
        drop(self.staging.take());
        // Deepest first; only folders still empty go.
        for d in self.created.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Creates `dir` and its missing parents; records each folder created, outermost first.
fn make_dirs(dir: &Path, created: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d {
        if p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        d = p.parent();
    }
    std::fs::create_dir_all(dir)?;
    created.extend(missing.into_iter().rev());
    Ok(())
}

/// `path` as the file system resolves it: its longest existing part through its links, the
/// rest as written.
fn real_path(path: &Path) -> PathBuf {
    let path = trust::normalize(path);
    let mut rest = Vec::new();
    let mut at = path.as_path();
    loop {
        if let Ok(mut real) = std::fs::canonicalize(at) {
            real.extend(rest.iter().rev());
            return real;
        }
        match (at.file_name(), at.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                at = parent;
            }
            _ => return path,
        }
    }
}

/// A manifest string that is only data (a time, a version): short and plain.
fn plain(field: &str, s: &str) -> Result<(), String> {
    if s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-:.+_".contains(c))
    {
        Ok(())
    } else {
        Err(format!("its manifest's `{field}` is not valid"))
    }
}

/// Checks every manifest field against the Envfile: names are [`Name`]s, each machine is in
/// the Envfile once, with the provider the Envfile gives it, and its state is the member
/// `machines/NAME.image`.
fn check_manifest(
    manifest: &Manifest,
    envfile: &Envfile,
    members: &BTreeMap<String, PathBuf>,
    has_provider: &dyn Fn(&str) -> bool,
) -> Result<Vec<Incoming>, String> {
    plain("envrig", &manifest.envrig)?;
    plain("created", &manifest.created)?;
    Name::parse(&manifest.project).map_err(|e| format!("its manifest's `project`: {e}"))?;
    if let Some(s) = &manifest.snapshot {
        Name::parse(s).map_err(|e| format!("its manifest's `snapshot`: {e}"))?;
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for mm in &manifest.machines {
        let machine = Name::parse(&mm.machine).map_err(|e| format!("a manifest machine: {e}"))?;
        if !seen.insert(machine.clone()) {
            return Err(format!(
                "machine `{machine}` is listed twice in its manifest"
            ));
        }
        let Some(m) = envfile.machines.iter().find(|m| m.name == machine) else {
            return Err(format!(
                "its manifest holds machine `{machine}`, which its Envfile does not declare"
            ));
        };
        if !has_provider(&mm.provider) || mm.provider != m.provider {
            return Err(format!(
                "its manifest gives machine `{machine}` the provider `{}`, but the Envfile gives it `{}`",
                mm.provider.escape_debug(),
                m.provider
            ));
        }
        // Checked though not used: the states take the name of the whole import.
        Name::parse(&mm.snapshot.name)
            .map_err(|e| format!("the snapshot of machine `{machine}`: {e}"))?;
        if mm.snapshot.machine != mm.machine {
            return Err(format!(
                "the snapshot of machine `{machine}` says it is of another machine"
            ));
        }
        plain("created", &mm.snapshot.created)?;
        let member = format!("machines/{machine}.image");
        let state = match members.get(&member) {
            Some(p) if mm.member == member => p.clone(),
            _ => {
                return Err(format!(
                    "the state of machine `{machine}` is not its member `{member}`"
                ));
            }
        };
        out.push(Incoming {
            machine,
            provider: m.provider.clone(),
            running: mm.snapshot.running,
            created: mm.snapshot.created.clone(),
            state,
        });
    }
    Ok(out)
}

/// `import FILE [-C DIR]`, first phase: checks the archive and everything it asks for.
pub async fn import_check(
    ctx: &Context,
    file: &Path,
    dir: &Path,
    settings: &LoadSettings,
    cold: bool,
) -> Result<ImportPlan, OpError> {
    let refused = |why: String| OpError::Usage(format!("{} is refused: {why}", file.display()));
    let mut created = Vec::new();
    let envrig_dir = dir.join(".envrig");
    let made = make_dirs(&envrig_dir, &mut created);
    // From here on, `plan` owns what was created: an early return removes it.
    let mut plan = ImportPlan {
        file: file.to_path_buf(),
        dir: dir.to_path_buf(),
        project: String::new(),
        machines: Vec::new(),
        report: TrustReport {
            folder: dir.display().to_string(),
            grants: Vec::new(),
        },
        incoming: Vec::new(),
        snapshot: Name::parse("imported").expect("a valid name"),
        members: BTreeMap::new(),
        staging: None,
        created,
        cold,
    };
    made.map_err(io_err(format!("cannot create {}", envrig_dir.display())))?;
    // What a killed import or export left in the work folder goes first.
    super::staging::sweep(dir);
    let tmp = super::staging::tmp_dir(dir);
    make_dirs(&tmp, &mut plan.created)
        .map_err(io_err(format!("cannot create {}", tmp.display())))?;
    let staging = super::staging::WorkDir::new(dir, "import")
        .map_err(io_err("cannot create a staging folder"))?;
    let staging_path = staging.path().to_path_buf();
    plan.staging = Some(staging);
    ctx.reporter
        .event(None, Phase::Pull, &format!("checking {}", file.display()));
    let f = file.to_path_buf();
    let manifest = tokio::task::spawn_blocking(move || verify(&f, &staging_path))
        .await
        .map_err(|e| OpError::Io {
            context: "the import failed".into(),
            source: std::io::Error::other(e),
        })?
        .map_err(|e| refused(e.to_string()))?;
    let staging_path = plan.staging.as_ref().map(|s| s.path().to_path_buf());
    plan.members = staged(staging_path.as_deref().unwrap_or(dir))
        .map_err(io_err("cannot read the staging folder"))?;

    // The folder must be empty of Envfiles or hold this very one.
    let envfile_member = plan
        .members
        .get("envfile/Envfile")
        .ok_or_else(|| refused("it holds no Envfile".into()))?;
    let incoming =
        std::fs::read(envfile_member).map_err(io_err("cannot read the staged Envfile"))?;
    let target = dir.join(envfile::FILE_NAME);
    if let Ok(existing) = std::fs::read(&target)
        && existing != incoming
    {
        return Err(OpError::Usage(format!(
            "{} already holds a different environment; import into an empty folder (`-C DIR`)",
            dir.display()
        )));
    }
    let source =
        String::from_utf8(incoming).map_err(|_| refused("its Envfile is not UTF-8 text".into()))?;

    // Read as it will be once written, recording what `${VAR}` takes from this host.
    let taken = RefCell::new(BTreeSet::new());
    let env = |name: &str| {
        let v = std::env::var(name).ok();
        if v.as_deref().is_some_and(|v| !v.is_empty()) {
            taken.borrow_mut().insert(name.to_string());
        }
        v
    };
    let opts = LoadOptions {
        env: &env,
        provider_override: settings.provider_override.as_deref(),
        providers: &ctx.registry,
        check_paths: false,
    };
    let display = format!(
        "{}:envfile/Envfile",
        file.file_name().unwrap_or_default().to_string_lossy()
    );
    let envfile = match envfile::parse(&source, &target, &display, &opts) {
        Ok((e, _)) => e,
        Err(LoadError::Invalid(r)) => {
            return Err(OpError::Usage(format!(
                "the imported Envfile is not valid:\n{}",
                r.render(false)
            )));
        }
        Err(LoadError::Io { path, source }) => {
            return Err(OpError::Io {
                context: format!("cannot read {}", path.display()),
                source,
            });
        }
    };
    let has_provider = |name: &str| ctx.registry.capabilities(name).is_some();
    plan.incoming =
        check_manifest(&manifest, &envfile, &plan.members, &has_provider).map_err(refused)?;
    if let Some(s) = &manifest.snapshot {
        plan.snapshot = Name::parse(s).map_err(|e| refused(format!("its snapshot: {e}")))?;
    }
    plan.project = envfile.project.name.to_string();
    plan.machines = plan
        .incoming
        .iter()
        .map(|i| (i.machine.to_string(), i.provider.clone()))
        .collect();
    plan.report = trust::assess(&envfile, dir, &taken.borrow(), &real_path);
    // A machine saved running on a provider that resumes memory runs the device state the
    // archive saved: QEMU's loader is no boundary against a crafted one.
    if !cold {
        for inc in plan.incoming.iter().filter(|i| i.running) {
            if ctx
                .registry
                .capabilities(&inc.provider)
                .is_some_and(|c| c.warm_start)
            {
                plan.report
                    .grants
                    .push(trust::saved_memory(inc.machine.as_str()));
            }
        }
    }
    Ok(plan)
}

/// `import`, second phase: each provider checks the states it will load; then the Envfile
/// and its files are written into the folder and every machine is recreated, exactly as it
/// was. `load` loads the written Envfile.
pub async fn import_apply(
    ctx: &Context,
    mut plan: ImportPlan,
    load: &(dyn Fn(&Path) -> Result<Project, OpError> + Sync),
) -> Result<ImportReport, OpError> {
    for inc in &plan.incoming {
        let p = provider(ctx, &inc.provider).await?;
        p.check_export(&inc.state).await.map_err(|e| match e {
            ProviderError::Refused { message } => OpError::Usage(format!(
                "{} is refused: machine `{}`: {message}",
                plan.file.display(),
                inc.machine
            )),
            e => OpError::provider(format!("cannot check the state of `{}`", inc.machine), e),
        })?;
        if !plan.cold && inc.running {
            p.check_resume(&inc.state).await.map_err(|e| match e {
                ProviderError::Refused { message } => OpError::Usage(format!(
                    "{} cannot be resumed here: machine `{}`: {message}",
                    plan.file.display(),
                    inc.machine
                )),
                e => OpError::provider(format!("cannot check the state of `{}`", inc.machine), e),
            })?;
        }
    }
    let dir = plan.dir.clone();
    // Each file arrives whole (renamed from the staging folder), the Envfile last: a killed
    // import leaves no Envfile, or one whose files are all there.
    let mut files: Vec<(&String, &PathBuf)> = plan.members.iter().collect();
    files.sort_by_key(|(m, _)| *m == "envfile/Envfile");
    for (member, staged_file) in files {
        let Some(rel) = member.strip_prefix("envfile/") else {
            continue;
        };
        let dest = dir.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("cannot create {}", parent.display())))?;
        }
        super::staging::persist(staged_file, &dest)
            .map_err(io_err(format!("cannot write {}", dest.display())))?;
    }
    // Written: the folders are the environment's now.
    plan.created.clear();

    let project = load(&dir.join(envfile::FILE_NAME))?;
    let session = Session::open(ctx, &project).await?;
    let all: Vec<&envfile::Machine> = project.envfile.machines.iter().collect();
    let placed = super::placement::Placed::on_first(ctx, &all);
    super::network::ensure_networks(ctx, &project, &all, &placed).await?;
    let observed = observe(ctx, &project).await?;
    let mut made = Vec::new();
    let (mut resumed, mut restarted) = (Vec::new(), Vec::new());
    // The imported state is one snapshot set of this environment, named as exported (a
    // moment of "now" is `imported`), tagged with this environment's resource names.
    let set = super::snapset::set_labels(
        &plan
            .incoming
            .iter()
            .map(|i| i.machine.as_str())
            .collect::<Vec<_>>(),
    );
    for inc in &plan.incoming {
        let m = project.machine(inc.machine.as_str()).ok_or_else(|| {
            OpError::Usage(format!(
                "the archive's Envfile has no machine `{}`",
                inc.machine
            ))
        })?;
        let p = provider(ctx, &inc.provider).await?;
        ctx.reporter
            .event(Some(inc.machine.as_str()), Phase::Pull, "loading its state");
        let created = super::time::now_rfc3339();
        let mut l = project.identity.labels(&m.name, 1, &created);
        l.insert(labels::PROVIDER.to_string(), inc.provider.clone());
        l.extend(set.clone());
        if plan.cold {
            l.insert(labels::COLD.to_string(), "1".to_string());
        }
        let spec = super::spec::machine_spec(&project, &Resolved::default(), m, 1, &created);
        // Built from checked fields only; the spec is the Envfile's.
        let incoming = Snapshot {
            id: String::new(),
            name: plan.snapshot.to_string(),
            machine: inc.machine.to_string(),
            created: inc.created.clone(),
            running: inc.running,
            spec: spec.clone(),
            labels: BTreeMap::new(),
        };
        let snap = p
            .snapshot_import(&inc.state, &incoming, &l)
            .await
            .map_err(|e| OpError::provider(format!("cannot load `{}`", inc.machine), e))?;
        let cur = current(inc.machine.as_str(), &observed)
            .0
            .map(|o| o.id.clone());
        ctx.reporter
            .event(Some(inc.machine.as_str()), Phase::Create, "recreating it");
        let info = p
            .snapshot_restore(&snap, cur.as_deref(), &spec)
            .await
            .map_err(|e| OpError::provider(format!("cannot recreate `{}`", inc.machine), e))?;
        let name = inc.machine.to_string();
        if info.state == envrig_provider_api::MachineState::Running
            && let Err(w) =
                super::network::name_on_shared(ctx, &project, m, p.as_ref(), &info.id).await
        {
            ctx.reporter.event(Some(&name), Phase::Warning, &w);
        }
        if info.labels.contains_key(labels::RESUMED) {
            ctx.reporter.event(
                Some(&name),
                Phase::Done,
                "resumed where it was saved (its processes kept)",
            );
            resumed.push(name.clone());
        } else if inc.running {
            ctx.reporter.event(
                Some(&name),
                Phase::Done,
                "restarted from its files (its processes were not carried)",
            );
            restarted.push(name.clone());
        }
        made.push(name);
    }
    session.refresh(&observe(ctx, &project).await?)?;
    Ok(ImportReport {
        folder: project.identity.folder.display().to_string(),
        project: project.identity.project.to_string(),
        machines: made,
        resumed,
        restarted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envfile() -> Envfile {
        let providers = crate::envfile::tests::providers();
        let opts = LoadOptions {
            env: &|_| None,
            provider_override: None,
            providers: &providers,
            check_paths: false,
        };
        let src = "[boxes.bb]\ndocker = \"busybox\"\n[machines.a]\nbox = \"bb\"\n";
        envfile::parse(src, Path::new("/x/Envfile"), "Envfile", &opts)
            .unwrap_or_else(|e| panic!("{e}"))
            .0
    }

    /// A manifest of machine `a`, changed by `edit`; checked.
    fn check(edit: impl Fn(&mut serde_json::Value)) -> Result<Vec<Incoming>, String> {
        let mut m = serde_json::json!({
            "format": 1, "envrig": "0.1.0", "project": "p", "snapshot": "s1",
            "created": "2026-01-01T00:00:00Z", "members": [],
            "machines": [{"machine": "a", "provider": "docker", "member": "machines/a.image",
                "snapshot": {"id": "i", "name": "s1", "machine": "a", "running": true,
                    "created": "2026-01-01T00:00:00Z", "labels": {},
                    "spec": {"resource_name": "r", "machine": "a", "base": "b", "cpus": null,
                        "memory_bytes": null, "hostname": "a", "env": {}, "command": null,
                        "ports": [], "synced": [], "labels": {}, "options": {},
                        "network": null}}}]
        });
        edit(&mut m);
        let manifest: Manifest = serde_json::from_value(m).unwrap();
        let members = BTreeMap::from([(
            "machines/a.image".to_string(),
            PathBuf::from("/staged/000001"),
        )]);
        check_manifest(&manifest, &envfile(), &members, &|p| p == "docker")
    }

    #[test]
    fn a_sound_manifest_gives_the_staged_state_of_each_machine() {
        let got = check(|_| {}).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].machine.as_str(), "a");
        assert_eq!(got[0].state, PathBuf::from("/staged/000001"));
        assert!(got[0].running);
    }

    /// A change to a manifest, and what its refusal says.
    type Case = (Box<dyn Fn(&mut serde_json::Value)>, &'static str);

    #[test]
    fn every_manifest_field_is_checked() {
        let cases: Vec<Case> = vec![
            (Box::new(|m| m["envrig"] = "0.1\n; rm".into()), "`envrig`"),
            (Box::new(|m| m["created"] = "../../x".into()), "`created`"),
            (Box::new(|m| m["project"] = "../p".into()), "`project`"),
            (Box::new(|m| m["snapshot"] = "S/1".into()), "`snapshot`"),
            (
                Box::new(|m| m["machines"][0]["machine"] = "../a".into()),
                "not a valid name",
            ),
            (
                Box::new(|m| {
                    let again = m["machines"][0].clone();
                    m["machines"].as_array_mut().unwrap().push(again);
                }),
                "listed twice",
            ),
            (
                Box::new(|m| m["machines"][0]["provider"] = "nope".into()),
                "provider",
            ),
            (
                Box::new(|m| m["machines"][0]["snapshot"]["name"] = "".into()),
                "the snapshot of machine `a`",
            ),
            (
                Box::new(|m| m["machines"][0]["snapshot"]["machine"] = "b".into()),
                "another machine",
            ),
            (
                Box::new(|m| m["machines"][0]["snapshot"]["created"] = "x y".into()),
                "`created`",
            ),
            (
                Box::new(|m| m["machines"][0]["member"] = "machines/../a.image".into()),
                "is not its member",
            ),
        ];
        for (edit, expect) in cases {
            let e = check(edit).err().unwrap_or_default();
            assert!(e.contains(expect), "expected `{expect}` in `{e}`");
        }
    }
}
