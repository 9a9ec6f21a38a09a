#!/usr/bin/env bash
# build-debian-box.sh: builds (once, cached) a real Debian 12 (bookworm) vagrant-libvirt box for
# envrig's end-to-end tests, and proves it boots by starting it as a raw libvirt domain.
#
#   scripts/build-debian-box.sh               build when not cached (the new box is boot-checked
#                                             before it is published); prints the box's folder
#                                             as the last line of stdout
#   scripts/build-debian-box.sh --verify      also boot-check a box that was already cached
#   scripts/build-debian-box.sh --no-verify   build without the boot check (not recommended)
#   ENVRIG_BOX_FLAVOR=cloud scripts/build-debian-box.sh
#                                             the same Debian as a stock cloud image instead:
#                                             cloud-init (NoCloud only), no guest agent, no
#                                             vagrant user, no key; boxes/cloud-<HASH>/,
#                                             cloud-latest (checked by envrig's e2e test)
#
# Environment: ENVRIG_TEST_CACHE (default /var/cache/envrig-test), ENVRIG_BOX_VERIFY_TIMEOUT
# (seconds for each boot-check wait, default 240). Needs root, debootstrap (installed with
# apt-get when missing), mkfs.ext4, qemu-img, and for the check libvirt + passt + ssh
# (scripts/libvirt-setup.sh).
#
# What the box holds
#   `debootstrap --variant=minbase bookworm` from the mirror in /etc/apt/sources.list.d/
#   debian.sources (its bookworm and bookworm-security URIs; the box's apt sources point there
#   too), upgraded from bookworm-updates/-security, plus (no recommends) the packages listed in
#   scripts/guest/debian-box/packages: linux-image-cloud-amd64, systemd-sysv, udev, dbus,
#   systemd-resolved, openssh-server, qemu-guest-agent, sudo, iproute2, procps. No docs, man
#   pages or translations (dpkg path-exclude), no apt lists (run apt-get update first).
#   - user `vagrant` (uid 1000, no password, NOPASSWD sudo in /etc/sudoers.d/vagrant), whose
#     ~/.ssh/authorized_keys is Vagrant's published insecure vagrant.pub (RSA + ed25519,
#     providers/libvirt/keys/); root has no password. sshd: keys only.
#   - SSH host keys are NOT in the image: envrig-ssh-hostkeys.service makes ed25519 and ECDSA
#     host keys before ssh.service at first boot (no RSA host key: ~8 s to make under TCG).
#     /etc/machine-id is empty (systemd sets it at first boot, from the VM's UUID).
#   - systemd-networkd: DHCP on every ethernet NIC; eth0 (the first NIC: passt in envrig) has
#     the default route (metric 100) and the host's DNS; eth1... (private libvirt networks)
#     metric 1024, DNS only for their own domain, no IPv6 RA. systemd-resolved owns
#     /etc/resolv.conf. Kernel command line has net.ifnames=0 (names eth0, eth1, ...).
#   - `hostname=NAME` on the kernel command line (envrig appends it) sets the hostname
#     (envrig-hostname.service, before the network).
#   - qemu-guest-agent: started by udev when the virtio port org.qemu.guest_agent.0 appears.
#   - fast boot under TCG (every unit and module costs): masked (mask-units) systemd-networkd-
#     wait-online, apt-daily*, dpkg-db-backup, e2scrub*, fstrim, systemd-firstboot, getty@tty1,
#     modprobe@{drm,dm_mod,efi_pstore,configfs,loop}, debug/tracing/config/hugepages mounts;
#     modules not loaded (modprobe-blacklist.conf): kvm*, ata_piix & co (no CD-ROM), serio_raw,
#     pcspkr; journal in memory; resolved without LLMNR/mDNS; `quiet`.
#   - root filesystem: ext4 made with `mkfs.ext4 -d` on the whole disk (no partition table, no
#     bootloader: root=/dev/vda), 2 GiB virtual, fstab `/dev/vda / ext4 defaults 0 1`. Direct
#     kernel boot: vmlinuz + initrd.img (Debian's initramfs-tools, MODULES=list: virtio_pci
#     virtio_blk ext4, gzip) + cmdline `root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet`.
#
# Cache layout (${ENVRIG_TEST_CACHE:-/var/cache/envrig-test}):
#   boxes/debian-<HASH>/debian.box    the vagrant-libvirt box: an UNCOMPRESSED tar (box.img is
#                                     a compressed qcow2 already) of metadata.json
#                                     ({"provider":"libvirt","format":"qcow2","virtual_size":2}),
#                                     Vagrantfile, box.img, vmlinuz, initrd.img, cmdline
#   boxes/debian-<HASH>/{metadata.json,Vagrantfile,box.img,vmlinuz,initrd.img,cmdline}
#                                     the same files unpacked, for raw tests; disk.qcow2 is a
#                                     hard link to box.img (the folder is an envrig box folder)
#   boxes/debian-<HASH>/info.json     kernel, package versions, build and boot-check times
#   boxes/debian-latest -> debian-<HASH>
#   debs-debian-box/                  the .debs downloaded by debootstrap and apt (reused)
# HASH = sha256 (16 hex) of this script, every file in scripts/guest/debian-box/, Vagrant's
# vagrant.pub and the mirror URIs; package versions are not part of it (delete a box folder
# to rebuild it with newer packages; no box is removed here, an overlay may still use it).
# The build runs in boxes/.build-*, under `flock boxes/.build.lock`, and is renamed into place
# when complete (and boot-checked), so a half-built box is never visible.
#
# Measured here (Debian 12 host, 2 shared cores, other builds and test VMs running; QEMU TCG,
# no KVM; the boot check's domain: 1 vCPU, 512 MiB, SeaBIOS, passt + a private network):
#   build: ~2 min with an empty .deb cache (debootstrap 45 s, apt 45 s, image 22 s), ~45 s
#   with the cache (debootstrap 16-28 s, apt 12 s, initramfs 2 s, mkfs + qcow2 11-15 s); then
#   the boot check, 20-60 s. Cache hit: well under a second (no apt call).
#   boot check, from `virsh create` (load 2-3.5; 2-3 times longer when other TCG guests run):
#   guest agent answers guest-ping after 15-21 s; SSH banner 15-22 s; `ssh vagrant@ 'sudo id'`
#   succeeds 1-4 s after the banner. systemd-analyze: kernel+initramfs 4-6.5 s, userspace
#   8.5-14 s. Before trimming: an RSA host key took 8-12 s to make, and 54 s to SSH at load 5.
#   sizes: box.img 104 MiB (qcow2, zlib-compressed clusters; 2 GiB virtual, 298 MB used),
#   debian.box 123 MiB, vmlinuz 14 MiB, initrd.img 5.5 MiB; .deb cache 80 MB.
set -euo pipefail

