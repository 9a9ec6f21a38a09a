//! Boxes on this host: finding one (a folder, or a name in the store), its identity, staging
//! it where the hypervisor can read it, adding, listing, packaging a machine as one, baked
//! layers, removing one; and sweeping what a killed envrig left in the images and box folders.
//! The store's own file format is `boxes.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envrig_provider_api::{
    BaseIdentity, BaseInfo, MachineState, ProviderError, Result, Selector, StoredBox,
};

use crate::disk::backing_of;
use crate::error::io;
use crate::{BOX_LABEL, KERNEL_DIR, LibvirtProvider, boxes};

impl LibvirtProvider {
    /// The folder of a box: a path to one, or a name in the box store.
    pub(crate) fn box_dir(&self, reference: &str) -> Option<PathBuf> {
        let p = Path::new(reference);
        let dir = if p.is_absolute() {
            p.to_path_buf()
        } else {
            boxes::folder_of(&self.boxes, reference)
        };
        dir.join("disk.qcow2").is_file().then_some(dir)
    }

    /// The box's files where the hypervisor can read them: the system daemon's QEMU runs as
    /// its own user, who cannot enter a home folder, so a box is hard-linked (or copied,
    /// across filesystems) once into the images folder, keyed by the disk's identity.
    pub(crate) fn staged_box(&self, dir: &Path) -> Result<PathBuf> {
        let key = self.staged_key(dir).ok_or_else(|| {
            io(
                "read the box",
                std::io::Error::other(format!("no disk.qcow2 in {}", dir.display())),
            )
        })?;
        let staged = self.images.join(".boxes").join(&key);
        if staged.join("disk.qcow2").is_file() {
            return Ok(staged);
        }
        let tmp = self
            .images
            .join(".boxes")
            .join(envrig_provider_api::work::unique_name(&format!(".{key}")));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| io("stage the box", e))?;
        for f in ["disk.qcow2", "vmlinuz", "initrd.img", "cmdline"] {
            let from = dir.join(f);
            if from.is_file() {
                let to = tmp.join(f);
                if std::fs::hard_link(&from, &to).is_err() {
                    std::fs::copy(&from, &to).map_err(|e| io(format!("stage {f}"), e))?;
                }
            }
        }
        match std::fs::rename(&tmp, &staged) {
            Ok(()) => Ok(staged),
            // Another envrig staged it first.
            Err(_) if staged.join("disk.qcow2").is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(staged)
            }
            Err(e) => Err(io("stage the box", e)),
        }
    }

    /// The name of a box folder's staged copy: its disk's identity.
    fn staged_key(&self, dir: &Path) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir.join("disk.qcow2")).ok()?;
        // The modification time too: a deleted box's inode number comes back.
        Some(format!(
            "{:x}-{:x}-{:x}-{:x}",
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime_nsec() ^ (meta.mtime() << 30)
        ))
    }

    /// A box in the store: its recorded sha256 and size. A box folder named by path: its
    /// disk's sha256, remembered beside the staged copies by the disk's identity (device,
    /// inode, size, modification time), so it is hashed once.
    pub(crate) async fn resolve_box(&self, reference: &str) -> Result<Option<BaseIdentity>> {
        let Some(dir) = self.box_dir(reference) else {
            return Ok(None);
        };
        // A remote host takes self-contained boxes only: a baked layer (a disk on a backing
        // file of this host) is not there, so it is not chosen (`remote/boxes.rs`).
        if self.remote.is_some()
            && let Ok(Err(_)) = crate::qcow2::check_file(&dir.join("disk.qcow2"))
        {
            return Ok(None);
        }
        if let Ok(text) = std::fs::read(dir.join("box.json"))
            && let Ok(b) = serde_json::from_slice::<StoredBox>(&text)
        {
            return Ok(Some(BaseIdentity {
                id: format!("sha256:{}", b.sha256),
                digest: None,
                size: Some(b.size),
            }));
        }
        let disk = dir.join("disk.qcow2");
        let meta = std::fs::metadata(&disk).map_err(|e| io("read the box", e))?;
        use std::os::unix::fs::MetadataExt;
        let key = format!(
            "{:x}-{:x}-{:x}-{:x}",
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime()
        );
        let cache = self.images.join(".hashes").join(&key);
        let sha = match std::fs::read_to_string(&cache) {
            Ok(s) if s.len() == 64 => s,
            _ => {
                let d2 = disk.clone();
                let (sha, _) = tokio::task::spawn_blocking(move || {
                    envrig_provider_api::hash::sha256_file(&d2)
                })
                .await
                .map_err(|e| io("hash the box", std::io::Error::other(e)))?
                .map_err(|e| io("hash the box", e))?;
                let _ = std::fs::create_dir_all(self.images.join(".hashes"));
                let _ = std::fs::write(&cache, &sha);
                sha
            }
        };
        Ok(Some(BaseIdentity {
            id: format!("sha256:{sha}"),
            digest: None,
            size: Some(meta.size()),
        }))
    }

    pub(crate) async fn ensure_box(&self, reference: &str) -> Result<BaseInfo> {
        match self.box_dir(reference) {
            Some(dir) => Ok(BaseInfo {
                id: dir.display().to_string(),
            }),
            None => Err(ProviderError::NotFound {
                what: format!(
                    "box `{reference}` (a folder with disk.qcow2, or a name in {})",
                    self.boxes.display()
                ),
            }),
        }
    }

    /// A new box in the store: the machine's disk flattened (paused for the copy when it
    /// runs, after a `sync` inside), with the kernel files it boots with.
    pub(crate) async fn package_box(
        &self,
        id: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<BaseInfo> {
        if !boxes::valid_name(name) {
            return Err(ProviderError::Conflict {
                message: format!(
                    "`{name}` is not a valid box name: use a-z, 0-9, `.`, `_` and `-`"
                ),
            });
        }
        if self.remote.is_some() {
            return Err(self.not_remotely(
                "packaging a machine as a box (or baking its layer)",
                "its disk is a volume there, which `qemu-img` here cannot read; set `bake = false` in [project] to stop trying, or package it on a libvirt host of its own",
            ));
        }
        let (info, disk, kernel_dir) = self.disk_of(id).await?;
        let tmp = self.images.join(envrig_provider_api::work::name(&format!(
            ".package-{}",
            info.resource_name
        )));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| io("make a work folder", e))?;
        // A baked layer keeps the box as its backing file (only what the steps changed is
        // copied); a packaged box stands alone.
        let out = tmp.join("disk.qcow2");
        let disk_work = async {
            if labels.contains_key(envrig_provider_api::labels::BAKED) {
                match backing_of(&disk).await {
                    Ok(Some(backing)) => self.layer(&disk, &backing, &out).await,
                    Ok(None) => self.flatten(&disk, None, &out).await,
                    Err(e) => Err(e),
                }
            } else {
                self.flatten(&disk, None, &out).await
            }
        };
        // A warm layer keeps the machine's memory too, taken at the disk's moment.
        let warm = labels.contains_key(envrig_provider_api::labels::BAKED)
            && labels.contains_key(envrig_provider_api::labels::WARM)
            && info.state == MachineState::Running;
        let flat = if warm {
            let (flat, why) = self
                .bake_memory(id, &tmp.join(crate::warm::MEMORY), disk_work)
                .await;
            if let Some(why) = why {
                tracing::warn!("the layer keeps no running state: {why}");
                let _ = std::fs::write(tmp.join(crate::warm::MEMORY_WHY), why);
            }
            flat
        } else {
            self.paused_work(id, disk_work).await
        };
        let result = async {
            flat?;
            if let Some(k) = &kernel_dir {
                for f in boxes::KERNEL_FILES {
                    if k.join(f).is_file() {
                        std::fs::copy(k.join(f), tmp.join(f))
                            .map_err(|e| io(format!("copy {f}"), e))?;
                    }
                }
            }
            let (store, name2, tmp2, labels2) = (
                self.boxes.clone(),
                name.to_string(),
                tmp.clone(),
                labels.clone(),
            );
            tokio::task::spawn_blocking(move || boxes::adopt(&store, &name2, &tmp2, &labels2))
                .await
                .map_err(|e| io("store the box", std::io::Error::other(e)))?
                .map_err(|e| io("store the box", e))
        }
        .await;
        let _ = std::fs::remove_dir_all(&tmp);
        let stored = result?;
        Ok(BaseInfo {
            id: format!("sha256:{}", stored.sha256),
        })
    }

    pub(crate) async fn add_box(
        &self,
        name: &str,
        source: &Path,
        force: bool,
    ) -> Result<StoredBox> {
        let (store, name2, source) = (self.boxes.clone(), name.to_string(), source.to_path_buf());
        let added = tokio::task::spawn_blocking(move || boxes::add(&store, &name2, &source, force))
            .await
            .map_err(|e| io("add the box", std::io::Error::other(e)))?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => ProviderError::Conflict {
                    message: e.to_string(),
                },
                _ => io("add the box", e),
            })?;
        // Through a remote host: into this host's store, and copied there now.
        if let Some(remote) = &self.remote {
            self.remote_box(remote, name).await?;
        }
        Ok(added)
    }

    /// The boxes of the store; through a remote host, those of them that host has.
    pub(crate) async fn list_boxes(&self) -> Result<Vec<StoredBox>> {
        let all = boxes::list(&self.boxes).map_err(|e| io("list the boxes", e))?;
        if self.remote.is_none() {
            return Ok(all);
        }
        let there = self.remote_box_shas().await?;
        Ok(all
            .into_iter()
            .filter(|b| there.contains(&b.sha256))
            .collect())
    }

    pub(crate) async fn list_baked(&self) -> Result<Vec<envrig_provider_api::BakedLayer>> {
        let mut out = Vec::new();
        // Baked layers stay on this host (a remote host takes self-contained boxes only).
        if self.remote.is_some() {
            return Ok(out);
        }
        for b in boxes::list(&self.boxes).map_err(|e| io("list the boxes", e))? {
            let Ok(text) = std::fs::read(self.boxes.join(&b.name).join("labels.json")) else {
                continue;
            };
            let l: BTreeMap<String, String> = serde_json::from_slice(&text).unwrap_or_default();
            if let Some(fp) = l.get(envrig_provider_api::labels::BAKED) {
                out.push(envrig_provider_api::BakedLayer {
                    name: b.name.clone(),
                    fingerprint: fp.clone(),
                    created: l
                        .get(envrig_provider_api::labels::CREATED)
                        .cloned()
                        .unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }

    pub(crate) async fn remove_box(&self, name: &str) -> Result<()> {
        // Through a remote host: the box's copy there (this host's store is left alone).
        if self.remote.is_some() {
            return self.remote_remove_box(name).await;
        }
        if !boxes::valid_name(name) || !self.boxes.join(name).join("box.json").is_file() {
            return Err(ProviderError::NotFound {
                what: format!("box `{name}`"),
            });
        }
        let dir = self.boxes.join(name).display().to_string();
        let users: Vec<String> = self
            .list_machines(&Selector::default().eq(BOX_LABEL, &dir))
            .await?
            .into_iter()
            .map(|m| m.resource_name)
            .collect();
        if !users.is_empty() {
            return Err(ProviderError::Conflict {
                message: format!(
                    "box `{name}` is used by {}; destroy them first",
                    users.join(", ")
                ),
            });
        }
        // Its staged copy in the images folder goes too, unless a machine made from the
        // same disk by another path still boots from it.
        let staged = self
            .staged_key(&self.boxes.join(name))
            .map(|k| self.images.join(".boxes").join(k));
        std::fs::remove_dir_all(self.boxes.join(name))
            .map_err(|e| io(format!("remove box `{name}`"), e))?;
        if let Some(staged) = staged.filter(|s| s.is_dir()) {
            let users = self
                .list_machines(&Selector::default().eq(KERNEL_DIR, &staged.display().to_string()))
                .await?;
            if users.is_empty() {
                let _ = std::fs::remove_dir_all(&staged);
            }
        }
        Ok(())
    }

    pub(crate) async fn sweep_leftovers(&self) -> Result<Vec<String>> {
        use envrig_provider_api::work;
        if self.remote.is_some() {
            return self.remote_sweep().await;
        }
        let mut out: Vec<String> = [
            self.images.join(".boxes"),
            self.images.join(".imports"),
            self.images.clone(),
            self.boxes.clone(),
        ]
        .iter()
        .flat_map(|d| work::sweep(d))
        .map(|p| format!("file {}", p.display()))
        .collect();
        // Machine folders that a killed envrig was making or removing: no domain claims
        // them, and their marker's process is gone.
        let mut orphans = Vec::new();
        for e in std::fs::read_dir(&self.images)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let marked = std::fs::read_dir(e.path())
                .into_iter()
                .flatten()
                .flatten()
                .any(|f| work::abandoned(&f.file_name().to_string_lossy()));
            if marked {
                orphans.push(name);
            }
        }
        let unclaimed = self
            .blocking(move |c| {
                Ok(orphans
                    .into_iter()
                    .filter(|n| c.lookup_domain_by_name(n).is_err())
                    .collect::<Vec<_>>())
            })
            .await?;
        for name in unclaimed {
            let dir = self.machine_dir(&name);
            if std::fs::remove_dir_all(&dir).is_ok() {
                out.push(format!("folder {}", dir.display()));
            }
        }
        Ok(out)
    }
}
