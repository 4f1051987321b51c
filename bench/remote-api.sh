#!/usr/bin/env bash
# `docker service ls` with 100 services, three ways, on the same machine:
#   (a) shoal over its unix socket
#   (b) shoal over TCP with mutual TLS (`shoal daemon --listen`, a certificate from
#       `shoal client-cert`, DOCKER_HOST=tcp://... DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=...)
#   (c) Docker Swarm on the same engine over its unix socket (`docker swarm init`, the same 100
#       services, `docker swarm leave --force` at the end)
# Each is timed RUNS times with the docker CLI (what a user waits for), and the request the CLI
# makes for it (`GET /services?status=true`) with curl, which separates the CLI's own cost and
# shows the TLS handshake (curl opens a new connection each time, as the CLI does).
# Medians in milliseconds.
#
# Usage: flock -o /tmp/shoal-e2e.lock bench/remote-api.sh     (as root, from anywhere in the repo)
# Environment:
#   SERVICES=100 RUNS=20         services created, timed runs per measurement
#   PARTS=abc                    which parts to run (c needs an engine not in swarm mode)
#   SHOAL=target/release/shoal   the shoal binary; BUILD=0 skips `cargo build --release -p shoal`
# Needs: docker CLI, curl, ip (netns), the test images (scripts/build-test-images.sh). Nothing is
# pulled; everything it creates is removed on exit, Ctrl-C included.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD

