#!/usr/bin/env python3
"""How many of the Python Docker SDK's swarm calls the test suite exercises.

The SDK's swarm surface is every public method of the models behind client.swarm, .nodes,
.services, .secrets, .configs and .networks and of APIClient's swarm, service, secret, config
and network mixins (crates/shoal/tests/sdk/common.py lists them). The SDK tests
(`cargo test -p shoal --test python_sdk`) append the methods they called to target/sdk-calls.txt;
remove that file before a run to count that run alone.

Usage: scripts/sdk-coverage.py [calls-file]   (prints the count, then what is not exercised)
"""
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(here)
sys.path.insert(0, os.path.join(repo, "crates/shoal/tests/sdk"))
os.environ.pop("SHOAL_SDK_CALLS", None)
os.environ["SHOAL_SOCKET"] = "/dev/null"  # common.py wants one; nothing connects
import common  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(repo, "target/sdk-calls.txt")
try:
    with open(path) as f:
        called = {line.strip() for line in f if line.strip()}
except FileNotFoundError:
    sys.exit(f"{path} not found: run `cargo test -p shoal --test python_sdk` first")

surface = common.surface()
used = called & surface
print(f"{len(used)} of the SDK's {len(surface)} swarm calls exercised")
for name in sorted(surface - used):
    print(f"  not exercised: {name}")
