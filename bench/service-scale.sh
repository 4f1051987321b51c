#!/usr/bin/env bash
# Time to start and to remove N containers of shoal-test/web, three ways on the same Docker Engine:
#   (a) engine  : `docker run -d` / `docker rm -f`, 8 at a time (no orchestrator: the floor)
#   (b) swarm   : Docker Swarm mode, `docker service create --replicas N` / `docker service rm`
#   (c) shoal   : the same service commands against `shoal daemon`, plus its memory (idle, and
#                 with 100 one-replica services) and the latency of `docker service ls` then.
# Each timing is repeated REPEAT times; the table shows medians and ratios.
#
# Usage: bench/service-scale.sh            (as root, from anywhere in the repo)
# Environment:
#   N=50 REPEAT=3 PAR=8          containers per run, repetitions, parallelism of (a)
#   PARTS=abc                    which parts to run, e.g. PARTS=ab
#   SERVICES=100                 services created for the memory / `service ls` measurements
#   SHOAL=target/release/shoal   the shoal binary; BUILD=0 skips `cargo build --release -p shoal`
#   TIMEOUT=300                  seconds any single wait may take before the part is abandoned
# Needs: docker CLI, a Docker Engine not in swarm mode for (b), the test images
# (scripts/build-test-images.sh). Nothing is pulled; everything it creates is removed on exit,
# Ctrl-C included.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD

N=${N:-50}
REPEAT=${REPEAT:-3}
PAR=${PAR:-8}
PARTS=${PARTS:-abc}
SERVICES=${SERVICES:-100}
SHOAL=${SHOAL:-$ROOT/target/release/shoal}
BUILD=${BUILD:-1}
TIMEOUT=${TIMEOUT:-300}
IMAGE=shoal-test/web
ENGINE_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}
# Plain `docker` (also under xargs) talks to the engine; sdocker picks the swarm API of a part.
export DOCKER_HOST=$ENGINE_HOST
RUN_ID="bench-$$"
SVC=bench

