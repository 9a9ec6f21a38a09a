//! The box store: `$ENVRIG_HOME/boxes/NAME/` holding `disk.qcow2` (and, for direct kernel
//! boot, `vmlinuz`, `initrd.img`, `cmdline`) and `box.json` (sha256, size, source, when).
//!
//! A box is built in a hidden folder beside the store and renamed into place, so a box is
//! either all there or not listed. Sources: a `.qcow2`, a vagrant-libvirt `.box` (a tar,
//! plain or gzip-compressed, holding `box.img` and `metadata.json`, and, envrig's extension,
//! maybe `vmlinuz`, `initrd.img` and `cmdline` for direct kernel boot), or a folder laid out
//! like a box.

use std::io::Read;
use std::path::{Path, PathBuf};

use envrig_provider_api::StoredBox;
use envrig_provider_api::hash::sha256_file;

/// The files a box may hold besides its disk.
pub const KERNEL_FILES: [&str; 3] = ["vmlinuz", "initrd.img", "cmdline"];

/// A valid box name in the store: what Envfiles may name (`[a-z0-9][a-z0-9._-]*`), or
/// `NAME@VERSION` for one version of a box from a Vagrant box catalog.
pub fn valid_name(name: &str) -> bool {
    match name.split_once('@') {
        Some((n, v)) => plain_name(n) && envrig_provider_api::version::valid(v),
        None => plain_name(name),
    }
}

fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

/// A regular file, stored plainly or sparse (GNU tar and the `tar` crate write disk images
/// as sparse entries).
fn is_file<R: Read>(entry: &tar::Entry<'_, R>) -> bool {
    matches!(
        entry.header().entry_type(),
        tar::EntryType::Regular | tar::EntryType::GNUSparse
    )
}

/// Unpacks a vagrant-libvirt `.box` into `dest` as a box (its `box.img` becomes the disk).
fn unpack_vagrant_box(source: &Path, dest: &Path) -> std::io::Result<()> {
    let mut magic = [0u8; 2];
    let gzip = std::fs::File::open(source)?.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let file = std::fs::File::open(source)?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    let mut found = false;
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !is_file(&entry) {
            continue;
        }
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let target = match path.as_str() {
            "box.img" => "disk.qcow2",
            "metadata.json" => "vagrant-metadata.json",
            // envrig's extension: a box may carry a kernel for direct kernel boot.
            "vmlinuz" => "vmlinuz",
            "initrd.img" => "initrd.img",
            "cmdline" => "cmdline",
            // Nothing else is taken, and no path from the archive is ever joined.
            _ => continue,
        };
        let mut out = std::fs::File::create(dest.join(target))?;
        std::io::copy(&mut entry, &mut out)?;
        found |= target == "disk.qcow2";
    }
    if found {
        Ok(())
    } else {
        Err(std::io::Error::other(
            "not a vagrant-libvirt box: no box.img inside",
        ))
    }
}

/// Adds `source` as box `name` to `store`.
pub fn add(store: &Path, name: &str, source: &Path, force: bool) -> std::io::Result<StoredBox> {
    stage(store, name, force, &source.display().to_string(), |tmp| {
        let meta = std::fs::metadata(source)?;
        if meta.is_dir() {
            if !source.join("disk.qcow2").is_file() {
                return Err(std::io::Error::other("a box folder must hold disk.qcow2"));
            }
            std::fs::copy(source.join("disk.qcow2"), tmp.join("disk.qcow2"))?;
            for f in KERNEL_FILES {
                if source.join(f).is_file() {
                    std::fs::copy(source.join(f), tmp.join(f))?;
                }
            }
        } else if source.extension().is_some_and(|e| e == "box") {
            unpack_vagrant_box(source, tmp)?;
        } else {
            // A disk image; `qemu-img info` (run by the caller's first machine) checks it.
            std::fs::copy(source, tmp.join("disk.qcow2"))?;
        }
        Ok(())
    })
}

/// Makes box `name` of `store` in a work folder with `fill`, then describes it and puts it in
/// place (`source` says where it came from). Nothing is left behind when it fails.
fn stage(
    store: &Path,
    name: &str,
    force: bool,
    source: &str,
    fill: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<StoredBox> {
    check_new(store, name, force)?;
    std::fs::create_dir_all(store)?;
    let tmp = store.join(envrig_provider_api::work::unique_name(&format!(
        ".adding-{name}"
    )));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = fill(&tmp).and_then(|()| finish(store, name, &tmp, source));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Refuses a bad name, or an existing box without `force`.
fn check_new(store: &Path, name: &str, force: bool) -> std::io::Result<()> {
    if !valid_name(name) {
        return Err(std::io::Error::other(format!(
            "`{name}` is not a valid box name: use a-z, 0-9, `.`, `_` and `-` (and `@VERSION` for a version)"
        )));
    }
    if store.join(name).exists() && !force {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("box `{name}` exists; `--force` replaces it"),
        ));
    }
    Ok(())
}

