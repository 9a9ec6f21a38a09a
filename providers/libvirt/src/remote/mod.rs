//! A libvirt host reached over the network (`qemu+tcp://host/system`, `qemu+ssh://u@h/system`,
//! `qemu+tls://…`): it does not share this host's file system, so everything a machine there
//! needs is put there through libvirt's own APIs, as vagrant-libvirt does:
//!
//! - envrig's storage pool on that host (`envrig`, a `dir` pool in [`POOL_PATH`]), made and
//!   started when missing;
//! - each box uploaded once into it (libvirt's stream upload), its volumes named by the box's
//!   sha256 so that every later machine finds them: sent under a name of their upload, read
//!   back and hashed, and only then committed by a small qcow2 volume under the box's name,
//!   backed by the upload's disk (libvirt cannot rename a volume), so a volume under a box's
//!   name always points at an upload that is whole and checked;
//! - a machine's disk as a qcow2 volume backed by its box's volume, and its small files (NoCloud
//!   seed, console log, the marks `booting` and the drift baseline) as volumes named after it;
//!   all of them go with the machine.
//!
//! What cannot work there is refused where it is asked for, saying why (`docs/libvirt-remote.md`).
//!
//! This file holds the types, the pool and the volumes' plumbing; the rest is in files of
//! their own: `stream.rs` (bytes into and out of a volume through libvirt's streams),
//! `boxes.rs` (a box found, uploaded, checked and committed there, listed and removed) and
//! `volumes.rs` (a machine's disk and small files as volumes, and `gc`'s sweep of what nothing
//! claims).

mod boxes;
mod stream;
mod volumes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use envrig_provider_api::{ProviderError, Result};
use virt::connect::Connect;
use virt::enumutil::Enum;
use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use crate::error::{engine, io};
use crate::xml::storage::{self, Volume};
use crate::{LibvirtProvider, NAME};

/// envrig's storage pool on a remote host.
pub(crate) const POOL: &str = "envrig";

/// Where envrig's pool keeps its files on a remote host, when envrig makes the pool (an
/// administrator may define a pool named `envrig` elsewhere first: it is used as it is).
pub(crate) const POOL_PATH: &str = "/var/lib/libvirt/images/envrig-pool";

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

/// A volume's file size (its physical size: libvirt reports a box's disk, a qcow2 file,
/// by its virtual size otherwise).
fn size_of(vol: &StorageVol) -> Result<u64> {
    Ok(vol
        .info_flags(virt::sys::VIR_STORAGE_VOL_GET_PHYSICAL)
        .map_err(|e| engine("read a volume's size", e))?
        .allocation)
}

impl LibvirtProvider {
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
    fn a_machines_volumes_are_not_anothers() {
        let one = machine_volume("shop-1234abcd-web-1", "");
        assert!(machine_volume("shop-1234abcd-web-1", "qcow2").starts_with(&one));
        assert!(!machine_volume("shop-1234abcd-web-10", "qcow2").starts_with(&one));
    }
}
