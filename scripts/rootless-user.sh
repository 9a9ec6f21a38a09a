#!/usr/bin/env bash
# rootless-user.sh: prepares the ordinary user account the rootless tests run envrig as.
#
# Idempotent. Needs root. Creates the user (ENVRIG_TEST_USER, default `envrig-user`) with a
# home, a range of subordinate uids and gids for rootless Podman's user namespace, its runtime
# folder (/run/user/UID, which systemd-logind would make on a host that has it), and its own
# containers.conf, with this host's limits and subnets inside 198.18.0.0/15. Prints
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

# Rootless Podman: cgroupfs (no systemd user session here), this host's hard limits (no
# container may ask for more), and networks inside 198.18.0.0/15.
conf="$home/.config/containers"
mkdir -p "$conf"
cat >"$conf/containers.conf.new" <<CONF
# written by envrig's scripts/rootless-user.sh
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
default_subnet = "198.19.192.0/24"
default_subnet_pools = [{"base" = "198.19.224.0/19", "size" = 24}]
CONF
mv "$conf/containers.conf.new" "$conf/containers.conf"
chown -R "$user:$user" "$home/.config"

echo "$user $uid $home"
