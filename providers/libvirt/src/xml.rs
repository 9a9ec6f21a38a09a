//! Libvirt's XML, written with an XML writer (every value escaped, never pasted into a
//! string) and read back with a reader: domains (`xml/domain.rs`), networks and their DHCP
//! and DNS entries (`xml/network.rs`), snapshots (`xml/snapshot.rs`), a remote host's
//! storage pool and volumes (`xml/storage.rs`), and here the envrig labels every domain and
//! network carries in its `<metadata>`.

use std::collections::BTreeMap;

use quick_xml::Writer;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};

mod domain;
mod network;
mod shape;
mod snapshot;
pub mod storage;

pub use domain::{Cpu, Domain, Share, cpu_modes, graphics_types, network_nic, ports, video_models};
pub use network::{
    Network, dhcp_host, dhcp_hosts, dns_host, dns_host_named, network_bridge, network_dhcp_range,
    network_domain, network_ip, qualified,
};
pub use shape::{network_nic_link, nic_macs, shape};
pub use snapshot::{snapshot, snapshot_description};

/// The namespace of envrig's `<metadata>` element.
pub const NS: &str = "https://envrig.dev/xmlns/labels/1";

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

/// An element holding one empty element: `<name attrs><child attrs/></name>`.
fn holding(
    w: &mut W,
    (name, attrs): (&str, &[(&str, &str)]),
    (child, child_attrs): (&str, &[(&str, &str)]),
) -> std::io::Result<()> {
    open(w, name, attrs)?;
    empty(w, child, child_attrs)?;
    close(w, name)
}

fn text(w: &mut W, name: &str, attrs: &[(&str, &str)], body: &str) -> std::io::Result<()> {
    open(w, name, attrs)?;
    w.write_event(Event::Text(BytesText::new(body)))?;
    close(w, name)
}

/// envrig's labels in a `<metadata>` element (a domain's or a network's).
fn metadata(w: &mut W, labels: &BTreeMap<String, String>) -> std::io::Result<()> {
    open(w, "metadata", &[])?;
    open(w, "envrig:labels", &[("xmlns:envrig", NS)])?;
    for (k, v) in labels {
        empty(w, "envrig:label", &[("name", k), ("value", v)])?;
    }
    close(w, "envrig:labels")?;
    close(w, "metadata")
}

/// The attribute `key` of an element, unescaped.
fn attr(e: &BytesStart<'_>, key: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == key)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

/// What `f` reads from the first element named `name` (in any namespace) of `xml`.
fn first<T>(xml: &str, name: &[u8], f: impl FnOnce(&BytesStart<'_>) -> Option<T>) -> Option<T> {
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) if e.local_name().as_ref() == name => {
                return f(&e);
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
                if let (Some(n), Some(v)) = (attr(&e, b"name"), attr(&e, b"value")) {
                    out.insert(n, v);
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
