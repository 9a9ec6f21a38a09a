//! envrig's libvirt/QEMU provider: machines are domains booted from a box, each with a qcow2
//! overlay of its own, on private networks of their environment, reached through the QEMU
//! guest agent or over SSH.
//!
//! This crate is the only place the `virt` crate appears. libvirt's calls block: every one
//! goes through [`LibvirtProvider::blocking`] (one `spawn_blocking` helper) on one shared
//! connection (an engine endpoint's URI, else `LIBVIRT_DEFAULT_URI`, else `qemu:///system`).
//! Domains and networks carry envrig's labels in `<metadata>`, so libvirt's lists are the
//! truth, as Docker's labels are.
//!
//! A connection to another host (a URI with a host part) shares none of this host's files:
//! boxes, disks and a machine's small files go there as volumes of a storage pool, through
//! libvirt's own APIs (`remote/`); what needs this host's files there is refused, saying so.
//!
//! This file holds the provider, its connection and the [`Provider`] implementation, whose
//! methods hand each call to the file of its concern:
//! - `define.rs`: defining a domain (overlay, ports, SSH port, NoCloud seed, labels);
//! - `machine.rs`: a domain's life cycle (create, start, stop, pause, remove, inspect, list);
//! - `disk.rs`: where a new machine's disk comes from (an overlay on its box, or a disk of
//!   its own) and the `qemu-img` work on disks (backing chains, flattening, baked layers);
//! - `boot.rs`: waiting until a guest is ready and its SSH key is installed (through the
//!   agent, or with Vagrant's insecure key), and the files that mark work in progress;
//! - `exec.rs`: commands and uploads through the guest agent, else SSH; the SSH endpoint;
//! - `network.rs`: private networks (an isolated libvirt network per environment, a fixed
//!   address and DNS names per machine), with their address arithmetic in
//!   `network/address.rs`;
//! - `snapshot.rs`: libvirt's internal snapshots (disk, and memory when the machine runs),
//!   their export (a disk flattened by `qemu-img convert`) and import;
//! - `store.rs`: boxes (found, staged where QEMU can read them, added, packaged, removed)
//!   and baked layers, with the store's file format in `boxes.rs`; sweeping what a killed
//!   envrig left;
//! - `synced.rs`: synced folders (virtiofs or 9p when live, else copied);
//! - `remote/`: a libvirt host elsewhere: envrig's storage pool there (`mod.rs`), libvirt's
//!   streams (`stream.rs`), boxes uploaded once and checked (`boxes.rs`), a machine's disk and
//!   files as volumes (`volumes.rs`);
//! - `drift.rs`: the guest's files against the listing taken at the baseline;
//! - `accel.rs`: KVM or TCG, chosen by a bounded probe;
//! - `error.rs`: how failures become [`ProviderError`]s;
//! - `xml.rs` (domain, network and snapshot XML), `ssh.rs` (SSH with russh, per-environment
//!   keys, pinned host keys), `qcow2.rs` (checking an imported disk's header).
//!
//! A box is a folder holding `disk.qcow2` and, for direct kernel boot, `vmlinuz`,
//! `initrd.img` and `cmdline`.

mod accel;
mod boot;
mod boxes;
mod cache;
mod capsule;
mod copy;
mod define;
mod disk;
mod drift;
mod error;
mod exec;
mod hardware;
mod logs;
mod machine;
mod network;
mod pki;
mod qcow2;
mod remote;
mod saveimage;
mod schema;
mod snapshot;
mod ssh;
mod store;
mod synced;
mod warm;
mod xml;

mod vagrant;

use std::collections::BTreeMap;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use envrig_provider_api::{
    BaseIdentity, BaseInfo, Capabilities, EngineAddress, EngineInfo, ExecRequest, LogRequest,
    MachineInfo, MachineSpec, NetworkSpec, OtherResource, OutputSink, Provider, ProviderError,
    PullProgress, Result, Selector, SharedNetwork, Snapshot, SshEndpoint, StoredBox, Terminal,
};
use virt::connect::Connect;

const NAME: &str = "libvirt";

pub use schema::{CAPABILITIES, PROVIDER_NAME, schema};
use schema::{capabilities_at, default_uri};

/// A metadata label naming the box folder a machine was made from (`box remove` checks it).
const BOX_LABEL: &str = "dev.envrig.libvirt.box";

/// A metadata label holding the machine's `env` (JSON), given to every command.
const MACHINE_ENV: &str = "dev.envrig.libvirt.env";

/// A metadata label naming the folder that holds the machine's `vmlinuz`, `initrd.img` and
/// `cmdline` (the staged box, or the machine's own folder for an imported one).
const KERNEL_DIR: &str = "dev.envrig.libvirt.kernel";

