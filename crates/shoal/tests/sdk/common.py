"""What every SDK test script shares: a client on the daemon's socket, checks that collect every
failure before the script exits (so one run shows them all), and a record of the SDK calls made.

The Rust side (crates/shoal/tests/python_sdk.rs) runs each script with SHOAL_SOCKET set to the
daemon's API socket and, when SHOAL_SDK_CALLS is set, a file to which the script appends the
SDK methods it called (scripts/sdk-coverage.py counts them against the SDK's swarm surface).
"""

import atexit
import functools
import inspect
import os
import sys
import time
import traceback

import docker
import docker.api.config
import docker.api.network
import docker.api.secret
import docker.api.service
import docker.api.swarm
import docker.models.configs
import docker.models.networks
import docker.models.nodes
import docker.models.resource
import docker.models.secrets
import docker.models.services
import docker.models.swarm

# The SDK's swarm surface: the model classes behind client.swarm, .nodes, .services, .secrets,
# .configs and .networks, and the low-level mixins of APIClient that speak to those endpoints.
SURFACE = [
    docker.models.swarm.Swarm,
    docker.models.nodes.NodeCollection, docker.models.nodes.Node,
    docker.models.services.ServiceCollection, docker.models.services.Service,
    docker.models.secrets.SecretCollection, docker.models.secrets.Secret,
    docker.models.configs.ConfigCollection, docker.models.configs.Config,
    docker.models.networks.NetworkCollection, docker.models.networks.Network,
    docker.api.swarm.SwarmApiMixin, docker.api.service.ServiceApiMixin,
    docker.api.secret.SecretApiMixin, docker.api.config.ConfigApiMixin,
    docker.api.network.NetworkApiMixin,
]


def _methods(cls):
    """The public methods a user calls on `cls` (its own and inherited from the SDK's bases;
    Collection's abstract list/get/create and its internal prepare_model are not calls)."""
    out = {}
    for klass in reversed(cls.__mro__):
        if klass is object or klass.__module__.split(".")[0] != "docker":
            continue
        if klass is docker.models.resource.Collection:
            continue
        for name, fn in vars(klass).items():
            if inspect.isfunction(fn) and not name.startswith("_"):
                out[name] = fn
    return out


def surface():
    """Every public method of the surface, as 'Class.method'."""
    return {f"{cls.__name__}.{name}" for cls in SURFACE for name in _methods(cls)}


CALLED = set()


def _record(cls, name, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        CALLED.add(f"{cls.__name__}.{name}")
        return fn(*args, **kwargs)
    return wrapper


for _cls in SURFACE:
    for _name, _fn in _methods(_cls).items():
        setattr(_cls, _name, _record(_cls, _name, _fn))


def _write_calls():
    path = os.environ.get("SHOAL_SDK_CALLS")
    if path:
        with open(path, "a") as f:
            for c in sorted(CALLED):
                f.write(c + "\n")


atexit.register(_write_calls)

SOCKET = os.environ.get("SHOAL_SOCKET") or (sys.argv[1] if len(sys.argv) > 1 else "")
if not SOCKET:
    sys.exit("usage: SHOAL_SOCKET=/path/to/docker.sock python3 script.py")

FAILURES = []


def client():
    """A client as users make one: the high-level DockerClient on the unix socket."""
    return docker.DockerClient(base_url="unix://" + SOCKET, timeout=60)


def check(what, cond, seen=None):
    """Records a failed expectation (with what was seen) and goes on."""
    if not cond:
        FAILURES.append(f"{what}: saw {seen!r}" if seen is not None else what)
        print(f"FAIL {what}" + (f": saw {seen!r}" if seen is not None else ""), flush=True)
    return cond


def equal(what, got, want):
    """check(got == want), showing both."""
    return check(f"{what}: want {want!r}", got == want, got)


def refused(what, fn, status, message=None, exc=docker.errors.APIError):
    """Expects fn() to raise the SDK's error for HTTP `status` whose explanation contains
    `message`; returns the error."""
    try:
        r = fn()
    except exc as e:
        code = getattr(getattr(e, "response", None), "status_code", None)
        equal(f"{what}: status", code, status)
        if message is not None:
            expl = getattr(e, "explanation", None) or str(e)
            check(f"{what}: message contains {message!r}", message in expl, expl)
        return e
    check(f"{what}: refused with {status}", False, r)
    return None


def wait(what, fn, timeout=30.0):
    """Polls fn() until it returns a truthy value; records a failure after `timeout`."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except docker.errors.APIError as e:
            last = e
        time.sleep(0.1)
    check(f"{what} within {timeout:.0f}s", False, last)
    return None


def step(name):
    """Marks a section in the output (the Rust test prints it on failure)."""
    print(f"-- {name}", flush=True)


def done():
    """Ends the script: exit status 1 when any check failed."""
    if FAILURES:
        print(f"\n{len(FAILURES)} check(s) failed:", flush=True)
        for f in FAILURES:
            print("  - " + f, flush=True)
        sys.exit(1)
    print("all checks passed", flush=True)


def run(main):
    """Runs main(), counting an exception as a failure (after printing it)."""
    try:
        main()
    except Exception:  # noqa: BLE001 - any error is a failed script
        traceback.print_exc()
        FAILURES.append("exception: " + traceback.format_exc().splitlines()[-1])
    done()
