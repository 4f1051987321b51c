//! What Docker shows of a service spec, as pure functions. dockerd converts every spec it takes
//! to swarmkit's gRPC form and every answer back (`daemon/cluster/convert`), and the round trip
//! fills defaults the swagger file does not promise: `Labels: {}`, `ForceUpdate: 0`,
//! `Runtime: "container"`, `Isolation: "default"`, an update config's `Order: "stop-first"`
//! and `FailureAction: "pause"`, a port's `PublishMode: "ingress"`... [`service_spec`] makes a
//! spec what that round trip makes of it, so shoal stores and answers what Docker would, and a
//! spec a client sends back unchanged is no change. [`insert_defaults`] is swarmkit's
//! `defaults.InterpolateService`, what `GET /services/{id}?insertDefaults=true` shows.

use crate::models::{
    EndpointPortConfigProtocolEnum as Protocol, EndpointPortConfigPublishModeEnum as PublishMode,
    EndpointSpecModeEnum, Node, ObjectVersion, Service, ServiceSpec, ServiceSpecModeReplicated,
    ServiceSpecRollbackConfig, ServiceSpecRollbackConfigFailureActionEnum as RollbackAction,
    ServiceSpecRollbackConfigOrderEnum as RollbackOrder, ServiceSpecUpdateConfig,
    ServiceSpecUpdateConfigFailureActionEnum as UpdateAction,
    ServiceSpecUpdateConfigOrderEnum as UpdateOrder, Task, TaskSpec,
    TaskSpecContainerSpecIsolationEnum as Isolation, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum as Condition,
};
use std::collections::HashMap;

/// The runtime dockerd names for container tasks (`swarm.RuntimeContainer`).
pub const RUNTIME_CONTAINER: &str = "container";
/// swarmkit's default stop grace period (10 s), in nanoseconds.
pub const DEFAULT_STOP_GRACE_PERIOD: i64 = 10_000_000_000;
/// swarmkit's default restart delay (5 s), in nanoseconds.
pub const DEFAULT_RESTART_DELAY: i64 = 5_000_000_000;
/// swarmkit's default update and rollback monitor window (5 s), in nanoseconds.
pub const DEFAULT_MONITOR: i64 = 5_000_000_000;

/// A swarm network as dockerd puts it in a task's `NetworksAttachments[].Network` (its
/// `swarm.Network`, converted from swarmkit's object): ID, version, times, the spec the network
/// was created with, the driver's state (the overlay's VXLAN ID) and the allocated subnets. The
/// store keeps networks in the engine's form (`GET /networks`), so this converts from that.
pub fn swarm_network(n: &crate::models::Network, version: u64) -> serde_json::Value {
    use serde_json::json;
    let driver = n.driver.clone().unwrap_or_else(|| "overlay".into());
    let configs: Vec<serde_json::Value> = n
        .ipam
        .as_ref()
        .and_then(|i| i.config.as_ref())
        .into_iter()
        .flatten()
        .map(|c| {
            let mut o = serde_json::Map::new();
            if let Some(s) = &c.subnet {
                o.insert("Subnet".into(), json!(s));
            }
            if let Some(g) = &c.gateway {
                o.insert("Gateway".into(), json!(g));
            }
            serde_json::Value::Object(o)
        })
        .collect();
    let ipam_driver = n
        .ipam
        .as_ref()
        .and_then(|i| i.driver.clone())
        .unwrap_or_else(|| "default".into());
    let created = n.created.clone().unwrap_or_default();
    json!({
        "ID": n.id.clone().unwrap_or_default(),
        "Version": {"Index": version},
        "CreatedAt": created,
        "UpdatedAt": created,
        "Spec": {
            "Name": n.name.clone().unwrap_or_default(),
            "Labels": n.labels.clone().unwrap_or_default(),
            "DriverConfiguration": {"Name": driver},
            "Scope": "swarm",
            "Internal": n.internal.unwrap_or(false),
            "Attachable": n.attachable.unwrap_or(false),
            "Ingress": n.ingress.unwrap_or(false),
            "IPAMOptions": {"Driver": {"Name": ipam_driver}, "Configs": configs},
        },
        "DriverState": {"Name": driver, "Options": n.options.clone().unwrap_or_default()},
        "IPAMOptions": {"Driver": {"Name": ipam_driver}, "Configs": configs},
    })
}

