//! Machines as libvirt domains: defining one (its qcow2 overlay, ports, SSH port, synced
//! folders, NoCloud seed, private-network NIC, labels in `<metadata>`), and its life cycle
//! (create, start, stop, pause, remove, inspect, list), read back from the domain itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envrig_provider_api::{
    MachineInfo, MachineSpec, MachineState, OptionValue, ProviderError, Result, Selector,
};
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;

use crate::boot::{BOOTING, Marker};
use crate::disk::{Disk, overlay, overlay_size, overlay_size_of};
use crate::error::{engine, io};
use crate::network::address;
use crate::remote::RemoteBox;
use crate::synced;
use crate::{
    BOX_LABEL, KERNEL_DIR, LibvirtProvider, MACHINE_ENV, NAMES, SSH_PORT, SYNCED, ssh, xml,
};

impl LibvirtProvider {
    /// Defines the domain of `spec`: its disk (`disk`), the kernel files in `kernel_dir`,
    /// ports, console log and labels (`spec`'s and `extra`). On a remote host
    /// ([`Disk::Remote`]) the disk, kernel, NoCloud seed and console log are volumes there.
    pub(crate) async fn define(
        &self,
        spec: &MachineSpec,
        disk: Disk,
        kernel_dir: &Path,
        extra: BTreeMap<String, String>,
    ) -> Result<MachineInfo> {
        // Checked before anything is made: a machine refused here leaves nothing behind.
        let size = match &disk {
            Disk::Overlay(backing) => overlay_size(spec, backing).await?,
            Disk::Own => None,
            Disk::Remote(b) => overlay_size_of(spec, b.virtual_size)?,
        };
        let graphics = self.graphics(spec).await?;
        let (folders, shares) = synced::plan(spec, self.remote.as_ref().map(|r| r.host.as_str()))?;
        let shape = Shape {
            graphics,
            folders,
            shares,
        };
        if let Disk::Remote(b) = disk {
            return self.define_remote(spec, b, size, shape, extra).await;
        }
        let mdir = self.machine_dir(&spec.resource_name);
        std::fs::create_dir_all(&mdir).map_err(|e| io(format!("create {}", mdir.display()), e))?;
        // Until the domain is defined, nothing but this marker says whose the folder is: a
        // killed envrig's is swept by `gc` (`sweep_work`).
        let marker = Marker::new(&mdir, "creating");
        let disk_file = mdir.join("disk.qcow2");
        let backing = match disk {
            Disk::Overlay(backing) => overlay(&backing, &disk_file, size).await?,
            Disk::Own | Disk::Remote(_) => Vec::new(),
        };
        let read = |f: &str| {
            std::fs::read_to_string(kernel_dir.join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let kernel = kernel_dir.join("vmlinuz");
        let initrd = kernel_dir.join("initrd.img");
        // SSH: a free port on 127.0.0.1 forwarded to the guest's 22, and the environment's
        // key pair, made the first time.
        let ssh_port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| io("find a free port", e))?;
        let key = self.env_key(spec)?;
        // A stock cloud image learns the key (and its name) from a NoCloud seed; a guest
        // without cloud-init ignores the extra disk.
        let seed = match &key {
            Some(line) => write_seed(&mdir, &spec.resource_name, &spec.hostname, line).await,
            None => None,
        };
        let kind = match accel_asked(spec) {
            Some(k) => k,
            None => {
                let k = kernel.is_file().then_some(kernel.as_path());
                self.accel.get_or_init(|| self.cached_accel(k))
            }
        };
        let placed = Placed {
            disk: disk_file.display().to_string(),
            backing,
            kernel: kernel.is_file().then(|| kernel.display().to_string()),
            initrd: initrd.is_file().then(|| initrd.display().to_string()),
            cmdline: read("cmdline"),
            console: mdir.join("console.log").display().to_string(),
            seed,
            ssh_port: Some(ssh_port),
            kind,
            kernel_dir: Some(kernel_dir.display().to_string()),
        };
        let defined = self.define_domain(spec, placed, shape, extra).await;
        drop(marker);
        defined
    }

    /// [`Self::define`] on a remote host: the machine's disk (a qcow2 volume backed by its
    /// box's), seed and console log are made as volumes of envrig's pool there; no SSH port
    /// is forwarded (it would listen on that host's loopback, which this host cannot reach:
    /// the guest agent is the way in). What was made goes again when the domain cannot be
    /// defined.
    async fn define_remote(
        &self,
        spec: &MachineSpec,
        b: RemoteBox,
        size: Option<u64>,
        shape: Shape,
        extra: BTreeMap<String, String>,
    ) -> Result<MachineInfo> {
        let res = spec.resource_name.as_str();
        let made = async {
            let disk = self
                .remote_overlay(res, &b.disk, size.unwrap_or(b.virtual_size))
                .await?;
            // Written by the host's virtlogd, read back for a boot that fails.
            let console = self.remote_put(res, "console.log", Vec::new()).await?;
            let seed = match self.env_key(spec)? {
                Some(line) => {
                    let tmp = std::env::temp_dir().join(envrig_provider_api::work::name(&format!(
                        "envrig-seed-{res}"
                    )));
                    let _ = std::fs::create_dir_all(&tmp);
                    let iso = write_seed(&tmp, res, &spec.hostname, &line)
                        .await
                        .and_then(|p| std::fs::read(p).ok());
                    let _ = std::fs::remove_dir_all(&tmp);
                    match iso {
                        Some(bytes) => Some(self.remote_put(res, "seed.iso", bytes).await?),
                        None => None,
                    }
                }
                None => None,
            };
            Ok::<_, ProviderError>(Placed {
                disk,
                backing: vec![b.disk.clone()],
                kernel: b.kernel.clone(),
                initrd: b.initrd.clone(),
                cmdline: b.cmdline.clone(),
                console,
                seed,
                ssh_port: None,
                kind: accel_asked(spec).unwrap_or_else(remote_accel),
                kernel_dir: None,
            })
        }
        .await;
        let defined = match made {
            Ok(placed) => self.define_domain(spec, placed, shape, extra).await,
            Err(e) => Err(e),
        };
        if defined.is_err() {
            // Unless a domain of that name holds them (a define refused over one).
            let name = res.to_string();
            let held = self
                .blocking(move |c| Ok(c.lookup_domain_by_name(&name).is_ok()))
                .await
                .unwrap_or(true);
            if !held {
                let _ = self.remote_remove_volumes(res).await;
            }
        }
        defined
    }

    /// The environment's public key line (its key pair made the first time), for the seed.
    fn env_key(&self, spec: &MachineSpec) -> Result<Option<String>> {
        let Some(env) = spec.labels.get(envrig_provider_api::labels::ENV) else {
            return Ok(None);
        };
        let key = ssh::EnvKeys::new(&self.keys, env)
            .ensure()
            .map_err(|e| io("make the environment's SSH key", e))?;
        ssh::public_line(key.public_key())
            .map(Some)
            .map_err(|e| io("encode the key", e))
    }

    /// The domain of `spec` from its files (`placed`): ports, its place on the private
    /// network, labels, XML; defined. Its network entries go again when it cannot be.
    async fn define_domain(
        &self,
        spec: &MachineSpec,
        placed: Placed,
        shape: Shape,
        extra: BTreeMap<String, String>,
    ) -> Result<MachineInfo> {
        let mut ports = spec.ports.clone();
        for p in &mut ports {
            if p.host_port == 0 {
                p.host_port = match &self.remote {
                    // Nothing here can tell which port is free there.
                    Some(_) => remote_port(&spec.resource_name, p),
                    None => std::net::TcpListener::bind((p.host_ip.as_str(), 0))
                        .and_then(|l| l.local_addr())
                        .map(|a| a.port())
                        .map_err(|e| io("find a free port", e))?,
                };
            }
        }
        if let Some(ssh_port) = placed.ssh_port {
            ports.push(envrig_provider_api::PortSpec {
                host_ip: "127.0.0.1".into(),
                host_port: ssh_port,
                guest_port: 22,
                protocol: envrig_provider_api::Protocol::Tcp,
            });
        }
        let machine_type = match spec.options.get("machine_type") {
            Some(OptionValue::Str(s)) => s.clone(),
            _ => "pc".to_string(),
        };
        // Its place on the private network: a fixed MAC, address and names, registered
        // with the network's DHCP and DNS before the domain exists.
        let nic = match &spec.network {
            Some(att) => {
                let mac = address::mac_for(&spec.resource_name);
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
        if let Some(k) = &placed.kernel_dir {
            labels.insert(KERNEL_DIR.to_string(), k.clone());
        }
        if let Some(p) = placed.ssh_port {
            labels.insert(SSH_PORT.to_string(), p.to_string());
        }
        if !shape.folders.is_empty() {
            labels.insert(
                SYNCED.to_string(),
                serde_json::to_string(&shape.folders).unwrap_or_default(),
            );
        }
        if !spec.env.is_empty() {
            labels.insert(
                MACHINE_ENV.to_string(),
                serde_json::to_string(&spec.env).unwrap_or_default(),
            );
        }
        let kind = placed.kind;
        let cmdline = placed
            .cmdline
            .map(|c| format!("{c} hostname={}", spec.hostname));
        let domain = xml::Domain {
            name: &spec.resource_name,
            kind,
            // Below 128 MiB a Linux guest does not boot: the floor.
            memory_mib: spec.memory_bytes.map(|b| b >> 20).unwrap_or(256).max(128),
            vcpus: spec.cpus.unwrap_or(1),
            machine_type: &machine_type,
            kernel: placed.kernel.as_deref(),
            initrd: placed.initrd.as_deref(),
            // Under TCG on a busy host the kernel's IO-APIC timer check can fail and panic
            // ("..MP-BIOS bug: 8254 timer not connected"): skipped, as cloud images do.
            cmdline: if placed.kernel.is_some() {
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
            disk: &placed.disk,
            backing: &placed.backing,
            console_log: &placed.console,
            ports: &ports,
            labels: &labels,
            network: nic.as_ref().map(|(n, m)| (n.as_str(), m.as_str())),
            shares: &shape.shares,
            seed: placed.seed.as_deref(),
            graphics: shape.graphics,
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
        defined
    }

    /// `[machines.NAME.libvirt] graphics`: `vnc` or `spice` (a display), or `None` (`none`,
    /// the default: the serial console only). SPICE is refused, before anything is made,
    /// when this host's QEMU lacks it.
    async fn graphics(&self, spec: &MachineSpec) -> Result<Option<&'static str>> {
        let kind = match spec.options.get("graphics") {
            Some(OptionValue::Str(s)) if s == "vnc" => "vnc",
            Some(OptionValue::Str(s)) if s == "spice" => "spice",
            _ => return Ok(None),
        };
        if kind == "spice" {
            let caps = self
                .blocking(|c| {
                    c.domain_capabilities(None, Some("x86_64"), None, None, 0)
                        .map_err(|e| engine("read the host's domain capabilities", e))
                })
                .await?;
            let offered = xml::graphics_types(&caps);
            if !offered.iter().any(|t| t == "spice") {
                return Err(ProviderError::Conflict {
                    message: format!(
                        "`graphics = \"spice\"` needs SPICE support, which this host's QEMU \
                         lacks (it offers: {}); use `graphics = \"vnc\"` in \
                         [machines.{}.libvirt], or install QEMU's SPICE module (Debian: \
                         qemu-system-modules-spice)",
                        offered.join(", "),
                        spec.machine,
                    ),
                });
            }
        }
        Ok(Some(kind))
    }

    pub(crate) async fn create_machine(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        if let Some(remote) = &self.remote {
            let b = self.remote_box(remote, &spec.base).await?;
            let extra = BTreeMap::from([(BOX_LABEL.to_string(), b.source.display().to_string())]);
            let source = b.source.clone();
            return self.define(spec, Disk::Remote(b), &source, extra).await;
        }
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

    pub(crate) async fn start_machine(&self, id: &str) -> Result<()> {
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
        let _ = self.note_put(&info.resource_name, BOOTING, b"").await;
        let id2 = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id2)
                .map_err(|e| engine("look up the domain", e))?;
            if !dom.is_active().unwrap_or(false) {
                dom.create()
                    .map_err(|e| match passt_without_route(&e.to_string()) {
                        Some(why) => why,
                        None => engine("start the domain", e),
                    })?;
            }
            Ok(())
        })
        .await?;
        self.wait_ready(id).await?;
        self.wait_private_address(id).await;
        self.note_drop(&info.resource_name, BOOTING).await;
        // Live folders are mounted at every boot; copies (and the folders a guest cannot
        // mount) are made by `refresh_synced`, which `up` and `provision` call and report.
        self.sync_folders(id, true).await?;
        Ok(())
    }

    pub(crate) async fn stop_machine(&self, id: &str, timeout: Duration) -> Result<()> {
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

    pub(crate) async fn pause_machine(&self, id: &str) -> Result<()> {
        // What the guest has in its page cache reaches its disk first, so a disk saved while
        // paused (an export, a package) holds every file written before (bounded: a guest
        // without an agent is paused anyway).
        self.sync_guest(id).await;
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

    pub(crate) async fn resume_machine(&self, id: &str) -> Result<()> {
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

    pub(crate) async fn remove_machine(&self, id: &str) -> Result<()> {
        // Its pinned host key and login go with it.
        if let Ok(info) = self.info(id).await {
            if let Some((port, keys)) = self.ssh_parts(&info) {
                let _ = keys.unpin(port);
            }
            if let Some(env) = info.labels.get(envrig_provider_api::labels::ENV) {
                let keys = ssh::EnvKeys::new(&self.keys, env);
                let _ = std::fs::remove_file(keys.dir.join(format!("{}.user", info.resource_name)));
            }
        }
        // Once undefined, only this marker says whose the folder is (see `define`); a remote
        // host's volumes are swept by their age instead (`remote.rs`).
        let _marker = match self.remote {
            Some(_) => None,
            None => self
                .info(id)
                .await
                .ok()
                .map(|i| Marker::new(&self.machine_dir(&i.resource_name), "removing")),
        };
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
            if self.remote.is_some() {
                return self.remote_remove_volumes(&name).await;
            }
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

    pub(crate) async fn inspect_machine(&self, id: &str) -> Result<MachineInfo> {
        self.info(id).await.map_err(|e| match e {
            ProviderError::Engine { .. } | ProviderError::NotFound { .. } => {
                ProviderError::NotFound {
                    what: format!("domain `{id}`"),
                }
            }
            other => other,
        })
    }

    pub(crate) async fn list_machines(&self, selector: &Selector) -> Result<Vec<MachineInfo>> {
        let selector = selector.clone();
        self.blocking(move |c| {
            Ok(described_domains(c)?
                .into_iter()
                .map(|(_, info)| info)
                .filter(|info| selector.matches(&info.labels))
                .collect())
        })
        .await
    }

    pub(crate) async fn info(&self, id: &str) -> Result<MachineInfo> {
        let id = id.to_string();
        self.blocking(move |c| {
            let dom = c
                .lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine(format!("look up domain {id}"), e))?;
            describe(&dom)
        })
        .await
    }

    pub(crate) async fn domain_xml(&self, id: &str) -> Result<String> {
        let id = id.to_string();
        self.blocking(move |c| {
            c.lookup_domain_by_uuid_string(&id)
                .map_err(|e| engine("look up the domain", e))?
                .xml_desc(0)
                .map_err(|e| engine("read the domain's XML", e))
        })
        .await
    }

    pub(crate) fn machine_dir(&self, resource_name: &str) -> PathBuf {
        self.images.join(resource_name)
    }
}

/// A new domain's files, where its host reads them.
struct Placed {
    disk: String,
    /// The disk's backing chain, nearest first.
    backing: Vec<String>,
    kernel: Option<String>,
    initrd: Option<String>,
    /// The box's kernel command line (the hostname is added).
    cmdline: Option<String>,
    console: String,
    seed: Option<String>,
    /// The port of this host forwarded to the guest's SSH (none on a remote host).
    ssh_port: Option<u16>,
    /// `qemu` (TCG) or `kvm`.
    kind: &'static str,
    /// The folder of the kernel files here (the `KERNEL_DIR` label), when they are here.
    kernel_dir: Option<String>,
}

/// What a new domain shows and shares: its display and its synced folders.
struct Shape {
    graphics: Option<&'static str>,
    folders: Vec<synced::SyncedFolder>,
    shares: Vec<xml::Share>,
}

/// The hypervisor `[machines.NAME.libvirt] accel` asks for (`None`: `auto`).
fn accel_asked(spec: &MachineSpec) -> Option<&'static str> {
    match spec.options.get("accel") {
        Some(OptionValue::Str(s)) if s == "kvm" => Some("kvm"),
        Some(OptionValue::Str(s)) if s == "tcg" => Some("qemu"),
        _ => None,
    }
}

/// `accel = "auto"` on a remote host: TCG, unless `ENVRIG_ACCEL=kvm`. KVM is chosen on this
/// host only when a guest is seen to boot under it (`accel.rs`: on some hosts libvirt offers
/// KVM and a KVM guest then hangs), which cannot be seen from here; a remote host's machines
/// get KVM by asking for it (`accel = "kvm"`).
fn remote_accel() -> &'static str {
    match std::env::var("ENVRIG_ACCEL").as_deref() {
        Ok("kvm") => "kvm",
        _ => "qemu",
    }
}

/// The host port a port forward that asks for any (0) gets on a remote host, where nothing
/// here can tell which is free: one of 20000-59999, the same for the same machine and guest
/// port (a busy one fails the start, naming it).
fn remote_port(resource: &str, p: &envrig_provider_api::PortSpec) -> u16 {
    let h = envrig_provider_api::hash::sha256_hex(
        format!("{resource}/{}/{}", p.guest_port, p.protocol.as_str()).as_bytes(),
    );
    let n = u32::from_str_radix(&h[..8], 16).unwrap_or(0);
    20000 + (n % 40000) as u16
}

/// A start refused because passt (the machine's user network) finds no default route on
/// the host that runs it: said as such, with what to do, rather than as passt's own words
/// deep in libvirt's message.
fn passt_without_route(message: &str) -> Option<ProviderError> {
    let routeless = message.contains("passt")
        && (message.contains("External interface not usable")
            || message.contains("No external routable interface"));
    routeless.then(|| ProviderError::Conflict {
        message: format!(
            "the machine's user network (passt) cannot start: the libvirt host has no default route, which passt needs even when the machine never leaves the host; add one there (a route to an address nobody holds will do: `ip route add default via ADDRESS dev IFACE`) ({})",
            message.lines().next().unwrap_or_default().trim()
        ),
    })
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

/// Every domain of the connection with what it says of itself; a domain that vanished
/// while we looked is simply not listed.
pub(crate) fn described_domains(c: &virt::connect::Connect) -> Result<Vec<(Domain, MachineInfo)>> {
    let doms = c
        .list_all_domains(0)
        .map_err(|e| engine("list domains", e))?;
    Ok(doms
        .into_iter()
        .filter_map(|d| describe(&d).ok().map(|info| (d, info)))
        .collect())
}

pub(crate) fn describe(dom: &Domain) -> Result<MachineInfo> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_a_default_route_is_named_as_the_reason_passt_fails() {
        // libvirt 11.3's words when passt finds no default route (seen on a host without one).
        let seen = "internal error: Child process (passt --one-off --socket /run/libvirt/qemu/passt/1-x-net0.socket) unexpected exit status 1: Failed to send 46 bytes to syslog\nNo external routable interface for IPv4\nExternal interface not usable\n";
        let e = passt_without_route(seen).expect("recognised").to_string();
        assert!(e.contains("no default route"), "{e}");
        assert!(passt_without_route("internal error: something else").is_none());
    }
}
