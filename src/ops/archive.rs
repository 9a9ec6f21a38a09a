//! `export` and `import`: an environment (or some machines), as it is now or as a snapshot,
//! in one portable file: a zstd-compressed tar, written and read as a stream (members are
//! spooled to disk, never held in memory).
//!
//! Layout: `manifest.json` first (format version, envrig version, machines with their
//! snapshots, and the path, size and sha256 of every other member), then `envfile/...` (the
//! Envfile and the files it references) and `machines/NAME.image` (each machine's state as
//! its engine saves it).
//!
//! Import trusts nothing: [`verify`] checks every member against the manifest (paths, sizes,
//! checksums, no links, no duplicates, bounded sizes and compression ratio) into a staging
//! folder inside the target folder before it writes anything else or touches an engine;
//! module `import` does the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use envrig_provider_api::Snapshot;
use envrig_provider_api::hash::{sha256_copy, sha256_file};
use serde::{Deserialize, Serialize};

use super::context::{Context, EngineRef, on};
use super::error::OpError;
use super::project::Project;
use super::report::Phase;
use super::session::Session;
use crate::envfile::StepKind;

/// The archive format this build writes and reads.
pub const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
const MANIFEST_MAX: u64 = 4 << 20;
/// Decompressed bytes allowed per compressed byte (beyond a fixed allowance).
const MAX_RATIO: u64 = 200;
const RATIO_SLACK: u64 = 64 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub envrig: String,
    pub project: String,
    pub snapshot: Option<String>,
    pub created: String,
    pub machines: Vec<ManifestMachine>,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestMachine {
    pub machine: String,
    pub provider: String,
    /// The member holding the machine's state.
    pub member: String,
    pub snapshot: Snapshot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> OpError {
    let context = context.into();
    move |source| OpError::Io { context, source }
}

/// The Envfile and every file it references, as (path in the archive, host path).
fn envfile_members(project: &Project) -> std::io::Result<Vec<(String, PathBuf)>> {
    fn walk(
        dir: &Path,
        root: &Path,
        rel: &Path,
        out: &mut Vec<(String, PathBuf)>,
    ) -> std::io::Result<()> {
        let full = root.join(rel);
        let meta = std::fs::symlink_metadata(&full)?;
        if meta.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(&full)?.collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                walk(dir, root, &rel.join(e.file_name()), out)?;
            }
        } else if meta.is_file() {
            out.push((format!("envfile/{}", rel.display()), full));
        }
        let _ = dir;
        Ok(())
    }
    let dir = &project.envfile.dir;
    let mut out = vec![("envfile/Envfile".to_string(), project.envfile.path.clone())];
    let mut seen = BTreeSet::new();
    for m in &project.envfile.machines {
        for s in &m.provision {
            let rel = match &s.kind {
                StepKind::Script { path, .. } => path.clone(),
                StepKind::File { source, .. } => source.clone(),
                StepKind::Shell(_) => continue,
            };
            // Only files inside the project travel: an absolute or `..` path is the host's.
            let p = Path::new(&rel);
            if p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
                continue;
            }
            let clean: PathBuf = p
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .collect();
            if seen.insert(clean.clone()) {
                walk(dir, dir, &clean, &mut out)?;
            }
        }
    }
    Ok(out)
}

/// `export [--snapshot NAME] [MACHINE...] -o FILE`. Returns the manifest written.
pub async fn export(
    ctx: &Context,
    project: &Project,
    snapshot: Option<&str>,
    machines: &[String],
    out: &Path,
) -> Result<Manifest, OpError> {
    let _session = Session::open(ctx, project).await?;
    project.select(machines, false)?;
    // The states to export: a named snapshot, or one taken now (and deleted afterwards).
    let temp_name = format!("export-{}", &crate::identity::new_instance_id()[4..]);
    let (snaps, temporary) = match snapshot {
        Some(name) => {
            let all = super::snapshot::listed_snapshots(ctx, project).await?;
            let chosen: Vec<(EngineRef, Snapshot)> = all
                .into_iter()
                .filter(|(_, s)| {
                    s.name == name && (machines.is_empty() || machines.contains(&s.machine))
                })
                .collect();
            if chosen.is_empty() {
                return Err(OpError::Usage(format!(
                    "no snapshot named `{name}` for these machines; `envrig snapshot list` lists them"
                )));
            }
            (chosen, false)
        }
        None => {
            let made =
                super::snapshot::save_locked(ctx, project, &temp_name, machines, false, true, true)
                    .await?;
            (made, true)
        }
    };
    let result = write_archive(ctx, project, snapshot, &snaps, out).await;
    if temporary {
        for (pname, s) in &snaps {
            if let Ok(p) = on(ctx, pname).await {
                let _ = p.snapshot_delete(s).await;
            }
        }
    }
    result
}

