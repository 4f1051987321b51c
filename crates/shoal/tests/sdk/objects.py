"""Secrets and configs through the Python SDK: create with labels (and templating), list with
filters, get, use from a service, remove, and Swarm's refusals."""

import base64

import docker

from common import check, client, equal, refused, run, step


def main():
    c = client()
    api = c.api
    c.swarm.init(advertise_addr="127.0.0.1")

    step("secrets")
    s1 = c.secrets.create(name="db.password", data=b"hunter2", labels={"app": "db"})
    s2 = c.secrets.create(name="db.user", data="admin")
    s3 = c.secrets.create(name="api.key", data=b"k", labels={"app": "api"})
    got = c.secrets.get(s1.id)
    got.reload()
    equal("secret name", got.name, "db.password")
    equal("secret labels", got.attrs["Spec"]["Labels"], {"app": "db"})
    check("secret data is never answered", "Data" not in got.attrs["Spec"], got.attrs["Spec"])
    equal("labels of a secret made without any", c.secrets.get(s2.id).attrs["Spec"]["Labels"], {})
    names = lambda **kw: sorted(x.name for x in c.secrets.list(**kw))
    equal("all secrets", names(), ["api.key", "db.password", "db.user"])
    equal("filter label key=value", names(filters={"label": "app=db"}), ["db.password"])
    equal("filter label key", names(filters={"label": "app"}), ["api.key", "db.password"])
    equal("filter name prefix", names(filters={"name": "db."}), ["db.password", "db.user"])
    equal("filter names (exact)", names(filters={"names": ["db.user"]}), ["db.user"])
    equal("filter id", names(filters={"id": s3.id[:7]}), ["api.key"])
    refused("an unknown filter", lambda: c.secrets.list(filters={"driver": "x"}), 400, "invalid filter 'driver'")
    refused("a name taken", lambda: c.secrets.create(name="db.user", data=b"x"), 409,
            "rpc error: code = AlreadyExists desc = secret db.user already exists")
    refused("a bad name", lambda: c.secrets.create(name="bad name!", data=b"x"), 400,
            "rpc error: code = InvalidArgument desc = invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, "
            "and the start and end character must be [a-zA-Z0-9]")
    refused("no data", lambda: api._result(api._post_json(api._url("/secrets/create"),
                                                          data={"Name": "empty", "Data": ""}), True), 400,
            "secret data must be larger than 0 and less than 512000 bytes")
    refused("a secret that is not there", lambda: c.secrets.get("nosuch"), 404, "secret nosuch not found",
            exc=docker.errors.NotFound)
    # Field names in any case, as Go decodes them (the SDK's own spelling is Go's).
    low = api._result(api._post_json(api._url("/secrets/create"),
                                     data={"name": "lower", "data": base64.b64encode(b"x").decode(),
                                           "labels": {"Case": "Kept"}}), True)
    equal("a secret created with lower-case field names", c.secrets.get(low["ID"]).attrs["Spec"],
          {"Name": "lower", "Labels": {"Case": "Kept"}})

    step("configs, with templating")
    cf = c.configs.create(name="app.conf", data=b"service={{.Service.Name}}", labels={"app": "web"},
                          templating={"name": "golang"})
    c2 = c.configs.create(name="plain.conf", data=b"x=1")
    got = c.configs.get(cf.id)
    got.reload()
    equal("config spec", got.attrs["Spec"], {
        "Name": "app.conf", "Labels": {"app": "web"},
        "Data": base64.b64encode(b"service={{.Service.Name}}").decode(),
        "Templating": {"Name": "golang"}})
    equal("labels of a config made without any", c.configs.get(c2.id).attrs["Spec"]["Labels"], {})
    cnames = lambda **kw: sorted(x.name for x in c.configs.list(**kw))
    equal("filter label", cnames(filters={"label": "app=web"}), ["app.conf"])
    equal("filter name", cnames(filters={"name": "plain"}), ["plain.conf"])
    refused("names is a secrets filter only", lambda: c.configs.list(filters={"names": "app.conf"}), 400,
            "invalid filter 'names'")
    refused("a config that is not there", lambda: c.configs.get("nosuch"), 404, "config nosuch not found",
            exc=docker.errors.NotFound)

    step("in use by a service")
    svc = c.services.create(
        "shoal-test/busybox", ["sleep", "1000"], name="user",
        secrets=[docker.types.SecretReference(s1.id, "db.password")],
        configs=[docker.types.ConfigReference(cf.id, "app.conf", filename="/app.conf")])
    refs = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    equal("the secret reference", refs["Secrets"][0]["SecretName"], "db.password")
    equal("the config reference", refs["Configs"][0]["File"]["Name"], "/app.conf")
    refused("remove a secret in use", s1.remove, 400,
            "rpc error: code = InvalidArgument desc = secret 'db.password' is in use by the following service: user")
    refused("remove a config in use", cf.remove, 400,
            "rpc error: code = InvalidArgument desc = config 'app.conf' is in use by the following service: user")
    svc.remove()

    step("remove")
    for o in (s1, s2, s3, cf, c2):
        check(f"remove {o.name}", o.remove() is True)
    api.remove_secret(low["ID"])
    equal("no secret left", c.secrets.list(), [])
    equal("no config left", c.configs.list(), [])
    refused("remove again", lambda: api.remove_secret(s1.id), 404, f"secret {s1.id} not found",
            exc=docker.errors.NotFound)
    c.swarm.leave(force=True)


run(main)
