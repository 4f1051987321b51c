#!/usr/bin/env bash
# Runs the Python SDK test scripts (crates/shoal/tests/sdk/*.py) against Docker's own Swarm on
# this machine's engine instead of shoal, to check that each assertion holds for Docker too.
# Every check that fails here is a place where Docker answers otherwise than the tests expect of
# shoal: docs/docker-compat.md says which ones are expected (shoal's deliberate differences) and
# which come from the engine's age (20.10 speaks API 1.41; shoal speaks 1.50).
#
# Needs root, the engine outside any swarm, the test images (scripts/build-test-images.sh) and
# the Python SDK (pip install docker==7.1.0). It puts the engine in swarm mode for a minute, so
# run it while no test uses the engine: `flock /tmp/shoal-e2e.lock scripts/sdk-vs-docker.sh`.
# Leaves the swarm when done (also on failure).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
state=$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)
if [ "$state" != "inactive" ]; then
  echo "the engine's swarm state is '$state'; run this on an engine outside any swarm" >&2
  exit 1
fi
trap 'docker swarm leave --force >/dev/null 2>&1' EXIT
echo "Docker $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
failed=0
for script in swarm nodes services objects networks; do
  echo "=== $script.py"
  if ! (cd crates/shoal/tests/sdk && SHOAL_SOCKET=/var/run/docker.sock timeout 600 python3 "$script.py"); then
    failed=$((failed + 1))
  fi
  docker swarm leave --force >/dev/null 2>&1
done
echo "$failed of 5 scripts saw Docker answer otherwise"
