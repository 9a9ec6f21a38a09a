//! `cp SRC DST`: a file or a folder between the host and a running machine, either way
//! (Docker's and Compose's `cp`, Vagrant's `upload`). The rules are `docker cp`'s: a
//! destination that is a folder receives the source under its own name, any other
//! destination is the new name (its folder must exist); folders merge; modes are kept;
//! files put in a machine belong to root. The bytes go through a tar file on the host,
//! written and read as a stream, never held whole in memory; what a machine sends is
//! checked before anything of it is written (one top entry of the expected name, no path
//! out of it, no device files).

use std::io::{BufWriter, Write as _};
use std::path::{Component, Path, PathBuf};

use envrig_provider_api::{ExecRequest, OutputStream, ProviderError};

use super::context::Context;
use super::error::OpError;
use super::project::Project;

/// One side of `cp`: a host path, or `MACHINE:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Host(PathBuf),
    Machine { machine: String, path: String },
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Host(p) => write!(f, "{}", p.display()),
            Place::Machine { machine, path } => write!(f, "{machine}:{path}"),
        }
    }
}

/// Reads `s` as `cp` takes it: `MACHINE:/PATH` when the part before the first `:` is a
/// name (no `/`), else a host path (`./a:b` is a host file with a colon in its name).
pub fn parse_place(s: &str) -> Result<Place, String> {
    match s.split_once(':') {
        Some((m, path)) if !m.is_empty() && !m.contains('/') => {
            if !path.starts_with('/') {
                return Err(format!(
                    "`{s}`: write the path in the machine from its root, like {m}:/tmp/{}",
                    path.trim_start_matches("./")
                ));
            }
            if path.trim_end_matches('/').ends_with("/.") || path.ends_with("/..") {
                return Err(format!(
                    "`{s}`: name the folder itself (cp copies it with what it holds)"
                ));
            }
            if path.trim_end_matches('/').is_empty() {
                return Err(format!(
                    "`{s}`: cp copies a file or folder below /, not / itself"
                ));
            }
            Ok(Place::Machine {
                machine: m.to_string(),
                path: path.to_string(),
            })
        }
        _ if s.is_empty() => Err("an empty path".into()),
        _ => Ok(Place::Host(PathBuf::from(s))),
    }
}

/// What one `cp` moved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    pub from: String,
    pub to: String,
    /// Files, folders and links.
    pub entries: u64,
    /// The bytes of the files.
    pub bytes: u64,
}

/// Copies `src` to `dst`, one of them in a running machine of `project`.
pub async fn copy(
    ctx: &Context,
    project: &Project,
    src: &Place,
    dst: &Place,
) -> Result<CopyReport, OpError> {
    let work = tempfile::Builder::new()
        .prefix("envrig-cp-")
        .tempdir()
        .map_err(|e| io("make a temporary folder", e))?;
    let tar = work.path().join("copy.tar");
    let (entries, bytes) = match (src, dst) {
        (Place::Host(from), Place::Machine { machine, path }) => {
            // Before the machine is asked anything: a missing source is the user's slip.
            std::fs::symlink_metadata(from)
                .map_err(|e| io(format!("read {}", from.display()), e))?;
            let (p, o) = super::exec::running_machine(ctx, project, machine).await?;
            let (folder, name) = guest_target(&*p, &o.id, machine, path, from).await?;
            let counts = pack_host(from, &name, &tar)?;
            p.copy_in(&o.id, &tar, &folder)
                .await
                .map_err(|e| OpError::provider(format!("cannot copy into `{machine}`"), e))?;
            counts
        }
        (Place::Machine { machine, path }, Place::Host(to)) => {
            let (p, o) = super::exec::running_machine(ctx, project, machine).await?;
            p.copy_out(&o.id, path, &tar).await.map_err(|e| match e {
                ProviderError::NotFound { .. } => {
                    OpError::Usage(format!("`{machine}:{path}`: no such file or folder"))
                }
                e => OpError::provider(format!("cannot copy out of `{machine}`"), e),
            })?;
            unpack_host(&tar, last_component(path), to)?
        }
        (Place::Host(_), Place::Host(_)) => {
            return Err(OpError::Usage(
                "neither side is in a machine: write one as MACHINE:/PATH".into(),
            ));
        }
        (Place::Machine { .. }, Place::Machine { .. }) => {
            return Err(OpError::Usage(
                "both sides are in machines: copy through the host (`envrig cp a:/x ./x` \
                 and `envrig cp ./x b:/x`)"
                    .into(),
            ));
        }
    };
    Ok(CopyReport {
        from: src.to_string(),
        to: dst.to_string(),
        entries,
        bytes,
    })
}

fn io(context: impl Into<String>, source: std::io::Error) -> OpError {
    OpError::Io {
        context: context.into(),
        source,
    }
}

fn last_component(path: &str) -> &str {
    let t = path.trim_end_matches('/');
    t.rsplit('/').next().unwrap_or(t)
}

