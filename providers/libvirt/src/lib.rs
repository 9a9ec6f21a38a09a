//! envrig's libvirt/QEMU provider: machines are domains booted from a box, with a qcow2
//! overlay per machine.
//!
//! This crate is the only place the `virt` crate appears. libvirt's calls block: every one
//! goes through [`LibvirtProvider::blocking`] (one `spawn_blocking` helper) on one shared
//! connection (`LIBVIRT_DEFAULT_URI`, else `qemu:///system`).
//!
//! A box is a folder holding `disk.qcow2` and, for direct kernel boot, `vmlinuz`,
//! `initrd.img` and `cmdline`. Commands and uploads go through the QEMU guest agent, which
//! needs no network. Domains carry the machine's labels in `<metadata>`, so the domain list
//! is the truth, as Docker's labels are.
//!
//! Snapshots are libvirt's internal ones, inside the machine's overlay (with memory when it
//! runs); `export` and `package` read a disk flattened by `qemu-img convert`.
//!
//! Not yet: private networks between machines and SSH access (they report "not
//! supported").

mod boxes;
mod net;
mod qcow2;
mod ssh;
mod xml;

/// Vagrant's published insecure key pairs (`keys/`, from hashicorp/vagrant): a vagrant box
/// is entered with them once, and its key is replaced by the environment's at once.
mod vagrant {
    use russh::keys::PrivateKey;

    const ED25519: &str = include_str!("../keys/vagrant.key.ed25519");
    const RSA: &str = include_str!("../keys/vagrant.key.rsa");

    pub fn keys() -> Vec<PrivateKey> {
        [ED25519, RSA]
            .iter()
            .filter_map(|k| russh::keys::decode_secret_key(k, None).ok())
            .collect()
    }

    #[cfg(test)]
    #[test]
    fn both_published_keys_load() {
        assert_eq!(keys().len(), 2);
    }
}

use std::collections::BTreeMap;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use envrig_provider_api::{
    BaseIdentity, BaseInfo, Capabilities, ExecRequest, MachineInfo, MachineSpec, MachineState,
    NetworkSpec, OptionValue, OtherResource, OutputSink, OutputStream, Provider, ProviderError,
    PullProgress, Result, Selector, Snapshot, SshEndpoint, StoredBox, Terminal,
};
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;

const NAME: &str = "libvirt";

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

/// One synced folder as the machine has it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SyncedFolder {
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
fn virtiofsd() -> Option<String> {
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

/// Where a new machine's disk comes from.
enum Disk {
    /// A qcow2 overlay on this (staged) box disk: O(1) in the box's size.
    Overlay(PathBuf),
    /// A disk of its own, already in the machine's folder (an imported snapshot).
    Own,
}

/// What envrig keeps in a domain snapshot's description.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapMeta {
    labels: BTreeMap<String, String>,
    spec: MachineSpec,
    running: bool,
    created: String,
}

/// What the libvirt provider can do (known without connecting).
pub const CAPABILITIES: Capabilities = Capabilities {
    custom_command: false,
    live_synced_folders: false,
    ssh: true,
    interactive: false,
    private_network: true,
    box_store: true,
    drift_from_base: false,
};

/// The provider's name in Envfiles.
pub const PROVIDER_NAME: &str = NAME;

fn engine(op: impl Into<String>, e: virt::error::Error) -> ProviderError {
    let op = op.into();
    let msg = e.to_string();
    if msg.contains("Domain not found") || msg.contains("no domain with matching") {
        return ProviderError::NotFound {
            what: format!("domain ({op})"),
        };
    }
    ProviderError::Engine {
        provider: NAME,
        op,
        source: Box::new(e),
    }
}

fn io(op: impl Into<String>, e: std::io::Error) -> ProviderError {
    ProviderError::Engine {
        provider: NAME,
        op: op.into(),
        source: Box::new(e),
    }
}

/// `user` when it is a user name (see [`envrig_provider_api::valid_user_name`]); the guest
/// said it, so anything else is refused rather than passed on.
fn checked_user(user: &str) -> Result<String> {
    if envrig_provider_api::valid_user_name(user) {
        Ok(user.to_string())
    } else {
        Err(ProviderError::Conflict {
            message: format!(
                "the guest named its login user {user:?}, which is not a user name; \
                 envrig will not pass it to a command (recreate the machine: `envrig destroy` and `envrig up`)"
            ),
        })
    }
}

/// An imported disk that is refused, and why.
fn refused_disk(what: &str, why: &str) -> ProviderError {
    ProviderError::Refused {
        message: format!("the disk of `{what}` is refused: {why}"),
    }
}

fn unsupported(what: &str) -> ProviderError {
    ProviderError::NotSupported {
        provider: NAME,
        what: what.to_string(),
    }
}

/// The libvirt provider: one connection, shared by every call.
#[derive(Clone)]
pub struct LibvirtProvider {
    // Never closed: `virt` panics when a close fails, and the connection lives as long as
    // the process.
    conn: Arc<ManuallyDrop<Connect>>,
    /// Where machines' overlays and console logs live.
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
}

impl std::fmt::Debug for LibvirtProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtProvider")
            .field("images", &self.images)
            .finish()
    }
}

