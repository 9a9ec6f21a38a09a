//! A box on a remote host: found by its sha256, else uploaded once (each volume read back and
//! hashed) and committed by a small qcow2 alias; the boxes the host has, and one removed.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use envrig_provider_api::{ProviderError, Result};
use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use super::stream::{download, settle, upload};
use super::{POOL, Remote, RemoteBox, create, ensure_pool, existing_pool, find, path_of, size_of};
use crate::error::{engine, io};
use crate::xml::storage::{self, Volume};
use crate::{LibvirtProvider, NAME, boxes, qcow2};

/// The prefix of a box's volumes: `envrig-box-SHA256.qcow2` (and `.vmlinuz`, `.initrd.img`).
pub(super) const BOX_PREFIX: &str = "envrig-box-";

/// A box's volumes on a host: the paths of its disk, kernel and initrd there.
struct BoxVolumes {
    disk: String,
    kernel: Option<String>,
    initrd: Option<String>,
}

/// The name of the volume that commits a box on a host: `envrig-box-SHA.qcow2`, a qcow2
/// volume backed by the box's disk volume (libvirt has no rename and no labels on volumes:
/// this small volume is how a name points at an upload that is whole and checked).
fn box_alias(sha: &str) -> String {
    format!("{BOX_PREFIX}{sha}.qcow2")
}

/// The volume holding box file `file` of upload `upload`: `envrig-box-SHA.UPLOAD.qcow2`
/// (`.vmlinuz`, `.initrd.img`).
fn box_data(sha: &str, upload: &str, file: &str) -> String {
    let suffix = if file == "disk.qcow2" { "qcow2" } else { file };
    format!("{BOX_PREFIX}{sha}.{upload}.{suffix}")
}

/// The upload a box's volume belongs to (`SHA.UPLOAD` of `envrig-box-SHA.UPLOAD.FILE`);
/// `None` for any other volume (a box's alias, a machine's).
pub(super) fn upload_of(volume: &str) -> Option<String> {
    let rest = volume.strip_prefix(BOX_PREFIX)?;
    let mut parts = rest.splitn(3, '.');
    let (sha, upload, _) = (parts.next()?, parts.next()?, parts.next()?);
    Some(format!("{sha}.{upload}"))
}

