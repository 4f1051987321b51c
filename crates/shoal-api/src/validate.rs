//! Spec validation: every refusal names the field and the problem, worded like swarmkit's, and
//! happens before anything is written.

use crate::error::ApiError;
use crate::models::{EndpointPortConfigProtocolEnum, MountType, ServiceSpec, SwarmSpec};
use std::collections::HashSet;

/// The most replicas one service may ask for; more is a typo, not a plan.
pub const MAX_REPLICAS: i64 = 100_000;
/// Largest secret, as in swarmkit.
pub const MAX_SECRET_SIZE: usize = 500 * 1024;
/// Largest config, as in swarmkit.
pub const MAX_CONFIG_SIZE: usize = 1000 * 1024;
/// Shortest node certificate life, in nanoseconds, as swarmkit's `ca.MinNodeCertExpiration`
/// (1h): shorter, nodes would spend their time renewing, or fail to join at all.
pub const MIN_NODE_CERT_EXPIRY_NS: i64 = 3_600_000_000_000;

/// Shortest dispatcher heartbeat period, in nanoseconds (1s). Swarm refuses only negative
/// periods, but a node heartbeats at half the period (no faster than every 100 ms) and is
/// marked down after three silent periods: a 10 ms period marks every node down between two
/// heartbeats and the cluster flaps. At 1s a node has six chances to be heard before it is down.
pub const MIN_HEARTBEAT_NS: i64 = 1_000_000_000;

type Result<T = ()> = std::result::Result<T, ApiError>;

/// Names of services and networks must work as DNS labels (swarmkit's rule).
pub fn dns_name(field: &str, name: &str) -> Result {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_arg(format!(
            "{field}: name {name:?} must be valid as a DNS name component: 1-63 characters [a-zA-Z0-9-_], starting and ending with a letter or digit"
        )))
    }
}

/// Secret and config names (swarmkit's rule: 64 characters of [a-zA-Z0-9-_.]).
pub fn object_name(name: &str) -> Result {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        // swarmkit's words, which do not repeat the name.
        Err(ApiError::invalid_arg(
            "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]",
        ))
    }
}

fn non_negative(field: &str, v: Option<i64>) -> Result {
    match v {
        Some(v) if v < 0 => Err(ApiError::invalid_arg(format!(
            "{field}: must not be negative (got {v})"
        ))),
        _ => Ok(()),
    }
}

