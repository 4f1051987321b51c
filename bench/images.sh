#!/usr/bin/env bash
# Images without a registry, and the node registry (issue 22), measured. Three namespaced nodes
# (bench/lib/netns.sh: ibn1..ibn3, 10.95.0.1..3 on a bridge ibbr0 in namespace ibnhub), each with
# a Docker Engine of its own (dk_start: a dockerd in the node's namespace, the host engine's
# storage driver, its socket /run/ibn<i>/engine.sock) and a `shoal daemon` on it (`--engine`,
# through sh_extra_args; node-1 manager, node-2 and node-3 workers; every daemon serves its node
# registry on the default 127.0.0.1:5000 of its namespace). The test image is shoal-test/busybox
# plus /blob, IMAGE_MB MiB of random bytes, in one `docker import`ed layer (as the tests'
# build_big_image; kept in the host engine as shoal-test/big:<IMAGE_MB>m, rebuilt when its size
# label differs), loaded into node-2's engine only; the other engines start empty. Then, in one
# run:
#   x  node to node  the image goes from node-2's engine to node-1's, RUNS times each way,
#                 alternating which goes first:
#                   shoal: a 1-replica service constrained to node-1; seconds from `service
#                   create` until `service ps` shows it Running, and the transfer's own time and
#                   bytes from node-1's daemon log ("image fetched from a node": the holder's
#                   export streamed into node-1's engine's load, the ID checked, the tag set);
#                   save|load: `docker -H <node-2 engine> save IMG | docker -H <node-1 engine>
#                   load`, the same two dockerds, timed.
#                 MiB/s for both (bytes: shoal's from its log, save|load's from `docker save |
#                 wc -c`, untimed), and the ratio (goal: shoal >= 80% of save|load).
#   r  replicas   `service create --replicas 3 --replicas-max-per-node 1` until three tasks are
#                 Running on the three nodes: with the image on node-2 only (node-1 and node-3
#                 fetch it from node-2 at once) and with it on all three (the plain start time;
#                 loaded by save|load before, untimed). RUNS each, alternating.
#   g  registry   an image of the same make, with new random bytes each run (made in node-2's
#                 engine by `docker import`, untimed), RUNS times, the three below in turn
#                 (which goes first rotates):
#                   shoal: `docker -H <node-2 engine> push 127.0.0.1:5000/big:<run>` (node-2's
#                   registry); untimed, until each blob has its second copy (on node-1 or node-3,
#                   as the leader's rendezvous hashing chose: seen as the blob's file in the
#                   node's store; `shoal registry ls` logged); then `docker pull` of it on
#                   node-1's engine from node-1's registry and on node-3's from node-3's, each
#                   "local" (the node holds the copy) or "relayed" (streamed from a holder over
#                   the peer port while stored);
#                   reference: Debian's docker-registry (distribution 2.8) run by hand in node-2's
#                   namespace on 0.0.0.0:REF_PORT (5001; own config and storage under the
#                   bench's data dir): push from node-2's engine to 127.0.0.1:5001, pull on
#                   node-1's engine from 10.95.0.2:5001 across the bridge (every dockerd runs
#                   with --insecure-registry 10.95.0.2:5001: plain HTTP), and pull on node-2's
#                   own engine from 127.0.0.1:5001 (the image removed there first);
#                   save|load: node-2's engine to node-1's, the engines' own limit.
#                 Each pull's image ID is checked against the pushed one. Between runs the image
#                 is removed from every engine and its tag deleted from both registries (`curl -X
#                 DELETE /v2/big/manifests/<digest>`); blobs stay (the node registry collects
#                 unreferenced blobs after an hour; the reference one only by an offline
#                 `garbage-collect`), hence new content each run.
# Between runs of x and r the service is removed and the image removed from the engines that
# should not hold it, and the script waits until the swarm's index (the manager's
# shoal_node_images) agrees. Medians are printed in a table at the end.
#
# Usage: flock -o /tmp/shoal-e2e.lock bench/images.sh        (as root)
#        PARTS=x RUNS=5 bench/images.sh
#        bench/images.sh --cleanup       remove what a killed (kill -9) run left behind
# Environment:
#   PARTS=xrg  RUNS=3  IMAGE_MB=200  TIMEOUT=180 (any single wait)
#   DK_STORAGE (the host engine's storage driver, `docker info -f '{{.Driver}}'`)
#   REF_REGISTRY=docker-registry (the reference registry's binary; `apt-get install -y
#   docker-registry`; without it part g measures shoal and save|load only)  REF_PORT=5001
#   SHOAL=target/release/shoal (built with `cargo build --release -p shoal` when missing; BUILD=0
#   skips the build, and without a release binary target/debug/shoal is used, said in the table)
#   SHOAL_LOG=info; KEEP_LOGS=<dir> keeps the daemons', dockerds' and the reference registry's logs
#   NS_PREFIX=ibn NS_SUBNET=10.95.0 NS_BRIDGE=ibbr0 (the suite uses 10.99.0.x, cluster.sh
#   10.97.0.x, swarm-peer.sh 10.98.0.x, volumes.sh 10.96.0.x)
# Needs: shoal-test/busybox in the host engine (scripts/build-test-images.sh). Never talks swarm
# to the host engine, pulls nothing from outside, sends nothing outside the namespaces; removes
# everything it created on exit, Ctrl-C included (the big image stays in the host engine, as the
# tests keep theirs).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
NS_PREFIX=${NS_PREFIX:-ibn}
NS_SUBNET=${NS_SUBNET:-10.95.0}
NS_BRIDGE=${NS_BRIDGE:-ibbr0}
HOST_ENGINE=unix:///var/run/docker.sock
if [ -z "${DK_STORAGE:-}" ] && [ "${1:-}" != "--cleanup" ]; then
  DK_STORAGE=$(docker -H "$HOST_ENGINE" info -f '{{.Driver}}' 2>/dev/null)
  DK_STORAGE=${DK_STORAGE:-vfs}
