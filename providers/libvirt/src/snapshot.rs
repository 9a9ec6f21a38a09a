//! Snapshots: libvirt's internal ones, inside the machine's qcow2 overlay (with memory when it
//! runs), described by envrig's JSON in their description; restore, delete, export (the disk
//! flattened by `qemu-img convert`, with every file the guest had in memory written out
//! first) and import (an unpacked disk checked before QEMU opens it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envrig_provider_api::{MachineInfo, MachineSpec, ProviderError, Result, Selector, Snapshot};
use virt::domain::Domain;

use crate::boot::{BOOTING, Marker};
use crate::disk::Disk;
use crate::error::{engine, io, refused_disk};
use crate::machine::described_domains;
use crate::{LibvirtProvider, boxes, qcow2, xml};

/// What envrig keeps in a domain snapshot's description.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapMeta {
    labels: BTreeMap<String, String>,
    spec: MachineSpec,
    running: bool,
    created: String,
}

impl LibvirtProvider {
    /// Saves internal snapshot `name` of domain `id` (see [`Provider::snapshot_save`]);
    /// `running` overrides whether a restore starts the machine.
    ///
    /// [`Provider::snapshot_save`]: envrig_provider_api::Provider::snapshot_save
    pub(crate) async fn save_snapshot(
        &self,
        id: &str,
        name: &str,
        spec: &MachineSpec,
        labels: &BTreeMap<String, String>,
        running: Option<bool>,
    ) -> Result<Snapshot> {
        let (id, name) = (id.to_string(), name.to_string());
        let mut labels = labels.clone();
        labels.insert(
            envrig_provider_api::labels::SNAPSHOT.to_string(),
            name.clone(),
        );
        let created = labels
            .get(envrig_provider_api::labels::CREATED)
            .cloned()
            .unwrap_or_default();
        let spec = spec.clone();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine("look up the domain", e))?;
            let running = running.unwrap_or_else(|| dom.is_active().unwrap_or(false));
            if let Ok(old) = Domain::lookup_snapshot_by_name(&dom, &name, 0) {
                old.delete(0)
                    .map_err(|e| engine(format!("replace snapshot `{name}`"), e))?;
            }
            let meta = SnapMeta {
                labels,
                spec,
                running,
                created,
            };
            let desc = serde_json::to_string(&meta)
                .map_err(|e| io("describe the snapshot", std::io::Error::other(e)))?;
            let text = xml::snapshot(&name, &desc).map_err(|e| io("write the snapshot XML", e))?;
            dom.create_snapshot_xml(&text, 0)
                .map_err(|e| engine(format!("save snapshot `{name}`"), e))?;
            Ok(snapshot_of(&id, &name, meta))
        })
        .await
    }

    /// Every envrig snapshot, of every domain, whose labels match `selector`.
    pub(crate) async fn list_snapshots(&self, selector: &Selector) -> Result<Vec<Snapshot>> {
        let selector = selector.clone();
        self.blocking(move |c| {
            let mut out = Vec::new();
            for (d, info) in described_domains(c)? {
                if info.labels.is_empty() {
                    continue;
                }
                // A domain that vanished while we looked has no snapshots left.
                for snap in d.list_all_snapshots(0).unwrap_or_default() {
                    let (Ok(name), Ok(text)) = (snap.name(), snap.xml_desc(0)) else {
                        continue;
                    };
                    let Some(meta) = xml::snapshot_description(&text)
                        .and_then(|d| serde_json::from_str::<SnapMeta>(&d).ok())
                    else {
                        continue;
                    };
                    if selector.matches(&meta.labels) {
                        out.push(snapshot_of(&info.id, &name, meta));
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn restore_snapshot(
        &self,
        snap: &Snapshot,
        current: Option<&str>,
        spec: &MachineSpec,
    ) -> Result<MachineInfo> {
        if Path::new(&snap.id).is_absolute() {
            return self.restore_imported(snap, current, spec).await;
        }
        let (owner, name) = snap
            .id
            .split_once('/')
            .ok_or_else(|| ProviderError::NotFound {
                what: format!("snapshot `{}`", snap.id),
            })?;
        if current != Some(owner) {
            return Err(ProviderError::Conflict {
                message: format!(
                    "snapshot `{}` lives inside the machine it was taken of, which is gone",
                    snap.name
                ),
            });
        }
        let running = snap.running;
        let booting = self
            .info(owner)
            .await
            .ok()
            .map(|i| i.resource_name)
            .filter(|_| running);
        if let Some(res) = &booting {
            let _ = self.note_put(res, BOOTING, b"").await;
        }
        let flags = if running {
            virt::sys::VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING
        } else {
            0
        };
        self.revert(owner, name, flags).await?;
        if running {
            // The snapshot holds the environment's key already.
            self.wait_ready_with(owner, false).await?;
        }
        if let Some(res) = &booting {
            self.note_drop(res, BOOTING).await;
        }
        self.info(owner).await
    }

    /// Makes the machine of `spec` from an imported snapshot (`snap.id` is the folder
    /// [`Provider::snapshot_import`] unpacked it into): the disk and kernel files move into
    /// the machine's folder, the snapshot is taken again there (so `snapshot list` shows
    /// it), and the machine starts when it ran when saved.
    ///
    /// [`Provider::snapshot_import`]: envrig_provider_api::Provider::snapshot_import
    async fn restore_imported(
        &self,
        snap: &Snapshot,
        current: Option<&str>,
        spec: &MachineSpec,
    ) -> Result<MachineInfo> {
        if self.remote.is_some() {
            return Err(self.not_remotely(
                "restoring an imported snapshot",
                "restore it on the libvirt host it was imported on",
            ));
        }
        let src = PathBuf::from(&snap.id);
        if !src.join("disk.qcow2").is_file() {
            return Err(ProviderError::NotFound {
                what: format!("the imported disk of `{}`", snap.machine),
            });
        }
        if let Some(cur) = current {
            self.remove_machine(cur).await?;
        }
        let mdir = self.machine_dir(&spec.resource_name);
        let _ = std::fs::remove_dir_all(&mdir);
        std::fs::create_dir_all(&mdir).map_err(|e| io(format!("create {}", mdir.display()), e))?;
        let _marker = Marker::new(&mdir, "creating");
        let extras = crate::capsule::MEMBER_EXTRAS;
        for f in std::iter::once("disk.qcow2")
            .chain(boxes::KERNEL_FILES)
            .chain(extras)
        {
            if src.join(f).is_file() {
                std::fs::rename(src.join(f), mdir.join(f))
                    .map_err(|e| io(format!("move {f}"), e))?;
            }
        }
        let _ = std::fs::remove_dir_all(&src);
        let info = self.define(spec, Disk::Own, &mdir, BTreeMap::new()).await?;
        let mut labels = snap.labels.clone();
        labels.extend(spec.labels.clone());
        let mut saved_spec = spec.clone();
        saved_spec.resource_name = info.resource_name.clone();
        // Taken while off, it holds the disk; restoring it later boots the machine afresh.
        self.save_snapshot(
            &info.id,
            &snap.name,
            &saved_spec,
            &labels,
            Some(snap.running),
        )
        .await?;
        let memory = mdir.join(crate::warm::MEMORY);
        let _ = std::fs::remove_file(mdir.join(crate::warm::MEMORY_WHY));
        let cold = snap.labels.contains_key(envrig_provider_api::labels::COLD);
        if snap.running && memory.is_file() && !cold {
            self.resume_imported(&info.id, &memory).await?;
            let mut resumed = self.info(&info.id).await?;
            resumed
                .labels
                .insert(envrig_provider_api::labels::RESUMED.to_string(), "1".into());
            return Ok(resumed);
        }
        let _ = std::fs::remove_file(&memory);
        if snap.running {
            self.start_machine(&info.id).await?;
        }
        self.info(&info.id).await
    }

    /// Reverts domain `id` to its snapshot `name` (`flags`: `VIR_DOMAIN_SNAPSHOT_REVERT_*`).
    async fn revert(&self, id: &str, name: &str, flags: u32) -> Result<()> {
        let (id, name) = (id.to_string(), name.to_string());
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine("look up the domain", e))?;
            let s = Domain::lookup_snapshot_by_name(&dom, &name, 0)
                .map_err(|e| engine(format!("find snapshot `{name}`"), e))?;
            s.revert(flags)
                .map_err(|e| engine(format!("revert to snapshot `{name}`"), e))
        })
        .await
    }

    pub(crate) async fn delete_snapshot(&self, snap: &Snapshot) -> Result<()> {
        let Some((owner, name)) = snap
            .id
            .split_once('/')
            .filter(|_| !snap.id.starts_with('/'))
        else {
            return Ok(());
        };
        let (owner, name) = (owner.to_string(), name.to_string());
        self.blocking(move |c| {
            let Ok(dom) = c.lookup_domain_by_uuid_string(&owner) else {
                return Ok(());
            };
            match Domain::lookup_snapshot_by_name(&dom, &name, 0) {
                Ok(s) => s
                    .delete(0)
                    .map_err(|e| engine(format!("delete snapshot `{name}`"), e)),
                Err(_) => Ok(()),
            }
        })
        .await
    }

    /// A tar holding the disk at the snapshot, flattened (no box needed to use it), and the
    /// kernel files it boots with.
    pub(crate) async fn export_snapshot(&self, snap: &Snapshot, dest: &Path) -> Result<u64> {
        if self.remote.is_some() {
            return Err(self.not_remotely(
                "exporting a snapshot",
                "its disk is a volume there, which `qemu-img` here cannot flatten; export the environment from a libvirt host of its own",
            ));
        }
        let (owner, name) = snap
            .id
            .split_once('/')
            .filter(|_| !snap.id.starts_with('/'))
            .ok_or_else(|| ProviderError::NotFound {
                what: format!("snapshot `{}`", snap.id),
            })?;
        let (_, disk, kernel_dir) = self.disk_of(owner).await?;
        let work = dest.with_extension("flat.qcow2");
        // A running machine's snapshot travels with its memory, taken with the disk.
        let memory = dest.with_extension("memory.save");
        let mut no_memory = None;
        if snap.running {
            no_memory = self
                .flatten_flushed(owner, name, &disk, &work, Some(&memory))
                .await?;
        } else {
            self.flatten(&disk, Some(name), &work).await?;
        }
        let (dest2, work2, memory2) = (dest.to_path_buf(), work.clone(), memory.clone());
        let result = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let mut out = tar::Builder::new(std::fs::File::create(&dest2)?);
            out.append_path_with_name(&work2, "disk.qcow2")?;
            if memory2.is_file() {
                out.append_path_with_name(&memory2, crate::warm::MEMORY)?;
            }
            if let Some(why) = no_memory {
                let mut h = tar::Header::new_gnu();
                h.set_size(why.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                out.append_data(&mut h, crate::warm::MEMORY_WHY, why.as_bytes())?;
            }
            if let Some(k) = kernel_dir {
                for f in boxes::KERNEL_FILES {
                    if k.join(f).is_file() {
                        out.append_path_with_name(k.join(f), f)?;
                    }
                }
            }
            out.into_inner()?.sync_all()?;
            Ok(std::fs::metadata(&dest2)?.len())
        })
        .await
        .map_err(|e| io("write the export", std::io::Error::other(e)))?;
        let _ = std::fs::remove_file(&work);
        let _ = std::fs::remove_file(&memory);
        result.map_err(|e| io("write the export", e))
    }

    /// Writes the disk of snapshot `name` of running domain `id` (a snapshot taken with its
    /// memory, whose page cache may hold files its disk does not) into `out`, flattened,
    /// with every file on it: the machine goes back to the snapshot, writes its files to
    /// disk, is paused and copied, then returns to where it was (kept in a snapshot of its
    /// own meanwhile, deleted after).
    ///
    /// With `memory`, the machine's memory is saved there once its files are written (the
    /// domain stops, so the disk is copied closed, at the memory's moment); when libvirt
    /// refuses, nothing is saved and why is returned.
    async fn flatten_flushed(
        &self,
        id: &str,
        name: &str,
        disk: &Path,
        out: &Path,
        memory: Option<&Path>,
    ) -> Result<Option<String>> {
        let here = format!("envrig-export-{}", std::process::id());
        let (id2, here2) = (id.to_string(), here.clone());
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id2)
                .map_err(|e| engine("look up the domain", e))?;
            let text = xml::snapshot(&here2, "").map_err(|e| io("write the snapshot XML", e))?;
            dom.create_snapshot_xml(&text, 0)
                .map_err(|e| engine("keep the machine's state during the export", e))
                .map(|_| ())
        })
        .await?;
        let copied = async {
            self.revert(id, name, virt::sys::VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING)
                .await?;
            self.wait_ready_with(id, false).await?;
            self.sync_guest(id).await;
            self.pause_machine(id).await?;
            let mut why = None;
            if let Some(m) = memory
                && let Err(e) = self.save_paused(id, m).await
            {
                let _ = std::fs::remove_file(m);
                why = Some(e.to_string());
            }
            self.flatten(disk, None, out).await.map(|()| why)
        }
        .await;
        // Back where it was, whatever happened.
        let back = self.revert(id, &here, 0).await;
        let (id2, here2) = (id.to_string(), here.clone());
        let _ = self
            .blocking(move |c| {
                let dom = c
                    .lookup_domain_by_uuid_string(&id2)
                    .map_err(|e| engine("look up the domain", e))?;
                if let Ok(s) = Domain::lookup_snapshot_by_name(&dom, &here2, 0) {
                    let _ = s.delete(0);
                }
                Ok(())
            })
            .await;
        let copied = copied?;
        back.map(|()| copied)
    }

    pub(crate) async fn check_disk_export(&self, src: &Path) -> Result<()> {
        let src2 = src.to_path_buf();
        envrig_provider_api::export::check_archive(
            move || qcow2::check_export_tar(&src2),
            "disk",
            "disk export",
            |e| io("read the disk export", std::io::Error::other(e)),
        )
        .await?;
        // Saved memory, when there is some, must be an image libvirt reads.
        let src2 = src.to_path_buf();
        match tokio::task::spawn_blocking(move || crate::capsule::memory_in_tar(&src2)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ProviderError::Refused {
                message: format!("its saved memory is not an image libvirt reads ({e})"),
            }),
            Err(e) => Err(io("read the disk export", std::io::Error::other(e))),
        }
    }

    pub(crate) async fn import_snapshot(
        &self,
        src: &Path,
        snap: &Snapshot,
        labels: &BTreeMap<String, String>,
    ) -> Result<Snapshot> {
        if self.remote.is_some() {
            return Err(self.not_remotely(
                "importing a snapshot",
                "import the archive on a libvirt host of its own (`envrig import` without a remote engine)",
            ));
        }
        static IMPORTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = IMPORTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = self.images.join(".imports");
        // What a crashed import left more than a day ago goes first.
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(24 * 3600));
                if old {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = root.join(format!(
            "{}.{n}",
            envrig_provider_api::work::name(&snap.machine)
        ));
        let (src2, dir2) = (src.to_path_buf(), dir.clone());
        let checked = tokio::task::spawn_blocking(move || {
            boxes::unpack_disk_tar(&src2, &dir2)?;
            qcow2::check_file(&dir2.join("disk.qcow2"))
        })
        .await
        .map_err(|e| io("unpack the disk", std::io::Error::other(e)))?;
        // Checked again once unpacked, whatever the caller did: this disk is what QEMU opens.
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(refused_disk(&snap.machine, &why));
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(io("unpack the disk", e));
            }
        }
        let mut labels = labels.clone();
        labels.insert(
            envrig_provider_api::labels::SNAPSHOT.to_string(),
            snap.name.clone(),
        );
        Ok(Snapshot {
            id: dir.display().to_string(),
            labels,
            ..snap.clone()
        })
    }
}

/// A libvirt snapshot as envrig sees it: its id is `DOMAIN-UUID/NAME`.
fn snapshot_of(domain: &str, name: &str, meta: SnapMeta) -> Snapshot {
    Snapshot {
        id: format!("{domain}/{name}"),
        name: name.to_string(),
        machine: meta.spec.machine.clone(),
        created: meta.created,
        running: meta.running,
        spec: meta.spec,
        labels: meta.labels,
    }
}
