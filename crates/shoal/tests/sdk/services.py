"""Services through the Python SDK: created in every mode, inspected as Docker shows them
(moby's field names and the defaults its conversions fill, insertDefaults), listed with their
status and filters, updated, scaled, force-updated, rolled back, their tasks, and removed."""

import docker
from docker.types import (EndpointSpec, Healthcheck, RestartPolicy, ServiceMode,
                          UpdateConfig)

from common import check, client, equal, refused, run, step, wait

IMAGE = "shoal-test/busybox"
MODE_CHANGE = "rpc error: code = Unimplemented desc = service mode change is not allowed"


def running(svc, n):
    """Waits until `n` of the service's tasks meant to run are running."""
    def count():
        ts = svc.tasks(filters={"desired-state": "running"})
        return sum(t["Status"]["State"] == "running" for t in ts) == n and len(ts) == n
    return wait(f"{svc.name}: {n} running", count, timeout=45)


def main():
    c = client()
    api = c.api
    c.swarm.init(advertise_addr="127.0.0.1")

    step("create in every mode")
    rep = c.services.create(
        IMAGE, ["sleep", "1000"], name="rep", labels={"team": "a"},
        mode=ServiceMode("replicated", 2), env=["A=1"],
        healthcheck=Healthcheck(test=["CMD", "true"], interval=1_000_000_000),
        restart_policy=RestartPolicy(condition="on-failure"),
        update_config=UpdateConfig(parallelism=2),
        endpoint_spec=EndpointSpec(ports={18080: 80}))
    glob = c.services.create(IMAGE, ["sleep", "1000"], name="glob", mode=ServiceMode("global"))
    rjob = c.services.create(IMAGE, ["true"], name="rjob", mode=ServiceMode("replicated-job", 3, concurrency=2))
    gjob = c.services.create(IMAGE, ["true"], name="gjob", mode=ServiceMode("global-job"))

    step("inspect: moby's names and the defaults its conversions fill")
    spec = rep.attrs["Spec"]
    cs = spec["TaskTemplate"]["ContainerSpec"]
    equal("Healthcheck (moby's name)", cs.get("Healthcheck"), {"Test": ["CMD", "true"], "Interval": 1_000_000_000})
    check("no HealthCheck (the swagger's name)", "HealthCheck" not in cs, cs)
    equal("Isolation", cs.get("Isolation"), "default")
    equal("ForceUpdate", spec["TaskTemplate"].get("ForceUpdate"), 0)
    equal("Runtime", spec["TaskTemplate"].get("Runtime"), "container")
    equal("RestartPolicy", spec["TaskTemplate"]["RestartPolicy"],
          {"Condition": "on-failure", "Delay": 0, "MaxAttempts": 0, "Window": 0})
    equal("UpdateConfig", spec["UpdateConfig"],
          {"Parallelism": 2, "FailureAction": "continue", "MaxFailureRatio": 0, "Order": "stop-first"})
    equal("EndpointSpec", spec["EndpointSpec"], {"Mode": "vip", "Ports": [
        {"Protocol": "tcp", "PublishMode": "ingress", "PublishedPort": 18080, "TargetPort": 80}]})
    equal("Endpoint.Spec is the spec's", rep.attrs["Endpoint"]["Spec"], spec["EndpointSpec"])
    equal("labels", spec["Labels"], {"team": "a"})
    equal("global mode", glob.attrs["Spec"]["Mode"], {"Global": {}})
    equal("global: labels even when none were given", glob.attrs["Spec"]["Labels"], {})
    equal("global: an endpoint spec of its own only when given", glob.attrs["Endpoint"]["Spec"], {})
    equal("replicated-job mode", rjob.attrs["Spec"]["Mode"], {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 3}})
    equal("global-job mode", gjob.attrs["Spec"]["Mode"], {"GlobalJob": {}})
    equal("a job's first iteration shows no index", rjob.attrs["JobStatus"]["JobIteration"], {})

    step("insertDefaults: what Swarm fills for what the spec leaves out")
    full = c.services.get(glob.id, insert_defaults=True).attrs["Spec"]
    monitor = {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000,
               "MaxFailureRatio": 0, "Order": "stop-first"}
    equal("insertDefaults: UpdateConfig", full.get("UpdateConfig"), monitor)
    equal("insertDefaults: RollbackConfig", full.get("RollbackConfig"), monitor)
    equal("insertDefaults: RestartPolicy", full["TaskTemplate"].get("RestartPolicy"),
          {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0})
    equal("insertDefaults: StopGracePeriod", full["TaskTemplate"]["ContainerSpec"].get("StopGracePeriod"), 10_000_000_000)
    equal("insertDefaults: DNSConfig", full["TaskTemplate"]["ContainerSpec"].get("DNSConfig"), {})
    equal("insertDefaults: Resources and Placement",
          (full["TaskTemplate"].get("Resources"), full["TaskTemplate"].get("Placement")), ({}, {}))
    keep = c.services.get(rep.id, insert_defaults=True).attrs["Spec"]
    equal("insertDefaults keeps what was set, fills the monitor",
          keep["UpdateConfig"], {"Parallelism": 2, "FailureAction": "continue", "MaxFailureRatio": 0,
                                 "Order": "stop-first", "Monitor": 5_000_000_000})
    check("without insertDefaults nothing is filled", "RollbackConfig" not in c.services.get(glob.id).attrs["Spec"])
    refused("insertDefaults=maybe is not a Go boolean",
            lambda: api._result(api._get(api._url("/services/{0}", glob.id), params={"insertDefaults": "maybe"}), True),
            400, "invalid value for insertDefaults: maybe")

    step("list: status=True (the SDK's spelling) and filters")
    running(rep, 2)
    running(glob, 1)
    wait("rjob completes 3", lambda: sum(
        t["Status"]["State"] == "complete" for t in rjob.tasks()) == 3, timeout=45)
    listed = {s.name: s.attrs for s in c.services.list(status=True)}
    equal("ServiceStatus of rep", listed["rep"].get("ServiceStatus"),
          {"RunningTasks": 2, "DesiredTasks": 2, "CompletedTasks": 0})
    equal("ServiceStatus of glob", listed["glob"].get("ServiceStatus"),
          {"RunningTasks": 1, "DesiredTasks": 1, "CompletedTasks": 0})
    equal("ServiceStatus of rjob: completed", listed["rjob"].get("ServiceStatus", {}).get("CompletedTasks"), 3)
    check("no status unless asked", all("ServiceStatus" not in s.attrs for s in c.services.list()))
    check("status=False is no status", all("ServiceStatus" not in s for s in api.services(status=False)))
    names = lambda **kw: sorted(s.name for s in c.services.list(**kw))
    equal("filter mode=global", names(filters={"mode": "global"}), ["glob"])
    equal("filter mode=replicated-job", names(filters={"mode": "replicated-job"}), ["rjob"])
    equal("filter mode=global-job", names(filters={"mode": "global-job"}), ["gjob"])
    equal("filter label", names(filters={"label": "team=a"}), ["rep"])
    equal("filter name prefix", names(filters={"name": "g"}), ["gjob", "glob"])
    equal("filter id", names(filters={"id": rep.id[:8]}), ["rep"])
    refused("an unknown filter", lambda: c.services.list(filters={"colour": "red"}), 400, "invalid filter 'colour'")
    refused("status=maybe is not a Go boolean", lambda: api.services(status="maybe"), 400,
            "invalid value for status: maybe")

    step("update through the model keeps what it does not name, the mode included")
    glob.reload()
    glob.update(env=["B=2"])
    glob.reload()
    equal("global after update: mode", glob.attrs["Spec"]["Mode"], {"Global": {}})
    equal("global after update: env", glob.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env"), ["B=2"])
    refused("scale a global service through the model", lambda: glob.scale(3), None,
            exc=docker.errors.InvalidArgument)
    glob.reload()
    refused("a replicated mode sent for a global service",
            lambda: api.update_service(glob.id, glob.version, mode=ServiceMode("replicated", 3),
                                       fetch_current_spec=True), 501, MODE_CHANGE)
    glob.reload()
    refused("an update that leaves the mode out asks for replicated",
            lambda: api.update_service(glob.id, glob.version,
                                       task_template=glob.attrs["Spec"]["TaskTemplate"],
                                       name="glob"), 501, MODE_CHANGE)
    refused("renaming", lambda: api.update_service(glob.id, glob.version, name="other",
                                                   fetch_current_spec=True), 501,
            "rpc error: code = Unimplemented desc = renaming services is not supported")
    refused("a stale version", lambda: api.update_service(glob.id, 1, fetch_current_spec=True), 409,
            "update out of sequence")
    refused("a version that is not a number", lambda: api.update_service(glob.id, "v2", fetch_current_spec=True), 400,
            "invalid service version 'v2': strconv.ParseUint: parsing \"v2\": invalid syntax")

    step("scale and force_update")
    rep.reload()
    check("scale returns a truthy answer", rep.scale(3))
    rep.reload()
    equal("mode after scale", rep.attrs["Spec"]["Mode"], {"Replicated": {"Replicas": 3}})
    equal("env kept by scale", rep.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env"), ["A=1"])
    running(rep, 3)
    before = {t["ID"] for t in rep.tasks(filters={"desired-state": "running"})}
    rep.reload()
    rep.force_update()
    rep.reload()
    equal("ForceUpdate after force_update", rep.attrs["Spec"]["TaskTemplate"].get("ForceUpdate"), 1)
    wait("force_update replaces every task", lambda: not before & {
        t["ID"] for t in rep.tasks(filters={"desired-state": "running"})} and sum(
        t["Status"]["State"] == "running" for t in rep.tasks(filters={"desired-state": "running"})) == 3, timeout=60)

    step("rollback: the update API's rollback=previous, and an update back to the old spec")
    rep.reload()
    prev = rep.attrs.get("PreviousSpec", {})
    equal("PreviousSpec of the force update", prev.get("TaskTemplate", {}).get("ForceUpdate"), 0)
    r = api._result(api._post_json(api._url("/services/{0}/update", rep.id), data=rep.attrs["Spec"],
                                   params={"version": rep.version, "rollback": "previous"}), True)
    check("rollback answers Warnings", "Warnings" in r, r)
    rep.reload()
    equal("after rollback: ForceUpdate back", rep.attrs["Spec"]["TaskTemplate"].get("ForceUpdate"), 0)
    check("after rollback: a rollback in UpdateStatus",
          rep.attrs.get("UpdateStatus", {}).get("State", "").startswith("rollback"), rep.attrs.get("UpdateStatus"))
    refused("rollback=sideways", lambda: api._result(api._post_json(
        api._url("/services/{0}/update", rep.id), data=rep.attrs["Spec"],
        params={"version": rep.version, "rollback": "sideways"}), True), 400, "unrecognized rollback option sideways")
    rep.reload()
    rep.update(env=["A=2"])
    rep.reload()
    rep.update(env=["A=1"])
    rep.reload()
    equal("an update back to the old env", rep.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"], ["A=1"])

    step("tasks")
    running(rep, 3)
    tasks = api.tasks(filters={"service": "rep", "desired-state": "running"})
    check("tasks by service name", len(tasks) == 3, len(tasks))
    t = api.inspect_task(tasks[0]["ID"])
    equal("a task's labels", t.get("Labels"), {})
    equal("a task's spec: Healthcheck", t["Spec"]["ContainerSpec"].get("Healthcheck", {}).get("Test"), ["CMD", "true"])
    check("a task's spec has no Runtime", "Runtime" not in t["Spec"], t["Spec"])
    equal("a task's status has PortStatus", t["Status"].get("PortStatus"), {})
    current = api.tasks(filters={"service": rep.id, "_up-to-date": "1"})
    every = api.tasks(filters={"service": rep.id})
    check("_up-to-date (any value) keeps only tasks of the current spec",
          0 < len(current) < len(every), (len(current), len(every)))
    refused("desired-state=sleeping", lambda: api.tasks(filters={"desired-state": "sleeping"}), 400,
            "Invalid desired-state filter: 'sleeping'")
    refused("a task that is not there", lambda: api.inspect_task("nosuchtask"), 404,
            "task nosuchtask not found", exc=docker.errors.NotFound)
    check("a job's tasks carry its iteration", all("JobIteration" in x for x in rjob.tasks()))

    step("create refusals")
    refused("a name taken", lambda: c.services.create(IMAGE, name="rep"), 409,
            "rpc error: code = AlreadyExists desc = name conflicts with an existing object: service rep already exists")
    refused("two modes", lambda: api.create_service({"ContainerSpec": {"Image": IMAGE}}, name="two",
                                                    mode={"Global": {}, "Replicated": {"Replicas": 1}}),
            400, "must specify only one service mode")
    refused("a service that is not there", lambda: c.services.get("nosuch"), 404,
            "service nosuch not found", exc=docker.errors.NotFound)

    step("remove")
    for s in (rep, glob, rjob, gjob):
        check(f"remove {s.name}", s.remove() is True)
    equal("no service left", c.services.list(), [])
    refused("remove again", lambda: api.remove_service(rep.id), 404, f"service {rep.id} not found",
            exc=docker.errors.NotFound)
    c.swarm.leave(force=True)


run(main)