log() { printf 'build-debian-box: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }

VERIFY=new # new: check a box built by this run; always: also a cached one; never
while [ $# -gt 0 ]; do
  case "$1" in
    --verify) VERIFY=always ;;
    --no-verify) VERIFY=never ;;
    -h | --help) usage 0 ;;
    *) log "unknown argument: $1"; usage ;;
  esac
  shift
done

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, file owners in the image)"

# ENVRIG_BOX_FLAVOR=cloud builds a "stock cloud image" instead: cloud-init reading a NoCloud
# seed, no guest agent, no vagrant user, no key at all (the seed brings one). Its boot check
# is envrig's end-to-end test, not this script's (which logs in with Vagrant's key).
FLAVOR=${ENVRIG_BOX_FLAVOR:-vagrant}
case "$FLAVOR" in
  vagrant) PREFIX=debian ;;
  cloud) PREFIX=cloud; VERIFY=never ;;
  *) die "ENVRIG_BOX_FLAVOR must be vagrant or cloud, not $FLAVOR" ;;
esac

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
SRC=$HERE/guest/debian-box
KEYS=$REPO/providers/libvirt/keys
CACHE=${ENVRIG_TEST_CACHE:-/var/cache/envrig-test}
BOXES=$CACHE/boxes
DEBCACHE=$CACHE/debs-debian-box
SUITE=bookworm
DISK_SIZE=2G
CMDLINE="root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet"
WAIT=${ENVRIG_BOX_VERIFY_TIMEOUT:-240}
LIBVIRT_URI=qemu:///system
SOURCES=/etc/apt/sources.list.d/debian.sources
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

for f in packages dpkg-nodoc initramfs-modules initramfs.conf 10-first-nic.network \
  20-other-nics.network sshd.conf envrig-ssh-hostkeys envrig-ssh-hostkeys.service ssh-hostkeys.conf \
  envrig-hostname envrig-hostname.service journald.conf resolved.conf modprobe-blacklist.conf \
  mask-units Vagrantfile; do
  [ -f "$SRC/$f" ] || die "missing $SRC/$f"