/// Checks a service spec for everything that can be judged without the store.
pub fn service_spec(spec: &ServiceSpec) -> Result {
    if let Some(name) = spec.name.as_deref() {
        dns_name("Name", name)?;
    }
    let tt = spec
        .task_template
        .as_ref()
        .ok_or_else(|| ApiError::invalid_arg("TaskTemplate: must be provided"))?;
    let cs = tt
        .container_spec
        .as_ref()
        .ok_or_else(|| ApiError::invalid_arg("TaskTemplate.ContainerSpec: must be provided"))?;
    if cs.image.as_deref().unwrap_or("").trim().is_empty() {
        return Err(ApiError::invalid_arg(
            "ContainerSpec: image reference must be provided",
        ));
    }
    if let Some(mode) = &spec.mode {
        let set = [
            mode.replicated.is_some(),
            mode.global.is_some(),
            mode.replicated_job.is_some(),
            mode.global_job.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set > 1 {
            // dockerd's own check, before swarmkit's: no "rpc error" prefix.
            return Err(ApiError::invalid("must specify only one service mode"));
        }
        if let Some(r) = mode.replicated.as_ref().and_then(|r| r.replicas) {
            replicas("Mode.Replicated.Replicas", r)?;
        }
        if let Some(j) = &mode.replicated_job {
            if let Some(t) = j.total_completions {
                replicas("Mode.ReplicatedJob.TotalCompletions", t)?;
            }
            if let Some(m) = j.max_concurrent {
                replicas("Mode.ReplicatedJob.MaxConcurrent", m)?;
            }
        }
    }
    if crate::objects::Mode::of(spec.mode.as_ref()).is_job() {
        // Swarm's rule: an update runs a job again; there is no rolling update to configure.
        if spec.update_config.is_some() {
            return Err(ApiError::invalid_arg(
                "UpdateConfig: jobs may not have an update config",
            ));
        }
        if spec.rollback_config.is_some() {
            return Err(ApiError::invalid_arg(
                "RollbackConfig: jobs may not have a rollback config",
            ));
        }
    }
    if let Some(expr) = crate::cron::of(spec) {
        if !crate::objects::Mode::of(spec.mode.as_ref()).is_job() {
            return Err(ApiError::invalid_arg(format!(
                "Labels.{}: a schedule needs a job (--mode replicated-job or global-job)",
                crate::cron::LABEL
            )));
        }
        crate::cron::Schedule::parse(expr).map_err(|e| {
            ApiError::invalid_arg(format!("Labels.{}: {expr:?}: {e}", crate::cron::LABEL))
        })?;
    }
    if let Some(rp) = &tt.restart_policy {
        non_negative("TaskTemplate.RestartPolicy.Delay", rp.delay)?;
        non_negative("TaskTemplate.RestartPolicy.MaxAttempts", rp.max_attempts)?;
        non_negative("TaskTemplate.RestartPolicy.Window", rp.window)?;
        // An empty condition is dockerd's "any" (`restartPolicyToGRPC`), filled by `moby`.
    }
    if let Some(res) = &tt.resources {
        for (what, l) in [("Limits", &res.limits)] {
            if let Some(l) = l {
                non_negative(&format!("Resources.{what}.NanoCPUs"), l.nano_cpus)?;
                non_negative(&format!("Resources.{what}.MemoryBytes"), l.memory_bytes)?;
                non_negative(&format!("Resources.{what}.Pids"), l.pids)?;
                if let Some(m) = l.memory_bytes {
                    if m > 0 && m < 6 * 1024 * 1024 {
                        return Err(ApiError::invalid_arg(format!(
                            "Resources.Limits.MemoryBytes: {m} is below the minimum of 6MB a container needs"
                        )));
                    }
                }
            }
        }
        if let Some(r) = &res.reservations {
            non_negative("Resources.Reservations.NanoCPUs", r.nano_cpus)?;
            non_negative("Resources.Reservations.MemoryBytes", r.memory_bytes)?;
        }
    }
    non_negative("ContainerSpec.StopGracePeriod", cs.stop_grace_period)?;
    if let Some(hc) = &cs.health_check {
        non_negative("ContainerSpec.Healthcheck.Interval", hc.interval)?;
        non_negative("ContainerSpec.Healthcheck.Timeout", hc.timeout)?;
        non_negative("ContainerSpec.Healthcheck.Retries", hc.retries)?;
        non_negative("ContainerSpec.Healthcheck.StartPeriod", hc.start_period)?;
    }
    for (i, m) in cs.mounts.iter().flatten().enumerate() {
        let target = m.target.as_deref().unwrap_or("");
        if !target.starts_with('/') {
            return Err(ApiError::invalid_arg(format!(
                "ContainerSpec.Mounts[{i}].Target: invalid mount target {target:?}, must be an absolute path"
            )));
        }
        match m.typ {
            Some(MountType::BIND) => {
                let src = m.source.as_deref().unwrap_or("");
                if !src.starts_with('/') {
                    return Err(ApiError::invalid_arg(format!(
                        "ContainerSpec.Mounts[{i}].Source: invalid bind mount source {src:?}, must be an absolute path"
                    )));
                }
            }
            Some(MountType::VOLUME) | Some(MountType::TMPFS) | None => {}
            Some(other) => {
                return Err(ApiError::invalid_arg(format!(
                    "ContainerSpec.Mounts[{i}].Type: mount type {other} is not supported"
                )))
            }
        }
    }
    file_refs(
        ("Secrets", "SecretID", "secret"),
        cs.secrets.iter().flatten().map(|s| {
            let id = s.secret_id.as_deref().unwrap_or("");
            MountedRef {
                id,
                label: s.secret_name.as_deref().unwrap_or(id),
                file: s.file.as_ref().and_then(|f| f.name.as_deref()),
            }
        }),
        secret_target,
        |file| format!("secret references {file:?} more than once"),
    )?;
    file_refs(
        ("Configs", "ConfigID", "config"),
        cs.configs.iter().flatten().map(|c| MountedRef {
            id: c.config_id.as_deref().unwrap_or(""),
            label: c.config_name.as_deref().unwrap_or("?"),
            file: c.file.as_ref().and_then(|f| f.name.as_deref()),
        }),
        config_target,
        |file| format!("config target {file:?} used more than once"),
    )?;
    let nets = tt
        .networks
        .iter()
        .flatten()
        .chain(spec.networks.iter().flatten());
    for n in nets {
        if n.target.as_deref().unwrap_or("").is_empty() {
            return Err(ApiError::invalid_arg("Networks: Target must be provided"));
        }
    }
    if let Some(ep) = &spec.endpoint_spec {
        let mut seen = HashSet::new();
        for (i, p) in ep.ports.iter().flatten().enumerate() {
            let target = p.target_port.unwrap_or(0);
            if !(1..=65535).contains(&target) {
                return Err(ApiError::invalid_arg(format!(
                    "EndpointSpec.Ports[{i}].TargetPort: {target} is not a valid port (1-65535)"
                )));
            }
            let published = p.published_port.unwrap_or(0);
            if !(0..=65535).contains(&published) {
                return Err(ApiError::invalid_arg(format!(
                    "EndpointSpec.Ports[{i}].PublishedPort: {published} is not a valid port (0-65535)"
                )));
            }
            if p.protocol == Some(EndpointPortConfigProtocolEnum::SCTP) {
                return Err(ApiError::invalid_arg(format!(
                    "EndpointSpec.Ports[{i}].Protocol: sctp is not supported by shoal"
                )));
            }
            let proto = p.protocol.map(|p| p.to_string()).unwrap_or_default();
            if published != 0 && !seen.insert((published, proto)) {
                return Err(ApiError::invalid_arg(format!(
                    "EndpointSpec.Ports: duplicate published port {published} provided"
                )));
            }
        }
    }
    if let Some(uc) = &spec.update_config {
        non_negative("UpdateConfig.Parallelism", uc.parallelism)?;
        non_negative("UpdateConfig.Delay", uc.delay)?;
        non_negative("UpdateConfig.Monitor", uc.monitor)?;
        if let Some(r) = uc.max_failure_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err(ApiError::invalid_arg(format!(
                    "UpdateConfig.MaxFailureRatio: {r} must be between 0 and 1"
                )));
            }
        }
    }
    Ok(())
}

