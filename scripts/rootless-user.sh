#!/usr/bin/env bash
# rootless-user.sh: prepares the ordinary user account the rootless tests run envrig as.
#
# Idempotent. Needs root. Creates the user (ENVRIG_TEST_USER, default `envrig-user`) with a
# home, a range of subordinate uids and gids for rootless Podman's user namespace, its runtime
# folder (/run/user/UID, which systemd-logind would make on a host that has it), and its own
# Podman configuration (scripts/podman-conf.sh). Prints
# `USER UID HOME` on its last line.
set -euo pipefail
log() { printf 'rootless-user: %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root"; exit 1; }

user=${ENVRIG_TEST_USER:-envrig-user}
if ! id -u "$user" >/dev/null 2>&1; then
  log "creating user $user"
  useradd --create-home --shell /bin/bash --user-group "$user"
fi
uid=$(id -u "$user")
home=$(getent passwd "$user" | cut -d: -f6)

# Subordinate ids: 65536 of them, in a range no other user of this host has.
for f in /etc/subuid /etc/subgid; do
  touch "$f"
  grep -q "^$user:" "$f" || echo "$user:$((100000 + uid * 65536)):65536" >>"$f"
done

run=/run/user/$uid
mkdir -p "$run"
chown "$user:$user" "$run"
chmod 700 "$run"

# Rootless Podman: its own configuration (scripts/podman-conf.sh: this host's limits, cgroupfs,
# networks inside 198.18.0.0/15, slirp4netns' too) and overlay storage (the kernel's rootless
# overlay; Podman would pick vfs here, which copies every image per container).
# Written by the user itself (root writing into a folder the user owns could be led along a
# link the user planted).
conf="$home/.config/containers"
as_user() { runuser -u "$user" -- "$@"; }
as_user mkdir -p "$conf"
"$(dirname "$0")/podman-conf.sh" - 198.19.192.0/24 198.19.224.0/19 198.19.200.0/24 |
  as_user sh -c 'f=$1/containers.conf
    if [ -e "$f" ] && [ "$(head -n 1 "$f")" != "$2" ]; then
      echo "rootless-user: $f is not envrig'"'"'s; left as it is" >&2; cat >/dev/null; exit 0
    fi
    cat >"$f.new" && mv "$f.new" "$f"' sh "$conf" "# written by envrig's scripts/podman-conf.sh"
as_user sh -c '[ -e "$1/storage.conf" ] || printf "[storage]\ndriver = \"overlay\"\n" >"$1/storage.conf"' sh "$conf"

echo "$user $uid $home"