done
for f in vagrant vagrant.key.ed25519 vagrant.pub; do
  [ -f "$KEYS/$f" ] || die "missing $KEYS/$f (Vagrant's insecure keys)"
done

for t in mkfs.ext4 qemu-img flock sha256sum tar chroot mount umount mknod apt-get; do
  command -v "$t" >/dev/null 2>&1 || die "missing $t on this host (run scripts/libvirt-setup.sh)"
done
if [ "$VERIFY" != never ]; then
  for t in virsh ssh ss timeout; do
    command -v "$t" >/dev/null 2>&1 || die "missing $t on this host (run scripts/libvirt-setup.sh)"
  done
fi

# --- Recipe --------------------------------------------------------------------------------
[ -r "$SOURCES" ] || die "no $SOURCES (the Debian mirror to build from)"
uri_of_suite() { # prints the first URI of the deb822 stanza of $SOURCES whose Suites list $1
  awk -v want="$1" 'BEGIN { RS = ""; FS = "\n" }
    { uris = ""; suites = ""
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^URIs:/) { s = $i; sub(/^URIs:[ \t]*/, "", s); uris = s }
        if ($i ~ /^Suites:/) { s = $i; sub(/^Suites:[ \t]*/, "", s); suites = " " s " " }
      }
      if (uris != "" && index(suites, " " want " ")) { split(uris, u, /[ \t]+/); print u[1]; exit }
    }' "$SOURCES"
}
MIRROR=$(uri_of_suite "$SUITE")
SECURITY=$(uri_of_suite "$SUITE-security")
[ -n "$MIRROR" ] || die "no '$SUITE' suite in $SOURCES"

list_of() { grep -v '^[[:space:]]*\(#\|$\)' "$SRC/$1"; }
mapfile -t PKGS < <(list_of packages)
if [ "$FLAVOR" = cloud ]; then
  mapfile -t PKGS < <(printf '%s\n' "${PKGS[@]}" | grep -vx -e qemu-guest-agent -e sudo; echo cloud-init)
fi
mapfile -t MASKS < <(list_of mask-units)

HASH=$( {
  cat "${BASH_SOURCE[0]}"
  for f in $(cd "$SRC" && find . -type f | LC_ALL=C sort); do
    printf '\n--- %s\n' "$f"; cat "$SRC/$f"
  done
  printf '\n--- keys\n'; cat "$KEYS/vagrant.pub"
  printf '\n--- mirror %s %s %s\n' "$SUITE" "$MIRROR" "$SECURITY"
  [ "$FLAVOR" = vagrant ] || printf '\n--- flavor %s\n' "$FLAVOR"
} | sha256sum | cut -c1-16)
NAME=$PREFIX-$HASH
DEST=$BOXES/$NAME

mkdir -p "$BOXES" "$DEBCACHE"
chmod 755 "$CACHE" "$BOXES"

publish_latest() {
  ln -sfn "$NAME" "$BOXES/.$PREFIX-latest.$$"
  mv -Tf "$BOXES/.$PREFIX-latest.$$" "$BOXES/$PREFIX-latest"
}

# --- Clean-up (domain, network, mounts, temporary folders), bounded ---------------------------
V() { timeout 60 virsh -q -c "$LIBVIRT_URI" "$@"; }
DOM="" NET="" VTMP="" TMP="" ROOT=""

mounts_under() { # prints the mount points under folder $1, deepest first
  awk -v p="$1/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}
unmount_all() { # unmounts everything under folder $1
  local m
  for m in $(mounts_under "$1"); do umount "$m" 2>/dev/null || umount -l "$m" || true; done
}
cleanup() {
  local rc=$?
  set +e
  if [ -n "$DOM" ]; then V destroy "$DOM" >/dev/null 2>&1; DOM=""; fi
  if [ -n "$NET" ]; then V net-destroy "$NET" >/dev/null 2>&1; NET=""; fi
  if [ -n "$VTMP" ]; then rm -rf "$VTMP"; VTMP=""; fi
  if [ -n "$TMP" ] && [ -d "$TMP" ]; then
    unmount_all "$TMP"
    if [ -n "$(mounts_under "$TMP")" ]; then
      log "mounts remain under $TMP, not removing it: $(mounts_under "$TMP" | tr '\n' ' ')"
    else
      rm -rf "$TMP"
    fi
  fi
  return $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Boot check: a raw transient domain on a qcow2 overlay of box.img --------------------------
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

free_port() { # a TCP port nobody listens on, in 20000-49999
  local p
  for _ in $(seq 100); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 30000))
    [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ] && { echo "$p"; return; }
  done
  die "no free TCP port found"
}

