#!/usr/bin/env bash
# libvirt-setup.sh: installs and starts libvirt + QEMU (from bookworm-backports) for envrig's
# libvirt provider and its tests on a Debian 12 host without systemd.
#
# Idempotent and quiet: every step checks first and prints only when it does something.
# All waits are bounded. Needs root (or sudo).
#
#   scripts/libvirt-setup.sh
#
# What it does:
#   - adds /etc/apt/sources.list.d/backports.sources when no bookworm-backports suite is set up;
#   - installs libvirt 11 + QEMU 10 from bookworm-backports and passt, dnsmasq-base and
#     openssh-client and genisoimage (NoCloud seeds) from bookworm (apt is skipped when everything is installed already);
#   - starts virtlogd and libvirtd in the background and waits until qemu:///system answers;
#   - keeps libvirt's `default` network (192.168.122.0/24) from being autostarted: envrig's
#     traffic stays on this machine, on subnets inside 198.18.0.0/15.
# Last line on stderr: "libvirt-setup: ready: libvirt X, qemu Y".
set -euo pipefail

log() { printf 'libvirt-setup: %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

LOG_DIR=${ENVRIG_SETUP_LOG_DIR:-/var/log/envrig}
$SUDO mkdir -p "$LOG_DIR"

# --- Packages ---------------------------------------------------------------------------
BPO_PKGS=(libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-daemon-driver-network
  libvirt-daemon-driver-storage libvirt-clients qemu-system-x86 qemu-utils libvirt-dev pkg-config)
# pkg-config has no backport: apt takes bookworm's with -t bookworm-backports too.
BPO_REQUIRED=(libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils libvirt-dev)
MAIN_PKGS=(passt dnsmasq-base openssh-client genisoimage)

installed_version() {
  { dpkg-query -W -f='${Status}|${Version}' "$1" 2>/dev/null || true; } |
    sed -n 's/^install ok installed|//p'
}

missing=()
for p in "${BPO_PKGS[@]}" "${MAIN_PKGS[@]}"; do
  v=$(installed_version "$p")
  if [ -z "$v" ]; then
    missing+=("$p")
  elif [[ " ${BPO_REQUIRED[*]} " == *" $p "* && "$v" != *bpo12* ]]; then
    # bookworm's own libvirt 9 / QEMU 7 lack what envrig uses (passt port forwards and more).
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  if ! grep -rqs --include='*.sources' --include='*.list' 'bookworm-backports' \
      /etc/apt/sources.list /etc/apt/sources.list.d/; then
    src=/etc/apt/sources.list.d/debian.sources
    uris=$(sed -n 's/^URIs:[[:space:]]*//p' "$src" | head -n1)
    signed=$(sed -n 's/^Signed-By:[[:space:]]*//p' "$src" | head -n1)
    [ -n "$uris" ] || { log "no URIs: line in $src"; exit 1; }
    log "adding bookworm-backports ($uris)"
    $SUDO tee /etc/apt/sources.list.d/backports.sources >/dev/null <<EOF
Types: deb
URIs: $uris
Suites: bookworm-backports
Components: main
${signed:+Signed-By: $signed}
EOF
  fi
  APT=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y -qq)
  log "apt-get update"
  $SUDO "${APT[@]}" update >/dev/null
  log "installing ${missing[*]}"
  quiet_debconf() { grep -v '^debconf: delaying package configuration' >&2 || true; }
  $SUDO "${APT[@]}" install --no-install-recommends -t bookworm-backports "${BPO_PKGS[@]}" \
    >/dev/null 2> >(quiet_debconf)
  $SUDO "${APT[@]}" install --no-install-recommends "${MAIN_PKGS[@]}" >/dev/null 2> >(quiet_debconf)
fi

# --- Daemons ----------------------------------------------------------------------------
virsh_answers() { timeout 10 virsh -q -c qemu:///system version >/dev/null 2>&1; }

if ! virsh_answers; then
  if ! pgrep -x virtlogd >/dev/null 2>&1; then
    log "starting virtlogd"
    $SUDO virtlogd -d
  fi
  if ! pgrep -x libvirtd >/dev/null 2>&1; then
    # A libvirtd starting up would autostart the `default` network (from the package
    # libvirt-daemon-config-network, if present): turn that off before it starts.
    if [ -e /etc/libvirt/qemu/networks/autostart/default.xml ]; then
      log "turning off autostart of libvirt's default network"
      $SUDO rm -f /etc/libvirt/qemu/networks/autostart/default.xml
    fi
    log "starting libvirtd (log: $LOG_DIR/libvirtd.log)"
    # The log settings go through the environment, so /etc/libvirt stays untouched.
    $SUDO env LIBVIRT_LOG_OUTPUTS="3:file:$LOG_DIR/libvirtd.log" libvirtd -d
  fi
  deadline=$((SECONDS + 60))
  until virsh_answers; do
    if [ $SECONDS -ge $deadline ]; then
      log "libvirtd did not answer within 60 s; its log:"
      tail -n 30 "$LOG_DIR/libvirtd.log" >&2 || true
      exit 1
    fi
    if ! pgrep -x libvirtd >/dev/null 2>&1; then
      # A libvirtd stopped moments ago keeps its pidfile until it has exited (about 10 s):
      # a new one dies with "Unable to obtain pidfile". Try again until the deadline.
      sleep 1
      if ! pgrep -x libvirtd >/dev/null 2>&1; then
        log "starting libvirtd (again: the previous one was still exiting)"
        $SUDO env LIBVIRT_LOG_OUTPUTS="3:file:$LOG_DIR/libvirtd.log" libvirtd -d || true
      fi
    fi
    sleep 0.5
  done
fi

# --- libvirt's `default` network --------------------------------------------------------
# Never started here. Its autostart (set by the package) is turned off so that a libvirtd
# started later does not bring up 192.168.122.0/24; if something else started it, it stays.
if virsh -q -c qemu:///system net-info default >/dev/null 2>&1; then
  if virsh -c qemu:///system net-info default 2>/dev/null | grep -Eq '^Autostart:[[:space:]]+yes'; then
    log "turning off autostart of libvirt's default network"
    virsh -q -c qemu:///system net-autostart --disable default >/dev/null
  fi
fi

ver=$(virsh -c qemu:///system version 2>/dev/null)
lv=$(printf '%s\n' "$ver" | sed -n 's/^Using library: libvirt //p')
qv=$(printf '%s\n' "$ver" | sed -n 's/^Running hypervisor: QEMU //p')
log "ready: libvirt ${lv:-?}, qemu ${qv:-?}"