async fn write_archive(
    ctx: &Context,
    project: &Project,
    snapshot: Option<&str>,
    snaps: &[(EngineRef, Snapshot)],
    out: &Path,
) -> Result<Manifest, OpError> {
    let out = std::env::current_dir()
        .map(|c| c.join(out))
        .unwrap_or_else(|_| out.to_path_buf());
    // Spooled and written inside the project's `.envrig/tmp`, under this process's name,
    // and renamed to `out` only when whole: a killed export leaves no file at `out` and
    // nothing beside it, and what it left is swept by the next export, destroy or gc.
    let folder = &project.identity.folder;
    super::staging::sweep(folder);
    let staging = super::staging::WorkDir::new(folder, "export").map_err(io_err(format!(
        "cannot create a staging folder in {}",
        super::staging::tmp_dir(folder).display()
    )))?;

    let mut members = Vec::new();
    let mut sources: Vec<(String, PathBuf)> = Vec::new();
    let mut machines = Vec::new();
    for (pname, s) in snaps {
        let p = on(ctx, pname).await?;
        let member = format!("machines/{}.image", s.machine);
        let file = staging.path().join(format!("{}.image", s.machine));
        ctx.reporter
            .event(Some(&s.machine), Phase::Pull, "saving its state");
        p.snapshot_export(s, &file)
            .await
            .map_err(|e| OpError::provider(format!("cannot save `{}`", s.machine), e))?;
        let (sha256, size) = sha256_file(&file).map_err(io_err("cannot read the saved state"))?;
        members.push(Member {
            path: member.clone(),
            size,
            sha256,
        });
        sources.push((member.clone(), file));
        machines.push(ManifestMachine {
            machine: s.machine.clone(),
            provider: pname.provider.clone(),
            member,
            snapshot: s.clone(),
        });
    }
    for (member, host) in
        envfile_members(project).map_err(io_err("cannot read the Envfile's files"))?
    {
        let (sha256, size) =
            sha256_file(&host).map_err(io_err(format!("cannot read {}", host.display())))?;
        members.push(Member {
            path: member.clone(),
            size,
            sha256,
        });
        sources.push((member, host));
    }
    let manifest = Manifest {
        format: FORMAT,
        envrig: crate::VERSION.to_string(),
        project: project.identity.project.to_string(),
        snapshot: snapshot.map(str::to_string),
        created: super::time::now_rfc3339(),
        machines,
        members,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|e| OpError::Io {
        context: "cannot encode the manifest".into(),
        source: std::io::Error::other(e),
    })?;

    // Written to a temporary file and renamed: no half-written archive is ever at `out`.
    let reporter = ctx.reporter.clone();
    let out2 = out.clone();
    let parent2 = staging.path().to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let tmp = tempfile::NamedTempFile::new_in(&parent2)?;
        let enc = zstd::stream::write::Encoder::new(tmp.as_file(), 3)?;
        let mut tar = tar::Builder::new(enc);
        let header = |size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_size(size);
            h
        };
        tar.append_data(
            &mut header(manifest_json.len() as u64),
            MANIFEST,
            manifest_json.as_slice(),
        )?;
        for (member, host) in &sources {
            reporter.event(None, Phase::Create, &format!("adding {member}"));
            let f = std::fs::File::open(host)?;
            let size = f.metadata()?.len();
            tar.append_data(&mut header(size), member, f)?;
        }
        let enc = tar.into_inner()?;
        enc.finish()?.flush()?;
        tmp.as_file().sync_all()?;
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        let (_, tmp) = tmp.keep().map_err(|e| e.error)?;
        super::staging::persist(&tmp, &out2)?;
        Ok(())
    })
    .await
    .map_err(|e| OpError::Io {
        context: "the export failed".into(),
        source: std::io::Error::other(e),
    })?
    .map_err(io_err(format!("cannot write {}", out.display())))?;
    Ok(manifest)
}

/// Counts what passes through, and refuses past a limit (a decompression bomb).
struct Bounded<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(std::io::Error::other(format!(
                "the archive decompresses to more than its manifest declares ({} bytes): refused as a decompression bomb",
                self.limit
            )));
        }
        Ok(n)
    }
}

