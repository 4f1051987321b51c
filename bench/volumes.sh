#!/usr/bin/env bash
# Shared volumes (issue 19) measured, next to Docker Swarm. Three namespaced nodes (bench/lib/
# netns.sh: vbn1..vbn3, 10.96.0.1..3 on a bridge vbbr0 in namespace vbnhub), one glusterd per
# node (bench/lib/gluster.sh, the test harness's recipe) and a GlusterFS replica-2 volume with
# bricks on nodes 1 and 2. Then, first with shoal (a `shoal daemon` per node on the host's Docker
# Engine, node-1 manager, node-2 and node-3 workers, the volume a shoal volume `-d shoal --opt
# type=glusterfs`), then with Docker Swarm (a dockerd per node in the same namespaces, vbn1
# manager, vbn2 and vbn3 workers, the same gluster volume FUSE-mounted by hand on every node and
# bound into the task: what Swarm users do today):
#   f  node loss with data  a 1-replica service on a worker appends numbered, fsynced records to
#                 the volume; the worker running it is killed (shoal: kill -9 of its daemon and
#                 `docker rm -f` of its containers; Swarm: kill -9 of its dockerd, containerd,
#                 shims and containers). Seconds from the kill until the replacement task shows
#                 Running on the other worker (`docker service ps`), and until it has read back
#                 the last record the killed task wrote (it writes what it read to the volume;
#                 the script reads that on a brick). NL_RUNS kills, the killed node restarted
#                 and back Ready in between. Both orchestrators, default settings.
#   t  task start  `service create` until `service ps` shows the task Running: a plain service
#                 against one that mounts the gluster volume (mounted on the node for it, and
#                 unmounted again after each `service rm`), START_RUNS each, alternating; shoal.
#   w  write throughput  in a shoal task that mounts the volume, against the same FUSE mount
#                 (the agent's, the bind's source) written directly on the host, with the same
#                 busybox binary: dd of DD_MB MiB with conv=fsync, and SMALL_WRITES appends of
#                 SMALL_BS bytes, each its own fsynced dd. TP_RUNS each, alternating; medians.
# Medians are printed in a table at the end.
#
# Usage: flock -o /tmp/shoal-e2e.lock bench/volumes.sh        (as root)
#        PARTS=tw SWARM=0 bench/volumes.sh                      shoal only, no node loss
#        bench/volumes.sh --cleanup       remove what a killed (kill -9) run left behind
# Environment:
#   PARTS=ftw  SWARM=1 (0: skip Docker Swarm)  NL_RUNS=3  START_RUNS=5  TP_RUNS=5
#   DD_MB=64  SMALL_WRITES=200  SMALL_BS=4096  TIMEOUT=180 (any single wait)
#   SHOAL=target/release/shoal (built with `cargo build --release -p shoal` when missing; BUILD=0
#   skips the build, and without a release binary target/debug/shoal is used, said in the table)
#   SHOAL_LOG=info; KEEP_LOGS=<dir> keeps the daemons' and glusterds' logs
#   NS_PREFIX=vbn NS_SUBNET=10.96.0 NS_BRIDGE=vbbr0 (the suite uses 10.99.0.x, cluster.sh
#   10.97.0.x, swarm-peer.sh 10.98.0.x)
# Needs: glusterfs-server and glusterfs-client, shoal-test/busybox in the host engine
# (scripts/build-test-images.sh). Never talks swarm to the host engine, pulls nothing, sends
# nothing outside the namespaces; removes everything it created on exit, Ctrl-C included.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
NS_PREFIX=${NS_PREFIX:-vbn}
NS_SUBNET=${NS_SUBNET:-10.96.0}
NS_BRIDGE=${NS_BRIDGE:-vbbr0}
. bench/lib/netns.sh
. bench/lib/gluster.sh
WAIT_POLL=0.1        # wait_until (bench/lib/shoal.sh) polls every 0.1 s here
MEDIAN_DECIMALS=3
. bench/lib/shoal.sh

