//! Domain XML, written with an XML writer (every value escaped, never pasted into a
//! string), and the envrig labels read back from a domain's `<metadata>`.

use std::collections::BTreeMap;

use envrig_provider_api::{PortSpec, Protocol};
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

/// The namespace of envrig's `<metadata>` element.
pub const NS: &str = "https://envrig.dev/xmlns/labels/1";

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

type W = Writer<Vec<u8>>;

fn open(w: &mut W, name: &str, attrs: &[(&str, &str)]) -> std::io::Result<()> {
    let mut e = BytesStart::new(name);
    for (k, v) in attrs {
        e.push_attribute((*k, *v));
    }
    w.write_event(Event::Start(e))
}

fn close(w: &mut W, name: &str) -> std::io::Result<()> {
    w.write_event(Event::End(BytesEnd::new(name)))
}

fn empty(w: &mut W, name: &str, attrs: &[(&str, &str)]) -> std::io::Result<()> {
    let mut e = BytesStart::new(name);
    for (k, v) in attrs {
        e.push_attribute((*k, *v));
    }
    w.write_event(Event::Empty(e))
}

fn text(w: &mut W, name: &str, attrs: &[(&str, &str)], body: &str) -> std::io::Result<()> {
    open(w, name, attrs)?;
    w.write_event(Event::Text(BytesText::new(body)))?;
    close(w, name)
}

impl Domain<'_> {
    pub fn to_xml(&self) -> std::io::Result<String> {
        let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
        w.write_event(Event::Decl(BytesDecl::new("1.0", None, None)))?;
        open(&mut w, "domain", &[("type", self.kind)])?;
        text(&mut w, "name", &[], self.name)?;
        open(&mut w, "metadata", &[])?;
        open(&mut w, "envrig:labels", &[("xmlns:envrig", NS)])?;
        for (k, v) in self.labels {
            empty(&mut w, "envrig:label", &[("name", k), ("value", v)])?;
        }
        close(&mut w, "envrig:labels")?;
        close(&mut w, "metadata")?;
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
            empty(
                &mut w,
                "range",
                &[
                    ("start", &p.host_port.to_string()),
                    ("to", &p.guest_port.to_string()),
                ],
            )?;
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
        open(&mut w, "serial", &[("type", "file")])?;
        empty(&mut w, "source", &[("path", self.console_log)])?;
        empty(&mut w, "target", &[("port", "0")])?;
        close(&mut w, "serial")?;
        open(&mut w, "console", &[("type", "file")])?;
        empty(&mut w, "source", &[("path", self.console_log)])?;
        empty(&mut w, "target", &[("type", "serial"), ("port", "0")])?;
        close(&mut w, "console")?;
        // The guest agent: exec and uploads without a network.
        open(&mut w, "channel", &[("type", "unix")])?;
        empty(
            &mut w,
            "target",
            &[("type", "virtio"), ("name", "org.qemu.guest_agent.0")],
        )?;
        close(&mut w, "channel")?;
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

/// An isolated libvirt network (no `<forward>`: nothing leaves the host): a bridge, an
/// address for the host, DHCP for a range, and envrig's labels in `<metadata>`.
#[derive(Debug, Clone)]
pub struct Network<'a> {
    pub name: &'a str,
    pub bridge: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
    pub dhcp: (std::net::Ipv4Addr, std::net::Ipv4Addr),
    /// Answered by the network's dnsmasq alone (`localOnly`) and handed out by DHCP.
    pub domain: Option<&'a str>,
}

impl Network<'_> {
    pub fn to_xml(&self) -> std::io::Result<String> {
        let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
        open(&mut w, "network", &[])?;
        text(&mut w, "name", &[], self.name)?;
        open(&mut w, "metadata", &[])?;
        open(&mut w, "envrig:labels", &[("xmlns:envrig", NS)])?;
        for (k, v) in self.labels {
            empty(&mut w, "envrig:label", &[("name", k), ("value", v)])?;
        }
        close(&mut w, "envrig:labels")?;
        close(&mut w, "metadata")?;
        empty(
            &mut w,
            "bridge",
            &[("name", self.bridge), ("stp", "off"), ("delay", "0")],
        )?;
        if let Some(d) = self.domain {
            empty(&mut w, "domain", &[("name", d), ("localOnly", "yes")])?;
        }
        open(
            &mut w,
            "ip",
            &[
                ("address", &self.address.to_string()),
                ("prefix", &self.prefix.to_string()),
            ],
        )?;
        open(&mut w, "dhcp", &[])?;
        empty(
            &mut w,
            "range",
            &[
                ("start", &self.dhcp.0.to_string()),
                ("end", &self.dhcp.1.to_string()),
            ],
        )?;
        close(&mut w, "dhcp")?;
        close(&mut w, "ip")?;
        close(&mut w, "network")?;
        String::from_utf8(w.into_inner()).map_err(std::io::Error::other)
    }
}

