//! A machine's disk: where a new one comes from, and the `qemu-img` work on disk files
//! (an overlay of the size the Envfile asks for and its backing chain, a disk flattened for
//! an export or a box, a baked layer holding only what a machine changed over its box).

use std::path::{Path, PathBuf};
use std::time::Instant;

use envrig_provider_api::{MachineInfo, MachineSpec, OptionValue, ProviderError, Result};

use crate::error::io;
use crate::{KERNEL_DIR, LibvirtProvider};

/// Where a new machine's disk comes from.
pub(crate) enum Disk {
    /// A qcow2 overlay on this (staged) box disk: O(1) in the box's size.
    Overlay(PathBuf),
    /// A disk of its own, already in the machine's folder (an imported snapshot).
    Own,
    /// A qcow2 volume on a remote host backed by the box uploaded there.
    Remote(crate::remote::RemoteBox),
}

impl LibvirtProvider {
    /// A domain's disk file and kernel folder, from its labels.
    pub(crate) async fn disk_of(
        &self,
        id: &str,
    ) -> Result<(MachineInfo, PathBuf, Option<PathBuf>)> {
        let info = self.info(id).await?;
        let disk = self.machine_dir(&info.resource_name).join("disk.qcow2");
        let kernel = info.labels.get(KERNEL_DIR).map(PathBuf::from);
        Ok((info, disk, kernel))
    }

    /// Writes `disk` flattened (its backing chain folded in; at internal snapshot `snapshot`
    /// when given) into `out`, a new qcow2 file, with `-U`: the disk may be in use by a
    /// paused or running domain, whose snapshots never change once taken.
    pub(crate) async fn flatten(
        &self,
        disk: &Path,
        snapshot: Option<&str>,
        out: &Path,
    ) -> Result<()> {
        let mut args: Vec<std::ffi::OsString> =
            vec!["convert".into(), "-U".into(), "-O".into(), "qcow2".into()];
        if let Some(s) = snapshot {
            args.push("-l".into());
            args.push(format!("snapshot.name={s}").into());
        }
        args.push(disk.into());
        args.push(out.into());
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        qemu_img("flatten the disk", &refs).await
    }

    /// Writes into `out` what `disk` holds beyond `backing` (one of its backing files), as a
    /// new qcow2 backed by `backing`.
    pub(crate) async fn layer(&self, disk: &Path, backing: &Path, out: &Path) -> Result<()> {
        let args: [&std::ffi::OsStr; 10] = [
            "convert".as_ref(),
            "-U".as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            "-B".as_ref(),
            backing.as_os_str(),
            "-F".as_ref(),
            "qcow2".as_ref(),
            disk.as_os_str(),
            out.as_os_str(),
        ];
        qemu_img("write the layer", &args).await
    }
}

/// Runs `qemu-img` with `args`; its stderr becomes the error.
pub(crate) async fn qemu_img(what: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| io(format!("{what}: run qemu-img"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io(
            what,
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ))
    }
}