/// Makes `spec` what dockerd's conversion to swarmkit and back makes of it. Idempotent.
pub fn service_spec(spec: &mut ServiceSpec) {
    // Annotations.Labels has no omitempty, and the conversion back never leaves it nil.
    spec.labels.get_or_insert_with(Default::default);
    let mode = spec.mode.get_or_insert_with(Default::default);
    if let Some(j) = mode.replicated_job.as_mut() {
        let concurrent = *j.max_concurrent.get_or_insert(1);
        j.total_completions.get_or_insert(concurrent);
    } else if mode.global.is_none() && mode.global_job.is_none() {
        // A replicated service without a count, or a spec without a mode, runs one replica.
        let r = mode
            .replicated
            .get_or_insert_with(ServiceSpecModeReplicated::default);
        r.replicas.get_or_insert(1);
    }
    let t = spec.task_template.get_or_insert_with(Default::default);
    task_spec(t);
    // Set on the way back for services only (`serviceSpecFromGRPC`), not for tasks' specs.
    if t.container_spec.is_some() && t.runtime.as_deref().is_none_or(str::is_empty) {
        t.runtime = Some(RUNTIME_CONTAINER.to_string());
    }
    if let Some(u) = spec.update_config.as_mut() {
        update_config(u);
    }
    if let Some(r) = spec.rollback_config.as_mut() {
        rollback_config(r);
    }
    if let Some(e) = spec.endpoint_spec.as_mut() {
        // The mode goes through an upper-cased enum lookup: anything unknown is VIP (0).
        if matches!(e.mode, None | Some(EndpointSpecModeEnum::EMPTY)) {
            e.mode = Some(EndpointSpecModeEnum::VIP);
        }
        for p in e.ports.iter_mut().flatten() {
            if matches!(p.protocol, None | Some(Protocol::EMPTY)) {
                p.protocol = Some(Protocol::TCP);
            }
            if matches!(p.publish_mode, None | Some(PublishMode::EMPTY)) {
                p.publish_mode = Some(PublishMode::INGRESS);
            }
        }
    }
}

/// The task template's part of [`service_spec`], as tasks carry it in their `Spec`.
pub fn task_spec(t: &mut TaskSpec) {
    // ForceUpdate is a plain uint64 in Go: always there, 0 by default.
    t.force_update.get_or_insert(0);
    if let Some(cs) = t.container_spec.as_mut() {
        if matches!(cs.isolation, None | Some(Isolation::EMPTY)) {
            cs.isolation = Some(Isolation::DEFAULT);
        }
        // Go's omitempty drops false booleans.
        for b in [&mut cs.tty, &mut cs.open_stdin, &mut cs.read_only] {
            if *b == Some(false) {
                *b = None;
            }
        }
    }
    if let Some(r) = t.restart_policy.as_mut() {
        if matches!(r.condition, None | Some(Condition::EMPTY)) {
            r.condition = Some(Condition::ANY);
        }
        r.max_attempts.get_or_insert(0);
    }
}

/// An update config as the conversion leaves it: a monitor or delay of 0 is unset (omitempty),
/// the failure action and order default to pause and stop-first, the counts are always there.
fn update_config(u: &mut ServiceSpecUpdateConfig) {
    u.parallelism.get_or_insert(0);
    u.max_failure_ratio.get_or_insert(0.0);
    if matches!(u.failure_action, None | Some(UpdateAction::EMPTY)) {
        u.failure_action = Some(UpdateAction::PAUSE);
    }
    if matches!(u.order, None | Some(UpdateOrder::EMPTY)) {
        u.order = Some(UpdateOrder::STOP_FIRST);
    }
    if u.monitor == Some(0) {
        u.monitor = None;
    }
    if u.delay == Some(0) {
        u.delay = None;
    }
}

/// [`update_config`] for the rollback settings (the same Go type).
fn rollback_config(r: &mut ServiceSpecRollbackConfig) {
    r.parallelism.get_or_insert(0);
    r.max_failure_ratio.get_or_insert(0.0);
    if matches!(r.failure_action, None | Some(RollbackAction::EMPTY)) {
        r.failure_action = Some(RollbackAction::PAUSE);
    }
    if matches!(r.order, None | Some(RollbackOrder::EMPTY)) {
        r.order = Some(RollbackOrder::STOP_FIRST);
    }
    if r.monitor == Some(0) {
        r.monitor = None;
    }
    if r.delay == Some(0) {
        r.delay = None;
    }
}