PARTS=${PARTS:-ftw}
SWARM=${SWARM:-1}
NL_RUNS=${NL_RUNS:-3}
START_RUNS=${START_RUNS:-5}
TP_RUNS=${TP_RUNS:-5}
DD_MB=${DD_MB:-64}
SMALL_WRITES=${SMALL_WRITES:-200}
SMALL_BS=${SMALL_BS:-4096}
TIMEOUT=${TIMEOUT:-180}
BUILD=${BUILD:-1}
SHOAL=${SHOAL:-}
IMAGE=shoal-test/busybox
ENGINE=unix:///var/run/docker.sock   # the host's engine: containers only, never `docker swarm`
NODES=3
GV=vbgv                              # the gluster volume
VOL=records                          # shoal's volume object for it
WSVC=vwriter

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 <= 0 || b + 0 <= 0) print "-"; else printf "%.2fx\n", a / b }'; }
has_part() { case $PARTS in *"$1"*) return 0 ;; esac; return 1; }

# shoal nodes (as bench/cluster.sh runs them): sh_start, sh_kill_node, sh_cleanup_all, ... are in
# bench/lib/shoal.sh.

# mount.glusterfs logs to /var/log/glusterfs/<mount point with - for />.log unless told
# otherwise (the agents' mounts): remove this run's.
rm_client_logs() {
  local p
  p=$(printf '%s' "${NS_DATA#/}" | tr '/' '-')
  rm -f /var/log/glusterfs/"$p"-*.log
  return 0
}

keep_logs() {
  local f i
  [ -n "${KEEP_LOGS:-}" ] || return 0
  mkdir -p "$KEEP_LOGS"
  for ((i = 1; i <= NODES; i++)); do
    for f in daemon.log dockerd.log gluster/log/glusterd.log; do
      [ -f "$(ns_data_dir "$i")/$f" ] && cp "$(ns_data_dir "$i")/$f" "$KEEP_LOGS/node$i-$(basename "$f")"
    done
  done
  cp "$NS_DATA"/gluster-mount-*.log "$KEEP_LOGS/" 2>/dev/null
  return 0
}

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
cleanup_hooks() {
  # Hooks run last-registered first: shoal, then the dockerds, then gluster.
  ns_on_cleanup rm_client_logs
  ns_on_cleanup gl_cleanup
  ns_on_cleanup dk_cleanup_all
  ns_on_cleanup sh_cleanup_all
  ns_on_cleanup keep_logs
}
if [ "${1:-}" = "--cleanup" ]; then
  SHOAL=${SHOAL:-shoal}
  cleanup_hooks
  ns_cleanup
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
if ls /run/netns 2>/dev/null | grep -qE "^${NS_PREFIX}([0-9]+|hub)\$"; then
  echo "namespaces ${NS_PREFIX}* exist already (another run?); bench/volumes.sh --cleanup removes them" >&2
  exit 1
fi
for c in glusterd gluster mount.glusterfs jq busybox; do
  command -v "$c" >/dev/null || { echo "$c is missing (glusterfs-server, glusterfs-client, jq, busybox)" >&2; exit 1; }
done
BUILD_NOTE="release build"
if [ -z "$SHOAL" ]; then
  SHOAL=${CARGO_TARGET_DIR:-$ROOT/target}/release/shoal
  if [ ! -x "$SHOAL" ] && [ "$BUILD" = 1 ]; then
    log "building shoal: cargo build --release -p shoal"
    cargo build --release -p shoal >&2 || log "release build failed"
  fi
  if [ ! -x "$SHOAL" ]; then
    SHOAL=${CARGO_TARGET_DIR:-$ROOT/target}/debug/shoal
    BUILD_NOTE="DEBUG build (no release binary)"
    log "no release binary: using the debug build $SHOAL"
  fi
