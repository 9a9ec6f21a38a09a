//! A libvirt host reached over the network (`qemu+tcp://host/system`, `qemu+ssh://u@h/system`,
//! `qemu+tls://…`): it does not share this host's file system, so everything a machine there
//! needs is put there through libvirt's own APIs, as vagrant-libvirt does:
//!
//! - envrig's storage pool on that host (`envrig`, a `dir` pool in [`POOL_PATH`]), made and
//!   started when missing;
//! - each box uploaded once into it (libvirt's stream upload), its volumes named by the box's
//!   sha256 so that every later machine finds them: sent under a work name, read back and
//!   hashed, and only then copied by libvirt under the real name (libvirt cannot rename a
//!   volume), so a volume under a box's name is always whole and checked;
//! - a machine's disk as a qcow2 volume backed by its box's volume, and its small files (NoCloud
//!   seed, console log, the marks `booting` and the drift baseline) as volumes named after it;
//!   all of them go with the machine.
//!
//! What cannot work there is refused where it is asked for, saying why (`docs/libvirt-remote.md`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envrig_provider_api::{ProviderError, Result};
use virt::connect::Connect;
use virt::enumutil::Enum;
use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use crate::error::{engine, io};
use crate::xml::storage::{self, Volume};
use crate::{LibvirtProvider, NAME, boxes, qcow2};

/// envrig's storage pool on a remote host.
pub(crate) const POOL: &str = "envrig";

/// Where envrig's pool keeps its files on a remote host, when envrig makes the pool (an
/// administrator may define a pool named `envrig` elsewhere first: it is used as it is).
pub(crate) const POOL_PATH: &str = "/var/lib/libvirt/images/envrig-pool";

/// The prefix of a box's volumes: `envrig-box-SHA256.qcow2` (and `.vmlinuz`, `.initrd.img`).
const BOX_PREFIX: &str = "envrig-box-";

/// How long a volume no envrig claims may sit unchanged before `gc` removes it: an upload
/// in progress writes to its volume all the time, and a machine's volumes are claimed by its
/// domain seconds after they are made.
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// A stream's piece: libvirt's remote protocol carries at most 256 KiB of data a message.
const PIECE: usize = 256 * 1024;

/// How long a box's volume that another envrig is copying into place may take to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(600);

