#!/usr/bin/env bash
# build-test-guest.sh: builds (once, cached) envrig's small test guest for libvirt/QEMU:
# Debian's cloud kernel, a busybox initramfs that loads the virtio modules and switch_roots
# into an ext4 root disk with busybox init, dropbear (SSH, port 22), qemu-guest-agent and
# udhcpc. It boots to SSH in a few seconds under TCG.
#
#   scripts/build-test-guest.sh          prints the guest's folder as the last line of stdout
#
# Offline: everything comes from Debian packages (apt-get download + dpkg -x), nothing
# else is fetched. Needs root (device nodes in the initramfs, file owners on the disk) and
# the host tools that scripts/libvirt-setup.sh installs (qemu-img, ssh-keygen).
#
# Output: ${ENVRIG_TEST_CACHE:-/var/cache/envrig-test}/guests/small-<HASH>/ with
#   vmlinuz initrd.img disk.qcow2 cmdline insecure_key insecure_key.pub metadata.json
# and the symlink guests/small-latest -> small-<HASH>. HASH covers this script, the files
# under scripts/guest/ and the exact versions of the packages used: an unchanged recipe is
# not built again. A build happens in a temporary folder that is renamed into place when
# complete, under a lock, so a half-built guest is never visible.
#
# The guest: log in as root with insecure_key (ed25519, made at build time, one per build).
# Kernel command line options read by the guest: hostname=NAME, envrig.rescue (a shell on
# the console instead of powering off when the root disk cannot be mounted).
set -euo pipefail

log() { printf 'build-test-guest: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (device nodes in the initramfs, owners on the disk)"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST_SRC=$HERE/guest
CACHE=${ENVRIG_TEST_CACHE:-/var/cache/envrig-test}
GUESTS=$CACHE/guests
DEBS=$CACHE/debs
DISK_SIZE=256M
CMDLINE="console=ttyS0 root=/dev/vda rw quiet"

for t in mkfs.ext4 qemu-img ssh-keygen ldconfig flock dpkg-deb apt-get apt-cache gzip sha256sum; do
  command -v "$t" >/dev/null 2>&1 || die "missing $t on this host (run scripts/libvirt-setup.sh)"
done
mkdir -p "$GUESTS" "$DEBS"
chmod 755 "$CACHE" "$GUESTS"

# --- Recipe: packages and their exact versions ------------------------------------------
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
  log "apt-get update (no package lists)"
  apt-get -o DPkg::Lock::Timeout=300 -qq update >/dev/null
fi

# linux-image-cloud-amd64 depends on the versioned kernel package (linux-image-X-cloud-amd64).
KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
  sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n1)
[ -n "$KPKG" ] || die "cannot resolve linux-image-cloud-amd64 to a versioned kernel package"

# qemu-guest-agent and dropbear-bin with the libraries they depend on (Depends, recursively).
mapfile -t CLOSURE < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances --no-pre-depends qemu-guest-agent dropbear-bin |
  grep -v '^ ' | grep -v '^<' | sort -u)
PKGS=("$KPKG" busybox-static openssh-sftp-server "${CLOSURE[@]}")

declare -A VER
while read -r p v; do VER[$p]=$v; done < <(apt-cache policy "${PKGS[@]}" 2>/dev/null |
  awk '/^[^ ].*:$/ { sub(/:$/, ""); p = $0 } /^  Candidate: / { print p, $2 }')
for p in "${PKGS[@]}"; do
  v=${VER[$p]:-}
  { [ -n "$v" ] && [ "$v" != "(none)" ]; } || die "no installable version of $p"
done

HASH=$( {
  cat "${BASH_SOURCE[0]}"
  for f in $(cd "$GUEST_SRC" && find . -maxdepth 1 -type f | LC_ALL=C sort); do
    printf '\n--- %s\n' "$f"; cat "$GUEST_SRC/$f"
  done
  for p in $(printf '%s\n' "${PKGS[@]}" | LC_ALL=C sort -u); do printf '%s=%s\n' "$p" "${VER[$p]}"; done
} | sha256sum | cut -c1-16)
NAME=small-$HASH
DEST=$GUESTS/$NAME