TMP=$(mktemp -d /tmp/shoal-bench.XXXXXX)
SWARM_INITED=0
GWBRIDGE_EXISTED=1
SHOAL_PID=
SHOAL_HOST=

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
now_ns() { date +%s%N; }
ms_since() { echo $(( ($(now_ns) - $1) / 1000000 )); }
# Median of the numbers on stdin ("n/a" when there are none).
median() {
  sort -n | awk '{a[NR]=$1} END {
    if (NR == 0) { print "n/a"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else printf "%.0f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# The engine itself, whatever DOCKER_HOST says later.
edocker() { DOCKER_HOST=$ENGINE_HOST docker "$@"; }
# Whichever swarm API the current part talks to (the engine for (b), shoal for (c)).
sdocker() { DOCKER_HOST=$API_HOST docker "$@"; }

# Waits until "$@" succeeds, polling; fails after TIMEOUT seconds.
wait_until() {
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until "$@"; do
    [ "$(date +%s)" -ge "$deadline" ] && return 1
    sleep 0.05
  done
}

count_lines() { grep -c . || true; }

# ----------------------------------------------------------------------------------------------
# Cleanup (also on Ctrl-C)
# ----------------------------------------------------------------------------------------------

# IDs of containers any swarm made for our services (bench, bench-ls-*).
service_containers() {
  edocker ps -a --filter label=com.docker.swarm.service.name \
    --format '{{.ID}} {{.Label "com.docker.swarm.service.name"}}' 2>/dev/null |
    awk -v s="$SVC" '$2 == s || index($2, s "-ls-") == 1 { print $1 }'
}

remove_service_containers() {
  local ids
  ids=$(service_containers)
  [ -n "$ids" ] && echo "$ids" | xargs -r docker rm -f >/dev/null 2>&1
  return 0
}

stop_shoal() {
  [ -n "$SHOAL_PID" ] || return 0
  kill -TERM "$SHOAL_PID" 2>/dev/null
  local i
  for i in $(seq 1 100); do kill -0 "$SHOAL_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SHOAL_PID" 2>/dev/null
  wait "$SHOAL_PID" 2>/dev/null
  SHOAL_PID=
}

leave_swarm() {
  [ "$SWARM_INITED" = 1 ] || return 0
  edocker service ls -q 2>/dev/null | xargs -r docker service rm >/dev/null 2>&1
  edocker swarm leave --force >/dev/null 2>&1
  SWARM_INITED=0
  if [ "$GWBRIDGE_EXISTED" = 0 ]; then
    # swarm init created it; leave does not remove it.
    local i
    for i in $(seq 1 50); do
      edocker network rm docker_gwbridge >/dev/null 2>&1 && break
      edocker network inspect docker_gwbridge >/dev/null 2>&1 || break
      sleep 0.2
    done
  fi
}

cleanup() {
  trap - EXIT INT TERM
  log "cleaning up"
  edocker ps -aq --filter "label=shoal-bench=$RUN_ID" | xargs -r docker rm -f >/dev/null 2>&1
  stop_shoal
  leave_swarm
  remove_service_containers
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ----------------------------------------------------------------------------------------------
# (a) engine alone
# ----------------------------------------------------------------------------------------------

engine_running() {
  [ "$(edocker ps -q --filter "label=shoal-bench=$RUN_ID" --filter status=running | count_lines)" -ge "$N" ]
}
engine_gone() {
  [ "$(edocker ps -aq --filter "label=shoal-bench=$RUN_ID" | count_lines)" -eq 0 ]
}

bench_engine() {
  local i t0
  for i in $(seq 1 "$REPEAT"); do
    t0=$(now_ns)
    seq 1 "$N" | xargs -P "$PAR" -I{} docker run -d --pull never \
      --label "shoal-bench=$RUN_ID" "$IMAGE" >/dev/null
    wait_until engine_running || { log "(a) containers did not all start"; return 1; }
    echo "$(ms_since "$t0")" >>"$TMP/a_create"
    t0=$(now_ns)
    edocker ps -aq --filter "label=shoal-bench=$RUN_ID" |
      xargs -r -P "$PAR" -n1 docker rm -f >/dev/null
    wait_until engine_gone || { log "(a) containers were not all removed"; return 1; }
    echo "$(ms_since "$t0")" >>"$TMP/a_remove"
    log "(a) run $i: create $(tail -1 "$TMP/a_create") ms, remove $(tail -1 "$TMP/a_remove") ms"
  done
}

# ----------------------------------------------------------------------------------------------
# (b) and (c): the same service measurements against $API_HOST, results in $TMP/<part>_*
# ----------------------------------------------------------------------------------------------

service_running() {
  [ "$(sdocker service ls --filter "name=$SVC" --format '{{.Name}} {{.Replicas}}' 2>/dev/null |
    awk -v s="$SVC" '$1 == s { print $2 }')" = "$N/$N" ]
}
service_containers_gone() { [ -z "$(service_containers)" ]; }

# Times REPEAT rounds of: create service $SVC with N replicas until service ls shows N/N, then
# remove it until the engine has no container of it left. $2 is the image reference to use.
bench_service() {
  local part=$1 image=$2 i t0 running
  for i in $(seq 1 "$REPEAT"); do
    t0=$(now_ns)
    sdocker service create -d --no-resolve-image --replicas "$N" --name "$SVC" "$image" >/dev/null ||
      { log "($part) service create failed"; return 1; }
    wait_until service_running || { log "($part) $N/$N running not reached"; return 1; }
    echo "$(ms_since "$t0")" >>"$TMP/${part}_create"
    running=$(edocker ps -q --filter "label=com.docker.swarm.service.name=$SVC" --filter status=running | count_lines)
    [ "$running" -eq "$N" ] || log "($part) warning: service ls says $N/$N but the engine runs $running containers"
    t0=$(now_ns)
    sdocker service rm "$SVC" >/dev/null || { log "($part) service rm failed"; return 1; }
    wait_until service_containers_gone || { log "($part) containers of $SVC were not all removed"; return 1; }
    echo "$(ms_since "$t0")" >>"$TMP/${part}_remove"
    log "($part) run $i: create $(tail -1 "$TMP/${part}_create") ms, remove $(tail -1 "$TMP/${part}_remove") ms"
  done
}

all_ls_services_running() {
  [ "$(sdocker service ls --filter "name=$SVC-ls-" --format '{{.Replicas}}' 2>/dev/null | grep -c '^1/1$')" -ge "$SERVICES" ]
}

# Creates SERVICES one-replica services and waits until they all run.
create_many_services() {
  local part=$1 image=$2
  seq 1 "$SERVICES" | xargs -P "$PAR" -I{} env DOCKER_HOST="$API_HOST" docker service create -d \
    --no-resolve-image --replicas 1 --name "$SVC-ls-{}" "$image" >/dev/null ||
    { log "($part) creating $SERVICES services failed"; return 1; }
  wait_until all_ls_services_running || { log "($part) $SERVICES services did not all run"; return 1; }
}

# Median latency of `docker service ls` over 10 runs, in ms.
service_ls_latency() {
  local part=$1 i t0
  if command -v hyperfine >/dev/null 2>&1; then
    DOCKER_HOST=$API_HOST hyperfine -N --style none --warmup 1 --runs 10 \
      --export-json "$TMP/${part}_ls.json" 'docker service ls' >/dev/null 2>&1 &&
      awk -F: '/"median"/ { gsub(/[ ,]/, "", $2); printf "%.0f\n", $2 * 1000; exit }' "$TMP/${part}_ls.json" &&
      return
  fi
  for i in $(seq 1 10); do
    t0=$(now_ns)
    sdocker service ls >/dev/null
    ms_since "$t0"
  done | median
}

remove_many_services() {
  sdocker service ls -q --filter "name=$SVC-ls-" 2>/dev/null | xargs -r env DOCKER_HOST="$API_HOST" docker service rm >/dev/null 2>&1
  wait_until service_containers_gone
}

bench_swarm() {
  local state image
  state=$(edocker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)
  if [ "$state" != inactive ]; then
    log "(b) skipped: the engine is already in swarm state '$state'; not touching someone else's swarm"
    return 1
  fi
  edocker network inspect docker_gwbridge >/dev/null 2>&1 || GWBRIDGE_EXISTED=0
  edocker swarm init --advertise-addr 127.0.0.1 >/dev/null || { log "(b) docker swarm init failed"; return 1; }
  SWARM_INITED=1
  API_HOST=$ENGINE_HOST
  # By image ID: Swarm then skips its registry pull (it pulls tags on every task start).
  image=$(edocker image inspect -f '{{.Id}}' "$IMAGE") || return 1
  bench_service b "$image" || return 1
  log "(b) creating $SERVICES one-replica services"
  create_many_services b "$image" || return 1
  service_ls_latency b >"$TMP/b_ls"
  log "(b) docker service ls with $SERVICES services: $(cat "$TMP/b_ls") ms"
  remove_many_services
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }

bench_shoal() {
  if [ ! -x "$SHOAL" ] && [ "$BUILD" = 1 ]; then
    log "(c) building shoal: cargo build --release -p shoal"
    cargo build --release -p shoal >&2 || log "(c) build failed"
  fi
  if [ ! -x "$SHOAL" ]; then
    log "(c) skipped: no shoal binary at $SHOAL"
    return 1
  fi
  local sock=$TMP/shoal.sock
  mkdir -p "$TMP/data"
  "$SHOAL" daemon --data-dir "$TMP/data" --socket "$sock" >"$TMP/shoal.log" 2>&1 &
  SHOAL_PID=$!
  local i
  for i in $(seq 1 100); do
    [ -S "$sock" ] && break
    kill -0 "$SHOAL_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ ! -S "$sock" ]; then
    log "(c) skipped: shoal daemon did not open $sock; its log:"
    tail -n 20 "$TMP/shoal.log" >&2
    stop_shoal
    return 1
  fi
  SHOAL_HOST=unix://$sock
  API_HOST=$SHOAL_HOST
  if ! sdocker swarm init --advertise-addr 127.0.0.1 >"$TMP/shoal-init.out" 2>&1; then
    log "(c) skipped: docker swarm init against shoal failed:"
    cat "$TMP/shoal-init.out" >&2
    stop_shoal
    return 1
  fi
  sleep 2
  rss_kb "$SHOAL_PID" >"$TMP/c_rss_idle"
  bench_service c "$IMAGE" || return 1
  log "(c) creating $SERVICES one-replica services"
  create_many_services c "$IMAGE" || return 1
  rss_kb "$SHOAL_PID" >"$TMP/c_rss_many"
  service_ls_latency c >"$TMP/c_ls"
  log "(c) docker service ls with $SERVICES services: $(cat "$TMP/c_ls") ms"
  remove_many_services
  stop_shoal
}

# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

edocker image inspect "$IMAGE" >/dev/null 2>&1 || bash scripts/build-test-images.sh >&2 || exit 1
log "N=$N containers, $REPEAT repeats, engine $(edocker version --format '{{.Server.Version}}' 2>/dev/null)"

case $PARTS in *a*) log "(a) engine alone"; bench_engine || true ;; esac
case $PARTS in *b*) log "(b) Docker Swarm"; bench_swarm || true; leave_swarm; remove_service_containers ;; esac
case $PARTS in *c*) log "(c) shoal"; bench_shoal || true; stop_shoal; remove_service_containers ;; esac