/// A metadata label holding the host port forwarded to the guest's SSH port (22).
const SSH_PORT: &str = "dev.envrig.libvirt.ssh";

/// A metadata label holding the machine's synced folders and how each is made (JSON).
const SYNCED: &str = "dev.envrig.libvirt.synced";

/// The machine's names on the private network (comma-separated), registered again at
/// every start.
const NAMES: &str = "dev.envrig.libvirt.names";

/// The libvirt provider: one connection, shared by every call.
#[derive(Clone)]
pub struct LibvirtProvider {
    // Never closed: `virt` panics when a close fails, and the connection lives as long as
    // the process.
    conn: Arc<ManuallyDrop<Connect>>,
    /// Where machines' overlays and console logs live (on a remote host: nothing but the
    /// cache of box folders' hashes, kept on this host).
    images: PathBuf,
    /// Where named boxes live.
    boxes: PathBuf,
    /// Where environments' SSH keys live (`ENV/id_ed25519`, `ENV/known_hosts`).
    keys: PathBuf,
    /// `qemu` (TCG) or `kvm`, chosen once, at the first machine made.
    accel: Arc<std::sync::OnceLock<&'static str>>,
    /// Held while a network's host entries are read and changed (machines of one
    /// environment are made in parallel and must not take the same address).
    net_lock: Arc<tokio::sync::Mutex<()>>,
    /// The libvirt host is another host (`remote/`); `None`: this host's own daemon.
    remote: Option<Arc<remote::Remote>>,
    /// What it can do there (no private network on `qemu:///session`).
    capabilities: Capabilities,
}

impl std::fmt::Debug for LibvirtProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtProvider")
            .field("images", &self.images)
            .field("remote", &self.remote.as_ref().map(|r| &r.host))
            .finish()
    }
}

impl LibvirtProvider {
    /// Connects to `LIBVIRT_DEFAULT_URI` (else `qemu:///system`).
    pub async fn connect() -> Result<Self> {
        Self::connect_to(None).await
    }

    /// Connects to the libvirt daemon at `uri` (an engine endpoint); `LIBVIRT_DEFAULT_URI`,
    /// else `qemu:///system`, when none.
    pub async fn connect_to(uri: Option<&str>) -> Result<Self> {
        Self::connect_with(uri.map(|u| EngineAddress {
            uri: u.to_string(),
            cert_path: None,
        }))
        .await
    }

    /// Connects to the libvirt daemon of an engine endpoint (`None`: `LIBVIRT_DEFAULT_URI`,
    /// else `qemu:///system`). Its `cert_path` (a folder of `ca.pem`, `cert.pem` and
    /// `key.pem`, or of libvirt's own `cacert.pem`, `clientcert.pem` and `clientkey.pem`) is
    /// the client certificate of a `qemu+tls://` endpoint (libvirt's `pkipath`).
    pub async fn connect_with(engine: Option<EngineAddress>) -> Result<Self> {
        tokio::task::spawn_blocking(move || {
            virt::error::clear_error_callback();
            let uri = match &engine {
                Some(e) => e.uri.clone(),
                None => default_uri(),
            };
            let opened = match engine.as_ref().and_then(|e| e.cert_path.as_deref()) {
                Some(certs) => pki::with_pki(&uri, certs)?,
                None => uri.clone(),
            };
            let mut opening = Connect::open(Some(&opened));
            // This user's session daemon is started by the first attempt (libvirt's
            // autostart) and given about 5 s to answer; on a loaded host it may need more
            // (it probes QEMU when its cache is stale). Bounded: 30 s in all.
            if schema::is_session(&uri) {
                let t0 = std::time::Instant::now();
                while opening.is_err() && t0.elapsed() < std::time::Duration::from_secs(30) {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    opening = Connect::open(Some(&opened));
                }
            }
            let conn = opening.map_err(|e| ProviderError::Unavailable {
                provider: NAME,
                message: format!("{uri}: {e}"),
                hint: Some(match remote::remote_host(&uri) {
                    Some(host) => format!("start libvirtd on {host} and let it listen (for qemu+tcp://, `libvirtd --listen` with listen_tcp = 1), or check the endpoint (`envrig engine ls`)"),
                    None => "start libvirtd (`scripts/libvirt-setup.sh` does it on Debian), or set LIBVIRT_DEFAULT_URI".to_string(),
                }),
            })?;
            let remote = remote::remote_host(&uri).map(|host| Arc::new(remote::Remote::new(host)));
            let system = uri.ends_with("/system");
            let home = envrig_provider_api::home::home_dir();
            // The system daemon's QEMU runs as its own user: overlays live where it can read.
            // A remote host's are volumes there: here only the cache of box hashes.
            let images = if remote.is_some() {
                home.join("libvirt-remote")
            } else {
                std::env::var_os("ENVRIG_LIBVIRT_IMAGES").map(PathBuf::from).unwrap_or_else(|| {
                    if system {
                        PathBuf::from("/var/lib/libvirt/images/envrig")
                    } else {
                        home.join("libvirt")
                    }
                })
            };
            Ok(LibvirtProvider {
                conn: Arc::new(ManuallyDrop::new(conn)),
                images,
                boxes: home.join("boxes"),
                keys: home.join("keys"),
                accel: Arc::new(std::sync::OnceLock::new()),
                net_lock: Arc::new(tokio::sync::Mutex::new(())),
                remote,
                capabilities: capabilities_at(&uri),
            })
        })
        .await
        .map_err(|e| ProviderError::Unavailable {
            provider: NAME,
            message: e.to_string(),
            hint: None,
        })?
    }