fi
. bench/lib/netns.sh
WAIT_POLL=0.1        # wait_until (bench/lib/shoal.sh) polls every 0.1 s here
MEDIAN_DECIMALS=3
. bench/lib/shoal.sh

# Node i's dockerd listens on /run/ibn<i>/engine.sock: /run/ibn<i>/docker.sock is its shoal
# daemon's API (sh_sock).
dk_host() { echo "unix://$(ns_run_dir "$1")/engine.sock"; }
dk_sock() { echo "$(ns_run_dir "$1")/engine.sock"; }
# bench/lib/shoal.sh's hook: every shoal daemon on its own node's dockerd.
sh_extra_args() { printf '%s\n' --engine "$(dk_sock "$1")"; }

PARTS=${PARTS:-xrg}
RUNS=${RUNS:-3}
IMAGE_MB=${IMAGE_MB:-200}
TIMEOUT=${TIMEOUT:-180}
BUILD=${BUILD:-1}
SHOAL=${SHOAL:-}
BASE=shoal-test/busybox:latest
BIG=shoal-test/big:${IMAGE_MB}m
ENGINE=$HOST_ENGINE   # the host's engine: only the image is built there, never `docker swarm`
NODES=3
NODE_REG=127.0.0.1:5000   # every node's own registry (the daemon's default --registry-addr)
REF_REGISTRY=${REF_REGISTRY:-docker-registry}
REF_PORT=${REF_PORT:-5001}
REF_LOCAL=127.0.0.1:$REF_PORT       # the reference registry as node-2 sees it
REF_REMOTE=$NS_SUBNET.2:$REF_PORT   # and as node-1 sees it (across the bridge)
REF_DIR=$NS_DATA/refregistry
# A task that stops at once on `service rm` (busybox sleep as PID 1 ignores SIGTERM).
TASK_CMD=(sh -c 'trap "exit 0" TERM; sleep 3600 & wait')

has_part() { case $PARTS in *"$1"*) return 0 ;; esac; return 1; }

