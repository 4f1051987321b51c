#!/usr/bin/env bash
# shoal on several nodes of this machine, next to the Docker Swarm peer (bench/swarm-peer.sh).
# Each node is a `shoal daemon` in its own network namespace (bench/lib/netns.sh: sbn1..sbnN,
# 10.97.0.i on a bridge sbbr0 in namespace sbnhub), all sharing the host's Docker Engine; a node's
# agent only manages containers labelled com.docker.swarm.node.id=<its id>. Four measurements:
#   f  failover   3 managers + 2 workers; a client writes through a follower (`docker config
#                 create`, a new write started every WRITE_INTERVAL s, each allowed WRITE_TIMEOUT
#                 s, as swarm-peer.sh does); kill -9 the leader's daemon; seconds until a write is
#                 accepted again. The killed node is restarted on its data dir (it rejoins as a
#                 manager by itself) and must show Reachable before the next kill. KILLS rounds.
#   w  no lost writes   a client writes numbered configs round-robin over the live managers, one
#                 at a time, while the leader is killed and restarted W_KILLS times; afterwards
#                 every manager lists its configs: how many acknowledged writes (CLI exit 0) are
#                 missing (goal: zero), and how many writes failed (allowed: not acknowledged).
#   n  node loss  the same 5 nodes (node-1..3 managers, node-4..5 workers); a service of REPLICAS
#                 replicas of shoal-test/busybox `sleep 3600`; worker node-5 is killed (kill -9 of
#                 its daemon and `docker rm -f` of its containers); seconds until REPLICAS tasks
#                 run on live nodes (`docker service ps --filter desired-state=running`). NL_RUNS
#                 times (the node comes back and the service is recreated in between).
#   s  stress     (not in the default PARTS) the same 5 nodes, a service of REPLICAS tasks; while
#                 stress-ng saturates every core and the disk (--cpu N --hdd 1) for STRESS_SECS s,
#                 `docker node ls` every second: samples with a node not Ready, leader changes,
#                 and tasks rescheduled (goal: none of them). Needs stress-ng.
#   m  memory     a fresh 2-node cluster (node-1 manager, node-2 worker); VmRSS of both daemons
#                 idle, then with a service of MEM_REPLICAS replicas spread over the two.
#   o  overlay    a fresh 3-node cluster (node-1 manager without tasks, node-2 and node-3
#                 workers). One task of shoal-test/web (busybox httpd, a new connection per
#                 request) on node-2, published on 8080. wrk (WRK_SECS s, WRK_CONNS connections,
#                 runs WRK_PAUSE s apart) from node-1 to the task's address (direct, over
#                 VXLAN), from node-1 to the service's VIP, from a container on node-1 (attached
#                 to the network) to the service's name, and from a client outside the nodes to
#                 node-1:8080 (the routing mesh, node-1 runs no task): requests/s and latency,
#                 each as a ratio of direct. Then
#                 ROUTE_RUNS times: a new service with one task on node-3, published on 8081;
#                 seconds from its task's Running timestamp to the first answer through node-1.
#
# Usage: bench/cluster.sh              (as root) all parts
#        PARTS=fw KILLS=3 W_KILLS=5 bench/cluster.sh     a quicker subset
#        bench/cluster.sh --swarm      first re-run bench/swarm-peer.sh (KILLS kills) and compare
#                                      against its fresh numbers instead of the recorded ones
#        bench/cluster.sh --cleanup    remove what a killed (kill -9) run left behind
# Environment:
#   PARTS=fwnmo  F_MANAGERS=3 (of the 5 nodes in f, w, n)  KILLS=10  W_KILLS=20  REPLICAS=20  NL_RUNS=3  MEM_REPLICAS=200
#   W_TARGET=leader (part w kills the leader; follower: one follower; two: leader and a follower at once)
#   WRITE_INTERVAL=0.25  WRITE_TIMEOUT=30  TIMEOUT=180 (any single wait)  SETTLE=2 (seconds
#   between a node showing Reachable again and the next kill)  UNREACHABLE_WAIT=30 (failover:
#   before restarting the killed leader, wait up to this long for the others to show it
#   Unreachable, so that "Reachable again" is a real transition; 0 restarts it at once)
#   SHOAL=target/release/shoal (or $CARGO_TARGET_DIR/release/shoal); BUILD=0 skips building it
#   SHOAL_LOG=info  daemon log filter; logs are left in KEEP_LOGS=<dir> when set
#   NS_PREFIX=sbn NS_SUBNET=10.97.0 NS_BRIDGE=sbbr0   see bench/lib/netns.sh (the test suite uses
#   shoal-hub/shoal-n* and 10.99.0.x, swarm-peer.sh peer*/10.98.0.x)
# Needs: shoal-test/busybox in the host engine (scripts/build-test-images.sh builds it). Never
# talks swarm to the host engine, pulls nothing, sends nothing outside the namespaces; removes
# everything it created on exit, Ctrl-C included.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
NS_PREFIX=${NS_PREFIX:-sbn}
NS_SUBNET=${NS_SUBNET:-10.97.0}
NS_BRIDGE=${NS_BRIDGE:-sbbr0}
. bench/lib/netns.sh
. bench/lib/shoal.sh