/// A `<host>` of a network's DHCP section: `mac` always gets `ip`.
pub fn dhcp_host(mac: &str, name: Option<&str>, ip: std::net::Ipv4Addr) -> std::io::Result<String> {
    let mut w = Writer::new(Vec::new());
    let ip = ip.to_string();
    let mut attrs = vec![("mac", mac)];
    if let Some(n) = name {
        attrs.push(("name", n));
    }
    attrs.push(("ip", &ip));
    empty(&mut w, "host", &attrs)?;
    String::from_utf8(w.into_inner()).map_err(std::io::Error::other)
}

/// A `<host>` of a network's DNS section: `names` resolve to `ip`.
pub fn dns_host(ip: std::net::Ipv4Addr, names: &[String]) -> std::io::Result<String> {
    let mut w = Writer::new(Vec::new());
    open(&mut w, "host", &[("ip", &ip.to_string())])?;
    for n in names {
        text(&mut w, "hostname", &[], n)?;
    }
    close(&mut w, "host")?;
    String::from_utf8(w.into_inner()).map_err(std::io::Error::other)
}

/// A DNS `<host>` matching by name only (to delete the entry that holds `name`).
pub fn dns_host_named(name: &str) -> std::io::Result<String> {
    let mut w = Writer::new(Vec::new());
    open(&mut w, "host", &[])?;
    text(&mut w, "hostname", &[], name)?;
    close(&mut w, "host")?;
    String::from_utf8(w.into_inner()).map_err(std::io::Error::other)
}

