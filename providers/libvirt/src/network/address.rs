//! Address arithmetic for environments' private networks: subnets, which are in use on this
//! host, and a machine's fixed address and MAC.

use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

/// The pool a network's /24 comes from when neither the Envfile nor `ENVRIG_SUBNET_POOL`
/// names one (a benchmarking range, RFC 2544: never routed, rarely used by anything else).
pub const DEFAULT_POOL: &str = "198.19.0.0/16";

/// An IPv4 subnet: its first address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub base: u32,
    pub prefix: u8,
}

impl Subnet {
    /// `198.19.10.0/24`; the base is masked.
    pub fn parse(s: &str) -> Option<Subnet> {
        let (ip, len) = s.trim().split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = len.parse().ok()?;
        if !(8..=30).contains(&prefix) {
            return None;
        }
        Some(Subnet {
            base: u32::from(ip) & mask(prefix),
            prefix,
        })
    }

    pub fn size(self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// The `n`th address of the subnet.
    pub fn host(self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + n)
    }

    pub fn overlaps(self, other: Subnet) -> bool {
        let m = mask(self.prefix.min(other.prefix));
        self.base & m == other.base & m
    }

    /// The host's address (`.1`), the DHCP range for machines without a fixed address (the
    /// upper half), and the fixed addresses machines get (`.10` up to the range).
    pub fn layout(self) -> (Ipv4Addr, (Ipv4Addr, Ipv4Addr), std::ops::Range<u32>) {
        let size = self.size();
        let half = size / 2;
        (
            self.host(1),
            (self.host(half), self.host(size - 2)),
            10.min(half)..half,
        )
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// The subnets this host routes (`/proc/net/route`): Docker's bridges, other networks.
pub fn routed() -> Vec<Subnet> {
    parse_routes(&std::fs::read_to_string("/proc/net/route").unwrap_or_default())
}

fn parse_routes(text: &str) -> Vec<Subnet> {
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
            (m != 0).then(|| Subnet {
                base: dest & m,
                prefix: m.count_ones() as u8,
            })
        })
        .collect()
}

/// The first /24 of `pool` that overlaps nothing in `used`, skipping the first `skip` free
/// ones (a retry after a lost race).
pub fn pick(pool: Subnet, used: &[Subnet], skip: usize) -> Option<Subnet> {
    let prefix = pool.prefix.max(24);
    let step = 1u32 << (32 - prefix);
    let count = pool.size() / step;
    (0..count)
        .map(|i| Subnet {
            base: pool.base + i * step,
            prefix,
        })
        .filter(|s| !used.iter().any(|u| u.overlaps(*s)))
        .nth(skip)
}

/// A machine's MAC on the private network: fixed by its resource name (QEMU's OUI).
pub fn mac_for(resource_name: &str) -> String {
    let h = Sha256::digest(resource_name.as_bytes());
    format!("52:54:00:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2])
}

/// A bridge name for a network (at most 15 characters, as Linux wants).
pub fn bridge_for(network: &str) -> String {
    let h = Sha256::digest(network.as_bytes());
    format!(
        "envrig{}",
        h[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_overlap_and_lay_out() {
        let s = Subnet::parse("198.19.10.7/24").unwrap();
        assert_eq!(s.to_string(), "198.19.10.0/24");
        assert!(s.overlaps(Subnet::parse("198.19.0.0/16").unwrap()));
        assert!(!s.overlaps(Subnet::parse("198.19.11.0/24").unwrap()));
        let (gw, dhcp, fixed) = s.layout();
        assert_eq!(gw.to_string(), "198.19.10.1");
        assert_eq!(dhcp.0.to_string(), "198.19.10.128");
        assert_eq!(dhcp.1.to_string(), "198.19.10.254");
        assert_eq!(fixed, 10..128);
        assert!(Subnet::parse("nonsense").is_none());
        assert!(Subnet::parse("10.0.0.0/31").is_none());
    }

    #[test]
    fn a_free_subnet_avoids_what_is_used() {
        let pool = Subnet::parse("198.19.0.0/16").unwrap();
        let used = [
            Subnet::parse("198.19.0.0/24").unwrap(),
            Subnet::parse("198.19.1.0/25").unwrap(),
        ];
        assert_eq!(pick(pool, &used, 0).unwrap().to_string(), "198.19.2.0/24");
        assert_eq!(pick(pool, &used, 1).unwrap().to_string(), "198.19.3.0/24");
        let full = [pool];
        assert_eq!(pick(pool, &full, 0), None);
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
        assert_eq!(
            parse_routes(text),
            vec![Subnet::parse("198.19.255.0/24").unwrap()]
        );
    }
}