/// Makes the folder `built` (holding `disk.qcow2` and maybe kernel files) box `name` of
/// `store`, replacing one of that name; `labels` are kept in its `labels.json`. `built`
/// must be on the store's filesystem or is copied.
pub fn adopt(
    store: &Path,
    name: &str,
    built: &Path,
    labels: &std::collections::BTreeMap<String, String>,
) -> std::io::Result<StoredBox> {
    stage(store, name, true, "package", |tmp| {
        let warm = [
            crate::warm::MEMORY,
            crate::warm::MEMORY_WHY,
            crate::warm::LAYER_BASELINE,
        ];
        for f in std::iter::once("disk.qcow2")
            .chain(KERNEL_FILES)
            .chain(warm)
        {
            let from = built.join(f);
            if from.is_file() && std::fs::rename(&from, tmp.join(f)).is_err() {
                std::fs::copy(&from, tmp.join(f))?;
            }
        }
        std::fs::write(tmp.join("labels.json"), serde_json::to_vec_pretty(labels)?)?;
        Ok(())
    })
}

/// Describes the box built in `tmp` and renames it into place as `store/name`.
fn finish(store: &Path, name: &str, tmp: &Path, source: &str) -> std::io::Result<StoredBox> {
    let (sha256, size) = sha256_file(&tmp.join("disk.qcow2"))?;
    let (plain, version) = match name.split_once('@') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (name, None),
    };
    let info = StoredBox {
        name: plain.to_string(),
        version,
        sha256,
        size,
        source: source.to_string(),
        added: format!("{:?}", std::time::SystemTime::now()),
        kernel: tmp.join("vmlinuz").is_file(),
    };
    std::fs::write(tmp.join("box.json"), serde_json::to_vec_pretty(&info)?)?;
    // Readable by the hypervisor's user: boxes are backing files.
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(tmp)? {
        let path = e?.path();
        // A warm layer's memory holds the guest's secrets: root's alone (libvirtd reads it).
        let mode = if path.ends_with(crate::warm::MEMORY) {
            0o600
        } else {
            0o644
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    let final_dir = store.join(name);
    if final_dir.exists() {
        let old = store.join(envrig_provider_api::work::unique_name(&format!(
            ".replaced-{name}"
        )));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&final_dir, &old)?;
        std::fs::rename(tmp, &final_dir)?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(tmp, &final_dir)?;
    }
    Ok(info)
}

