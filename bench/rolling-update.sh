#!/usr/bin/env bash
# Rolling updates, shoal next to Docker Swarm mode on the same Docker Engine:
#   update    a service of N replicas of shoal-test/web, `docker service update --env-add
#             ROUND=i` with --update-parallelism P and no delay (stop-first, Swarm's default);
#             wall time from the update call until every running task is a new one
#             ("converged"), and until UpdateStatus says completed (both wait out the
#             monitor window after the last task; MONITOR sets it).
#   rollback  an update whose tasks fail at once (entrypoint /bin/false) with
#             --update-failure-action rollback; wall time from the update call until
#             UpdateStatus says rollback_completed, and whether the old tasks all run again.
#   job       a replicated job of N completions (entrypoint /bin/true), JOB_CONCURRENT at
#             once; wall time from `service create -d` until `service ls` shows N/N completed.
# Each is repeated REPEAT times; the table shows medians and the shoal/swarm ratio.
#
# Usage: bench/rolling-update.sh         (as root, from anywhere in the repo)
# Environment:
#   N=20 P=2 REPEAT=3 MONITOR=5s      replicas, update parallelism, repetitions, monitor window
#   PARTS=bc                          b = Docker Swarm, c = shoal
#   SHOAL=target/release/shoal        the shoal binary; BUILD=0 skips `cargo build --release`
#   TIMEOUT=300                       seconds any single wait may take
# Needs: docker CLI, a Docker Engine not in swarm mode for (b), the test images
# (scripts/build-test-images.sh). Swarm is given the image by ID, so it never tries a registry;
# nothing is pulled. Everything it creates is removed on exit (the swarm is left), Ctrl-C
# included.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD

N=${N:-20}
P=${P:-2}
REPEAT=${REPEAT:-3}
MONITOR=${MONITOR:-5s}
JOB_CONCURRENT=${JOB_CONCURRENT:-5}
PARTS=${PARTS:-bc}
SHOAL=${SHOAL:-$ROOT/target/release/shoal}
BUILD=${BUILD:-1}
TIMEOUT=${TIMEOUT:-300}
IMAGE=shoal-test/web
ENGINE_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}
export DOCKER_HOST=$ENGINE_HOST
SVC=bench-roll