/// A service as dockerd answers it (`ServiceFromGRPC`): its specs through the round trip, the
/// endpoint's spec the service's own (`{}` when it has none, where shoal's allocator says
/// "vip"), a job iteration of 0 without its index (`Version.Index` is omitempty).
pub fn service(s: &mut Service, previous: Option<&mut ServiceSpec>) {
    let spec = s.spec.get_or_insert_with(Default::default);
    service_spec(spec);
    let endpoint_spec = spec.endpoint_spec.clone().unwrap_or_default();
    if let Some(p) = previous {
        service_spec(p);
    }
    s.endpoint.get_or_insert_with(Default::default).spec = Some(endpoint_spec);
    if let Some(j) = s.job_status.as_mut() {
        omit_zero_index(j.job_iteration.as_mut());
    }
}

/// A task as dockerd answers it (`TaskFromGRPC`): `Labels` and `Status.PortStatus` always
/// there, its spec through the round trip.
pub fn task(t: &mut Task) {
    t.labels.get_or_insert_with(Default::default);
    if let Some(spec) = t.spec.as_mut() {
        task_spec(spec);
        // `taskSpecFromGRPC` names only the attachment runtime.
        if spec.runtime.as_deref() == Some(RUNTIME_CONTAINER) {
            spec.runtime = None;
        }
    }
    if let Some(st) = t.status.as_mut() {
        st.port_status.get_or_insert_with(Default::default);
    }
    omit_zero_index(t.job_iteration.as_mut());
}

/// A node as dockerd answers it: `Spec.Labels` always there, the engine's labels only when
/// it has some (`EngineDescription.Labels` is omitempty).
pub fn node(n: &mut Node) {
    labels(&mut n.spec.get_or_insert_with(Default::default).labels);
    if let Some(e) = n.description.as_mut().and_then(|d| d.engine.as_mut()) {
        if e.labels.as_ref().is_some_and(HashMap::is_empty) {
            e.labels = None;
        }
    }
}

/// An object's `Spec.Labels` as dockerd answers them: never absent (`Annotations.Labels`).
pub fn labels(l: &mut Option<HashMap<String, String>>) {
    l.get_or_insert_with(Default::default);
}

fn omit_zero_index(v: Option<&mut ObjectVersion>) {
    if let Some(v) = v.filter(|v| v.index == Some(0)) {
        v.index = None;
    }
}

