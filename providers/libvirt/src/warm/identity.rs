//! What makes a restored machine one of its own, run inside it through the guest agent: the
//! scripts (MACs, clock, lease; for a clone its hostname, machine-id, SSH host key), what the
//! host makes for a clone, and its drift baseline patched over its layer's listing.

use std::io::Read;

use crate::exec::sh_quote;

/// Renews the lease of the NIC whose MAC is `mac` (the private one: its fixed address is
/// its new MAC's) with busybox udhcpc, systemd-networkd or dhclient, once its link is up
/// (after the script), in the background.
pub(super) fn renew_script(mac: &str) -> String {
    format!(
        r#"(m={mac}; n=; i=0
while [ $i -lt 200 ]; do for d in /sys/class/net/*; do [ "$(cat "$d/address" 2>/dev/null)" = "$m" ] && n=${{d##*/}}; done; [ -n "$n" ] && [ "$(cat "/sys/class/net/$n/carrier" 2>/dev/null)" = 1 ] && break; i=$((i+1)); sleep 0.05; done
[ -n "$n" ] || exit 0
f=/run/udhcpc.$n.pid; [ -r "$f" ] && p=$(cat "$f") && kill -USR2 "$p" && kill -USR1 "$p"
command -v networkctl >/dev/null 2>&1 && networkctl reconfigure "$n"
if command -v dhclient >/dev/null 2>&1 && pgrep -x dhclient >/dev/null 2>&1; then dhclient -r "$n"; dhclient "$n"; fi
) >/dev/null 2>&1 </dev/null &
"#,
        mac = sh_quote(mac)
    )
}

/// Paths the re-identification of a clone writes (and the lease renewal, for a busybox
/// guest): listed again after it, over the layer's listing, for its drift baseline.
pub(super) const TOUCHED: [&str; 9] = [
    "/etc/machine-id",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/ssh",
    "/etc/dropbear",
    "/root/.ssh",
    "/home/vagrant/.ssh",
    "/var/lib/dbus",
];

