#!/usr/bin/env bash
# Time of 100 `docker secret create` (each one a raft write fsynced before its answer) against
# one or more shoal binaries, alternating them round after round so that a busy machine weighs
# on each alike; then, for each binary, whether the secrets' plain text is in its data dir.
# Written for issue 17: the cost of encryption at rest, next to a build from before it.
#
# Usage: bench/secrets.sh BINARY [BINARY...]      (as root)
# Environment: N=100 secrets per round, ROUNDS=5.
# Each binary runs as `shoal daemon` on its own data dir and socket (no agent work: no service is
# created); everything is removed on exit.
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BINARY [BINARY...]" >&2; exit 2; }
N=${N:-100}
ROUNDS=${ROUNDS:-5}
TMP=$(mktemp -d /tmp/shoal-secrets.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  grep -o "$TMP[^ ]*" /proc/self/mountinfo 2>/dev/null | xargs -r -n1 umount -l
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.0f\n",(a[NR/2]+a[NR/2+1])/2}'; }

i=0
for bin in "$@"; do
  d=$TMP/n$i
  mkdir -p "$d"
  "$bin" daemon --data-dir "$d/data" --socket "$d/docker.sock" >"$d/log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do DOCKER_HOST=unix://$d/docker.sock docker version >/dev/null 2>&1 && break; sleep 0.1; done
  DOCKER_HOST=unix://$d/docker.sock docker swarm init --advertise-addr 127.0.0.1:$((42377 + i)) >/dev/null ||
    { echo "swarm init failed for $bin; log: $d/log" >&2; tail "$d/log" >&2; exit 1; }
  i=$((i + 1))
done

for r in $(seq 1 "$ROUNDS"); do
  i=0
  for bin in "$@"; do
    export DOCKER_HOST=unix://$TMP/n$i/docker.sock
    start=$(date +%s%N)
    for s in $(seq 1 "$N"); do
      printf 'SECRET-MARKER-%s-%s-%s' "$r" "$s" "$RANDOM" | docker secret create "r$r-s$s" - >/dev/null || exit 1
    done
    echo "$i $(( ($(date +%s%N) - start) / 1000000 ))" >>"$TMP/times"
    i=$((i + 1))
  done
done

printf '\n%-60s %8s %s\n' "binary" "median" "all rounds (ms for $N secret creates)"
i=0
for bin in "$@"; do
  all=$(awk -v i="$i" '$1 == i {print $2}' "$TMP/times")
  # The plain text, or its base64 as the API's JSON carries it (every value starts with the
  # marker, so the base64 of its first 12 bytes starts every value's base64).
  found=$(grep -rlaE "SECRET-MARKER-|$(printf 'SECRET-MARKE' | base64)" "$TMP/n$i/data" 2>/dev/null | wc -l)
  printf '%-60s %8s %s   (files holding a secret in plain text or base64: %s)\n' "$bin" "$(echo "$all" | median)" "$(echo $all)" "$found"
  i=$((i + 1))
done