# Docker Swarm's numbers, measured by bench/swarm-peer.sh on this machine and recorded in
# bench/README.md ("swarm-peer.sh ... Latest numbers", 2026-11-22, Docker 20.10.24): leader
# failover median 13.30 s, worst 18.07 s over 10 kills; node loss (1 of 5 nodes, a worker with 4
# of 20 tasks) 19.76 s, two more runs 17.45 s and 17.03 s. `--swarm` measures them again.
SWARM_FAILOVER_MEDIAN=13.30
SWARM_FAILOVER_WORST=18.07
SWARM_NODELOSS=19.76
SWARM_NODELOSS_OTHERS="17.45 17.03"
SWARM_F_SOURCE="recorded in bench/README.md (swarm-peer.sh, 2026-11-22)"
SWARM_N_SOURCE=$SWARM_F_SOURCE

PARTS=${PARTS:-fwnmo}
# Managers among the 5 nodes of parts f, w and n (issue 17 asks 5: F_MANAGERS=5 PARTS=fw).
F_MANAGERS=${F_MANAGERS:-3}
KILLS=${KILLS:-10}
W_KILLS=${W_KILLS:-20}
# Who part w kills each round: leader, follower, or two (the leader and a follower at once).
W_TARGET=${W_TARGET:-leader}
REPLICAS=${REPLICAS:-20}
NL_RUNS=${NL_RUNS:-3}
MEM_REPLICAS=${MEM_REPLICAS:-200}
WRK_SECS=${WRK_SECS:-5}
WRK_PAUSE=${WRK_PAUSE:-61}
WRK_CONNS=${WRK_CONNS:-16}
ROUTE_RUNS=${ROUTE_RUNS:-5}
WRITE_INTERVAL=${WRITE_INTERVAL:-0.25}
WRITE_TIMEOUT=${WRITE_TIMEOUT:-30}
TIMEOUT=${TIMEOUT:-180}
SETTLE=${SETTLE:-2}
UNREACHABLE_WAIT=${UNREACHABLE_WAIT:-30}
STRESS_SECS=${STRESS_SECS:-600}
BUILD=${BUILD:-1}
SHOAL=${SHOAL:-${CARGO_TARGET_DIR:-$ROOT/target}/release/shoal}
IMAGE=shoal-test/busybox
ENGINE=unix:///var/run/docker.sock   # the host's engine: containers only, never `docker swarm`
SVC=sbench
STRESS_SVC=sstress
MEMSVC=smem

# "shoal X s vs Docker Swarm Y s: ratio" (shoal/swarm, and how many times faster).
compare() {
  awk -v s="$1" -v w="$2" 'BEGIN {
    if (s + 0 <= 0 || w + 0 <= 0) { print "ratio n/a"; exit }
    printf "shoal/swarm %.3fx (%.1fx faster)\n", s / w, w / s }'
}

# ----------------------------------------------------------------------------------------------
# shoal nodes: sh_start, sh_kill_daemon, sh_cleanup_all, ... are in bench/lib/shoal.sh
# ----------------------------------------------------------------------------------------------
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }
mib() { awk -v k="$1" 'BEGIN { if (k == "") print "n/a"; else printf "%.1f MiB\n", k / 1024 }'; }

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
if [ "${1:-}" = "--cleanup" ]; then
  ns_on_cleanup sh_keep_logs
  ns_on_cleanup sh_cleanup_all
  ns_cleanup
  exit 0
fi
RUN_SWARM=0
[ "${1:-}" = "--swarm" ] && RUN_SWARM=1

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
if ls /run/netns 2>/dev/null | grep -qE "^${NS_PREFIX}([0-9]+|hub)\$"; then
  echo "namespaces ${NS_PREFIX}* exist already (another run?); bench/cluster.sh --cleanup removes them" >&2
  exit 1
fi
if [ ! -x "$SHOAL" ] && [ "$BUILD" = 1 ]; then
  log "building shoal: cargo build --release -p shoal"
  cargo build --release -p shoal >&2 || { log "build failed"; exit 1; }
fi
[ -x "$SHOAL" ] || { echo "no shoal binary at $SHOAL (set SHOAL=...)" >&2; exit 1; }
if ! engine image inspect "$IMAGE" >/dev/null 2>&1; then
  log "building the test images in the host engine"
  bash scripts/build-test-images.sh || exit 1
fi

if [ "$RUN_SWARM" = 1 ]; then
  swarm_parts=
  case $PARTS in *f*) swarm_parts=f ;; esac
  case $PARTS in *n*) swarm_parts=${swarm_parts}n ;; esac
  if [ -n "$swarm_parts" ]; then
    log "re-running bench/swarm-peer.sh (PARTS=$swarm_parts KILLS=$KILLS REPLICAS=$REPLICAS) for Docker Swarm's numbers"
    out=$(env -u NS_PREFIX -u NS_SUBNET -u NS_BRIDGE -u NS_DATA -u NS_STATE PARTS="$swarm_parts" \
      KILLS="$KILLS" REPLICAS="$REPLICAS" bench/swarm-peer.sh | tee /dev/stderr)
    m=$(sed -n 's/^swarm failover: median \([0-9.]*\) s, worst \([0-9.]*\) s.*/\1 \2/p' <<< "$out")
    n=$(sed -n 's/^swarm node-loss [0-9]* replicas: \([0-9.]*\) s.*/\1/p' <<< "$out")
    if [ -n "$m" ]; then
      read -r SWARM_FAILOVER_MEDIAN SWARM_FAILOVER_WORST <<< "$m"
      SWARM_F_SOURCE="measured just now by bench/swarm-peer.sh (KILLS=$KILLS)"
    fi
    if [ -n "$n" ]; then
      SWARM_NODELOSS=$n
      SWARM_NODELOSS_OTHERS=
      SWARM_N_SOURCE="measured just now by bench/swarm-peer.sh"
    fi
    [ -n "$m$n" ] || log "swarm-peer.sh gave no numbers; comparing against the recorded ones"
  fi
