# shellcheck shell=bash
# Namespaced "nodes" on this machine, for multi-node benchmarks (Docker Swarm as a peer, shoal).
# Source it:  . bench/lib/netns.sh
#
# Node i (1..N) is a network namespace "${NS_PREFIX}i" (plus a UTS namespace of the same name, so
# each node has its own hostname) with an interface eth0 = ${NS_SUBNET}.i/24. All nodes hang off a
# bridge ${NS_BRIDGE} that lives in its own namespace "${NS_PREFIX}hub", not in the host: on a host
# where Docker runs, br_netfilter (bridge-nf-call-iptables=1) pushes bridged frames through the host
# FORWARD chain, whose policy Docker sets to DROP, so a host bridge would silently drop node-to-node
# traffic unless we edited the host firewall. Nodes get no default route: nothing can leave them.
# The mount namespace is shared with the host (only net and uts are entered), so a daemon started
# in a node sees the host's /sys/fs/cgroup, /run, /var/lib. (`ip netns exec` would remount /sys and
# hide the cgroup mounts, so we use nsenter.)
#
# Generic API (any daemon):
#   ns_create N             create nodes 1..N, the hub namespace and the bridge
#   ns_name i               namespace name of node i (peer3)
#   ns_ip i                 address of node i (10.98.0.3)
#   ns_exec i cmd...        run cmd in node i, in the foreground
#   ns_exec_bg i cmd...     run cmd in node i in the background; its pid is in NS_LAST_PID and is
#                           recorded so ns_cleanup kills it. Redirect the call: ns_exec_bg 1 d >log 2>&1
#   ns_cut i / ns_heal i    cut node i off from all the others (link down at the bridge) / undo
#   ns_on_cleanup fn        run fn (no args) first thing in ns_cleanup (LIFO)
#   ns_cleanup              kill everything started in the nodes (tracked pids, every process in a
#                           node's net namespace, every process in cgroups named after a node),
#                           unmount anything under NS_DATA and /run/${NS_PREFIX}<i>, delete
#                           namespaces, veths, bridge and NS_DATA. Idempotent; works from a fresh
#                           shell after a crash (state comes from the filesystem, not variables).
#   ns_run_dir i / ns_data_dir i   per-node directories: /run/peer3 (short, for sockets) and
#                           ${NS_DATA}/peer3 (for data), created by ns_create, removed by ns_cleanup
#
# Docker Engine per node (the Swarm peer):
#   dk_start i [dockerd args...]   start dockerd in node i (own data-root, exec-root, pidfile,
#                           socket, containerd namespace, cgroup parent /peer<i>, vfs), wait for it
#   dk_host i               DOCKER_HOST value for node i (unix:///run/peer3/docker.sock)
#   dk i docker-args...     the docker CLI against node i
#   dk_kill i               kill -9 dockerd only. Its managed containerd dies with it (it runs with
#                           a parent-death signal) but shims and containers keep running
#   dk_pid i                pid of node i's dockerd
#   dk_kill_node i          kill -9 dockerd, its containerd, its containerd-shims and its containers
#   dk_stop i               stop the whole node as dk_kill_node, then drop runc/shim leftovers
#   dk_load_image i IMAGE   copy IMAGE from the host engine into node i (docker save | load)
#   dk_cleanup_all          dk_stop every node; register it with ns_on_cleanup dk_cleanup_all
#
# Knobs (environment, set before sourcing or before ns_create):
NS_PREFIX=${NS_PREFIX:-peer}            # namespace names peer1..peerN, peerhub
NS_BRIDGE=${NS_BRIDGE:-pbr0}
NS_SUBNET=${NS_SUBNET:-10.98.0}         # node i is $NS_SUBNET.i/24
NS_DATA=${NS_DATA:-/var/lib/shoal-netns-$NS_PREFIX}
NS_STATE=${NS_STATE:-/run/$NS_PREFIX-netns}   # pid list, UTS namespace mounts
NS_CLEANUP_HOOKS=${NS_CLEANUP_HOOKS:-}

