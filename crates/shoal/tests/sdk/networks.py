"""Swarm networks through the Python SDK: create an attachable overlay, list with filters and
names, get (verbose too), a service on it, remove, and Swarm's refusals."""

import docker

from common import check, client, equal, refused, run, step


def main():
    c = client()
    api = c.api
    c.swarm.init(advertise_addr="127.0.0.1")

    step("create")
    net = c.networks.create("backend", driver="overlay", attachable=True, labels={"tier": "db"},
                            options={"com.example.opt": "1"})
    a = net.attrs
    equal("name", a["Name"], "backend")
    equal("driver", a["Driver"], "overlay")
    equal("scope", a["Scope"], "swarm")
    equal("attachable", a["Attachable"], True)
    equal("labels", a["Labels"], {"tier": "db"})
    equal("the option asked for", a["Options"].get("com.example.opt"), "1")
    check("a subnet from the default pool", a["IPAM"]["Config"][0]["Subnet"].startswith("10.0."), a["IPAM"])
    other = c.networks.create("frontend", driver="overlay")
    refused("a name taken", lambda: c.networks.create("backend", driver="overlay"), 409,
            "network with name backend already exists")

    step("list with filters and names")
    names = lambda **kw: sorted(n.name for n in c.networks.list(**kw) if n.attrs["Scope"] == "swarm")
    equal("scope=swarm", names(filters={"scope": "swarm"}), ["backend", "frontend", "ingress"])
    equal("driver=overlay", names(filters={"driver": "overlay"}), ["backend", "frontend", "ingress"])
    equal("label", names(filters={"label": "tier=db"}), ["backend"])
    equal("name", names(filters={"name": "front"}), ["frontend"])
    equal("names=[...]", names(names=["backend"]), ["backend"])
    equal("ids=[...]", names(ids=[other.id]), ["frontend"])
    refused("an unknown filter", lambda: c.networks.list(filters={"colour": "red"}), 400, "invalid filter 'colour'")

    step("get")
    got = c.networks.get(net.id)
    got.reload()
    equal("get by ID", got.name, "backend")
    equal("get by name", c.networks.get("backend").id, net.id)
    svc = c.services.create("shoal-test/busybox", ["sleep", "1000"], name="db", networks=["backend"])
    equal("the service's network is the network's ID",
          [n["Target"] for n in svc.attrs["Spec"]["TaskTemplate"]["Networks"]], [net.id])
    verbose = c.networks.get(net.id, verbose=True).attrs
    check("verbose inspect answers", verbose["Name"] == "backend", verbose)
    refused("verbose=maybe is not a Go boolean",
            lambda: api.inspect_network(net.id, verbose="maybe"), 400, "invalid value for verbose: maybe")
    refused("a network that is not there", lambda: c.networks.get("nosuchnet"), 404, exc=docker.errors.NotFound)

    step("remove")
    refused("remove a network in use", net.remove, 400,
            f"rpc error: code = FailedPrecondition desc = network {net.id} is in use by service {svc.id}")
    web = c.services.create("shoal-test/busybox", ["sleep", "1000"], name="web",
                            endpoint_spec=docker.types.EndpointSpec(ports={18081: 80}))
    refused("remove ingress while a service publishes", lambda: api.remove_network("ingress"), 400,
            f"rpc error: code = FailedPrecondition desc = ingress network cannot be removed because service {web.id} depends on it")
    svc.remove()
    web.remove()
    net.remove()
    other.remove()
    equal("only ingress left", names(filters={"scope": "swarm"}), ["ingress"])
    refused("remove again", lambda: api.remove_network(net.id), 404, exc=docker.errors.NotFound)
    c.swarm.leave(force=True)


run(main)