/// Unpacks a disk export (a tar of `disk.qcow2` and the kernel files) into `dest`, a new
/// folder. Only those names are taken, as regular files; no path from the tar is joined.
pub fn unpack_disk_tar(source: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dest)?;
    let mut archive = tar::Archive::new(std::fs::File::open(source)?);
    let mut seen = std::collections::BTreeSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !is_file(&entry) {
            continue;
        }
        let path = entry.path()?.to_string_lossy().to_string();
        let Some(name) = std::iter::once("disk.qcow2")
            .chain(KERNEL_FILES)
            .chain(crate::capsule::MEMBER_EXTRAS)
            .find(|n| *n == path)
        else {
            continue;
        };
        if !seen.insert(name) {
            return Err(std::io::Error::other(format!(
                "`{name}` twice in the disk export"
            )));
        }
        let mut out = std::fs::File::create(dest.join(name))?;
        std::io::copy(&mut entry, &mut out)?;
    }
    if !seen.contains("disk.qcow2") {
        return Err(std::io::Error::other("the disk export holds no disk.qcow2"));
    }
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dest)? {
        let path = e?.path();
        // Saved memory holds the guest's secrets: root's alone (libvirtd reads it).
        let mode = if path.ends_with(crate::warm::MEMORY) {
            0o600
        } else {
            0o644
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Every box in `store` (hidden folders, half-added ones, are not boxes).
/// The store's folder of the box a reference names: `NAME` itself when there is one, else
/// its newest version (`NAME@VERSION`); `NAME@VERSION` as it is; `sha256:HEX` the box with
/// that disk (a lock file's pin).
pub fn folder_of(store: &Path, reference: &str) -> PathBuf {
    if let Some(hex) = reference.strip_prefix("sha256:") {
        let found = list_folders(store)
            .into_iter()
            .find(|(_, b)| b.sha256 == hex)
            .map(|(dir, _)| dir);
        return found.unwrap_or_else(|| store.join(reference));
    }
    let plain = store.join(reference);
    if reference.contains('@') || plain.join("disk.qcow2").is_file() {
        return plain;
    }
    let prefix = format!("{reference}@");
    let versions: Vec<String> = list_folders(store)
        .into_iter()
        .filter_map(|(dir, _)| {
            let n = dir.file_name()?.to_string_lossy().into_owned();
            n.strip_prefix(&prefix).map(str::to_string)
        })
        .collect();
    match envrig_provider_api::version::newest(versions.iter().map(String::as_str)) {
        Some(v) => store.join(format!("{reference}@{v}")),
        None => plain,
    }
}

/// Every box folder of the store with its description.
fn list_folders(store: &Path) -> Vec<(PathBuf, StoredBox)> {
    let Ok(entries) = std::fs::read_dir(store) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|dir| {
            !dir.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter_map(|dir| {
            let text = std::fs::read(dir.join("box.json")).ok()?;
            let info = serde_json::from_slice::<StoredBox>(&text).ok()?;
            Some((dir, info))
        })
        .collect()
}

pub fn list(store: &Path) -> std::io::Result<Vec<StoredBox>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(store) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in entries {
        let dir: PathBuf = e?.path();
        if dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        if let Ok(text) = std::fs::read(dir.join("box.json"))
            && let Ok(info) = serde_json::from_slice::<StoredBox>(&text)
        {
            out.push(info);
        }
    }
    out.sort_by(|a, b| {
        let v = |x: &StoredBox| x.version.clone().unwrap_or_default();
        a.name
            .cmp(&b.name)
            .then_with(|| envrig_provider_api::version::compare(&v(a), &v(b)))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_a_box_live_beside_and_a_name_means_its_newest() {
        let store = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        for (v, body) in [("1.9.0", "one"), ("1.10.0", "two")] {
            std::fs::write(src.path().join("disk.qcow2"), body).unwrap();
            let b = add(store.path(), &format!("deb@{v}"), src.path(), false).unwrap();
            assert_eq!((b.name.as_str(), b.version.as_deref()), ("deb", Some(v)));
        }
        let listed: Vec<_> = list(store.path())
            .unwrap()
            .into_iter()
            .map(|b| b.version)
            .collect();
        assert_eq!(
            listed,
            [Some("1.9.0".to_string()), Some("1.10.0".to_string())]
        );
        assert_eq!(
            folder_of(store.path(), "deb"),
            store.path().join("deb@1.10.0")
        );
        assert_eq!(
            folder_of(store.path(), "deb@1.9.0"),
            store.path().join("deb@1.9.0")
        );
        let (one, _) = sha256_file(&store.path().join("deb@1.9.0/disk.qcow2")).unwrap();
        assert_eq!(
            folder_of(store.path(), &format!("sha256:{one}")),
            store.path().join("deb@1.9.0")
        );
        assert!(valid_name("deb@1.0-rc1") && !valid_name("deb@v1") && !valid_name("deb@"));
    }

    #[test]
    fn boxes_are_added_whole_listed_replaced_only_with_force() {
        let store = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("disk.qcow2"), b"disk-bytes").unwrap();
        std::fs::write(src.path().join("vmlinuz"), b"k").unwrap();
        let b = add(store.path(), "tiny", src.path(), false).unwrap();
        assert!(b.kernel);
        assert_eq!(b.size, 10);
        assert_eq!(list(store.path()).unwrap(), vec![b.clone()]);
        let again = add(store.path(), "tiny", src.path(), false).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        add(store.path(), "tiny", src.path(), true).unwrap();
        assert!(add(store.path(), "Bad Name", src.path(), false).is_err());
        // A failed add leaves nothing listed and nothing hidden behind.
        assert!(
            add(
                store.path(),
                "broken",
                &src.path().join("missing.qcow2"),
                false
            )
            .is_err()
        );
        assert_eq!(list(store.path()).unwrap().len(), 1);
        assert_eq!(std::fs::read_dir(store.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_vagrant_box_gives_its_box_img() {
        let dir = tempfile::tempdir().unwrap();
        let boxfile = dir.path().join("x.box");
        let mut t = tar::Builder::new(std::fs::File::create(&boxfile).unwrap());
        for (name, body) in [
            ("metadata.json", &b"{\"format\":\"qcow2\"}"[..]),
            ("box.img", &b"qcow"[..]),
            ("../evil", &b"x"[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append(&h, body).unwrap();
        }
        t.finish().unwrap();
        let store = dir.path().join("store");
        let b = add(&store, "vagrant", &boxfile, false).unwrap();
        assert_eq!(b.size, 4);
        assert!(!dir.path().join("evil").exists() && !store.join("evil").exists());
    }
}