/// Checks a spec for `swarm update` as swarmkit's `validateClusterSpec` does. `current_name` is
/// the cluster's, which cannot change; an absent or zero value means "keep what is set".
pub fn swarm_spec(spec: &SwarmSpec, current_name: &str) -> Result {
    if let Some(name) = spec.name.as_deref().filter(|n| !n.is_empty()) {
        if name != current_name {
            return Err(ApiError::invalid_arg(format!(
                "Name: modification of cluster name is not allowed ({current_name:?} to {name:?})"
            )));
        }
    }
    let expiry = spec.ca_config.as_ref().and_then(|c| c.node_cert_expiry);
    if let Some(e) = expiry.filter(|e| *e != 0 && *e < MIN_NODE_CERT_EXPIRY_NS) {
        return Err(ApiError::invalid_arg(format!(
            "CAConfig.NodeCertExpiry: minimum certificate expiry time is: 1h0m0s (got {e}ns)"
        )));
    }
    let heartbeat = spec.dispatcher.as_ref().and_then(|d| d.heartbeat_period);
    if let Some(h) = heartbeat.filter(|h| *h < 0) {
        return Err(ApiError::invalid_arg(format!(
            "Dispatcher.HeartbeatPeriod: heartbeat time period cannot be a negative duration (got {h}ns)"
        )));
    }
    if let Some(h) = heartbeat.filter(|h| *h != 0 && *h < MIN_HEARTBEAT_NS) {
        return Err(ApiError::invalid_arg(format!(
            "Dispatcher.HeartbeatPeriod: minimum heartbeat time period is: 1s (got {h}ns)"
        )));
    }
    if let Some(r) = &spec.raft {
        non_negative("Raft.ElectionTick", r.election_tick)?;
        non_negative("Raft.HeartbeatTick", r.heartbeat_tick)?;
        // etcd raft's rule, which swarmkit's raft node keeps: a follower must miss more than
        // one heartbeat before it calls an election.
        let e = r.election_tick.unwrap_or(0);
        let h = r.heartbeat_tick.unwrap_or(0);
        if e > 0 && h > 0 && e <= h {
            return Err(ApiError::invalid_arg(format!(
                "Raft.ElectionTick: election tick must be greater than heartbeat tick (got {e} and {h})"
            )));
        }
    }
    non_negative(
        "Orchestration.TaskHistoryRetentionLimit",
        spec.orchestration
            .as_ref()
            .and_then(|o| o.task_history_retention_limit),
    )
}

/// A secret or config a task mounts as a file: its ID, how to name it in errors, its file name.
struct MountedRef<'a> {
    id: &'a str,
    label: &'a str,
    file: Option<&'a str>,
}