ssh_banner() { # true when an SSH server's banner is read from 127.0.0.1:$1 (passt accepts
  # the connection before the guest listens: only the banner tells that sshd is up)
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "SSH-2.0-envrig-probe\r\n" >&3
    IFS= read -r -t 2 line <&3 && [[ $line == SSH-2.0-* ]]' _ "$1" 2>/dev/null
}

need_libvirt() {
  timeout 20 virsh -c "$LIBVIRT_URI" version >/dev/null 2>&1 ||
    die "libvirt does not answer on $LIBVIRT_URI (run scripts/libvirt-setup.sh)"
}

AGENT_T="" BANNER_T="" SSH_T=""
verify_box() { # verify_box DIR: boots DIR's box (box.img, vmlinuz, initrd.img, cmdline)
  local dir=$1 t0 deadline port x br net_xml mac ok out guest_cmdline
  need_libvirt
  VTMP=$(mktemp -d "$BOXES/.verify.XXXXXX")
  chmod 755 "$VTMP"
  AGENT_T="" BANNER_T="" SSH_T=""
  # Private keys must be 0600 for ssh; a git checkout does not keep that mode.
  install -m 600 "$KEYS/vagrant" "$VTMP/vagrant"
  install -m 600 "$KEYS/vagrant.key.ed25519" "$VTMP/vagrant.ed25519"
  qemu-img create -q -f qcow2 -F qcow2 -b "$dir/box.img" "$VTMP/overlay.qcow2"
  port=$(free_port)

  # A second NIC on a transient isolated libvirt network (DHCP from libvirt's dnsmasq).
  for _ in 1 2 3 4 5; do
    x=$((200 + RANDOM % 50))
    ip -4 -o addr 2>/dev/null | grep -q " 198\.19\.$x\." && continue
    NET=envrig-boxcheck-$$-$x
    br=ebxc$(printf '%04x' $((RANDOM % 65536)))
    net_xml="<network><name>$NET</name><bridge name='$br' stp='off' delay='0'/>
  <domain name='boxcheck.test' localOnly='yes'/>
  <ip address='198.19.$x.1' netmask='255.255.255.0'>
    <dhcp><range start='198.19.$x.100' end='198.19.$x.200'/></dhcp>
  </ip></network>"
    echo "$net_xml" >"$VTMP/net.xml"
    V net-create "$VTMP/net.xml" >/dev/null 2>"$VTMP/net.err" && break
    NET=""
  done
  [ -n "$NET" ] || die "cannot create a private libvirt network: $(cat "$VTMP/net.err" 2>/dev/null)"
  mac=$(printf '52:54:00:%02x:%02x:%02x' $((RANDOM % 256)) $((RANDOM % 256)) $((RANDOM % 256)))

  DOM=envrig-boxcheck-$$-$RANDOM
  guest_cmdline="$(cat "$dir/cmdline") hostname=boxcheck"
  cat >"$VTMP/domain.xml" <<EOF
<domain type='qemu'>
  <name>$DOM</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$dir/vmlinuz</kernel>
    <initrd>$dir/initrd.img</initrd>
    <cmdline>$guest_cmdline</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$VTMP/overlay.qcow2'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='$dir/box.img'>
          <seclabel model='dac' relabel='no'/>
        </source>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <backend type='passt'/>
      <model type='virtio'/>
      <portForward proto='tcp' address='127.0.0.1'>
        <range start='$port' to='22'/>
      </portForward>
    </interface>
    <interface type='network'>
      <source network='$NET'/>
      <mac address='$mac'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='$VTMP/console.log'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='$VTMP/console.log'/>
      <target type='serial' port='0'/>
    </console>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
  local ssh_opts=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
    -o BatchMode=yes -o IdentitiesOnly=yes -o ConnectTimeout=10 -p "$port")
  fail() {
    log "boot check failed: $*"
    log "last lines of the guest's console ($VTMP/console.log):"
    tail -n 40 "$VTMP/console.log" 2>/dev/null | sed 's/^/  | /' >&2 || true
    exit 1
  }

  log "boot check: $DOM (TCG, 1 vCPU, 512 MiB), SSH on 127.0.0.1:$port, eth1 on $NET (198.19.$x.0/24)"
  t0=$(now)
  V create "$VTMP/domain.xml" >/dev/null || fail "virsh create failed"
  deadline=$((SECONDS + WAIT))
  while [ -z "$AGENT_T" ] || [ -z "$SSH_T" ]; do
    [ $SECONDS -lt $deadline ] || fail "after ${WAIT} s: guest agent ${AGENT_T:-not answering}, SSH banner ${BANNER_T:-none}, ssh login ${SSH_T:-failed}"
    if [ -z "$AGENT_T" ] &&
      V qemu-agent-command "$DOM" '{"execute":"guest-ping"}' --timeout 2 >/dev/null 2>&1; then
      AGENT_T=$(since "$t0")
      log "  guest agent answers guest-ping after $AGENT_T s"
    fi
    if [ -z "$BANNER_T" ] && ssh_banner "$port"; then
      BANNER_T=$(since "$t0")
      log "  SSH banner after $BANNER_T s"
    fi
    if [ -n "$BANNER_T" ] && [ -z "$SSH_T" ]; then
      if out=$(timeout 30 ssh -i "$VTMP/vagrant" "${ssh_opts[@]}" vagrant@127.0.0.1 'sudo id' 2>&1); then
        [[ $out == uid=0\(root\)* ]] || fail "'sudo id' printed: $out"
        SSH_T=$(since "$t0")
        log "  ssh -i keys/vagrant vagrant@ 'sudo id' works after $SSH_T s ($out)"
      else
        log "  ssh not yet: ${out//$'\n'/ }"
      fi
    fi
    sleep 0.25
  done

  # The ed25519 key, the agent's exec, the hostname, both NICs, the host keys, the boot.
  out=$(timeout 30 ssh -i "$VTMP/vagrant.ed25519" "${ssh_opts[@]}" vagrant@127.0.0.1 'hostname') ||
    fail "ssh with vagrant.key.ed25519 failed"
  [ "$out" = boxcheck ] || fail "hostname is '$out', not boxcheck (hostname= on the kernel command line)"
  out=$(V qemu-agent-command "$DOM" \
    '{"execute":"guest-exec","arguments":{"path":"/usr/bin/id","arg":["-u"],"capture-output":true}}') ||
    fail "guest-exec failed"
  log "  guest-exec: $out"
  ok=""
  deadline=$((SECONDS + 60))
  while [ $SECONDS -lt $deadline ]; do
    out=$(timeout 30 ssh -i "$VTMP/vagrant" "${ssh_opts[@]}" vagrant@127.0.0.1 \
      'ip -4 -o addr show dev eth1; ip -4 route show default') || true
    if grep -q "inet 198\.19\.$x\." <<<"$out"; then ok=1; break; fi
    sleep 1
  done
  [ -n "$ok" ] || fail "eth1 got no DHCP lease from $NET in 60 s: $out"
  grep -q '^default .* dev eth0 .*metric 100' <<<"$out" || fail "the default route is not on eth0: $out"
  grep '^default' <<<"$out" | grep -qv 'dev eth0' && fail "a default route not on eth0: $out"
  log "  eth1: $(grep -o 'inet [0-9./]*' <<<"$out" | head -n1), default route: $(grep '^default' <<<"$out" | head -n1)"
  out=$(timeout 60 ssh -i "$VTMP/vagrant" "${ssh_opts[@]}" vagrant@127.0.0.1 '
    timeout 50 systemctl is-system-running --wait; systemd-analyze; systemd-analyze blame | head -n 8
    systemctl --failed --no-legend; ls /etc/ssh/ssh_host_*_key | tr "\n" " "; echo
    getent hosts boxcheck.boxcheck.test || echo "(boxcheck.boxcheck.test: not resolved)"') || true
  log "  in the guest:"
  sed 's/^/  | /' <<<"$out" >&2
  grep -q '^running$' <<<"$out" || fail "systemctl is-system-running is not 'running' (see above)"

  V destroy "$DOM" >/dev/null || true
  DOM=""
  V net-destroy "$NET" >/dev/null || true
  NET=""
  rm -rf "$VTMP"
  VTMP=""
  log "boot check passed: guest agent ${AGENT_T} s, SSH banner ${BANNER_T} s, ssh 'sudo id' ${SSH_T} s"
}