/// The host part of a libvirt URI that names a daemon on another host (`None`: this host's
/// own daemon, `qemu:///system`, `qemu:///session`, `qemu+unix:///…`). Any host part counts,
/// `localhost` too: a daemon reached over the network may live in another mount namespace
/// and see other files.
pub(crate) fn remote_host(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    if scheme.split_once('+').is_some_and(|(_, t)| t == "unix") {
        return None;
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_string();
    (!host.is_empty()).then_some(host)
}

/// A remote libvirt host: its name (for messages), and the uploads this process has under
/// way, so that machines made in parallel from one box upload it once.
#[derive(Debug)]
pub(crate) struct Remote {
    pub(crate) host: String,
    uploads: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Remote {
    pub(crate) fn new(host: String) -> Remote {
        Remote {
            host,
            uploads: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn upload_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(key.to_string()).or_default().clone()
    }
}

/// A box as a remote host has it: the paths (on that host) of its volumes.
#[derive(Debug, Clone)]
pub(crate) struct RemoteBox {
    /// The box's disk (qcow2), every machine's backing file.
    pub(crate) disk: String,
    pub(crate) kernel: Option<String>,
    pub(crate) initrd: Option<String>,
    /// The kernel's command line (read from the box here: it goes into the domain's XML).
    pub(crate) cmdline: Option<String>,
    /// The size of the disk the box gives a guest.
    pub(crate) virtual_size: u64,
    /// The box's folder here.
    pub(crate) source: PathBuf,
}

/// The name of a volume of machine `resource`: `RESOURCE.WHAT` (a resource name has no `.`,
/// so no machine's volumes are another's).
pub(crate) fn machine_volume(resource: &str, what: &str) -> String {
    format!("{resource}.{what}")
}

fn known(e: &virt::error::Error, n: ErrorNumber) -> bool {
    e.code() == Enum::Known(n)
}

/// envrig's pool on the host `c` reaches, defined, built and started when it is not
/// (idempotent, and safe when another envrig does the same at the same time).
pub(crate) fn ensure_pool(c: &Connect) -> Result<StoragePool> {
    let pool = match c.lookup_storage_pool_by_name(POOL) {
        Ok(p) => p,
        Err(_) => {
            let text = storage::pool(POOL, POOL_PATH).map_err(|e| io("write the pool XML", e))?;
            match c.define_storage_pool_xml(&text, 0) {
                Ok(p) => {
                    let _ = p.set_autostart(true);
                    p
                }
                // Another envrig defined it first.
                Err(e) => c
                    .lookup_storage_pool_by_name(POOL)
                    .map_err(|_| engine(format!("define storage pool `{POOL}`"), e))?,
            }
        }
    };
    if !pool.is_active().unwrap_or(false) {
        // Its folder is made when missing (kept when it exists).
        let _ = pool.build(0);
        if let Err(e) = pool.create(0)
            && !pool.is_active().unwrap_or(false)
        {
            return Err(engine(format!("start storage pool `{POOL}`"), e));
        }
    }
    Ok(pool)
}

/// envrig's pool, started, when the host has one (nothing is made).
fn existing_pool(c: &Connect) -> Option<StoragePool> {
    let pool = c.lookup_storage_pool_by_name(POOL).ok()?;
    if !pool.is_active().unwrap_or(false) {
        let _ = pool.create(0);
    }
    pool.is_active().unwrap_or(false).then_some(pool)
}

/// The volume `name` of `pool`, when it exists.
fn find(pool: &StoragePool, name: &str) -> Option<StorageVol> {
    pool.lookup_storage_vol_by_name(name).ok()
}

fn create(pool: &StoragePool, v: &Volume<'_>) -> Result<StorageVol> {
    let text = v.to_xml().map_err(|e| io("write the volume XML", e))?;
    StorageVol::create_xml(pool, &text, 0)
        .map_err(|e| engine(format!("create volume `{}`", v.name), e))
}

/// A volume's path on its host.
fn path_of(vol: &StorageVol) -> Result<String> {
    vol.path().map_err(|e| engine("read a volume's path", e))
}

/// Writes what it is given into a stream, a piece at a time.
struct Sending<'a>(&'a Stream);

impl Write for Sending<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(PIECE);
        let sent = self.0.send(&buf[..n]).map_err(std::io::Error::other)?;
        usize::try_from(sent).map_err(|_| std::io::Error::other("the stream took no bytes"))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads a stream until its end.
struct Receiving<'a>(&'a Stream);

impl Read for Receiving<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(PIECE);
        let got = self.0.recv(&mut buf[..n]).map_err(std::io::Error::other)?;
        usize::try_from(got).map_err(|_| std::io::Error::other("the stream would block"))
    }
}

/// Sends `len` bytes of `from` into `vol` from its start (libvirt's `virStorageVolUpload`):
/// the sha256 of what was sent and how many bytes.
fn upload(c: &Connect, vol: &StorageVol, from: impl Read, len: u64) -> Result<(String, u64)> {
    let stream = Stream::new(c, 0).map_err(|e| engine("open an upload stream", e))?;
    vol.upload(&stream, 0, len, 0)
        .map_err(|e| engine("start the upload", e))?;
    match envrig_provider_api::hash::sha256_copy(from.take(len), Sending(&stream)) {
        Ok(sent) => {
            stream
                .finish()
                .map_err(|e| engine("finish the upload", e))?;
            Ok(sent)
        }
        Err(e) => {
            let _ = stream.abort();
            Err(io("upload", e))
        }
    }
}

/// The bytes of `vol` from `offset` to its end, handed to `to`: their sha256 and how many.
fn download(c: &Connect, vol: &StorageVol, offset: u64, to: impl Write) -> Result<(String, u64)> {
    let stream = Stream::new(c, 0).map_err(|e| engine("open a download stream", e))?;
    vol.download(&stream, offset, 0, 0)
        .map_err(|e| engine("start the download", e))?;
    match envrig_provider_api::hash::sha256_copy(Receiving(&stream), to) {
        Ok(got) => {
            stream
                .finish()
                .map_err(|e| engine("finish the download", e))?;
            Ok(got)
        }
        Err(e) => {
            let _ = stream.abort();
            Err(io("download", e))
        }
    }
}

