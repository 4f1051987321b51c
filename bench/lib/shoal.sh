# shellcheck shell=bash
# shoal daemons on the namespaced nodes of bench/lib/netns.sh, and the small helpers every
# benchmark script uses. Source it after bench/lib/netns.sh:
#   . bench/lib/netns.sh
#   . bench/lib/shoal.sh
#
# Each node i runs `shoal daemon` in its network namespace, on the host's Docker Engine; its data is
# in $(sh_dir i)/data, its log in $(sh_dir i)/daemon.log, its API socket $(sh_sock i).
#
# Helpers:
#   log MSG...              a timestamped line on stderr
#   now / since T / diff_s A B   epoch seconds; seconds from T to now / from A to B (2 decimals)
#   median [DECIMALS]       median of the numbers on stdin (DECIMALS for an even count: default
#                           MEDIAN_DECIMALS, else 2)
#   wait_until CMD...       poll CMD every WAIT_POLL s (0.2) until it succeeds; fails after TIMEOUT s
# Nodes:
#   sh_dir i / sh_sock i / sh_host i   data dir, API socket path, DOCKER_HOST value
#   sh i docker-args...     the docker CLI against node i's daemon
#   sh_pid i / sh_alive i   the daemon's pid / whether it was started and not killed (a file, so
#                           background clients see it too)
#   node_id_of i / node_tag ID   node i's swarm node id / the 12-character tag shoal derives from it
#   engine docker-args...   the host's engine ($ENGINE): containers only, never `docker swarm`
#   engine_rm_node ID / engine_count_node ID   docker rm -f / count the containers of node ID
#   sh_start i              start (or restart, on the same data) node i's daemon, wait for its API;
#                           a script may define `sh_extra_args i` printing more daemon arguments
#                           for node i, one a line (e.g. --engine PATH); default none
#   sh_kill_daemon i        kill -9 of node i's daemon only
#   sh_kill_node i          the whole node: kill -9 of its daemon and `docker rm -f` of its containers
#   remember_ids            record nodes 1..NODES' ids (for cleanup after a data dir was wiped)
#   sh_cleanup_all          cleanup hook: live daemons leave, every daemon is killed, this run's
#                           containers, plugin sockets, secrets tmpfs and volume mounts removed
#   sh_keep_logs            copy the daemons' logs to KEEP_LOGS=<dir>, when set
# The cluster (NODES nodes, MANAGERS of them managers: nodes 1..MANAGERS):
#   form_cluster N M        daemons on nodes 1..N, swarm init on node 1, the others join (2..M as
#                           managers), wait until healthy
#   reset_cluster           kill every daemon and its containers, wipe the data dirs
#   a_manager / nodes_view / leader / cluster_healthy   see below
#   rejoined i / restart_and_rejoin i   node i restarted and healthy again (sets BACK_SECS)
#
# Knobs: SHOAL (the binary; required), ENGINE (unix:///var/run/docker.sock), SHOAL_LOG (info),
# TIMEOUT (180), WAIT_POLL (0.2), MEDIAN_DECIMALS (2).
ENGINE=${ENGINE:-unix:///var/run/docker.sock}
TIMEOUT=${TIMEOUT:-180}
WAIT_POLL=${WAIT_POLL:-0.2}
NODES=${NODES:-0}
MANAGERS=${MANAGERS:-0}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f\n", b - a }'; }
diff_s() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", b - a }'; }
median() {
  sort -n | awk -v d="${1:-${MEDIAN_DECIMALS:-2}}" '{ a[NR] = $1 } END {
    if (NR == 0) { print "n/a"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else printf "%.*f\n", d, (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# Polls "$@" until it succeeds; fails after TIMEOUT seconds.
wait_until() {
  local deadline=$(($(date +%s) + TIMEOUT))
  until "$@"; do
    [ "$(date +%s)" -ge "$deadline" ] && return 1
    sleep "$WAIT_POLL"
  done
}

# ----------------------------------------------------------------------------------------------
# shoal nodes
# ----------------------------------------------------------------------------------------------
sh_dir() { ns_data_dir "$1"; }                       # data in <dir>/data, log in <dir>/daemon.log
sh_sock() { echo "$(ns_run_dir "$1")/docker.sock"; }
sh_host() { echo "unix://$(sh_sock "$1")"; }
sh() { local i=$1; shift; docker -H "$(sh_host "$i")" "$@"; }
sh_pid() { cat "$(ns_run_dir "$1")/shoal.pid" 2>/dev/null; }
sh_alive() { [ -e "$(ns_run_dir "$1")/alive" ]; }   # a file, so background clients see it too
node_id_of() { jq -r '.node_id // empty' "$(sh_dir "$1")/data/node.json" 2>/dev/null; }
node_tag() { printf '%s' "$1" | tr -cd '[:alnum:]' | tr '[:upper:]' '[:lower:]' | cut -c1-12; }

engine() { docker -H "$ENGINE" "$@"; }
# Removes (docker rm -f) every container of shoal node id $1 from the host engine.
engine_rm_node() {
  [ -n "$1" ] || return 0
  engine ps -aq --filter "label=com.docker.swarm.node.id=$1" | xargs -r docker -H "$ENGINE" rm -f >/dev/null 2>&1
  return 0
}
engine_count_node() { engine ps -q --filter "label=com.docker.swarm.node.id=$1" | wc -l; }

# Starts (or restarts, on the same data dir) node i's daemon and waits for its socket.
sh_start() {
  local i=$1 d deadline pid
  local -a extra=()
  d=$(sh_dir "$i")
  mkdir -p "$d/data"
  # The script's per-node daemon arguments, one a line (none unless it defines sh_extra_args).
  if declare -F sh_extra_args >/dev/null; then mapfile -t extra < <(sh_extra_args "$i"); fi
  NO_COLOR=1 SHOAL_PULL=never SHOAL_LOG=${SHOAL_LOG:-info} ns_exec_bg "$i" "$SHOAL" daemon \
    --data-dir "$d/data" --socket "$(sh_sock "$i")" --hostname "node-$i" ${extra[@]+"${extra[@]}"} \
    >>"$d/daemon.log" 2>&1
  pid=$NS_LAST_PID   # nsenter execs shoal: this is the daemon's pid
  echo "$pid" > "$(ns_run_dir "$i")/shoal.pid"
  echo "---- started pid $pid at $(date '+%F %T.%N') ----" >> "$d/daemon.log"
  deadline=$(($(date +%s) + 30))
  until sh "$i" version >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ] || ! kill -0 "$pid" 2>/dev/null; then
      log "shoal daemon of node $i did not come up; tail of $d/daemon.log:"
      tail -n 20 "$d/daemon.log" >&2
      return 1
    fi
    sleep 0.1
  done
  touch "$(ns_run_dir "$i")/alive"
}

# kill -9 of node i's daemon only.
sh_kill_daemon() {
  local pid
  rm -f "$(ns_run_dir "$1")/alive"
  pid=$(sh_pid "$1")
  # The kernel's comm is the binary's name cut to 15 characters (SHOAL=/somewhere/shoal-old).
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$(basename "$SHOAL" | cut -c1-15)" ] &&
    kill -KILL "$pid"
  return 0
}

# The whole node: kill -9 of its daemon and `docker rm -f` of its containers.
sh_kill_node() {
  sh_kill_daemon "$1"
  engine_rm_node "$(node_id_of "$1")"
}

# Every node id this run used (for cleanup, even after a data dir was wiped).
remember_ids() {
  local i
  for ((i = 1; i <= NODES; i++)); do node_id_of "$i"; done >> "$NS_DATA/node-ids"
}

# Cleanup hook (also for --cleanup after a crash): kill our daemons, remove our containers from the
# host engine and our nodes' network plugin sockets. ns_cleanup then kills whatever else runs in
# the namespaces and deletes namespaces, bridge and data.
sh_cleanup_all() {
  local name i id f
  # A live daemon leaves the swarm first: it removes its engine networks through its own
  # plugin (without the plugin, Docker takes about 45 s per network) and its agent unmounts its
  # volumes. Workers (the higher numbers) first, so the managers keep their quorum meanwhile.
  for name in $(ls /run/netns 2>/dev/null | grep -E "^${NS_PREFIX}[0-9]+\$" | sort -r); do
    i=${name#"$NS_PREFIX"}
    sh_alive "$i" && timeout 30 docker -H "$(sh_host "$i")" swarm leave --force >/dev/null 2>&1
  done
  for name in $(ls /run/netns 2>/dev/null | grep -E "^${NS_PREFIX}[0-9]+\$"); do
    i=${name#"$NS_PREFIX"}
    sh_kill_daemon "$i"
    rm -f "$(sh_sock "$i")"
  done
  sleep 0.2
  for id in $({ cat "$NS_DATA/node-ids" 2>/dev/null
                for f in "$NS_DATA"/*/data/node.json; do
                  [ -f "$f" ] && jq -r '.node_id // empty' "$f" 2>/dev/null
                done; } | sort -u); do
    engine_rm_node "$id"
    rm -f "/run/docker/plugins/shoal-$(node_tag "$id").sock"
    # Its secrets tmpfs: a daemon killed with -9 cannot unmount it.
    f="/run/shoal/files/$(printf '%s' "$id" | cut -c1-12)"
    if awk -v m="$f" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; then
      umount "$f" 2>/dev/null || umount -l "$f" 2>/dev/null
    fi
    rmdir "$f" 2>/dev/null
  done
  # The agents' volume mounts of killed daemons (a live one unmounted its own when it left).
  for f in "$NS_DATA"/*/data/volumes; do [ -d "$f" ] && _ns_umount_under "$f"; done
  return 0
}

# Copies every node's daemon.log to $KEEP_LOGS/<node>.log when KEEP_LOGS is set.
sh_keep_logs() {
  local f
  [ -n "${KEEP_LOGS:-}" ] || return 0
  mkdir -p "$KEEP_LOGS"
  for f in "$NS_DATA"/*/daemon.log; do
    [ -f "$f" ] && cp "$f" "$KEEP_LOGS/$(basename "$(dirname "$f")").log"
  done
  return 0
}

# ----------------------------------------------------------------------------------------------
# The cluster
# ----------------------------------------------------------------------------------------------
# The first live manager (by index).
a_manager() {
  local i
  for ((i = 1; i <= MANAGERS; i++)); do sh_alive "$i" && { echo "$i"; return 0; }; done
  return 1
}

# "hostname status manager-status" for every node, as a live manager sees them.
nodes_view() {
  local i
  for ((i = 1; i <= MANAGERS; i++)); do
    sh_alive "$i" || continue
    sh "$i" node ls --format '{{.Hostname}} {{.Status}} {{.ManagerStatus}}' 2>/dev/null && return 0
  done
  return 1
}

# Node index of the raft leader as the live managers see it (empty when there is none).
leader() { nodes_view | awk '$3 == "Leader" { sub(/^node-/, "", $1); print $1 }'; }

# All nodes Ready and all managers Reachable or Leader, with exactly one Leader.
cluster_healthy() {
  local v
  v=$(nodes_view) || return 1
  [ "$(grep -c ' Ready' <<< "$v")" = "$NODES" ] || return 1
  [ "$(grep -cE ' Ready (Leader|Reachable)$' <<< "$v")" = "$MANAGERS" ] || return 1
  [ "$(grep -c ' Leader$' <<< "$v")" = 1 ]
}

# form_cluster N M: daemons on nodes 1..N (fresh data), swarm init on node 1, the others join,
# nodes 2..M with the manager token.
form_cluster() {
  local i t0 tok_m tok_w tok
  NODES=$1
  MANAGERS=$2
  t0=$(now)
  for ((i = 1; i <= NODES; i++)); do sh_start "$i" || return 1; done
  sh 1 swarm init --advertise-addr "$(ns_ip 1)" >/dev/null || return 1
  tok_m=$(sh 1 swarm join-token -q manager) || return 1
  tok_w=$(sh 1 swarm join-token -q worker) || return 1
  for ((i = 2; i <= NODES; i++)); do
    tok=$tok_w
    [ "$i" -le "$MANAGERS" ] && tok=$tok_m
    sh "$i" swarm join --token "$tok" --advertise-addr "$(ns_ip "$i")" "$(ns_ip 1):2377" >/dev/null || return 1
  done
  remember_ids
  wait_until cluster_healthy || { log "cluster did not become healthy"; nodes_view >&2; return 1; }
  log "shoal cluster of $NODES nodes ($MANAGERS managers) up in $(since "$t0") s"
  nodes_view | sed 's/^/    /' >&2
}

# Kills every daemon and its containers and wipes the data dirs (namespaces stay).
reset_cluster() {
  local i
  for ((i = 1; i <= NODES; i++)); do sh_kill_node "$i"; done
  sleep 0.3
  for ((i = 1; i <= NODES; i++)); do
    rm -rf "$(sh_dir "$i")/data"
    rm -f "$(sh_sock "$i")"
  done
  NODES=0
  MANAGERS=0
}

# Healthy, and a restarted manager $1 itself names the same single leader as the others.
rejoined() {
  local i=$1 own
  cluster_healthy || return 1
  [ "$i" -le "$MANAGERS" ] || return 0
  own=$(sh "$i" node ls --format '{{.Hostname}} {{.ManagerStatus}}' 2>/dev/null | awk '$2 == "Leader" { print $1 }')
  [ "$(wc -w <<< "$own")" = 1 ] && [ "$own" = "node-$(leader)" ]
}

# Restarts node i on its data and waits until the cluster is healthy again (it shows Ready, and
# Reachable when it is a manager). Sets BACK_SECS (restart to healthy).
restart_and_rejoin() {
  local i=$1 t0
  t0=$(now)
  sh_start "$i" || return 1
  wait_until rejoined "$i" || { log "node-$i did not rejoin within $TIMEOUT s"; nodes_view >&2; return 1; }
  BACK_SECS=$(since "$t0")
}