/// The box `sha` as the host has it, when it does: its commit volume ([`box_alias`]) names
/// the upload, whose volumes must all be there and the size of the files here. An alias
/// whose upload is gone is removed (nothing can be made on a missing disk): the box is then
/// uploaded anew. An upload that differs from the box here is refused, never deleted:
/// machines there may be made on it.
fn found_box(
    c: &Connect,
    pool: &StoragePool,
    sha: &str,
    files: &[(&'static str, PathBuf)],
    host: &str,
) -> Result<Option<BoxVolumes>> {
    let alias_name = box_alias(sha);
    let Some(alias) = find(pool, &alias_name) else {
        return Ok(None);
    };
    // Another envrig may be making it this very moment.
    settle(c, &alias, &alias_name)?;
    let xml = alias
        .xml_desc(0)
        .map_err(|e| engine(format!("read volume `{alias_name}`"), e))?;
    let upload = storage::backing_path(&xml).and_then(|p| {
        let name = p.rsplit('/').next()?.to_string();
        let rest = name.strip_prefix(&format!("{BOX_PREFIX}{sha}."))?;
        Some(rest.strip_suffix(".qcow2")?.to_string())
    });
    let mut paths = HashMap::new();
    let mut whole = upload.is_some();
    if let Some(upload) = &upload {
        for (f, src) in files {
            let name = box_data(sha, upload, f);
            let Some(vol) = find(pool, &name) else {
                whole = false;
                break;
            };
            let (here, there) = (
                std::fs::metadata(src)
                    .map_err(|e| io(format!("read {}", src.display()), e))?
                    .len(),
                size_of(&vol)?,
            );
            if here != there {
                return Err(ProviderError::Conflict {
                    message: format!(
                        "the box on {host} (volume `{name}` of pool `{POOL}`, {there} bytes) is not {} ({here} bytes) although its disk is the same: delete volume `{alias_name}` there (`virsh vol-delete --pool {POOL} {alias_name}`; machines made on the old one keep it) and try again",
                        src.display()
                    ),
                });
            }
            paths.insert(*f, path_of(&vol)?);
        }
    }
    if !whole {
        tracing::warn!(
            "box volume {alias_name} on {host} names an upload that is gone: uploading the box again"
        );
        let _ = alias.delete(0);
        return Ok(None);
    }
    Ok(Some(BoxVolumes {
        disk: paths.remove("disk.qcow2").unwrap_or_default(),
        kernel: paths.remove("vmlinuz"),
        initrd: paths.remove("initrd.img"),
    }))
}

/// Uploads the box `sha` (its `files`; the disk's sha256 must be `sha`) as volumes of an
/// upload of its own (raw: the bytes as they are), each read back and hashed, then commits
/// it with the box's alias, a qcow2 volume of `virtual_size` backed by the disk. `None`:
/// another envrig committed the box first (this upload's volumes are deleted). A failed or
/// damaged upload deletes its volumes; one a killed envrig abandoned is removed by `gc`.
fn upload_box(
    c: &Connect,
    pool: &StoragePool,
    sha: &str,
    files: &[(&'static str, PathBuf)],
    virtual_size: u64,
) -> Result<Option<BoxVolumes>> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let batch = format!("{}-{nanos:09}", std::process::id());
    let mut made: Vec<StorageVol> = Vec::new();
    let done = (|| {
        let mut paths = HashMap::new();
        for (f, src) in files {
            let name = box_data(sha, &batch, f);
            let len = std::fs::metadata(src)
                .map_err(|e| io(format!("read {}", src.display()), e))?
                .len();
            let vol = create(
                pool,
                &Volume {
                    name: &name,
                    capacity: len,
                    format: "raw",
                    mode: "0644",
                    backing: None,
                },
            )?;
            made.push(vol.clone());
            let file =
                std::fs::File::open(src).map_err(|e| io(format!("read {}", src.display()), e))?;
            let (sent, sent_len) = upload(c, &vol, file, len)?;
            if sent_len != len {
                return Err(damaged(
                    &name,
                    &format!("{sent_len} of {len} bytes were sent"),
                ));
            }
            if *f == "disk.qcow2" && sent != sha {
                return Err(ProviderError::Conflict {
                    message: format!(
                        "{} changed since its box was added: its sha256 is {sent}, the box says {sha}; add the box again (`envrig box add --force`)",
                        src.display()
                    ),
                });
            }
            let (back, back_len) = download(c, &vol, 0, std::io::sink())?;
            if (back.as_str(), back_len) != (sent.as_str(), len) {
                return Err(damaged(
                    &name,
                    &format!(
                        "{back_len} bytes of sha256 {back} came back for {len} of sha256 {sent}"
                    ),
                ));
            }
            paths.insert(*f, path_of(&vol)?);
        }
        let disk = paths.remove("disk.qcow2").unwrap_or_default();
        let alias = Volume {
            name: &box_alias(sha),
            capacity: virtual_size,
            format: "qcow2",
            mode: "0644",
            backing: Some(&disk),
        };
        match create(pool, &alias) {
            Ok(_) => Ok(Some(BoxVolumes {
                disk,
                kernel: paths.remove("vmlinuz"),
                initrd: paths.remove("initrd.img"),
            })),
            Err(_) if find(pool, alias.name).is_some() => Ok(None),
            Err(e) => Err(e),
        }
    })();
    if !matches!(done, Ok(Some(_))) {
        for v in made {
            let _ = v.delete(0);
        }
    }
    done
}

fn engine_msg(op: String, why: &str) -> ProviderError {
    ProviderError::Engine {
        provider: NAME,
        op,
        source: Box::new(std::io::Error::other(why.to_string())),
    }
}

fn damaged(name: &str, why: &str) -> ProviderError {
    ProviderError::Engine {
        provider: NAME,
        op: format!("upload volume `{name}`"),
        source: Box::new(std::io::Error::other(format!(
            "it arrived damaged ({why}); nothing was kept, try again"
        ))),
    }
}

/// The size of the disk a qcow2 image gives a guest (its header's `size`), refusing one that
/// is not self-contained (a baked layer names its box as a backing file, a path of this host).
fn box_disk_size(disk: &Path, reference: &str) -> Result<u64> {
    let mut header = Vec::new();
    std::fs::File::open(disk)
        .and_then(|f| f.take(qcow2::HEADER_LEN as u64).read_to_end(&mut header))
        .map_err(|e| io(format!("read {}", disk.display()), e))?;
    if let Err(why) = qcow2::check_header(&header) {
        return Err(ProviderError::NotSupported {
            provider: NAME,
            what: format!(
                "box `{reference}` on a remote libvirt host ({why}): a remote host takes a self-contained qcow2 disk (a baked layer or a disk on a backing file stays on this host)"
            ),
        });
    }
    qcow2::virtual_size(&header).ok_or_else(|| {
        io(
            "read the box's disk size",
            std::io::Error::other("its qcow2 header is cut short"),
        )
    })
}

impl LibvirtProvider {
    /// The box `reference` (a box of this host's store, or a folder) on the remote host:
    /// uploaded the first time a machine there needs it, then found by its sha256. A box
    /// missing here is "not found", naming it, as it is for a local host.
    pub(crate) async fn remote_box(&self, remote: &Remote, reference: &str) -> Result<RemoteBox> {
        let source = self
            .box_dir(reference)
            .ok_or_else(|| ProviderError::NotFound {
                what: format!("box `{reference}`"),
            })?;
        let disk = source.join("disk.qcow2");
        let virtual_size = box_disk_size(&disk, reference)?;
        let sha = self
            .resolve_box(reference)
            .await?
            .and_then(|b| b.id.strip_prefix("sha256:").map(str::to_string))
            .ok_or_else(|| ProviderError::NotFound {
                what: format!("box `{reference}`"),
            })?;
        let cmdline = std::fs::read_to_string(source.join("cmdline"))
            .ok()
            .map(|s| s.trim().to_string());
        // Machines made in parallel from one box wait for one upload.
        let lock = remote.upload_lock(&sha);
        let _held = lock.lock().await;
        let files: Vec<(&'static str, PathBuf)> = std::iter::once("disk.qcow2")
            .chain(boxes::KERNEL_FILES)
            .filter(|f| *f != "cmdline")
            .map(|f| (f, source.join(f)))
            .filter(|(_, p)| p.is_file())
            .collect();
        let (host, reference2) = (remote.host.clone(), reference.to_string());
        let bytes: u64 = files
            .iter()
            .filter_map(|(_, p)| p.metadata().ok())
            .map(|m| m.len())
            .sum();
        let vols = self
            .blocking(move |c| {
                let pool = ensure_pool(c)?;
                let alias = box_alias(&sha);
                if let Some(b) = found_box(c, &pool, &sha, &files, &host)? {
                    tracing::debug!(host = %host, "box `{reference2}` found as volume {alias}");
                    return Ok(b);
                }
                let t0 = Instant::now();
                if let Some(b) = upload_box(c, &pool, &sha, &files, virtual_size)? {
                    let ms = t0.elapsed().as_millis() as u64;
                    tracing::info!(host = %host, bytes, ms, "box `{reference2}` uploaded as volume {alias}");
                    return Ok(b);
                }
                tracing::info!(host = %host, "box `{reference2}`: another envrig put it there first; this upload is deleted");
                found_box(c, &pool, &sha, &files, &host)?.ok_or_else(|| {
                    engine_msg(
                        format!("upload box `{reference2}`"),
                        "its volume vanished while it was committed",
                    )
                })
            })
            .await?;
        Ok(RemoteBox {
            disk: vols.disk,
            kernel: vols.kernel,
            initrd: vols.initrd,
            cmdline,
            virtual_size,
            source,
        })
    }

    /// The sha256 of every box the remote host has (committed by its alias).
    pub(crate) async fn remote_box_shas(&self) -> Result<std::collections::HashSet<String>> {
        self.blocking(|c| {
            let Some(pool) = existing_pool(c) else {
                return Ok(Default::default());
            };
            Ok(pool
                .list_volumes()
                .unwrap_or_default()
                .into_iter()
                .filter(|n| upload_of(n).is_none())
                .filter_map(|n| {
                    let sha = n.strip_prefix(BOX_PREFIX)?.strip_suffix(".qcow2")?;
                    (!sha.contains('.')).then(|| sha.to_string())
                })
                .collect())
        })
        .await
    }

    /// Removes the copy of box `name` (of this host's store) from the remote host: its alias
    /// and every upload of it; refused while a machine there is made on it.
    pub(crate) async fn remote_remove_box(&self, name: &str) -> Result<()> {
        let host = self
            .remote
            .as_ref()
            .map_or(String::new(), |r| r.host.clone());
        let not_there = || ProviderError::NotFound {
            what: format!("box `{name}` on {host}"),
        };
        if !boxes::valid_name(name) {
            return Err(not_there());
        }
        let sha = self
            .resolve_box(name)
            .await?
            .and_then(|b| b.id.strip_prefix("sha256:").map(str::to_string))
            .ok_or_else(not_there)?;
        let (name, host2) = (name.to_string(), host.clone());
        self.blocking(move |c| {
            let pool = existing_pool(c).ok_or_else(|| ProviderError::NotFound {
                what: format!("box `{name}` on {host2}"),
            })?;
            let prefix = format!("{BOX_PREFIX}{sha}.");
            let vols: Vec<(String, StorageVol)> = pool
                .list_all_volumes(0)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| Some((v.name().ok()?, v)))
                .collect();
            let users: Vec<String> = vols
                .iter()
                .filter(|(n, _)| !n.starts_with(BOX_PREFIX) && n.ends_with(".qcow2"))
                .filter(|(_, v)| {
                    v.xml_desc(0)
                        .ok()
                        .and_then(|x| storage::backing_path(&x))
                        .and_then(|p| p.rsplit('/').next().map(|f| f.starts_with(&prefix)))
                        .unwrap_or(false)
                })
                .map(|(n, _)| n.trim_end_matches(".qcow2").to_string())
                .collect();
            if !users.is_empty() {
                return Err(ProviderError::Conflict {
                    message: format!(
                        "box `{name}` is used on {host2} by {}; destroy them first",
                        users.join(", ")
                    ),
                });
            }
            let mine: Vec<&(String, StorageVol)> = vols
                .iter()
                .filter(|(n, _)| n.starts_with(&prefix))
                .collect();
            if mine.is_empty() {
                return Err(ProviderError::NotFound {
                    what: format!("box `{name}` on {host2}"),
                });
            }
            // The alias first: a box without it is not found again.
            let alias = box_alias(&sha);
            for (n, v) in mine.iter().filter(|(n, _)| *n == alias) {
                v.delete(0)
                    .map_err(|e| engine(format!("delete volume `{n}`"), e))?;
            }
            for (n, v) in mine.iter().filter(|(n, _)| *n != alias) {
                v.delete(0)
                    .map_err(|e| engine(format!("delete volume `{n}`"), e))?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boxs_volumes_name_their_upload() {
        assert_eq!(box_alias("ab"), "envrig-box-ab.qcow2");
        assert_eq!(
            box_data("ab", "7-000000001", "disk.qcow2"),
            "envrig-box-ab.7-000000001.qcow2"
        );
        assert_eq!(
            upload_of(&box_data("ab", "7-000000001", "initrd.img")).as_deref(),
            Some("ab.7-000000001")
        );
        assert_eq!(upload_of(&box_alias("ab")), None);
        assert_eq!(upload_of("shop-1234abcd-web-1.qcow2"), None);
    }
}
