//! A private network's XML: written whole from a [`Network`], its DHCP and DNS host
//! entries (added and deleted one by one while it runs), and what envrig reads back from it.

use std::collections::BTreeMap;

use quick_xml::Writer;
use quick_xml::events::Event;

use super::{attr, close, empty, first, metadata, open, text};

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

/// libvirt's namespace for options passed to a network's dnsmasq.
const DNSMASQ_NS: &str = "http://libvirt.org/schemas/network/dnsmasq/1.0";

impl Network<'_> {
    pub fn to_xml(&self) -> std::io::Result<String> {
        let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
        open(&mut w, "network", &[("xmlns:dnsmasq", DNSMASQ_NS)])?;
        text(&mut w, "name", &[], self.name)?;
        metadata(&mut w, self.labels)?;
        empty(
            &mut w,
            "bridge",
            &[("name", self.bridge), ("stp", "off"), ("delay", "0")],
        )?;
        if let Some(d) = self.domain {
            empty(&mut w, "domain", &[("name", d), ("localOnly", "yes")])?;
        }
        let (address, prefix) = (self.address.to_string(), self.prefix.to_string());
        open(&mut w, "ip", &[("address", &address), ("prefix", &prefix)])?;
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
        // The network's DNS answers its machines' names, never the host's /etc/hosts
        // (which names this host, `127.0.0.1 NAME`: a machine of that name would be
        // answered with the guest's own loopback too).
        open(&mut w, "dnsmasq:options", &[])?;
        empty(&mut w, "dnsmasq:option", &[("value", "no-hosts")])?;
        close(&mut w, "dnsmasq:options")?;
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

/// A network's address and prefix (from `prefix` or `netmask`).
pub fn network_ip(xml: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    first(xml, b"ip", |e| {
        let address = attr(e, b"address")?.parse().ok()?;
        let prefix = match (attr(e, b"prefix"), attr(e, b"netmask")) {
            (Some(p), _) => p.parse().ok()?,
            (None, Some(m)) => u32::from(m.parse::<std::net::Ipv4Addr>().ok()?).count_ones() as u8,
            _ => 24,
        };
        Some((address, prefix))
    })
}

/// A network's DNS domain (`<domain name=…>`), if it has one.
pub fn network_domain(xml: &str) -> Option<String> {
    first(xml, b"domain", |e| {
        attr(e, b"name").filter(|n| !n.is_empty())
    })
}

/// A network's DHCP range (`<range start=… end=…>`), if it has one.
pub fn network_dhcp_range(xml: &str) -> Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    first(xml, b"range", |e| {
        Some((
            attr(e, b"start")?.parse().ok()?,
            attr(e, b"end")?.parse().ok()?,
        ))
    })
}

/// The name of a network's bridge (`<bridge name=…>`).
pub fn network_bridge(xml: &str) -> Option<String> {
    first(xml, b"bridge", |e| attr(e, b"name"))
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
