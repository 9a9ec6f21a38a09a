//! Address arithmetic for environments' private networks: subnets, which are in use on this
//! host, and a machine's fixed address and MAC.

use std::net::Ipv4Addr;

use envrig_provider_api::hash::sha256_hex;
pub use envrig_provider_api::subnet::{DEFAULT_POOL, Ipv4Net, host, pick};
use sha2::{Digest, Sha256};

/// The prefix lengths a private network may have here: a /31 or /32 leaves no room for
/// machines beside the host's address.
pub const PREFIXES: std::ops::RangeInclusive<u8> = 8..=30;

/// `198.19.10.0/24` (masked), if libvirt can use it for a private network.
pub fn parse(s: &str) -> Option<Ipv4Net> {
    envrig_provider_api::subnet::parse(s, PREFIXES)
}

/// The host's address (`.1`), the DHCP range for machines without a fixed address (the
/// third quarter), and the fixed addresses machines get (`.10` up to the range). The last
/// quarter is left to another provider's machines joining the network ([`shared_range`]).
pub fn layout(net: Ipv4Net) -> (Ipv4Addr, (Ipv4Addr, Ipv4Addr), std::ops::Range<u32>) {
    let size = 1u32 << (32 - net.prefix_len());
    let half = size / 2;
    (
        host(net, 1),
        (host(net, half), host(net, size - size / 4 - 1)),
        10.min(half)..half,
    )
}

/// The addresses of `net` left to another provider's machines (its last quarter, as a
/// subnet), when `net` has room for it (a /28 or larger).
pub fn shared_range(net: Ipv4Net) -> Option<Ipv4Net> {
    let prefix = net.prefix_len();
    if prefix > 28 {
        return None;
    }
    let size = 1u32 << (32 - prefix);
    Ipv4Net::new(host(net, size - size / 4), prefix + 2).ok()
}

/// The subnets this host routes (`/proc/net/route`): Docker's bridges, other networks.
pub fn routed() -> Vec<Ipv4Net> {
    parse_routes(&std::fs::read_to_string("/proc/net/route").unwrap_or_default())
}

fn parse_routes(text: &str) -> Vec<Ipv4Net> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(cols.get(1)?, 16).ok()?;
            let m = u32::from_str_radix(cols.get(7)?, 16).ok()?;
            // The kernel prints the address's bytes as a host-order number.
            let dest = u32::from(Ipv4Addr::from(dest.to_ne_bytes()));
            let m = u32::from(Ipv4Addr::from(m.to_ne_bytes()));
            // The default route covers everything and blocks nothing.
            if m == 0 {
                return None;
            }
            Ipv4Net::new(Ipv4Addr::from(dest & m), m.count_ones() as u8).ok()
        })
        .collect()
}

/// A machine's MAC on the private network: fixed by its resource name (QEMU's OUI).
pub fn mac_for(resource_name: &str) -> String {
    let h = Sha256::digest(resource_name.as_bytes());
    format!("52:54:00:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2])
}

/// A bridge name for a network (at most 15 characters, as Linux wants).
pub fn bridge_for(network: &str) -> String {
    format!("envrig{}", &sha256_hex(network.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_lay_out() {
        let s = parse("198.19.10.7/24").unwrap();
        assert_eq!(s.to_string(), "198.19.10.0/24");
        let (gw, dhcp, fixed) = layout(s);
        assert_eq!(gw.to_string(), "198.19.10.1");
        assert_eq!(dhcp.0.to_string(), "198.19.10.128");
        assert_eq!(dhcp.1.to_string(), "198.19.10.191");
        assert_eq!(fixed, 10..128);
        assert_eq!(shared_range(s).unwrap().to_string(), "198.19.10.192/26");
        let small = parse("198.19.10.16/28").unwrap();
        assert_eq!(shared_range(small).unwrap().to_string(), "198.19.10.28/30");
        assert_eq!(layout(small).1.1.to_string(), "198.19.10.27");
        assert!(shared_range(parse("198.19.10.8/29").unwrap()).is_none());
        assert!(parse("nonsense").is_none());
        assert!(parse("10.0.0.0/31").is_none());
    }

    #[test]
    fn names_are_short_and_stable() {
        assert_eq!(bridge_for("a").len(), 14);
        assert_eq!(mac_for("x-1"), mac_for("x-1"));
        assert_ne!(mac_for("x-1"), mac_for("x-2"));
        assert!(mac_for("x").starts_with("52:54:00:"));
    }

    #[test]
    fn routes_are_read_as_the_kernel_prints_them() {
        let text = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    docker0\t00FF13C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_routes(text), vec![parse("198.19.255.0/24").unwrap()]);
    }
}
