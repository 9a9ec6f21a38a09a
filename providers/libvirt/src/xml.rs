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
    /// The box the disk is an overlay on; `None` for a disk of its own (an imported one).
    pub backing: Option<&'a str>,
    pub console_log: &'a str,
    pub ports: &'a [PortSpec],
    pub labels: &'a BTreeMap<String, String>,
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
        if let Some(backing) = self.backing {
            open(&mut w, "backingStore", &[("type", "file")])?;
            empty(&mut w, "format", &[("type", "qcow2")])?;
            open(&mut w, "source", &[("file", backing)])?;
            empty(&mut w, "seclabel", &[("model", "dac"), ("relabel", "no")])?;
            close(&mut w, "source")?;
            empty(&mut w, "backingStore", &[])?;
            close(&mut w, "backingStore")?;
        }
        empty(&mut w, "target", &[("dev", "vda"), ("bus", "virtio")])?;
        close(&mut w, "disk")?;
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
            backing: Some("/b/disk.qcow2"),
            console_log: "/d/console.log",
            ports: &ports,
            labels: &labels,
        };
        let xml = d.to_xml().unwrap();
        assert!(xml.contains("&lt;b&gt; &amp;"), "{xml}");
        assert_eq!(super::labels(&xml), labels);
        assert_eq!(super::ports(&xml), ports);
        assert!(xml.contains("<seclabel model=\"dac\" relabel=\"no\"/>"));
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
}
