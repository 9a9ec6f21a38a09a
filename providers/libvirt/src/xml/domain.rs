//! A domain's XML: written whole from a [`Domain`], and what envrig reads back from one (its
//! forwarded ports, its NIC on the private network), and the displays a host offers.

use std::collections::BTreeMap;

use envrig_provider_api::{PortSpec, Protocol};
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, Event};

use super::{attr, close, empty, holding, metadata, open, text};

/// Everything a domain is made of.
#[derive(Debug, Clone)]
pub struct Domain<'a> {
    pub name: &'a str,
    /// `qemu` (TCG) or `kvm`.
    pub kind: &'a str,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub machine_type: &'a str,
    pub kernel: Option<&'a str>,
    pub initrd: Option<&'a str>,
    pub cmdline: Option<String>,
    pub disk: &'a str,
    /// The box the disk is an overlay on, then that box's own backing files (a baked layer
    /// is backed by its box), nearest first; empty for a disk of its own (an imported one).
    pub backing: &'a [String],
    pub console_log: &'a str,
    pub ports: &'a [PortSpec],
    pub labels: &'a BTreeMap<String, String>,
    /// The environment's private network and this machine's MAC on it (a second NIC).
    pub network: Option<(&'a str, &'a str)>,
    /// Host folders shared live with the guest.
    pub shares: &'a [Share],
    /// A NoCloud seed (an ISO labelled `cidata`) attached read-only as a second disk.
    pub seed: Option<&'a str>,
    /// A display (`vnc` or `spice`) on 127.0.0.1 with a port libvirt picks, and a video
    /// device; `None`: the serial console only.
    pub graphics: Option<&'a str>,
    /// The display's video card model (`cirrus` unless the Envfile says).
    pub video: &'a str,
    /// The guest's CPU (`cpu_mode`, `nested`); `None`: the hypervisor's default.
    pub cpu: Option<Cpu>,
}

/// A domain's `<cpu>`: a libvirt CPU mode, and a feature it must have (`vmx` or `svm`, for
/// a hypervisor inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    pub mode: String,
    pub require: Option<String>,
}

/// A host folder shared with the guest by virtiofs or 9p, mounted by its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// `virtiofs` or `9p`.
    pub kind: String,
    pub source: String,
    pub tag: String,
    pub read_only: bool,
    /// virtiofs: the daemon's binary.
    pub daemon: Option<String>,
}