publish_latest() {
  ln -sfn "$NAME" "$GUESTS/.small-latest.$$"
  mv -Tf "$GUESTS/.small-latest.$$" "$GUESTS/small-latest"
}

if [ -f "$DEST/metadata.json" ]; then
  [ "$(readlink "$GUESTS/small-latest" 2>/dev/null)" = "$NAME" ] || publish_latest
  echo "$DEST"
  exit 0
fi

exec 9>"$GUESTS/.build.lock"
flock -w 900 9 || die "another build holds $GUESTS/.build.lock for more than 15 minutes"
if [ -f "$DEST/metadata.json" ]; then # built by another run while this one waited
  publish_latest
  echo "$DEST"
  exit 0
fi

log "building $NAME"
START=$SECONDS
TMP=$(mktemp -d "$GUESTS/.build-$NAME.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# --- Download (cached in $DEBS) and unpack ----------------------------------------------
deb_of() { # prints the cached .deb of package $1 at version VER[$1], downloading it if needed
  local p=$1 v=${VER[$1]} enc f
  enc=${v//:/%3a}
  for f in "$DEBS/${p}_${enc}_"*.deb; do [ -f "$f" ] && { echo "$f"; return; }; done
  mkdir -p "$TMP/dl"
  (cd "$TMP/dl" && apt-get download -qq "$p=$v" 2>&1 | grep -v 'unsandboxed as root' >&2 || true)
  for f in "$TMP/dl/${p}_${enc}_"*.deb; do
    [ -f "$f" ] || die "apt-get download $p=$v failed"
    mv "$f" "$DEBS/"
    echo "$DEBS/${f##*/}"
    return
  done
}

STAGE=$TMP/stage
KDIR=$TMP/kernel
mkdir -p "$STAGE" "$KDIR"
for p in "${PKGS[@]}"; do
  f=$(deb_of "$p")
  if [ "$p" = "$KPKG" ]; then dpkg-deb -x "$f" "$KDIR"; else dpkg-deb -x "$f" "$STAGE"; fi
done

KVER=$(ls "$KDIR/lib/modules" | head -n1)
KMOD=$KDIR/lib/modules/$KVER
[ -f "$KDIR/boot/vmlinuz-$KVER" ] || die "no vmlinuz in $KPKG"
BB=$STAGE/bin/busybox
[ -x "$BB" ] || die "no busybox in busybox-static"

# --- Kernel modules: resolve dependencies from each module's .modinfo -------------------
declare -A MODPATH BUILTIN SEEN
while IFS= read -r f; do
  n=${f##*/}; n=${n%.ko}; MODPATH[${n//-/_}]=$f
done < <(cd "$KMOD" && find kernel -name '*.ko')
[ ${#MODPATH[@]} -gt 0 ] || die "no uncompressed .ko modules in $KPKG (compressed modules are not handled)"
while IFS= read -r f; do
  n=${f##*/}; n=${n%.ko}; BUILTIN[${n//-/_}]=1
done <"$KMOD/modules.builtin"

ORDER=()
resolve_module() { # appends $1's module file (after its dependencies) to ORDER
  local m=${1//-/_} f deps d
  [ -n "${SEEN[$m]:-}" ] && return 0
  SEEN[$m]=1
  [ -n "${BUILTIN[$m]:-}" ] && return 0
  f=${MODPATH[$m]:-}
  [ -n "$f" ] || die "kernel module $m is neither built in nor shipped in $KPKG"
  deps=$(tr '\0' '\n' <"$KMOD/$f" | grep -a -m1 '^depends=' | cut -d= -f2- || true)
  for d in ${deps//,/ }; do resolve_module "$d"; done
  ORDER+=("$f")
}
list_of() { grep -v '^[[:space:]]*\(#\|$\)' "$GUEST_SRC/$1"; }

for m in $(list_of modules); do resolve_module "$m"; done
BOOT_MODULES=("${ORDER[@]}")
for m in $(list_of extra-modules) $(list_of modules-load); do resolve_module "$m"; done
ALL_MODULES=("${ORDER[@]}")

install_modules() { # install_modules ROOT FILE... : copies modules, writes modules.dep
  local r=$1 f; shift
  mkdir -p "$r/lib/modules/$KVER"
  for f in "$@"; do install -D -m 644 "$KMOD/$f" "$r/lib/modules/$KVER/$f"; done
  cp "$KMOD/modules.builtin" "$KMOD/modules.order" "$r/lib/modules/$KVER/"
  "$BB" depmod -b "$r" "$KVER"
}

busybox_links() { # busybox_links ROOT : busybox + a symlink per applet (never over a file)
  local r=$1 a
  install -D -m 755 "$BB" "$r/bin/busybox"
  for a in $("$BB" --list-full); do
    [ "$a" = bin/busybox ] && continue
    [ -e "$r/$a" ] || [ -L "$r/$a" ] && continue
    mkdir -p "$r/$(dirname "$a")"
    ln -s /bin/busybox "$r/$a"
  done
}

# --- Initramfs ---------------------------------------------------------------------------
IRD=$TMP/initramfs
mkdir -p "$IRD"/{bin,sbin,dev,proc,sys,newroot,etc}
busybox_links "$IRD"
install -m 755 "$GUEST_SRC/init" "$IRD/init"
install_modules "$IRD" "${BOOT_MODULES[@]}"
list_of modules >"$IRD/etc/modules"
mknod -m 600 "$IRD/dev/console" c 5 1
mknod -m 666 "$IRD/dev/null" c 1 3

# --- Root filesystem ---------------------------------------------------------------------
ROOT=$TMP/rootfs
mkdir -p "$ROOT"/{bin,sbin,lib,lib64,usr/bin,usr/sbin,usr/lib,etc/init.d,etc/dropbear,etc/acpi/PWRF} \
  "$ROOT"/{dev,proc,sys,run,tmp,mnt,home,var/log,var/lib,var/tmp,usr/share/udhcpc,usr/lib/openssh}
chmod 1777 "$ROOT/tmp" "$ROOT/var/tmp"
ln -s ../run "$ROOT/var/run"

# Programs from the packages; their shared libraries as the packages' own loader resolves
# them (ld.so --list is what ldd runs), so nothing comes from the host.
LDSO=$STAGE/lib64/ld-linux-x86-64.so.2
[ -e "$LDSO" ] || LDSO=$STAGE/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
LIBPATH=$STAGE/lib/x86_64-linux-gnu:$STAGE/usr/lib/x86_64-linux-gnu
PROGRAMS=(usr/sbin/qemu-ga usr/sbin/dropbear usr/bin/dropbearkey usr/bin/dropbearconvert
  usr/bin/dbclient usr/lib/openssh/sftp-server)
for p in "${PROGRAMS[@]}"; do
  [ -f "$STAGE/$p" ] || die "no $p in the packages"
  install -D -m 755 "$STAGE/$p" "$ROOT/$p"
  out=$("$LDSO" --library-path "$LIBPATH" --list "$STAGE/$p") || die "cannot resolve libraries of $p"
  if grep -q 'not found' <<<"$out"; then die "libraries of $p not found: $(grep 'not found' <<<"$out")"; fi
  while read -r lib; do
    case "$lib" in
      "$STAGE"/*) rel=${lib#"$STAGE"/} ;;
      *) die "$p: library $lib resolved outside the packages" ;;
    esac
    [ -e "$ROOT/$rel" ] || install -D -m 644 "$(readlink -f "$lib")" "$ROOT/$rel"
  done < <(sed -n 's/^[[:space:]]*[^ ]* => \(\/[^ ]*\) (0x.*/\1/p' <<<"$out")
done
install -D -m 755 "$(readlink -f "$LDSO")" "$ROOT/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
ln -sf /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$ROOT/lib64/ld-linux-x86-64.so.2"
printf '/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n' >"$ROOT/etc/ld.so.conf"
ldconfig -r "$ROOT" 2>/dev/null || log "ldconfig -r failed; the loader's default paths will do"

busybox_links "$ROOT"
install -m 755 "$GUEST_SRC/shutdown" "$ROOT/sbin/shutdown"
install -m 644 "$GUEST_SRC/inittab" "$ROOT/etc/inittab"
install -m 755 "$GUEST_SRC/rcS" "$ROOT/etc/init.d/rcS"
install -m 755 "$GUEST_SRC/rcK" "$ROOT/etc/init.d/rcK"
install -m 755 "$GUEST_SRC/udhcpc.script" "$ROOT/usr/share/udhcpc/default.script"
install -m 755 "$GUEST_SRC/acpi-power" "$ROOT/etc/acpi/PWRF/00000080"
install -m 644 "$GUEST_SRC/profile" "$ROOT/etc/profile"
list_of modules-load >"$ROOT/etc/modules-load"
install_modules "$ROOT" "${ALL_MODULES[@]}"

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$ROOT/etc/passwd"
printf 'root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n' >"$ROOT/etc/shadow"
chmod 600 "$ROOT/etc/shadow"
printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' >"$ROOT/etc/group"
printf '/bin/sh\n/bin/ash\n' >"$ROOT/etc/shells"
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$ROOT/etc/nsswitch.conf"
echo envrig-guest >"$ROOT/etc/hostname"
: >"$ROOT/etc/resolv.conf"

OUT=$TMP/out
mkdir -p "$OUT"
ssh-keygen -q -t ed25519 -N '' -C envrig-test-insecure -f "$OUT/insecure_key"
install -d -m 700 "$ROOT/root" "$ROOT/root/.ssh"
install -m 600 "$OUT/insecure_key.pub" "$ROOT/root/.ssh/authorized_keys"

# --- Artifacts -------------------------------------------------------------------------------
install -m 644 "$KDIR/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
(cd "$IRD" && find . | LC_ALL=C sort | "$BB" cpio -o -H newc 2>/dev/null) | gzip -9n >"$OUT/initrd.img"
# Inode tables and journal are written now (zeros cost nothing in qcow2), so the guest's
# ext4lazyinit has nothing to write into each machine's overlay.
mkfs.ext4 -q -F -L envrig-root -m 0 -E lazy_itable_init=0,lazy_journal_init=0 \
  -d "$ROOT" "$TMP/disk.raw" "$DISK_SIZE" >/dev/null
qemu-img convert -f raw -O qcow2 "$TMP/disk.raw" "$OUT/disk.qcow2"
rm -f "$TMP/disk.raw"
echo "$CMDLINE" >"$OUT/cmdline"

{
  printf '{\n  "name": "%s",\n  "hash": "%s",\n' "$NAME" "$HASH"
  printf '  "built_at": "%s",\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf '  "kernel": "%s",\n  "kernel_package": "%s",\n' "$KVER" "$KPKG"
  printf '  "cmdline": "%s",\n' "$CMDLINE"
  printf '  "disk": {"file": "disk.qcow2", "format": "qcow2", "filesystem": "ext4", "size": "%s", "device": "/dev/vda"},\n' "$DISK_SIZE"
  printf '  "ssh": {"user": "root", "port": 22, "key": "insecure_key", "key_type": "ed25519", "server": "dropbear"},\n'
  printf '  "guest_agent": {"channel": "org.qemu.guest_agent.0"},\n'
  printf '  "network": "DHCP (busybox udhcpc) on every ethN",\n'
  printf '  "initramfs_modules": [%s],\n' "$(for f in "${BOOT_MODULES[@]}"; do n=${f##*/}; printf '"%s",' "${n%.ko}"; done | sed 's/,$//')"
  printf '  "packages": {\n'
  for p in $(printf '%s\n' "${PKGS[@]}" | LC_ALL=C sort -u); do printf '    "%s": "%s",\n' "$p" "${VER[$p]}"; done | sed '$ s/,$//'
  printf '  }\n}\n'
} >"$OUT/metadata.json"

chmod 644 "$OUT"/*
chmod 600 "$OUT/insecure_key"
chmod 755 "$OUT"
mv -T "$OUT" "$DEST"
publish_latest
log "built $NAME in $((SECONDS - START)) s ($(du -sh "$DEST" | cut -f1))"
echo "$DEST"