/// The hypervisor to use: `ENVRIG_ACCEL` (`kvm`, `tcg`) when set, else KVM only when a
/// bounded probe shows that a KVM guest really boots: QEMU starts `kernel` under KVM and
/// must print `Linux version` on its serial port within 4 s. (On some hosts KVM runs real
/// mode and then hangs in the kernel, so a smaller probe would lie.) Without a kernel to
/// try, TCG.
fn choose_accel(kernel: Option<&Path>) -> &'static str {
    match std::env::var("ENVRIG_ACCEL").as_deref() {
        Ok("kvm") => return "kvm",
        Ok("tcg") => return "qemu",
        _ => {}
    }
    let Some(kernel) = kernel else { return "qemu" };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return "qemu";
    }
    // The probe must not outlive envrig: killed while it waits (a SIGKILL, Ctrl-C twice),
    // envrig would leave a QEMU spinning in a hung KVM guest for good. `setpriv
    // --pdeathsig KILL` (util-linux) makes the kernel kill it with its parent.
    let qemu_args = |c: &mut std::process::Command| {
        c.args([
            "-accel",
            "kvm",
            "-machine",
            "pc",
            "-m",
            "128",
            "-nodefaults",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(kernel)
        .args(["-append", "console=ttyS0 earlyprintk=serial panic=-1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    };
    let mut guarded = std::process::Command::new("setpriv");
    guarded.args(["--pdeathsig", "KILL", "--", "qemu-system-x86_64"]);
    qemu_args(&mut guarded);
    let child = match guarded.spawn() {
        Ok(c) => Ok(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut plain = std::process::Command::new("qemu-system-x86_64");
            qemu_args(&mut plain);
            plain.spawn()
        }
        Err(e) => Err(e),
    };
    let Ok(mut child) = child else { return "qemu" };
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(mut out) = child.stdout.take() {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(13).any(|w| w == b"Linux version") {
                    let _ = tx.send(true);
                    return;
                }
                if seen.len() > 1 << 20 {
                    break;
                }
            }
            let _ = tx.send(false);
        });
    }
    let works = matches!(rx.recv_timeout(Duration::from_secs(4)), Ok(true));
    let _ = child.kill();
    let _ = child.wait();
    if works { "kvm" } else { "qemu" }
}

impl LibvirtProvider {
    /// Connects to `LIBVIRT_DEFAULT_URI` (else `qemu:///system`).
    pub async fn connect() -> Result<Self> {
        tokio::task::spawn_blocking(|| {
            virt::error::clear_error_callback();
            let uri = std::env::var("LIBVIRT_DEFAULT_URI").unwrap_or_else(|_| "qemu:///system".to_string());
            let conn = Connect::open(Some(&uri)).map_err(|e| ProviderError::Unavailable {
                provider: NAME,
                message: format!("{uri}: {e}"),
                hint: Some("start libvirtd (`scripts/libvirt-setup.sh` does it on Debian), or set LIBVIRT_DEFAULT_URI".to_string()),
            })?;
            let system = uri.ends_with("/system");
            let home = std::env::var_os("ENVRIG_HOME").map(PathBuf::from).unwrap_or_else(|| {
                std::env::var_os("XDG_DATA_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
                    .unwrap_or_else(|| PathBuf::from("/tmp"))
                    .join("envrig")
            });
            // The system daemon's QEMU runs as its own user: overlays live where it can read.
            let images = std::env::var_os("ENVRIG_LIBVIRT_IMAGES").map(PathBuf::from).unwrap_or_else(|| {
                if system {
                    PathBuf::from("/var/lib/libvirt/images/envrig")
                } else {
                    home.join("libvirt")
                }
            });
            Ok(LibvirtProvider {
                conn: Arc::new(ManuallyDrop::new(conn)),
                images,
                boxes: home.join("boxes"),
                keys: home.join("keys"),
                accel: Arc::new(std::sync::OnceLock::new()),
                net_lock: Arc::new(tokio::sync::Mutex::new(())),
            })
        })
        .await
        .map_err(|e| ProviderError::Unavailable {
            provider: NAME,
            message: e.to_string(),
            hint: None,
        })?
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

    /// The folder of a box: a path to one, or a name in the box store.
    fn box_dir(&self, reference: &str) -> Option<PathBuf> {
        let p = Path::new(reference);
        let dir = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.boxes.join(reference)
        };
        dir.join("disk.qcow2").is_file().then_some(dir)
    }

    /// The box's files where the hypervisor can read them: the system daemon's QEMU runs as
    /// its own user, who cannot enter a home folder, so a box is hard-linked (or copied,
    /// across filesystems) once into the images folder, keyed by the disk's identity.
    fn staged_box(&self, dir: &Path) -> Result<PathBuf> {
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
            .join(envrig_provider_api::work::name(&format!(".{key}")));
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

    /// [`choose_accel`], remembered per boot and kernel (by size) in the images folder: the probe can
    /// take 4 s where KVM hangs, and its answer does not change until the host reboots.
    fn cached_accel(&self, kernel: Option<&Path>) -> &'static str {
        if std::env::var_os("ENVRIG_ACCEL").is_some() {
            return choose_accel(kernel);
        }
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let key = format!(
            "{} {}",
            boot.trim(),
            kernel
                .and_then(|k| std::fs::metadata(k).ok())
                .map(|m| m.len().to_string())
                .unwrap_or_default()
        );
        let file = self.images.join(".accel");
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Some((k, v)) = text.rsplit_once(' ')
            && k == key
        {
            return if v.trim() == "kvm" { "kvm" } else { "qemu" };
        }
        let chosen = choose_accel(kernel);
        let _ = std::fs::create_dir_all(&self.images);
        let _ = std::fs::write(&file, format!("{key} {chosen}"));
        chosen
    }

    /// Defines the domain of `spec`: its disk (`disk`), the kernel files in `kernel_dir`,
    /// ports, console log and labels (`spec`'s and `extra`).
    async fn define(
        &self,
        spec: &MachineSpec,
        disk: Disk,
        kernel_dir: &Path,
        extra: BTreeMap<String, String>,
    ) -> Result<MachineInfo> {
        let mdir = self.machine_dir(&spec.resource_name);
        std::fs::create_dir_all(&mdir).map_err(|e| io(format!("create {}", mdir.display()), e))?;
        // Until the domain is defined, nothing but this marker says whose the folder is: a
        // killed envrig's is swept by `gc` (`sweep_work`).
        let marker = Marker::new(&mdir, "creating");
        let disk_file = mdir.join("disk.qcow2");
        let backing = match disk {
            Disk::Overlay(backing) => {
                // A leftover from a crash is replaced.
                let _ = std::fs::remove_file(&disk_file);
                let t0 = Instant::now();
                qemu_img(
                    "create the overlay",
                    &[
                        "create".as_ref(),
                        "-q".as_ref(),
                        "-f".as_ref(),
                        "qcow2".as_ref(),
                        "-F".as_ref(),
                        "qcow2".as_ref(),
                        "-b".as_ref(),
                        backing.as_os_str(),
                        disk_file.as_os_str(),
                    ],
                )
                .await?;
                // Read by bench/bench_vm.py: overlay creation must not grow with the box.
                tracing::debug!(
                    overlay_us = t0.elapsed().as_micros() as u64,
                    "overlay created on {}",
                    backing.display()
                );
                // The box may itself be a layer on another box: the whole chain.
                let mut chain = vec![backing.display().to_string()];
                let mut next = backing.clone();
                while chain.len() < 16
                    && let Some(b) = backing_of(&next).await?
                {
                    chain.push(b.display().to_string());
                    next = b;
                }
                chain
            }
            Disk::Own => Vec::new(),
        };
        let read = |f: &str| {
            std::fs::read_to_string(kernel_dir.join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let kernel = kernel_dir.join("vmlinuz");
        let initrd = kernel_dir.join("initrd.img");
        let cmdline = read("cmdline").map(|c| format!("{c} hostname={}", spec.hostname));
        let mut ports = spec.ports.clone();
        for p in &mut ports {
            if p.host_port == 0 {
                p.host_port = std::net::TcpListener::bind((p.host_ip.as_str(), 0))
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .map_err(|e| io("find a free port", e))?;
            }
        }
        // SSH: a free port on 127.0.0.1 forwarded to the guest's 22, and the environment's
        // key pair, made the first time.
        let ssh_port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| io("find a free port", e))?;
        ports.push(envrig_provider_api::PortSpec {
            host_ip: "127.0.0.1".into(),
            host_port: ssh_port,
            guest_port: 22,
            protocol: envrig_provider_api::Protocol::Tcp,
        });
        // Synced folders: live by virtiofs when this host has its daemon (or 9p when asked),
        // else copied at start and at `provision`, with the reason said.
        let wanted = match spec.options.get("synced") {
            Some(OptionValue::Str(s)) => s.clone(),
            _ => "auto".to_string(),
        };
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
        let key = match spec.labels.get(envrig_provider_api::labels::ENV) {
            Some(env) => Some(
                ssh::EnvKeys::new(&self.keys, env)
                    .ensure()
                    .map_err(|e| io("make the environment's SSH key", e))?,
            ),
            None => None,
        };
        // A stock cloud image learns the key (and its name) from a NoCloud seed; a guest
        // without cloud-init ignores the extra disk.
        let seed = match &key {
            Some(k) => {
                let line = ssh::public_line(k.public_key()).map_err(|e| io("encode the key", e))?;
                write_seed(&mdir, &spec.resource_name, &spec.hostname, &line).await
            }
            None => None,
        };
        let opt = |k: &str| match spec.options.get(k) {
            Some(OptionValue::Str(s)) => Some(s.clone()),
            _ => None,
        };
        let kind = match opt("accel").as_deref() {
            Some("kvm") => "kvm",
            Some("tcg") => "qemu",
            _ => {
                let k = kernel.is_file().then_some(kernel.as_path());
                self.accel.get_or_init(|| self.cached_accel(k))
            }
        };
        let machine_type = opt("machine_type").unwrap_or_else(|| "pc".to_string());
        let console = mdir.join("console.log");
        // Its place on the private network: a fixed MAC, address and names, registered
        // with the network's DHCP and DNS before the domain exists.
        let nic = match &spec.network {
            Some(att) => {
                let mac = net::mac_for(&spec.resource_name);
                self.attach(&att.network, &mac, &spec.resource_name, &att.aliases)
                    .await?;
                Some((att.network.clone(), mac))
            }
            None => None,
        };
        // The machine's environment travels in the metadata: every exec gets it.
        let mut labels = spec.labels.clone();
        labels.extend(extra);
        if let Some(att) = spec.network.as_ref().filter(|a| !a.aliases.is_empty()) {
            labels.insert(NAMES.to_string(), att.aliases.join(","));
        }
        labels.insert(KERNEL_DIR.to_string(), kernel_dir.display().to_string());
        labels.insert(SSH_PORT.to_string(), ssh_port.to_string());
        if !folders.is_empty() {
            labels.insert(
                SYNCED.to_string(),
                serde_json::to_string(&folders).unwrap_or_default(),
            );
        }
        if !spec.env.is_empty() {
            labels.insert(
                MACHINE_ENV.to_string(),
                serde_json::to_string(&spec.env).unwrap_or_default(),
            );
        }
        let (kernel_s, initrd_s, disk_s, console_s) = (
            kernel.display().to_string(),
            initrd.display().to_string(),
            disk_file.display().to_string(),
            console.display().to_string(),
        );
        let domain = xml::Domain {
            name: &spec.resource_name,
            kind,
            // Below 128 MiB a Linux guest does not boot: the floor.
            memory_mib: spec.memory_bytes.map(|b| b >> 20).unwrap_or(256).max(128),
            vcpus: spec.cpus.unwrap_or(1),
            machine_type: &machine_type,
            kernel: kernel.is_file().then_some(kernel_s.as_str()),
            initrd: initrd.is_file().then_some(initrd_s.as_str()),
            // Under TCG on a busy host the kernel's IO-APIC timer check can fail and panic
            // ("..MP-BIOS bug: 8254 timer not connected"): skipped, as cloud images do.
            cmdline: if kernel.is_file() {
                cmdline.map(|c| {
                    if kind == "qemu" && !c.contains("no_timer_check") {
                        format!("{c} no_timer_check")
                    } else {
                        c
                    }
                })
            } else {
                None
            },
            disk: &disk_s,
            backing: &backing,
            console_log: &console_s,
            ports: &ports,
            labels: &labels,
            network: nic.as_ref().map(|(n, m)| (n.as_str(), m.as_str())),
            shares: &shares,
            seed: seed.as_deref(),
        };
        let text = domain.to_xml().map_err(|e| io("write the domain XML", e))?;
        let defined = self
            .blocking(move |c| {
                let dom = c
                    .define_domain_xml(&text)
                    .map_err(|e| engine("define the domain", e))?;
                describe(&dom)
            })
            .await;
        if defined.is_err()
            && let Some((n, m)) = &nic
        {
            self.detach(n, m).await;
        }
        drop(marker);
        defined
    }

    /// Registers `mac` on `network`: a fixed address (the first free one) in its DHCP
    /// section, and `names` for that address in its DNS. An entry left for the same MAC
    /// (a crash, a domain removed by hand) is replaced; names another machine held (the
    /// previous generation) move to this one.
    async fn attach(&self, network: &str, mac: &str, name: &str, names: &[String]) -> Result<()> {
        let _guard = self.net_lock.lock().await;
        let (network, mac, name, names) = (
            network.to_string(),
            mac.to_string(),
            name.to_string(),
            names.to_vec(),
        );
        self.blocking(move |c| {
            use virt::sys::*;
            let n = c
                .lookup_network_by_name(&network)
                .map_err(|e| engine(format!("find network `{network}`"), e))?;
            let text = n
                .xml_desc(0)
                .map_err(|e| engine("read the network's XML", e))?;
            let (addr, prefix) = xml::network_ip(&text).ok_or_else(|| ProviderError::Conflict {
                message: format!("network `{network}` has no IPv4 address"),
            })?;
            let subnet = net::Subnet::parse(&format!("{addr}/{prefix}")).ok_or_else(|| {
                ProviderError::Conflict {
                    message: format!("network `{network}` has an unusable subnet {addr}/{prefix}"),
                }
            })?;
            let flags = VIR_NETWORK_UPDATE_AFFECT_CONFIG
                | if n.is_active().unwrap_or(false) {
                    VIR_NETWORK_UPDATE_AFFECT_LIVE
                } else {
                    0
                };
            let hosts = xml::dhcp_hosts(&text);
            for (m, ip) in hosts.iter().filter(|(m, _)| *m == mac) {
                forget(&n, m, *ip, flags);
            }
            // Taken: registered to another MAC, or still leased to one (a removed
            // generation's build keeps its lease for an hour; dnsmasq would not give the
            // address to a new MAC and hand out a dynamic one instead).
            let mut taken: Vec<std::net::Ipv4Addr> = hosts
                .iter()
                .filter(|(m, _)| *m != mac)
                .map(|(_, ip)| *ip)
                .collect();
            taken.extend(leased_elsewhere(&text, &mac));
            let (_, _, fixed) = subnet.layout();
            let ip = fixed
                .map(|i| subnet.host(i))
                .find(|ip| !taken.contains(ip))
                .ok_or_else(|| ProviderError::Conflict {
                    message: format!("network `{network}` has no free address left"),
                })?;
            let entry = xml::dhcp_host(&mac, Some(&name), ip).map_err(|e| io("write XML", e))?;
            n.update(
                VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                VIR_NETWORK_SECTION_IP_DHCP_HOST,
                -1,
                &entry,
                flags,
            )
            .map_err(|e| engine(format!("register {mac} on `{network}`"), e))?;
            // A new generation's build has no names (the serving generation keeps them).
            if names.is_empty() {
                return Ok(());
            }
            let names = xml::qualified(&names, xml::network_domain(&text).as_deref());
            name_address(&n, ip, &names, flags)
                .map_err(|e| engine(format!("name {ip} on `{network}`"), e))?;
            Ok(())
        })
        .await
    }

    /// Points `names` on `network`'s DNS at the fixed address of `mac` (registered by
    /// [`Self::attach`]), taking them from whichever address holds them; the DHCP entry is
    /// left as it is.
    /// Whether `mac` has a fixed address there (`false`: the network was made again and
    /// lost it; see [`Self::attach`]).
    async fn claim_names(&self, network: &str, mac: &str, names: &[String]) -> Result<bool> {
        let _guard = self.net_lock.lock().await;
        let (network, mac, names) = (network.to_string(), mac.to_string(), names.to_vec());
        self.blocking(move |c| {
            use virt::sys::*;
            let Ok(n) = c.lookup_network_by_name(&network) else {
                return Ok(true);
            };
            let text = n
                .xml_desc(0)
                .map_err(|e| engine("read the network's XML", e))?;
            let Some(ip) = xml::dhcp_hosts(&text)
                .into_iter()
                .find(|(m, _)| *m == mac)
                .map(|(_, ip)| ip)
            else {
                return Ok(false);
            };
            if names.is_empty() {
                return Ok(true);
            }
            let names = xml::qualified(&names, xml::network_domain(&text).as_deref());
            let flags = VIR_NETWORK_UPDATE_AFFECT_CONFIG
                | if n.is_active().unwrap_or(false) {
                    VIR_NETWORK_UPDATE_AFFECT_LIVE
                } else {
                    0
                };
            name_address(&n, ip, &names, flags)
                .map_err(|e| engine(format!("name {ip} on `{network}`"), e))?;
            Ok(true)
        })
        .await
    }

    /// Removes what [`Self::attach`] registered for `mac` (a network that is gone has
    /// nothing to remove).
    async fn detach(&self, network: &str, mac: &str) {
        let _guard = self.net_lock.lock().await;
        let (network, mac) = (network.to_string(), mac.to_string());
        let _ = self
            .blocking(move |c| {
                let Ok(n) = c.lookup_network_by_name(&network) else {
                    return Ok(());
                };
                let text = n.xml_desc(0).unwrap_or_default();
                let flags = virt::sys::VIR_NETWORK_UPDATE_AFFECT_CONFIG
                    | if n.is_active().unwrap_or(false) {
                        virt::sys::VIR_NETWORK_UPDATE_AFFECT_LIVE
                    } else {
                        0
                    };
                for (m, ip) in xml::dhcp_hosts(&text).iter().filter(|(m, _)| *m == mac) {
                    forget(&n, m, *ip, flags);
                }
                Ok(())
            })
            .await;
    }

    /// Makes the machine of `spec` from an imported snapshot (`snap.id` is the folder
    /// [`Provider::snapshot_import`] unpacked it into): the disk and kernel files move into
    /// the machine's folder, the snapshot is taken again there (so `snapshot list` shows
    /// it), and the machine starts when it ran when saved.
    async fn restore_imported(
        &self,
        snap: &Snapshot,
        current: Option<&str>,
        spec: &MachineSpec,
    ) -> Result<MachineInfo> {
        let src = PathBuf::from(&snap.id);
        if !src.join("disk.qcow2").is_file() {
            return Err(ProviderError::NotFound {
                what: format!("the imported disk of `{}`", snap.machine),
            });
        }
        if let Some(cur) = current {
            self.remove(cur).await?;
        }
        let mdir = self.machine_dir(&spec.resource_name);
        let _ = std::fs::remove_dir_all(&mdir);
        std::fs::create_dir_all(&mdir).map_err(|e| io(format!("create {}", mdir.display()), e))?;
        let _marker = Marker::new(&mdir, "creating");
        for f in std::iter::once("disk.qcow2").chain(boxes::KERNEL_FILES) {
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
        if snap.running {
            self.start(&info.id).await?;
        }
        self.info(&info.id).await
    }

    /// Saves internal snapshot `name` of domain `id` (see [`Provider::snapshot_save`]);
    /// `running` overrides whether a restore starts the machine.
    async fn save_snapshot(
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
    async fn list_snapshots(&self, selector: &Selector) -> Result<Vec<Snapshot>> {
        let selector = selector.clone();
        self.blocking(move |c| {
            let doms = c
                .list_all_domains(0)
                .map_err(|e| engine("list domains", e))?;
            let mut out = Vec::new();
            for d in doms {
                let Ok(info) = describe(&d) else { continue };
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

    /// Waits (at most 30 s) until the guest holds an IPv4 address on its private-network
    /// NIC, as the guest agent reports it, so the machines that depend on it find it by
    /// name. A guest that configures no address there is not an error: it just has none.
    async fn wait_private_address(&self, id: &str) {
        let Ok(text) = self.domain_xml(id).await else {
            return;
        };
        let Some((_, mac)) = xml::network_nic(&text) else {
            return;
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if let Ok(ifaces) = self
                .agent(
                    id,
                    serde_json::json!({"execute": "guest-network-get-interfaces"}),
                    5,
                )
                .await
            {
                let has = ifaces.as_array().into_iter().flatten().any(|i| {
                    i["hardware-address"]
                        .as_str()
                        .map(str::to_lowercase)
                        .as_deref()
                        == Some(mac.as_str())
                        && i["ip-addresses"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|a| a["ip-address-type"] == "ipv4")
                });
                if has {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::warn!("machine {id}: no address on its private network after 30 s");
    }

    async fn domain_xml(&self, id: &str) -> Result<String> {
        let id = id.to_string();
        self.blocking(move |c| {
            c.lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine("look up the domain", e))?
                .xml_desc(0)
                .map_err(|e| engine("read the domain's XML", e))
        })
        .await
    }

    /// The boot timeout: `ENVRIG_BOOT_TIMEOUT` seconds, else 180.
    fn boot_timeout() -> Duration {
        std::env::var("ENVRIG_BOOT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(180))
    }

    /// A domain's disk file and kernel folder, from its labels.
    async fn disk_of(&self, id: &str) -> Result<(MachineInfo, PathBuf, Option<PathBuf>)> {
        let info = self.info(id).await?;
        let disk = self.machine_dir(&info.resource_name).join("disk.qcow2");
        let kernel = info.labels.get(KERNEL_DIR).map(PathBuf::from);
        Ok((info, disk, kernel))
    }

    /// Writes `disk` flattened (its backing chain folded in; at internal snapshot `snapshot`
    /// when given) into `out`, a new qcow2 file, with `-U`: the disk may be in use by a
    /// paused or running domain, whose snapshots never change once taken.
    async fn flatten(&self, disk: &Path, snapshot: Option<&str>, out: &Path) -> Result<()> {
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

    /// Every file of the guest's root file system, listed inside it (`drift::LIST_SCRIPT`).
    async fn list_files(&self, id: &str) -> Result<String> {
        let req = ExecRequest {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                envrig_provider_api::drift::LIST_SCRIPT.into(),
            ],
            ..ExecRequest::default()
        };
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = {
            let mut sink = |s: OutputStream, b: &[u8]| match s {
                OutputStream::Stdout => out.extend_from_slice(b),
                OutputStream::Stderr => err.extend_from_slice(b),
            };
            self.exec(id, &req, &mut sink).await?
        };
        if code != 0 && out.is_empty() {
            return Err(io(
                "list the guest's files",
                std::io::Error::other(format!(
                    "exit {code}: {}",
                    String::from_utf8_lossy(&err).trim()
                )),
            ));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
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

    /// Writes the disk of snapshot `name` of running domain `id` (a snapshot taken with its
    /// memory, whose page cache may hold files its disk does not) into `out`, flattened,
    /// with every file on it: the machine goes back to the snapshot, writes its files to
    /// disk, is paused and copied, then returns to where it was (kept in a snapshot of its
    /// own meanwhile, deleted after).
    async fn flatten_flushed(&self, id: &str, name: &str, disk: &Path, out: &Path) -> Result<()> {
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
            self.flush(id).await?;
            self.pause(id).await?;
            self.flatten(disk, None, out).await
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
        copied.and(back)
    }

    /// Writes into `out` what `disk` holds beyond `backing` (one of its backing files), as a
    /// new qcow2 backed by `backing`.
    async fn layer(&self, disk: &Path, backing: &Path, out: &Path) -> Result<()> {
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

    fn machine_dir(&self, resource_name: &str) -> PathBuf {
        self.images.join(resource_name)
    }

    /// Sends one guest-agent command; returns its `return` value.
    async fn agent(
        &self,
        id: &str,
        cmd: serde_json::Value,
        timeout_s: i32,
    ) -> Result<serde_json::Value> {
        let id = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine("look up the domain", e))?;
            let out = dom
                .qemu_agent_command(&cmd.to_string(), timeout_s, 0)
                .map_err(|e| engine(format!("guest agent {}", cmd["execute"]), e))?;
            let v: serde_json::Value =
                serde_json::from_str(&out).map_err(|e| ProviderError::Engine {
                    provider: NAME,
                    op: "read the guest agent's answer".into(),
                    source: Box::new(e),
                })?;
            Ok(v["return"].clone())
        })
        .await
    }

    /// Waits (bounded) until the guest agent answers; on timeout, says so with the end of
    /// the console log.
    /// Runs a command through the guest agent (its output arrives when it ends).
    async fn exec_agent(&self, id: &str, req: &ExecRequest, output: OutputSink<'_>) -> Result<i64> {
        let info = self.info(id).await?;
        let machine_env: BTreeMap<String, String> = info
            .labels
            .get(MACHINE_ENV)
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
        let mut all = BTreeMap::from([(
            "PATH".to_string(),
            "/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        )]);
        let (argv, env) = if req.login {
            let mut vars = machine_env;
            vars.extend(req.env.clone());
            vars.retain(|k, _| shell_name(k));
            let user = match &req.user {
                Some(u) => u.clone(),
                None => self.login_user(&info)?,
            };
            (login_argv(req, &user, &vars), all)
        } else {
            all.extend(machine_env);
            all.extend(req.env.clone());
            (agent_argv(req), all)
        };
        let (path, args) = argv.split_first().ok_or_else(|| ProviderError::Conflict {
            message: "an empty command".into(),
        })?;
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let started = self
            .agent(
                id,
                serde_json::json!({"execute": "guest-exec", "arguments": {"path": path, "arg": args, "env": env, "capture-output": true}}),
                10,
            )
            .await?;
        let pid = started["pid"]
            .as_i64()
            .ok_or_else(|| ProviderError::Conflict {
                message: format!("the guest agent did not start `{path}`"),
            })?;
        // Bounded by a day: a command runs as long as it needs, polled soon at first (most
        // end within milliseconds), then gently.
        let mut delay = Duration::from_millis(2);
        for _ in 0..(24 * 3600 * 5) {
            let st = self
                .agent(
                    id,
                    serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}),
                    10,
                )
                .await?;
            if st["exited"].as_bool() == Some(true) {
                let b64 = base64::engine::general_purpose::STANDARD;
                for (key, stream) in [
                    ("out-data", OutputStream::Stdout),
                    ("err-data", OutputStream::Stderr),
                ] {
                    if let Some(data) = st[key].as_str()
                        && let Ok(bytes) = b64.decode(data)
                    {
                        output(stream, &bytes);
                    }
                }
                return Ok(st["exitcode"].as_i64().unwrap_or_else(|| {
                    if st["signal"].is_i64() {
                        128 + st["signal"].as_i64().unwrap_or(0)
                    } else {
                        -1
                    }
                }));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
        Err(ProviderError::Conflict {
            message: "the command did not finish within a day".into(),
        })
    }

    /// Mounts the machine's live folders (a guest that cannot mount one gets a copy, and
    /// says why) and copies the others; with `mounts_only`, just tries the mounts.
    /// Returns one line per folder copied, for the user.
    async fn sync_folders(&self, id: &str, mounts_only: bool) -> Result<Vec<String>> {
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

    /// Runs a shell line as root; returns its exit code and stderr.
    async fn run_sh(&self, id: &str, script: &str) -> Result<(i64, String)> {
        let req = ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), script.to_string()],
            ..ExecRequest::default()
        };
        let mut err = Vec::new();
        let code = self
            .exec(id, &req, &mut |s: OutputStream, b: &[u8]| {
                if s == OutputStream::Stderr {
                    err.extend_from_slice(b)
                }
            })
            .await?;
        Ok((code, String::from_utf8_lossy(&err).into_owned()))
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
        self.upload(id, &f.guest, tar).await
    }

    /// Waits (bounded by `limit`) until the guest agent answers.
    async fn wait_agent_only(&self, id: &str, limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.agent_answers(id).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// When an envrig that started (or reverted) the machine was killed before its guest
    /// was ready, waits for it as that envrig would have: the agent or SSH answers, the key
    /// is in, the private address is up.
    async fn finish_boot(&self, id: &str) -> Result<()> {
        let info = self.info(id).await?;
        let booting = self.machine_dir(&info.resource_name).join(BOOTING);
        if !booting.exists() {
            return Ok(());
        }
        if info.state == MachineState::Running {
            self.wait_ready_with(id, false).await?;
            self.wait_private_address(id).await;
        }
        let _ = std::fs::remove_file(&booting);
        Ok(())
    }

    async fn agent_answers(&self, id: &str) -> bool {
        self.agent(id, serde_json::json!({"execute": "guest-ping"}), 2)
            .await
            .is_ok()
    }

    /// The environment's keys and the machine's SSH port, from its labels.
    fn ssh_parts(&self, info: &MachineInfo) -> Option<(u16, ssh::EnvKeys)> {
        let port = info.labels.get(SSH_PORT)?.parse().ok()?;
        let env = info.labels.get(envrig_provider_api::labels::ENV)?;
        Some((port, ssh::EnvKeys::new(&self.keys, env)))
    }

    /// The user `envrig ssh` logs in as (recorded when the key was installed: `vagrant` when
    /// the guest has that user), else root. What is recorded came from the guest: it is
    /// checked again here, as it is before it is written.
    fn login_user(&self, info: &MachineInfo) -> Result<String> {
        let recorded = self
            .ssh_parts(info)
            .and_then(|(_, keys)| {
                std::fs::read_to_string(keys.dir.join(format!("{}.user", info.resource_name))).ok()
            })
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty());
        match recorded {
            None => Ok("root".into()),
            Some(u) => checked_user(&u),
        }
    }

    /// An SSH session to the machine as `user` with the environment's key, its host key
    /// checked against the one pinned (pinned now at first contact).
    async fn ssh_session(
        &self,
        info: &MachineInfo,
        user: &str,
        limit: Duration,
    ) -> std::result::Result<ssh::Session, ssh::SshError> {
        let (port, keys) = self
            .ssh_parts(info)
            .ok_or_else(|| ssh::SshError::Protocol {
                port: 0,
                message: "the machine has no SSH port".into(),
            })?;
        let key = keys.ensure()?;
        let session = ssh::connect(port, user, &key, keys.pinned(port), limit).await?;
        if keys.pinned(port).is_none() {
            keys.pin(port, &session.host_key)?;
        }
        Ok(session)
    }

    /// Waits until the machine is ready: its guest agent or its SSH answers, the
    /// environment's key is installed (through the agent, or through SSH with Vagrant's
    /// published insecure key, which it then replaces), and SSH takes that key, its host
    /// key recorded at this first contact. All within the boot timeout; on timeout the
    /// error ends with the last lines of the console.
    async fn wait_ready(&self, id: &str) -> Result<()> {
        self.wait_ready_with(id, true).await
    }

    /// [`Self::wait_ready`]; without `install`, the key is taken as already in the guest
    /// (a revert to a snapshot taken after it was installed).
    async fn wait_ready_with(&self, id: &str, install: bool) -> Result<()> {
        let info = self.info(id).await?;
        let console = self.machine_dir(&info.resource_name).join("console.log");
        let limit = Self::boot_timeout();
        let t0 = Instant::now();
        let Some((port, keys)) = self.ssh_parts(&info) else {
            // No SSH (a machine made before SSH existed): the agent is the way in.
            return if self.wait_agent_only(id, limit).await {
                Ok(())
            } else {
                Err(boot_failed(limit, "the guest agent", &console))
            };
        };
        let user_file = keys.dir.join(format!("{}.user", info.resource_name));
        // Whichever answers first: the agent, or SSH (with our key: a restart; with the
        // insecure key: a fresh vagrant box without an agent).
        let by_ssh = async {
            let key = keys.ensure().ok()?;
            let insecure = vagrant::keys();
            while t0.elapsed() < limit {
                let step = Duration::from_secs(3);
                if ssh::connect(port, "root", &key, keys.pinned(port), step)
                    .await
                    .is_ok()
                {
                    return Some(None);
                }
                for k in &insecure {
                    if let Ok(s) = ssh::connect(port, "vagrant", k, None, step).await {
                        return Some(Some(s));
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            None
        };
        // A guest that powers off or crashes while booting fails at once.
        let died = async {
            while t0.elapsed() < limit {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(i) = self.info(id).await
                    && matches!(i.state, MachineState::Stopped | MachineState::Dead)
                {
                    return;
                }
            }
            std::future::pending::<()>().await
        };
        let installed_by_ssh = tokio::select! {
            biased;
            () = died => {
                return Err(ProviderError::Conflict {
                    message: format!(
                        "the machine stopped while it booted; the end of its console:\n{}",
                        console_tail(&console)
                    ),
                });
            }
            ok = self.wait_agent_only(id, limit) => {
                if !ok {
                    return Err(boot_failed(limit, "the guest agent or SSH", &console));
                }
                tracing::debug!(ms = t0.elapsed().as_millis() as u64, "guest agent answered");
                if !install && user_file.exists() {
                    // A revert: the machine is where it was when SSH worked.
                    return Ok(());
                }
                let user = checked_user(&self.install_key_by_agent(id, &keys).await?)?;
                tracing::debug!(ms = t0.elapsed().as_millis() as u64, "key installed by the agent");
                let _ = std::fs::write(&user_file, &user);
                false
            }
            found = by_ssh => match found {
                None => return Err(boot_failed(limit, "the guest agent or SSH", &console)),
                Some(None) => false,
                Some(Some(insecure)) => {
                    let key = keys.ensure().map_err(|e| io("read the environment's key", e))?;
                    let line = ssh::public_line(key.public_key()).map_err(|e| io("encode the key", e))?;
                    let mut out = Vec::new();
                    let code = insecure
                        .exec(
                            &format!("sudo -n sh -c {}", sh_quote(&install_script(&line))),
                            None,
                            &mut |_, b| out.extend_from_slice(b),
                        )
                        .await
                        .map_err(|e| ssh_err("install the key over SSH", e))?;
                    // Its host key, seen with the insecure key, is the one to pin.
                    keys.pin(port, &insecure.host_key).map_err(|e| io("record the host key", e))?;
                    insecure.close().await;
                    if code != 0 {
                        return Err(ProviderError::Conflict {
                            message: format!(
                                "installing the environment's SSH key failed ({code}): {}",
                                String::from_utf8_lossy(&out).trim()
                            ),
                        });
                    }
                    let user = checked_user(String::from_utf8_lossy(&out).trim().lines().last().unwrap_or("root"))?;
                    let _ = std::fs::write(&user_file, &user);
                    true
                }
            }
        };
        let _ = installed_by_ssh;
        // SSH must take the environment's key now.
        let mut last = None;
        while t0.elapsed() < limit {
            match self
                .ssh_session(&info, "root", Duration::from_secs(3))
                .await
            {
                Ok(s) => {
                    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "SSH took the key");
                    s.close().await;
                    return Ok(());
                }
                Err(e @ ssh::SshError::HostKeyChanged { .. }) => {
                    return Err(ssh_err("reach the machine over SSH", e));
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ProviderError::Conflict {
            message: format!(
                "{}; the end of its console:\n{}",
                last.map(|e| e.to_string())
                    .unwrap_or_else(|| "SSH did not answer".into()),
                console_tail(&console)
            ),
        })
    }

    /// Writes the environment's public key as the only authorized key of root and of
    /// `vagrant` (when the guest has that user), through the guest agent; returns the user
    /// `envrig ssh` logs in as (`vagrant` when it exists, else root).
    async fn install_key_by_agent(&self, id: &str, keys: &ssh::EnvKeys) -> Result<String> {
        let key = keys
            .ensure()
            .map_err(|e| io("read the environment's key", e))?;
        let line = ssh::public_line(key.public_key()).map_err(|e| io("encode the key", e))?;
        let req = ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), install_script(&line)],
            ..ExecRequest::default()
        };
        let mut out = Vec::new();
        let code = self
            .exec_agent(id, &req, &mut |_: OutputStream, b: &[u8]| {
                out.extend_from_slice(b)
            })
            .await?;
        if code != 0 {
            return Err(ProviderError::Conflict {
                message: format!(
                    "installing the environment's SSH key failed ({code}): {}",
                    String::from_utf8_lossy(&out).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out)
            .trim()
            .lines()
            .last()
            .unwrap_or("root")
            .to_string())
    }

    async fn info(&self, id: &str) -> Result<MachineInfo> {
        let id = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine(format!("look up domain {id}"), e))?;
            describe(&dom)
        })
        .await
    }
}

/// Writes a NoCloud seed for a machine into its folder (`seed.iso`, an ISO 9660 volume
/// labelled `cidata` holding `meta-data` and `user-data`, made by `genisoimage`): the
/// environment's key for root and the default user, and the hostname. `None` (and a debug
/// line) when the host has no `genisoimage`: boxes with an agent or Vagrant's key do not need
/// it.
async fn write_seed(mdir: &Path, instance: &str, hostname: &str, key: &str) -> Option<String> {
    let dir = mdir.join("seed");
    let iso = mdir.join("seed.iso");
    let made = async {
        std::fs::create_dir_all(&dir)?;
        // Values are validated names and an OpenSSH key line: quoted as YAML strings anyway.
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        std::fs::write(
            dir.join("meta-data"),
            format!(
                "instance-id: {}\nlocal-hostname: {}\n",
                q(instance),
                q(hostname)
            ),
        )?;
        std::fs::write(
            dir.join("user-data"),
            format!(
                "#cloud-config\ndisable_root: false\nssh_authorized_keys:\n  - {}\n",
                q(key)
            ),
        )?;
        let out = tokio::process::Command::new("genisoimage")
            .args(["-quiet", "-output"])
            .arg(&iso)
            .args(["-volid", "cidata", "-joliet", "-rock"])
            .arg(dir.join("user-data"))
            .arg(dir.join("meta-data"))
            .output()
            .await?;
        if !out.status.success() {
            return Err(std::io::Error::other(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok::<_, std::io::Error>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    match made {
        Ok(()) => Some(iso.display().to_string()),
        Err(e) => {
            tracing::debug!("no NoCloud seed for {instance}: {e}");
            None
        }
    }
}

/// `ENVRIG_LIBVIRT_EXEC=ssh`: commands and uploads go over SSH even when the guest has an
/// agent (their output then streams as it comes).
fn ssh_preferred() -> bool {
    std::env::var("ENVRIG_LIBVIRT_EXEC").as_deref() == Ok("ssh")
}

/// The last lines of a console log, indented, for an error message.
fn console_tail(console: &Path) -> String {
    let log = std::fs::read_to_string(console).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..]
        .iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn boot_failed(limit: Duration, what: &str, console: &Path) -> ProviderError {
    ProviderError::Conflict {
        message: format!(
            "{what} did not answer within {}s; the end of its console:\n{}",
            limit.as_secs(),
            console_tail(console)
        ),
    }
}

fn ssh_err(op: &str, e: ssh::SshError) -> ProviderError {
    ProviderError::Engine {
        provider: NAME,
        op: op.to_string(),
        source: Box::new(e),
    }
}

/// A shell script that makes `key` the only authorized key of root and of `vagrant`
/// (when that user exists), and prints the user to log in as.
fn install_script(key: &str) -> String {
    format!(
        r#"k={k}
for h in /root $(awk -F: '$1=="vagrant"{{print $6}}' /etc/passwd); do
  u=$(stat -c %U "$h" 2>/dev/null || echo root)
  mkdir -p "$h/.ssh" && chmod 700 "$h/.ssh" && printf '%s\n' "$k" > "$h/.ssh/authorized_keys" && chmod 600 "$h/.ssh/authorized_keys" && chown -R "$u" "$h/.ssh" || exit 1
done
if grep -q '^vagrant:' /etc/passwd; then echo vagrant; else echo root; fi"#,
        k = sh_quote(key)
    )
}

/// A work file ([`envrig_provider_api::work`]) in a machine's folder while no domain claims
/// the folder (before it is defined, after it is undefined): `sweep_work` removes a folder
/// whose marker's process is gone and whose domain does not exist.
struct Marker(PathBuf);

impl Marker {
    fn new(mdir: &Path, kind: &str) -> Marker {
        let path = mdir.join(envrig_provider_api::work::name(kind));
        let _ = std::fs::write(&path, b"");
        Marker(path)
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Deletes a machine's DHCP and DNS entries from network `n` (best effort).
fn forget(n: &virt::network::Network, mac: &str, ip: std::net::Ipv4Addr, flags: u32) {
    use virt::sys::*;
    if let Ok(x) = xml::dns_host(ip, &[]) {
        let _ = n.update(
            VIR_NETWORK_UPDATE_COMMAND_DELETE,
            VIR_NETWORK_SECTION_DNS_HOST,
            -1,
            &x,
            flags,
        );
    }
    if let Ok(x) = xml::dhcp_host(mac, None, ip) {
        let _ = n.update(
            VIR_NETWORK_UPDATE_COMMAND_DELETE,
            VIR_NETWORK_SECTION_IP_DHCP_HOST,
            -1,
            &x,
            flags,
        );
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

/// Runs `qemu-img` with `args`; its stderr becomes the error.
async fn qemu_img(what: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
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

/// Makes `names` resolve to `ip` on network `n`'s DNS: an entry is added, and when a name is
/// held by another address (or this address has an entry already), those entries go first.
fn name_address(
    n: &virt::network::Network,
    ip: std::net::Ipv4Addr,
    names: &[String],
    flags: u32,
) -> std::result::Result<(), virt::error::Error> {
    use virt::sys::*;
    let update = |cmd, x: &str| n.update(cmd, VIR_NETWORK_SECTION_DNS_HOST, -1, x, flags);
    let Ok(dns) = xml::dns_host(ip, names) else {
        return Ok(());
    };
    if update(VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, &dns).is_ok() {
        return Ok(());
    }
    if let Ok(x) = xml::dns_host(ip, &[]) {
        let _ = update(VIR_NETWORK_UPDATE_COMMAND_DELETE, &x);
    }
    for other in names {
        if let Ok(x) = xml::dns_host_named(other) {
            let _ = update(VIR_NETWORK_UPDATE_COMMAND_DELETE, &x);
        }
    }
    update(VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, &dns).map(|_| ())
}

/// The machine's names on the private network (comma-separated), registered again at
/// every start.
const NAMES: &str = "dev.envrig.libvirt.names";

/// The guest's file listing taken at the baseline, in the machine's folder.
const DRIFT_BASELINE: &str = "drift-baseline.tsv";
/// A file in a machine's folder from the moment envrig starts (or reverts) the domain until
/// the guest is ready: when envrig was killed in between, the next command that reaches
/// into the guest waits for it first ([`LibvirtProvider::finish_boot`]).
const BOOTING: &str = "booting";

/// Addresses dnsmasq has leased, unexpired, to MACs other than `mac` on the network whose
/// XML is `net_xml` (from libvirt's lease status file for its bridge; none when it cannot
/// be read).
fn leased_elsewhere(net_xml: &str, mac: &str) -> Vec<std::net::Ipv4Addr> {
    let Some(bridge) = net_xml
        .split("<bridge name=")
        .nth(1)
        .and_then(|r| r.get(1..))
        .and_then(|r| r.split(['\'', '"']).next())
    else {
        return Vec::new();
    };
    let file = Path::new("/var/lib/libvirt/dnsmasq").join(format!("{bridge}.status"));
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let leases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    leases
        .iter()
        .filter(|l| {
            l["mac-address"]
                .as_str()
                .is_some_and(|m| !m.eq_ignore_ascii_case(mac))
                && l["expiry-time"].as_u64().is_none_or(|t| t > now)
        })
        .filter_map(|l| l["ip-address"].as_str()?.parse().ok())
        .collect()
}

/// The backing file `disk` was made on (its first), if any.
async fn backing_of(disk: &Path) -> Result<Option<PathBuf>> {
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

fn describe(dom: &Domain) -> Result<MachineInfo> {
    let xml = dom
        .xml_desc(0)
        .map_err(|e| engine("read the domain's XML", e))?;
    let (state, _) = dom
        .state()
        .map_err(|e| engine("read the domain's state", e))?;
    let state = match state {
        Enum::Known(DomainState::Running) | Enum::Known(DomainState::Blocked) => {
            MachineState::Running
        }
        Enum::Known(DomainState::Paused) | Enum::Known(DomainState::PMSuspended) => {
            MachineState::Paused
        }
        Enum::Known(DomainState::Shutoff) => MachineState::Stopped,
        Enum::Known(DomainState::Crashed) => MachineState::Dead,
        _ => MachineState::Transitioning,
    };
    Ok(MachineInfo {
        id: dom
            .uuid_string()
            .map_err(|e| engine("read the domain's uuid", e))?,
        resource_name: dom
            .name()
            .map_err(|e| engine("read the domain's name", e))?,
        state,
        ports: {
            let labels = xml::labels(&xml);
            let ssh: Option<u16> = labels.get(SSH_PORT).and_then(|p| p.parse().ok());
            // The SSH port is envrig's way in, not one of the Envfile's ports.
            xml::ports(&xml)
                .into_iter()
                .filter(|p| !(p.guest_port == 22 && Some(p.host_port) == ssh))
                .collect()
        },
        labels: xml::labels(&xml),
    })
}

/// `s` quoted for `/bin/sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The argv the guest agent runs for `req`: always through `sh` with umask 022 (the agent's
/// own is 0077, so files a step made would be private, unlike under Docker or SSH); a user
/// or folder wraps it in `su`/`cd`.
fn agent_argv(req: &ExecRequest) -> Vec<String> {
    let user = req.user.as_deref().filter(|u| *u != "root" && *u != "0");
    let mut line = req
        .argv
        .iter()
        .map(|a| sh_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    line = match &req.workdir {
        Some(d) => format!("umask 022; cd {} && exec {line}", sh_quote(d)),
        None => format!("umask 022; exec {line}"),
    };
    match user {
        Some(u) => vec![
            "su".into(),
            "-s".into(),
            "/bin/sh".into(),
            u.to_string(),
            "-c".into(),
            line,
        ],
        None => vec!["/bin/sh".into(), "-c".into(), line],
    }
}

/// The argv for a person's command ([`ExecRequest::login`]): root (the agent, or SSH as root)
/// runs `su -l USER -c LINE`, so the command gets USER's login environment (HOME, USER,
/// LOGNAME, SHELL, PATH, and LANG from the guest's locale settings, else `C.UTF-8`) and home
/// folder, whichever way it travels. `su -l` clears the environment: the machine's and the
/// request's variables are exported inside LINE.
fn login_argv(req: &ExecRequest, user: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut line = String::from("umask 022; : \"${LANG:=C.UTF-8}\"; export LANG; ");
    for (k, v) in env {
        line.push_str(&format!("export {k}={}; ", sh_quote(v)));
    }
    if let Some(d) = &req.workdir {
        line.push_str(&format!("cd {} && ", sh_quote(d)));
    }
    line.push_str("exec ");
    line.push_str(
        &req.argv
            .iter()
            .map(|a| sh_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    );
    vec![
        "su".into(),
        "-l".into(),
        user.to_string(),
        "-c".into(),
        line,
    ]
}

/// Whether `k` can be exported by a shell (`export K=...`).
fn shell_name(k: &str) -> bool {
    let mut c = k.chars();
    c.next()
        .is_some_and(|f| f == '_' || f.is_ascii_alphabetic())
        && c.all(|x| x == '_' || x.is_ascii_alphanumeric())
}

#[async_trait]
impl Provider for LibvirtProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    /// A box in the store: its recorded sha256 and size. A box folder named by path: its
    /// disk's sha256, remembered beside the staged copies by the disk's identity (device,
    /// inode, size, modification time), so it is hashed once.
    async fn resolve_base(&self, reference: &str) -> Result<Option<BaseIdentity>> {
        let Some(dir) = self.box_dir(reference) else {
            return Ok(None);
        };
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
                let (sha, _) = tokio::task::spawn_blocking(move || boxes::sha256_file(&d2))
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

    async fn ensure_base(
        &self,
        reference: &str,
        _progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<BaseInfo> {
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

    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        let source_dir = self
            .box_dir(&spec.base)
            .ok_or_else(|| ProviderError::NotFound {
                what: format!("box `{}`", spec.base),
            })?;
        let dir = self.staged_box(&source_dir)?;
        let extra = BTreeMap::from([(BOX_LABEL.to_string(), source_dir.display().to_string())]);
        self.define(spec, Disk::Overlay(dir.join("disk.qcow2")), &dir, extra)
            .await
    }

    async fn start(&self, id: &str) -> Result<()> {
        let info = self.info(id).await?;
        let id2 = id.to_string();
        let (active, nic) = self
            .blocking(move |c| {
                let dom = c
                    .lookup_domain_by_uuid_string(&id2)
                    .map_err(|e| engine("look up the domain", e))?;
                let text = dom.xml_desc(0).unwrap_or_default();
                Ok((dom.is_active().unwrap_or(false), xml::network_nic(&text)))
            })
            .await?;
        // Its names on the private network come back to it (a generation rolled back to
        // takes them from the one it replaces).
        // A network made again since (removed by hand, or `up` found it gone) has lost the
        // machine's fixed address and names: they are registered anew.
        if !active && let Some((network, mac)) = nic {
            let names: Vec<String> = info
                .labels
                .get(NAMES)
                .filter(|n| !n.is_empty())
                .map(|n| n.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            if !self.claim_names(&network, &mac, &names).await? {
                self.attach(&network, &mac, &info.resource_name, &names)
                    .await?;
            }
        }
        let booting = self.machine_dir(&info.resource_name).join(BOOTING);
        let _ = std::fs::write(&booting, b"");
        let id2 = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id2)
                .map_err(|e| engine("look up the domain", e))?;
            if !dom.is_active().unwrap_or(false) {
                dom.create().map_err(|e| engine("start the domain", e))?;
            }
            Ok(())
        })
        .await?;
        self.wait_ready(id).await?;
        self.wait_private_address(id).await;
        let _ = std::fs::remove_file(&booting);
        // Live folders are mounted at every boot; copies (and the folders a guest cannot
        // mount) are made by `refresh_synced`, which `up` and `provision` call and report.
        self.sync_folders(id, true).await?;
        Ok(())
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        let id2 = id.to_string();
        let running = self
            .blocking(move |c| {
                let dom = c
                    .lookup_domain_by_uuid_string(&id2)
                    .map_err(|e| engine("look up the domain", e))?;
                if !dom.is_active().unwrap_or(false) {
                    return Ok(false);
                }
                let _ = dom.shutdown();
                Ok(true)
            })
            .await?;
        if !running {
            return Ok(());
        }
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.info(id).await?.state == MachineState::Stopped {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let id2 = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id2)
                .map_err(|e| engine("look up the domain", e))?;
            if dom.is_active().unwrap_or(false) {
                dom.destroy()
                    .map_err(|e| engine("stop the domain hard", e))?;
            }
            Ok(())
        })
        .await
    }

    async fn remove(&self, id: &str) -> Result<()> {
        // Its pinned host key and login go with it.
        if let Ok(info) = self.info(id).await
            && let Some((port, keys)) = self.ssh_parts(&info)
        {
            let _ = keys.unpin(port);
            let _ = std::fs::remove_file(keys.dir.join(format!("{}.user", info.resource_name)));
        }
        // Once undefined, only this marker says whose the folder is (see `define`).
        let _marker = self
            .info(id)
            .await
            .ok()
            .map(|i| Marker::new(&self.machine_dir(&i.resource_name), "removing"));
        let id2 = id.to_string();
        let name = self
            .blocking(move |c| {
                let dom = match c.lookup_domain_by_uuid_string(&id2) {
                    Ok(d) => d,
                    Err(_) => return Ok(None),
                };
                let name = dom.name().ok();
                let nic = dom.xml_desc(0).ok().and_then(|x| xml::network_nic(&x));
                if dom.is_active().unwrap_or(false) {
                    let _ = dom.destroy();
                }
                let flags = virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                    | virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM
                    | virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE;
                match dom.undefine_flags(flags) {
                    Ok(()) => Ok(Some((name, nic))),
                    Err(e) if e.to_string().contains("not found") => Ok(Some((name, nic))),
                    Err(e) => Err(engine("undefine the domain", e)),
                }
            })
            .await?;
        let name = match name {
            Some((name, Some((network, mac)))) => {
                self.detach(&network, &mac).await;
                name
            }
            Some((name, None)) => name,
            None => None,
        };
        if let Some(name) = name {
            let dir = self.machine_dir(&name);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(format!("remove {}", dir.display()), e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<MachineInfo> {
        self.info(id).await.map_err(|e| match e {
            ProviderError::Engine { .. } | ProviderError::NotFound { .. } => {
                ProviderError::NotFound {
                    what: format!("domain `{id}`"),
                }
            }
            other => other,
        })
    }

    async fn list(&self, selector: &Selector) -> Result<Vec<MachineInfo>> {
        let selector = selector.clone();
        self.blocking(move |c| {
            let doms = c
                .list_all_domains(0)
                .map_err(|e| engine("list domains", e))?;
            let mut out = Vec::new();
            for d in doms {
                // A domain that vanished while we looked is simply not listed.
                if let Ok(info) = describe(&d)
                    && selector.matches(&info.labels)
                {
                    out.push(info);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn purge(&self, selector: &Selector) -> Result<Vec<String>> {
        // Machines' overlays and logs go with them; networks are the other resources, and
        // the SSH keys of environments that have no machine left.
        let selector = selector.clone();
        let keys = self.keys.clone();
        self.blocking(move |c| {
            let envs: std::collections::BTreeSet<String> = c
                .list_all_domains(0)
                .map_err(|e| engine("list domains", e))?
                .iter()
                .filter_map(|d| d.xml_desc(0).ok())
                .filter_map(|x| {
                    xml::labels(&x)
                        .get(envrig_provider_api::labels::ENV)
                        .cloned()
                })
                .collect();
            let mut removed = Vec::new();
            for e in std::fs::read_dir(&keys).into_iter().flatten().flatten() {
                let env = e.file_name().to_string_lossy().to_string();
                let probe =
                    BTreeMap::from([(envrig_provider_api::labels::ENV.to_string(), env.clone())]);
                if !envs.contains(&env)
                    && selector.matches(&probe)
                    && std::fs::remove_dir_all(e.path()).is_ok()
                {
                    removed.push(format!("SSH keys of {env}"));
                }
            }
            for n in c
                .list_all_networks(0)
                .map_err(|e| engine("list networks", e))?
            {
                let labels = xml::labels(&n.xml_desc(0).unwrap_or_default());
                if labels.is_empty() || !selector.matches(&labels) {
                    continue;
                }
                let name = n.name().unwrap_or_default();
                if n.is_active().unwrap_or(false) {
                    n.destroy()
                        .map_err(|e| engine(format!("stop network `{name}`"), e))?;
                }
                if n.is_persistent().unwrap_or(false) {
                    n.undefine()
                        .map_err(|e| engine(format!("remove network `{name}`"), e))?;
                }
                removed.push(format!("network {name}"));
            }
            Ok(removed)
        })
        .await
    }

    async fn list_other(&self, selector: &Selector) -> Result<Vec<OtherResource>> {
        let selector = selector.clone();
        self.blocking(move |c| {
            let mut out = Vec::new();
            for n in c
                .list_all_networks(0)
                .map_err(|e| engine("list networks", e))?
            {
                let labels = xml::labels(&n.xml_desc(0).unwrap_or_default());
                if !labels.is_empty() && selector.matches(&labels) {
                    out.push(OtherResource {
                        kind: "network",
                        name: n.name().unwrap_or_default(),
                        labels,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    /// An isolated network (no forwarding: nothing leaves the host) on its own bridge,
    /// persistent (it survives a libvirtd restart, as halted machines do), with DHCP and
    /// DNS for the machines attached to it; its /24 comes from the Envfile, else from
    /// `ENVRIG_SUBNET_POOL`, else from 198.19.0.0/16, avoiding every subnet this host
    /// routes and every libvirt network's.
    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<()> {
        let _guard = self.net_lock.lock().await;
        let spec = spec.clone();
        self.blocking(move |c| {
            if let Ok(n) = c.lookup_network_by_name(&spec.name) {
                let labels = xml::labels(&n.xml_desc(0).unwrap_or_default());
                if labels.get(envrig_provider_api::labels::ENV)
                    != spec.labels.get(envrig_provider_api::labels::ENV)
                {
                    return Err(ProviderError::Conflict {
                        message: format!(
                            "a libvirt network named `{}` exists and is not this environment's",
                            spec.name
                        ),
                    });
                }
                if !n.is_active().unwrap_or(false) {
                    n.create()
                        .map_err(|e| engine(format!("start network `{}`", spec.name), e))?;
                }
                return Ok(());
            }
            let fixed = match &spec.subnet {
                Some(s) => Some(
                    net::Subnet::parse(s).ok_or_else(|| ProviderError::Conflict {
                        message: format!("subnet `{s}` is not an IPv4 subnet libvirt can use"),
                    })?,
                ),
                None => None,
            };
            let pool_text = spec
                .subnet_pool
                .clone()
                .unwrap_or_else(|| net::DEFAULT_POOL.to_string());
            let pool = net::Subnet::parse(&pool_text).ok_or_else(|| ProviderError::Conflict {
                message: format!("subnet pool `{pool_text}` is not an IPv4 subnet"),
            })?;
            let bridge = net::bridge_for(&spec.name);
            let mut last = None;
            // A subnet another process took between our look and our start: the next one.
            for attempt in 0..8 {
                let mut used = net::routed();
                for n in c.list_all_networks(0).unwrap_or_default() {
                    if let Some((a, p)) = xml::network_ip(&n.xml_desc(0).unwrap_or_default())
                        && let Some(s) = net::Subnet::parse(&format!("{a}/{p}"))
                    {
                        used.push(s);
                    }
                }
                let subnet = match fixed {
                    Some(s) => s,
                    None => {
                        net::pick(pool, &used, attempt).ok_or_else(|| ProviderError::Conflict {
                            message: format!("no free /24 left in {pool_text}"),
                        })?
                    }
                };
                let (address, dhcp, _) = subnet.layout();
                let text = xml::Network {
                    name: &spec.name,
                    bridge: &bridge,
                    labels: &spec.labels,
                    address,
                    prefix: subnet.prefix,
                    dhcp,
                    domain: spec.domain.as_deref(),
                }
                .to_xml()
                .map_err(|e| io("write the network XML", e))?;
                let n = c
                    .define_network_xml(&text)
                    .map_err(|e| engine(format!("define network `{}`", spec.name), e))?;
                match n.create() {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        let _ = n.undefine();
                        last = Some(engine(
                            format!("start network `{}` on {subnet}", spec.name),
                            e,
                        ));
                        if fixed.is_some() {
                            break;
                        }
                    }
                }
            }
            Err(last.unwrap_or_else(|| ProviderError::Conflict {
                message: "no subnet could be used".into(),
            }))
        })
        .await
    }

    /// Through the guest agent when the guest has one (no network needed), else over SSH
    /// as root with the environment's key (output streamed).
    async fn exec(&self, id: &str, req: &ExecRequest, output: OutputSink<'_>) -> Result<i64> {
        self.finish_boot(id).await?;
        if !ssh_preferred() && self.agent_answers(id).await {
            return self.exec_agent(id, req, output).await;
        }
        let info = self.info(id).await?;
        if self.ssh_parts(&info).is_none() {
            return self.exec_agent(id, req, output).await;
        }
        let machine_env: BTreeMap<String, String> = info
            .labels
            .get(MACHINE_ENV)
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
        let mut all = machine_env;
        all.extend(req.env.clone());
        let quoted = |argv: Vec<String>| {
            argv.iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let line = if req.login {
            all.retain(|k, _| shell_name(k));
            let user = match &req.user {
                Some(u) => u.clone(),
                None => self.login_user(&info)?,
            };
            format!("exec {}", quoted(login_argv(req, &user, &all)))
        } else {
            format!(
                "exec env {} {}",
                all.iter()
                    .map(|(k, v)| sh_quote(&format!("{k}={v}")))
                    .collect::<Vec<_>>()
                    .join(" "),
                quoted(agent_argv(req))
            )
        };
        let session = self
            .ssh_session(&info, "root", Duration::from_secs(30))
            .await
            .map_err(|e| ssh_err("reach the machine over SSH", e))?;
        let code = session
            .exec(&line, None, &mut |err, b| {
                output(
                    if err {
                        OutputStream::Stderr
                    } else {
                        OutputStream::Stdout
                    },
                    b,
                )
            })
            .await
            .map_err(|e| ssh_err("run the command over SSH", e));
        session.close().await;
        code
    }

    async fn exec_interactive(
        &self,
        _id: &str,
        _req: &ExecRequest,
        _terminal: Terminal,
    ) -> Result<i64> {
        Err(unsupported("an interactive shell (SSH access comes next)"))
    }

    async fn upload(&self, id: &str, dest: &str, tar: Vec<u8>) -> Result<()> {
        self.finish_boot(id).await?;
        if ssh_preferred() || !self.agent_answers(id).await {
            let info = self.info(id).await?;
            if self.ssh_parts(&info).is_some() {
                let session = self
                    .ssh_session(&info, "root", Duration::from_secs(30))
                    .await
                    .map_err(|e| ssh_err("reach the machine over SSH", e))?;
                let mut err = Vec::new();
                let code = session
                    .exec(
                        &format!("tar -xf - -C {}", sh_quote(dest)),
                        Some(tar),
                        &mut |_, b| err.extend_from_slice(b),
                    )
                    .await
                    .map_err(|e| ssh_err("upload over SSH", e));
                session.close().await;
                return match code? {
                    0 => Ok(()),
                    code => Err(ProviderError::Conflict {
                        message: format!(
                            "unpacking into {dest} failed ({code}): {}",
                            String::from_utf8_lossy(&err).trim()
                        ),
                    }),
                };
            }
        }
        static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let guest = format!("/tmp/.envrig-upload-{}-{n}.tar", std::process::id());
        let opened = self
            .agent(id, serde_json::json!({"execute": "guest-file-open", "arguments": {"path": guest, "mode": "w"}}), 10)
            .await?;
        let handle = opened.as_i64().ok_or_else(|| ProviderError::Conflict {
            message: "the guest agent did not open the upload file".into(),
        })?;
        let b64 = base64::engine::general_purpose::STANDARD;
        for chunk in tar.chunks(48 * 1024) {
            self.agent(
                id,
                serde_json::json!({"execute": "guest-file-write", "arguments": {"handle": handle, "buf-b64": b64.encode(chunk)}}),
                30,
            )
            .await?;
        }
        self.agent(
            id,
            serde_json::json!({"execute": "guest-file-close", "arguments": {"handle": handle}}),
            10,
        )
        .await?;
        let req = ExecRequest {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "tar -xf {g} -C {d}; s=$?; rm -f {g}; exit $s",
                    g = sh_quote(&guest),
                    d = sh_quote(dest)
                ),
            ],
            ..ExecRequest::default()
        };
        let mut err = Vec::new();
        let mut sink = |s: OutputStream, b: &[u8]| {
            if s == OutputStream::Stderr {
                err.extend_from_slice(b)
            }
        };
        match self.exec(id, &req, &mut sink).await? {
            0 => Ok(()),
            code => Err(ProviderError::Conflict {
                message: format!(
                    "unpacking into {dest} failed ({code}): {}",
                    String::from_utf8_lossy(&err).trim()
                ),
            }),
        }
    }

    async fn pause(&self, id: &str) -> Result<()> {
        // What the guest has in its page cache reaches its disk first, so a disk saved while
        // paused (an export, a package) holds every file written before (bounded: a guest
        // without an agent is paused anyway).
        let sync = ExecRequest {
            argv: vec!["sync".into()],
            ..ExecRequest::default()
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.exec(id, &sync, &mut |_: OutputStream, _: &[u8]| {}),
        )
        .await;
        let id = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine("look up the domain", e))?;
            dom.suspend().map_err(|e| engine("pause the domain", e))?;
            Ok(())
        })
        .await
    }

    async fn unpause(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine("look up the domain", e))?;
            let _ = dom.resume();
            Ok(())
        })
        .await
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
        let listing = self.list_files(id).await?;
        let info = self.info(id).await?;
        let file = self.machine_dir(&info.resource_name).join(DRIFT_BASELINE);
        std::fs::write(&file, listing).map_err(|e| io(format!("write {}", file.display()), e))
    }

    /// The guest's files listed now against the listing taken at the baseline (kept in the
    /// machine's folder on the host); no baseline yet: everything counts as added.
    async fn drift(&self, id: &str) -> Result<Vec<envrig_provider_api::drift::PathChange>> {
        use envrig_provider_api::drift;
        let info = self.info(id).await?;
        let file = self.machine_dir(&info.resource_name).join(DRIFT_BASELINE);
        let base = std::fs::read_to_string(&file).unwrap_or_default();
        let now = self.list_files(id).await?;
        Ok(drift::compare(&drift::parse(&base), &drift::parse(&now)))
    }

    /// `sync` inside the guest (through the agent, else SSH), bounded to 10 s; a guest that
    /// cannot answer is saved as it is (its memory, in the snapshot, still holds the files).
    async fn flush(&self, id: &str) -> Result<()> {
        let sync = ExecRequest {
            argv: vec!["sync".into()],
            ..ExecRequest::default()
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.exec(id, &sync, &mut |_: OutputStream, _: &[u8]| {}),
        )
        .await;
        Ok(())
    }

    async fn snapshot_restore(
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
        let (owner2, name2, running) = (owner.to_string(), name.to_string(), snap.running);
        let booting = self
            .info(owner)
            .await
            .ok()
            .map(|i| self.machine_dir(&i.resource_name).join(BOOTING))
            .filter(|_| running);
        if let Some(b) = &booting {
            let _ = std::fs::write(b, b"");
        }
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&owner2)
                .map_err(|e| engine("look up the domain", e))?;
            let s = Domain::lookup_snapshot_by_name(&dom, &name2, 0)
                .map_err(|e| engine(format!("find snapshot `{name2}`"), e))?;
            let flags = if running {
                virt::sys::VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING
            } else {
                0
            };
            s.revert(flags)
                .map_err(|e| engine(format!("revert to snapshot `{name2}`"), e))
        })
        .await?;
        if running {
            // The snapshot holds the environment's key already.
            self.wait_ready_with(owner, false).await?;
        }
        if let Some(b) = &booting {
            let _ = std::fs::remove_file(b);
        }
        self.info(owner).await
    }

    async fn snapshot_delete(&self, snap: &Snapshot) -> Result<()> {
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
    async fn snapshot_export(&self, snap: &Snapshot, dest: &Path) -> Result<u64> {
        let (owner, name) = snap
            .id
            .split_once('/')
            .filter(|_| !snap.id.starts_with('/'))
            .ok_or_else(|| ProviderError::NotFound {
                what: format!("snapshot `{}`", snap.id),
            })?;
        let (_, disk, kernel_dir) = self.disk_of(owner).await?;
        let work = dest.with_extension("flat.qcow2");
        if snap.running
            && !snap
                .labels
                .contains_key(envrig_provider_api::labels::FLUSHED)
        {
            self.flatten_flushed(owner, name, &disk, &work).await?;
        } else {
            self.flatten(&disk, Some(name), &work).await?;
        }
        let (dest2, work2) = (dest.to_path_buf(), work.clone());
        let result = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let mut out = tar::Builder::new(std::fs::File::create(&dest2)?);
            out.append_path_with_name(&work2, "disk.qcow2")?;
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
        result.map_err(|e| io("write the export", e))
    }

    async fn check_export(&self, src: &Path) -> Result<()> {
        let src2 = src.to_path_buf();
        match tokio::task::spawn_blocking(move || qcow2::check_export_tar(&src2))
            .await
            .map_err(|e| io("read the disk export", std::io::Error::other(e)))?
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(ProviderError::Refused {
                message: format!("its disk is refused: {why}"),
            }),
            Err(e) => Err(ProviderError::Refused {
                message: format!("its disk export cannot be read as a tar: {e}"),
            }),
        }
    }

    async fn snapshot_import(
        &self,
        src: &Path,
        snap: &Snapshot,
        labels: &BTreeMap<String, String>,
    ) -> Result<Snapshot> {
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

    /// A new box in the store: the machine's disk flattened (paused for the copy when it
    /// runs, after a `sync` inside), with the kernel files it boots with.
    async fn package(
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
        let (info, disk, kernel_dir) = self.disk_of(id).await?;
        let tmp = self.images.join(envrig_provider_api::work::name(&format!(
            ".package-{}",
            info.resource_name
        )));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| io("make a work folder", e))?;
        let paused = info.state == MachineState::Running;
        if paused {
            self.pause(id).await?;
        }
        // A baked layer keeps the box as its backing file (only what the steps changed is
        // copied); a packaged box stands alone.
        let flat = if labels.contains_key(envrig_provider_api::labels::BAKED) {
            match backing_of(&disk).await {
                Ok(Some(backing)) => self.layer(&disk, &backing, &tmp.join("disk.qcow2")).await,
                Ok(None) => self.flatten(&disk, None, &tmp.join("disk.qcow2")).await,
                Err(e) => Err(e),
            }
        } else {
            self.flatten(&disk, None, &tmp.join("disk.qcow2")).await
        };
        if paused {
            self.unpause(id).await?;
        }
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

    async fn box_add(&self, name: &str, source: &Path, force: bool) -> Result<StoredBox> {
        let (store, name, source) = (self.boxes.clone(), name.to_string(), source.to_path_buf());
        tokio::task::spawn_blocking(move || boxes::add(&store, &name, &source, force))
            .await
            .map_err(|e| io("add the box", std::io::Error::other(e)))?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => ProviderError::Conflict {
                    message: e.to_string(),
                },
                _ => io("add the box", e),
            })
    }

    async fn box_list(&self) -> Result<Vec<StoredBox>> {
        boxes::list(&self.boxes).map_err(|e| io("list the boxes", e))
    }

    async fn baked_layers(&self) -> Result<Vec<envrig_provider_api::BakedLayer>> {
        let mut out = Vec::new();
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

    async fn remove_baked(&self, name: &str) -> Result<()> {
        self.box_remove(name).await
    }

    async fn box_remove(&self, name: &str) -> Result<()> {
        if !boxes::valid_name(name) || !self.boxes.join(name).join("box.json").is_file() {
            return Err(ProviderError::NotFound {
                what: format!("box `{name}`"),
            });
        }
        let dir = self.boxes.join(name).display().to_string();
        let users: Vec<String> = self
            .list(&Selector::default().eq(BOX_LABEL, &dir))
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
                .list(&Selector::default().eq(KERNEL_DIR, &staged.display().to_string()))
                .await?;
            if users.is_empty() {
                let _ = std::fs::remove_dir_all(&staged);
            }
        }
        Ok(())
    }

    async fn sweep_work(&self) -> Result<Vec<String>> {
        use envrig_provider_api::work;
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

    async fn refresh_synced(&self, id: &str) -> Result<Vec<String>> {
        self.sync_folders(id, false).await
    }

    async fn ssh_endpoint(&self, id: &str) -> Result<SshEndpoint> {
        let info = self.info(id).await?;
        let (port, keys) = self
            .ssh_parts(&info)
            .ok_or_else(|| unsupported("SSH into a machine made before envrig had SSH"))?;
        let user = self.login_user(&info)?;
        Ok(SshEndpoint {
            host: "127.0.0.1".into(),
            port,
            user,
            identity_file: keys.identity().display().to_string(),
            known_hosts_file: Some(keys.known_hosts().display().to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persons_command_logs_in_as_the_user_with_its_variables_inside() {
        let req = ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo ~".into()],
            login: true,
            ..ExecRequest::default()
        };
        let env = BTreeMap::from([("ROLE".to_string(), "it's".to_string())]);
        assert_eq!(
            login_argv(&req, "vagrant", &env),
            [
                "su",
                "-l",
                "vagrant",
                "-c",
                "umask 022; : \"${LANG:=C.UTF-8}\"; export LANG; export ROLE='it'\\''s'; exec 'sh' '-c' 'echo ~'"
            ]
        );
        assert!(shell_name("ROLE_1") && shell_name("_x"));
        assert!(!shell_name("1A") && !shell_name("A-B") && !shell_name("") && !shell_name("A;rm"));
    }

    #[test]
    fn commands_for_other_users_and_folders_are_quoted() {
        let req = ExecRequest {
            argv: vec!["echo".into(), "it's".into()],
            user: Some("app".into()),
            workdir: Some("/srv/a b".into()),
            ..ExecRequest::default()
        };
        assert_eq!(
            agent_argv(&req),
            [
                "su",
                "-s",
                "/bin/sh",
                "app",
                "-c",
                "umask 022; cd '/srv/a b' && exec 'echo' 'it'\\''s'"
            ]
        );
        let plain = ExecRequest {
            argv: vec!["true".into()],
            ..ExecRequest::default()
        };
        assert_eq!(
            agent_argv(&plain),
            ["/bin/sh", "-c", "umask 022; exec 'true'"]
        );
    }
}
