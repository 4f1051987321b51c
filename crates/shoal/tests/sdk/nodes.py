"""Nodes through the Python SDK: list with filters, get by ID and by host name, update labels
and availability (drain moves tasks off, as Swarm does), and refusals in Swarm's words."""

import docker

from common import check, client, equal, refused, run, step, wait


def main():
    c = client()
    api = c.api
    node_id = c.swarm.init(advertise_addr="127.0.0.1")

    step("list and get")
    nodes = c.nodes.list()
    equal("one node", [n.id for n in nodes], [node_id])
    n = c.nodes.get(node_id)
    a = n.attrs
    equal("role", a["Spec"]["Role"], "manager")
    equal("availability", a["Spec"]["Availability"], "active")
    equal("labels are there even when empty", a["Spec"].get("Labels"), {})
    equal("leader", a["ManagerStatus"]["Leader"], True)
    equal("reachability", a["ManagerStatus"]["Reachability"], "reachable")
    wait("the node ready", lambda: c.nodes.get(node_id).attrs["Status"]["State"] == "ready")
    desc = a["Description"]
    check("description: platform", desc["Platform"]["OS"] == "linux", desc.get("Platform"))
    check("description: engine plugins, overlay among them",
          {"Type": "Network", "Name": "overlay"} in desc["Engine"].get("Plugins", []),
          desc["Engine"].get("Plugins"))
    check("description: TLS info of the root CA",
          desc.get("TLSInfo", {}).get("TrustRoot", "").startswith("-----BEGIN CERTIFICATE-----"),
          desc.get("TLSInfo"))
    equal("get by host name", c.nodes.get(desc["Hostname"]).id, node_id)
    equal("get by ID prefix", c.nodes.get(node_id[:6]).id, node_id)
    refused("get a node that is not there", lambda: c.nodes.get("nosuchnode"), 404,
            "node nosuchnode not found", exc=docker.errors.NotFound)
    equal("filter role=manager", [x.id for x in c.nodes.list(filters={"role": "manager"})], [node_id])
    equal("filter role=Manager (any case)", [x.id for x in c.nodes.list(filters={"role": "Manager"})], [node_id])
    equal("filter role=worker", c.nodes.list(filters={"role": "worker"}), [])
    equal("filter name", [x.id for x in c.nodes.list(filters={"name": desc["Hostname"][:2]})], [node_id])
    equal("filter id", [x.id for x in c.nodes.list(filters={"id": node_id[:5]})], [node_id])
    refused("filter role=boss", lambda: c.nodes.list(filters={"role": "boss"}), 400,
            "Invalid role filter: 'boss'")
    refused("an unknown filter", lambda: c.nodes.list(filters={"colour": "red"}), 400,
            "invalid filter 'colour'")

    step("update labels, then drain")
    svc = c.services.create("shoal-test/busybox", ["sleep", "1000"], name="work",
                            mode=docker.types.ServiceMode("replicated", 2))
    wait("two tasks running", lambda: len(svc.tasks(filters={"desired-state": "running"})) == 2
         and all(t["Status"]["State"] == "running" for t in svc.tasks(filters={"desired-state": "running"})))
    stale = n.version
    check("Node.update returns True",
          n.update({"Availability": "active", "Role": "manager", "Labels": {"zone": "a", "disk": "ssd"}}) is True)
    n.reload()
    equal("labels after update", n.attrs["Spec"]["Labels"], {"zone": "a", "disk": "ssd"})
    equal("filter node.label", [x.id for x in c.nodes.list(filters={"node.label": "zone=a"})], [node_id])
    equal("filter node.label with another value", c.nodes.list(filters={"node.label": "zone=b"}), [])
    refused("update with the version already used",
            lambda: api.update_node(node_id, stale, {"Availability": "drain", "Role": "manager"}), 409,
            "update out of sequence")
    n.reload()
    n.update({"Availability": "drain", "Role": "manager", "Labels": {"zone": "a"}})
    n.reload()
    equal("availability after drain", n.attrs["Spec"]["Availability"], "drain")
    wait("drain stops the tasks on the node (their replacements have nowhere to run)",
         lambda: not any(t["DesiredState"] == "running" and t["Status"]["State"] == "running"
                         for t in svc.tasks()))
    refused("update without a role", lambda: api.update_node(node_id, n.version, {"Availability": "active"}), 400,
            'invalid Role: ""')
    refused("update with a version that is not a number",
            lambda: api.update_node(node_id, "x1", {"Availability": "active", "Role": "manager"}), 400,
            "invalid node version 'x1': strconv.ParseUint: parsing \"x1\": invalid syntax")
    n.reload()
    n.update({"Availability": "active", "Role": "manager", "Labels": {}})
    wait("tasks run again once active", lambda: sum(
        t["Status"]["State"] == "running" for t in svc.tasks(filters={"desired-state": "running"})) == 2)

    step("remove: a manager must be demoted first")
    refused("remove the manager", lambda: n.remove(force=True), 400,
            "is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal")
    refused("demote the last manager",
            lambda: api.update_node(node_id, c.nodes.get(node_id).version,
                                    {"Availability": "active", "Role": "worker"}),
            400, "attempting to demote the last manager of the swarm")
    svc.remove()
    c.swarm.leave(force=True)


run(main)