SERVICES=${SERVICES:-100}
RUNS=${RUNS:-20}
PARTS=${PARTS:-abc}
SHOAL=${SHOAL:-$ROOT/target/release/shoal}
BUILD=${BUILD:-1}
IMAGE=shoal-test/web
ENGINE=unix:///var/run/docker.sock
NS=shoal-bench-remote-$$
TMP=$(mktemp -d /tmp/shoal-bench-remote.XXXXXX)
SHOAL_PID=
SWARM_INITED=0
GWBRIDGE_EXISTED=1

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
median() {
  sort -n | awk '{a[NR]=$1} END {
    if (NR == 0) { print "n/a"; exit }
    if (NR % 2) printf "%.1f\n", a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
ns() { nsenter --net=/run/netns/$NS "$@"; }

cleanup() {
  trap - EXIT INT TERM
  if [ -n "$SHOAL_PID" ]; then
    DOCKER_HOST=unix://$TMP/shoal.sock docker swarm leave --force >/dev/null 2>&1
    kill "$SHOAL_PID" 2>/dev/null
    wait "$SHOAL_PID" 2>/dev/null
  fi
  if [ "$SWARM_INITED" = 1 ]; then
    DOCKER_HOST=$ENGINE docker swarm leave --force >/dev/null 2>&1
    if [ "$GWBRIDGE_EXISTED" = 0 ]; then
      for _ in $(seq 1 50); do
        DOCKER_HOST=$ENGINE docker network rm docker_gwbridge >/dev/null 2>&1 && break
        DOCKER_HOST=$ENGINE docker network inspect docker_gwbridge >/dev/null 2>&1 || break
        sleep 0.2
      done
    fi
  fi
  ip netns del "$NS" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

# Times "$@" RUNS times (after one warm-up run); prints the median in ms.
time_cli() {
  "$@" >/dev/null 2>&1 || { log "failed: $*"; "$@" >&2; echo n/a; return; }
  local i t0
  for i in $(seq 1 "$RUNS"); do
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1
    echo $(( ($(date +%s%N) - t0) / 1000 ))
  done | awk '{ print $1 / 1000 }' | median
}

# curl's own time for the request the CLI makes (`-w %{time_total}`), median in ms.
time_curl() {
  local i
  for i in $(seq 1 "$RUNS"); do
    "$@" -s -o /dev/null -w '%{time_total}\n'
  done | awk '{ print $1 * 1000 }' | median
}

# The TLS handshake alone: curl's time_appconnect - time_connect, median in ms.
time_handshake() {
  local i
  for i in $(seq 1 "$RUNS"); do
    "$@" -s -o /dev/null -w '%{time_connect} %{time_appconnect}\n'
  done | awk '{ print ($2 - $1) * 1000 }' | median
}

# RUNS requests on one kept-alive connection (one curl for all, as an SDK's session does); the
# median of their times after the first, in ms. The last argument is the URL.
time_keepalive() {
  local url=${*: -1} args=("${@:1:$#-1}") pairs=() i
  for i in $(seq 0 "$RUNS"); do pairs+=(-o /dev/null "$url"); done
  "${args[@]}" -s -w '%{time_total}\n' "${pairs[@]}" | tail -n +2 | awk '{ print $1 * 1000 }' | median
}

create_services() {
  local i
  for i in $(seq 1 "$SERVICES"); do
    # (stderr: the CLI's warning that no registry could be asked for the image's digest)
    docker service create --detach --name "bench-ls-$i" --replicas 0 "$1" >/dev/null 2>&1 || return 1
  done
}

DOCKER_HOST=$ENGINE docker image inspect "$IMAGE" >/dev/null 2>&1 || bash scripts/build-test-images.sh >&2 || exit 1
CLI=$(docker version --format '{{.Client.Version}}' 2>/dev/null)
ENGINE_VERSION=$(DOCKER_HOST=$ENGINE docker version --format '{{.Server.Version}}' 2>/dev/null)
log "$SERVICES services, $RUNS runs each; docker CLI $CLI, engine $ENGINE_VERSION"

a_cli=n/a; a_curl=n/a; b_cli=n/a; b_curl=n/a; c_cli=n/a; c_curl=n/a
a_keep=n/a; b_keep=n/a; c_keep=n/a; b_hs=n/a; b_py=n/a
case $PARTS in *a*|*b*)
  if [ ! -x "$SHOAL" ] && [ "$BUILD" = 1 ]; then
    log "building shoal: cargo build --release -p shoal"
    cargo build --release -p shoal >&2 || log "build failed"
  fi
  if [ ! -x "$SHOAL" ]; then
    log "no shoal binary at $SHOAL: parts a and b skipped"
  else
    ip netns add "$NS" && ip -n "$NS" link set lo up
    # nsenter execs the daemon, so $! is the daemon itself (not a subshell) and can be stopped.
    nsenter --net=/run/netns/$NS "$SHOAL" daemon --data-dir "$TMP/data" --socket "$TMP/shoal.sock" \
      --listen tcp://127.0.0.1:2376 --pull never >"$TMP/shoal.log" 2>&1 &
    SHOAL_PID=$!
    export DOCKER_HOST=unix://$TMP/shoal.sock
    for _ in $(seq 1 100); do docker version >/dev/null 2>&1 && break; sleep 0.1; done
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null || { log "swarm init failed"; tail "$TMP/shoal.log" >&2; exit 1; }
    "$SHOAL" client-cert bench --out "$TMP/certs" -H "$TMP/shoal.sock" >/dev/null || exit 1
    for _ in $(seq 1 100); do
      ns curl -s -o /dev/null --cacert "$TMP/certs/ca.pem" --cert "$TMP/certs/cert.pem" \
        --key "$TMP/certs/key.pem" https://127.0.0.1:2376/_ping && break
      sleep 0.1
    done
    log "shoal: creating $SERVICES services"
    create_services "$IMAGE" || exit 1
    [ "$(docker service ls -q | wc -l)" = "$SERVICES" ] || { log "shoal lists $(docker service ls -q | wc -l) services"; exit 1; }
    # Both through nsenter, so they pay the same start-up.
    a_cli=$(time_cli ns env DOCKER_HOST=unix://$TMP/shoal.sock docker service ls)
    a_curl=$(time_curl ns curl --unix-socket "$TMP/shoal.sock" "http://shoal/v1.50/services?status=true")
    b_cli=$(time_cli ns env DOCKER_HOST=tcp://127.0.0.1:2376 DOCKER_TLS_VERIFY=1 \
      DOCKER_CERT_PATH="$TMP/certs" docker service ls)
    b_curl=$(time_curl ns curl --cacert "$TMP/certs/ca.pem" --cert "$TMP/certs/cert.pem" \
      --key "$TMP/certs/key.pem" "https://127.0.0.1:2376/v1.50/services?status=true")
    a_keep=$(time_keepalive ns curl --unix-socket "$TMP/shoal.sock" "http://shoal/v1.50/services?status=true")
    b_keep=$(time_keepalive ns curl --cacert "$TMP/certs/ca.pem" --cert "$TMP/certs/cert.pem" \
      --key "$TMP/certs/key.pem" "https://127.0.0.1:2376/v1.50/services?status=true")
    b_hs=$(time_handshake ns curl --cacert "$TMP/certs/ca.pem" --cert "$TMP/certs/cert.pem" \
      --key "$TMP/certs/key.pem" "https://127.0.0.1:2376/_ping")
    # A client that leaves Nagle's algorithm on (Python's plain ssl socket): a new connection,
    # the handshake and a first request, as a script without an HTTP library makes them.
    b_py=$(ns python3 - "$TMP/certs" "$RUNS" <<'PY'
import socket, ssl, statistics, sys, time
d, runs = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(cafile=d + "/ca.pem")
ctx.load_cert_chain(d + "/cert.pem", d + "/key.pem")
times = []
for _ in range(runs + 1):
    t0 = time.perf_counter()
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 2376)), server_hostname="127.0.0.1")
    s.sendall(b"GET /_ping HTTP/1.1\r\nHost: shoal\r\n\r\n")
    got = b""
    while not got.endswith(b"OK"):
        got += s.recv(4096)
    times.append((time.perf_counter() - t0) * 1000)
    s.close()
