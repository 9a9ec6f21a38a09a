//! What a domain's XML says about the machine a saved memory image can run in: its shape
//! (memory, vCPUs, machine type, CPU, and each device's kind, model and slot), which must be
//! alike for memory saved in one domain to be restored into another, and its NICs' MACs.

use quick_xml::events::Event;

use super::attr;

/// The shape of the domain described by `xml`, one line per thing that must match, in
/// document order: `memory 262144 KiB`, `vcpu 1`, `machine pc-i440fx-10.0`, `cpu qemu64`,
/// then `interface user slot 0x00:0x03.0x0 model virtio`, one per device. Names, paths,
/// MACs, labels, port forwards and sources are not part of it: they may differ.
pub fn shape(xml: &str) -> Vec<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = Vec::new();
    // The element path from the root, and the device being read (its line so far).
    let mut path: Vec<String> = Vec::new();
    let mut device: Option<String> = None;
    let mut memory_unit = String::new();
    loop {
        let (e, empty) = match reader.read_event() {
            Ok(Event::Start(e)) => (e, false),
            Ok(Event::Empty(e)) => (e, true),
            Ok(Event::Text(t)) => {
                let text = t.decode().map(|s| s.trim().to_string()).unwrap_or_default();
                let at: Vec<&str> = path.iter().map(String::as_str).collect();
                match at.as_slice() {
                    ["domain", "memory"] => out.push(format!("memory {text} {memory_unit}")),
                    ["domain", "vcpu"] => out.push(format!("vcpu {text}")),
                    ["domain", "cpu", "model"] => out.push(format!("cpu model {text}")),
                    _ => {}
                }
                continue;
            }
            Ok(Event::End(_)) => {
                if path.len() == 3
                    && path[1] == "devices"
                    && let Some(d) = device.take()
                {
                    out.push(d);
                }
                path.pop();
                continue;
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => continue,
        };
        let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
        let at: Vec<&str> = path.iter().map(String::as_str).collect();
        match at.as_slice() {
            ["domain"] if name == "memory" => {
                memory_unit = attr(&e, b"unit").unwrap_or_else(|| "KiB".into());
            }
            ["domain", "os"] if name == "type" => {
                out.push(format!(
                    "machine {} {}",
                    attr(&e, b"arch").unwrap_or_default(),
                    attr(&e, b"machine").unwrap_or_default()
                ));
            }
            ["domain"] if name == "cpu" => {
                out.push(format!(
                    "cpu mode {}",
                    attr(&e, b"mode").unwrap_or_default()
                ));
            }
            ["domain", "devices"] => {
                let mut line = name.clone();
                for k in [&b"type"[..], b"model", b"index", b"bus", b"device"] {
                    if let Some(v) = attr(&e, k) {
                        line.push_str(&format!(" {}={v}", String::from_utf8_lossy(k)));
                    }
                }
                if empty {
                    out.push(line);
                } else {
                    device = Some(line);
                }
            }
            [_, "devices", _] => {
                if let Some(d) = &mut device {
                    match name.as_str() {
                        "address" => {
                            for k in [&b"type"[..], b"bus", b"slot", b"function", b"controller"] {
                                if let Some(v) = attr(&e, k) {
                                    d.push_str(&format!(
                                        " addr.{}={v}",
                                        String::from_utf8_lossy(k)
                                    ));
                                }
                            }
                        }
                        "model" | "target" | "backend" => {
                            if let Some(v) = attr(&e, b"type").or_else(|| attr(&e, b"name")) {
                                d.push_str(&format!(" {name}={v}"));
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        if !empty {
            path.push(name);
        }
    }
    out
}

/// The MACs of the domain's NICs, in order, each with its NIC's type (`user`, `network`).
pub fn nic_macs(xml: &str) -> Vec<(String, String)> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = Vec::new();
    let mut nic: Option<String> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == b"interface" => {
                nic = Some(attr(&e, b"type").unwrap_or_default());
            }
            Ok(Event::End(e)) if e.local_name().as_ref() == b"interface" => nic = None,
            Ok(Event::Empty(e)) | Ok(Event::Start(e)) if e.local_name().as_ref() == b"mac" => {
                if let (Some(kind), Some(mac)) = (&nic, attr(&e, b"address")) {
                    out.push((kind.clone(), mac.to_lowercase()));
                }
            }
            Ok(Event::Eof) | Err(_) => return out,
            _ => {}
        }
    }
}

/// The private-network NIC of live domain XML `xml` (as libvirt wrote it) with its link
/// `up` or down, for `virDomainUpdateDeviceFlags`; `None` when it has no such NIC.
pub fn network_nic_link(xml: &str, up: bool) -> Option<String> {
    let start = xml
        .find("<interface type='network'")
        .or_else(|| xml.find("<interface type=\"network\""))?;
    let end = start + xml[start..].find("</interface>")? + "</interface>".len();
    let nic = &xml[start..end];
    // Without any `<link .../>` it had, then with the one wanted.
    let mut out = String::with_capacity(nic.len() + 32);
    let mut rest = nic;
    while let Some(at) = rest.find("<link ") {
        out.push_str(&rest[..at]);
        let close = rest[at..].find("/>")?;
        rest = &rest[at + close + 2..];
    }
    out.push_str(rest);
    let state = if up { "up" } else { "down" };
    let tail = out.rfind("</interface>")?;
    out.insert_str(tail, &format!("<link state='{state}'/>"));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"<domain type='qemu'>
  <name>a</name><uuid>1</uuid>
  <memory unit='KiB'>262144</memory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-10.0'>hvm</type><kernel>/x/vmlinuz</kernel></os>
  <cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>
  <devices>
    <disk type='file' device='disk'><source file='/a/disk.qcow2'/><target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/></disk>
    <interface type='user'><mac address='52:54:00:8C:AD:53'/><portForward proto='tcp'/>
      <model type='virtio'/><address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/></interface>
    <interface type='network'><mac address='52:54:00:e9:9d:f1'/><source network='n1'/>
      <model type='virtio'/><address type='pci' domain='0x0000' bus='0x00' slot='0x06' function='0x0'/></interface>
    <rng model='virtio'/>
  </devices>
</domain>"#;

    #[test]
    fn names_paths_macs_and_sources_are_not_shape() {
        let b = A
            .replace(
                "<name>a</name><uuid>1</uuid>",
                "<name>b</name><uuid>2</uuid>",
            )
            .replace("/a/disk.qcow2", "/b/disk.qcow2")
            .replace("52:54:00:e9:9d:f1", "52:54:00:00:00:01")
            .replace("network='n1'", "network='n2'");
        assert_eq!(shape(A), shape(&b));
        let s = shape(A);
        assert!(s.contains(&"memory 262144 KiB".to_string()), "{s:?}");
        assert!(
            s.contains(&"machine x86_64 pc-i440fx-10.0".to_string()),
            "{s:?}"
        );
        assert!(
            s.iter()
                .any(|l| l.starts_with("interface type=network") && l.contains("addr.slot=0x06")),
            "{s:?}"
        );
    }

    #[test]
    fn memory_devices_and_slots_are_shape() {
        for changed in [
            A.replace("262144", "524288"),
            A.replace("pc-i440fx-10.0", "pc-q35-10.0"),
            A.replace("slot='0x06'", "slot='0x07'"),
            A.replace("<rng model='virtio'/>", ""),
            A.replace("qemu64", "host"),
        ] {
            assert_ne!(shape(A), shape(&changed));
        }
    }

    #[test]
    fn the_private_nic_link_is_set_and_nothing_else() {
        let down = network_nic_link(A, false).unwrap();
        assert!(down.starts_with("<interface type='network'>"), "{down}");
        assert!(down.ends_with("<link state='down'/></interface>"), "{down}");
        assert!(down.contains("52:54:00:e9:9d:f1") && !down.contains("portForward"));
        let up = network_nic_link(&down.replace("<interface", "<x/><interface"), true).unwrap();
        assert_eq!(up.matches("<link ").count(), 1, "{up}");
        assert!(up.contains("<link state='up'/>"));
        assert_eq!(network_nic_link("<domain/>", true), None);
    }

    #[test]
    fn macs_in_order_lowercase() {
        assert_eq!(
            nic_macs(A),
            vec![
                ("user".to_string(), "52:54:00:8c:ad:53".to_string()),
                ("network".to_string(), "52:54:00:e9:9d:f1".to_string())
            ]
        );
    }
}