if [ -f "$DEST/debian.box" ]; then
  [ "$(readlink "$BOXES/$PREFIX-latest" 2>/dev/null)" = "$NAME" ] || publish_latest
  [ "$VERIFY" = always ] && verify_box "$DEST"
  echo "$DEST"
  exit 0
fi

[ "$VERIFY" = never ] || need_libvirt

exec 9>"$BOXES/.build.lock"
flock -w 1800 9 || die "another build holds $BOXES/.build.lock for more than 30 minutes"
if [ -f "$DEST/debian.box" ]; then # built by another run while this one waited
  publish_latest
  [ "$VERIFY" = always ] && verify_box "$DEST"
  echo "$DEST"
  exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -qq install -y debootstrap >/dev/null ||
    die "apt-get install debootstrap failed"
fi

log "building $NAME: debootstrap $SUITE from $MIRROR"
START=$SECONDS
TMP=$(mktemp -d "$BOXES/.build-$NAME.XXXXXX")
chmod 755 "$TMP"
ROOT=$TMP/rootfs
OUT=$TMP/out
mkdir -p "$OUT"

in_root() { # runs a command in the chroot with a clean environment
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
    DEBCONF_NONINTERACTIVE_SEEN=true chroot "$ROOT" "$@"
}
step() { # step LOGNAME COMMAND...: runs COMMAND with its output in $TMP/LOGNAME.log
  local name=$1 t=$SECONDS; shift
  if ! "$@" >"$TMP/$name.log" 2>&1; then
    log "$name failed; last lines of its log:"
    tail -n 30 "$TMP/$name.log" | sed 's/^/  | /' >&2
    [ -f "$ROOT/debootstrap/debootstrap.log" ] && tail -n 20 "$ROOT/debootstrap/debootstrap.log" | sed 's/^/  | /' >&2
    exit 1
  fi
  log "  $name: $((SECONDS - t)) s"
}