/// The attribute `key` of an element, unescaped.
fn attr(e: &BytesStart<'_>, key: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == key)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

/// A network's address and prefix (from `prefix` or `netmask`).
pub fn network_ip(xml: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) if e.local_name().as_ref() == b"ip" => {
                let address = attr(&e, b"address")?.parse().ok()?;
                let prefix = match (attr(&e, b"prefix"), attr(&e, b"netmask")) {
                    (Some(p), _) => p.parse().ok()?,
                    (None, Some(m)) => {
                        u32::from(m.parse::<std::net::Ipv4Addr>().ok()?).count_ones() as u8
                    }
                    _ => 24,
                };
                return Some((address, prefix));
            }
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

/// A network's DNS domain (`<domain name=…>`), if it has one.
pub fn network_domain(xml: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) if e.local_name().as_ref() == b"domain" => {
                return attr(&e, b"name").filter(|n| !n.is_empty());
            }
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

/// `names` and, on a network with a DNS domain, each fully qualified too (`db`,
/// `db.shop.envrig.internal`).
pub fn qualified(names: &[String], domain: Option<&str>) -> Vec<String> {
    let mut out = names.to_vec();
    if let Some(d) = domain {
        out.extend(
            names
                .iter()
                .filter(|n| !n.contains('.'))
                .map(|n| format!("{n}.{d}")),
        );
    }
    out
}

/// The fixed DHCP hosts of a network: (mac, ip).
pub fn dhcp_hosts(xml: &str) -> Vec<(String, std::net::Ipv4Addr)> {
    let mut out = Vec::new();
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut in_dhcp = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == b"dhcp" => in_dhcp = true,
            Ok(Event::End(e)) if e.local_name().as_ref() == b"dhcp" => in_dhcp = false,
            Ok(Event::Start(e)) | Ok(Event::Empty(e))
                if in_dhcp && e.local_name().as_ref() == b"host" =>
            {
                if let (Some(mac), Some(ip)) = (attr(&e, b"mac"), attr(&e, b"ip"))
                    && let Ok(ip) = ip.parse()
                {
                    out.push((mac.to_lowercase(), ip));
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    out
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

/// A domain snapshot's XML: its name, and `description` (envrig keeps JSON there).
pub fn snapshot(name: &str, description: &str) -> std::io::Result<String> {
    let mut w = Writer::new(Vec::new());
    open(&mut w, "domainsnapshot", &[])?;
    text(&mut w, "name", &[], name)?;
    text(&mut w, "description", &[], description)?;
    close(&mut w, "domainsnapshot")?;
    String::from_utf8(w.into_inner()).map_err(std::io::Error::other)
}

/// The text of the first `<description>` directly inside a domain snapshot's XML.
pub fn snapshot_description(xml: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    let mut inside = false;
    let mut out = String::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                depth += 1;
                inside = depth == 2 && e.local_name().as_ref() == b"description";
            }
            Ok(Event::End(_)) => {
                if inside {
                    return Some(out);
                }
                depth = depth.saturating_sub(1);
            }
            Ok(Event::Text(t)) if inside => {
                out.push_str(&t.decode().ok()?);
            }
            Ok(Event::GeneralRef(r)) if inside => {
                // quick-xml reports entity references apart from the text around them.
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    out.push(c);
                    continue;
                }
                let name = String::from_utf8_lossy(&r).into_owned();
                out.push_str(match name.as_str() {
                    "lt" => "<",
                    "gt" => ">",
                    "amp" => "&",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => return None,
                });
            }
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

/// The envrig labels in a domain's XML (empty when it is not envrig's).
pub fn labels(xml: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Empty(e)) | Ok(Event::Start(e)) if e.local_name().as_ref() == b"label" => {
                let mut name = None;
                let mut value = None;
                for a in e.attributes().flatten() {
                    let v = a
                        .unescape_value()
                        .map(|v| v.into_owned())
                        .unwrap_or_default();
                    match a.key.as_ref() {
                        b"name" => name = Some(v),
                        b"value" => value = Some(v),
                        _ => {}
                    }
                }
                if let (Some(n), Some(v)) = (name, value) {
                    out.insert(n, v);
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    out
}

/// The forwarded ports in a domain's XML.
pub fn ports(xml: &str) -> Vec<PortSpec> {
    let mut out = Vec::new();
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut current: Option<(Protocol, String)> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == b"portForward" => {
                let mut proto = Protocol::Tcp;
                let mut addr = String::new();
                for a in e.attributes().flatten() {
                    let v = a
                        .unescape_value()
                        .map(|v| v.into_owned())
                        .unwrap_or_default();
                    match a.key.as_ref() {
                        b"proto" if v == "udp" => proto = Protocol::Udp,
                        b"address" => addr = v,
                        _ => {}
                    }
                }
                current = Some((proto, addr));
            }
            Ok(Event::Empty(e)) if e.local_name().as_ref() == b"range" => {
                if let Some((proto, addr)) = &current {
                    let mut start = None;
                    let mut to = None;
                    for a in e.attributes().flatten() {
                        let v = a
                            .unescape_value()
                            .map(|v| v.into_owned())
                            .unwrap_or_default();
                        match a.key.as_ref() {
                            b"start" => start = v.parse().ok(),
                            b"to" => to = v.parse().ok(),
                            _ => {}
                        }
                    }
                    if let (Some(host_port), Some(guest_port)) = (start, to) {
                        out.push(PortSpec {
                            host_ip: addr.clone(),
                            host_port,
                            guest_port,
                            protocol: *proto,
                        });
                    }
                }
            }
            Ok(Event::End(e)) if e.local_name().as_ref() == b"portForward" => current = None,
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_ports_round_trip_and_values_are_escaped() {
        let labels = BTreeMap::from([
            ("dev.envrig.env".to_string(), "abc".to_string()),
            (
                "dev.envrig.folder".to_string(),
                "/tmp/a <b> & \"c\"".to_string(),
            ),
        ]);
        let backing = ["/l/disk.qcow2".to_string(), "/b/disk.qcow2".to_string()];
        let ports = [PortSpec {
            host_ip: "127.0.0.1".into(),
            host_port: 8080,
            guest_port: 80,
            protocol: Protocol::Tcp,
        }];
        let d = Domain {
            name: "p-1-web-1",
            kind: "qemu",
            memory_mib: 256,
            vcpus: 1,
            machine_type: "pc",
            kernel: Some("/k"),
            initrd: None,
            cmdline: Some("console=ttyS0 hostname=web".into()),
            disk: "/d/disk.qcow2",
            backing: &backing,
            console_log: "/d/console.log",
            ports: &ports,
            labels: &labels,
            network: Some(("net-1", "52:54:00:01:02:03")),
            shares: &[Share {
                kind: "virtiofs".into(),
                source: "/src/a&b".into(),
                tag: "envrig0".into(),
                read_only: true,
                daemon: Some("/usr/libexec/virtiofsd".into()),
            }],
            seed: Some("/d/seed.iso"),
        };
        let xml = d.to_xml().unwrap();
        assert_eq!(
            network_nic(&xml),
            Some(("net-1".to_string(), "52:54:00:01:02:03".to_string()))
        );
        assert!(xml.contains("&lt;b&gt; &amp;"), "{xml}");
        assert!(xml.contains("<source dir=\"/src/a&amp;b\"/>"), "{xml}");
        assert!(xml.contains("<access mode=\"shared\"/>"), "{xml}");
        assert!(xml.contains("<source file=\"/d/seed.iso\"/>"), "{xml}");
        assert_eq!(super::labels(&xml), labels);
        assert_eq!(super::ports(&xml), ports);
        assert!(xml.contains("<seclabel model=\"dac\" relabel=\"no\"/>"));
        // The whole backing chain, nested, ended by an empty backingStore.
        let chain = xml.find("/l/disk.qcow2").unwrap();
        let next = xml.find("/b/disk.qcow2").unwrap();
        assert!(chain < next, "{xml}");
        assert_eq!(
            xml.matches("<backingStore type=\"file\">").count(),
            2,
            "{xml}"
        );
        assert_eq!(xml.matches("<backingStore/>").count(), 1, "{xml}");
    }

    #[test]
    fn snapshot_descriptions_round_trip() {
        let desc = r#"{"a":"<x> & 'y' \"z\""}"#;
        let xml = snapshot("s1", desc).unwrap();
        // libvirt hands the XML back inside a larger document.
        let back = format!(
            "<domainsnapshot>\n  <name>s1</name>\n  {}\n  <domain><description>no</description></domain>\n</domainsnapshot>",
            &xml[xml.find("<description>").unwrap()..xml.find("</domainsnapshot>").unwrap()]
        );
        assert_eq!(snapshot_description(&back).as_deref(), Some(desc));
        assert_eq!(snapshot_description("<domainsnapshot/>"), None);
    }

    #[test]
    fn networks_are_written_and_read_back() {
        let labels = BTreeMap::from([("dev.envrig.env".to_string(), "e1".to_string())]);
        let n = Network {
            name: "shop-1234",
            bridge: "envrig1234abcd",
            labels: &labels,
            address: "198.19.7.1".parse().unwrap(),
            prefix: 24,
            dhcp: (
                "198.19.7.100".parse().unwrap(),
                "198.19.7.200".parse().unwrap(),
            ),
            domain: Some("shop.envrig.internal"),
        };
        let xml = n.to_xml().unwrap();
        assert_eq!(super::labels(&xml), labels);
        assert_eq!(
            network_domain(&xml).as_deref(),
            Some("shop.envrig.internal")
        );
        assert!(xml.contains("localOnly=\"yes\""), "{xml}");
        assert_eq!(
            network_domain("<network><ip address='10.0.0.1'/></network>"),
            None
        );
        assert_eq!(
            qualified(&["db".into(), "web".into()], Some("shop.envrig.internal")),
            [
                "db",
                "web",
                "db.shop.envrig.internal",
                "web.shop.envrig.internal"
            ]
        );
        assert_eq!(qualified(&["db".into()], None), ["db"]);
        assert_eq!(network_ip(&xml), Some(("198.19.7.1".parse().unwrap(), 24)));
        assert!(!xml.contains("forward"), "isolated: {xml}");
        let live = "<network><ip address='10.0.0.1' netmask='255.255.0.0'><dhcp><range start='10.0.0.9' end='10.0.0.20'/><host mac='52:54:00:AA:00:01' name='x' ip='10.0.0.10'/></dhcp></ip></network>";
        assert_eq!(network_ip(live), Some(("10.0.0.1".parse().unwrap(), 16)));
        assert_eq!(
            dhcp_hosts(live),
            vec![(
                "52:54:00:aa:00:01".to_string(),
                "10.0.0.10".parse().unwrap()
            )]
        );
        assert_eq!(
            dns_host("10.0.0.10".parse().unwrap(), &["a".into(), "b<".into()]).unwrap(),
            "<host ip=\"10.0.0.10\"><hostname>a</hostname><hostname>b&lt;</hostname></host>"
        );
    }
}