/// A volume's file size (its physical size: libvirt reports a box's disk, a qcow2 file,
/// by its virtual size otherwise).
fn size_of(vol: &StorageVol) -> Result<u64> {
    Ok(vol
        .info_flags(virt::sys::VIR_STORAGE_VOL_GET_PHYSICAL)
        .map_err(|e| engine("read a volume's size", e))?
        .allocation)
}

/// Waits until `vol` is no longer being written by libvirt (a copy another envrig started:
/// libvirt shows the volume at its full size at once, and refuses to read it until the copy
/// is done), within [`SETTLE_LIMIT`].
fn settle(c: &Connect, vol: &StorageVol, name: &str) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let stream = Stream::new(c, 0).map_err(|e| engine("open a download stream", e))?;
        match vol.download(&stream, 0, 1, 0) {
            Ok(()) => {
                let mut one = Vec::new();
                let _ = Receiving(&stream).read_to_end(&mut one);
                let _ = stream.finish();
                return Ok(());
            }
            Err(e) if known(&e, ErrorNumber::OperationInvalid) && t0.elapsed() < SETTLE_LIMIT => {
                tracing::debug!("volume {name} is still being copied into place: {e}");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(engine(format!("read volume `{name}`"), e)),
        }
    }
}

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
fn upload_of(volume: &str) -> Option<String> {
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

/// The last `max` bytes at most of volume `vol`.
fn tail(c: &Connect, vol: &StorageVol, max: u64) -> Result<Vec<u8>> {
    let size = size_of(vol)?;
    let mut out = Vec::new();
    if size > 0 {
        download(c, vol, size.saturating_sub(max), &mut out)?;
    }
    Ok(out)
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

    /// A machine's small file ([`Self::note_put`]): its last `max` bytes at most, `None`
    /// when there is none.
    pub(crate) async fn note_read(&self, resource: &str, what: &str, max: u64) -> Option<Vec<u8>> {
        if self.remote.is_none() {
            let body = std::fs::read(self.machine_dir(resource).join(what)).ok()?;
            let from = body
                .len()
                .saturating_sub(usize::try_from(max).unwrap_or(usize::MAX));
            return Some(body[from..].to_vec());
        }
        let name = machine_volume(resource, what);
        self.blocking(move |c| {
            let Some(vol) = existing_pool(c).and_then(|p| find(&p, &name)) else {
                return Ok(None);
            };
            Ok(Some(tail(c, &vol, max)?))
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

    /// The reason a machine on a remote host cannot do `what`, and what to do instead.
    pub(crate) fn not_remotely(&self, what: &str, instead: &str) -> ProviderError {
        let host = self.remote.as_ref().map_or("", |r| r.host.as_str());
        ProviderError::NotSupported {
            provider: NAME,
            what: format!(
                "{what} on a remote libvirt host ({host}: it does not share this host's files; {instead}; see docs/libvirt-remote.md)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_with_a_host_are_remote() {
        for (uri, host) in [
            ("qemu:///system", None),
            ("qemu:///session", None),
            ("qemu+unix:///system?socket=/run/x.sock", None),
            ("qemu+tcp://198.18.200.31/system", Some("198.18.200.31")),
            ("qemu+ssh://ci@build-3/system?keyfile=/k", Some("build-3")),
            ("qemu+tls://h.example:16514/system", Some("h.example:16514")),
            ("qemu://localhost/system", Some("localhost")),
            ("not a uri", None),
        ] {
            assert_eq!(remote_host(uri).as_deref(), host, "{uri}");
        }
    }

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

    #[test]
    fn a_machines_volumes_are_not_anothers() {
        let one = machine_volume("shop-1234abcd-web-1", "");
        assert!(machine_volume("shop-1234abcd-web-1", "qcow2").starts_with(&one));
        assert!(!machine_volume("shop-1234abcd-web-10", "qcow2").starts_with(&one));
    }
}