# --- debootstrap + packages ---------------------------------------------------------------------
step debootstrap debootstrap --variant=minbase --keyring="$KEYRING" --cache-dir="$DEBCACHE" \
  "$SUITE" "$ROOT" "$MIRROR"

mount -t proc proc "$ROOT/proc"
mount -t sysfs -o ro sysfs "$ROOT/sys"
# A private /dev (not the host's): a few nodes and its own devpts.
mount -t tmpfs -o mode=755,size=8m envrig-dev "$ROOT/dev"
mknod -m 666 "$ROOT/dev/null" c 1 3
mknod -m 666 "$ROOT/dev/zero" c 1 5
mknod -m 666 "$ROOT/dev/full" c 1 7
mknod -m 666 "$ROOT/dev/random" c 1 8
mknod -m 666 "$ROOT/dev/urandom" c 1 9
mknod -m 666 "$ROOT/dev/tty" c 5 0
mkdir -p "$ROOT/dev/pts" "$ROOT/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$ROOT/dev/pts"
ln -s pts/ptmx "$ROOT/dev/ptmx"
mount --bind "$DEBCACHE" "$ROOT/var/cache/apt/archives"

# Nothing starts in the chroot (sshd would listen on the host's network).
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
install -m 644 "$SRC/dpkg-nodoc" "$ROOT/etc/dpkg/dpkg.cfg.d/01-envrig-nodoc"
install -D -m 644 "$SRC/initramfs.conf" "$ROOT/etc/initramfs-tools/conf.d/envrig"
echo '/dev/vda / ext4 defaults 0 1' >"$ROOT/etc/fstab"
echo bookworm >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tbookworm\n\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n' >"$ROOT/etc/hosts"
rm -f "$ROOT/etc/apt/sources.list"
{
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: %s\n' \
    "$MIRROR" "$SUITE" "$SUITE" "$KEYRING"
  [ -z "$SECURITY" ] ||
    printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n' \
      "$SECURITY" "$SUITE" "$KEYRING"
} >"$ROOT/etc/apt/sources.list.d/debian.sources"
rm -f "$ROOT/etc/resolv.conf"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"

APT=(apt-get -y -q -o DPkg::Lock::Timeout=120 -o Dpkg::Options::=--force-confdef
  -o Dpkg::Options::=--force-confold)
step apt-update in_root apt-get -q update
step apt-upgrade in_root "${APT[@]}" dist-upgrade
step apt-install in_root "${APT[@]}" --no-install-recommends install "${PKGS[@]}"

# --- Configuration ---------------------------------------------------------------------------------
install -m 644 "$SRC/initramfs-modules" "$ROOT/etc/initramfs-tools/modules"

