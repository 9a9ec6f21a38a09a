//! IPv4 subnets for environments' private networks: reading them, telling whether two
//! overlap, and picking a free /24 from a pool. Every provider that makes networks picks the
//! same way, so one Envfile gets the same subnet whichever engine runs it.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

pub use ipnet::Ipv4Net;

/// The pool a network's /24 comes from when neither the Envfile nor `ENVRIG_SUBNET_POOL`
/// names one (a benchmarking range, RFC 2544: never routed, rarely used by anything else).
pub const DEFAULT_POOL: &str = "198.19.0.0/16";

/// `198.19.10.7/24` as the subnet `198.19.10.0/24`, if its prefix length is in `prefixes`.
/// Blanks around it are allowed.
pub fn parse(s: &str, prefixes: RangeInclusive<u8>) -> Option<Ipv4Net> {
    let (ip, len) = s.trim().split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let prefix: u8 = len.parse().ok()?;
    if !prefixes.contains(&prefix) {
        return None;
    }
    Some(Ipv4Net::new(ip, prefix).ok()?.trunc())
}

/// Whether two subnets share an address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b) || b.contains(&a)
}

/// The first /24 of `pool` (the pool itself when it is smaller) that overlaps nothing in
/// `used`, skipping the first `skip` free ones (a retry after a lost race).
pub fn pick(pool: Ipv4Net, used: &[Ipv4Net], skip: usize) -> Option<Ipv4Net> {
    let pool = pool.trunc();
    pool.subnets(pool.prefix_len().max(24))
        .ok()?
        .filter(|s| !used.iter().any(|u| overlaps(*u, *s)))
        .nth(skip)
}

/// The `n`th address of `net`.
pub fn host(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        parse(s, 0..=32).unwrap()
    }

    #[test]
    fn subnets_parse_masked_and_overlap() {
        let s = net("198.19.10.7/24");
        assert_eq!(s.to_string(), "198.19.10.0/24");
        assert_eq!(parse(" 198.19.10.0/24\n", 8..=30), Some(s));
        assert!(overlaps(s, net("198.19.0.0/16")));
        assert!(overlaps(net("198.19.0.0/16"), s));
        assert!(!overlaps(s, net("198.19.11.0/24")));
        assert_eq!(host(s, 1).to_string(), "198.19.10.1");
        assert_eq!(parse("nonsense", 8..=30), None);
        assert_eq!(parse("10.0.0.0/31", 8..=30), None);
        assert_eq!(parse("10.0.0.0/33", 0..=255), None);
        assert_eq!(parse("10.0.0.0/28", 8..=24), None);
    }

    #[test]
    fn a_free_subnet_avoids_what_is_used() {
        let pool = net("198.19.0.0/16");
        let used = [net("198.19.0.0/24"), net("198.19.1.0/25")];
        assert_eq!(pick(pool, &used, 0).unwrap().to_string(), "198.19.2.0/24");
        assert_eq!(pick(pool, &used, 1).unwrap().to_string(), "198.19.3.0/24");
        assert_eq!(pick(pool, &[pool], 0), None);
        // A pool written with host bits starts at its network; a pool smaller than a /24
        // is picked whole.
        assert_eq!(
            pick(net("198.18.7.9/15"), &[], 0).unwrap().to_string(),
            "198.18.0.0/24"
        );
        let small = net("10.1.2.16/28");
        assert_eq!(pick(small, &[], 0), Some(small));
        assert_eq!(pick(small, &[net("10.0.0.0/8")], 0), None);
        // A used subnet with host bits (as an engine may report it) still blocks its range.
        let used = [Ipv4Net::new(Ipv4Addr::new(198, 19, 0, 5), 23).unwrap()];
        assert_eq!(pick(pool, &used, 0).unwrap().to_string(), "198.19.2.0/24");
    }
}