_ns_log() { printf '[%(%H:%M:%S)T] netns: %s\n' -1 "$*" >&2; }

ns_name() { echo "$NS_PREFIX$1"; }
ns_ip() { echo "$NS_SUBNET.$1"; }
ns_hub() { echo "${NS_PREFIX}hub"; }
ns_run_dir() { echo "/run/$NS_PREFIX$1"; }
ns_data_dir() { echo "$NS_DATA/$NS_PREFIX$1"; }
_ns_veth() { echo "${NS_PREFIX}v$1"; }   # hub side of node i's link

ns_create() {
  local n=$1 i name hub veth
  hub=$(ns_hub)
  mkdir -p "$NS_STATE/uts" "$NS_DATA"
  ip netns add "$hub" || return 1
  ip -n "$hub" link set lo up
  ip -n "$hub" link add "$NS_BRIDGE" type bridge || return 1
  ip -n "$hub" link set "$NS_BRIDGE" up
  for ((i = 1; i <= n; i++)); do
    name=$(ns_name "$i")
    veth=$(_ns_veth "$i")
    ip netns add "$name" || return 1
    touch "$NS_STATE/uts/$name"
    unshare --uts="$NS_STATE/uts/$name" hostname "$name" || return 1
    ip -n "$hub" link add "$veth" type veth peer name eth0 netns "$name" || return 1
    ip -n "$hub" link set "$veth" master "$NS_BRIDGE" up
    ip -n "$name" link set lo up
    ip -n "$name" addr add "$(ns_ip "$i")/24" dev eth0
    ip -n "$name" link set eth0 up
    mkdir -p "$(ns_run_dir "$i")" "$(ns_data_dir "$i")"
  done
  _ns_log "created $n nodes on $NS_BRIDGE ($NS_SUBNET.0/24, bridge in namespace $hub)"
}

_ns_enter_args() {
  local name
  name=$(ns_name "$1")
  printf '%s\n' "--net=/run/netns/$name"
  [ -e "$NS_STATE/uts/$name" ] && printf '%s\n' "--uts=$NS_STATE/uts/$name"
}

ns_exec() {
  local i=$1; shift
  local -a a
  mapfile -t a < <(_ns_enter_args "$i")
  nsenter "${a[@]}" -- "$@"
}

ns_exec_bg() {
  local i=$1; shift
  local -a a
  mapfile -t a < <(_ns_enter_args "$i")
  nsenter "${a[@]}" -- "$@" &
  NS_LAST_PID=$!
  disown "$NS_LAST_PID" 2>/dev/null   # no "Killed" notices when a benchmark kills it
  mkdir -p "$NS_STATE"
  echo "$NS_LAST_PID" >> "$NS_STATE/pids"
}

ns_cut() { ip -n "$(ns_hub)" link set "$(_ns_veth "$1")" down; }
ns_heal() { ip -n "$(ns_hub)" link set "$(_ns_veth "$1")" up; }

ns_on_cleanup() { NS_CLEANUP_HOOKS="$1 $NS_CLEANUP_HOOKS"; }

# Pids of processes whose network namespace is /run/netns/$1.
_ns_pids_in_netns() {
  local ino p
  ino=$(stat -L -c %i "/run/netns/$1" 2>/dev/null) || return 0
  for p in /proc/[0-9]*; do
    [ "$(stat -L -c %i "$p/ns/net" 2>/dev/null)" = "$ino" ] && echo "${p#/proc/}"
  done
}

