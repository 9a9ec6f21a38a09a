#!/usr/bin/env bash
# engines.sh: a rig of real engines on this one machine, for envrig's multi-host work
# (machines placed over several engine endpoints, names across hosts on a Docker Swarm
# overlay network, remote libvirt hosts).
#
#   scripts/engines.sh up N [M]   N Docker daemons (0-8) and M libvirt hosts (0-8, default 0).
#                                 Prints one line per endpoint on stdout, docker first:
#                                   d1 tcp://198.18.200.11:2375
#                                   l1 qemu+tcp://198.18.200.31/system
#                                 Everything else goes to stderr. Idempotent: a healthy rig
#                                 is only checked (under a second); a node whose daemon died
#                                 is restarted with its data, Swarm membership and images
#                                 are mended; another N or M, or a broken hub, rebuilds the
#                                 rig from scratch. Measured here: up 3 2 cold 6-23 s (most
#                                 of it libvirtd's QEMU probe, when it probes), warm 0.4 s;
#                                 down 2-3 s.
#   scripts/engines.sh ls         The endpoint lines of the rig that is up (exit 1, no line,
#                                 when none is).
#   scripts/engines.sh check      A container on d2 finds a container on d3 (d1 and d2 when
#                                 N is 2) by its alias on an attachable overlay network and
#                                 pings it; `up` runs it too whenever it built or repaired.
#   scripts/engines.sh down       Stops and removes all of it: processes, namespaces, links,
#                                 cgroups, folders. Succeeds when nothing is up.
#
# Needs root, bash, iproute2, util-linux (nsenter, unshare, setsid, flock), docker.io
# (dockerd, containerd, docker) for N > 0, libvirt (libvirtd, virtlogd, virsh) for M > 0.
# No systemd: the daemons run in the background with their logs in files. All waits are
# bounded; a daemon that does not come up fails the run with the last lines of its log.
#
# Layout
#   network   Every engine has a network namespace of its own (envrig-engines-d1, ...-l1)
#             with one veth, eth0, on the bridge br0 of a hub namespace (envrig-engines-hub).
#             The bridge is not in the root namespace because there the FORWARD policy is
#             DROP with bridge filtering on. The root namespace reaches the engines through
#             its one veth engines0 (198.18.200.1/24) on the same bridge; no root-namespace
#             firewall rule is touched, and the engines have no default route: traffic
#             stays on this machine.
#   addresses 198.18.200.0/24 is the link (ENGINES_NET=198.18.X picks another /24 of
#             198.18.0.0/15; up refuses a /24 this machine routes already): the root
#             namespace .1, dI .(10+I), lJ .(30+J), each with a fixed MAC. The rig's Docker
#             networks take 198.19.192.0 to 198.19.247.255: above the /24s envrig picks from
#             the bottom of 198.19.0.0/16, below the host dockerd's bridge 198.19.255.0/24,
#             and apart from the host dockerd's pool 198.18.0.0/16:
#               Swarm overlays (--default-addr-pool)  198.19.192.0/20, a /24 each
#               dI's docker0 (--bip)                  198.19.(207+I).0/24   (208-215)
#               dI's local networks                   198.19.(212+4I).0/22  (216-247)
#   docker    dI: a containerd and a dockerd of its own (containerd.sock, data, exec root,
#             pidfiles, cgroup parent /envrig-engines/dI) in the network namespace plus
#             mount and UTS namespaces of their own (hostname envrig-dI). Inside, per-node
#             folders cover /run/containerd (dockerd 20.10 would use the host's containerd
#             whenever /run/containerd/containerd.sock exists, and shims put their sockets
#             there) and /run/docker, and its own engine key gives it an engine ID of its own.
#             API: tcp://ADDR:2375 (no TLS, bound to ADDR only) and
#             unix:///run/envrig-engines/dI/docker.sock. d1 is the Swarm's only manager, the
#             others are workers (no IPVS in this kernel: use plain containers with
#             --network-alias on attachable overlays, not service VIPs or the routing mesh). Images (envrig-test/busybox:latest, busybox:latest and
#             those named in ENGINES_IMAGES, space separated) are copied from this machine's
#             docker with `docker save | docker load`, so they keep one ID everywhere; a
#             missing one is skipped with a warning. No registry is needed; registries on
#             the link ($NET.0/24, e.g. a test's on the root namespace's .1) are spoken to
#             over HTTP (`insecure-registries` in the node's daemon.json).
#   libvirt   lJ: a virtlogd and a libvirtd (listen_tcp, no auth, on its address only) in
#             network, mount and UTS namespaces of their own (hostname envrig-lJ), where
#             per-host folders cover /etc/libvirt (this host's *.conf and nwfilters only: no
#             networks, pools, domains or secrets, so `default` never exists there, let alone
#             starts), /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and
#             /run/libvirt. An empty libvirt: envrig brings its boxes through the storage API.
#             The host's own libvirtd, its sockets and its state are not touched. There is no
#             cgroup hierarchy in these hosts' /sys (ip netns exec mounts a /sys of the
#             namespace), so their VMs (TCG: <domain type='qemu'>) run without cgroups.
#             A host's networks get their bridges, dnsmasq and firewall rules in its own
#             network namespace.
#   mounts    The per-engine mount namespaces are slaves of the root one: mounts made inside
#             (bind mounts, overlays, network namespace files) never show in the root
#             namespace and vanish with the last process; mounts the host removes leave them
#             too, so a rig never pins a host container's mounts or namespaces.
#   folders   /var/lib/envrig-engines/NODE (data, config, logs: containerd.log, dockerd.log,
#             libvirtd.log) and /run/envrig-engines/NODE (sockets, pidfiles). One run at a
#             time: engines.sh holds a lock (flock) on /run itself, so no lock file is left.
#
# Debugging
#   docker -H unix:///run/envrig-engines/d1/docker.sock info
#   virsh -c 'qemu+unix:///system?socket=/run/envrig-engines/l1/libvirt/libvirt-sock' list
#   nsenter --target "$(cat /run/envrig-engines/l1/libvirtd.pid)" --mount --net --uts sh
#   nsenter --target "$(cat /run/envrig-engines/d1/containerd.pid)" --mount --net --uts sh
set -euo pipefail
shopt -s nullglob