/// `base` (a listing as `drift::LIST_SCRIPT` prints it) with every path under `roots`
/// replaced by `patch` (a listing of those paths taken later).
pub(super) fn patched_listing(base: &str, roots: &[&str], patch: &str) -> String {
    let under = |p: &str| {
        roots
            .iter()
            .any(|r| p == *r || p.strip_prefix(r).is_some_and(|rest| rest.starts_with('/')))
    };
    let mut out: String = base
        .lines()
        .filter(|l| !under(l.split('\t').next().unwrap_or_default()))
        .flat_map(|l| [l, "\n"])
        .collect();
    for l in patch
        .lines()
        .filter(|l| under(l.split('\t').next().unwrap_or_default()))
    {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// What a clone gets from the host's random source: a machine-id, an Ed25519 SSH host key
/// (OpenSSH's format; a dropbear guest converts it), and bytes mixed into its pool.
pub(crate) struct HostMade {
    pub(super) public: russh::keys::PublicKey,
    machine_id: String,
    host_key: String,
    host_key_pub: String,
    entropy: String,
}

impl HostMade {
    pub(super) fn new() -> std::io::Result<HostMade> {
        use russh::keys::ssh_key::{LineEnding, PrivateKey, private::Ed25519Keypair};
        let mut bytes = [0u8; 16 + 32 + 64];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[16..48]);
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        key.set_comment("root@envrig-clone");
        let host_key = key
            .to_openssh(LineEnding::LF)
            .map_err(std::io::Error::other)?
            .to_string();
        Ok(HostMade {
            public: key.public_key().clone(),
            machine_id: hex(&bytes[..16]),
            host_key_pub: crate::ssh::public_line(key.public_key())?,
            host_key,
            entropy: hex(&bytes[48..]),
        })
    }
}

/// The script that makes a restored machine one of its own: `pairs` are `OLD=NEW` MACs,
/// `now` the host's clock in seconds since the epoch, and for a clone its hostname and what
/// the host made for it.
pub(super) fn reidentify_script(
    pairs: &[String],
    now: u64,
    clone: Option<(&str, &HostMade)>,
    private_mac: Option<&str>,
) -> String {
    let pairs: Vec<String> = pairs.iter().map(|p| sh_quote(p)).collect();
    let mut out = format!(
        r#"set -u
date -u -s "@{now}" >/dev/null 2>&1
for pair in {pairs}; do
  old=${{pair%%=*}}; new=${{pair#*=}}
  [ "$old" = "$new" ] && continue
  for d in /sys/class/net/*; do
    [ "$(cat "$d/address" 2>/dev/null)" = "$old" ] || continue
    n=${{d##*/}}
    ip link set dev "$n" down && ip link set dev "$n" address "$new" && ip link set dev "$n" up || {{ echo "cannot give $n the MAC $new" >&2; exit 11; }}
  done
done
"#,
        pairs = pairs.join(" "),
    );
    if let Some((hostname, fresh)) = clone {
        out.push_str(&identity_script(hostname, fresh));
    }
    if let Some(mac) = private_mac {
        out.push_str(&renew_script(mac));
    }
    out.push_str("exit 0");
    out
}

/// The part of [`reidentify_script`] that gives a clone its own hostname, machine-id and
/// SSH host key, and mixes the host's bytes into its random pool.
fn identity_script(hostname: &str, fresh: &HostMade) -> String {
    format!(
        r#"printf '%s' {entropy} >/dev/urandom 2>/dev/null
h={host}
hostname "$h" 2>/dev/null || echo "$h" >/proc/sys/kernel/hostname || exit 12
[ -e /etc/hostname ] && echo "$h" >/etc/hostname
if [ -f /etc/hosts ]; then
  grep -v '^127\.0\.1\.1[[:space:]]' /etc/hosts >/etc/hosts.envrig; printf '127.0.1.1\t%s\n' "$h" >>/etc/hosts.envrig; cat /etc/hosts.envrig >/etc/hosts; rm -f /etc/hosts.envrig
fi
printf '%s\n' {machine_id} >/etc/machine-id || exit 13
[ -L /var/lib/dbus/machine-id ] || {{ [ -f /var/lib/dbus/machine-id ] && printf '%s\n' {machine_id} >/var/lib/dbus/machine-id; }}
key={key}
umask 077
if [ -d /etc/ssh ] && [ -x /usr/sbin/sshd ]; then
  rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
  printf '%s\n' "$key" >/etc/ssh/ssh_host_ed25519_key && printf '%s\n' {key_pub} >/etc/ssh/ssh_host_ed25519_key.pub || exit 14
  chmod 644 /etc/ssh/ssh_host_ed25519_key.pub
  for f in /run/sshd.pid /var/run/sshd.pid; do [ -r "$f" ] && kill -HUP "$(cat "$f")" 2>/dev/null && break; done
  i=0; while command -v ss >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.05; ss -Hltn 2>/dev/null | grep -q ':22 ' && break; i=$((i+1)); done
fi
if [ -d /etc/dropbear ]; then
  rm -f /etc/dropbear/dropbear_*_host_key
  printf '%s\n' "$key" >/run/envrig-host-key
  dropbearconvert openssh dropbear /run/envrig-host-key /etc/dropbear/dropbear_ed25519_host_key >/dev/null 2>&1 || {{ rm -f /run/envrig-host-key; exit 15; }}
  rm -f /run/envrig-host-key
  for f in /run/dropbear.pid /var/run/dropbear.pid; do
    [ -r "$f" ] || continue
    p=$(cat "$f"); cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)
    kill "$p" 2>/dev/null; i=0; while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do i=$((i+1)); sleep 0.02; done
    [ -n "$cmd" ] && $cmd || exit 16
    break
  done
fi
"#,
        entropy = sh_quote(&fresh.entropy),
        machine_id = sh_quote(&fresh.machine_id),
        key = sh_quote(fresh.host_key.trim_end()),
        key_pub = sh_quote(&fresh.host_key_pub),
        host = sh_quote(hostname),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_listing_is_patched_under_the_touched_paths_only() {
        let base = "/etc\td\t0\t1\t755\n/etc/ssh\td\t0\t1\t755\n/etc/ssh/ssh_host_ecdsa_key\tf\t1\t1\t600\n/etc/sshd\tf\t1\t1\t644\n/etc/machine-id\tf\t33\t1\t444\n";
        let patch = "/etc/ssh\td\t0\t2\t755\n/etc/ssh/ssh_host_ed25519_key\tf\t9\t2\t600\n/etc/machine-id\tf\t33\t2\t444\n/elsewhere\tf\t1\t1\t644\n";
        let got = patched_listing(base, &["/etc/ssh", "/etc/machine-id"], patch);
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(
            lines,
            [
                "/etc\td\t0\t1\t755",
                "/etc/sshd\tf\t1\t1\t644",
                "/etc/ssh\td\t0\t2\t755",
                "/etc/ssh/ssh_host_ed25519_key\tf\t9\t2\t600",
                "/etc/machine-id\tf\t33\t2\t444",
            ]
        );
    }

    #[test]
    fn the_script_names_every_mac_pair_and_the_hostname_quoted() {
        let fresh = HostMade::new().unwrap();
        let other = HostMade::new().unwrap();
        assert_ne!(fresh.machine_id, other.machine_id);
        assert_ne!(fresh.host_key_pub, other.host_key_pub);
        assert_eq!(fresh.machine_id.len(), 32);
        assert!(fresh.host_key_pub.starts_with("ssh-ed25519 "));
        let s = reidentify_script(
            &["52:54:00:00:00:01=52:54:00:00:00:02".into()],
            1_800_000_000,
            Some(("web-2", &fresh)),
            Some("52:54:00:00:00:02"),
        );
        assert!(
            s.contains("udhcpc.$n.pid") && s.contains("m='52:54:00:00:00:02'"),
            "{s}"
        );
        let moved = reidentify_script(&["a=b".into()], 1, None, None);
        assert!(!moved.contains("machine-id") && moved.contains("'a=b'"));
        assert!(s.contains(&fresh.machine_id) && s.contains("BEGIN OPENSSH PRIVATE KEY"));
        assert!(s.contains("'52:54:00:00:00:01=52:54:00:00:00:02'"), "{s}");
        assert!(s.contains("h='web-2'") || s.contains("h=web-2"), "{s}");
        assert!(s.contains("@1800000000"));
    }
}