TMP=$(mktemp -d /tmp/shoal-roll.XXXXXX)
SWARM_INITED=0
GWBRIDGE_EXISTED=1
SHOAL_PID=

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
now_ns() { date +%s%N; }
ms_since() { echo $(( ($(now_ns) - $1) / 1000000 )); }
median() {
  sort -n | awk '{a[NR]=$1} END {
    if (NR == 0) { print "n/a"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else printf "%.0f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
edocker() { DOCKER_HOST=$ENGINE_HOST docker "$@"; }
sdocker() { DOCKER_HOST=$API_HOST docker "$@"; }

wait_until() {
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until "$@"; do
    [ "$(date +%s)" -ge "$deadline" ] && return 1
    sleep 0.05
  done
}

service_containers() {
  edocker ps -aq --filter "label=com.docker.swarm.service.name=$SVC" 2>/dev/null
  edocker ps -aq --filter "label=com.docker.swarm.service.name=$SVC-job" 2>/dev/null
}
remove_service_containers() {
  service_containers | xargs -r docker rm -f >/dev/null 2>&1
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
  edocker service rm "$SVC" "$SVC-job" >/dev/null 2>&1
  edocker swarm leave --force >/dev/null 2>&1
  SWARM_INITED=0
  if [ "$GWBRIDGE_EXISTED" = 0 ]; then
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
  stop_shoal
  leave_swarm
  remove_service_containers
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ----------------------------------------------------------------------------------------------
# The measurements, against $API_HOST; results in $TMP/<part>_*
# ----------------------------------------------------------------------------------------------

update_state() { sdocker service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "$SVC" 2>/dev/null; }
state_is() { [ "$(update_state)" = "$1" ]; }

# Desired-running tasks as "ID STATE" lines.
running_tasks() {
  sdocker service ps "$SVC" --no-trunc --filter desired-state=running \
    --format '{{.ID}} {{.CurrentState}}' 2>/dev/null
}

all_running() {
  [ "$(running_tasks | grep -c ' Running ')" -eq "$N" ] &&
    [ "$(edocker ps -q --filter "label=com.docker.swarm.service.name=$SVC" --filter status=running | grep -c .)" -eq "$N" ]
}

# True once N desired-running tasks run and none of them is in $TMP/old.
converged() {
  local tasks
  tasks=$(running_tasks)
  [ "$(echo "$tasks" | grep -c ' Running ')" -eq "$N" ] || return 1
  ! echo "$tasks" | awk '{print $1}' | grep -qxF -f "$TMP/old"
}

bench_part() {
  local part=$1 image=$2 i t0
  sdocker service create -d --no-resolve-image --name "$SVC" --replicas "$N" \
    --update-parallelism "$P" --update-delay 0s --update-monitor "$MONITOR" \
    --update-failure-action rollback --rollback-parallelism "$P" --rollback-monitor "$MONITOR" \
    "$image" >/dev/null || { log "($part) service create failed"; return 1; }
  wait_until all_running || { log "($part) $N tasks did not all run"; return 1; }
  for i in $(seq 1 "$REPEAT"); do
    running_tasks | awk '{print $1}' >"$TMP/old"
    t0=$(now_ns)
    sdocker service update -d --env-add "ROUND=$i" "$SVC" >/dev/null ||
      { log "($part) update failed"; return 1; }
    wait_until converged || { log "($part) update did not converge"; return 1; }
    echo "$(ms_since "$t0")" >>"$TMP/${part}_converged"
    wait_until state_is completed || { log "($part) update never completed: $(update_state)"; return 1; }
    echo "$(ms_since "$t0")" >>"$TMP/${part}_completed"
    log "($part) update $i: converged $(tail -1 "$TMP/${part}_converged") ms, completed $(tail -1 "$TMP/${part}_completed") ms"
  done
  for i in $(seq 1 "$REPEAT"); do
    running_tasks | awk '{print $1}' | sort >"$TMP/before"
    t0=$(now_ns)
    sdocker service update -d --entrypoint /bin/false "$SVC" >/dev/null ||
      { log "($part) failing update refused"; return 1; }
    wait_until state_is rollback_completed || { log "($part) no rollback: $(update_state)"; return 1; }
    echo "$(ms_since "$t0")" >>"$TMP/${part}_rollback"
    wait_until all_running || { log "($part) $N tasks did not run again after the rollback"; return 1; }
    echo "$(ms_since "$t0")" >>"$TMP/${part}_rollback_running"
    # Tasks the update never reached keep running through the rollback.
    running_tasks | awk '{print $1}' | sort >"$TMP/after"
    comm -12 "$TMP/before" "$TMP/after" | grep -c . >>"$TMP/${part}_kept"
    log "($part) rollback $i: completed $(tail -1 "$TMP/${part}_rollback") ms, all running $(tail -1 "$TMP/${part}_rollback_running") ms, $(tail -1 "$TMP/${part}_kept")/$N tasks never replaced"
    # Swarm clears ForceUpdate-free specs; make sure the next round starts from a settled state.
    wait_until state_is rollback_completed
  done
  sdocker service rm "$SVC" >/dev/null 2>&1
  wait_until bash -c "[ -z \"\$(DOCKER_HOST=$ENGINE_HOST docker ps -aq --filter label=com.docker.swarm.service.name=$SVC)\" ]"
  for i in $(seq 1 "$REPEAT"); do
    t0=$(now_ns)
    sdocker service create -d --no-resolve-image --name "$SVC-job" --mode replicated-job \
      --replicas "$N" --max-concurrent "$JOB_CONCURRENT" --entrypoint /bin/true "$image" >/dev/null ||
      { log "($part) job create failed"; return 1; }
    wait_until job_done || { log "($part) job did not complete"; return 1; }
    echo "$(ms_since "$t0")" >>"$TMP/${part}_job"
    log "($part) job $i: $N completions in $(tail -1 "$TMP/${part}_job") ms"
    sdocker service rm "$SVC-job" >/dev/null 2>&1
    # Containers the removed job leaves behind after 10 s (then removed by hand).
    local left j
    for j in $(seq 1 100); do
      left=$(edocker ps -aq --filter "label=com.docker.swarm.service.name=$SVC-job" | grep -c .)
      [ "$left" -eq 0 ] && break
      sleep 0.1
    done
    echo "$left" >>"$TMP/${part}_job_left"
    edocker ps -aq --filter "label=com.docker.swarm.service.name=$SVC-job" | xargs -r docker rm -f >/dev/null 2>&1
  done
}

job_done() {
  sdocker service ls --filter "name=$SVC-job" --format '{{.Replicas}}' 2>/dev/null | grep -qF "($N/$N completed)"
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
  image=$(edocker image inspect -f '{{.Id}}' "$IMAGE") || return 1
  bench_part b "$image"
}

bench_shoal() {
  if [ ! -x "$SHOAL" ] && [ "$BUILD" = 1 ]; then
    log "(c) building shoal: cargo build --release -p shoal"
    cargo build --release -p shoal >&2 || log "(c) build failed"
  fi
  [ -x "$SHOAL" ] || { log "(c) skipped: no shoal binary at $SHOAL"; return 1; }
  local sock=$TMP/shoal.sock i
  mkdir -p "$TMP/data"
  "$SHOAL" daemon --data-dir "$TMP/data" --socket "$sock" >"$TMP/shoal.log" 2>&1 &
  SHOAL_PID=$!
  for i in $(seq 1 100); do
    [ -S "$sock" ] && break
    kill -0 "$SHOAL_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ -S "$sock" ] || { log "(c) shoal daemon did not open $sock"; tail -n 20 "$TMP/shoal.log" >&2; return 1; }
  API_HOST=unix://$sock
  sdocker swarm init --advertise-addr 127.0.0.1 >/dev/null 2>&1 || { log "(c) swarm init failed"; return 1; }
  bench_part c "$IMAGE"
}

edocker image inspect "$IMAGE" >/dev/null 2>&1 || bash scripts/build-test-images.sh >&2 || exit 1
log "N=$N replicas, parallelism $P, monitor $MONITOR, $REPEAT repeats, engine $(edocker version --format '{{.Server.Version}}' 2>/dev/null)"
case $PARTS in *b*) log "(b) Docker Swarm"; bench_swarm || true; leave_swarm; remove_service_containers ;; esac
case $PARTS in *c*) log "(c) shoal"; bench_shoal || true; stop_shoal; remove_service_containers ;; esac

val() { if [ -s "$TMP/$1" ]; then median <"$TMP/$1"; else echo n/a; fi; }
ratio() {
  awk -v x="$1" -v y="$2" 'BEGIN { if (x ~ /^[0-9.]+$/ && y ~ /^[0-9.]+$/ && y > 0) printf "%.2fx", x / y; else print "-" }'
}
echo
echo "rolling-update: $N x $IMAGE, parallelism $P, no delay, monitor $MONITOR; median of $REPEAT (ms)"
fmt='%-46s %10s %10s %12s\n'
# shellcheck disable=SC2059
{
  printf "$fmt" "measurement" "swarm" "shoal" "shoal/swarm"
  for m in converged:"update: every task replaced and running" \
           completed:"update: UpdateStatus completed" \
           rollback:"failing update: rollback_completed" \
           rollback_running:"failing update: all $N running again" \
           kept:"failing update: tasks never replaced (of $N)" \
           job:"job: $N completions, $JOB_CONCURRENT at once" \
           job_left:"job: containers left 10 s after service rm"; do
    k=${m%%:*}; label=${m#*:}
    b=$(val "b_$k"); c=$(val "c_$k")
    printf "$fmt" "$label" "$b" "$c" "$(ratio "$c" "$b")"
  done
}