fi

cleanup() {
  trap - EXIT INT TERM
  [ -n "${HOLD:-}" ] && { log "holding the nodes for $HOLD s (HOLD)"; sleep "$HOLD"; }
  log "cleaning up"
  ns_cleanup
}
ns_on_cleanup sh_keep_logs
ns_on_cleanup sh_cleanup_all
trap cleanup EXIT
trap 'exit 130' INT TERM

# ----------------------------------------------------------------------------------------------
# The cluster
# ----------------------------------------------------------------------------------------------
NODES=0
MANAGERS=0
# The cluster's helpers (form_cluster, reset_cluster, cluster_healthy, leader, rejoined,
# restart_and_rejoin, ...) are in bench/lib/shoal.sh.

# ----------------------------------------------------------------------------------------------
# f: leader failover
# ----------------------------------------------------------------------------------------------
# One write (a new config) through node $1, named $2. On success the time it completed goes to
# $FO_DIR/ok.$2.
write_once() {
  local t rc
  t=$(now)
  printf 'x' | timeout "$WRITE_TIMEOUT" docker -H "$(sh_host "$1")" \
    config create "fo-$$-$2" - >/dev/null 2>"$FO_DIR/err.$2"
  rc=$?
  if [ $rc = 0 ]; then
    now > "$FO_DIR/ok.$2"
  else
    echo "(started $t, failed $(now), rc=$rc)" >> "$FO_DIR/err.$2"
  fi
}

# Seconds from $2 (epoch) until node $1 logged raft's "become leader" (the last such line).
elected_after() {
  local ts
  ts=$(sed 's/\x1b\[[0-9;]*m//g' "$(sh_dir "$1")/daemon.log" 2>/dev/null | grep 'become leader' | tail -1 | awk '{ print $1 }')
  [ -n "$ts" ] || { echo "?"; return; }
  diff_s "$2" "$(date -d "$ts" +%s.%N)"
}

failover_round() {
  local r=$1 l w i t0 k=0 first secs nl nfail pids=() e
  wait_until cluster_healthy || { log "cluster not healthy before round $r"; nodes_view >&2; return 1; }
  l=$(leader)
  [ -n "$l" ] || return 1
  for ((i = 1; i <= MANAGERS; i++)); do [ "$i" != "$l" ] && { w=$i; break; }; done
  FO_DIR=$(mktemp -d "$NS_DATA/fo.XXXXXX")
  write_once "$w" "r$r-pre"
  [ -f "$FO_DIR/ok.r$r-pre" ] || { log "a write before the kill failed: $(cat "$FO_DIR/err.r$r-pre")"; return 1; }
  rm -f "$FO_DIR"/ok.*
  t0=$(now)
  sh_kill_daemon "$l"
  engine_rm_node "$(node_id_of "$l")" &   # a manager here runs no task; the kill is the daemon's
  pids+=($!)
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
  wait "${pids[@]}"   # the writes still in flight complete (or fail) too
  first=$(cat "$FO_DIR"/ok.* | sort -n | head -1)
  secs=$(diff_s "$t0" "$first")
  nfail=$(grep -l failed "$FO_DIR"/err.* 2>/dev/null | wc -l)
  nl=$(leader)
  log "round $r: killed leader node-$l; writes via node-$w ($k started, $(ls "$FO_DIR" | grep -c '^ok') accepted, $nfail failed) accepted again after $secs s; new leader node-$nl logged 'become leader' after $(elected_after "$nl" "$t0") s"
  log "  node-$l as the others see it $(since "$t0") s after the kill: $(nodes_view | awk -v n="node-$l" '$1 == n { print $2, $3 }')"
  # So that "Reachable again" means something: first wait until the survivors show it
  # Unreachable (bounded by UNREACHABLE_WAIT seconds; 0 restarts it at once).
  if [ "$UNREACHABLE_WAIT" -gt 0 ]; then
    local st t_unr=
    while :; do
      st=$(nodes_view | awk -v n="node-$l" '$1 == n { print $2, $3 }')
      [[ "$st" == *Unreachable* ]] && { t_unr=$(since "$t0"); break; }
      [ "$(since "$t0" | cut -d. -f1)" -ge "$UNREACHABLE_WAIT" ] && break
      sleep 0.2
    done
    if [ -n "$t_unr" ]; then
      log "  node-$l shown '$st' by the others $t_unr s after the kill; restarting it"
    else
      log "  node-$l still shown '$st' $UNREACHABLE_WAIT s after the kill; restarting it"
    fi
  fi
  for e in "$FO_DIR"/err.*; do
    [ -s "$e" ] && grep -q failed "$e" && { log "  a failed write: $(tr '\n' ' ' < "$e" | cut -c1-300)"; break; }
  done
  ROUND_SECS=$secs
  rm -rf "$FO_DIR"
  restart_and_rejoin "$l" || return 1
  log "  node-$l restarted, Reachable again after $BACK_SECS s"
}

