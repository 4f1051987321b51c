"""The swarm's life through the Python SDK: init, inspect, update with token rotation, join
tokens, leave refused and forced, and init again on the same node."""

import docker

from common import check, client, equal, refused, run, step, wait

LAST_MANAGER = (
    "You are attempting to leave the swarm on a node that is participating as a manager. "
    "Removing the last manager erases all current state of the swarm. "
    "Use `--force` to ignore this message. "
)
NOT_IN_SWARM = ('This node is not a swarm manager. Use "docker swarm init" or '
                '"docker swarm join" to connect this node to swarm and try again.')


def main():
    c = client()
    api = c.api

    step("before init: the SDK's Swarm model tolerates 503, the API answers it")
    refused("inspect outside a swarm", api.inspect_swarm, 503, NOT_IN_SWARM)

    step("init with a spec built by the SDK")
    node_id = c.swarm.init(advertise_addr="127.0.0.1", listen_addr="0.0.0.0:2377",
                           task_history_retention_limit=3, snapshot_interval=4000,
                           labels={"team": "sdk"}, name="default")
    check("init returns the node ID", isinstance(node_id, str) and len(node_id) == 25, node_id)
    attrs = c.swarm.attrs
    equal("attrs after init: task history", attrs["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"], 3)
    equal("attrs after init: snapshot interval", attrs["Spec"]["Raft"]["SnapshotInterval"], 4000)
    equal("attrs after init: labels", attrs["Spec"]["Labels"], {"team": "sdk"})
    equal("attrs: default address pool", attrs.get("DefaultAddrPool"), ["10.0.0.0/8"])
    tls = attrs.get("TLSInfo", {})
    check("attrs: TLSInfo names the root CA", tls.get("TrustRoot", "").startswith("-----BEGIN CERTIFICATE-----"), tls)
    check("attrs: TLSInfo has the issuer's subject and key", tls.get("CertIssuerSubject") and tls.get("CertIssuerPublicKey"), tls)
    tokens = attrs["JoinTokens"]
    for role in ("Worker", "Manager"):
        check(f"join token {role}", tokens[role].startswith("SWMTKN-1-") and len(tokens[role].split("-")) == 4, tokens)
    check("worker and manager tokens differ", tokens["Worker"] != tokens["Manager"], tokens)
    refused("init twice", lambda: c.swarm.init(advertise_addr="127.0.0.1"), 503,
            "This node is already part of a swarm")
    equal("unlock key while autolock is off", c.swarm.get_unlock_key(), {"UnlockKey": ""})

    step("update: the SDK sends rotateWorkerToken=True and its own spec")
    version = c.swarm.version
    c.swarm.update(rotate_worker_token=True, snapshot_interval=5000,
                   task_history_retention_limit=3)
    c.swarm.reload()
    after = c.swarm.attrs
    check("the version moved on", c.swarm.version > version, (version, c.swarm.version))
    check("the worker token was rotated", after["JoinTokens"]["Worker"] != tokens["Worker"],
          after["JoinTokens"])
    equal("the manager token was kept", after["JoinTokens"]["Manager"], tokens["Manager"])
    equal("snapshot interval updated", after["Spec"]["Raft"]["SnapshotInterval"], 5000)
    c.swarm.update(rotate_manager_token=True, task_history_retention_limit=3)
    c.swarm.reload()
    check("the manager token was rotated", c.swarm.attrs["JoinTokens"]["Manager"] != tokens["Manager"],
          c.swarm.attrs["JoinTokens"])
    refused("update with a stale version", lambda: api.update_swarm(version=version, swarm_spec={}),
            409, "update out of sequence")
    refused("rotateWorkerToken=yes is not a Go boolean",
            lambda: api._result(api._post_json(api._url("/swarm/update"), data={},
                                params={"version": c.swarm.version, "rotateWorkerToken": "yes"}), True),
            400, "invalid value for rotateWorkerToken: yes")
    refused("a version that is not a number",
            lambda: api.update_swarm(version="abc", swarm_spec={}), 400,
            "invalid swarm version 'abc': strconv.ParseUint: parsing \"abc\": invalid syntax")

    step("autolock, unlock and join as the SDK calls them")
    c.swarm.update(autolock_managers=True, task_history_retention_limit=3)
    key = c.swarm.get_unlock_key()["UnlockKey"]
    check("an unlock key once autolock is on", key.startswith("SWMKEY-1-"), key)
    refused("unlock a swarm that is not locked", lambda: c.swarm.unlock(key), 409, "swarm is not locked")
    c.swarm.reload()
    c.swarm.update(autolock_managers=False, task_history_retention_limit=3)
    equal("no unlock key once autolock is off", c.swarm.get_unlock_key(), {"UnlockKey": ""})
    refused("join while in a swarm",
            lambda: c.swarm.join(remote_addrs=["127.0.0.1:2377"], join_token=tokens["Worker"]), 503,
            "This node is already part of a swarm")

    step("leave: refused for the last manager without force, in Swarm's words")
    svc = c.services.create("shoal-test/busybox", ["sleep", "1000"], name="stay",
                            mode=docker.types.ServiceMode("replicated", 2))
    try:
        api.leave_swarm()
        check("leave without force on the last manager is refused", False)
    except docker.errors.APIError as e:
        equal("leave without force: status", e.response.status_code, 503)
        equal("leave without force: message", e.explanation, LAST_MANAGER)
    check("still a manager after the refused leave", api.inspect_swarm()["ID"] == attrs["ID"])
    check("the service is still there", c.services.get(svc.id).name == "stay")

    step("leave --force right after a service was created: nothing stays behind")
    check("leave(force=True) returns True", c.swarm.leave(force=True) is True)
    refused("inspect after leave", api.inspect_swarm, 503, NOT_IN_SWARM)
    refused("nodes after leave", c.nodes.list, 503, NOT_IN_SWARM)
    engine = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    left = engine.containers.list(all=True, filters={"label": f"com.docker.swarm.node.id={node_id}"})
    equal("containers of the node left on the engine", [x.name for x in left], [])
    refused("leave again", lambda: api.leave_swarm(), 503, "This node is not part of a swarm")
    check("leave(force=True) outside a swarm is not an error for the SDK", c.swarm.leave(force=True))

    step("init again on the same node")
    again = c.swarm.init(advertise_addr="127.0.0.1")
    check("a new node ID", isinstance(again, str) and again != node_id, (again, node_id))
    check("a new swarm", c.swarm.attrs["ID"] != attrs["ID"], c.swarm.attrs["ID"])
    equal("the new swarm has no services", c.services.list(), [])
    wait("the node ready", lambda: c.nodes.list()[0].attrs["Status"]["State"] == "ready")
    c.swarm.leave(force=True)
    refused("inspect after the second leave", api.inspect_swarm, 503, NOT_IN_SWARM)


run(main)