val() { if [ -s "$TMP/$1" ]; then median <"$TMP/$1"; else echo n/a; fi; }
ratio() {
  awk -v x="$1" -v y="$2" 'BEGIN { if (x ~ /^[0-9.]+$/ && y ~ /^[0-9.]+$/ && y > 0) printf "%.2fx", x / y; else print "-" }'
}
mib() { awk -v k="$1" 'BEGIN { if (k ~ /^[0-9]+$/) printf "%.1f MiB", k / 1024; else print "n/a" }'; }

a_c=$(val a_create); a_r=$(val a_remove)
b_c=$(val b_create); b_r=$(val b_remove); b_ls=$(val b_ls)
c_c=$(val c_create); c_r=$(val c_remove); c_ls=$(val c_ls)

echo
echo "service-scale: $N x $IMAGE, median of $REPEAT (ms)"
fmt='%-38s %10s %10s %10s %13s %13s\n'
# shellcheck disable=SC2059
{
  printf "$fmt" "measurement" "engine" "swarm" "shoal" "swarm/engine" "shoal/swarm"
  printf "$fmt" "start $N until running" "$a_c" "$b_c" "$c_c" "$(ratio "$b_c" "$a_c")" "$(ratio "$c_c" "$b_c")"
  printf "$fmt" "remove $N until gone" "$a_r" "$b_r" "$c_r" "$(ratio "$b_r" "$a_r")" "$(ratio "$c_r" "$b_r")"
  printf "$fmt" "service ls, $SERVICES services (median/10)" "-" "$b_ls" "$c_ls" "-" "$(ratio "$c_ls" "$b_ls")"
}
echo
echo "shoal daemon VmRSS: idle after init $(mib "$(cat "$TMP/c_rss_idle" 2>/dev/null)"), with $SERVICES services $(mib "$(cat "$TMP/c_rss_many" 2>/dev/null)")"
