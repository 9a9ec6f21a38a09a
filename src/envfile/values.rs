//! Parsers for the Envfile's value syntaxes: names, sizes, durations, ports, subnets.
//! Each returns a message saying what was expected, for the diagnostic.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use envrig_provider_api::subnet::Ipv4Net;
use envrig_provider_api::{PortSpec, Protocol};

/// A validated machine or project name: `^[a-z][a-z0-9-]{0,62}$`. Nothing downstream takes a
/// bare string, so nothing user-written reaches a container name or a shell line unchecked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    pub fn parse(s: &str) -> Result<Name, String> {
        let mut chars = s.chars();
        let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && s.len() <= 63
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Name(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a valid name: use 1 to 63 characters of a-z, 0-9 and `-`, starting \
                 with a letter"
            ))
        }
    }

    /// A name derived from a folder: lower-cased, other characters turned into `-`.
    pub fn from_folder(folder: &str) -> Name {
        let mut s = String::new();
        for c in folder.chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                s.push(c);
            } else if !s.ends_with('-') {
                s.push('-');
            }
        }
        let s = s.trim_matches('-');
        let mut s = if s.starts_with(|c: char| c.is_ascii_lowercase()) {
            s.to_string()
        } else {
            format!("env-{s}")
        };
        s.truncate(63);
        let s = s.trim_end_matches('-').to_string();
        Name(if s.is_empty() { "env".to_string() } else { s })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `512MiB`, `1GiB`, `1.5GiB`, `100MB`: binary units for KiB/MiB/GiB/TiB, decimal for
/// KB/MB/GB/TB, bytes for B.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let expected = || {
        format!(
            "`{s}` is not a size: write a number and a unit, like \"512MiB\" or \"2GiB\" (units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
        )
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(expected)?;
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let mult: f64 = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0f64.powi(4),
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return Err(expected()),
    };
    let n: f64 = num.parse().map_err(|_| expected())?;
    let bytes = n * mult;
    if !bytes.is_finite() || !(1.0..=1e15).contains(&bytes) {
        return Err(expected());
    }
    Ok(bytes.round() as u64)
}

/// A size for humans: `512MiB`, `1GiB`, `1.5GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, m) in UNITS {
        if bytes >= m {
            let v = bytes as f64 / m as f64;
            return if bytes.is_multiple_of(m) {
                format!("{}{unit}", bytes / m)
            } else {
                format!("{v:.1}{unit}")
            };
        }
    }
    format!("{bytes}B")
}

/// The longest duration envrig takes: 100 years. Longer ones mean nothing for a dev
/// environment, and added to a time they overflow what dates can be written as.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// `60s`, `2h`, `1h 30m`, `500ms`; at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|_| {
        format!(
            "`{s}` is not a duration: write a number and a unit, like \"60s\", \"5m\" or \"2h\""
        )
    })?;
    if d > MAX_DURATION {
        return Err(format!(
            "`{s}` is too long: a duration is at most 100 years (\"100y\")"
        ));
    }
    Ok(d)
}