PROG=engines.sh
LIB=/var/lib/envrig-engines
RUN=/run/envrig-engines
NSP=envrig-engines # network namespaces: $NSP-hub, $NSP-d1, $NSP-l1 ...
HUB=$NSP-hub
ROOT_IF=engines0 # the root namespace's veth on the hub's bridge
CG=envrig-engines # cgroup parent of the rig's containers: /$CG/d1 ...
NET=${ENGINES_NET:-198.18.200}
RECIPE=2 # raised whenever the daemons' configuration changes: a rig of another is rebuilt
HOST_IP=$NET.1
SWARM_POOL=198.19.192.0/20
MAX=8
IMAGES="envrig-test/busybox:latest busybox:latest ${ENGINES_IMAGES:-}"
CHECK_NET=envrig-engines-check

d_addr() { echo "$NET.$((10 + $1))"; }
l_addr() { echo "$NET.$((30 + $1))"; }
d_bip() { echo "198.19.$((207 + $1)).1/24"; }
d_pool() { echo "198.19.$((212 + 4 * $1)).0/22"; }

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
MARK='--- engines.sh: starting'
mark() { echo "$MARK $(date -u +%FT%TZ)" >>"$1"; } # LOG: where this start's lines begin
log_tail() { # LOG: the last lines of its latest start, on stderr
  if [ -s "$1" ]; then
    log "last lines of $1:"
    awk -v m="$MARK" 'index($0, m) == 1 { n = 0 } { a[n++] = $0 }
      END { for (i = (n > 15 ? n - 15 : 0); i < n; i++) print "    " a[i] }' "$1" >&2
  else
    log "(nothing in $1)"
  fi
}

# until_ok SECONDS CMD...: CMD every 0.2 s until it succeeds; fails after SECONDS (and at
# most 5 tries a second, however long each try takes).
until_ok() {
  local secs=$1 end i
  shift
  end=$((SECONDS + secs))
  for ((i = 0; i < secs * 5; i++)); do
    "$@" && return 0
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.2
  done
  return 1
}

# The docker CLI against a rig daemon, and virsh against a rig libvirtd, each bounded.
dk() { # ADDR SECONDS ARGS...
  local a=$1 t=$2
  shift 2
  timeout "$t" env -u DOCKER_HOST -u DOCKER_CONTEXT -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH \
    docker -H "tcp://$a:2375" "$@"
}
vs() { # ADDR SECONDS ARGS...
  local a=$1 t=$2
  shift 2
  timeout "$t" virsh -q -c "qemu+tcp://$a/system" "$@"
}

# --- Processes -----------------------------------------------------------------------------
ROOT_NETNS=$(stat -L -c %i /proc/$$/ns/net)

alive() { # PID: it runs (a zombie, state Z or X, counts as dead: PID 1 here reaps late)
  local line st
  [[ ${1:-} =~ ^[0-9]+$ ]] || return 1
  { read -r line </proc/"$1"/stat; } 2>/dev/null || return 1
  st=${line##*) }
  st=${st%% *}
  [[ $st != Z && $st != X ]]
}
netns_of() { stat -L -c %i "/proc/$1/ns/net" 2>/dev/null || true; }

pid_from() { # PIDFILE: its PID, if that still is a rig daemon (alive, not in the root netns)
  local pid comm
  pid=$(cat "$1" 2>/dev/null) || return 1
  alive "$pid" || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  case $comm in containerd | dockerd | libvirtd | virtlogd) ;; *) return 1 ;; esac
  [ "$(netns_of "$pid")" != "$ROOT_NETNS" ] || return 1
  echo "$pid"
}

