//! Synced folders: live by virtiofs (or 9p when asked) and mounted at every boot, else copied
//! into the guest at start and at `provision`, with the reason a folder is not live said. A
//! machine on a remote libvirt host is always given copies: a live folder would share a
//! folder of that host, not this one.

use std::path::{Path, PathBuf};

use envrig_provider_api::{MachineSpec, OptionValue, ProviderError, Result};

use crate::error::io;
use crate::exec::sh_quote;
use crate::{LibvirtProvider, NAME, SYNCED, xml};

/// One synced folder as the machine has it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SyncedFolder {
    host: String,
    guest: String,
    read_only: bool,
    /// `virtiofs` or `9p` (live, mounted by `tag`), or `copy` (copied at start and at
    /// `provision`).
    how: String,
    tag: String,
    /// Why a live mount was not chosen, said when the folder is copied.
    note: Option<String>,
}

/// The virtiofs daemon on this host: `ENVRIG_VIRTIOFSD`, else where distributions put it.
pub(crate) fn virtiofsd() -> Option<String> {
    if let Some(p) = std::env::var_os("ENVRIG_VIRTIOFSD") {
        return Some(PathBuf::from(p))
            .filter(|p| p.is_file())
            .map(|p| p.display().to_string());
    }
    let known = [
        "/usr/libexec/virtiofsd",
        "/usr/lib/qemu/virtiofsd",
        "/usr/local/libexec/virtiofsd",
        "/usr/local/bin/virtiofsd",
        "/usr/bin/virtiofsd",
    ];
    known
        .iter()
        .find(|p| Path::new(p).is_file())
        .map(|p| p.to_string())
}

/// The synced folders of `spec` and how each is made: live by virtiofs when this host has its
/// daemon (or 9p when asked), else copied at start and at `provision`, with the reason said;
/// and the live ones as the domain's shares. On a remote host (`remote`: its name) every
/// folder is copied, and a live one asked for by name (`virtiofs`, `9p`) is refused.
pub(crate) fn plan(
    spec: &MachineSpec,
    remote: Option<&str>,
) -> Result<(Vec<SyncedFolder>, Vec<xml::Share>)> {
    let wanted = match spec.options.get("synced") {
        Some(OptionValue::Str(s)) => s.clone(),
        _ => "auto".to_string(),
    };
    if let Some(host) = remote {
        if !spec.synced.is_empty() && (wanted == "virtiofs" || wanted == "9p") {
            return Err(ProviderError::NotSupported {
                provider: NAME,
                what: format!(
                    "`synced = \"{wanted}\"` (a live folder) on a remote libvirt host ({host} would share a folder of its own, not this host's): set `synced = \"rsync\"` in [machines.{}.libvirt] (or remove it) to have the folders copied, or run the machine on this host",
                    spec.machine
                ),
            });
        }
        let folders = spec
            .synced
            .iter()
            .enumerate()
            .map(|(i, f)| SyncedFolder {
                host: f.host.clone(),
                guest: f.guest.clone(),
                read_only: f.read_only,
                how: "copy".to_string(),
                tag: format!("envrig{i}"),
                note: (wanted != "rsync").then(|| {
                    format!("the machine runs on the remote libvirt host {host}, which cannot share this host's folders")
                }),
            })
            .collect();
        return Ok((folders, Vec::new()));
    }
    let daemon = virtiofsd();
    let folders: Vec<SyncedFolder> = spec
        .synced
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (how, note) = match (wanted.as_str(), &daemon) {
                ("rsync", _) => ("copy", None),
                ("9p", _) => ("9p", None),
                (_, Some(_)) => ("virtiofs", None),
                ("virtiofs", None) => (
                    "copy",
                    Some("virtiofs was asked for, but this host has no virtiofsd (install it, or set ENVRIG_VIRTIOFSD)"),
                ),
                (_, None) => (
                    "copy",
                    Some("this host has no virtiofsd for a live folder (install it, or set ENVRIG_VIRTIOFSD)"),
                ),
            };
            SyncedFolder {
                host: f.host.clone(),
                guest: f.guest.clone(),
                read_only: f.read_only,
                how: how.to_string(),
                tag: format!("envrig{i}"),
                note: note.map(str::to_string),
            }
        })
        .collect();
    let shares: Vec<xml::Share> = folders
        .iter()
        .filter(|f| f.how != "copy")
        .map(|f| xml::Share {
            kind: f.how.clone(),
            source: f.host.clone(),
            tag: f.tag.clone(),
            read_only: f.read_only,
            daemon: daemon.clone(),
        })
        .collect();
    Ok((folders, shares))
}

impl LibvirtProvider {
    /// Mounts the machine's live folders (a guest that cannot mount one gets a copy, and
    /// says why) and copies the others; with `mounts_only`, just tries the mounts.
    /// Returns one line per folder copied, for the user.
    pub(crate) async fn sync_folders(&self, id: &str, mounts_only: bool) -> Result<Vec<String>> {
        let info = self.info(id).await?;
        let folders: Vec<SyncedFolder> = info
            .labels
            .get(SYNCED)
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
        let mut said = Vec::new();
        for f in folders {
            let mut note = f.note.clone();
            if mounts_only && f.how == "copy" {
                continue;
            }
            if f.how != "copy" {
                let (fstype, opts) = if f.how == "virtiofs" {
                    (
                        "virtiofs",
                        if f.read_only { "ro" } else { "rw" }.to_string(),
                    )
                } else {
                    (
                        "9p",
                        format!(
                            "trans=virtio,version=9p2000.L{}",
                            if f.read_only { ",ro" } else { "" }
                        ),
                    )
                };
                let module = if fstype == "9p" {
                    "9pnet_virtio 9p"
                } else {
                    "virtiofs"
                };
                let script = format!(
                    "for m in {module}; do modprobe $m 2>/dev/null; done; mkdir -p {g} && (grep -qF {pat} /proc/mounts || mount -t {fstype} -o {opts} {tag} {g})",
                    g = sh_quote(&f.guest),
                    pat = sh_quote(&format!("{} {} {fstype} ", f.tag, f.guest)),
                    tag = sh_quote(&f.tag),
                );
                let (code, err) = self.run_sh(id, &script).await?;
                if code == 0 || mounts_only {
                    continue;
                }
                note = Some(format!(
                    "the guest cannot mount {fstype} ({})",
                    err.trim().lines().last().unwrap_or("no reason given")
                ));
            }
            self.copy_folder(id, &f).await?;
            said.push(format!(
                "{} copied into {} (not live: a change on either side is not seen by the other until `envrig provision`){}",
                f.host,
                f.guest,
                note.map(|n| format!("; {n}")).unwrap_or_default()
            ));
        }
        Ok(said)
    }

    /// Copies a host folder into the guest (a tar through the agent or SSH).
    async fn copy_folder(&self, id: &str, f: &SyncedFolder) -> Result<()> {
        let host = f.host.clone();
        let tar = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut b = tar::Builder::new(Vec::new());
            b.follow_symlinks(false);
            b.append_dir_all(".", &host)?;
            b.into_inner()
        })
        .await
        .map_err(|e| io("pack the synced folder", std::io::Error::other(e)))?
        .map_err(|e| io(format!("pack {}", f.host), e))?;
        let (code, err) = self
            .run_sh(id, &format!("mkdir -p {}", sh_quote(&f.guest)))
            .await?;
        if code != 0 {
            return Err(ProviderError::Conflict {
                message: format!("cannot make {} in the guest: {}", f.guest, err.trim()),
            });
        }
        self.unpack_in_guest(id, &f.guest, crate::copy::TarSource::Bytes(tar), false)
            .await
    }
}