impl Domain<'_> {
    pub fn to_xml(&self) -> std::io::Result<String> {
        let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
        w.write_event(Event::Decl(BytesDecl::new("1.0", None, None)))?;
        open(&mut w, "domain", &[("type", self.kind)])?;
        text(&mut w, "name", &[], self.name)?;
        metadata(&mut w, self.labels)?;
        text(
            &mut w,
            "memory",
            &[("unit", "MiB")],
            &self.memory_mib.to_string(),
        )?;
        if self.shares.iter().any(|s| s.kind == "virtiofs") {
            // virtiofs needs the guest's memory shared with its daemon.
            open(&mut w, "memoryBacking", &[])?;
            empty(&mut w, "source", &[("type", "memfd")])?;
            empty(&mut w, "access", &[("mode", "shared")])?;
            close(&mut w, "memoryBacking")?;
        }
        text(&mut w, "vcpu", &[], &self.vcpus.to_string())?;
        open(&mut w, "os", &[])?;
        text(
            &mut w,
            "type",
            &[("arch", "x86_64"), ("machine", self.machine_type)],
            "hvm",
        )?;
        if let Some(k) = self.kernel {
            text(&mut w, "kernel", &[], k)?;
        }
        if let Some(i) = self.initrd {
            text(&mut w, "initrd", &[], i)?;
        }
        if let Some(c) = &self.cmdline {
            text(&mut w, "cmdline", &[], c)?;
        }
        close(&mut w, "os")?;
        if let Some(cpu) = &self.cpu {
            let mode = [("mode", cpu.mode.as_str())];
            match &cpu.require {
                Some(f) => {
                    let feature = [("policy", "require"), ("name", f.as_str())];
                    holding(&mut w, ("cpu", &mode), ("feature", &feature))?;
                }
                None => empty(&mut w, "cpu", &mode)?,
            }
        }
        open(&mut w, "features", &[])?;
        empty(&mut w, "acpi", &[])?;
        close(&mut w, "features")?;
        text(&mut w, "on_poweroff", &[], "destroy")?;
        text(&mut w, "on_crash", &[], "destroy")?;
        open(&mut w, "devices", &[])?;
        // The disk: an overlay whose backing file is the box, which libvirt must never
        // relabel (it is shared by every machine made from the box).
        open(&mut w, "disk", &[("type", "file"), ("device", "disk")])?;
        empty(&mut w, "driver", &[("name", "qemu"), ("type", "qcow2")])?;
        empty(&mut w, "source", &[("file", self.disk)])?;
        // The whole chain is written: libvirt takes an empty <backingStore/> as its end.
        for backing in self.backing {
            open(&mut w, "backingStore", &[("type", "file")])?;
            empty(&mut w, "format", &[("type", "qcow2")])?;
            open(&mut w, "source", &[("file", backing)])?;
            empty(&mut w, "seclabel", &[("model", "dac"), ("relabel", "no")])?;
            close(&mut w, "source")?;
        }
        if !self.backing.is_empty() {
            empty(&mut w, "backingStore", &[])?;
        }
        for _ in self.backing {
            close(&mut w, "backingStore")?;
        }
        empty(&mut w, "target", &[("dev", "vda"), ("bus", "virtio")])?;
        close(&mut w, "disk")?;
        if let Some(seed) = self.seed {
            open(&mut w, "disk", &[("type", "file"), ("device", "disk")])?;
            empty(&mut w, "driver", &[("name", "qemu"), ("type", "raw")])?;
            empty(&mut w, "source", &[("file", seed)])?;
            empty(&mut w, "target", &[("dev", "vdb"), ("bus", "virtio")])?;
            empty(&mut w, "readonly", &[])?;
            close(&mut w, "disk")?;
        }
        for sh in self.shares {
            let mode = if sh.kind == "virtiofs" {
                "passthrough"
            } else {
                "mapped"
            };
            open(
                &mut w,
                "filesystem",
                &[("type", "mount"), ("accessmode", mode)],
            )?;
            if sh.kind == "virtiofs" {
                empty(&mut w, "driver", &[("type", "virtiofs")])?;
                if let Some(d) = &sh.daemon {
                    // No caching: a change on the host is seen in the guest at once (with
                    // the default, an append shows up to a second late).
                    open(&mut w, "binary", &[("path", d)])?;
                    empty(&mut w, "cache", &[("mode", "none")])?;
                    close(&mut w, "binary")?;
                }
            }
            empty(&mut w, "source", &[("dir", &sh.source)])?;
            empty(&mut w, "target", &[("dir", &sh.tag)])?;
            // Enforced by the host (virtiofsd --readonly), not only by the guest's mount.
            if sh.read_only {
                empty(&mut w, "readonly", &[])?;
            }
            close(&mut w, "filesystem")?;
        }
        // User-mode networking (passt): no root bridge; ports forwarded from the host.
        open(&mut w, "interface", &[("type", "user")])?;
        empty(&mut w, "backend", &[("type", "passt")])?;
        empty(&mut w, "model", &[("type", "virtio")])?;
        for p in self.ports {
            let proto = match p.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            open(
                &mut w,
                "portForward",
                &[("proto", proto), ("address", &p.host_ip)],
            )?;
            let (start, to) = (p.host_port.to_string(), p.guest_port.to_string());
            empty(&mut w, "range", &[("start", &start), ("to", &to)])?;
            close(&mut w, "portForward")?;
        }
        close(&mut w, "interface")?;
        // The private network, second: the first NIC (passt) keeps the default route.
        if let Some((net, mac)) = self.network {
            open(&mut w, "interface", &[("type", "network")])?;
            empty(&mut w, "source", &[("network", net)])?;
            empty(&mut w, "mac", &[("address", mac)])?;
            empty(&mut w, "model", &[("type", "virtio")])?;
            close(&mut w, "interface")?;
        }
        // The serial console, kept in a file for diagnostics.
        for (device, target) in [
            ("serial", &[("port", "0")][..]),
            ("console", &[("type", "serial"), ("port", "0")][..]),
        ] {
            open(&mut w, device, &[("type", "file")])?;
            empty(&mut w, "source", &[("path", self.console_log)])?;
            empty(&mut w, "target", target)?;
            close(&mut w, device)?;
        }
        // A display for a viewer on this host only, as vagrant-libvirt makes one: a port
        // libvirt picks (`virsh domdisplay` tells it), and a video card (cirrus with 16 MiB
        // unless the Envfile names another model; libvirt sizes those).
        if let Some(kind) = self.graphics {
            let graphics = [("type", kind), ("autoport", "yes")];
            let listen = [("type", "address"), ("address", "127.0.0.1")];
            holding(&mut w, ("graphics", &graphics), ("listen", &listen))?;
            let cirrus = [("type", "cirrus"), ("vram", "16384"), ("heads", "1")];
            let other = [("type", self.video)];
            let model: &[(&str, &str)] = if self.video == "cirrus" {
                &cirrus
            } else {
                &other
            };
            holding(&mut w, ("video", &[]), ("model", model))?;
        }
        // The guest agent: exec and uploads without a network.
        let agent = [("type", "virtio"), ("name", "org.qemu.guest_agent.0")];
        holding(&mut w, ("channel", &[("type", "unix")]), ("target", &agent))?;
        // Without an RNG, key generation in the guest stalls for seconds under emulation.
        open(&mut w, "rng", &[("model", "virtio")])?;
        text(&mut w, "backend", &[("model", "random")], "/dev/urandom")?;
        close(&mut w, "rng")?;
        empty(&mut w, "memballoon", &[("model", "none")])?;
        close(&mut w, "devices")?;
        close(&mut w, "domain")?;
        String::from_utf8(w.into_inner()).map_err(std::io::Error::other)
    }
}