run_failover() {
  local r out=()
  log "failover: $KILLS kills of the leader's daemon (kill -9), writes via a follower every $WRITE_INTERVAL s"
  for ((r = 1; r <= KILLS; r++)); do
    failover_round "$r" || { log "failover round $r failed"; break; }
    out+=("$ROUND_SECS")
    sleep "$SETTLE"
  done
  [ ${#out[@]} -gt 0 ] || return 1
  local med worst
  med=$(printf '%s\n' "${out[@]}" | median)
  worst=$(printf '%s\n' "${out[@]}" | sort -n | tail -1)
  FAILOVER_RESULT="shoal failover: median $med s, worst $worst s over ${#out[@]} kills (all: ${out[*]})
  vs Docker Swarm median $SWARM_FAILOVER_MEDIAN s: $(compare "$med" "$SWARM_FAILOVER_MEDIAN"); worst vs worst $SWARM_FAILOVER_WORST s: $(compare "$worst" "$SWARM_FAILOVER_WORST"); goal < 2 s: $(awk -v w="$worst" -v m="$med" 'BEGIN { print (w < 2 ? "met (worst)" : (m < 2 ? "median met, worst not" : "not met")) }')"
  [ ${#out[@]} = "$KILLS" ] || FAILOVER_RESULT="$FAILOVER_RESULT
  (only ${#out[@]} of $KILLS rounds completed, see the log above)"
  echo "$FAILOVER_RESULT"
}

# ----------------------------------------------------------------------------------------------
# w: no acknowledged write lost while the leader is killed and restarted
# ----------------------------------------------------------------------------------------------
# Background client: numbered writes, one at a time, round-robin over the managers that are alive,
# until $W_DIR/stop exists. One line per write in $W_DIR/log: "number node rc".
writer_loop() {
  local n=0 j=0 t rc tries
  while [ ! -e "$W_DIR/stop" ]; do
    tries=0
    while :; do
      j=$((j % MANAGERS + 1))
      sh_alive "$j" && break
      tries=$((tries + 1))
      [ $tries -gt "$MANAGERS" ] && { sleep 0.1; tries=0; }
    done
    n=$((n + 1))
    printf '%s' "$n" | timeout "$WRITE_TIMEOUT" docker -H "$(sh_host "$j")" \
      config create "nw-$n" - >/dev/null 2>>"$W_DIR/err"
    rc=$?
    echo "$n $j $rc" >> "$W_DIR/log"
    [ $rc != 0 ] && echo "  ^ write nw-$n via node-$j rc=$rc at $(date +%T.%N)" >> "$W_DIR/err"
  done
}

# Names of the nw-* configs node $1 lists, sorted.
listed_on() { sh "$1" config ls --format '{{.Name}}' 2>/dev/null | grep '^nw-' | sort; }

run_lost_writes() {
  local r l nl t0 wpid i acked failed total missing extra worst_missing=0 m
  log "no lost writes: numbered writes round-robin over the live managers while the leader is killed $W_KILLS times"
  W_DIR=$(mktemp -d "$NS_DATA/w.XXXXXX")
  writer_loop &
  wpid=$!
  for ((r = 1; r <= W_KILLS; r++)); do
    wait_until cluster_healthy || { log "cluster not healthy before kill $r"; nodes_view >&2; break; }
    sleep 1   # writes under a stable leader too
    l=$(leader)
    [ -n "$l" ] || { log "no leader before kill $r"; break; }
    # The victims: the leader, one follower, or the leader and a follower at once (W_TARGET).
    local victims=() f=
    for ((i = 1; i <= MANAGERS; i++)); do [ "$i" != "$l" ] && f=$i; done
    case $W_TARGET in
      follower) victims=("$f") ;;
      two) victims=("$l" "$f") ;;
      *) victims=("$l") ;;
    esac
    t0=$(now)
    for v in "${victims[@]}"; do sh_kill_daemon "$v"; done
    if [ "$W_TARGET" = follower ]; then
      log "kill $r: follower node-$f killed (leader node-$l stays); $(wc -l < "$W_DIR/log") writes so far"
    else
      # until the survivors name a new leader
      nl=
      until [ -n "$nl" ] && [ "$nl" != "$l" ]; do
        nl=$(leader)
        [ "$(since "$t0" | cut -d. -f1)" -ge "$TIMEOUT" ] && break
        sleep 0.1
      done
      log "kill $r: $(printf 'node-%s ' "${victims[@]}")killed (leader node-$l); node ls names node-${nl:-?} leader after $(since "$t0") s; $(wc -l < "$W_DIR/log") writes so far"
    fi
    local back=()
    for v in "${victims[@]}"; do sh_start "$v" || break 2; done
    for v in "${victims[@]}"; do
      wait_until rejoined "$v" || { log "node-$v did not rejoin within $TIMEOUT s"; nodes_view >&2; break 2; }
      back+=("node-$v $(since "$t0") s")
    done
    log "  back (Reachable) after the kill: ${back[*]}"
  done
  touch "$W_DIR/stop"
  wait "$wpid"
  local done_kills=$((r - 1))
  [ "$done_kills" -gt "$W_KILLS" ] && done_kills=$W_KILLS
  wait_until cluster_healthy
  sleep 2
  total=$(wc -l < "$W_DIR/log")
  awk '$3 == 0 { print "nw-" $1 }' "$W_DIR/log" | sort > "$W_DIR/acked"
  awk '$3 != 0 { print "nw-" $1 }' "$W_DIR/log" | sort > "$W_DIR/failed"
  acked=$(wc -l < "$W_DIR/acked")
  failed=$(wc -l < "$W_DIR/failed")
  local per=()
  for ((i = 1; i <= MANAGERS; i++)); do
    listed_on "$i" > "$W_DIR/listed.$i" || true
    missing=$(comm -23 "$W_DIR/acked" "$W_DIR/listed.$i" | wc -l)
    if [ "$missing" -gt 0 ]; then
      log "node-$i lacks $missing acknowledged writes; looking again in 10 s"
      sleep 10
      listed_on "$i" > "$W_DIR/listed.$i" || true
      missing=$(comm -23 "$W_DIR/acked" "$W_DIR/listed.$i" | wc -l)
      if [ "$missing" -gt 0 ]; then
        log "node-$i: still missing: $(comm -23 "$W_DIR/acked" "$W_DIR/listed.$i" | head -20 | tr '\n' ' ')"
        for m in $(comm -23 "$W_DIR/acked" "$W_DIR/listed.$i" | head -5); do
          grep "^${m#nw-} " "$W_DIR/log" | awk '{ printf "    %s was acknowledged by node-%s\n", "nw-" $1, $2 }' >&2
        done
      fi
    fi
    [ "$missing" -gt "$worst_missing" ] && worst_missing=$missing
    extra=$(comm -12 "$W_DIR/failed" "$W_DIR/listed.$i" | wc -l)
    per+=("node-$i: $(wc -l < "$W_DIR/listed.$i") listed, $missing acknowledged missing, $extra unacknowledged present")
  done
  if [ "$failed" -gt 0 ]; then
    log "failed writes (first lines of the client's stderr):"
    grep -v '^  \^' "$W_DIR/err" | sort | uniq -c | sort -rn | head -5 | sed 's/^/    /' >&2
  fi
  LOSTW_RESULT="shoal no-lost-writes: $total writes during $done_kills kills (W_TARGET=$W_TARGET), $acked acknowledged, $failed failed (not acknowledged); acknowledged but missing: $worst_missing (goal 0)
  $(printf '%s; ' "${per[@]}")"
  echo "$LOSTW_RESULT"
}

# ----------------------------------------------------------------------------------------------
# n: node loss
# ----------------------------------------------------------------------------------------------
svc_ps() {
  local m
  m=$(a_manager) || return 1
  sh "$m" service ps "$1" "${@:2}" 2>/dev/null
}
# Tasks meant to run and running, per node: "node-3 4" lines.
running_by_node() {
  svc_ps "$1" --filter desired-state=running --format '{{.Node}} {{.CurrentState}}' |
    awk '$2 == "Running" { n[$1]++ } END { for (k in n) print k, n[k] }' | sort
}
running_total() { running_by_node "$1" | awk '{ s += $2 } END { print s + 0 }'; }
svc_containers_gone() { [ -z "$(engine ps -aq --filter "label=com.docker.swarm.service.name=$1")" ]; }
svc_full() { [ "$(running_total "$1")" = "$2" ]; }

node_loss_run() {
  local run=$1 victim=$NODES m t0 t_down= t_tasks= t_first= st live on_victim rep hist
  m=$(a_manager)
  t0=$(now)
  sh "$m" service create --detach --name "$SVC" --replicas "$REPLICAS" --no-resolve-image \
    "$IMAGE" sleep 3600 >/dev/null || return 1
  wait_until svc_full "$SVC" "$REPLICAS" || { log "service did not reach $REPLICAS running"; return 1; }
  log "run $run: $REPLICAS running after $(since "$t0") s; tasks per node:"
  running_by_node "$SVC" | sed 's/^/    /' >&2
  on_victim=$(running_by_node "$SVC" | awk -v n="node-$victim" '$1 == n { print $2 }')
  sleep 5   # steady state
  log "run $run: killing worker node-$victim (daemon kill -9, docker rm -f of its ${on_victim:-0} containers)"
  # The host engine's container events (read only), to tell afterwards who lost containers.
  local ev=$NS_DATA/events.$run evpid
  # Not through engine(): $! would be the function's subshell, and killing that leaves docker.
  docker -H "$ENGINE" events --filter type=container --filter event=die --filter event=destroy \
    --filter label=com.docker.swarm.node.id \
    --format '{{.Time}} {{.Action}} {{index .Actor.Attributes "com.docker.swarm.node.id"}}' > "$ev" 2>/dev/null &
  evpid=$!
  sleep 0.5
  t0=$(now)
  sh_kill_node "$victim"
  while :; do
    if [ -z "$t_down" ]; then
      st=$(nodes_view | awk -v n="node-$victim" '$1 == n { print $2 }')
      [ "$st" = Down ] && t_down=$(since "$t0")
    fi
    live=$(running_by_node "$SVC" | awk -v n="node-$victim" '$1 != n { s += $2 } END { print s + 0 }')
    [ -z "$t_first" ] && [ "$live" -gt $((REPLICAS - ${on_victim:-0})) ] && t_first=$(since "$t0")
    if [ "$live" = "$REPLICAS" ]; then
      t_tasks=$(since "$t0")
      break
    fi
    if [ "$(since "$t0" | cut -d. -f1)" -ge "$TIMEOUT" ]; then
      log "service did not recover within $TIMEOUT s ($live tasks running on live nodes)"
      # The recorder holds the script's descriptors (a caller's flock too): never leave it behind.
      kill "$evpid" 2>/dev/null
      wait "$evpid" 2>/dev/null
      return 1
    fi
    sleep 0.2
  done
  # Down may come after the tasks ran elsewhere; wait a little for it, for the log.
  local k
  for ((k = 0; k < 50; k++)); do
    [ -n "$t_down" ] && break
    st=$(nodes_view | awk -v n="node-$victim" '$1 == n { print $2 }')
    [ "$st" = Down ] && t_down=$(since "$t0")
    sleep 0.2
  done
  rep=$(sh "$(a_manager)" service ls --filter "name=$SVC" --format '{{.Replicas}}' 2>/dev/null)
  hist=$(svc_ps "$SVC" --format '{{.DesiredState}}' | grep -vc Running)
  log "run $run: node-$victim Down after ${t_down:-?} s; first replacement running after ${t_first:-?} s; $REPLICAS running on live nodes after $t_tasks s; service ls says $rep; $hist tasks not desired running (expected ${on_victim:-0})"
  running_by_node "$SVC" | sed 's/^/    /' >&2
  kill "$evpid" 2>/dev/null
  wait "$evpid" 2>/dev/null
  if [ "$hist" -gt "${on_victim:-0}" ]; then
    log "  note: more tasks were replaced than node-$victim ran; engine container events from the kill on (die/destroy per node):"
    local i id
    for ((i = 1; i <= NODES; i++)); do
      id=$(node_id_of "$i")
      log "    node-$i: $(awk -v id="$id" '$3 == id { n[$2]++ } END { for (a in n) printf "%s %d  ", a, n[a] }' "$ev")"
    done
    log "    other shoal nodes' containers (not this run's: e.g. cargo test): $(awk -v ids="$(for ((i = 1; i <= NODES; i++)); do node_id_of "$i"; done | tr '\n' ' ')" 'BEGIN { split(ids, a, " "); for (k in a) mine[a[k]] = 1 } !($3 in mine) { n[$2]++ } END { for (x in n) printf "%s %d  ", x, n[x] }' "$ev")"
    log "    replaced tasks: $(svc_ps "$SVC" --filter desired-state=shutdown --format '{{.Node}}: {{.CurrentState}} {{.Error}}' | head -8 | tr '\n' ';')"
    log "    (cargo test's harness removes every container labelled com.docker.swarm.node.id when a test ends, ours included)"
  fi
  NL_SECS=$t_tasks
  NL_DETAIL="node-$victim had ${on_victim:-0} tasks, Down after ${t_down:-?} s, service ls $rep"
}

run_node_loss() {
  local r out=() details=() m
  log "node-loss: $NL_RUNS runs; service of $REPLICAS x $IMAGE sleep 3600 on $NODES nodes ($MANAGERS managers)"
  for ((r = 1; r <= NL_RUNS; r++)); do
    node_loss_run "$r" || { log "node-loss run $r failed"; break; }
    out+=("$NL_SECS")
    details+=("$NL_DETAIL")
    [ "$r" = "$NL_RUNS" ] && break
    # Next run: no service, the killed worker back.
    m=$(a_manager)
    sh "$m" service rm "$SVC" >/dev/null
    wait_until svc_containers_gone "$SVC" || log "containers of $SVC still there"
    restart_and_rejoin "$NODES" || break
    sleep "$SETTLE"
  done
  # Resident memory of every daemon here, for the record (not a goal).
  local i rss=()
  for ((i = 1; i <= NODES; i++)); do
    sh_alive "$i" && rss+=("node-$i $(mib "$(rss_kb "$(sh_pid "$i")")")")
  done
  log "VmRSS with the service ($REPLICAS tasks): $(printf '%s, ' "${rss[@]}")"
  [ ${#out[@]} -gt 0 ] || return 1
  local med OTHERS_NOTE=
  med=$(printf '%s\n' "${out[@]}" | median)
  [ -n "$SWARM_NODELOSS_OTHERS" ] && OTHERS_NOTE="; two more Swarm runs: $SWARM_NODELOSS_OTHERS s"
  NODELOSS_RESULT="shoal node-loss $REPLICAS replicas: ${out[0]} s, median $med s over ${#out[@]} runs (all: ${out[*]}); $NODES nodes = $MANAGERS managers (node-1..$MANAGERS) + $((NODES - MANAGERS)) workers, worker node-$NODES killed
  ($(printf '%s; ' "${details[@]}"))
  vs Docker Swarm $SWARM_NODELOSS s: $(compare "$med" "$SWARM_NODELOSS") (median against the first Swarm run$OTHERS_NOTE); goal < 5 s: $(awk -v m="$med" 'BEGIN { print (m < 5 ? "met" : "not met") }')"
  echo "$NODELOSS_RESULT"
}

# ----------------------------------------------------------------------------------------------
# m: resident memory
# ----------------------------------------------------------------------------------------------
run_memory() {
  local t0 idle_m idle_w m_kb w_kb per
  log "memory: fresh 2-node cluster (node-1 manager, node-2 worker), $MEM_REPLICAS replicas"
  form_cluster 2 1 || return 1
  sleep 3
  idle_m=$(rss_kb "$(sh_pid 1)")
  idle_w=$(rss_kb "$(sh_pid 2)")
  log "idle: manager $(mib "$idle_m"), worker $(mib "$idle_w")"
  t0=$(now)
  sh 1 service create --detach --name "$MEMSVC" --replicas "$MEM_REPLICAS" --no-resolve-image \
    "$IMAGE" sleep 3600 >/dev/null || return 1
  local saved=$TIMEOUT
  TIMEOUT=$((MEM_REPLICAS * 3 + 60))
  wait_until svc_full "$MEMSVC" "$MEM_REPLICAS" || {
    TIMEOUT=$saved
    log "service did not reach $MEM_REPLICAS running ($(running_total "$MEMSVC"))"
    return 1
  }
  TIMEOUT=$saved
  log "$MEM_REPLICAS running after $(since "$t0") s"
  sleep 5
  per=$(running_by_node "$MEMSVC" | tr '\n' ' ')
  m_kb=$(rss_kb "$(sh_pid 1)")
  w_kb=$(rss_kb "$(sh_pid 2)")
  MEMORY_RESULT="shoal VmRSS, $MEM_REPLICAS tasks spread over 2 nodes ($per): manager node-1 $(mib "$m_kb") (idle $(mib "$idle_m")), worker node-2 $(mib "$w_kb") (idle $(mib "$idle_w"))"
  echo "$MEMORY_RESULT"
}

# wrk URL [node|hub|container]: "requests/s p50 p99 errors" of a WRK_SECS s run from node-1,
# the hub, or a container on node-1 attached to the service's network (the host's wrk, mounted
# in). busybox httpd closes every connection first, so each run leaves one TIME_WAIT socket per
# request in the task; runs are WRK_PAUSE s apart so they drain (60 s) and a run does not pay
# for the previous one's port reuse.
wrk_run() {
  local url=$1 where=$2 out
  sleep "$WRK_PAUSE"
  case $where in
    hub) out=$(ip netns exec "$(ns_hub)" wrk -t2 -c"$WRK_CONNS" -d"${WRK_SECS}s" --latency "$url" 2>&1) ;;
    container)
      out=$(sh 1 run --pull never --rm --network obench -v /usr/bin/wrk:/usr/bin/wrk:ro \
        -v /lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:ro -v /lib64:/lib64:ro shoal-test/busybox \
        /usr/bin/wrk -t2 -c"$WRK_CONNS" -d"${WRK_SECS}s" --latency "$url" 2>&1) ;;
    *) out=$(ns_exec 1 wrk -t2 -c"$WRK_CONNS" -d"${WRK_SECS}s" --latency "$url" 2>&1) ;;
  esac
  # Failed connections and error answers are counted apart: requests/s counts every answer.
  awk '/Requests\/sec:/ { r = $2 } $1 == "50%" { p50 = $2 } $1 == "99%" { p99 = $2 }
       /Socket errors:/ { gsub(",", ""); e = $4 + $6 + $8 + $10 } /Non-2xx/ { n = $NF }
       END { printf "%s %s %s %d\n", r, p50, p99, e + n }' <<< "$out"
}

# Polls URL from the hub (or node-1) until it answers.
answers() {
  if [ "$2" = hub ]; then
    ip netns exec "$(ns_hub)" curl -sf -m 2 -o /dev/null "$1"
  else
    ns_exec 1 curl -sf -m 2 -o /dev/null "$1"
  fi
}

run_overlay() {
  local client ingress_id task_addr vip cid d v m r i t_run t_ok delays=()
  log "overlay: fresh 3-node cluster (node-1 manager without tasks, 2 workers)"
  form_cluster 3 1 || return 1
  client=$NS_SUBNET.254
  ip -n "$(ns_hub)" addr add "$client/24" dev "$NS_BRIDGE" 2>/dev/null
  sh 1 network create -d overlay --attachable obench >/dev/null || return 1
  sh 1 service create --detach --name ovs --network obench --publish 8080:80 \
    --constraint node.hostname==node-2 --no-resolve-image shoal-test/web >/dev/null || return 1
  wait_until svc_full ovs 1 || { log "ovs did not start"; return 1; }
  ingress_id=$(sh 1 network inspect ingress --format '{{.Id}}')
  vip=$(sh 1 service inspect ovs --format '{{range .Endpoint.VirtualIPs}}{{.NetworkID}} {{.Addr}}{{"\n"}}{{end}}' |
    awk -v n="$ingress_id" '$1 == n { sub(/\/.*/, "", $2); print $2 }')
  cid=$(engine ps -q --filter label=com.docker.swarm.service.name=ovs | head -1)
  task_addr=$(engine inspect "$cid" --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{$v.IPAddress}}{{"\n"}}{{end}}' |
    awk '$1 ~ /-ingress$/ { print $2 }')
  log "task $task_addr on node-2, VIP $vip, mesh via node-1 $(ns_ip 1):8080"
  wait_until answers "http://$task_addr/" node && wait_until answers "http://$vip/" node &&
    wait_until answers "http://$(ns_ip 1):8080/" hub || { log "a path does not answer"; return 1; }
  log "wrk runs of ${WRK_SECS} s, ${WRK_PAUSE} s apart"
  d=$(wrk_run "http://$task_addr/" node)
  v=$(wrk_run "http://$vip/" node)
  k=$(wrk_run "http://ovs:80/" container)
  m=$(wrk_run "http://$(ns_ip 1):8080/" hub)
  log "direct $d | vip from node $v | vip from container $k | mesh $m (requests/s p50 p99 errors)"
  r=$(awk -v d="$d" -v v="$v" -v k="$k" -v m="$m" 'BEGIN { split(d, a); split(v, b); split(k, e); split(m, c);
      printf "direct from node-1 %.0f req/s (p50 %s, p99 %s, %d errors); VIP from node-1 %.0f req/s = %.1f%% of direct (p50 %s, p99 %s, %d errors); VIP from a container on node-1 %.0f req/s = %.1f%% of direct (p50 %s, p99 %s, %d errors); mesh via a node without tasks %.0f req/s = %.1f%% of direct (p50 %s, p99 %s, %d errors)",
      a[1], a[2], a[3], a[4], b[1], 100 * b[1] / a[1], b[2], b[3], b[4], e[1], 100 * e[1] / a[1], e[2], e[3], e[4], c[1], 100 * c[1] / a[1], c[2], c[3], c[4] }')
  for ((i = 1; i <= ROUTE_RUNS; i++)); do
    sh 1 service create --detach --name ovt --network obench --publish 8081:80 \
      --constraint node.hostname==node-3 --no-resolve-image shoal-test/web >/dev/null || return 1
    until answers "http://$(ns_ip 1):8081/" hub; do sleep 0.01; done
    t_ok=$(now)
    t_run=$(sh 1 inspect "$(sh 1 service ps ovt -q --filter desired-state=running | head -1)" \
      --format '{{json .Status.Timestamp}}' | tr -d '"' | xargs -I{} date -d {} +%s.%N)
    delays+=("$(diff_s "$t_run" "$t_ok")")
    sh 1 service rm ovt >/dev/null
    wait_until svc_containers_gone ovt
    sleep 1
  done
  log "running -> first answer through node-1: ${delays[*]} s"
  OVERLAY_RESULT="overlay (wrk -c$WRK_CONNS ${WRK_SECS}s, busybox httpd, one task on node-2): $r; new task running -> first answer through the mesh on another node: median $(printf "%s\n" "${delays[@]}" | median) s over $ROUTE_RUNS (${delays[*]})"
  echo "$OVERLAY_RESULT"
}

# ----------------------------------------------------------------------------------------------
# s: no false alarms while other processes saturate both cores and the disk
# ----------------------------------------------------------------------------------------------
run_stress() {
  local m t0 spid v bad leaders=() l prev= changes=0 samples=0 not_ready=0 first_bad= total0 total hb
  command -v stress-ng >/dev/null || { log "stress: stress-ng is missing (apt-get install -y stress-ng)"; return 1; }
  m=$(a_manager) || return 1
  sh "$m" service create --detach --name "$STRESS_SVC" --replicas "$REPLICAS" --no-resolve-image \
    "$IMAGE" sleep 3600 >/dev/null || return 1
  wait_until svc_full "$STRESS_SVC" "$REPLICAS" || { log "stress: service did not reach $REPLICAS running"; return 1; }
  total0=$(svc_ps "$STRESS_SVC" -q | wc -l)
  hb=$(sh "$m" info --format '{{.Swarm.Cluster.Spec.Dispatcher.HeartbeatPeriod}}' 2>/dev/null)
  log "stress: stress-ng --cpu $(nproc) --hdd 1 for $STRESS_SECS s; dispatcher heartbeat $hb; $REPLICAS tasks on $NODES nodes"
  stress-ng --cpu "$(nproc)" --hdd 1 --temp-path "$NS_DATA" --timeout "${STRESS_SECS}s" --quiet &
  spid=$!
  t0=$(now)
  while kill -0 "$spid" 2>/dev/null; do
    v=$(nodes_view)
    samples=$((samples + 1))
    bad=$(awk '$2 != "Ready" { printf "%s:%s ", $1, $2 }' <<< "$v")
    if [ -n "$bad" ]; then
      not_ready=$((not_ready + 1))
      [ -z "$first_bad" ] && { first_bad="$bad at $(since "$t0") s"; log "stress: $first_bad"; }
    fi
    l=$(awk '$3 == "Leader" { print $1 }' <<< "$v")
    if [ -n "$l" ] && [ -n "$prev" ] && [ "$l" != "$prev" ]; then
      changes=$((changes + 1))
      log "stress: leader $prev -> $l at $(since "$t0") s"
    fi
    [ -n "$l" ] && prev=$l
    sleep 1
  done
  wait "$spid"
  total=$(svc_ps "$STRESS_SVC" -q | wc -l)
  STRESS_RESULT="shoal under stress-ng (--cpu $(nproc) --hdd 1, $STRESS_SECS s, $NODES nodes, $MANAGERS managers, $REPLICAS tasks, heartbeat $hb): a node shown not Ready in $not_ready of $samples samples${first_bad:+ (first: $first_bad)}; leader changes $changes; tasks rescheduled $((total - total0)) (goal: 0, 0, 0)"
  sh "$m" service rm "$STRESS_SVC" >/dev/null
  wait_until svc_containers_gone "$STRESS_SVC" || log "containers of $STRESS_SVC still there"
  echo "$STRESS_RESULT"
}

# ----------------------------------------------------------------------------------------------
FAILOVER_RESULT=
STRESS_RESULT=
LOSTW_RESULT=
NODELOSS_RESULT=
MEMORY_RESULT=
OVERLAY_RESULT=
ns_create 5 || exit 1
case $PARTS in *[fwns]*)
  if form_cluster 5 "$F_MANAGERS"; then
    case $PARTS in *f*) run_failover >/dev/null ;; esac
    case $PARTS in *w*) run_lost_writes >/dev/null ;; esac
    # Node loss kills worker node-5: only with a worker there.
    case $PARTS in *n*) [ "$F_MANAGERS" -lt 5 ] && run_node_loss >/dev/null ;; esac
    case $PARTS in *s*) run_stress >/dev/null ;; esac
  fi
  reset_cluster ;;
esac
case $PARTS in *m*) run_memory >/dev/null ;; esac
case $PARTS in *o*)
  case $PARTS in *m*) reset_cluster ;; esac
  run_overlay >/dev/null ;;
esac

echo
echo "shoal $("$SHOAL" --version 2>/dev/null | awk '{ print $2 }') x 5 daemons in network namespaces on one Docker Engine $(engine version --format '{{.Server.Version}}' 2>/dev/null), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date +%F)"
echo "Docker Swarm numbers: failover $SWARM_F_SOURCE; node loss $SWARM_N_SOURCE"
rc=0
for p in f w n s m o; do
  case $PARTS in *$p*) ;; *) continue ;; esac
  case $p in
    f) r=$FAILOVER_RESULT ;;
    w) r=$LOSTW_RESULT ;;
    n) r=$NODELOSS_RESULT ;;
    s) r=$STRESS_RESULT ;;
    m) r=$MEMORY_RESULT ;;
    o) r=$OVERLAY_RESULT ;;
  esac
  if [ -n "$r" ]; then echo "$r"; else echo "part $p: failed, see the log above"; rc=1; fi
done
exit $rc