print("%.1f" % statistics.median(times[1:]))
PY
)
    log "shoal: unix socket $a_cli ms (curl $a_curl), TCP+TLS $b_cli ms (curl $b_curl, handshake $b_hs, python ssl $b_py)"
    docker swarm leave --force >/dev/null 2>&1
    kill "$SHOAL_PID"; wait "$SHOAL_PID" 2>/dev/null; SHOAL_PID=
    unset DOCKER_HOST
  fi
esac

case $PARTS in *c*)
  export DOCKER_HOST=$ENGINE
  if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != inactive ]; then
    log "the engine is in swarm mode already: part c skipped"
  else
    docker network inspect docker_gwbridge >/dev/null 2>&1 || GWBRIDGE_EXISTED=0
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null && SWARM_INITED=1
    # By image ID: Swarm then asks no registry.
    image=$(docker image inspect -f '{{.Id}}' "$IMAGE")
    log "Docker Swarm: creating $SERVICES services"
    create_services "$image" || exit 1
    c_cli=$(time_cli docker service ls)
    c_curl=$(time_curl curl --unix-socket /var/run/docker.sock "http://docker/v1.41/services?status=true")
    c_keep=$(time_keepalive curl --unix-socket /var/run/docker.sock "http://docker/v1.41/services?status=true")
    log "Docker Swarm: unix socket $c_cli ms (curl $c_curl)"
    docker swarm leave --force >/dev/null 2>&1
    unset DOCKER_HOST
  fi
esac

ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (x ~ /^[0-9.]+$/ && y ~ /^[0-9.]+$/ && y > 0) printf "%.2fx", x / y; else print "-" }'; }
echo
echo "service ls with $SERVICES services, median of $RUNS runs (ms); docker CLI $CLI, engine $ENGINE_VERSION"
fmt='%-44s %14s %14s %18s %12s\n'
# shellcheck disable=SC2059
{
  printf "$fmt" "measurement" "shoal (unix)" "shoal (TLS)" "Docker Swarm (unix)" "TLS/unix"
  printf "$fmt" "docker service ls (CLI included)" "$a_cli" "$b_cli" "$c_cli" "$(ratio "$b_cli" "$a_cli")"
  printf "$fmt" "GET /services?status=true (curl)" "$a_curl" "$b_curl" "$c_curl" "$(ratio "$b_curl" "$a_curl")"
  printf "$fmt" "the same, kept-alive connection (curl)" "$a_keep" "$b_keep" "$c_keep" "$(ratio "$b_keep" "$a_keep")"
  printf "$fmt" "TLS handshake (curl, connect to appconnect)" "-" "$b_hs" "-" "-"
  printf "$fmt" "new connection + GET /_ping (Python ssl)" "-" "$b_py" "-" "-"
}