    /// What the daemon says of itself and its host: libvirt's and the hypervisor's versions,
    /// the host's CPUs and memory (libvirt's node info).
    async fn describe_engine(&self) -> Result<EngineInfo> {
        self.blocking(|c| {
            let dotted = |v: u32| format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000);
            let lib = c
                .lib_version()
                .map_err(|e| error::engine("read libvirt's version", e))?;
            let node = c
                .node_info()
                .map_err(|e| error::engine("read the host's node info", e))?;
            let mut version = format!("libvirt {}", dotted(lib));
            if let (Ok(driver), Ok(hv)) = (c.driver_type(), c.hyp_version()) {
                version.push_str(&format!(", {driver} {}", dotted(hv)));
            }
            Ok(EngineInfo {
                version,
                cpus: node.cpus,
                // libvirt says KiB.
                memory: node.memory.saturating_mul(1024),
                cluster: None,
            })
        })
        .await
    }

    /// Runs a blocking libvirt call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connect) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&conn))
            .await
            .map_err(|e| ProviderError::Engine {
                provider: NAME,
                op: "a libvirt call".into(),
                source: Box::new(e),
            })?
    }
}

#[async_trait]
impl Provider for LibvirtProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn engine_info(&self) -> Result<EngineInfo> {
        self.describe_engine().await
    }

    async fn resolve_base(&self, reference: &str) -> Result<Option<BaseIdentity>> {
        self.resolve_box(reference).await
    }

    async fn ensure_base(
        &self,
        reference: &str,
        _progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<BaseInfo> {
        self.ensure_box(reference).await
    }

    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        self.create_machine(spec).await
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.start_machine(id).await
    }

    async fn start_created(&self, id: &str, spec: &MachineSpec) -> Result<Option<String>> {
        if spec.warm {
            return self.start_warm(id, spec).await;
        }
        self.start_machine(id).await?;
        // Booted from a baked layer: the baker's identity is on its disk.
        if spec.labels.contains_key(envrig_provider_api::labels::LAYER) {
            return Ok(self
                .renew_identity(id, spec)
                .await?
                .map(|kept| kept.trim_start_matches("; ").to_string()));
        }
        Ok(None)
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        self.stop_machine(id, timeout).await
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.remove_machine(id).await
    }

    async fn inspect(&self, id: &str) -> Result<MachineInfo> {
        self.inspect_machine(id).await
    }

    async fn list(&self, selector: &Selector) -> Result<Vec<MachineInfo>> {
        self.list_machines(selector).await
    }

    async fn purge(&self, selector: &Selector) -> Result<Vec<String>> {
        self.purge_others(selector).await
    }

    async fn list_other(&self, selector: &Selector) -> Result<Vec<OtherResource>> {
        self.other_resources(selector).await
    }

    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<()> {
        self.ensure_private_network(spec).await
    }

    async fn shared_network(&self, spec: &NetworkSpec) -> Result<Option<SharedNetwork>> {
        self.share_private_network(spec).await
    }

    async fn name_on_network(&self, network: &str, address: &str, names: &[String]) -> Result<()> {
        self.name_foreign(network, address, names).await
    }

    async fn exec(&self, id: &str, req: &ExecRequest, output: OutputSink<'_>) -> Result<i64> {
        self.exec_command(id, req, output).await
    }

    async fn exec_interactive(
        &self,
        id: &str,
        req: &ExecRequest,
        terminal: Terminal,
    ) -> Result<i64> {
        self.exec_terminal(id, req, terminal)
    }

    async fn upload(&self, id: &str, dest: &str, tar: Vec<u8>) -> Result<()> {
        self.unpack_in_guest(id, dest, copy::TarSource::Bytes(tar), false)
            .await
    }

    async fn copy_in(&self, id: &str, tar: &std::path::Path, dest: &str) -> Result<()> {
        self.unpack_in_guest(id, dest, copy::TarSource::File(tar), true)
            .await
    }

    async fn copy_out(&self, id: &str, src: &str, tar: &std::path::Path) -> Result<()> {
        self.pack_in_guest(id, src, tar).await
    }

    async fn logs(&self, id: &str, req: &LogRequest, output: OutputSink<'_>) -> Result<()> {
        self.machine_logs(id, req, output).await
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.pause_machine(id).await
    }

    async fn unpause(&self, id: &str) -> Result<()> {
        self.resume_machine(id).await
    }

    async fn suspend(&self, id: &str) -> Result<()> {
        self.suspend_machine(id).await
    }

    /// One snapshot style for every machine: libvirt's internal snapshots, kept inside the
    /// machine's qcow2 overlay: disk and memory when the machine runs (or is paused), the
    /// disk alone when it is off. They go with the domain (`remove` undefines with their
    /// metadata and deletes the overlay).
    async fn snapshot_save(
        &self,
        id: &str,
        name: &str,
        spec: &MachineSpec,
        labels: &BTreeMap<String, String>,
        _running: bool,
    ) -> Result<Snapshot> {
        // Whether memory is saved follows the domain itself, read at the moment of saving.
        self.save_snapshot(id, name, spec, labels, None).await
    }

    async fn snapshot_list(&self, selector: &Selector) -> Result<Vec<Snapshot>> {
        self.list_snapshots(selector).await
    }

    async fn mark_baseline(&self, id: &str) -> Result<()> {
        self.take_baseline(id).await
    }

    async fn drift(&self, id: &str) -> Result<Vec<envrig_provider_api::drift::PathChange>> {
        self.drift_since_baseline(id).await
    }

    async fn flush(&self, id: &str) -> Result<()> {
        self.sync_guest(id).await;
        Ok(())
    }

    async fn snapshot_restore(
        &self,
        snap: &Snapshot,
        current: Option<&str>,
        spec: &MachineSpec,
    ) -> Result<MachineInfo> {
        self.restore_snapshot(snap, current, spec).await
    }

    async fn snapshot_delete(&self, snap: &Snapshot) -> Result<()> {
        self.delete_snapshot(snap).await
    }

    async fn snapshot_export(&self, snap: &Snapshot, dest: &Path) -> Result<u64> {
        self.export_snapshot(snap, dest).await
    }

    async fn check_export(&self, src: &Path) -> Result<()> {
        self.check_disk_export(src).await
    }

    async fn check_resume(&self, src: &Path) -> Result<()> {
        self.check_resume_member(src).await
    }

    async fn snapshot_import(
        &self,
        src: &Path,
        snap: &Snapshot,
        labels: &BTreeMap<String, String>,
    ) -> Result<Snapshot> {
        self.import_snapshot(src, snap, labels).await
    }

    async fn package(
        &self,
        id: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<BaseInfo> {
        self.package_box(id, name, labels).await
    }

    async fn box_add(&self, name: &str, source: &Path, force: bool) -> Result<StoredBox> {
        self.add_box(name, source, force).await
    }

    async fn box_list(&self) -> Result<Vec<StoredBox>> {
        self.list_boxes().await
    }

    async fn baked_layers(&self) -> Result<Vec<envrig_provider_api::BakedLayer>> {
        self.list_baked().await
    }

    async fn pull_baked(&self, reference: &str, name: &str, base: &str) -> Result<bool> {
        if self.remote.is_some() {
            return Err(self.not_remotely(
                "taking a layer from the cache",
                "its layers lie over this host's boxes",
            ));
        }
        self.pull_layer(reference, name, base).await
    }

    async fn push_baked(&self, name: &str, reference: &str) -> Result<()> {
        if self.remote.is_some() {
            return Err(self.not_remotely(
                "sending a layer to the cache",
                "a remote host bakes no layer",
            ));
        }
        self.push_layer(name, reference).await
    }

    async fn remove_baked(&self, name: &str) -> Result<()> {
        // A remote host has none (`list_baked`): this host's are not its to remove.
        if let Some(r) = &self.remote {
            return Err(ProviderError::NotFound {
                what: format!("baked layer `{name}` on {}", r.host),
            });
        }
        self.remove_box(name).await
    }

    async fn box_remove(&self, name: &str) -> Result<()> {
        self.remove_box(name).await
    }

    async fn sweep_work(&self) -> Result<Vec<String>> {
        self.sweep_leftovers().await
    }

    async fn refresh_synced(&self, id: &str) -> Result<Vec<String>> {
        self.sync_folders(id, false).await
    }

    async fn ssh_endpoint(&self, id: &str) -> Result<SshEndpoint> {
        self.endpoint(id).await
    }
}
