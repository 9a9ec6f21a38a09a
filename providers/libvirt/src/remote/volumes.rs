//! A machine's files on a remote host as volumes of envrig's pool: its disk (backed by its
//! box's) and its small files (`note_*`, which keep them in the machine's folder when the
//! daemon is this host's); and `gc`'s sweep of the volumes a killed envrig left there.

use std::time::Duration;

use envrig_provider_api::Result;
use virt::connect::Connect;
use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use super::boxes::{BOX_PREFIX, upload_of};
use super::stream::{download, upload};
use super::{
    POOL, create, ensure_pool, existing_pool, find, known, machine_volume, path_of, size_of,
};
use crate::LibvirtProvider;
use crate::error::{engine, io};
use crate::xml::storage::{self, Volume};

/// How long a volume no envrig claims may sit unchanged before `gc` removes it: an upload
/// in progress writes to its volume all the time, and a machine's volumes are claimed by its
/// domain seconds after they are made.
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// Makes volume `name` hold `body` (replacing one of that name): a machine's small file.
fn put_bytes(c: &Connect, pool: &StoragePool, name: &str, body: &[u8]) -> Result<StorageVol> {
    if let Some(old) = find(pool, name) {
        old.delete(0)
            .map_err(|e| engine(format!("replace volume `{name}`"), e))?;
    }
    let vol = create(
        pool,
        &Volume {
            name,
            capacity: body.len() as u64,
            format: "raw",
            mode: "0600",
            backing: None,
        },
    )?;
    if !body.is_empty()
        && let Err(e) = upload(c, &vol, body, body.len() as u64)
    {
        let _ = vol.delete(0);
        return Err(e);
    }
    Ok(vol)
}

/// Whether `vol` has not changed for [`ABANDONED_AFTER`].
fn stale(vol: &StorageVol) -> bool {
    let Some(mtime) = vol.xml_desc(0).ok().and_then(|x| storage::volume_mtime(&x)) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    now - mtime > ABANDONED_AFTER.as_secs_f64()
}

impl LibvirtProvider {
    /// Makes machine `resource`'s disk on the remote host: a qcow2 volume of `capacity` bytes
    /// backed by the box's disk (a leftover of that name, from a crash, is replaced).
    pub(crate) async fn remote_overlay(
        &self,
        resource: &str,
        backing: &str,
        capacity: u64,
    ) -> Result<String> {
        let (name, backing) = (machine_volume(resource, "qcow2"), backing.to_string());
        self.blocking(move |c| {
            let pool = ensure_pool(c)?;
            if let Some(old) = find(&pool, &name) {
                let _ = old.delete(0);
            }
            let vol = create(
                &pool,
                &Volume {
                    name: &name,
                    capacity,
                    format: "qcow2",
                    mode: "0600",
                    backing: Some(&backing),
                },
            )?;
            path_of(&vol)
        })
        .await
    }

    /// Puts `body` on the remote host as machine `resource`'s file `what`; its path there.
    pub(crate) async fn remote_put(
        &self,
        resource: &str,
        what: &str,
        body: Vec<u8>,
    ) -> Result<String> {
        let name = machine_volume(resource, what);
        self.blocking(move |c| {
            let pool = ensure_pool(c)?;
            path_of(&put_bytes(c, &pool, &name, &body)?)
        })
        .await
    }