/// Where in the machine the source lands: `(folder, name)`: into `path` when it is a
/// folder, else as `path` itself (whose folder must exist).
async fn guest_target(
    p: &dyn envrig_provider_api::Provider,
    id: &str,
    machine: &str,
    path: &str,
    from: &Path,
) -> Result<(String, String), OpError> {
    let trimmed = path.trim_end_matches('/');
    let (parent, last) = match trimmed.rsplit_once('/') {
        Some(("", last)) => ("/", last),
        Some((parent, last)) => (parent, last),
        None => ("/", trimmed),
    };
    let req = ExecRequest {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            r#"if [ -d "$1" ]; then echo folder; elif [ -d "$2" ]; then echo parent; else echo none; fi"#.into(),
            "sh".into(),
            trimmed.to_string(),
            parent.to_string(),
        ],
        ..ExecRequest::default()
    };
    let mut out = Vec::new();
    let mut sink = |s: OutputStream, b: &[u8]| {
        if s == OutputStream::Stdout {
            out.extend_from_slice(b)
        }
    };
    p.exec(id, &req, &mut sink)
        .await
        .map_err(|e| OpError::provider(format!("cannot look at `{machine}:{path}`"), e))?;
    // `a/b` is `b`; `.` and `..` are the folders they name.
    let own_name = || {
        from.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .or_else(|| {
                std::fs::canonicalize(from)
                    .ok()
                    .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
            })
            .unwrap_or_else(|| "copy".into())
    };
    match String::from_utf8_lossy(&out).trim() {
        "folder" => Ok((trimmed.to_string(), own_name())),
        "parent" if !path.ends_with('/') => Ok((parent.to_string(), last.to_string())),
        "parent" => Err(OpError::Usage(format!(
            "`{machine}:{path}`: no such folder in the machine (without the last `/` it is \
             the copy's new name)"
        ))),
        _ => Err(OpError::Usage(format!(
            "`{machine}:{path}`: the machine has no folder {parent}; make it first \
             (`envrig exec {machine} -- mkdir -p {parent}`)"
        ))),
    }
}

/// Writes `from` (a file, link or folder with all it holds) to the tar file `tar` as one
/// top entry `name`, owned by root, modes and times kept; the count of entries and bytes.
fn pack_host(from: &Path, name: &str, tar: &Path) -> Result<(u64, u64), OpError> {
    let file = std::fs::File::create(tar).map_err(|e| io("write the copy's archive", e))?;
    let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
    b.follow_symlinks(false);
    let mut counts = (0u64, 0u64);
    add_host(&mut b, from, Path::new(name), &mut counts)?;
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| io("write the copy's archive", e))?;
    Ok(counts)
}

/// Bounded depth: a folder nested deeper than this is refused (a loop of bind mounts).
const MAX_DEPTH: usize = 256;

fn add_host(
    b: &mut tar::Builder<BufWriter<std::fs::File>>,
    path: &Path,
    name: &Path,
    counts: &mut (u64, u64),
) -> Result<(), OpError> {
    let read = |e| io(format!("read {}", path.display()), e);
    let meta = std::fs::symlink_metadata(path).map_err(read)?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    header.set_uid(0);
    header.set_gid(0);
    let _ = header.set_username("root");
    let _ = header.set_groupname("root");
    let write = |e| io("write the copy's archive", e);
    counts.0 += 1;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(path).map_err(read)?;
        b.append_link(&mut header, name, target).map_err(write)?;
    } else if ft.is_file() {
        counts.1 += meta.len();
        let f = std::fs::File::open(path).map_err(read)?;
        b.append_data(&mut header, name, f).map_err(write)?;
    } else if ft.is_dir() {
        if name.components().count() > MAX_DEPTH {
            return Err(OpError::Usage(format!(
                "{} is nested more than {MAX_DEPTH} folders deep",
                path.display()
            )));
        }
        b.append_data(&mut header, name, std::io::empty())
            .map_err(write)?;
        let mut children: Vec<_> = std::fs::read_dir(path)
            .map_err(read)?
            .collect::<Result<_, _>>()
            .map_err(read)?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            add_host(b, &child.path(), &name.join(child.file_name()), counts)?;
        }
    } else {
        return Err(OpError::Usage(format!(
            "{} is not a file, folder or link (a device, socket or pipe): cp leaves those",
            path.display()
        )));
    }
    Ok(())
}