# node_pids NODE...: every live process of these nodes: what runs in their network
# namespaces (daemons, shims, VMs), their pidfiles' daemons, their containers (by cgroup).
# Never a process of the root network namespace, so never the host's own daemons.
node_pids() {
  local node f p
  for node in "$@"; do
    ip netns pids "$NSP-$node" 2>/dev/null || true
    for f in "$RUN/$node"/*.pid; do pid_from "$f" || true; done
    for f in /sys/fs/cgroup/*/"$CG/$node" /sys/fs/cgroup/"$CG/$node"; do
      find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null || true
    done
  done | sort -un | while read -r p; do
    if [ "$p" != $$ ] && alive "$p" && [ "$(netns_of "$p")" != "$ROOT_NETNS" ]; then echo "$p"; fi
  done
}

# kill_nodes NODE...: SIGKILL to every process of these nodes, then a bounded wait (10 s a
# round) until each is gone or a zombie. A round catches what forked meanwhile.
kill_nodes() {
  local round i p pids left=()
  for round in 1 2 3 4; do
    mapfile -t pids < <(node_pids "$@")
    [ ${#pids[@]} -gt 0 ] || return 0
    [ "$round" -lt 4 ] || break
    kill -KILL "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      left=()
      for p in "${pids[@]}"; do if alive "$p"; then left+=("$p"); fi; done
      [ ${#left[@]} -gt 0 ] || break
      sleep 0.1
    done
    if [ ${#left[@]} -gt 0 ]; then
      ps -o pid=,stat=,args= -p "$(IFS=,; echo "${left[*]}")" >&2 || true
      die "processes of $* still run 10 s after SIGKILL: ${left[*]}"
    fi
  done
  ps -o pid=,stat=,args= -p "$(IFS=,; echo "${pids[*]}")" >&2 || true
  die "processes of $* keep coming back after SIGKILL: ${pids[*]}"
}

rm_cgroups() { # NODE... (none: every cgroup of the rig): empty cgroups, deepest first
  local base n dirs=() i
  for base in /sys/fs/cgroup/*/"$CG" /sys/fs/cgroup/"$CG"; do
    [ -d "$base" ] || continue
    if [ $# -eq 0 ]; then
      dirs+=("$base")
    else
      for n in "$@"; do [ ! -d "$base/$n" ] || dirs+=("$base/$n"); done
    fi
  done
  [ ${#dirs[@]} -gt 0 ] || return 0
  for ((i = 0; i < 20; i++)); do
    find "${dirs[@]}" -depth -type d -exec rmdir {} + 2>/dev/null || true
    local remaining=0 d
    for d in "${dirs[@]}"; do [ ! -d "$d" ] || remaining=1; done
    [ $remaining = 1 ] || return 0
    sleep 0.1
  done
  log "warning: cgroups left: $(find "${dirs[@]}" -type d | head -n 5 | tr '\n' ' ')"
}

# destroy_domains J...: VMs of running rig libvirt hosts are destroyed (so libvirt cleans
# up after them) before their processes are killed.
destroy_domains() {
  local j a d
  for j in "$@"; do
    pid_from "$RUN/l$j/libvirtd.pid" >/dev/null || continue
    a=$(l_addr "$j")
    vs "$a" 5 list --name 2>/dev/null | while read -r d; do
      [ -z "$d" ] || vs "$a" 20 destroy "$d" >/dev/null 2>&1 || log "warning: l$j: could not destroy domain $d"
    done || true
  done
}

# --- Network ---------------------------------------------------------------------------------
hub_ok() {
  [ -e "/run/netns/$HUB" ] || return 1
  [[ $(ip -n "$HUB" -br link show dev br0 2>/dev/null) == *UP* ]] || return 1
  [[ $(ip -br -4 addr show dev "$ROOT_IF" 2>/dev/null) == *UP*" $HOST_IP/24"* ]]
}

make_hub() {
  local used
  used=$({ ip -4 -o route show match "$NET.0/24" && ip -4 -o route show root "$NET.0/24"; } |
    grep -v '^default' | sort -u | tr -s ' \n' ' ' || true)
  [ -z "$used" ] || die "$NET.0/24 is routed here already (${used% }): set ENGINES_NET=198.18.X to use another /24"
  log "network: hub $HUB (bridge br0), $ROOT_IF $HOST_IP/24 in the root namespace"
  ip netns add "$HUB"
  ip -n "$HUB" link set lo up
  ip -n "$HUB" link add br0 type bridge
  ip -n "$HUB" link set br0 up
  ip link add "$ROOT_IF" address "$(mac_of "$HOST_IP")" type veth peer name eng-root netns "$HUB"
  ip -n "$HUB" link set eng-root master br0 up
  ip addr add "$HOST_IP/24" dev "$ROOT_IF"
  ip link set "$ROOT_IF" up
}

# mac_of ADDR: a fixed, locally administered MAC for a rig address. A restarted node keeps
# its MAC, so the neighbour caches of the root namespace and of the other nodes stay right:
# with a new random MAC they sent to the old one for 15-20 s, until their entries expired.
mac_of() {
  local o
  IFS=. read -r -a o <<<"$1"
  printf '02:00:%02x:%02x:%02x:%02x' "${o[0]}" "${o[1]}" "${o[2]}" "${o[3]}"
}

make_node_net() { # NODE ADDR: a fresh network namespace with eth0 on the hub's bridge
  local node=$1 addr=$2 ns=$NSP-$1
  ip -n "$HUB" link del "eng-$node" 2>/dev/null || true
  [ ! -e "/run/netns/$ns" ] || ip netns del "$ns"
  ip netns add "$ns"
  ip -n "$HUB" link add "eng-$node" type veth peer name eth0 address "$(mac_of "$addr")" netns "$ns"
  ip -n "$HUB" link set "eng-$node" master br0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  # passt (the VMs' user networking) will not start on a host without a default route; one
  # via an address nobody holds lets it start, and whatever is sent that way dies in the hub.
  case $node in
  l*) ip -n "$ns" route add default via "$NET.254" dev eth0 ;;
  esac
}

# stop_node NODE...: their processes killed, network namespaces and cgroups removed (their
# data folders stay).
stop_node() {
  local n hosts=()
  for n in "$@"; do [[ $n != l* ]] || hosts+=("${n#l}"); done
  destroy_domains "${hosts[@]}"
  kill_nodes "$@"
  for n in "$@"; do
    [ ! -e "/run/netns/$HUB" ] || ip -n "$HUB" link del "eng-$n" 2>/dev/null || true
    [ ! -e "/run/netns/$NSP-$n" ] || ip netns del "$NSP-$n"
    rm -rf --one-file-system "${RUN:?}/$n"
  done
  rm_cgroups "$@"
}

# --- Docker nodes ---------------------------------------------------------------------------
# Runs inside the node's new mount + UTS namespaces: names the host, covers /run/containerd
# and /run/docker with the node's own folders, then becomes containerd.
# shellcheck disable=SC2016 # expanded by that shell
NODE_INIT='set -e
echo "$1" >/proc/sys/kernel/hostname
for d in containerd docker; do
  if [ -d "/run/$d" ]; then mount --bind "$2/run-$d" "/run/$d"; fi
done
shift 2
exec "$@"'

docker_ok() { # I: its containerd and dockerd run, and it answers
  [ -e "/run/netns/$NSP-d$1" ] || return 1
  pid_from "$RUN/d$1/containerd.pid" >/dev/null || return 1
  pid_from "$RUN/d$1/dockerd.pid" >/dev/null || return 1
  dk "$(d_addr "$1")" 5 version --format '{{.Server.Version}}' >/dev/null 2>&1
}

start_docker() { # I: (re)starts containerd, then dockerd, of dI; does not wait for dockerd
  local i=$1 node=d$1 addr lib run cpid n
  addr=$(d_addr "$i")
  lib=$LIB/$node
  run=$RUN/$node
  stop_node "$node"
  make_node_net "$node" "$addr"
  mkdir -p "$run/run-containerd" "$run/run-docker" "$lib"
  cat >"$lib/containerd.toml" <<EOF
version = 2
root = "$lib/containerd"
state = "$run/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$run/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$lib/containerd-opt"
EOF
  # Its own engine key, so each daemon has an ID of its own (not the host's /etc/docker one).
  # Registries on the link (a test's, on this machine's $NET.1) are spoken to over HTTP.
  printf '{\n  "deprecated-key-path": "%s",\n  "insecure-registries": ["%s.0/24"]\n}\n' \
    "$lib/key.json" "$NET" >"$lib/daemon.json"
  log "docker: starting $node on $addr"
  mark "$lib/containerd.log"
  mark "$lib/dockerd.log"
  setsid nsenter --net="/run/netns/$NSP-$node" unshare --mount --uts --propagation slave -- \
    sh -c "$NODE_INIT" sh "envrig-$node" "$run" containerd --config "$lib/containerd.toml" \
    </dev/null >>"$lib/containerd.log" 2>&1 3>&- 9<&- &
  cpid=$!
  echo "$cpid" >"$run/containerd.pid"
  for ((n = 0; n < 100; n++)); do # 10 s
    [ ! -S "$run/containerd.sock" ] || break
    if ! alive "$cpid"; then
      log_tail "$lib/containerd.log"
      die "containerd of $node exited at start"
    fi
    sleep 0.1
  done
  if [ ! -S "$run/containerd.sock" ]; then
    log_tail "$lib/containerd.log"
    die "containerd of $node: no socket $run/containerd.sock after 10 s"
  fi
  setsid nsenter --target "$cpid" --mount --uts --net -- dockerd \
    --config-file "$lib/daemon.json" --data-root "$lib/docker" --exec-root "$run/docker" \
    --pidfile "$run/dockerd.pid" --containerd "$run/containerd.sock" \
    -H "unix://$run/docker.sock" -H "tcp://$addr:2375" --tls=false \
    --bip "$(d_bip "$i")" --default-address-pool "base=$(d_pool "$i"),size=24" \
    --cgroup-parent "/$CG/$node" --shutdown-timeout 2 \
    </dev/null >>"$lib/dockerd.log" 2>&1 3>&- 9<&- &
  echo $! >"$run/dockerd-spawn.pid"
}

wait_docker() { # I: bounded wait until dI answers
  local i=$1 node=d$1 addr end n
  addr=$(d_addr "$i")
  end=$((SECONDS + 45))
  for ((n = 0; n < 225; n++)); do
    if dk "$addr" 5 version --format '{{.Server.Version}}' >/dev/null 2>&1; then return 0; fi
    if ! alive "$(cat "$RUN/$node/dockerd-spawn.pid")"; then
      log_tail "$LIB/$node/dockerd.log"
      die "dockerd of $node exited at start"
    fi
    [ "$SECONDS" -lt "$end" ] || break
    sleep 0.2
  done
  log_tail "$LIB/$node/dockerd.log"
  die "dockerd of $node does not answer on tcp://$addr:2375 after 45 s"
}

swarm_settled() { # ADDR: its Swarm state is not in transition
  local st
  st=$(dk "$1" 5 info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null) || return 1
  [ "$st" != pending ]
}

swarm_ready() { # all N nodes Ready on the manager
  [ "$(dk "$(d_addr 1)" 5 node ls --format '{{.Status}}' 2>/dev/null | grep -cx Ready)" = "$N" ]
}

swarm_ensure() { # d1 the only manager, the others workers of its Swarm
  local a1 ai st id token managed ids=() i
  [ "$N" -ge 1 ] || return 0
  a1=$(d_addr 1)
  until_ok 20 swarm_settled "$a1" || true
  st=$(dk "$a1" 10 info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}')
  if [ "$st" != "active true" ]; then
    [ "${st%% *}" = inactive ] || dk "$a1" 20 swarm leave --force >/dev/null
    log "swarm: init on d1 ($a1), overlay networks from $SWARM_POOL"
    dk "$a1" 30 swarm init --advertise-addr "$a1" --listen-addr "$a1:2377" \
      --default-addr-pool "$SWARM_POOL" --default-addr-pool-mask-length 24 >/dev/null
    CHANGED=1
  fi
  ids+=("$(dk "$a1" 10 info --format '{{.Swarm.NodeID}}')")
  token=$(dk "$a1" 10 swarm join-token -q worker)
  managed=$(dk "$a1" 10 node ls -q)
  for ((i = 2; i <= N; i++)); do
    ai=$(d_addr "$i")
    until_ok 20 swarm_settled "$ai" || true
    read -r st id < <(dk "$ai" 10 info --format '{{.Swarm.LocalNodeState}} {{.Swarm.NodeID}}') || true
    if [ "$st" = active ] && [ -n "$id" ] && grep -qxF "$id" <<<"$managed"; then
      ids+=("$id")
      continue
    fi
    [ "$st" = inactive ] || dk "$ai" 20 swarm leave --force >/dev/null
    log "swarm: d$i ($ai) joins as a worker"
    dk "$ai" 30 swarm join --token "$token" --advertise-addr "$ai" --listen-addr "$ai:2377" \
      "$a1:2377" >/dev/null
    ids+=("$(dk "$ai" 10 info --format '{{.Swarm.NodeID}}')")
    CHANGED=1
  done
  for id in $managed; do # nodes of earlier joins, gone since
    if ! printf '%s\n' "${ids[@]}" | grep -qxF "$id"; then
      dk "$a1" 10 node rm --force "$id" >/dev/null || true
    fi
  done
  if ! until_ok 40 swarm_ready; then
    dk "$a1" 5 node ls >&2 || true
    die "swarm: not all $N nodes are Ready on d1 after 40 s"
  fi
}

images_ensure() { # the images of this machine's docker on every rig daemon, same IDs
  local img id i k have want=() ids=() need=() pids=() tar=$LIB/images.tar stamp
  [ "$N" -ge 1 ] || return 0
  for img in $IMAGES; do
    [[ ${img##*/} == *:* ]] || img=$img:latest
    if id=$(timeout 20 docker image inspect --format '{{.Id}}' "$img" 2>/dev/null); then
      want+=("$img")
      ids+=("$id")
    else
      log "warning: image $img is not in this machine's docker: not copied"
    fi
  done
  [ ${#want[@]} -gt 0 ] || return 0
  for ((i = 1; i <= N; i++)); do
    have=$(dk "$(d_addr "$i")" 20 images --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}')
    for k in "${!want[@]}"; do
      if ! grep -qxF "${want[k]} ${ids[k]}" <<<"$have"; then
        need+=("$i")
        break
      fi
    done
  done
  [ ${#need[@]} -gt 0 ] || return 0
  stamp=$(for k in "${!want[@]}"; do echo "${want[k]} ${ids[k]}"; done)
  if [ ! -f "$tar" ] || [ "$(cat "$LIB/images.list" 2>/dev/null)" != "$stamp" ]; then
    log "images: saving ${want[*]}"
    rm -f "$tar" "$LIB/images.list"
    timeout 300 docker save -o "$tar.part" "${want[@]}" || die "docker save ${want[*]} failed"
    mv "$tar.part" "$tar"
    echo "$stamp" >"$LIB/images.list"
  fi
  log "images: loading into$(printf ' d%s' "${need[@]}")"
  for i in "${need[@]}"; do
    dk "$(d_addr "$i")" 300 load -q -i "$tar" >"$RUN/d$i/load.log" 2>&1 &
    pids+=("$!")
  done
  for k in "${!pids[@]}"; do
    if ! wait "${pids[k]}"; then
      log_tail "$RUN/d${need[k]}/load.log"
      die "docker load into d${need[k]} failed"
    fi
  done
  for i in "${need[@]}"; do
    have=$(dk "$(d_addr "$i")" 20 images --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}')
    for k in "${!want[@]}"; do
      grep -qxF "${want[k]} ${ids[k]}" <<<"$have" || die "d$i: ${want[k]} is not ${ids[k]} after docker load"
    done
  done
  CHANGED=1
}

# check_overlay: a container on dA resolves a container on dB by its alias on an attachable
# overlay network and pings it; the containers and the network are removed again.
check_cleanup() { # A B
  dk "$(d_addr "$1")" 20 rm -f engines-check-a >/dev/null 2>&1 || true
  dk "$(d_addr "$2")" 20 rm -f engines-check-b >/dev/null 2>&1 || true
  dk "$(d_addr 1)" 20 network rm "$CHECK_NET" >/dev/null 2>&1 || true
}
check_overlay() {
  local a b aa ab img out
  if [ "$N" -lt 2 ]; then
    log "check: skipped (it needs 2 docker daemons)"
    return 0
  fi
  if [ "$N" -ge 3 ]; then a=2 b=3; else a=1 b=2; fi
  aa=$(d_addr "$a")
  ab=$(d_addr "$b")
  img=""
  for out in envrig-test/busybox:latest busybox:latest; do
    if dk "$ab" 10 image inspect "$out" >/dev/null 2>&1 && dk "$aa" 10 image inspect "$out" >/dev/null 2>&1; then
      img=$out
      break
    fi
  done
  [ -n "$img" ] || die "check: no busybox image on d$a and d$b (run scripts/host-setup.sh, then up again)"
  check_cleanup "$a" "$b"
  dk "$(d_addr 1)" 20 network create -d overlay --attachable "$CHECK_NET" >/dev/null
  if ! dk "$ab" 60 run -d --name engines-check-b --network "$CHECK_NET" \
    --network-alias engines-peer "$img" sleep 120 >/dev/null; then
    check_cleanup "$a" "$b"
    die "check: could not start a container on d$b on the overlay network"
  fi
  if ! out=$(dk "$aa" 60 run --rm --name engines-check-a --network "$CHECK_NET" "$img" sh -c '
      for i in 1 2 3 4 5 6 7 8 9 10; do
        if ping -c 1 -W 1 engines-peer; then exit 0; fi
        sleep 0.5
      done
      nslookup engines-peer; exit 1' 2>&1); then
    printf '%s\n' "$out" | sed 's/^/    /' >&2
    check_cleanup "$a" "$b"
    die "check: a container on d$a does not reach engines-peer on d$b over the overlay network"
  fi
  check_cleanup "$a" "$b"
  log "check: d$a resolves and pings engines-peer on d$b over an overlay: $(printf '%s\n' "$out" | head -n 1)"
}

# --- libvirt hosts --------------------------------------------------------------------------
# Runs inside the host's new mount + UTS namespaces: names the host, covers libvirt's
# folders with the host's own, starts virtlogd, then becomes libvirtd (in the foreground, so
# its log goes to a file).
# shellcheck disable=SC2016 # expanded by that shell
LV_INIT='set -e
echo "$1" >/proc/sys/kernel/hostname
run=$2
shift 2
while [ $# -gt 0 ]; do mount --bind "$1" "$2"; shift 2; done
virtlogd -d -p "$run/virtlogd.pid"
exec libvirtd --listen -p "$run/libvirtd.pid"'

libvirt_ok() { # J: its virtlogd and libvirtd run, and it answers
  [ -e "/run/netns/$NSP-l$1" ] || return 1
  pid_from "$RUN/l$1/virtlogd.pid" >/dev/null || return 1
  pid_from "$RUN/l$1/libvirtd.pid" >/dev/null || return 1
  vs "$(l_addr "$1")" 5 version >/dev/null 2>&1
}

skeleton() { # SRC DST: DST gets SRC's folders (two levels, owners and modes), no file
  local src=$1 dst=$2 d
  mkdir -p "$dst"
  [ -d "$src" ] || return 0
  while IFS= read -r -d '' d; do
    mkdir -p "$dst/$d"
    chown --reference="$src/$d" "$dst/$d"
    chmod --reference="$src/$d" "$dst/$d"
  done < <(cd "$src" && find . -maxdepth 2 -type d ! -path './images/*' ! -path './boot/*' -print0)
}

prepare_libvirt() { # J: the host's folders, made once (a restart keeps what is in them)
  local j=$1 lib=$LIB/l$1 addr conf
  addr=$(l_addr "$j")
  conf=$lib/etc/libvirtd.conf
  [ ! -f "$lib/prepared" ] || return 0
  rm -rf --one-file-system "${lib:?}"
  mkdir -p "$lib/etc"
  # The configuration files only: no network (so no `default`), pool, domain or secret of
  # this host's libvirt.
  cp -a /etc/libvirt/*.conf "$lib/etc/"
  [ ! -d /etc/libvirt/nwfilter ] || cp -a /etc/libvirt/nwfilter "$lib/etc/"
  touch "$conf"
  sed -i -E '/^[[:space:]]*(listen_tcp|listen_tls|auth_tcp|listen_addr|log_outputs)[[:space:]]*=/d' "$conf"
  cat >>"$conf" <<EOF

# envrig engines rig, l$j: qemu+tcp://$addr/system, without TLS or authentication.
listen_tcp = 1
listen_tls = 0
auth_tcp = "none"
listen_addr = "$addr"
log_outputs = "3:stderr"
EOF
  skeleton /var/lib/libvirt "$lib/lib"
  skeleton /var/cache/libvirt "$lib/cache"
  skeleton /var/log/libvirt "$lib/log"
  # Same binaries, same kernel: the host's QEMU capabilities cache can save libvirtd its
  # probe of each emulator (8-20 s here). It does only when libvirtd's check reads the same
  # host cpuid, which on this machine depends on the CPU it runs on: about half the time.
  # Else libvirtd probes again, as it would with no cache.
  if [ -d /var/cache/libvirt/qemu/capabilities ]; then
    mkdir -p "$lib/cache/qemu/capabilities"
    cp -a /var/cache/libvirt/qemu/capabilities/. "$lib/cache/qemu/capabilities/"
  fi
  touch "$lib/prepared"
  FRESH_L+=("$j")
}

start_libvirt() { # J: (re)starts virtlogd and libvirtd of lJ; does not wait for them
  local j=$1 node=l$1 addr lib run
  addr=$(l_addr "$j")
  lib=$LIB/$node
  run=$RUN/$node
  stop_node "$node"
  make_node_net "$node" "$addr"
  prepare_libvirt "$j"
  mkdir -p "$run/libvirt"
  log "libvirt: starting $node on $addr"
  mark "$lib/libvirtd.log"
  # ip netns exec gives a /sys of the namespace (libvirt's network driver reads bridges
  # there); nsenter --net would show the root namespace's devices.
  setsid ip netns exec "$NSP-$node" unshare --mount --uts --propagation slave -- \
    sh -c "$LV_INIT" sh "envrig-$node" "$run" \
    "$lib/etc" /etc/libvirt "$lib/lib" /var/lib/libvirt "$lib/cache" /var/cache/libvirt \
    "$lib/log" /var/log/libvirt "$run/libvirt" /run/libvirt \
    </dev/null >>"$lib/libvirtd.log" 2>&1 3>&- 9<&- &
  echo $! >"$run/libvirtd-spawn.pid"
}

wait_libvirt() { # J: bounded wait until lJ answers; a fresh one must be empty
  local j=$1 node=l$1 addr end n nets pools
  addr=$(l_addr "$j")
  end=$((SECONDS + 90))
  for ((n = 0; n < 450; n++)); do
    if vs "$addr" 5 version >/dev/null 2>&1; then break; fi
    if ! alive "$(cat "$RUN/$node/libvirtd-spawn.pid")"; then
      log_tail "$LIB/$node/libvirtd.log"
      die "libvirtd of $node exited at start"
    fi
    if [ "$SECONDS" -ge "$end" ]; then
      log_tail "$LIB/$node/libvirtd.log"
      die "libvirtd of $node does not answer on qemu+tcp://$addr/system after 90 s"
    fi
    sleep 0.2
  done
  pid_from "$RUN/$node/virtlogd.pid" >/dev/null || die "virtlogd of $node does not run"
  if [[ " ${FRESH_L[*]} " == *" $j "* ]]; then
    nets=$(vs "$addr" 10 net-list --all --name) || die "$node: virsh net-list failed"
    pools=$(vs "$addr" 10 pool-list --all --name) || die "$node: virsh pool-list failed"
    nets=$(printf '%s' "$nets" | tr '\n' ' ') pools=$(printf '%s' "$pools" | tr '\n' ' ')
    [ -z "$nets$pools" ] || die "$node is not empty (networks: ${nets:-none}; pools: ${pools:-none})"
  fi
}

# --- Commands --------------------------------------------------------------------------------
print_lines() { # to the saved stdout
  local i
  for ((i = 1; i <= N; i++)); do printf 'd%s tcp://%s:2375\n' "$i" "$(d_addr "$i")" >&3; done
  for ((i = 1; i <= M; i++)); do printf 'l%s qemu+tcp://%s/system\n' "$i" "$(l_addr "$i")" >&3; done
}

read_state() { # N M NET of the rig that is up, from its state file; a rig of another
  # RECIPE (how its daemons are configured) counts as none: it is built again
  local s r
  s=$(cat "$RUN/rig" 2>/dev/null) || return 1
  read -r N M s r <<<"$s"
  [[ $N =~ ^[0-9]+$ && $M =~ ^[0-9]+$ ]] && [ "$s" = "$NET" ] && [ "$r" = "$RECIPE" ]
}

anything_left() {
  local d
  for d in /sys/fs/cgroup/*/"$CG" /sys/fs/cgroup/"$CG"; do [ ! -d "$d" ] || return 0; done
  [ -e "$RUN" ] || [ -e "$LIB" ] || ip link show "$ROOT_IF" >/dev/null 2>&1 ||
    ip netns list | grep -q "^$NSP-"
}

teardown() {
  local nodes=() n f
  for f in "$RUN"/* "$LIB"/*; do
    n=${f##*/}
    if [[ $n =~ ^[dl][0-9]+$ ]]; then nodes+=("$n"); fi
  done
  while read -r n _; do
    n=${n#"$NSP"-}
    if [[ $n =~ ^[dl][0-9]+$ ]]; then nodes+=("$n"); fi
  done < <(ip netns list | grep "^$NSP-" || true)
  mapfile -t nodes < <(printf '%s\n' "${nodes[@]}" | { grep . || true; } | sort -u)
  [ ${#nodes[@]} -eq 0 ] || log "down: stopping ${nodes[*]}"
  stop_node "${nodes[@]}" hub
  [ ! -e "/run/netns/$HUB" ] || ip netns del "$HUB"
  ! ip link show "$ROOT_IF" >/dev/null 2>&1 || ip link del "$ROOT_IF"
  rm_cgroups
  f=$(awk -v a="$LIB" -v b="$RUN" '$5 == a || $5 == b || index($5, a "/") == 1 || index($5, b "/") == 1 { print $5 }' /proc/self/mountinfo)
  [ -z "$f" ] || die "mounts left in the root namespace (not removing the folders under them): $f"
  rm -rf --one-file-system "$LIB" "$RUN"
}

lock() { # one engines.sh at a time (bounded wait), whichever copy of it: a lock on /run
  # itself, which is always there and which down need not remove
  exec 9</run
  flock -w 300 9 || die "another engines.sh still runs after 300 s"
}

need() {
  local t
  for t in "$@"; do command -v "$t" >/dev/null || die "$t is not installed"; done
}

cmd_up() {
  local want_n=$1 want_m=$2 i t0=$SECONDS started_d=() started_l=()
  if ! [[ $want_n =~ ^[0-9]$ && $want_m =~ ^[0-9]$ ]] || [ "$want_n" -gt $MAX ] ||
    [ "$want_m" -gt $MAX ] || [ $((want_n + want_m)) -eq 0 ]; then
    die "usage: engines.sh up N [M] (N, M in 0..$MAX, not both 0)"
  fi
  [[ $NET =~ ^198\.1[89]\.([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])$ ]] ||
    die "ENGINES_NET=$NET: want the first three numbers of a /24 in 198.18.0.0/15, like 198.18.200"
  need ip nsenter unshare setsid flock timeout
  [ "$want_n" -eq 0 ] || need dockerd containerd docker
  [ "$want_m" -eq 0 ] || need libvirtd virtlogd virsh
  lock
  if ! read_state || [ "$N $M" != "$want_n $want_m" ] || ! hub_ok; then
    if anything_left; then
      log "up: rebuilding the rig from scratch"
      teardown
    fi
  fi
  N=$want_n M=$want_m
  mkdir -p "$LIB" "$RUN"
  echo "$N $M $NET $RECIPE" >"$RUN/rig"
  CHANGED=0
  FRESH_L=()
  hub_ok || {
    make_hub
    CHANGED=1
  }
  for ((i = 1; i <= M; i++)); do # libvirtd takes longest: it starts first
    libvirt_ok "$i" || {
      start_libvirt "$i"
      started_l+=("$i")
    }
  done
  for ((i = 1; i <= N; i++)); do
    docker_ok "$i" || {
      start_docker "$i"
      started_d+=("$i")
    }
  done
  for i in "${started_d[@]}"; do wait_docker "$i"; done
  [ ${#started_d[@]} -eq 0 ] || CHANGED=1
  swarm_ensure
  images_ensure
  [ "$CHANGED" = 0 ] || check_overlay
  for i in "${started_l[@]}"; do wait_libvirt "$i"; done
  log "up: $N docker, $M libvirt, ready in $((SECONDS - t0)) s"
  print_lines
}

cmd_down() {
  need ip
  lock
  if anything_left; then
    teardown
    log "down: nothing of the rig is left"
  else
    log "down: nothing was up"
  fi
}

cmd_ls() {
  read_state || {
    log "no rig is up"
    exit 1
  }
  print_lines
}

cmd_check() {
  read_state || die "no rig is up"
  lock
  check_overlay
}

main() {
  exec 3>&1 1>&2 # stdout: the endpoint lines only
  [ "$(id -u)" = 0 ] || die "needs root"
  set -o errtrace
  trap 'log "error: line $LINENO: $BASH_COMMAND"' ERR
  case ${1:-} in
  up)
    if [ $# -lt 2 ] || [ $# -gt 3 ]; then die "usage: engines.sh up N [M]"; fi
    cmd_up "$2" "${3:-0}"
    ;;
  down) cmd_down ;;
  ls) cmd_ls ;;
  check) cmd_check ;;
  *) die "usage: engines.sh up N [M] | ls | check | down" ;;
  esac
}

main "$@"