/// A member path that stays inside its folder: relative, plain names only.
fn safe_path(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && !path.contains('\0')
        && !p.is_absolute()
        // One spelling per file: no `.` or empty components (`a/./b`, `a//b`).
        && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Why an archive is refused.
fn refuse(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// Reads and checks the whole archive into `staging`; returns the manifest. Blocking.
pub fn verify(file: &Path, staging: &Path) -> std::io::Result<Manifest> {
    let compressed = std::fs::metadata(file)?.len();
    let f = std::fs::File::open(file)?;
    let dec = zstd::stream::read::Decoder::new(f)
        .map_err(|e| refuse(format!("not a zstd archive: {e}")))?;
    // The real limit is set once the manifest is read; until then, the manifest's own cap.
    let mut archive = tar::Archive::new(Bounded {
        inner: dec,
        read: 0,
        limit: MANIFEST_MAX + 4096,
    });
    let mut entries = archive.entries()?;
    let first = entries
        .next()
        .ok_or_else(|| refuse("the archive is empty"))??;
    if first.path()?.to_string_lossy() != MANIFEST
        || first.header().entry_type() != tar::EntryType::Regular
    {
        return Err(refuse("the archive does not start with manifest.json"));
    }
    if first.size() > MANIFEST_MAX {
        return Err(refuse("manifest.json is too large"));
    }
    let mut text = Vec::new();
    first.take(MANIFEST_MAX).read_to_end(&mut text)?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| refuse(format!("manifest.json is not valid: {e}")))?;
    if manifest.format != FORMAT {
        return Err(refuse(format!(
            "archive format {} is not supported (this envrig reads format {FORMAT})",
            manifest.format
        )));
    }
    let mut declared: BTreeMap<&str, &Member> = BTreeMap::new();
    let mut total = 0u64;
    for m in &manifest.members {
        if !safe_path(&m.path)
            || !(m.path.starts_with("envfile/") || m.path.starts_with("machines/"))
        {
            return Err(refuse(format!("member `{}` has an unsafe path", m.path)));
        }
        if declared.insert(m.path.as_str(), m).is_some() {
            return Err(refuse(format!("member `{}` is listed twice", m.path)));
        }
        total = total.saturating_add(m.size);
    }
    let cap = std::env::var("ENVRIG_IMPORT_MAX_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64u64 << 30);
    if total > cap {
        return Err(refuse(format!(
            "the archive declares {total} bytes, more than the {cap} allowed (ENVRIG_IMPORT_MAX_BYTES)"
        )));
    }
    if total > compressed.saturating_mul(MAX_RATIO) + RATIO_SLACK {
        return Err(refuse(
            "the archive declares far more data than it could hold: refused as a decompression bomb",
        ));
    }
    for mm in &manifest.machines {
        if !declared.contains_key(mm.member.as_str()) {
            return Err(refuse(format!(
                "machine `{}` refers to a missing member",
                mm.machine
            )));
        }
        crate::envfile::Name::parse(&mm.machine).map_err(refuse)?;
    }
    // Headers and padding: 1 KiB per member is generous.
    let limit = text.len() as u64 + total + 1024 * (manifest.members.len() as u64 + 4) + 4096;

    // `tar` cannot resume the entry iterator after the limit changed: read again from the
    // start, skipping the manifest.
    let f = std::fs::File::open(file)?;
    let dec = zstd::stream::read::Decoder::new(f)?;
    let mut archive = tar::Archive::new(Bounded {
        inner: dec,
        read: 0,
        limit,
    });
    let mut seen = BTreeSet::new();
    for (i, entry) in archive.entries()?.enumerate() {
        let entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if i == 0 {
            continue;
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(refuse(format!(
                "member `{path}` is a link or special file: refused"
            )));
        }
        if !safe_path(&path) {
            return Err(refuse(format!("member `{path}` has an unsafe path")));
        }
        let Some(m) = declared.get(path.as_str()) else {
            return Err(refuse(format!("member `{path}` is not in the manifest")));
        };
        if !seen.insert(path.clone()) {
            return Err(refuse(format!("member `{path}` appears twice")));
        }
        if entry.size() != m.size {
            return Err(refuse(format!(
                "member `{path}` is {} bytes, but the manifest says {}",
                entry.size(),
                m.size
            )));
        }
        let dest = staging.join(format!("{:06}", i));
        let mut out = std::fs::File::create(&dest)?;
        let (sha256, got) = sha256_copy(entry.take(m.size), &mut out)?;
        if got != m.size {
            return Err(refuse(format!(
                "member `{path}` is shorter than the manifest says"
            )));
        }
        if sha256 != m.sha256 {
            return Err(refuse(format!(
                "member `{path}` does not match its checksum"
            )));
        }
        // Staged under its index; the manifest path is kept beside it.
        std::fs::write(staging.join(format!("{:06}.path", i)), &path)?;
    }
    let missing: Vec<&str> = declared
        .keys()
        .filter(|k| !seen.contains(**k))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Err(refuse(format!(
            "members missing from the archive: {}",
            missing.join(", ")
        )));
    }
    Ok(manifest)
}

/// The staged file of each member path.
pub(super) fn staged(staging: &Path) -> std::io::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(staging)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "path") {
            let member = std::fs::read_to_string(&p)?;
            out.insert(member, p.with_extension(""));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_safe() {
        assert!(safe_path("envfile/Envfile"));
        assert!(safe_path("machines/web.image"));
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "./a",
            "a/./b",
            "a\0b",
        ] {
            assert!(!safe_path(bad), "{bad:?}");
        }
    }
}