/// Checks the secrets or configs of a container spec alike: each names its object and a file,
/// and no two land on the same path (`target` says where a file lands, in words of the kind).
fn file_refs<'a>(
    (field, id_field, noun): (&str, &str, &str),
    refs: impl Iterator<Item = MountedRef<'a>>,
    target: fn(&str) -> String,
    duplicate: impl Fn(&str) -> String,
) -> Result {
    let mut targets = HashSet::new();
    for r in refs {
        if r.id.is_empty() {
            return Err(ApiError::invalid_arg(format!(
                "ContainerSpec.{field}: {id_field} must be provided"
            )));
        }
        let file = r.file.unwrap_or("");
        if file.is_empty() {
            return Err(ApiError::invalid_arg(format!(
                "ContainerSpec.{field}: {noun} {}: File.Name must be provided",
                r.label
            )));
        }
        if !targets.insert(target(file)) {
            return Err(ApiError::invalid_arg(format!(
                "ContainerSpec.{field}: {}",
                duplicate(file)
            )));
        }
    }
    Ok(())
}

fn replicas(field: &str, n: i64) -> Result {
    if n < 0 {
        return Err(ApiError::invalid_arg(format!(
            "{field}: must not be negative (got {n})"
        )));
    }
    if n > MAX_REPLICAS {
        return Err(ApiError::invalid_arg(format!(
            "{field}: {n} exceeds the maximum of {MAX_REPLICAS}"
        )));
    }
    Ok(())
}

/// Where a secret file lands in the container: relative names go under /run/secrets.
pub fn secret_target(name: &str) -> String {
    if name.starts_with('/') {
        name.to_string()
    } else {
        format!("/run/secrets/{name}")
    }
}

