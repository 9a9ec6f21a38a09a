//! A machine's disk: where a new one comes from, and the `qemu-img` work on disk files
//! (an overlay's backing chain, a disk flattened for an export or a box, a baked layer
//! holding only what a machine changed over its box).

use std::path::{Path, PathBuf};

use envrig_provider_api::{MachineInfo, Result};

use crate::error::io;
use crate::{KERNEL_DIR, LibvirtProvider};

/// Where a new machine's disk comes from.
pub(crate) enum Disk {
    /// A qcow2 overlay on this (staged) box disk: O(1) in the box's size.
    Overlay(PathBuf),
    /// A disk of its own, already in the machine's folder (an imported snapshot).
    Own,
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

/// The backing file `disk` was made on (its first), if any.
pub(crate) async fn backing_of(disk: &Path) -> Result<Option<PathBuf>> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(disk)
        .output()
        .await
        .map_err(|e| io("read the disk's backing file: run qemu-img", e))?;
    if !out.status.success() {
        return Err(io(
            "read the disk's backing file",
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| io("read the disk's backing file", std::io::Error::other(e)))?;
    Ok(v["full-backing-filename"]
        .as_str()
        .or(v["backing-filename"].as_str())
        .map(PathBuf::from))
}