fi
case $SHOAL in */debug/*) BUILD_NOTE="DEBUG build" ;; esac
[ -x "$SHOAL" ] || { echo "no shoal binary at $SHOAL (set SHOAL=...)" >&2; exit 1; }
if ! engine image inspect "$IMAGE" >/dev/null 2>&1; then
  log "building the test images in the host engine"
  bash scripts/build-test-images.sh || exit 1
fi

cleanup() {
  trap - EXIT INT TERM
  log "cleaning up"
  ns_cleanup
}
cleanup_hooks
trap cleanup EXIT
trap 'exit 130' INT TERM

# ----------------------------------------------------------------------------------------------
# The writer: numbered records tagged with the container's hostname, each fsynced; a new task
# first reads the last record back and appends "resume <host> <number it read>" to /data/resumes.
# ----------------------------------------------------------------------------------------------
WRITER='f=/data/records; touch $f; h=$(hostname)
set -- $(tail -n 1 $f); i=${2:-0}
echo "resume $h $i" >> /data/resumes && sync -d /data/resumes
while :; do i=$((i+1)); echo "record $i $h" >> $f && sync -d $f; sleep 0.05; done'

# The same busybox script for the container and the host, every command the image's busybox (the
# host's /usr/bin/busybox is the same file; a plain `dd` on the host would be GNU dd): prints the
# dd's and the small writes' seconds (/proc/uptime, 10 ms resolution). $1 dir, $2 MiB, $3 small
# writes, $4 their size.
TP_SCRIPT='b=busybox; d=$1; t() { read u _ < /proc/uptime; echo $u; }
a=$(t); $b dd if=/dev/zero of=$d/big bs=1048576 count=$2 conv=fsync 2>/dev/null || exit 1; z=$(t)
$b rm -f $d/big $d/small
c=$(t); i=0
while [ $i -lt $3 ]; do $b dd if=/dev/zero of=$d/small bs=$4 count=1 oflag=append conv=notrunc,fsync 2>/dev/null || exit 1; i=$((i+1)); done
e=$(t); $b rm -f $d/small
$b awk -v a=$a -v b=$z -v c=$c -v e=$e "BEGIN { printf \"%.2f %.2f\n\", b - a, e - c }"'

# ----------------------------------------------------------------------------------------------
# Orchestrator-neutral pieces; O=shoal or O=swarm picks the implementation
# ----------------------------------------------------------------------------------------------
o_cli() { local i=$1; shift; if [ "$O" = shoal ]; then sh "$i" "$@"; else dk "$i" "$@"; fi; }
o_host() { if [ "$O" = shoal ]; then echo "node-$1"; else ns_name "$1"; fi; }
o_index() { if [ "$O" = shoal ]; then echo "${1#node-}"; else echo "${1#"$NS_PREFIX"}"; fi; }
o_kill() { if [ "$O" = shoal ]; then sh_kill_node "$1"; else dk_kill_node "$1"; fi; }
o_restart() { if [ "$O" = shoal ]; then sh_start "$1"; else dk_start "$1"; fi; }
# "hostname status" per node, from the manager (node 1).
o_nodes() { o_cli 1 node ls --format '{{.Hostname}} {{.Status}}' 2>/dev/null; }
o_all_ready() { [ "$(o_nodes | grep -c ' Ready$')" = "$NODES" ]; }
# Hostnames running service $1's tasks meant to run.
o_running_on() {
  o_cli 1 service ps "$1" --filter desired-state=running --format '{{.Node}} {{.CurrentState}}' 2>/dev/null |
    awk '$2 == "Running" { print $1 }'
}
o_running() { [ -n "$(o_running_on "$1")" ]; }

# The records directory on node 1's brick, for this orchestrator's part of the volume.
rec_dir() { echo "$(gl_brick_dir "$GV" 1)/$O"; }
records_count() { wc -l 2>/dev/null < "$(rec_dir)/records" || echo 0; }
records_at_least() { [ "$(records_count)" -ge "$1" ]; }

# NL_RUNS node losses; sets NL_RUN_SECS, NL_DATA_SECS (space-separated lists) and NL_LOST.
node_loss() {
  local r victim other t0 rc0 L line back t_run t_data host
  NL_RUN_SECS=
  NL_DATA_SECS=
  NL_LOST=0
  wait_until o_running "$WSVC" || { log "$O: the writer never ran"; return 1; }
  for ((r = 1; r <= NL_RUNS; r++)); do
    wait_until o_all_ready || { log "$O: not all nodes Ready before run $r"; o_nodes >&2; return 1; }
    wait_until o_running "$WSVC" || { log "$O: the writer is not running before run $r"; return 1; }
    host=$(o_running_on "$WSVC" | head -1)
    victim=$(o_index "$host")
    # Steady state: the task has written at least 40 records since it started.
    wait_until records_at_least $(($(records_count) + 40)) || { log "$O: the writer is not writing"; return 1; }
    rc0=$(wc -l < "$(rec_dir)/resumes")
    t0=$(now)
    o_kill "$victim"
    # The last record the killed task wrote: the highest one of the tasks that had written a
    # resume line before the kill (not the replacement's, should it have started already).
    L=$(awk -v r="$rc0" 'FNR == NR { if (FNR <= r && $1 == "resume") old[$2] = 1; next }
      ($3 in old) && $2 > m { m = $2 } END { print m + 0 }' "$(rec_dir)/resumes" "$(rec_dir)/records")
    t_run=
    t_data=
    while :; do
      if [ -z "$t_run" ]; then
        other=$(o_running_on "$WSVC" | grep -vx "$host" | head -1)
        [ -n "$other" ] && t_run=$(since "$t0")
      fi
      if [ -z "$t_data" ]; then
        line=$(awk -v r="$rc0" 'NR > r { print; exit }' "$(rec_dir)/resumes")
        [ -n "$line" ] && t_data=$(since "$t0")
      fi
      [ -n "$t_run" ] && [ -n "$t_data" ] && break
      if [ "$(since "$t0" | cut -d. -f1)" -ge "$TIMEOUT" ]; then
        log "$O: no replacement within $TIMEOUT s (running: ${other:-none}, resume: ${line:-none})"
        return 1
      fi
      sleep 0.1
    done
    set -- $line
    if [ "${3:-0}" -lt "$L" ]; then
      log "$O run $r: DATA LOST: the killed task wrote record $L, the new one read back ${3:-nothing}"
      NL_LOST=$((NL_LOST + L - ${3:-0}))
    fi
    log "$O run $r: killed $host; replacement Running on ${other:-?} after $t_run s, read back record ${3:-?} (last written: $L) after $t_data s"
    NL_RUN_SECS="$NL_RUN_SECS $t_run"
    # Running (as the orchestrator reports it) and the last record read back, whichever is later.
    NL_DATA_SECS="$NL_DATA_SECS $(awk -v a="$t_run" -v b="$t_data" 'BEGIN { print (a > b ? a : b) }')"
    back=$(now)
    o_restart "$victim" || return 1
    wait_until o_all_ready || { log "$O: $host did not come back"; o_nodes >&2; return 1; }
    log "  $host restarted, Ready again after $(since "$back") s"
  done
}

# ----------------------------------------------------------------------------------------------
# shoal
# ----------------------------------------------------------------------------------------------
# Whether node $1's agent has the volume mounted (a fuse.glusterfs mount under its data dir).
agent_mounted() {
  awk -v b="$(sh_dir "$1")/data/volumes/" 'index($5, b) == 1 && / - fuse\.glusterfs / { f = 1 } END { exit !f }' /proc/self/mountinfo
}
no_agent_mounts() { local i; for ((i = 1; i <= NODES; i++)); do agent_mounted "$i" && return 1; done; return 0; }
svc_containers_gone() { [ -z "$(engine ps -aq --filter "label=com.docker.swarm.service.name=$1")" ]; }

start_once() {   # $1 name, rest: extra service create args; prints seconds to Running
  local name=$1 t0 s; shift
  t0=$(now)
  sh 1 service create --detach --name "$name" --constraint node.role==worker --no-resolve-image "$@" \
    "$IMAGE" sleep 3600 >/dev/null || return 1
  wait_until o_running "$name" || { log "$name never ran"; sh 1 service ps --no-trunc "$name" >&2; return 1; }
  s=$(since "$t0")
  sh 1 service rm "$name" >/dev/null
  wait_until svc_containers_gone "$name" || log "containers of $name still there"
  wait_until no_agent_mounts || log "the volume is still mounted after $name went"
  echo "$s"
}

shoal_part() {
  local i t0 tok
  O=shoal
  log "shoal ($BUILD_NOTE): 3 daemons on the host engine"
  t0=$(now)
  for ((i = 1; i <= NODES; i++)); do sh_start "$i" || return 1; done
  sh 1 swarm init --advertise-addr "$(ns_ip 1)" >/dev/null || return 1
  tok=$(sh 1 swarm join-token -q worker) || return 1
  for ((i = 2; i <= NODES; i++)); do
    sh "$i" swarm join --token "$tok" --advertise-addr "$(ns_ip "$i")" "$(ns_ip 1):2377" >/dev/null || return 1
  done
  for ((i = 1; i <= NODES; i++)); do node_id_of "$i"; done >> "$NS_DATA/node-ids"
  wait_until o_all_ready || { log "shoal nodes not Ready"; o_nodes >&2; return 1; }
  log "shoal cluster up in $(since "$t0") s"
  sh 1 volume create -d shoal --opt type=glusterfs --opt "device=$(ns_ip 1),$(ns_ip 2):/$GV" \
    --opt subdir=shoal "$VOL" >/dev/null || return 1
  local mnt="type=volume,source=$VOL,target=/data"

  if has_part t; then
    local r s plain=() vol=()
    log "task start: $START_RUNS x (plain, with the volume)"
    for ((r = 1; r <= START_RUNS; r++)); do
      s=$(start_once vstart-plain) || return 1
      plain+=("$s")
      s=$(start_once vstart-vol --mount "$mnt") || return 1
      vol+=("$s")
      log "  run $r: plain ${plain[-1]} s, with the volume ${vol[-1]} s"
    done
    START_PLAIN=$(printf '%s\n' "${plain[@]}" | median)
    START_VOL=$(printf '%s\n' "${vol[@]}" | median)
    START_ALL="plain: ${plain[*]}; volume: ${vol[*]}"
  fi

  if has_part w; then
    local cid src c h cd=() cs=() hd=() hs=()
    log "write throughput: $TP_RUNS x (container, host): dd $DD_MB MiB conv=fsync; $SMALL_WRITES x $SMALL_BS B fsynced appends"
    sh 1 service create --detach --name vtp --constraint node.role==worker --no-resolve-image --mount "$mnt" \
      "$IMAGE" sleep 3600 >/dev/null || return 1
    wait_until o_running vtp || return 1
    wait_until eval '[ -n "$(engine ps -q --filter label=com.docker.swarm.service.name=vtp)" ]' || return 1
    cid=$(engine ps -q --filter label=com.docker.swarm.service.name=vtp | head -1)
    src=$(engine inspect "$cid" --format '{{range .Mounts}}{{if eq .Destination "/data"}}{{.Source}}{{end}}{{end}}')
    TP_WHERE="task on $(o_running_on vtp), bind of $src"
    log "  $TP_WHERE ($(awk -v s="$src" 'index(s, $5) == 1 && / - fuse\.glusterfs / { print $5 }' /proc/self/mountinfo | head -1) is fuse.glusterfs)"
    mkdir -p "$src/tp-host"
    engine exec "$cid" mkdir -p /data/tp-ctr
    # Alternating which goes first, so that a trend (the volume filling, other load) is shared.
    local first
    for ((r = 1; r <= TP_RUNS; r++)); do
      for first in ctr host; do
        [ $((r % 2)) = 0 ] && first=$([ "$first" = ctr ] && echo host || echo ctr)
        if [ "$first" = ctr ]; then
          c=$(engine exec "$cid" sh -c "$TP_SCRIPT" x /data/tp-ctr "$DD_MB" "$SMALL_WRITES" "$SMALL_BS") || { log "dd in the container failed"; return 1; }
        else
          h=$(busybox sh -c "$TP_SCRIPT" x "$src/tp-host" "$DD_MB" "$SMALL_WRITES" "$SMALL_BS") || { log "dd on the host failed"; return 1; }
        fi
      done
      read -r a b <<< "$c"; cd+=("$a"); cs+=("$b")
      read -r a b <<< "$h"; hd+=("$a"); hs+=("$b")
      log "  run $r: task dd ${cd[-1]} s, small writes ${cs[-1]} s; host dd ${hd[-1]} s, small writes ${hs[-1]} s"
    done
    TP_CTR_DD=$(printf '%s\n' "${cd[@]}" | median)
    TP_HOST_DD=$(printf '%s\n' "${hd[@]}" | median)
    TP_CTR_SMALL=$(printf '%s\n' "${cs[@]}" | median)
    TP_HOST_SMALL=$(printf '%s\n' "${hs[@]}" | median)
    TP_ALL="dd s, container: ${cd[*]}, host: ${hd[*]}; small writes s, container: ${cs[*]}, host: ${hs[*]}"
    sh 1 service rm vtp >/dev/null
    wait_until svc_containers_gone vtp
  fi

  if has_part f; then
    log "node loss with data: $NL_RUNS kills of the worker running $WSVC"
    sh 1 service create --detach --name "$WSVC" --constraint node.role==worker --no-resolve-image --mount "$mnt" \
      "$IMAGE" sh -c "$WRITER" >/dev/null || return 1
    if node_loss; then
      SH_RUN=$(echo $NL_RUN_SECS | tr ' ' '\n' | median)
      SH_DATA=$(echo $NL_DATA_SECS | tr ' ' '\n' | median)
      SH_ALL="(running:$NL_RUN_SECS; read back:$NL_DATA_SECS)"
      SH_LOST=$NL_LOST
    fi
  fi
  log "stopping shoal"
  sh_cleanup_all
}

# ----------------------------------------------------------------------------------------------
# Docker Swarm
# ----------------------------------------------------------------------------------------------
swarm_part() {
  local i t0 tok src
  O=swarm
  log "Docker Swarm: 3 dockerds in the same namespaces, the gluster volume FUSE-mounted on each node"
  t0=$(now)
  for ((i = 1; i <= NODES; i++)); do dk_start "$i" || return 1; done
  for ((i = 1; i <= NODES; i++)); do dk_load_image "$i" "$IMAGE" || return 1; done
  dk 1 swarm init --advertise-addr "$(ns_ip 1)" --listen-addr "$(ns_ip 1):2377" \
    --default-addr-pool "${NS_SUBNET%.*}.128.0/17" >/dev/null || return 1
  tok=$(dk 1 swarm join-token -q worker) || return 1
  for ((i = 2; i <= NODES; i++)); do
    dk "$i" swarm join --token "$tok" --advertise-addr "$(ns_ip "$i")" \
      --listen-addr "$(ns_ip "$i"):2377" "$(ns_ip 1):2377" >/dev/null || return 1
  done
  wait_until o_all_ready || { log "swarm nodes not Ready"; o_nodes >&2; return 1; }
  # What a Swarm user does: the volume mounted on every node (here by the script, client in the
  # node's namespace), the service binds it; {{.Node.Hostname}} picks each node's own mount.
  for ((i = 1; i <= NODES; i++)); do gl_mount "$GV" "$(ns_data_dir "$i")/gv" "$i" 1 2 || return 1; done
  mkdir -p "$(ns_data_dir 1)/gv/swarm"
  log "swarm up, volume mounted on every node, in $(since "$t0") s"
  src="$NS_DATA/{{.Node.Hostname}}/gv/swarm"
  dk 1 service create --detach --name "$WSVC" --constraint node.role==worker --no-resolve-image \
    --mount "type=bind,source=$src,target=/data" "$IMAGE" sh -c "$WRITER" >/dev/null || return 1
  if node_loss; then
    SW_RUN=$(echo $NL_RUN_SECS | tr ' ' '\n' | median)
    SW_DATA=$(echo $NL_DATA_SECS | tr ' ' '\n' | median)
    SW_ALL="(running:$NL_RUN_SECS; read back:$NL_DATA_SECS)"
    SW_LOST=$NL_LOST
  fi
  dk 1 service rm "$WSVC" >/dev/null 2>&1
}

# ----------------------------------------------------------------------------------------------
log "$NODES nodes, glusterd on each, volume $GV replica 2 on nodes 1 and 2"
ns_create "$NODES" || exit 1
gl_start 1 2 3 || exit 1
gl_pool 1 2 3 || exit 1
gl_volume "$GV" 1 2 || exit 1

START_PLAIN= START_VOL= START_ALL= TP_CTR_DD= TP_HOST_DD= TP_CTR_SMALL= TP_HOST_SMALL= TP_ALL= TP_WHERE=
SH_RUN= SH_DATA= SH_ALL= SH_LOST= SW_RUN= SW_DATA= SW_ALL= SW_LOST=
shoal_part || log "the shoal part stopped early"
if has_part f && [ "$SWARM" = 1 ]; then
  swarm_part || log "the Docker Swarm part stopped early"
fi

mbs() { awk -v mb="$DD_MB" -v s="$1" 'BEGIN { if (s + 0 <= 0) print "n/a"; else printf "%.1f MiB/s (%s s)\n", mb / s, s }'; }
msop() { awk -v n="$SMALL_WRITES" -v s="$1" 'BEGIN { if (s + 0 <= 0) print "n/a"; else printf "%.2f ms (%s s)\n", s * 1000 / n, s }'; }
echo
echo "Shared volumes: $(date '+%F %H:%M'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), Docker $(engine version --format '{{.Server.Version}}' 2>/dev/null), GlusterFS $(glusterd --version | awk 'NR == 1 { print $2 }'), shoal $BUILD_NOTE"
echo "GlusterFS replica 2 (bricks on nodes 1 and 2, root file system), 3 nodes: node 1 manager, 2 and 3 workers"
echo
if has_part f; then
  echo "| node loss (median of $NL_RUNS) | Docker Swarm | shoal | shoal/Swarm |"
  echo "| --- | --- | --- | --- |"
  echo "| kill to replacement Running on the other worker | ${SW_RUN:-n/a} s | ${SH_RUN:-n/a} s | $(ratio "$SH_RUN" "$SW_RUN") |"
  echo "| kill to the replacement Running and having read back the last record | ${SW_DATA:-n/a} s | ${SH_DATA:-n/a} s | $(ratio "$SH_DATA" "$SW_DATA") |"
  echo "| records lost (written before the kill, not read back) | ${SW_LOST:-n/a} | ${SH_LOST:-n/a} | |"
  echo "  all runs, seconds: shoal ${SH_ALL:-n/a}; Swarm ${SW_ALL:-n/a}"
  echo
fi
if has_part t; then
  echo "| task start, service create to Running (median of $START_RUNS) | shoal |"
  echo "| --- | --- |"
  echo "| plain | ${START_PLAIN:-n/a} s |"
  echo "| mounting the gluster volume | ${START_VOL:-n/a} s (+$(awk -v a="$START_VOL" -v b="$START_PLAIN" 'BEGIN { printf "%.2f", a - b }') s) |"
  echo "  all: ${START_ALL:-n/a}"
  echo
fi
if has_part w; then
  echo "| writes through the volume (median of $TP_RUNS) | in the task (bind) | host, same FUSE mount | task/host |"
  echo "| --- | --- | --- | --- |"
  echo "| dd $DD_MB MiB, conv=fsync | $(mbs "$TP_CTR_DD") | $(mbs "$TP_HOST_DD") | $(ratio "$TP_CTR_DD" "$TP_HOST_DD") time |"
  echo "| $SMALL_WRITES appends of $SMALL_BS B, each an fsynced dd | $(msop "$TP_CTR_SMALL") per write | $(msop "$TP_HOST_SMALL") per write | $(ratio "$TP_CTR_SMALL" "$TP_HOST_SMALL") time |"
  echo "  ${TP_WHERE:-}; all: ${TP_ALL:-n/a}"
fi