/// swarmkit's `defaults.InterpolateService` (then the conversion back): every setting the spec
/// leaves out, filled with the value Swarm uses for it.
pub fn insert_defaults(spec: &mut ServiceSpec) {
    service_spec(spec);
    let t = spec.task_template.get_or_insert_with(Default::default);
    if let Some(cs) = t.container_spec.as_mut() {
        cs.stop_grace_period
            .get_or_insert(DEFAULT_STOP_GRACE_PERIOD);
        cs.dns_config.get_or_insert_with(Default::default);
    }
    t.resources.get_or_insert_with(Default::default);
    let r = t
        .restart_policy
        .get_or_insert_with(|| TaskSpecRestartPolicy {
            condition: Some(Condition::ANY),
            max_attempts: Some(0),
            ..Default::default()
        });
    r.delay.get_or_insert(DEFAULT_RESTART_DELAY);
    t.placement.get_or_insert_with(Default::default);
    let u = spec
        .update_config
        .get_or_insert_with(|| ServiceSpecUpdateConfig {
            parallelism: Some(1),
            ..Default::default()
        });
    u.monitor.get_or_insert(DEFAULT_MONITOR);
    update_config(u);
    let r = spec
        .rollback_config
        .get_or_insert_with(|| ServiceSpecRollbackConfig {
            parallelism: Some(1),
            ..Default::default()
        });
    r.monitor.get_or_insert(DEFAULT_MONITOR);
    rollback_config(r);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn spec(v: Value) -> ServiceSpec {
        serde_json::from_value(v).unwrap()
    }

    fn shown(s: &ServiceSpec) -> Value {
        serde_json::to_value(s).unwrap()
    }

    #[test]
    fn the_round_trip_fills_what_docker_shows() {
        // What the Python SDK sends for create(image, mode=ServiceMode("replicated", 2),
        // update_config=UpdateConfig(parallelism=2), endpoint_spec=EndpointSpec(ports={8080: 80})),
        // and what Docker 20.10 answers for it (read on this project's VM).
        let mut s = spec(json!({
            "Name": "rep",
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "TTY": false},
                             "RestartPolicy": {"Condition": "on-failure"}},
            "Mode": {"Replicated": {"Replicas": 2}},
            "UpdateConfig": {"Parallelism": 2, "FailureAction": "continue"},
            "EndpointSpec": {"Ports": [{"PublishedPort": 8080, "TargetPort": 80}]}
        }));
        service_spec(&mut s);
        assert_eq!(
            shown(&s),
            json!({
                "Name": "rep", "Labels": {},
                "TaskTemplate": {
                    "ContainerSpec": {"Image": "busybox", "Isolation": "default"},
                    "RestartPolicy": {"Condition": "on-failure", "MaxAttempts": 0},
                    "ForceUpdate": 0, "Runtime": "container"
                },
                "Mode": {"Replicated": {"Replicas": 2}},
                "UpdateConfig": {"Parallelism": 2, "FailureAction": "continue",
                                 "MaxFailureRatio": 0.0, "Order": "stop-first"},
                "EndpointSpec": {"Mode": "vip", "Ports": [{"Protocol": "tcp",
                    "PublishMode": "ingress", "PublishedPort": 8080, "TargetPort": 80}]}
            })
        );
        let once = s.clone();
        service_spec(&mut s);
        assert_eq!(s, once, "idempotent");
    }

    #[test]
    fn modes_take_dockerds_defaults() {
        for (sent, want) in [
            (json!(null), json!({"Replicated": {"Replicas": 1}})),
            (
                json!({"Replicated": {}}),
                json!({"Replicated": {"Replicas": 1}}),
            ),
            (json!({"Global": {}}), json!({"Global": {}})),
            (json!({"GlobalJob": {}}), json!({"GlobalJob": {}})),
            (
                json!({"ReplicatedJob": {"MaxConcurrent": 3}}),
                json!({"ReplicatedJob": {"MaxConcurrent": 3, "TotalCompletions": 3}}),
            ),
            (
                json!({"ReplicatedJob": {}}),
                json!({"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}),
            ),
        ] {
            let mut s = spec(json!({"Mode": sent}));
            service_spec(&mut s);
            assert_eq!(shown(&s)["Mode"], want);
        }
    }

    #[test]
    fn insert_defaults_is_swarmkits_interpolation() {
        // Docker 20.10's answer to GET /services/{id}?insertDefaults=true for a service created
        // with only an image.
        let mut s =
            spec(json!({"Name": "bare", "TaskTemplate": {"ContainerSpec": {"Image": "b"}}}));
        insert_defaults(&mut s);
        let v = shown(&s);
        let monitor = json!({"Parallelism": 1, "FailureAction": "pause", "Monitor": 5000000000i64,
                             "MaxFailureRatio": 0.0, "Order": "stop-first"});
        assert_eq!(v["UpdateConfig"], monitor);
        assert_eq!(v["RollbackConfig"], monitor);
        assert_eq!(
            v["TaskTemplate"],
            json!({
                "ContainerSpec": {"Image": "b", "Isolation": "default",
                                  "StopGracePeriod": 10000000000i64, "DNSConfig": {}},
                "Resources": {}, "Placement": {}, "ForceUpdate": 0, "Runtime": "container",
                "RestartPolicy": {"Condition": "any", "Delay": 5000000000i64, "MaxAttempts": 0}
            })
        );
        // What the spec says is kept; only the missing monitor is filled.
        let mut s = spec(json!({"UpdateConfig": {"Parallelism": 3, "Monitor": 0},
                                "TaskTemplate": {"RestartPolicy": {"Condition": "none", "Delay": 0}}}));
        insert_defaults(&mut s);
        let v = shown(&s);
        assert_eq!(v["UpdateConfig"]["Parallelism"], 3);
        assert_eq!(v["UpdateConfig"]["Monitor"], 5000000000i64);
        assert_eq!(v["TaskTemplate"]["RestartPolicy"]["Condition"], "none");
        assert_eq!(v["TaskTemplate"]["RestartPolicy"]["Delay"], 0);
    }
}
