#!/usr/bin/env bash
# The fast test tier: every crate's unit tests plus the in-process HTTP API tests (the router
# over a real store in a temp dir). No daemon, no Docker Engine, no namespaces, no root: runs
# anywhere `cargo build` does, in seconds once built. The full suite (`cargo test --workspace`,
# which `.ci/run` runs) adds the end-to-end tier on top.
# Extra arguments go to cargo, e.g. `scripts/test-fast.sh -- --nocapture`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

args=(test --workspace --lib --bins)
# The API tests are test targets named api* (tests/api.rs, tests/api_*.rs or tests/api/).
if compgen -G 'crates/*/tests/api*' >/dev/null; then
  args+=(--test 'api*')
fi
exec cargo "${args[@]}" "$@"