    /// Deletes every volume of machine `resource` on the remote host (none: nothing to do).
    pub(crate) async fn remote_remove_volumes(&self, resource: &str) -> Result<()> {
        let prefix = machine_volume(resource, "");
        self.blocking(move |c| {
            let Some(pool) = existing_pool(c) else {
                return Ok(());
            };
            for v in pool.list_all_volumes(0).unwrap_or_default() {
                let Ok(name) = v.name() else { continue };
                if name.starts_with(&prefix) {
                    match v.delete(0) {
                        Err(e) if !known(&e, ErrorNumber::NoStorageVolume) => {
                            return Err(engine(format!("delete volume `{name}`"), e));
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// A machine's small file: in its folder on this host, or a volume of envrig's pool on a
    /// remote host. `body` is written whole (an empty one marks something: `booting`).
    pub(crate) async fn note_put(&self, resource: &str, what: &str, body: &[u8]) -> Result<()> {
        if self.remote.is_some() {
            return self
                .remote_put(resource, what, body.to_vec())
                .await
                .map(|_| ());
        }
        let file = self.machine_dir(resource).join(what);
        std::fs::write(&file, body).map_err(|e| io(format!("write {}", file.display()), e))
    }

    /// The last `max` bytes at most of machine `resource`'s file `what` ([`Self::note_put`]).
    pub(crate) async fn note_read(&self, resource: &str, what: &str, max: u64) -> Option<Vec<u8>> {
        self.note_read_from(resource, what, 0, max)
            .await
            .map(|(b, _)| b)
    }

    /// Machine `resource`'s file `what` from byte `from` on, its last `max` bytes at most,
    /// and the file's size then (`envrig logs` follows a console log with it).
    pub(crate) async fn note_read_from(
        &self,
        resource: &str,
        what: &str,
        from: u64,
        max: u64,
    ) -> Option<(Vec<u8>, u64)> {
        let start = move |size: u64| from.max(size.saturating_sub(max)).min(size);
        if self.remote.is_none() {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = std::fs::File::open(self.machine_dir(resource).join(what)).ok()?;
            let size = f.metadata().ok()?.len();
            f.seek(SeekFrom::Start(start(size))).ok()?;
            let mut out = Vec::new();
            f.take(size - start(size)).read_to_end(&mut out).ok()?;
            return Some((out, size));
        }
        let name = machine_volume(resource, what);
        self.blocking(move |c| {
            let Some(vol) = existing_pool(c).and_then(|p| find(&p, &name)) else {
                return Ok(None);
            };
            let size = size_of(&vol)?;
            let mut out = Vec::new();
            if size > start(size) {
                download(c, &vol, start(size), &mut out)?;
            }
            Ok(Some((out, size)))
        })
        .await
        .ok()
        .flatten()
    }

    /// Whether machine `resource` has the file `what` ([`Self::note_put`]).
    pub(crate) async fn note_exists(&self, resource: &str, what: &str) -> bool {
        if self.remote.is_none() {
            return self.machine_dir(resource).join(what).exists();
        }
        let name = machine_volume(resource, what);
        self.blocking(move |c| Ok(existing_pool(c).and_then(|p| find(&p, &name)).is_some()))
            .await
            .unwrap_or(false)
    }

    /// Removes machine `resource`'s file `what` ([`Self::note_put`]), if any.
    pub(crate) async fn note_drop(&self, resource: &str, what: &str) {
        if self.remote.is_none() {
            let _ = std::fs::remove_file(self.machine_dir(resource).join(what));
            return;
        }
        let name = machine_volume(resource, what);
        let _ = self
            .blocking(move |c| {
                if let Some(v) = existing_pool(c).and_then(|p| find(&p, &name)) {
                    let _ = v.delete(0);
                }
                Ok(())
            })
            .await;
    }

    /// What a killed envrig left in envrig's pool on the remote host and nothing claims,
    /// unchanged for an hour: the volumes of an upload no box's alias and no machine's disk
    /// is made on, and the volumes of a machine whose domain was never defined (or was
    /// undefined by hand). Boxes stay: they are the host's copy of this host's store, found
    /// again by the next machine.
    pub(crate) async fn remote_sweep(&self) -> Result<Vec<String>> {
        self.blocking(|c| {
            let Some(pool) = existing_pool(c) else {
                return Ok(Vec::new());
            };
            let vols: Vec<(String, StorageVol)> = pool
                .list_all_volumes(0)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| Some((v.name().ok()?, v)))
                .collect();
            // The uploads that boxes' aliases and machines' disks are made on.
            let used: std::collections::HashSet<String> = vols
                .iter()
                .filter(|(n, _)| n.ends_with(".qcow2") && upload_of(n).is_none())
                .filter_map(|(_, v)| storage::backing_path(&v.xml_desc(0).ok()?))
                .filter_map(|p| upload_of(p.rsplit('/').next()?))
                .collect();
            let mut out = Vec::new();
            for (name, v) in vols {
                let claimed = match upload_of(&name) {
                    Some(u) => used.contains(&u),
                    None if name.starts_with(BOX_PREFIX) => true,
                    None => {
                        let resource = name.split('.').next().unwrap_or_default();
                        c.lookup_domain_by_name(resource).is_ok()
                    }
                };
                if !claimed && stale(&v) && v.delete(0).is_ok() {
                    out.push(format!("volume {name} (pool {POOL})"));
                }
            }
            Ok(out)
        })
        .await
    }
}