/// The forwarded ports in a domain's XML.
pub fn ports(xml: &str) -> Vec<PortSpec> {
    let mut out = Vec::new();
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut current: Option<(Protocol, String)> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == b"portForward" => {
                let proto = match attr(&e, b"proto").as_deref() {
                    Some("udp") => Protocol::Udp,
                    _ => Protocol::Tcp,
                };
                current = Some((proto, attr(&e, b"address").unwrap_or_default()));
            }
            Ok(Event::Empty(e)) if e.local_name().as_ref() == b"range" => {
                let port = |key: &[u8]| attr(&e, key).and_then(|v| v.parse().ok());
                if let Some((proto, addr)) = &current
                    && let (Some(host_port), Some(guest_port)) = (port(b"start"), port(b"to"))
                {
                    out.push(PortSpec {
                        host_ip: addr.clone(),
                        host_port,
                        guest_port,
                        protocol: *proto,
                    });
                }
            }
            Ok(Event::End(e)) if e.local_name().as_ref() == b"portForward" => current = None,
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    out
}

/// The display types (`<graphics>`'s) a host's domain capabilities offer.
pub fn graphics_types(caps: &str) -> Vec<String> {
    offered(caps, b"graphics")
}

/// The video card models a host's domain capabilities offer.
pub fn video_models(caps: &str) -> Vec<String> {
    offered(caps, b"video")
}

/// The `<value>`s under `device` in a host's domain capabilities.
fn offered(caps: &str, device: &[u8]) -> Vec<String> {
    let mut reader = quick_xml::Reader::from_str(caps);
    let (mut in_device, mut in_value) = (false, false);
    let mut out = Vec::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => match e.local_name().as_ref() {
                d if d == device => in_device = true,
                b"value" => in_value = in_device,
                _ => {}
            },
            Ok(Event::Text(t)) if in_value => {
                if let Ok(v) = t.decode() {
                    out.push(v.trim().to_string());
                }
            }
            Ok(Event::End(e)) => match e.local_name().as_ref() {
                d if d == device => in_device = false,
                b"value" => in_value = false,
                _ => {}
            },
            Ok(Event::Eof) | Err(_) => return out,
            _ => {}
        }
    }
}

/// The CPU modes (`host-passthrough`, `host-model`, `maximum`...) a host's domain
/// capabilities say it supports.
pub fn cpu_modes(caps: &str) -> Vec<String> {
    let mut reader = quick_xml::Reader::from_str(caps);
    let mut in_cpu = false;
    let mut out = Vec::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == b"cpu" => in_cpu = true,
            Ok(Event::End(e)) if e.local_name().as_ref() == b"cpu" => in_cpu = false,
            Ok(Event::Start(e)) | Ok(Event::Empty(e))
                if in_cpu && e.local_name().as_ref() == b"mode" =>
            {
                if attr(&e, b"supported").as_deref() == Some("yes")
                    && let Some(name) = attr(&e, b"name")
                {
                    out.push(name);
                }
            }
            Ok(Event::Eof) | Err(_) => return out,
            _ => {}
        }
    }
}

/// The network a domain is attached to and its MAC there (its `type='network'` NIC).
pub fn network_nic(xml: &str) -> Option<(String, String)> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut in_nic = false;
    let (mut net, mut mac) = (None, None);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == b"interface" => {
                in_nic = attr(&e, b"type").as_deref() == Some("network");
            }
            Ok(Event::End(e)) if e.local_name().as_ref() == b"interface" => {
                if in_nic && let (Some(n), Some(m)) = (net.take(), mac.take()) {
                    return Some((n, m));
                }
                in_nic = false;
            }
            Ok(Event::Empty(e)) | Ok(Event::Start(e)) if in_nic => match e.local_name().as_ref() {
                b"source" => net = attr(&e, b"network"),
                b"mac" => mac = attr(&e, b"address").map(|m| m.to_lowercase()),
                _ => {}
            },
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}
