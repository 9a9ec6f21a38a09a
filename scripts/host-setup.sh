#!/usr/bin/env bash
# host-setup.sh: installs and starts what envrig and its tests need on a Debian 12 host.
#
# Idempotent: every step checks first and does nothing when the host already has it.
# Needs root (or sudo) for apt-get and for starting dockerd. Safe to run again at any time.
#
#   scripts/host-setup.sh            Docker engine, test images, local registry, libvirt
#                                    and QEMU, the small test guest
#
# The daemons are started in the background (this machine has no systemd) with their
# networks inside 198.18.0.0/15, so test traffic never leaves the host.
set -euo pipefail

log() { printf 'host-setup: %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

LOG_DIR=${ENVRIG_SETUP_LOG_DIR:-/var/log/envrig}
$SUDO mkdir -p "$LOG_DIR"

apt_updated=0
apt_install() {
  # apt_install PKG... : installs the packages that are missing.
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated = 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- Docker -----------------------------------------------------------------------------
# docker.io is Debian's engine (20.10, API 1.41); iptables and friends come with it.
apt_install docker.io busybox-static docker-registry ca-certificates

docker_answers() { timeout 5 docker version --format '{{.Server.APIVersion}}' >/dev/null 2>&1; }

start_containerd() {
  if ! pgrep -x containerd >/dev/null 2>&1; then
    log "starting containerd"
    $SUDO sh -c "nohup containerd >'$LOG_DIR/containerd.log' 2>&1 &"
    for _ in $(seq 1 50); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.1; done
  fi
}
start_dockerd() {
  log "starting dockerd"
  $SUDO sh -c "nohup dockerd --containerd=/run/containerd/containerd.sock \
    --bip 198.19.255.1/24 --default-address-pool base=198.18.0.0/16,size=24 \
    >'$LOG_DIR/dockerd.log' 2>&1 &"
}
# Bounded: a dockerd that is still shutting down (from an earlier run) is waited for, then
# replaced; one that never answers fails with its log.
deadline=$((SECONDS + 90))
until docker_answers; do
  start_containerd
  pgrep -x dockerd >/dev/null 2>&1 || start_dockerd
  if [ "$SECONDS" -ge "$deadline" ]; then
    log "dockerd did not answer within 90 s; its log:"
    tail -n 30 "$LOG_DIR/dockerd.log" >&2 || true
    exit 1
  fi
  sleep 0.5
done
log "docker engine $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"

# --- Test image -------------------------------------------------------------------------
# No registry is reachable from here: the tests and the demo use a tiny image built from
# Debian's busybox-static. Its tag carries the hash of the recipe, so a changed recipe
# builds a new image and an unchanged one is reused.
TEST_IMAGE_REPO=envrig-test/busybox
recipe_hash=$( { cat "$0"; sha256sum /bin/busybox; } | sha256sum | cut -c1-12)
TEST_IMAGE="$TEST_IMAGE_REPO:$recipe_hash"
if ! docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
  log "building $TEST_IMAGE"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/etc" "$root/tmp" "$root/root" "$root/proc" "$root/sys" "$root/dev"
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list-full); do
    [ "$applet" = bin/busybox ] && continue
    ln -sf /bin/busybox "$root/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  tar -C "$root" -c . | docker import \
    --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' - "$TEST_IMAGE" >/dev/null
  rm -rf "$root"
  trap - EXIT
fi
docker tag "$TEST_IMAGE" "$TEST_IMAGE_REPO:latest"

# --- Local registry ---------------------------------------------------------------------
# Debian's docker-registry on loopback, so pulls can be tested without the Internet.
REGISTRY_ADDR=${ENVRIG_TEST_REGISTRY:-127.0.0.1:5000}
registry_answers() { timeout 3 bash -c "exec 3<>/dev/tcp/${REGISTRY_ADDR%:*}/${REGISTRY_ADDR#*:}" 2>/dev/null; }
if ! registry_answers; then
  log "starting docker-registry on $REGISTRY_ADDR"
  conf="$LOG_DIR/registry.yml"
  $SUDO mkdir -p /var/lib/envrig-registry
  $SUDO tee "$conf" >/dev/null <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/envrig-registry
http:
  addr: $REGISTRY_ADDR
YAML
  $SUDO sh -c "nohup docker-registry serve '$conf' >'$LOG_DIR/registry.log' 2>&1 &"
  for i in $(seq 1 40); do
    registry_answers && break
    if [ "$i" = 40 ]; then log "docker-registry did not answer; its log:"; tail -n 20 "$LOG_DIR/registry.log" >&2; exit 1; fi
    sleep 0.25
  done
fi

# --- Podman -------------------------------------------------------------------------------
# Podman 4.3 (Debian 12) as a second engine behind the Docker API, rootful and rootless:
# netavark and aardvark-dns (names on its networks), runc (crun 1.8 refuses this host's
# hybrid cgroups), catatonit (`init`), uidmap and slirp4netns (rootless). Its API service is
# not started here: envrig starts it where nothing answers, as users without systemd need.
apt_install podman netavark aardvark-dns runc catatonit uidmap slirp4netns fuse-overlayfs
"$(dirname "$0")/podman-conf.sh" /etc/containers/containers.conf 198.19.128.0/24 198.19.160.0/19
podman_load() {
  # podman_load PODMAN-COMMAND...: the test image into that Podman's storage, by recipe hash.
  if ! (cd / && "$@" image exists "localhost/$TEST_IMAGE") 2>/dev/null; then
    log "loading $TEST_IMAGE into Podman's storage ($*)"
    docker save "$TEST_IMAGE" | (cd / && "$@" load -q) >/dev/null
  fi
  (cd / && "$@" tag "localhost/$TEST_IMAGE" "localhost/$TEST_IMAGE_REPO:latest")
}
podman_load podman
# The ordinary user the rootless tests run envrig as, with the test image in its storage.
read -r test_user test_uid _ < <("$(dirname "$0")/rootless-user.sh" | tail -n 1)
podman_load runuser -u "$test_user" -- env XDG_RUNTIME_DIR="/run/user/$test_uid" podman
log "podman $(podman version --format '{{.Client.Version}}'), rootless as $test_user"

# --- libvirt -----------------------------------------------------------------------------
# libvirt and QEMU from bookworm-backports (also the -dev package the build links against),
# the daemons, and the small test guest (cached outside the repo by its recipe's hash).
here=$(cd "$(dirname "$0")" && pwd)
"$here/libvirt-setup.sh"
guest=$("$here/build-test-guest.sh" | tail -n 1)
# A real Debian 12 vagrant-libvirt box (systemd, sshd, vagrant user): built once, cached.
debian_box=$("$here/build-debian-box.sh" | tail -n 1)
# The same Debian as a "stock cloud image" (cloud-init, no agent, no key): NoCloud seeds.
cloud_box=$(ENVRIG_BOX_FLAVOR=cloud "$here/build-debian-box.sh" | tail -n 1)
# virtiofsd (live synced folders on libvirt): Debian 12 has no package; built once, cached.
virtiofsd=$("$here/build-virtiofsd.sh" | tail -n 1)

log "ready: docker, image $TEST_IMAGE_REPO:latest, registry $REGISTRY_ADDR, libvirt, guest $guest, box $debian_box, cloud box $cloud_box, $virtiofsd"

# --- Fuzzing ------------------------------------------------------------------------------
# cargo-fuzz for bench/fuzz.sh (and the short round in scripts/test.sh); libFuzzer is C++.
# Bounded: a build of cargo-fuzz that takes more than 15 minutes fails setup.
apt_install g++
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  timeout 900 cargo install cargo-fuzz --locked --quiet
fi
log "fuzzing: $(cargo fuzz --version)"