in_root usermod -p '*' root
if [ "$FLAVOR" = vagrant ]; then
  in_root useradd --create-home --shell /bin/bash --user-group --uid 1000 vagrant
  in_root usermod -p '*' vagrant
  install -d -m 700 -o 1000 -g 1000 "$ROOT/home/vagrant/.ssh"
  install -m 600 -o 1000 -g 1000 "$KEYS/vagrant.pub" "$ROOT/home/vagrant/.ssh/authorized_keys"
  echo 'vagrant ALL=(ALL) NOPASSWD:ALL' >"$ROOT/etc/sudoers.d/vagrant"
  chmod 440 "$ROOT/etc/sudoers.d/vagrant"
  in_root visudo -cq -f /etc/sudoers.d/vagrant || die "/etc/sudoers.d/vagrant does not parse"
else
  # NoCloud only; networkd keeps its own files; host keys: the box's first-boot unit makes
  # ed25519/ecdsa ones (cloud-init would delete them and make an RSA key: 10 s under TCG).
  cat >"$ROOT/etc/cloud/cloud.cfg.d/90-envrig.cfg" <<'CFG'
datasource_list: [ NoCloud, None ]
network: {config: disabled}
ssh_deletekeys: false
ssh_genkeytypes: []
CFG
fi

install -m 644 "$SRC/10-first-nic.network" "$SRC/20-other-nics.network" "$ROOT/etc/systemd/network/"
install -m 644 "$SRC/sshd.conf" "$ROOT/etc/ssh/sshd_config.d/10-envrig.conf"
install -m 644 "$SRC/envrig-ssh-hostkeys.service" "$SRC/envrig-hostname.service" "$ROOT/etc/systemd/system/"
install -D -m 644 "$SRC/ssh-hostkeys.conf" "$ROOT/etc/systemd/system/ssh.service.d/10-envrig-hostkeys.conf"
install -m 755 "$SRC/envrig-hostname" "$SRC/envrig-ssh-hostkeys" "$ROOT/usr/local/sbin/"
install -D -m 644 "$SRC/journald.conf" "$ROOT/etc/systemd/journald.conf.d/10-envrig.conf"
install -D -m 644 "$SRC/resolved.conf" "$ROOT/etc/systemd/resolved.conf.d/10-envrig.conf"
install -m 644 "$SRC/modprobe-blacklist.conf" "$ROOT/etc/modprobe.d/envrig-blacklist.conf"
in_root systemctl enable -q systemd-networkd.service systemd-resolved.service envrig-hostname.service ssh.service
for u in "${MASKS[@]}"; do ln -sfn /dev/null "$ROOT/etc/systemd/system/$u"; done
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"

if [ "$FLAVOR" = vagrant ]; then
  [ -f "$ROOT/usr/lib/systemd/system/qemu-guest-agent.service" ] ||
    [ -f "$ROOT/lib/systemd/system/qemu-guest-agent.service" ] || die "no qemu-guest-agent.service"
  grep -rqs 'org.qemu.guest_agent.0' "$ROOT"/usr/lib/udev/rules.d/ "$ROOT"/lib/udev/rules.d/ ||
    die "no udev rule starting qemu-guest-agent on org.qemu.guest_agent.0"
fi

