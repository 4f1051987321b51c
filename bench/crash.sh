#!/usr/bin/env bash
# kill -9 at random moments, many rounds: the end-to-end test
# multi_node::kill9_at_random_moments_comes_back_without_duplicates (a manager and a worker, each
# a real daemon in its own network namespace; a service scaled, and every other round force-
# updated, while a random node's daemon is killed 0-1.5 s later and started again with the same
# command) with more rounds than the test suite's 3. Every round must converge: the wanted
# number of running containers, none two for one slot, both nodes Ready. Prints each round and
# the slowest convergence.
#
# WORK=stack instead runs `docker stack deploy` of two services (again each round with other
# replica counts) while the kill lands, deploying again when the kill cut the CLI short.
#
# Usage: bench/crash.sh                 (as root) 30 rounds
#        ROUNDS=100 bench/crash.sh
#        WORK=stack ROUNDS=50 bench/crash.sh
#        SEED=<n> bench/crash.sh        replay the random moments of an earlier run
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-30}
export SHOAL_CRASH_ROUNDS=$ROUNDS
[ -n "${SEED:-}" ] && export SHOAL_SEED=$SEED
export SHOAL_CRASH_WORK=${WORK:-scale}
bash scripts/build-test-images.sh >/dev/null
cargo build -q -p shoal --tests
flock /tmp/shoal-e2e.lock cargo test -q -p shoal --test multi_node \
  kill9_at_random_moments_comes_back_without_duplicates -- --nocapture 2>&1 \
  | grep -E '^crash:|panicked|timed out|test result'
