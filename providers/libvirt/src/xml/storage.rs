//! Storage XML for a remote libvirt host (`remote/`): envrig's `dir` pool there, its
//! volumes (boxes, overlays backed by a box, small files), and what envrig reads back (a volume's
//! modification time).

use quick_xml::Writer;
use quick_xml::events::Event;

use super::{close, empty, open, text};

/// A `dir` storage pool named `name` in the folder `path` of its host.
pub fn pool(name: &str, path: &str) -> std::io::Result<String> {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    open(&mut w, "pool", &[("type", "dir")])?;
    text(&mut w, "name", &[], name)?;
    open(&mut w, "target", &[])?;
    text(&mut w, "path", &[], path)?;
    // QEMU (its own user on the host) reaches the boxes inside.
    open(&mut w, "permissions", &[])?;
    text(&mut w, "mode", &[], "0755")?;
    close(&mut w, "permissions")?;
    close(&mut w, "target")?;
    close(&mut w, "pool")?;
    String::from_utf8(w.into_inner()).map_err(std::io::Error::other)
}

/// A file volume of a `dir` pool.
#[derive(Debug, Clone)]
pub struct Volume<'a> {
    pub name: &'a str,
    /// Bytes (a raw volume: its file's size; a qcow2 one: the disk's virtual size).
    pub capacity: u64,
    /// `raw` (bytes kept as they are sent: boxes, kernels, small files) or `qcow2`.
    pub format: &'a str,
    /// The file's mode: `0644` for what every machine's QEMU reads (boxes, kernels).
    pub mode: &'a str,
    /// The qcow2 disk a `qcow2` volume is an overlay on (a path on the pool's host).
    pub backing: Option<&'a str>,
}

impl Volume<'_> {
    pub fn to_xml(&self) -> std::io::Result<String> {
        let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
        open(&mut w, "volume", &[("type", "file")])?;
        text(&mut w, "name", &[], self.name)?;
        let capacity = self.capacity.to_string();
        text(&mut w, "capacity", &[("unit", "bytes")], &capacity)?;
        // Sparse: nothing is allocated before it is written.
        text(&mut w, "allocation", &[("unit", "bytes")], "0")?;
        open(&mut w, "target", &[])?;
        empty(&mut w, "format", &[("type", self.format)])?;
        open(&mut w, "permissions", &[])?;
        text(&mut w, "mode", &[], self.mode)?;
        close(&mut w, "permissions")?;
        close(&mut w, "target")?;
        if let Some(b) = self.backing {
            open(&mut w, "backingStore", &[])?;
            text(&mut w, "path", &[], b)?;
            empty(&mut w, "format", &[("type", "qcow2")])?;
            close(&mut w, "backingStore")?;
        }
        close(&mut w, "volume")?;
        String::from_utf8(w.into_inner()).map_err(std::io::Error::other)
    }
}

/// The text of the first element named `name` in `xml`.
fn first_text(xml: &str, name: &[u8]) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut inside = false;
    let mut out = String::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == name => inside = true,
            Ok(Event::Text(t)) if inside => out.push_str(&t.decode().ok()?),
            // quick-xml reports entity references apart from the text around them.
            Ok(Event::GeneralRef(r)) if inside => match r.resolve_char_ref() {
                Ok(Some(c)) => out.push(c),
                _ => out.push_str(match r.as_ref() {
                    b"lt" => "<",
                    b"gt" => ">",
                    b"amp" => "&",
                    b"quot" => "\"",
                    b"apos" => "'",
                    _ => return None,
                }),
            },
            Ok(Event::End(e)) if inside && e.local_name().as_ref() == name => {
                return Some(out.trim().to_string());
            }
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

/// The path of the disk a qcow2 volume is an overlay on (its `<backingStore><path>`).
pub fn backing_path(xml: &str) -> Option<String> {
    let from = xml.find("<backingStore")?;
    first_text(&xml[from..], b"path")
}

/// A file volume's modification time, in seconds since the epoch.
pub fn volume_mtime(xml: &str) -> Option<f64> {
    first_text(xml, b"mtime")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_and_volumes_are_written_and_read_back() {
        let p = pool("envrig", "/var/lib/libvirt/images/envrig-pool").unwrap();
        assert!(p.contains("<pool type=\"dir\">"), "{p}");
        assert!(
            p.contains("<path>/var/lib/libvirt/images/envrig-pool</path>"),
            "{p}"
        );
        let v = Volume {
            name: "vm-1.qcow2",
            capacity: 1 << 30,
            format: "qcow2",
            mode: "0600",
            backing: Some("/pool/envrig-box-ab<&.qcow2"),
        }
        .to_xml()
        .unwrap();
        assert!(
            v.contains("<capacity unit=\"bytes\">1073741824</capacity>"),
            "{v}"
        );
        assert!(
            v.contains("<path>/pool/envrig-box-ab&lt;&amp;.qcow2</path>"),
            "{v}"
        );
        let raw = Volume {
            name: "b",
            capacity: 3,
            format: "raw",
            mode: "0644",
            backing: None,
        }
        .to_xml()
        .unwrap();
        assert!(!raw.contains("backingStore"), "{raw}");
        let dumped = "<volume type='file'><name>x</name><target><path>/p/x</path>\
            <timestamps><atime>1.5</atime><mtime>1733470000.25</mtime></timestamps>\
            </target></volume>";
        assert_eq!(volume_mtime(dumped), Some(1_733_470_000.25));
        assert_eq!(volume_mtime("<volume/>"), None);
        assert_eq!(
            backing_path(&v).as_deref(),
            Some("/pool/envrig-box-ab<&.qcow2")
        );
        assert_eq!(backing_path(&raw), None);
    }
}
