#!/usr/bin/env bash
# build-virtiofsd.sh: builds (once, cached) virtiofsd, the vhost-user daemon behind libvirt's
# virtiofs shared folders, and installs it as /usr/local/libexec/virtiofsd. Debian 12 has no
# virtiofsd package and QEMU 10 from bookworm-backports does not ship one.
#
#   scripts/build-virtiofsd.sh          prints the installed binary's path as the last line of stdout
#
# Source: the `virtiofsd` crate from crates.io at a pinned version (VIRTIOFSD_VERSION to
# override), built with `cargo install --locked` (the crate's own Cargo.lock), release profile,
# default features (seccomp). Build dependencies libseccomp-dev and libcap-ng-dev are installed
# with apt-get when missing. Needs root (apt-get, /usr/local/libexec, the cache).
#
# Output: ${ENVRIG_TEST_CACHE:-/var/cache/envrig-test}/virtiofsd-<VERSION>/ with
#   bin/virtiofsd  50-virtiofsd.json (the crate's vhost-user descriptor)  version
# built in a temporary folder that is renamed into place when complete, under a lock; the
# cargo target folder is a temporary folder under /tmp (removed afterwards), nothing is
# written in the repository. Then bin/virtiofsd is copied (0755) to /usr/local/libexec/virtiofsd
# when that is missing or different. A cached run takes well under a second and needs no
# network; a build fetches the crate and its dependencies from crates.io and takes about 100 s
# on 2 busy cores (see docs/libvirt-notes.md, "virtiofs (shared folders)").
set -euo pipefail

log() { printf 'build-virtiofsd: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get, /usr/local/libexec, $0's cache)"

VERSION=${VIRTIOFSD_VERSION:-1.14.0}
CACHE=${ENVRIG_TEST_CACHE:-/var/cache/envrig-test}
DEST=$CACHE/virtiofsd-$VERSION
INSTALL=/usr/local/libexec/virtiofsd
BUILD_DEPS=(libseccomp-dev libcap-ng-dev)

[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "VIRTIOFSD_VERSION must be X.Y.Z, not '$VERSION'"

install_binary() { # copies the cached binary to $INSTALL (atomic rename) unless it is identical
  if cmp -s "$DEST/bin/virtiofsd" "$INSTALL"; then return 0; fi
  mkdir -p "${INSTALL%/*}"
  install -m 0755 "$DEST/bin/virtiofsd" "$INSTALL.new.$$"
  mv -f "$INSTALL.new.$$" "$INSTALL"
  log "installed $INSTALL ($(cat "$DEST/version"))"
}

finish() {
  install_binary
  "$INSTALL" --version >/dev/null 2>&1 || die "$INSTALL does not run (missing libseccomp2/libcap-ng0?)"
  echo "$INSTALL"
  exit 0
}

[ -f "$DEST/version" ] && finish

mkdir -p "$CACHE"
chmod 755 "$CACHE"
exec 9>"$CACHE/.virtiofsd.lock"
flock -w 1800 9 || die "another build holds $CACHE/.virtiofsd.lock for more than 30 minutes"
[ -f "$DEST/version" ] && finish # built by another run while this one waited

# --- Build dependencies ------------------------------------------------------------------
command -v cargo >/dev/null 2>&1 || die "no cargo on PATH (a Rust toolchain is needed to build virtiofsd)"
command -v cc >/dev/null 2>&1 || die "no C compiler/linker (cc) on PATH"
missing=()
for p in "${BUILD_DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    apt-get -o DPkg::Lock::Timeout=300 -qq update >/dev/null
  fi
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -qq install -y \
    --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Build -----------------------------------------------------------------------------------
log "building virtiofsd $VERSION (cargo install --locked; several minutes on 2 shared cores)"
START=$SECONDS
TMP=$(mktemp -d "$CACHE/.build-virtiofsd-$VERSION.XXXXXX")
TARGET=$(mktemp -d /tmp/envrig-virtiofsd-target.XXXXXX)
trap 'rm -rf "$TMP" "$TARGET"' EXIT

# Run from the temp folder so that no .cargo/config.toml of the caller's directory (the repo)
# applies; the registry download goes to $CARGO_HOME as usual.
(cd "$TMP" && CARGO_TARGET_DIR=$TARGET nice -n 10 cargo install --quiet --locked --no-track \
  --root "$TMP/root" "virtiofsd@$VERSION") || die "cargo install virtiofsd@$VERSION failed"

OUT=$TMP/out
mkdir -p "$OUT/bin"
install -m 0755 "$TMP/root/bin/virtiofsd" "$OUT/bin/virtiofsd"
ver=$("$OUT/bin/virtiofsd" --version 2>&1 | head -n1) || die "the built virtiofsd does not run: $ver"
[[ "$ver" == *"$VERSION"* ]] || die "the built virtiofsd reports '$ver', expected $VERSION"
# The crate's vhost-user descriptor (what a distribution puts in /usr/share/qemu/vhost-user/),
# kept for reference: libvirt needs no descriptor when the domain XML names the binary.
src=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name "virtiofsd-$VERSION" 2>/dev/null | head -n1)
if [ -n "$src" ] && [ -f "$src/50-virtiofsd.json" ]; then
  sed "s|\"/usr/libexec/virtiofsd\"|\"$INSTALL\"|" "$src/50-virtiofsd.json" >"$OUT/50-virtiofsd.json"
fi
echo "$ver" >"$OUT/version"
chmod 644 "$OUT"/version "$OUT"/*.json 2>/dev/null || true
chmod 755 "$OUT" "$OUT/bin"
mv -T "$OUT" "$DEST"
log "built $ver in $((SECONDS - START)) s ($(du -sh "$DEST/bin/virtiofsd" | cut -f1))"
finish