/// Unpacks the archive `tar` that a machine sent for its path named `name` to the host
/// path `to`: into it when it is a folder (merging), else as `to` itself. Checked first:
/// every entry under `name`, nothing but files, folders and links.
fn unpack_host(tar: &Path, name: &str, to: &Path) -> Result<(u64, u64), OpError> {
    let counts = check_archive(tar, name)?;
    let open = || {
        let f = std::fs::File::open(tar).map_err(|e| io("read the copy's archive", e))?;
        let mut a = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, f));
        a.set_preserve_permissions(true);
        a.set_preserve_mtime(true);
        a.set_overwrite(true);
        Ok::<_, OpError>(a)
    };
    let written = |e| io(format!("write {}", to.display()), e);
    if to.is_dir() {
        open()?.unpack(to).map_err(written)?;
        return Ok(counts);
    }
    let parent = match to.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => Path::new("/"),
    };
    if !parent.is_dir() {
        return Err(OpError::Usage(format!(
            "{}: no folder {} on this host; make it first",
            to.display(),
            parent.display()
        )));
    }
    // Unpacked beside the destination, then renamed into place: a failed copy leaves no
    // half-written destination.
    let staging = tempfile::Builder::new()
        .prefix(".envrig-cp-")
        .tempdir_in(parent)
        .map_err(written)?;
    open()?.unpack(staging.path()).map_err(written)?;
    std::fs::rename(staging.path().join(name), to).map_err(written)?;
    Ok(counts)
}

/// Reads the headers of `tar`: every entry is `name` or below it, with no `..`, and a
/// file, folder or link; the count of entries and file bytes.
fn check_archive(tar: &Path, name: &str) -> Result<(u64, u64), OpError> {
    let bad = |what: String| OpError::Usage(format!("the machine sent an archive {what}"));
    let f = std::fs::File::open(tar).map_err(|e| io("read the copy's archive", e))?;
    let mut a = tar::Archive::new(f);
    let mut counts = (0u64, 0u64);
    let entries = a
        .entries_with_seek()
        .map_err(|e| io("read the copy's archive", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| bad(format!("that cannot be read ({e})")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("with an unreadable name ({e})")))?
            .into_owned();
        let mut parts = path.components().filter(|c| *c != Component::CurDir);
        let top = parts.next();
        if top != Some(Component::Normal(name.as_ref()))
            || parts.any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(bad(format!(
                "with an entry outside `{name}`: {}",
                path.display()
            )));
        }
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous => counts.1 += entry.size(),
            T::Directory | T::Symlink | T::Link => {}
            other => {
                return Err(bad(format!(
                    "with {} of a kind cp does not copy ({other:?}): copy files, folders \
                     and links",
                    path.display()
                )));
            }
        }
        counts.0 += 1;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_machine_paths_or_host_paths() {
        assert_eq!(
            parse_place("web:/etc/hosts"),
            Ok(Place::Machine {
                machine: "web".into(),
                path: "/etc/hosts".into()
            })
        );
        assert_eq!(parse_place("./a:b"), Ok(Place::Host("./a:b".into())));
        assert_eq!(parse_place("/tmp/x"), Ok(Place::Host("/tmp/x".into())));
        assert!(parse_place("web:tmp").unwrap_err().contains("web:/tmp/tmp"));
        assert!(parse_place("web:/").is_err());
        assert!(parse_place("").is_err());
    }

    #[test]
    fn a_folder_round_trips_with_modes_links_and_a_new_name() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            src.join("sub/run.sh"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::os::unix::fs::symlink("sub/run.sh", src.join("link")).unwrap();
        let tar = t.path().join("a.tar");
        assert_eq!(pack_host(&src, "data", &tar).unwrap(), (4, 10));
        // As a new name beside, then into an existing folder (merged).
        let dest = t.path().join("copy");
        assert_eq!(unpack_host(&tar, "data", &dest).unwrap(), (4, 10));
        let mode = std::fs::metadata(dest.join("sub/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o750);
        assert_eq!(
            std::fs::read_link(dest.join("link")).unwrap(),
            Path::new("sub/run.sh")
        );
        unpack_host(&tar, "data", &dest).unwrap();
        assert!(dest.join("data/sub/run.sh").is_file());
        // No staging folder is left beside.
        let left: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
    }

    #[test]
    fn an_archive_reaching_outside_its_name_or_holding_devices_is_refused_unwritten() {
        let t = tempfile::tempdir().unwrap();
        let evil = t.path().join("evil.tar");
        {
            let mut b = tar::Builder::new(std::fs::File::create(&evil).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, "data/ok", &b"ok"[..]).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            b.append_data(&mut h, "other", &b"no"[..]).unwrap();
            b.finish().unwrap();
        }
        let dest = t.path().join("d");
        let e = unpack_host(&evil, "data", &dest).unwrap_err().to_string();
        assert!(e.contains("outside `data`: other"), "{e}");
        assert!(!dest.exists());
        let dev = t.path().join("dev.tar");
        {
            let mut b = tar::Builder::new(std::fs::File::create(&dev).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_entry_type(tar::EntryType::Char);
            b.append_data(&mut h, "data", std::io::empty()).unwrap();
            b.finish().unwrap();
        }
        let e = unpack_host(&dev, "data", &dest).unwrap_err().to_string();
        assert!(e.contains("kind cp does not copy"), "{e}");
    }
}
