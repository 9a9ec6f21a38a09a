//! Box versions as Vagrant box catalogs give them (`1.2.0`, `20250101.0.1`, `2.0-rc1`): which
//! strings are versions, and their order (the store's newest version and a catalog's).

use std::cmp::Ordering;

/// A version: 1 to 32 characters, ASCII letters, digits, `.`, `-` and `+`, starting with a
/// digit.
pub fn valid(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 32
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c))
}

/// Vagrant's order: dot-separated parts compared in turn, each by its leading number, then
/// by what follows it (`1.10` after `1.9`; `2.0-rc1` before `2.0`); a version with more
/// parts is newer unless they are all zeros (`1.0` and `1.0.0` are one version, as RubyGems,
/// whose order Vagrant uses, has them; `2.0.1` is newer than `2.0`).
pub fn compare(a: &str, b: &str) -> Ordering {
    let mut pa = a.split('.');
    let mut pb = b.split('.');
    loop {
        let (x, y) = match (pa.next(), pb.next()) {
            (None, None) => return Ordering::Equal,
            // A missing part is a zero.
            (x, y) => (x.unwrap_or("0"), y.unwrap_or("0")),
        };
        let o = part(x).cmp(&part(y));
        if o != Ordering::Equal {
            return o;
        }
    }
}

/// A part's number and rest; a part with a rest (`0-rc1`) sorts before the bare number.
fn part(p: &str) -> (u64, bool, &str) {
    let digits = p.len() - p.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let n = p[..digits].parse().unwrap_or(0);
    let rest = &p[digits..];
    (n, rest.is_empty(), rest)
}

/// The newest of `versions`.
pub fn newest<'a>(versions: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    versions.into_iter().max_by(|a, b| compare(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_as_vagrant_orders_them() {
        assert_eq!(compare("1.10.0", "1.9.9"), Ordering::Greater);
        assert_eq!(compare("2.0-rc1", "2.0"), Ordering::Less);
        assert_eq!(compare("2.0.1", "2.0"), Ordering::Greater);
        assert_eq!(compare("1.0", "1.0"), Ordering::Equal);
        // Trailing zeros make no other version (RubyGems' order).
        assert_eq!(compare("1.0", "1.0.0"), Ordering::Equal);
        assert_eq!(compare("1.0.0.0", "1"), Ordering::Equal);
        assert_eq!(compare("1.0", "1.0.0-rc1"), Ordering::Greater);
        assert_eq!(compare("1.0.1", "1.0"), Ordering::Greater);
        assert_eq!(newest(["1.0.0", "20250101", "3.1"]), Some("20250101"));
        assert!(valid("1.2.3") && valid("2.0-rc1+b2"));
        assert!(!valid("") && !valid("v1") && !valid("1/2") && !valid(&"1".repeat(33)));
    }
}
