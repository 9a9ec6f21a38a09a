#!/usr/bin/env bash
# podman-conf.sh FILE SUBNET POOL [SLIRP_CIDR]: writes the containers.conf envrig's tests run
# Podman with (root's in /etc/containers; FILE `-`: to stdout, which rootless-user.sh has the
# test user write into its own home).
#
# Only a file envrig wrote (its first line says so) or none is written: a host's own Podman
# configuration is left alone. What it sets, and why (measured on Debian 12's Podman 4.3):
# - cgroupfs: there is no systemd to manage cgroups;
# - runc: crun 1.8 refuses a host with hybrid cgroups ("drop all controllers from cgroupv2");
# - this host's hard limits for open files, and 32768 processes: a container asking for more
#   than the runtime may raise is refused (`setrlimit ... operation not permitted`);
# - netavark, its default network and the pool of the networks it makes inside
#   198.18.0.0/15, and rootless slirp4netns' network too, so no traffic leaves the host's
#   test ranges.
set -euo pipefail
file=$1 subnet=$2 pool=$3 slirp=${4:-}
mark="# written by envrig's scripts/podman-conf.sh"
if [ "$file" != - ] && [ -e "$file" ] && [ "$(head -n 1 "$file")" != "$mark" ]; then
  echo "podman-conf: $file is not envrig's; left as it is" >&2
  exit 0
fi
conf() {
  echo "$mark"
  echo '[containers]'
  echo "default_ulimits = [\"nofile=$(ulimit -Hn):$(ulimit -Hn)\", \"nproc=32768:32768\"]"
  echo
  echo '[engine]'
  echo 'runtime = "runc"'
  echo 'cgroup_manager = "cgroupfs"'
  echo 'events_logger = "file"'
  [ -z "$slirp" ] || echo "network_cmd_options = [\"cidr=$slirp\"]"
  echo
  echo '[network]'
  echo 'network_backend = "netavark"'
  echo "default_subnet = \"$subnet\""
  echo "default_subnet_pools = [{\"base\" = \"$pool\", \"size\" = 24}]"
}
if [ "$file" = - ]; then
  conf
else
  mkdir -p "$(dirname "$file")"
  conf >"$file.new"
  mv "$file.new" "$file"
fi