mapfile -t KVERS < <(ls "$ROOT/lib/modules")
[ ${#KVERS[@]} = 1 ] || die "expected one kernel in the image, found: ${KVERS[*]}"
KVER=${KVERS[0]}
step update-initramfs in_root update-initramfs -u -k "$KVER"
mods=$(in_root lsinitramfs "/boot/initrd.img-$KVER" | grep -E '/(virtio_pci|virtio_blk)\.ko') ||
  die "the initramfs lacks virtio_pci/virtio_blk"
log "  initramfs modules: $(sed 's|.*/||' <<<"$mods" | tr '\n' ' ')"
in_root dpkg-query -W -f '${Package}\t${Version}\n' >"$TMP/packages.txt"

# Nothing machine-specific, nothing left from the build.
rm -f "$ROOT"/etc/ssh/ssh_host_* "$ROOT/usr/sbin/policy-rc.d"
: >"$ROOT/etc/machine-id"
[ -L "$ROOT/var/lib/dbus/machine-id" ] || rm -f "$ROOT/var/lib/dbus/machine-id"
unmount_all "$ROOT"
[ -z "$(mounts_under "$ROOT")" ] || die "cannot unmount $(mounts_under "$ROOT" | tr '\n' ' ')"
rm -rf "${ROOT:?}"/dev/* "${ROOT:?}"/tmp/* "${ROOT:?}"/var/tmp/* "${ROOT:?}"/root/.bash_history
find "$ROOT/var/lib/apt/lists" "$ROOT/var/cache/apt" "$ROOT/var/cache/debconf" -type f \
  \( -name '*_Packages*' -o -name '*_Release*' -o -name '*_InRelease' -o -name '*.bin' \
  -o -name '*-old' -o -name '*.deb' \) -delete
find "$ROOT/var/log" -type f -delete
# Documentation unpacked before the dpkg path-excludes were in place (debootstrap).
find "$ROOT/usr/share/doc" -mindepth 1 \! -type d \! -name copyright -delete
find "$ROOT/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/lintian/*
find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 \! -name locale.alias -exec rm -rf {} +
if compgen -G "$ROOT/etc/ssh/ssh_host_*" >/dev/null; then die "SSH host keys left in the image"; fi
[ ! -s "$ROOT/etc/machine-id" ] || die "/etc/machine-id is not empty"

# --- Artifacts ---------------------------------------------------------------------------------------
t=$SECONDS
install -m 644 "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
install -m 644 "$ROOT/boot/initrd.img-$KVER" "$OUT/initrd.img"
echo "$CMDLINE" >"$OUT/cmdline"
USED_MB=$(du -sm "$ROOT" | cut -f1)
# Inode tables and journal are written now (zeros cost nothing in qcow2), so the guest's
# ext4lazyinit has nothing to write into each machine's overlay.
mkfs.ext4 -q -F -L debian-root -E lazy_itable_init=0,lazy_journal_init=0 \
  -d "$ROOT" "$TMP/root.raw" "$DISK_SIZE" >/dev/null
qemu-img convert -c -f raw -O qcow2 "$TMP/root.raw" "$OUT/box.img"
rm -f "$TMP/root.raw"
rm -rf "${ROOT:?}"
ROOT=""
ln "$OUT/box.img" "$OUT/disk.qcow2"
printf '{"provider":"libvirt","format":"qcow2","virtual_size":2}\n' >"$OUT/metadata.json"
install -m 644 "$SRC/Vagrantfile" "$OUT/Vagrantfile"
chmod 644 "$OUT"/*
chmod 755 "$OUT"
log "  image: $((SECONDS - t)) s (root filesystem ${USED_MB} MB used)"
BUILD_S=$((SECONDS - START))

if [ "$VERIFY" != never ]; then verify_box "$OUT"; fi

tar -C "$OUT" --owner=0 --group=0 --numeric-owner -cf "$OUT/debian.box.part" \
  metadata.json Vagrantfile box.img vmlinuz initrd.img cmdline
{
  printf '{\n  "name": "%s",\n  "hash": "%s",\n' "$NAME" "$HASH"
  printf '  "built_at": "%s",\n  "build_seconds": %s,\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$BUILD_S"
  printf '  "suite": "%s",\n  "mirror": "%s",\n  "security_mirror": "%s",\n' "$SUITE" "$MIRROR" "$SECURITY"
  printf '  "kernel": "%s",\n  "cmdline": "%s",\n' "$KVER" "$CMDLINE"
  printf '  "disk": {"file": "box.img", "format": "qcow2", "filesystem": "ext4", "virtual_size": "%s", "used_mb": %s, "device": "/dev/vda"},\n' "$DISK_SIZE" "$USED_MB"
  printf '  "ssh": {"user": "vagrant", "port": 22, "keys": "providers/libvirt/keys (Vagrant insecure keys)"},\n'
  printf '  "guest_agent": {"channel": "org.qemu.guest_agent.0"},\n'
  printf '  "box": {"file": "debian.box", "format": "tar (uncompressed)"},\n'
  printf '  "boot_check": {"agent_seconds": %s, "ssh_banner_seconds": %s, "ssh_login_seconds": %s},\n' \
    "${AGENT_T:-null}" "${BANNER_T:-null}" "${SSH_T:-null}"
  printf '  "packages": {\n'
  awk -F '\t' '$2 != "" { printf "    \"%s\": \"%s\",\n", $1, $2 }' "$TMP/packages.txt" | sed '$ s/,$//'
  printf '  }\n}\n'
} >"$OUT/info.json"
chmod 644 "$OUT"/*
mv "$OUT/debian.box.part" "$OUT/debian.box"
mv -T "$OUT" "$DEST"
publish_latest
log "built $NAME in $((SECONDS - START)) s: box.img $(du -h "$DEST/box.img" | cut -f1), debian.box $(du -h "$DEST/debian.box" | cut -f1), vmlinuz $(du -h "$DEST/vmlinuz" | cut -f1), initrd.img $(du -h "$DEST/initrd.img" | cut -f1)"
echo "$DEST"
