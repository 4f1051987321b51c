#!/usr/bin/env bash
# Docker Swarm as a multi-node peer: a real 5-node swarm (3 managers + 2 workers), one dockerd
# per network namespace on this machine (bench/lib/netns.sh), and two measurements:
#   failover   kill -9 the raft leader's dockerd while a client keeps writing (`docker config
#              create` against another manager); seconds from the kill until a write is accepted
#              again. Repeated KILLS times (the killed dockerd is restarted and rejoins in
#              between); prints median and worst.
#   node-loss  a service of REPLICAS replicas of shoal-test/busybox `sleep 3600`; kill one worker
#              whole (dockerd, its containerd, shims and containers, all kill -9); seconds until
#              REPLICAS tasks run on live nodes again (`docker service ps`; Docker 20.10's
#              `service ls` cannot tell, see run_node_loss). Default Swarm settings (heartbeat,
#              restart policy, raft ticks).
#
# Usage: bench/swarm-peer.sh               (as root)
#        bench/swarm-peer.sh --cleanup     remove what a killed run left behind
# Environment:
#   KILLS=10            failover repetitions
#   REPLICAS=20         node-loss service size
#   PARTS=fn            f = failover, n = node-loss
#   WRITE_INTERVAL=0.25 seconds between the starts of two writes during a failover
#   WRITE_TIMEOUT=30    seconds one write may take before it is abandoned
#   TIMEOUT=180         seconds any single wait may take
#   NS_PREFIX=peer NS_SUBNET=10.98.0 NS_BRIDGE=pbr0   see bench/lib/netns.sh
# Needs: shoal-test/busybox in the host engine (scripts/build-test-images.sh builds it; it is
# copied into each node with docker save | load). Never talks swarm to the host engine, pulls
# nothing, sends nothing outside the namespaces; everything is removed on exit, Ctrl-C included.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
. bench/lib/netns.sh

NODES=5
MANAGERS=3
KILLS=${KILLS:-10}
REPLICAS=${REPLICAS:-20}
PARTS=${PARTS:-fn}
WRITE_TIMEOUT=${WRITE_TIMEOUT:-30}
WRITE_INTERVAL=${WRITE_INTERVAL:-0.25}
TIMEOUT=${TIMEOUT:-180}
IMAGE=shoal-test/busybox
SVC=bench

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f\n", b - a }'; }

if [ "${1:-}" = "--cleanup" ]; then
  ns_on_cleanup dk_cleanup_all
  ns_cleanup
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
if ls /run/netns 2>/dev/null | grep -qE "^${NS_PREFIX}([0-9]+|hub)\$"; then
  echo "namespaces ${NS_PREFIX}* exist already (another run?); bench/swarm-peer.sh --cleanup removes them" >&2
  exit 1
fi
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "building the test images in the host engine"
  bash scripts/build-test-images.sh || exit 1
fi

cleanup() {
  trap - EXIT INT TERM
  log "cleaning up"
  ns_cleanup
}
ns_on_cleanup dk_cleanup_all
trap cleanup EXIT
trap 'exit 130' INT TERM