/// Where a config file lands: relative names go under the container's root, as Docker does.
pub fn config_target(name: &str) -> String {
    if name.starts_with('/') {
        name.to_string()
    } else {
        format!("/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> ServiceSpec {
        serde_json::from_str(json).unwrap()
    }

    fn check(json: &str) -> std::result::Result<(), String> {
        service_spec(&spec(json)).map_err(|e| {
            assert_eq!(e.status, 400);
            e.message
        })
    }

    #[test]
    fn accepts_what_the_cli_sends() {
        check(r#"{"Name":"demo_web","TaskTemplate":{"ContainerSpec":{"Image":"shoal-test/web:latest"}},
            "Mode":{"Replicated":{"Replicas":3}},
            "EndpointSpec":{"Ports":[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,"PublishMode":"ingress"}]}}"#)
        .unwrap();
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (
                r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{}}}"#,
                "image reference",
            ),
            (
                r#"{"Name":"bad name","TaskTemplate":{"ContainerSpec":{"Image":"a"}}}"#,
                "Name",
            ),
            (
                r#"{"Name":"-x","TaskTemplate":{"ContainerSpec":{"Image":"a"}}}"#,
                "DNS name",
            ),
            (
                r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"a"}},"Mode":{"Replicated":{"Replicas":-1}}}"#,
                "Mode.Replicated.Replicas",
            ),
            (
                r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"a"}},"Mode":{"Replicated":{"Replicas":100000000}}}"#,
                "exceeds the maximum",
            ),
            (
                r#"{"Name":"x","Mode":{"GlobalJob":{}},"UpdateConfig":{},"TaskTemplate":{"ContainerSpec":{"Image":"a"}}}"#,
                "UpdateConfig: jobs may not have an update config",
            ),
            (
                r#"{"Name":"x","Labels":{"shoal.cron":"* * * * *"},"TaskTemplate":{"ContainerSpec":{"Image":"a"}}}"#,
                "Labels.shoal.cron: a schedule needs a job",
            ),
            (
                r#"{"Name":"x","Labels":{"shoal.cron":"61 * * * *"},"Mode":{"GlobalJob":{}},"TaskTemplate":{"ContainerSpec":{"Image":"a"}}}"#,
                "Labels.shoal.cron: \"61 * * * *\": minute: 61 is outside 0-59",
            ),
            (
                r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"a","Mounts":[{"Type":"bind","Source":"rel","Target":"/x"}]}}}"#,
                "Mounts[0].Source",
            ),
            (
                r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"a","Mounts":[{"Type":"volume","Target":"x"}]}}}"#,
                "Mounts[0].Target",
            ),
            (
                r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"a"}},"EndpointSpec":{"Ports":[{"TargetPort":0}]}}"#,
                "TargetPort",
            ),
            (
                r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"a"}},"EndpointSpec":{"Ports":[{"TargetPort":80,"PublishedPort":70000}]}}"#,
                "PublishedPort",
            ),
            (
                r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"a"}},"EndpointSpec":{"Ports":[{"TargetPort":80,"PublishedPort":8080},{"TargetPort":81,"PublishedPort":8080}]}}"#,
                "duplicate published port",
            ),
            (
                r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"a"},"RestartPolicy":{"Delay":-5}}}"#,
                "RestartPolicy.Delay",
            ),
            (
                r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"a","Secrets":[{"SecretID":"s","SecretName":"s","File":{"Name":"a"}},{"SecretID":"t","SecretName":"t","File":{"Name":"a"}}]}}}"#,
                "more than once",
            ),
            (
                r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"a"},"Resources":{"Limits":{"MemoryBytes":1000}}}}"#,
                "MemoryBytes",
            ),
            (
                r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"a"}},"UpdateConfig":{"MaxFailureRatio":2.0}}"#,
                "MaxFailureRatio",
            ),
        ];
        for (json, want) in cases {
            let msg = check(json).expect_err(json);
            assert!(msg.contains(want), "{json}: {msg:?} lacks {want:?}");
            assert!(
                msg.starts_with("rpc error: code = InvalidArgument"),
                "{msg}"
            );
        }
    }

    #[test]
    fn two_modes_are_refused_as_dockerd_refuses_them() {
        let spec: ServiceSpec = serde_json::from_str(
            r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"a"}},"Mode":{"Replicated":{"Replicas":1},"Global":{}}}"#,
        )
        .unwrap();
        let e = service_spec(&spec).unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (400, "must specify only one service mode")
        );
    }

    #[test]
    fn swarm_specs_as_swarmkit_checks_them() {
        let check = |json: &str| {
            let spec: SwarmSpec = serde_json::from_str(json).unwrap();
            swarm_spec(&spec, "default").map_err(|e| e.message)
        };
        check(r#"{"Name":"default","CAConfig":{"NodeCertExpiry":3600000000000},"Dispatcher":{"HeartbeatPeriod":0}}"#)
            .unwrap();
        check(r#"{"Name":"","CAConfig":{"NodeCertExpiry":0}}"#).unwrap();
        for (json, want) in [
            (
                r#"{"Name":"prod"}"#,
                "Name: modification of cluster name is not allowed",
            ),
            (
                r#"{"CAConfig":{"NodeCertExpiry":1000000000}}"#,
                "CAConfig.NodeCertExpiry: minimum certificate expiry time is: 1h0m0s",
            ),
            (
                r#"{"CAConfig":{"NodeCertExpiry":-1}}"#,
                "CAConfig.NodeCertExpiry: minimum",
            ),
            (
                r#"{"Dispatcher":{"HeartbeatPeriod":-1}}"#,
                "Dispatcher.HeartbeatPeriod: heartbeat time period cannot be a negative duration",
            ),
            (
                r#"{"Dispatcher":{"HeartbeatPeriod":10000000}}"#,
                "Dispatcher.HeartbeatPeriod: minimum heartbeat time period is: 1s (got 10000000ns)",
            ),
            (
                r#"{"Raft":{"ElectionTick":1,"HeartbeatTick":1}}"#,
                "Raft.ElectionTick: election tick must be greater than heartbeat tick",
            ),
            (
                r#"{"Raft":{"HeartbeatTick":-1}}"#,
                "Raft.HeartbeatTick: must not be negative",
            ),
            (
                r#"{"Orchestration":{"TaskHistoryRetentionLimit":-2}}"#,
                "Orchestration.TaskHistoryRetentionLimit: must not be negative",
            ),
        ] {
            let msg = check(json).expect_err(json);
            assert!(msg.contains(want), "{json}: {msg:?} lacks {want:?}");
            assert!(
                msg.starts_with("rpc error: code = InvalidArgument"),
                "{msg}"
            );
        }
    }

    #[test]
    fn object_names() {
        assert!(object_name("db_password.v2").is_ok());
        assert!(object_name("").is_err());
        assert!(object_name(".x").is_err());
        assert!(object_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn file_targets() {
        assert_eq!(secret_target("pw"), "/run/secrets/pw");
        assert_eq!(secret_target("/etc/pw"), "/etc/pw");
        assert_eq!(config_target("app.conf"), "/app.conf");
    }
}