keep_logs() {
  local i f
  [ -n "${KEEP_LOGS:-}" ] || return 0
  mkdir -p "$KEEP_LOGS"
  for ((i = 1; i <= NODES; i++)); do
    for f in daemon.log dockerd.log; do
      [ -f "$(ns_data_dir "$i")/$f" ] && cp "$(ns_data_dir "$i")/$f" "$KEEP_LOGS/node$i-$f"
    done
  done
  [ -f "$REF_DIR/registry.log" ] && cp "$REF_DIR/registry.log" "$KEEP_LOGS/refregistry.log"
  return 0
}

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
cleanup_hooks() {
  # Hooks run last-registered first: the shoal daemons leave and stop, then the dockerds.
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
  echo "namespaces ${NS_PREFIX}* exist already (another run?); bench/images.sh --cleanup removes them" >&2
  exit 1
fi
for c in jq curl tar; do
  command -v "$c" >/dev/null || { echo "$c is missing" >&2; exit 1; }
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
if has_part g && ! command -v "$REF_REGISTRY" >/dev/null; then
  log "no $REF_REGISTRY (apt-get install -y docker-registry): part g without the reference registry"
  REF_REGISTRY=
fi
if ! engine image inspect "$BASE" >/dev/null 2>&1; then
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
# The image and the engines
# ----------------------------------------------------------------------------------------------
# $BIG in the host engine, as crates/shoal/tests/common/engines.rs's build_big_image makes it:
# shoal-test/busybox's files plus /blob, IMAGE_MB MiB of random bytes (incompressible), in one
# layer by `docker import`. Kept: rebuilt only when its label tells another size.
build_big_image() {
  local work id
  [ "$(engine image inspect -f '{{index .Config.Labels "shoal.test.megabytes"}}' "$BIG" 2>/dev/null)" = "$IMAGE_MB" ] &&
    return 0
  log "building $BIG in the host engine ($IMAGE_MB MiB of random bytes)"
  work="$NS_DATA/big"
  rm -rf "$work"
  mkdir -p "$work/root"
  id=$(engine create "$BASE") || return 1
  engine export "$id" | tar -x -C "$work/root"
  local rc=$?
  engine rm -f "$id" >/dev/null
  [ "$rc" = 0 ] || { rm -rf "$work"; return 1; }
  head -c $((IMAGE_MB << 20)) /dev/urandom > "$work/root/blob" || { rm -rf "$work"; return 1; }
  tar -C "$work/root" -c . | engine import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' \
    --change "LABEL shoal.test.megabytes=$IMAGE_MB" - "$BIG" >/dev/null
  rc=$?
  rm -rf "$work"
  return "$rc"
}

img_id() { dk "$1" image inspect -f '{{.Id}}' "$BIG" 2>/dev/null; }
has_img() { [ -n "$(img_id "$1")" ]; }
# Distinct images in node i's engine (what its daemon reports to the index).
engine_images() { dk "$1" images -q --no-trunc | sort -u | wc -l; }
# The swarm's index of node i's images, as the manager's /metrics shows it (loopback of node-1).
indexed_images() {
  ns_exec 1 curl -s --max-time 5 http://127.0.0.1:9323/metrics |
    awk -v s="shoal_node_images{node=\"node-$1\"}" '$1 == s { print $2; f = 1 } END { if (!f) print -1 }'
}
index_agrees() { local i; for i in "$@"; do [ "$(indexed_images "$i")" = "$(engine_images "$i")" ] || return 1; done; }
# Waits until the index agrees on nodes "$@"; says what it and the engines show when it does not.
wait_index() {
  local i
  wait_until index_agrees "$@" && return 0
  for i in "$@"; do
    log "  node-$i: the index has $(indexed_images "$i") images, the engine $(engine_images "$i")"
  done
  return 1
}
# Removes $BIG (all its tags) from node i's engine.
rm_img() {
  local id
  id=$(img_id "$1")
  [ -n "$id" ] && dk "$1" rmi -f "$id" >/dev/null
  ! has_img "$1"
}
# docker save on node-2's engine into node i's load (untimed set-up).
copy_img() { dk 2 save "$BIG" | dk "$1" load -q >/dev/null; }

# Tasks of service $1 Running, as "node" lines.
running_on() {
  sh 1 service ps "$1" --filter desired-state=running --format '{{.Node}} {{.CurrentState}}' 2>/dev/null |
    awk '$2 == "Running" { print $1 }'
}
running_count_on() { [ "$(running_on "$1" | sort -u | wc -l)" = "$2" ]; }
# Tasks of service $1 that ended without running to the end (a fetch that failed and was
# replaced), one line each, for the log.
failed_tasks() {
  sh 1 service ps "$1" --no-trunc --format '{{.Node}} {{.DesiredState}} {{.CurrentState}} {{.Error}}' 2>/dev/null |
    awk '$2 != "Running"'
}
note_failed() {
  local f
  f=$(failed_tasks "$1")
  [ -z "$f" ] || { log "  $1: tasks that did not run:"; sed 's/^/      /' <<< "$f" >&2; }
  return 0
}
no_containers() { local i; for ((i = 1; i <= NODES; i++)); do [ -z "$(dk "$i" ps -aq)" ] || return 1; done; }
rm_service() {
  sh 1 service rm "$1" >/dev/null 2>&1
  wait_until no_containers || { log "containers of $1 still there"; return 1; }
}

# The "image fetched from a node" lines node i's log got after line $2: "bytes ms" each.
fetched_since() {
  tail -n +"$(($2 + 1))" "$(sh_dir "$1")/daemon.log" | grep 'image fetched from a node' |
    sed -E 's/.* bytes=([0-9]+).* ms=([0-9]+).*/\1 \2/'
}
log_lines() { wc -l < "$(sh_dir "$1")/daemon.log"; }
mibs() { awk -v b="$1" -v s="$2" 'BEGIN { if (s + 0 <= 0) print "n/a"; else printf "%.1f\n", b / 1048576 / s }'; }

# ----------------------------------------------------------------------------------------------
# x: node-2 to node-1
# ----------------------------------------------------------------------------------------------
# shoal: prints "seconds-to-Running transfer-bytes transfer-seconds".
x_shoal() {
  local t0 s l0 f
  l0=$(log_lines 1)
  t0=$(now)
  sh 1 service create --detach --name ix --constraint node.hostname==node-1 --no-resolve-image \
    "$BIG" "${TASK_CMD[@]}" >/dev/null || return 1
  wait_until running_count_on ix 1 || { log "ix never ran"; sh 1 service ps --no-trunc ix >&2; return 1; }
  s=$(since "$t0")
  note_failed ix
  [ "$(running_on ix)" = node-1 ] || { log "ix runs on $(running_on ix), not node-1"; return 1; }
  f=$(fetched_since 1 "$l0" | tail -n 1)
  [ -n "$f" ] || { log "node-1's log has no 'image fetched from a node' line"; return 1; }
  set -- $f
  rm_service ix || return 1
  echo "$s $1 $(awk -v ms="$2" 'BEGIN { printf "%.3f", ms / 1000 }')"
}

# save|load: prints seconds.
x_saveload() {
  local t0 s
  t0=$(now)
  dk 2 save "$BIG" | dk 1 load -q >/dev/null || return 1
  s=$(since "$t0")
  [ "$(img_id 1)" = "$(img_id 2)" ] || { log "save|load gave node-1 another image"; return 1; }
  echo "$s"
}

x_part() {
  local r first out a b c e2e=() tr=() bytes=() sl=()
  log "x: $BIG from node-2's engine to node-1's, $RUNS x (shoal, save|load)"
  for ((r = 1; r <= RUNS; r++)); do
    for first in shoal saveload; do
      [ $((r % 2)) = 0 ] && first=$([ "$first" = shoal ] && echo saveload || echo shoal)
      rm_img 1 || { log "cannot remove the image from node-1"; return 1; }
      wait_index 1 || { log "the index does not see node-1 without the image"; return 1; }
      if [ "$first" = shoal ]; then
        out=$(x_shoal) || return 1
        read -r a b c <<< "$out"
        e2e+=("$a"); bytes+=("$b"); tr+=("$c")
      else
        out=$(x_saveload) || return 1
        sl+=("$out")
      fi
    done
    log "  run $r: shoal Running after ${e2e[-1]} s, transfer ${bytes[-1]} B in ${tr[-1]} s ($(mibs "${bytes[-1]}" "${tr[-1]}") MiB/s); save|load ${sl[-1]} s ($(mibs "$SAVE_BYTES" "${sl[-1]}") MiB/s)"
  done
  rm_img 1
  X_E2E=$(printf '%s\n' "${e2e[@]}" | median)
  X_TR=$(printf '%s\n' "${tr[@]}" | median)
  X_BYTES=$(printf '%s\n' "${bytes[@]}" | median 0)
  X_SL=$(printf '%s\n' "${sl[@]}" | median)
  X_ALL="shoal to Running: ${e2e[*]}; shoal transfer: ${tr[*]}; save|load: ${sl[*]}"
}

# ----------------------------------------------------------------------------------------------
# r: three replicas, one per node
# ----------------------------------------------------------------------------------------------
# Prints seconds to three Running on three nodes, and the transfers' "bytes ms" of nodes 1 and 3.
r_once() {
  local name=$1 t0 s l1 l3 tr
  l1=$(log_lines 1)
  l3=$(log_lines 3)
  t0=$(now)
  sh 1 service create --detach --name "$name" --replicas 3 --replicas-max-per-node 1 --no-resolve-image \
    "$BIG" "${TASK_CMD[@]}" >/dev/null || return 1
  wait_until running_count_on "$name" 3 || { log "$name: not three Running"; sh 1 service ps --no-trunc "$name" >&2; return 1; }
  s=$(since "$t0")
  note_failed "$name"
  tr="$(fetched_since 1 "$l1" | awk '{ printf "%.2f", $2 / 1000 }')/$(fetched_since 3 "$l3" | awk '{ printf "%.2f", $2 / 1000 }')"
  rm_service "$name" || return 1
  echo "$s $tr"
}

r_part() {
  local r first out a b n fetch=() plain=() trs=()
  log "r: 3 replicas, one per node, $RUNS x (image on node-2 only, image on all three)"
  for ((r = 1; r <= RUNS; r++)); do
    for first in fetch plain; do
      [ $((r % 2)) = 0 ] && first=$([ "$first" = fetch ] && echo plain || echo fetch)
      if [ "$first" = fetch ]; then
        { rm_img 1 && rm_img 3; } || { log "cannot remove the image from nodes 1 and 3"; return 1; }
        wait_index 1 3 || { log "the index does not see nodes 1 and 3 without the image"; return 1; }
        out=$(r_once ir-fetch) || return 1
        read -r a b <<< "$out"
        fetch+=("$a"); trs+=("$b")
        for n in 1 3; do
          [ "$(img_id "$n")" = "$(img_id 2)" ] || { log "node-$n holds another image than node-2"; return 1; }
        done
      else
        for n in 1 3; do has_img "$n" || copy_img "$n" || return 1; done
        wait_index 1 3 || { log "the index does not see the image on nodes 1 and 3"; return 1; }
        out=$(r_once ir-plain) || return 1
        read -r a b <<< "$out"
        plain+=("$a")
      fi
    done
    log "  run $r: from node-2 ${fetch[-1]} s (transfers to node-1/node-3: ${trs[-1]} s); on all three ${plain[-1]} s"
  done
  R_FETCH=$(printf '%s\n' "${fetch[@]}" | median)
  R_PLAIN=$(printf '%s\n' "${plain[@]}" | median)
  R_ALL="from node-2: ${fetch[*]} (transfers node-1/node-3: ${trs[*]}); on all three: ${plain[*]}"
}

# ----------------------------------------------------------------------------------------------
# g: through a registry (the node registry, the reference registry, save|load)
# ----------------------------------------------------------------------------------------------
# The reference registry (distribution) in node-2's namespace, on all its addresses, with its own
# config and storage under the bench's data dir; ns_cleanup kills it with the namespace.
ref_start() {
  mkdir -p "$REF_DIR/storage"
  cat > "$REF_DIR/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REF_DIR/storage
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 0.0.0.0:$REF_PORT
EOF
  ns_exec_bg 2 "$REF_REGISTRY" serve "$REF_DIR/config.yml" >> "$REF_DIR/registry.log" 2>&1
  wait_until ns_exec 2 curl -sf -o /dev/null "http://$REF_LOCAL/v2/" ||
    { log "the reference registry did not come up:"; tail -n 20 "$REF_DIR/registry.log" >&2; return 1; }
  log "reference registry: $("$REF_REGISTRY" --version 2>/dev/null) in node-2's namespace on :$REF_PORT"
}

# The busybox files the part's images are made of, once.
G_ROOT=$NS_DATA/g/root
g_rootfs() {
  local id rc
  [ -d "$G_ROOT/bin" ] && return 0
  mkdir -p "$G_ROOT"
  id=$(engine create "$BASE") || return 1
  engine export "$id" | tar -x -C "$G_ROOT"
  rc=$?
  engine rm -f "$id" >/dev/null
  return "$rc"
}
# Run $1's image in node-2's engine: busybox plus IMAGE_MB MiB of new random bytes, one layer,
# tagged for both registries. Sets G_ID.
g_make() {
  g_rootfs || return 1
  head -c $((IMAGE_MB << 20)) /dev/urandom > "$G_ROOT/blob" || return 1
  G_ID=$(tar -C "$G_ROOT" -c . | dk 2 import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' \
    - "$NODE_REG/big:$1") || return 1
  rm -f "$G_ROOT/blob"
  dk 2 tag "$G_ID" "$REF_LOCAL/big:$1"
}
g_has() { [ "$(dk "$1" image inspect -f '{{.Id}}' "$G_ID" 2>/dev/null)" = "$G_ID" ]; }
g_rm() { g_has "$1" && dk "$1" rmi -f "$G_ID" >/dev/null; ! g_has "$1"; }
# The digest of a push's output ("1: digest: sha256:... size: 527").
push_digest() { sed -n 's/.*digest: \(sha256:[0-9a-f]*\).*/\1/p' <<< "$1" | tail -n 1; }
# Manifest $2 of registry $1 (node-2's view): "bytes config-digest layer-digest..." (bytes: the
# config's and layers' sizes, what a pull moves).
manifest_blobs() {
  ns_exec 2 curl -sf -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$1/v2/big/manifests/$2" |
    jq -r '"\([.config.size, .layers[].size] | add) \(.config.digest) \([.layers[].digest] | join(" "))"'
}
# Deletes manifest $2 (and the tag on it) from registry $1 (node-2's view); 202 expected.
delete_manifest() {
  local code
  code=$(ns_exec 2 curl -s -o /dev/null -w '%{http_code}' -X DELETE "http://$1/v2/big/manifests/$2")
  [ "$code" = 202 ] || log "DELETE $1/v2/big/manifests/$2 answered $code"
}
# Whether node i's registry store holds blob $2 (a committed blob is a file named by its digest).
blob_on() { [ -f "$(sh_dir "$1")/data/registry/blobs/sha256/${2#sha256:}" ]; }
# Every blob of the pushed image has its second copy (node-2 took the push).
copies_done() { local d; for d in "$@"; do blob_on 1 "$d" || blob_on 3 "$d" || return 1; done; }
# How node i's pull gets the layer: local when its store holds it, else relayed from a holder.
pull_kind() { if blob_on "$1" "$G_LAYER"; then echo local; else echo relayed; fi; }
# Times `docker pull $2` on node $1's engine; prints seconds; checks the image ID.
timed_pull() {
  local t0 s
  t0=$(now)
  dk "$1" pull -q "$2" >/dev/null || { log "pull of $2 on node-$1 failed"; return 1; }
  s=$(since "$t0")
  g_has "$1" || { log "pull of $2 on node-$1 gave another image than $G_ID"; return 1; }
  echo "$s"
}

# The median of the arguments ("n/a" for none).
med_of() { if [ $# = 0 ]; then echo n/a; else printf '%s\n' "$@" | median; fi; }

# shoal: sets GS_PUSH GS_COPY GS_P1 GS_K1 GS_P3 GS_K3 GS_BYTES G_LAYER.
g_shoal() {
  local r=$1 t0 out digest blobs holders
  t0=$(now)
  out=$(dk 2 push "$NODE_REG/big:$r" 2>&1) || { log "push to node-2's registry failed: $out"; return 1; }
  GS_PUSH=$(since "$t0")
  t0=$(now)
  digest=$(push_digest "$out")
  read -r GS_BYTES blobs <<< "$(manifest_blobs "$NODE_REG" "$digest")"
  # shellcheck disable=SC2086
  set -- $blobs
  [ -n "$digest" ] && [ $# -ge 2 ] || { log "no manifest for $NODE_REG/big:$r ($digest)"; return 1; }
  G_LAYER=${!#}
  wait_until copies_done "$@" || { log "the blobs of big:$r got no second copy"; return 1; }
  GS_COPY=$(since "$t0")
  holders=$("$SHOAL" registry ls -H "$(sh_host 1)" | awk -v t="$r" '$1 == "big" && $2 == t { print $5 " copies on " $6 }')
  log "  node registry: big:$r: $holders; the layer's second copy on $(for n in 1 3; do blob_on "$n" "$G_LAYER" && printf 'node-%s ' "$n"; done)"
  GS_K1=$(pull_kind 1)
  GS_P1=$(timed_pull 1 "$NODE_REG/big:$r") || return 1
  GS_K3=$(pull_kind 3)
  GS_P3=$(timed_pull 3 "$NODE_REG/big:$r") || return 1
  { g_rm 1 && g_rm 3; } || { log "cannot remove big:$r from nodes 1 and 3"; return 1; }
  delete_manifest "$NODE_REG" "$digest"
}

# reference: sets GR_PUSH GR_P1 GR_P2 GR_BYTES.
g_ref() {
  local r=$1 t0 out digest blobs
  t0=$(now)
  out=$(dk 2 push "$REF_LOCAL/big:$r" 2>&1) || { log "push to the reference registry failed: $out"; return 1; }
  GR_PUSH=$(since "$t0")
  digest=$(push_digest "$out")
  read -r GR_BYTES blobs <<< "$(manifest_blobs "$REF_LOCAL" "$digest")"
  [ -n "$blobs" ] || { log "no manifest for $REF_LOCAL/big:$r ($digest)"; return 1; }
  GR_P1=$(timed_pull 1 "$REF_REMOTE/big:$r") || return 1
  g_rm 1 || { log "cannot remove big:$r from node-1"; return 1; }
  # On node-2 itself: the image goes, and comes back by the pull (tagged for shoal again).
  g_rm 2 || { log "cannot remove big:$r from node-2"; return 1; }
  GR_P2=$(timed_pull 2 "$REF_LOCAL/big:$r") || return 1
  dk 2 tag "$G_ID" "$NODE_REG/big:$r" || return 1
  delete_manifest "$REF_LOCAL" "$digest"
}

# save|load node-2 to node-1: sets GL_S.
g_saveload() {
  local r=$1 t0
  t0=$(now)
  dk 2 save "$NODE_REG/big:$r" | dk 1 load -q >/dev/null || { log "save|load of big:$r failed"; return 1; }
  GL_S=$(since "$t0")
  g_has 1 || { log "save|load gave node-1 another image"; return 1; }
  g_rm 1
}

g_part() {
  local r k n u units=(shoal ref saveload) push=() copy=() local_p=() relayed_p=() kinds=() \
    rpush=() rp1=() rp2=() sl=()
  [ -n "$REF_REGISTRY" ] || units=(shoal saveload)
  log "g: a new $IMAGE_MB MiB image each run, $RUNS x (${units[*]}), which goes first rotating"
  [ -z "$REF_REGISTRY" ] || ref_start || return 1
  for ((r = 1; r <= RUNS; r++)); do
    g_make "$r" || { log "making big:$r in node-2's engine failed"; return 1; }
    for ((k = 0; k < ${#units[@]}; k++)); do
      u=${units[$(((k + r - 1) % ${#units[@]}))]}
      case $u in
        shoal)
          g_shoal "$r" || return 1
          push+=("$GS_PUSH"); copy+=("$GS_COPY")
          kinds+=("$GS_K1/$GS_K3")
          if [ "$GS_K1" = local ]; then local_p+=("$GS_P1"); else relayed_p+=("$GS_P1"); fi
          if [ "$GS_K3" = local ]; then local_p+=("$GS_P3"); else relayed_p+=("$GS_P3"); fi
          ;;
        ref)
          g_ref "$r" || return 1
          rpush+=("$GR_PUSH"); rp1+=("$GR_P1"); rp2+=("$GR_P2")
          ;;
        saveload)
          g_saveload "$r" || return 1
          sl+=("$GL_S")
          ;;
      esac
    done
    log "  run $r (${units[$(((r - 1) % ${#units[@]}))]} first): shoal push $GS_PUSH s, second copy after $GS_COPY s, pull node-1 $GS_P1 s ($GS_K1), node-3 $GS_P3 s ($GS_K3); reference push ${GR_PUSH:--} s, pull node-1 ${GR_P1:--} s, node-2 ${GR_P2:--} s; save|load $GL_S s"
    for n in 1 2 3; do g_rm "$n" || { log "cannot remove big:$r from node-$n"; return 1; }; done
  done
  G_BYTES=$GS_BYTES
  G_PUSH=$(med_of ${push[@]+"${push[@]}"})
  G_COPY=$(med_of ${copy[@]+"${copy[@]}"})
  G_LOCAL=$(med_of ${local_p[@]+"${local_p[@]}"})
  G_RELAYED=$(med_of ${relayed_p[@]+"${relayed_p[@]}"})
  G_NLOCAL=${#local_p[@]}
  G_NRELAYED=${#relayed_p[@]}
  G_RPUSH=$(med_of ${rpush[@]+"${rpush[@]}"})
  G_RP1=$(med_of ${rp1[@]+"${rp1[@]}"})
  G_RP2=$(med_of ${rp2[@]+"${rp2[@]}"})
  G_SL=$(med_of ${sl[@]+"${sl[@]}"})
  G_ALL="shoal push: ${push[*]}; second copy: ${copy[*]}; pulls node-1/node-3 (${kinds[*]}): local ${local_p[*]:-}, relayed ${relayed_p[*]:-}; reference push: ${rpush[*]:-}, pull node-1: ${rp1[*]:-}, pull node-2: ${rp2[*]:-}; save|load: ${sl[*]}"
}

# ----------------------------------------------------------------------------------------------
build_big_image || { log "building $BIG failed"; exit 1; }
log "$NODES nodes, a dockerd ($DK_STORAGE) and a shoal daemon ($BUILD_NOTE) on each"
ns_create "$NODES" || exit 1
t0=$(now)
# Every engine trusts the reference registry at node-2's address (plain HTTP; part g).
for ((i = 1; i <= NODES; i++)); do dk_start "$i" --insecure-registry "$REF_REMOTE" || exit 1; done
log "dockerds up in $(since "$t0") s; loading $BIG into node-2's engine"
engine save "$BIG" | dk 2 load -q >/dev/null || { log "loading $BIG into node-2 failed"; exit 1; }
form_cluster "$NODES" 1 || exit 1
wait_index 1 2 3 || { log "the index does not know the nodes' images"; exit 1; }
SAVE_BYTES=$(dk 2 save "$BIG" | wc -c)
log "docker save of $BIG: $SAVE_BYTES bytes"

X_E2E= X_TR= X_BYTES= X_SL= X_ALL= R_FETCH= R_PLAIN= R_ALL=
GS_PUSH= GS_COPY= GS_P1= GS_K1= GS_P3= GS_K3= GS_BYTES= GR_PUSH= GR_P1= GR_P2= GR_BYTES= GL_S=
G_BYTES= G_PUSH= G_COPY= G_LOCAL= G_RELAYED= G_NLOCAL=0 G_NRELAYED=0 G_RPUSH= G_RP1= G_RP2= G_SL= G_ALL=
if has_part x; then x_part || log "part x stopped early"; fi
if has_part r; then r_part || log "part r stopped early"; fi
if has_part g; then g_part || log "part g stopped early"; fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 <= 0 || b + 0 <= 0) print "-"; else printf "%.2f\n", a / b }'; }
echo
echo "Images without a registry: $(date '+%F %H:%M'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), Docker $(engine version --format '{{.Server.Version}}' 2>/dev/null) ($DK_STORAGE), shoal $BUILD_NOTE"
echo "3 nodes, a dockerd each: node-1 manager, 2 and 3 workers; $BIG ($IMAGE_MB MiB of random bytes), docker save: $SAVE_BYTES bytes"
echo
if has_part x; then
  sh_mibs=$(mibs "$X_BYTES" "$X_TR")
  sl_mibs=$(mibs "$SAVE_BYTES" "$X_SL")
  echo "| x: node-2's engine to node-1's (median of $RUNS) | time | MiB/s |"
  echo "| --- | --- | --- |"
  echo "| docker save \\| docker load, the same two engines | ${X_SL:-n/a} s | $sl_mibs |"
  echo "| shoal: the transfer (node-1's log, $X_BYTES bytes) | ${X_TR:-n/a} s | $sh_mibs |"
  echo "| shoal: service create to Running on node-1 | ${X_E2E:-n/a} s | $(mibs "$X_BYTES" "$X_E2E") |"
  echo "| shoal transfer / save\\|load, throughput (goal >= 0.80) | | $(ratio "$sh_mibs" "$sl_mibs") |"
  echo "  all runs, seconds: ${X_ALL:-n/a}"
  echo
fi
if has_part r; then
  echo "| r: service create --replicas 3 --replicas-max-per-node 1 to three Running (median of $RUNS) | time |"
  echo "| --- | --- |"
  echo "| image on node-2 only (node-1 and node-3 fetch it) | ${R_FETCH:-n/a} s |"
  echo "| image on all three (plain start) | ${R_PLAIN:-n/a} s |"
  echo "| difference | $(awk -v a="$R_FETCH" -v b="$R_PLAIN" 'BEGIN { if (a == "" || b == "") print "n/a"; else printf "%+.2f s", a - b }') |"
  echo "  all runs, seconds: ${R_ALL:-n/a}"
fi
if has_part g; then
  [ -n "$REF_REGISTRY" ] || REF_NOTE=" (no reference registry)"
  echo
  echo "| g: a new $IMAGE_MB MiB image a run, through a registry (median of $RUNS)${REF_NOTE:-} | time | MiB/s |"
  echo "| --- | --- | --- |"
  echo "| shoal: docker push, node-2's engine to node-2's registry (127.0.0.1:5000) | $G_PUSH s | $(mibs "$G_BYTES" "$G_PUSH") |"
  echo "| shoal: the second copy complete, after the push (in the background) | $G_COPY s | |"
  echo "| shoal: docker pull on a node holding the copy (local; $G_NLOCAL pulls) | $G_LOCAL s | $(mibs "$G_BYTES" "$G_LOCAL") |"
  echo "| shoal: docker pull on a node without it (relayed from a holder; $G_NRELAYED pulls) | $G_RELAYED s | $(mibs "$G_BYTES" "$G_RELAYED") |"
  if [ -n "$REF_REGISTRY" ]; then
    echo "| reference registry on node-2: docker push from node-2's engine ($REF_LOCAL) | $G_RPUSH s | $(mibs "$G_BYTES" "$G_RPUSH") |"
    echo "| reference: docker pull on node-1 across the bridge ($REF_REMOTE, plain HTTP) | $G_RP1 s | $(mibs "$G_BYTES" "$G_RP1") |"
    echo "| reference: docker pull on node-2 ($REF_LOCAL) | $G_RP2 s | $(mibs "$G_BYTES" "$G_RP2") |"
  fi
  echo "| docker save \\| docker load, node-2's engine to node-1's | $G_SL s | $(mibs "$SAVE_BYTES" "$G_SL") |"
  if [ -n "$REF_REGISTRY" ]; then
    echo "| shoal / reference, time: push; local pull / pull on node-2; relayed pull / pull across | | $(ratio "$G_RPUSH" "$G_PUSH"); $(ratio "$G_RP2" "$G_LOCAL"); $(ratio "$G_RP1" "$G_RELAYED") (throughput ratios) |"
  fi
  echo "  registry bytes (config and layer): $G_BYTES; all runs, seconds: ${G_ALL:-n/a}"
fi
