//! Defining a machine's domain: its files placed where its host reads them (a qcow2 overlay,
//! the box's kernel files and a NoCloud seed in its folder here, or volumes on a remote host),
//! ports, SSH port, display, synced folders, private-network NIC and labels in `<metadata>`.

use std::collections::BTreeMap;
use std::path::Path;

use envrig_provider_api::{MachineInfo, MachineSpec, OptionValue, ProviderError, Result};

use crate::boot::Marker;
use crate::disk::{Disk, overlay, overlay_size, overlay_size_of};
use crate::error::{engine, io};
use crate::machine::describe;
use crate::network::address;
use crate::remote::RemoteBox;
use crate::synced;
use crate::{KERNEL_DIR, LibvirtProvider, MACHINE_ENV, NAMES, SSH_PORT, SYNCED, ssh, xml};

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
        let kind = match (accel_asked(spec), &disk) {
            (Some(k), _) => k,
            (None, Disk::Remote(_)) => remote_accel(),
            (None, _) => {
                let kernel = kernel_dir.join("vmlinuz");
                let k = kernel.is_file().then_some(kernel.as_path());
                self.accel.get_or_init(|| self.cached_accel(k))
            }
        };
        let hardware = self.hardware(spec, kind).await?;
        let (folders, shares) = synced::plan(spec, self.remote.as_ref().map(|r| r.host.as_str()))?;
        let shape = Shape {
            kind,
            hardware,
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
        let placed = Placed {
            disk: disk_file.display().to_string(),
            backing,
            kernel: kernel.is_file().then(|| kernel.display().to_string()),
            initrd: initrd.is_file().then(|| initrd.display().to_string()),
            cmdline: read("cmdline"),
            console: mdir.join("console.log").display().to_string(),
            seed,
            ssh_port: Some(ssh_port),
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
        let kind = shape.kind;
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
            graphics: shape.hardware.graphics,
            video: &shape.hardware.video,
            cpu: shape.hardware.cpu.clone(),
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
    /// The folder of the kernel files here (the `KERNEL_DIR` label), when they are here.
    kernel_dir: Option<String>,
}

/// What a new domain runs on, shows and shares: its hypervisor, hardware and synced
/// folders.
struct Shape {
    /// `qemu` (TCG) or `kvm`.
    kind: &'static str,
    hardware: crate::hardware::Hardware,
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