# Polls "$@" until it succeeds; fails after TIMEOUT seconds.
wait_until() {
  local deadline=$(($(date +%s) + TIMEOUT))
  until "$@"; do
    [ "$(date +%s)" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

median() {
  sort -n | awk '{ a[NR] = $1 } END {
    if (NR == 0) { print "n/a"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# ----------------------------------------------------------------------------------------------
# The cluster
# ----------------------------------------------------------------------------------------------
ALIVE=()   # ALIVE[i]=1 while node i's dockerd is meant to run

# "hostname status availability manager-status" for every node, as a live manager sees them.
nodes_view() {
  local i
  for ((i = 1; i <= MANAGERS; i++)); do
    [ "${ALIVE[$i]:-0}" = 1 ] || continue
    dk "$i" node ls --format '{{.Hostname}} {{.Status}} {{.ManagerStatus}}' 2>/dev/null && return 0
  done
  return 1
}

# Node index of the current raft leader (empty when there is none).
leader() { nodes_view | awk '$3 == "Leader" { sub(/^'"$NS_PREFIX"'/, "", $1); print $1 }'; }

# All nodes Ready and all managers Reachable or Leader, with exactly one Leader.
cluster_healthy() {
  local v
  v=$(nodes_view) || return 1
  [ "$(grep -c ' Ready' <<< "$v")" = "$NODES" ] || return 1
  [ "$(grep -cE ' Ready (Leader|Reachable)$' <<< "$v")" = "$MANAGERS" ] || return 1
  [ "$(grep -c ' Leader$' <<< "$v")" = 1 ]
}

setup_cluster() {
  local i tok_m tok_w t0
  t0=$(now)
  ns_create "$NODES" || exit 1
  for ((i = 1; i <= NODES; i++)); do
    dk_start "$i" || exit 1
    ALIVE[$i]=1
  done
  for ((i = 1; i <= NODES; i++)); do dk_load_image "$i" "$IMAGE" || exit 1; done
  # Overlay subnets from a pool inside our range (the default pool 10.0.0.0/8 is used by other
  # tests on this machine; overlay networks only exist inside the namespaces anyway).
  dk 1 swarm init --advertise-addr "$(ns_ip 1)" --listen-addr "$(ns_ip 1):2377" \
    --default-addr-pool 10.98.128.0/17 >/dev/null || exit 1
  tok_m=$(dk 1 swarm join-token -q manager)
  tok_w=$(dk 1 swarm join-token -q worker)
  for ((i = 2; i <= NODES; i++)); do
    local tok=$tok_w
    [ "$i" -le "$MANAGERS" ] && tok=$tok_m
    dk "$i" swarm join --token "$tok" --advertise-addr "$(ns_ip "$i")" \
      --listen-addr "$(ns_ip "$i"):2377" "$(ns_ip 1):2377" >/dev/null || exit 1
  done
  wait_until cluster_healthy || { log "cluster did not become healthy"; nodes_view >&2; exit 1; }
  log "swarm of $NODES nodes ($MANAGERS managers) up in $(since "$t0") s"
  nodes_view | sed 's/^/    /' >&2
}

# ----------------------------------------------------------------------------------------------
# Leader failover
# ----------------------------------------------------------------------------------------------
# Seconds from $2 (epoch) until node $1 logged "became leader" (raft), from its dockerd log.
elected_after() {
  local ts
  ts=$(grep -h 'became leader at term' "$(ns_data_dir "$1")/dockerd.log" 2>/dev/null | tail -1 |
    sed -n 's/^time="\([^"]*\)".*/\1/p')
  [ -n "$ts" ] || { echo "?"; return; }
  awk -v a="$2" -v b="$(date -d "$ts" +%s.%N)" 'BEGIN { printf "%.2f\n", b - a }'
}

# One write (a new config object) through manager $1; $2 names it. On success, the time it
# completed goes to $FO_DIR/ok.$2.
write_once() {
  local t rc
  t=$(now)
  printf 'x' | timeout "$WRITE_TIMEOUT" env DOCKER_HOST="$(dk_host "$1")" \
    docker config create "w-$$-$2" - >/dev/null 2>"$FO_DIR/err.$2"
  rc=$?
  if [ $rc = 0 ]; then
    now > "$FO_DIR/ok.$2"
  else
    echo "(started $t, failed $(now), rc=$rc)" >> "$FO_DIR/err.$2"
  fi
}

# A write to a follower blocks while there is no leader (it does not fail fast), so the client
# starts a new write every WRITE_INTERVAL seconds without waiting for the previous ones; the
# result is when the first of them is accepted. Sets ROUND_SECS.
failover_round() {
  local r=$1 l w i t0 k=0 first secs nl pids=()
  wait_until cluster_healthy || { log "cluster not healthy before round $r"; return 1; }
  l=$(leader)
  [ -n "$l" ] || return 1
  for ((i = 1; i <= MANAGERS; i++)); do [ "$i" != "$l" ] && { w=$i; break; }; done
  FO_DIR=$(mktemp -d "$NS_DATA/fo.XXXXXX")
  write_once "$w" "r$r-pre"
  [ -f "$FO_DIR/ok.r$r-pre" ] || { log "a write before the kill failed"; return 1; }
  rm -f "$FO_DIR"/ok.*
  t0=$(now)
  dk_kill "$l"
  ALIVE[$l]=0
  while ! compgen -G "$FO_DIR/ok.*" >/dev/null; do
    if [ "$(since "$t0" | cut -d. -f1)" -ge "$TIMEOUT" ]; then
      log "no write accepted within $TIMEOUT s"
      wait "${pids[@]}"
      return 1
    fi
    k=$((k + 1))
    write_once "$w" "r$r-$k" &
    pids+=($!)
    sleep "$WRITE_INTERVAL"
  done
  wait "${pids[@]}"   # the writes still in flight complete too, now that there is a leader
  first=$(cat "$FO_DIR"/ok.* | sort -n | head -1)
  secs=$(awk -v a="$t0" -v b="$first" 'BEGIN { printf "%.2f\n", b - a }')
  nl=$(leader)
  log "round $r: killed leader ${NS_PREFIX}$l; writes via ${NS_PREFIX}$w ($k started, $(ls "$FO_DIR" | grep -c '^ok') accepted) accepted again after $secs s; new leader ${NS_PREFIX}$nl elected after $(elected_after "$nl" "$t0") s"
  local e
  for e in "$FO_DIR"/err.*; do
    [ -s "$e" ] && grep -q failed "$e" && { log "  a failed write: $(tr '\n' ' ' < "$e" | cut -c1-300)"; break; }
  done
  ROUND_SECS=$secs
  rm -rf "$FO_DIR"
  # Bring the killed manager back (same data: it rejoins as a manager) for the next round.
  dk_start "$l" || return 1
  ALIVE[$l]=1
}

run_failover() {
  local r out=()
  log "failover: $KILLS kills of the leader's dockerd (kill -9), writes via another manager"
  for ((r = 1; r <= KILLS; r++)); do
    failover_round "$r" || { log "failover round $r failed"; break; }
    out+=("$ROUND_SECS")
    wait_until cluster_healthy || { log "cluster did not recover after round $r"; break; }
    sleep 3   # let raft and the dispatcher settle before the next kill
  done
  [ ${#out[@]} -gt 0 ] || return 1
  FAILOVER_RESULT="swarm failover: median $(printf '%s\n' "${out[@]}" | median) s, worst $(printf '%s\n' "${out[@]}" | sort -n | tail -1) s over ${#out[@]} kills (all: ${out[*]})"
  echo "$FAILOVER_RESULT"
}

# ----------------------------------------------------------------------------------------------
# Node loss
# ----------------------------------------------------------------------------------------------
svc_replicas() { dk 1 service ls --filter "name=$SVC" --format '{{.Replicas}}' 2>/dev/null; }
svc_full() { [ "$(svc_replicas)" = "$REPLICAS/$REPLICAS" ]; }
# Tasks meant to run and running, per node: "peer3 4" lines.
svc_running_by_node() {
  dk 1 service ps "$SVC" --filter desired-state=running --format '{{.Node}} {{.CurrentState}}' 2>/dev/null |
    awk '$2 == "Running" { n[$1]++ } END { for (k in n) print k, n[k] }' | sort
}

# Docker 20.10 pitfall: the REPLICAS column of `docker service ls` (ServiceStatus.RunningTasks,
# computed by the daemon) counts every task whose last known state is Running, including those on
# a node that is Down (their desired state becomes Shutdown but nobody can report them stopped).
# After a node loss it goes 20/20 -> 24/20 and stays there; it never shows 20/20 again. So the
# measurement is the intent of "20/20 again": REPLICAS tasks with desired state Running that are
# Running on nodes other than the dead one, from `docker service ps`.
run_node_loss() {
  local victim=$NODES t0 t_down= t_tasks= rep st live on_victim rep_max=
  log "node-loss: service of $REPLICAS x $IMAGE sleep 3600"
  t0=$(now)
  dk 1 service create --detach --name "$SVC" --replicas "$REPLICAS" --no-resolve-image \
    "$IMAGE" sleep 3600 >/dev/null || return 1
  wait_until svc_full || { log "service did not reach $REPLICAS/$REPLICAS"; return 1; }
  log "service at $REPLICAS/$REPLICAS after $(since "$t0") s; tasks per node:"
  svc_running_by_node | sed 's/^/    /' >&2
  on_victim=$(svc_running_by_node | awk -v n="${NS_PREFIX}$victim" '$1 == n { print $2 }')
  sleep 5   # steady state
  log "killing worker ${NS_PREFIX}$victim (dockerd, containerd, shims, ${on_victim:-0} containers)"
  t0=$(now)
  dk_kill_node "$victim"
  ALIVE[$victim]=0
  while :; do
    if [ -z "$t_down" ]; then
      st=$(nodes_view | awk -v n="${NS_PREFIX}$victim" '$1 == n { print $2 }')
      [ "$st" = Down ] && t_down=$(since "$t0")
    fi
    live=$(svc_running_by_node | awk -v n="${NS_PREFIX}$victim" '$1 != n { s += $2 } END { print s + 0 }')
    if [ "$live" = "$REPLICAS" ] && [ -n "$t_down" ]; then
      t_tasks=$(since "$t0")
      break
    fi
    if [ "$(since "$t0" | cut -d. -f1)" -ge "$TIMEOUT" ]; then
      log "service did not recover within $TIMEOUT s ($live tasks running on live nodes)"
      return 1
    fi
    sleep 0.2
  done
  rep=$(svc_replicas)
  log "node ${NS_PREFIX}$victim marked Down after $t_down s; $REPLICAS tasks running on live nodes after $t_tasks s (service ls then says $rep)"
  svc_running_by_node | sed 's/^/    /' >&2
  NODELOSS_RESULT="swarm node-loss $REPLICAS replicas: $t_tasks s ($NODES nodes = $MANAGERS managers + $((NODES - MANAGERS)) workers; worker ${NS_PREFIX}$victim with ${on_victim:-0} tasks killed; node Down after $t_down s; service ls shows $rep, see README)"
  echo "$NODELOSS_RESULT"
}

setup_cluster
FAILOVER_RESULT=
NODELOSS_RESULT=
case $PARTS in *f*) run_failover >/dev/null ;; esac
case $PARTS in *n*) run_node_loss >/dev/null ;; esac
echo
echo "Docker Swarm peer, $(docker version --format '{{.Server.Version}}' 2>/dev/null) dockerd x $NODES in network namespaces, $(nproc) cores, $(date +%F)"
[ -n "$FAILOVER_RESULT" ] && echo "$FAILOVER_RESULT"
[ -n "$NODELOSS_RESULT" ] && echo "$NODELOSS_RESULT"
case $PARTS in *f*) [ -n "$FAILOVER_RESULT" ] || exit 1 ;; esac
case $PARTS in *n*) [ -n "$NODELOSS_RESULT" ] || exit 1 ;; esac
exit 0