# Kills the given pids (TERM, then KILL after $2 seconds).
_ns_kill_pids() {
  local grace=$1; shift
  local p t
  [ $# -eq 0 ] && return 0
  kill -TERM "$@" 2>/dev/null
  for ((t = 0; t < grace * 10; t++)); do
    local alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null
  sleep 0.2
}

# Kills every process in the v1 (or v2) cgroups named $1 at the top of each hierarchy, then
# removes those cgroups (deepest first).
_ns_kill_cgroup() {
  local cg=$1 d pids
  for _ in 1 2 3; do
    pids=$(cat /sys/fs/cgroup/*/"$cg"/cgroup.procs /sys/fs/cgroup/*/"$cg"/*/cgroup.procs \
      /sys/fs/cgroup/"$cg"/cgroup.procs /sys/fs/cgroup/"$cg"/*/cgroup.procs 2>/dev/null | sort -u)
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null
    sleep 0.3
  done
  for d in /sys/fs/cgroup/*/"$cg"/*/ /sys/fs/cgroup/*/"$cg"/ /sys/fs/cgroup/"$cg"/*/ /sys/fs/cgroup/"$cg"/; do
    [ -d "$d" ] && rmdir "$d" 2>/dev/null
  done
  return 0
}

# Unmounts everything mounted at or below $1 (deepest first).
_ns_umount_under() {
  local base=$1 m
  [ -n "$base" ] || return 0
  awk -v b="$base" '$5 == b || index($5, b "/") == 1 { print $5 }' /proc/self/mountinfo |
    sort -r | while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
}

ns_cleanup() {
  local h name i p pids
  for h in $NS_CLEANUP_HOOKS; do "$h" || true; done
  NS_CLEANUP_HOOKS=
  if [ -f "$NS_STATE/pids" ]; then
    pids=()
    while read -r p; do kill -0 "$p" 2>/dev/null && pids+=("$p"); done < "$NS_STATE/pids"
    _ns_kill_pids 5 "${pids[@]}"
  fi
  for name in $(ls /run/netns 2>/dev/null | grep -E "^${NS_PREFIX}[0-9]+\$"); do
    i=${name#"$NS_PREFIX"}
    mapfile -t pids < <(_ns_pids_in_netns "$name")
    _ns_kill_pids 3 "${pids[@]}"
    _ns_kill_cgroup "$name"
    _ns_umount_under "$(ns_run_dir "$i")"
    rm -rf "$(ns_run_dir "$i")"
    ip netns del "$name" 2>/dev/null
    if [ -e "$NS_STATE/uts/$name" ]; then
      umount "$NS_STATE/uts/$name" 2>/dev/null
      rm -f "$NS_STATE/uts/$name"
    fi
  done
  name=$(ns_hub)
  if [ -e "/run/netns/$name" ]; then
    mapfile -t pids < <(_ns_pids_in_netns "$name")
    _ns_kill_pids 3 "${pids[@]}"
    ip netns del "$name" 2>/dev/null   # takes the bridge and the veths with it
  fi
  _ns_umount_under "$NS_DATA"
  [ -n "$NS_DATA" ] && [ "$NS_DATA" != / ] && rm -rf "$NS_DATA"
  _ns_umount_under "$NS_STATE"
  rm -rf "$NS_STATE"
  return 0
}

# ----------------------------------------------------------------------------------------------
# Docker Engine per node
# ----------------------------------------------------------------------------------------------
DK_DOCKERD=${DK_DOCKERD:-$(command -v dockerd || echo /usr/sbin/dockerd)}
DK_STORAGE=${DK_STORAGE:-vfs}
DK_TIMEOUT=${DK_TIMEOUT:-60}

dk_host() { echo "unix://$(ns_run_dir "$1")/docker.sock"; }
dk() { local i=$1; shift; DOCKER_HOST=$(dk_host "$i") docker "$@"; }
_dk_exec_root() { echo "$(ns_run_dir "$1")/exec"; }
dk_pid() { cat "$(ns_run_dir "$1")/docker.pid" 2>/dev/null; }

dk_start() {
  local i=$1; shift
  local run data deadline
  run=$(ns_run_dir "$i")
  data=$(ns_data_dir "$i")
  mkdir -p "$run" "$data/docker"
  # Our own config file: dockerd would otherwise read /etc/docker/daemon.json (the host engine's,
  # whose data-root/storage-driver conflict with ours).
  [ -f "$data/daemon.json" ] || echo '{}' > "$data/daemon.json"
  # DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1: Swarm tasks use the local image instead of trying a
  # registry first (there is none reachable, and no traffic may leave the nodes anyway).
  DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 ns_exec_bg "$i" "$DK_DOCKERD" \
    --config-file "$data/daemon.json" \
    --data-root "$data/docker" \
    --exec-root "$(_dk_exec_root "$i")" \
    --pidfile "$run/docker.pid" \
    -H "$(dk_host "$i")" \
    --containerd-namespace "$(ns_name "$i")" \
    --containerd-plugins-namespace "$(ns_name "$i")-plugins" \
    --cgroup-parent "/$(ns_name "$i")" \
    --storage-driver "$DK_STORAGE" \
    --iptables=true \
    "$@" >> "$data/dockerd.log" 2>&1
  deadline=$(($(date +%s) + DK_TIMEOUT))
  until dk "$i" version >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ] || ! kill -0 "$NS_LAST_PID" 2>/dev/null; then
      _ns_log "dockerd of node $i did not come up; tail of $data/dockerd.log:"
      tail -n 20 "$data/dockerd.log" >&2
      return 1
    fi
    sleep 0.2
  done
}

# Pids of the containerd-shims of node i (they outlive dockerd and containerd).
_dk_shim_pids() {
  local addr p
  addr="$(_dk_exec_root "$1")/containerd/containerd.sock"
  for p in /proc/[0-9]*; do
    { tr '\0' '\n' < "$p/cmdline"; } 2>/dev/null | grep -qxF -- "$addr" && echo "${p#/proc/}"
  done
}

dk_kill() {
  local pid
  pid=$(dk_pid "$1")
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  return 0
}

dk_kill_node() {
  local i=$1 pid shims p
  dk_kill "$i"
  pid=$(cat "$(_dk_exec_root "$i")/containerd/containerd.pid" 2>/dev/null)
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  mapfile -t shims < <(_dk_shim_pids "$i")
  # The containers: children of the shims (killing a container's init kills its pid namespace),
  # and anything left in the node's cgroups.
  for p in "${shims[@]}"; do pkill -KILL -P "$p" 2>/dev/null; done
  [ ${#shims[@]} -gt 0 ] && kill -KILL "${shims[@]}" 2>/dev/null
  local cg
  cg=$(cat /sys/fs/cgroup/*/"$(ns_name "$i")"/*/cgroup.procs /sys/fs/cgroup/"$(ns_name "$i")"/*/cgroup.procs 2>/dev/null | sort -u)
  # shellcheck disable=SC2086
  [ -n "$cg" ] && kill -KILL $cg 2>/dev/null
  return 0
}

dk_stop() {
  local i=$1 name d
  name=$(ns_name "$i")
  dk_kill_node "$i"
  sleep 0.3
  _ns_kill_cgroup "$name"
  _ns_umount_under "$(_dk_exec_root "$i")"
  _ns_umount_under "$(ns_data_dir "$i")"
  # The shims keep runc state under /run/containerd/runc/<containerd namespace> and their sockets
  # under /run/containerd/s/ (shared with the host engine's): remove only ours.
  rm -rf "/run/containerd/runc/$name" "/run/containerd/runc/$name-plugins"
  local addr id
  addr="$(_dk_exec_root "$i")/containerd/containerd.sock"
  for d in "$(ns_data_dir "$i")"/docker/containers/*/; do
    [ -d "$d" ] || continue
    id=$(basename "$d")
    rm -f "/run/containerd/s/$(printf '%s' "$addr/$name/$id" | sha256sum | cut -d' ' -f1)"
  done
  return 0
}

dk_load_image() {
  local i=$1 image=$2 tar
  tar="$NS_DATA/image-$(echo "$image" | tr '/:' '__').tar"
  [ -f "$tar" ] || DOCKER_HOST=${DK_HOST_ENGINE:-unix:///var/run/docker.sock} docker save -o "$tar" "$image" || return 1
  dk "$i" load -q -i "$tar" >/dev/null
}

# Stops every node's dockerd; registered by the first dk_start-using script via ns_on_cleanup.
dk_cleanup_all() {
  local name
  for name in $(ls /run/netns 2>/dev/null | grep -E "^${NS_PREFIX}[0-9]+\$"); do
    dk_stop "${name#"$NS_PREFIX"}"
  done
}