/// `HOST:GUEST`, `ADDR:HOST:GUEST`, each optionally followed by `/tcp` or `/udp`. IPv6
/// addresses are written in brackets: `[::1]:8080:80`. The host side binds 127.0.0.1
/// unless an address is given.
pub fn parse_port(s: &str) -> Result<PortSpec, String> {
    let expected = || {
        format!(
            "`{s}` is not a port mapping: write \"HOST:GUEST\" or \"ADDRESS:HOST:GUEST\", \
             optionally with \"/tcp\" or \"/udp\", like \"8080:80\" or \"0.0.0.0:8443:443/tcp\""
        )
    };
    let (body, protocol) = match s.rsplit_once('/') {
        Some((b, "tcp")) => (b, Protocol::Tcp),
        Some((b, "udp")) => (b, Protocol::Udp),
        Some(_) => return Err(expected()),
        None => (s, Protocol::Tcp),
    };
    let (addr, ports) = if let Some(rest) = body.strip_prefix('[') {
        let (ip, rest) = rest.split_once("]:").ok_or_else(expected)?;
        (Some(ip), rest)
    } else {
        match body.matches(':').count() {
            1 => (None, body),
            2 => {
                let (ip, rest) = body.split_once(':').ok_or_else(expected)?;
                (Some(ip), rest)
            }
            _ => return Err(expected()),
        }
    };
    let host_ip = match addr {
        Some(ip) => ip
            .parse::<IpAddr>()
            .map_err(|_| format!("`{ip}` in `{s}` is not an IP address"))?
            .to_string(),
        None => "127.0.0.1".to_string(),
    };
    let (host, guest) = ports.split_once(':').ok_or_else(expected)?;
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{p}` in `{s}` is not a port number (1-65535)")),
        }
    };
    Ok(PortSpec {
        host_ip,
        host_port: port(host)?,
        guest_port: port(guest)?,
        protocol,
    })
}

/// An IPv4 subnet in CIDR notation, `/8` to `/29`, written as its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Whether `s` (the part of a reference before its first `/`) is a registry host: letters,
/// digits, `.`, `-`, a port, brackets of an IPv6 address; a dot or a port, or `localhost`
/// (else it is the first part of a repository on Docker Hub).
pub fn is_registry_host(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '[')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        && (s.contains(['.', ':']) || s == "localhost")
}

/// A layer cache's place: `REGISTRY/REPOSITORY` (a registry host with an optional port,
/// then one or more lowercase path parts), with no tag or digest: envrig names the tags.
pub fn parse_cache(s: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "`{s}` is not a registry repository ({why}): write it like \"registry.example:5000/team/envrig-cache\""
        )
    };
    let (registry, repo) = s.split_once('/').ok_or_else(|| bad("no registry"))?;
    if !is_registry_host(registry) {
        return Err(bad(
            "the part before the first `/` must be a registry host, with a dot or a port",
        ));
    }
    if repo.contains(['@', ':']) {
        return Err(bad("no tag or digest: envrig tags each layer itself"));
    }
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            })
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !repo.split('/').all(part_ok) || s.len() > 200 {
        return Err(bad(
            "lowercase letters, digits, `.`, `_`, `-` between slashes",
        ));
    }
    Ok(s.to_string())
}

pub fn parse_subnet(s: &str) -> Result<Subnet, String> {
    let expected = || format!("`{s}` is not an IPv4 subnet: write it like \"198.19.10.0/24\"");
    let (a, p) = s.split_once('/').ok_or_else(expected)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| expected())?;
    let prefix: u8 = p.parse().map_err(|_| expected())?;
    if !(8..=29).contains(&prefix) {
        return Err(format!("`{s}`: the prefix length must be between 8 and 29"));
    }
    let net = Ipv4Net::new(addr, prefix).map_err(|_| expected())?.trunc();
    if net.network() != addr {
        return Err(format!(
            "`{s}` is not a network address; did you mean \"{net}\"?"
        ));
    }
    Ok(Subnet { addr, prefix })
}

/// A hostname: dot-separated labels of a-z, 0-9 and `-`, 1 to 63 characters each.
pub fn check_hostname(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a valid hostname: use labels of a-z, 0-9 and `-` separated by dots"
        ))
    }
}

/// A user inside a machine: a POSIX user name or a numeric uid (optionally `uid:gid`).
pub fn check_user(s: &str) -> Result<(), String> {
    let name_ok = |n: &str| {
        n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
            && n.len() <= 32
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    };
    let ok = match s.split_once(':') {
        Some((u, g)) => name_ok(u) && name_ok(g),
        None => name_ok(s),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("`{s}` is not a user name or uid"))
    }
}

/// An environment variable name.
pub fn check_env_name(s: &str) -> Result<(), String> {
    let ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("`{s}` is not a valid environment variable name"))
    }
}

/// A Docker image reference: no spaces, no control characters, a plausible shape.
pub fn check_image_ref(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 512
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not an image reference like \"debian:12\" or \"registry.example/app@sha256:...\""
        ))
    }
}

#[cfg(test)]
mod cache_tests {
    use super::parse_cache;

    #[test]
    fn a_cache_is_a_registry_and_a_repository_without_a_tag() {
        for ok in [
            "127.0.0.1:5000/team/cache",
            "registry.example/envrig",
            "localhost/a.b_c-d/e",
        ] {
            assert_eq!(parse_cache(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "cache",
            "team/cache",
            "127.0.0.1:5000/Team",
            "127.0.0.1:5000/c:tag",
            "127.0.0.1:5000/c@sha256:00",
            "127.0.0.1:5000/",
            "127.0.0.1:5000/a//b",
            "reg.example/a b",
        ] {
            assert!(parse_cache(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(Name::parse("web").is_ok());
        assert!(Name::parse("web-2").is_ok());
        for bad in [
            "",
            "Web",
            "2web",
            "web_1",
            "we b",
            "a;rm -rf",
            &"a".repeat(64),
        ] {
            assert!(Name::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(Name::from_folder("My Project_2").as_str(), "my-project-2");
        assert_eq!(Name::from_folder("2048").as_str(), "env-2048");
        assert_eq!(Name::from_folder("___").as_str(), "env");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("64 KiB"), Ok(65536));
        for bad in ["512", "MiB", "1XB", "-1GiB", "0B", ""] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_size(512 << 20), "512MiB");
        assert_eq!(format_size(3 << 29), "1.5GiB");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("100y"), Ok(MAX_DURATION));
        for long in ["101y", "10000y", "584942417355y", "99999999999999999999s"] {
            let e = parse_duration(long).unwrap_err();
            assert!(
                e.contains("at most 100 years") || e.contains("not a duration"),
                "{e}"
            );
        }
        assert!(parse_duration("10000y").unwrap_err().contains("too long"));
    }

    #[test]
    fn ports() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!(
            (p.host_ip.as_str(), p.host_port, p.guest_port),
            ("127.0.0.1", 8080, 80)
        );
        let p = parse_port("0.0.0.0:8443:443/tcp").unwrap();
        assert_eq!(
            (p.host_ip.as_str(), p.host_port, p.guest_port),
            ("0.0.0.0", 8443, 443)
        );
        let p = parse_port("[::1]:53:53/udp").unwrap();
        assert_eq!((p.host_ip.as_str(), p.protocol), ("::1", Protocol::Udp));
        for bad in ["80", "0:80", "8080:70000", "x:1:2", "1:2/sctp", "1:2:3:4"] {
            assert!(parse_port(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subnets_hostnames_users() {
        assert!(parse_subnet("198.19.10.0/24").is_ok());
        assert!(
            parse_subnet("198.19.10.1/24")
                .unwrap_err()
                .contains("198.19.10.0/24")
        );
        assert!(parse_subnet("198.19.10.0/31").is_err());
        assert!(check_hostname("web.local").is_ok());
        assert!(check_hostname("-web").is_err());
        assert!(check_user("root").is_ok());
        assert!(check_user("1000:1000").is_ok());
        assert!(check_user("root; reboot").is_err());
        assert!(check_image_ref("127.0.0.1:5000/a/b:tag").is_ok());
        assert!(check_image_ref("debian 12").is_err());
    }
}