/// `qemu-img info` of `disk` as JSON, with `-U`: the disk may be in use.
async fn info(disk: &Path, what: &str) -> Result<serde_json::Value> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(disk)
        .output()
        .await
        .map_err(|e| io(format!("{what}: run qemu-img"), e))?;
    if !out.status.success() {
        return Err(io(
            what,
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| io(what, std::io::Error::other(e)))
}

/// The backing file `disk` was made on (its first), if any.
pub(crate) async fn backing_of(disk: &Path) -> Result<Option<PathBuf>> {
    let v = info(disk, "read the disk's backing file").await?;
    Ok(v["full-backing-filename"]
        .as_str()
        .or(v["backing-filename"].as_str())
        .map(PathBuf::from))
}

/// The size of the block device `disk` gives a guest, in bytes.
pub(crate) async fn virtual_size(disk: &Path) -> Result<u64> {
    let what = "read the disk's virtual size";
    info(disk, what).await?["virtual-size"]
        .as_u64()
        .ok_or_else(|| io(what, std::io::Error::other("qemu-img gave no virtual-size")))
}

/// The virtual size of the overlay a new machine gets on `backing` (its box, or a baked
/// layer): `[machines.NAME.libvirt] disk_size`, rounded up to whole 512-byte sectors; `None`
/// (the backing's own size) when it is not set or the same. A size below the backing's is
/// refused: the guest's file systems fill the box's whole disk, so it cannot shrink.
pub(crate) async fn overlay_size(spec: &MachineSpec, backing: &Path) -> Result<Option<u64>> {
    if !spec.options.contains_key("disk_size") {
        return Ok(None);
    }
    overlay_size_of(spec, virtual_size(backing).await?)
}

/// [`overlay_size`] on a backing disk of virtual size `own`.
pub(crate) fn overlay_size_of(spec: &MachineSpec, own: u64) -> Result<Option<u64>> {
    let Some(OptionValue::Int(wanted)) = spec.options.get("disk_size") else {
        return Ok(None);
    };
    let wanted = (*wanted).max(1).unsigned_abs().div_ceil(512) * 512;
    if wanted < own {
        return Err(ProviderError::Conflict {
            message: format!(
                "`disk_size` asks for {}, less than the disk of its box `{}`, {}: a machine's \
                 disk cannot be smaller than its box's; set `disk_size` to at least {} in \
                 [machines.{}.libvirt], or remove it to keep the box's size",
                bytes(wanted),
                spec.base,
                bytes(own),
                short(own),
                spec.machine,
            ),
        });
    }
    Ok((wanted > own).then_some(wanted))
}

/// `20GiB` when a size is a whole number of GiB or MiB, else `N bytes`.
fn short(n: u64) -> String {
    match n {
        n if n.is_multiple_of(1 << 30) => format!("{}GiB", n >> 30),
        n if n.is_multiple_of(1 << 20) => format!("{}MiB", n >> 20),
        n => format!("{n} bytes"),
    }
}

/// `20GiB (21474836480 bytes)`: readable and exact.
fn bytes(n: u64) -> String {
    match short(n) {
        s if s.ends_with("bytes") => s,
        s => format!("{s} ({n} bytes)"),
    }
}

/// Makes `disk`, a qcow2 overlay on `backing` (of virtual size `size` when given, else the
/// backing's), replacing a leftover from a crash; returns the backing chain, nearest first.
pub(crate) async fn overlay(backing: &Path, disk: &Path, size: Option<u64>) -> Result<Vec<String>> {
    let _ = std::fs::remove_file(disk);
    let t0 = Instant::now();
    let size = size.map(|s| s.to_string());
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        "qcow2".as_ref(),
        "-b".as_ref(),
        backing.as_os_str(),
        disk.as_os_str(),
    ];
    if let Some(s) = &size {
        args.push(s.as_ref());
    }
    qemu_img("create the overlay", &args).await?;
    // Read by bench/bench_vm.py: overlay creation must not grow with the box.
    tracing::debug!(
        overlay_us = t0.elapsed().as_micros() as u64,
        "overlay created on {}",
        backing.display()
    );
    // The box may itself be a layer on another box: the whole chain.
    let mut chain = vec![backing.display().to_string()];
    let mut next = backing.to_path_buf();
    while chain.len() < 16
        && let Some(b) = backing_of(&next).await?
    {
        chain.push(b.display().to_string());
        next = b;
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `overlay_size` and `overlay` on a real 1 MiB qcow2 box (qemu-img, no libvirt).
    #[test]
    fn disk_size_grows_the_overlay_and_is_refused_below_the_box() {
        let dir = tempfile::tempdir().unwrap();
        let (base, disk) = (dir.path().join("box.qcow2"), dir.path().join("disk.qcow2"));
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            qemu_img(
                "make a box",
                &[
                    "create".as_ref(),
                    "-q".as_ref(),
                    "-f".as_ref(),
                    "qcow2".as_ref(),
                    base.as_os_str(),
                    "1M".as_ref(),
                ],
            )
            .await
            .expect("qemu-img (qemu-utils) is installed");
            let mut spec =
                envrig_provider_api::testkit::spec(&base.display().to_string(), "e", "vm");
            let mut asked = |size: i64| {
                spec.options
                    .insert("disk_size".into(), OptionValue::Int(size));
                spec.clone()
            };
            assert_eq!(overlay_size(&asked(1 << 20), &base).await.unwrap(), None);
            // Rounded up to whole sectors.
            assert_eq!(
                overlay_size(&asked((2 << 20) + 1), &base).await.unwrap(),
                Some((2 << 20) + 512)
            );
            let e = overlay_size(&asked(512 << 10), &base)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("asks for 524288 bytes, less than"), "{e}");
            assert!(
                e.contains("1MiB (1048576 bytes)")
                    && e.contains("at least 1MiB in [machines.vm.libvirt]"),
                "{e}"
            );
            let chain = overlay(&base, &disk, Some(3 << 20)).await.unwrap();
            assert_eq!(chain, [base.display().to_string()]);
            assert_eq!(virtual_size(&disk).await.unwrap(), 3 << 20);
            assert_eq!(backing_of(&disk).await.unwrap(), Some(base.clone()));
            overlay(&base, &disk, None).await.unwrap();
            assert_eq!(virtual_size(&disk).await.unwrap(), 1 << 20);
        });
    }
}
