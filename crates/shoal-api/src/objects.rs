//! Objects as shoal stores them: Docker's model plus the server-side fields Docker keeps but its
//! generated models leave out (a service's previous spec, a task's network attachments).

use crate::models::{ObjectVersion, Service, ServiceSpec, ServiceSpecMode, Task, TaskState};
use serde::{Deserialize, Serialize};

/// A service as stored: Docker's `Service` plus its previous spec and the spec generation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredService {
    /// Docker's view of the service.
    #[serde(flatten)]
    pub service: Service,
    /// The spec before the last update, for `docker service rollback`.
    #[serde(
        rename = "PreviousSpec",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub previous_spec: Option<ServiceSpec>,
    /// Names the current task template's content: a task made from another one is out of date.
    /// A template seen before (a rollback) gets its old number back, so the tasks that never
    /// left it are not replaced.
    #[serde(rename = "ShoalSpecVersion", default)]
    pub spec_version: u64,
    /// The version of `previous_spec`, restored with it by a rollback.
    #[serde(rename = "ShoalPreviousSpecVersion", default)]
    pub previous_spec_version: u64,
    /// The highest spec version ever given out, so a new template never reuses a number.
    #[serde(rename = "ShoalLastSpecVersion", default)]
    pub last_spec_version: u64,
    /// Earlier specs, newest first (at most [`HISTORY_LIMIT`]), for `shoal service history`.
    #[serde(
        rename = "ShoalHistory",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<SpecRevision>,
    /// A periodic job's next due run (RFC 3339); None until the control loop first plans it.
    #[serde(
        rename = "ShoalCronNext",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cron_next: Option<String>,
    /// Due runs of a periodic job that were skipped because the previous run had not finished.
    #[serde(rename = "ShoalCronSkipped", default)]
    pub cron_skipped: u64,
    /// The nodes its node-local volumes live on (issue 19): its tasks go there only, as Nomad's
    /// host volumes pin theirs. Derived from its mounts when it is written.
    #[serde(
        rename = "ShoalVolumePins",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub volume_pins: Vec<VolumePin>,
}

/// A node-local volume a service mounts, and the node (name or ID, as the user gave it) it is on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumePin {
    /// The volume's name.
    pub volume: String,
    /// The node's name or ID.
    pub node: String,
}

/// How many earlier specs a service keeps (as Kubernetes keeps ten ReplicaSets by default).
pub const HISTORY_LIMIT: usize = 10;

/// One earlier spec of a service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpecRevision {
    /// The spec version its tasks carried.
    #[serde(rename = "Version")]
    pub version: u64,
    /// When it stopped being the current spec.
    #[serde(rename = "ReplacedAt", default)]
    pub replaced_at: String,
    /// The spec itself.
    #[serde(rename = "Spec")]
    pub spec: ServiceSpec,
}

/// Which kind of scheduling a service asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// N tasks anywhere.
    Replicated(u64),
    /// One task on every eligible node.
    Global,
    /// Run to completion `total` times, at most `max_concurrent` at once.
    ReplicatedJob {
        /// Completions wanted.
        total: u64,
        /// Tasks allowed to run at once.
        max_concurrent: u64,
    },
    /// Run to completion once on every eligible node.
    GlobalJob,
}

impl Mode {
    /// True for modes whose tasks run to completion.
    pub fn is_job(self) -> bool {
        matches!(self, Mode::ReplicatedJob { .. } | Mode::GlobalJob)
    }

    /// The mode a spec asks for (replicated 1 when none is given, as Docker defaults).
    pub fn of(mode: Option<&ServiceSpecMode>) -> Mode {
        let Some(m) = mode else {
            return Mode::Replicated(1);
        };
        if m.global.is_some() {
            Mode::Global
        } else if let Some(j) = &m.replicated_job {
            let max_concurrent = j.max_concurrent.unwrap_or(1).max(0) as u64;
            let total = j.total_completions.unwrap_or(max_concurrent as i64).max(0) as u64;
            Mode::ReplicatedJob {
                total,
                max_concurrent: if max_concurrent == 0 {
                    1
                } else {
                    max_concurrent
                },
            }
        } else if m.global_job.is_some() {
            Mode::GlobalJob
        } else {
            let n = m
                .replicated
                .as_ref()
                .and_then(|r| r.replicas)
                .unwrap_or(1)
                .max(0) as u64;
            Mode::Replicated(n)
        }
    }
}

impl StoredService {
    /// The service's ID.
    pub fn id(&self) -> &str {
        self.service.id.as_deref().unwrap_or_default()
    }
    /// The service's name.
    pub fn name(&self) -> &str {
        self.spec().name.as_deref().unwrap_or_default()
    }
    /// The current spec (an empty one if missing, which validation prevents).
    pub fn spec(&self) -> &ServiceSpec {
        static EMPTY: std::sync::OnceLock<ServiceSpec> = std::sync::OnceLock::new();
        self.service
            .spec
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(ServiceSpec::default))
    }
    /// The scheduling mode.
    pub fn mode(&self) -> Mode {
        Mode::of(self.spec().mode.as_ref())
    }
    /// The current job iteration: a job's tasks from another one are stale.
    pub fn job_iteration(&self) -> u64 {
        self.service
            .job_status
            .as_ref()
            .and_then(|j| j.job_iteration.as_ref())
            .and_then(|v| v.index)
            .unwrap_or(0)
    }
    /// A periodic job's schedule label, if it has one.
    pub fn cron(&self) -> Option<&str> {
        crate::cron::of(self.spec())
    }

    /// Makes `spec` current and the old one previous (and, if its tasks differ, history).
    /// Returns true when tasks must be replaced: the task template or endpoint changed. A
    /// template seen before takes back its old version, so a rollback replaces only the tasks
    /// the update had replaced.
    pub fn replace_spec(&mut self, spec: ServiceSpec, now: &str) -> bool {
        self.last_spec_version = self.last_spec_version.max(self.spec_version);
        let old = self.spec().clone();
        let old_version = self.spec_version;
        let wanted = template_of(&spec);
        let changed = wanted != template_of(&old);
        let version = if !changed {
            old_version
        } else {
            self.history
                .iter()
                .find(|r| template_of(&r.spec) == wanted)
                .map(|r| r.version)
                .or_else(|| {
                    self.previous_spec
                        .as_ref()
                        .filter(|p| self.previous_spec_version > 0 && template_of(p) == wanted)
                        .map(|_| self.previous_spec_version)
                })
                .unwrap_or(self.last_spec_version + 1)
        };
        if changed {
            self.history
                .retain(|r| r.version != old_version && r.version != version);
            self.history.insert(
                0,
                SpecRevision {
                    version: old_version,
                    replaced_at: now.to_string(),
                    spec: old.clone(),
                },
            );
            self.history.truncate(HISTORY_LIMIT);
        }
        self.previous_spec = Some(old);
        self.previous_spec_version = old_version;
        self.service.spec = Some(spec);
        self.spec_version = version;
        self.last_spec_version = self.last_spec_version.max(version);
        changed
    }
}

/// What of a spec its tasks are made from: a change here replaces them. Compared as Docker
/// shows them ([`crate::moby::service_spec`]), so a spec stored before shoal filled Docker's
/// defaults equals the same spec sent back with them.
fn template_of(spec: &ServiceSpec) -> (serde_json::Value, serde_json::Value) {
    let mut spec = spec.clone();
    crate::moby::service_spec(&mut spec);
    (
        serde_json::to_value(&spec.task_template).unwrap_or_default(),
        serde_json::to_value(&spec.endpoint_spec).unwrap_or_default(),
    )
}

/// One network a task is attached to, with its address there (Docker's `NetworksAttachments`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// The network.
    #[serde(rename = "Network")]
    pub network: AttachedNetwork,
    /// The task's addresses on it, in CIDR form (`10.0.1.5/24`).
    #[serde(rename = "Addresses", default)]
    pub addresses: Vec<String>,
    /// Extra DNS names the task's service answers to on this network.
    #[serde(rename = "Aliases", default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// The part of a network a task attachment carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttachedNetwork {
    /// Network ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Network name and labels.
    #[serde(rename = "Spec", default)]
    pub spec: AttachedNetworkSpec,
}

/// Name of an attached network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttachedNetworkSpec {
    /// Network name.
    #[serde(rename = "Name", default)]
    pub name: String,
}

/// A task as stored: Docker's `Task` plus its network attachments and spec generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredTask {
    /// Docker's view of the task.
    #[serde(flatten)]
    pub task: Task,
    /// Addresses on each network.
    #[serde(
        rename = "NetworksAttachments",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub networks_attachments: Vec<NetworkAttachment>,
    /// The service spec version the task was made from.
    #[serde(rename = "ShoalSpecVersion", default)]
    pub spec_version: u64,
    /// The service's name, which the agent needs for container names and labels.
    #[serde(rename = "ShoalServiceName", default)]
    pub service_name: String,
    /// When the manager learnt the task was running (and healthy), on its own clock: an
    /// update's delay and failure monitor count from here.
    #[serde(
        rename = "ShoalRunningAt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub running_at: Option<String>,
}

impl StoredTask {
    /// The task's ID.
    pub fn id(&self) -> &str {
        self.task.id.as_deref().unwrap_or_default()
    }
    /// The service the task belongs to.
    pub fn service_id(&self) -> &str {
        self.task.service_id.as_deref().unwrap_or_default()
    }
    /// The node the task is assigned to, if any.
    pub fn node_id(&self) -> Option<&str> {
        self.task.node_id.as_deref().filter(|n| !n.is_empty())
    }
    /// Observed state (`new` if unset).
    pub fn state(&self) -> TaskState {
        self.task
            .status
            .as_ref()
            .and_then(|s| s.state)
            .unwrap_or(TaskState::NEW)
    }
    /// Desired state (`running` if unset).
    pub fn desired(&self) -> TaskState {
        self.task.desired_state.unwrap_or(TaskState::RUNNING)
    }
    /// True while the task is meant to run: `running`, `complete` (a job's task, run until it
    /// exits), or `ready` (prepared, and started once the task it replaces has stopped, as a
    /// stop-first update does).
    pub fn meant_to_run(&self) -> bool {
        matches!(
            self.desired(),
            TaskState::RUNNING | TaskState::COMPLETE | TaskState::READY
        )
    }
    /// The job iteration the task was made for (None for a service's task).
    pub fn job_iteration(&self) -> Option<u64> {
        self.task.job_iteration.as_ref().and_then(|v| v.index)
    }
    /// Slot number of a replicated task (0 for global tasks).
    pub fn slot(&self) -> u64 {
        self.task.slot.unwrap_or(0).max(0) as u64
    }
    /// A network attachment (a plain container's address on an attachable network), not a
    /// service's task: it has no container of its own for the agent to run.
    pub fn is_attachment(&self) -> bool {
        self.task
            .spec
            .as_ref()
            .is_some_and(|s| s.network_attachment_spec.is_some())
    }
}

/// Order of task states, so "at most running" and "terminal" comparisons read like Swarm's.
pub fn state_rank(s: TaskState) -> u8 {
    match s {
        TaskState::NEW => 0,
        TaskState::ALLOCATED => 1,
        TaskState::PENDING => 2,
        TaskState::ASSIGNED => 3,
        TaskState::ACCEPTED => 4,
        TaskState::PREPARING => 5,
        TaskState::READY => 6,
        TaskState::STARTING => 7,
        TaskState::RUNNING => 8,
        TaskState::COMPLETE => 9,
        TaskState::SHUTDOWN => 10,
        TaskState::FAILED => 11,
        TaskState::REJECTED => 12,
        TaskState::REMOVE => 13,
        TaskState::ORPHANED => 14,
    }
}

/// True for a desired state that has the container running now: `running`, or `complete` for a
/// job's task (run to completion).
pub fn runs(desired: TaskState) -> bool {
    matches!(desired, TaskState::RUNNING | TaskState::COMPLETE)
}

/// True for states a task never leaves (it has stopped, one way or another).
pub fn is_terminal(s: TaskState) -> bool {
    state_rank(s) > state_rank(TaskState::RUNNING)
}

/// `Version{Index}` as Docker shows it.
pub fn version(index: u64) -> Option<ObjectVersion> {
    Some(ObjectVersion { index: Some(index) })
}

/// A shared volume (issue 19), a cluster object: made by `docker volume create -d shoal` on a
/// manager, or by a service's mount that gives a shoal-mounted driver and options (a stack's
/// `volumes:` section), and mounted by each node that runs a task using it. Credential option
/// values are not here: `credentials` names the secret holding each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoredVolume {
    /// Object ID.
    pub id: String,
    /// Unique name: what mounts name as their source.
    pub name: String,
    /// `shoal`, or `local` with a network filesystem `type`.
    pub driver: String,
    /// The options, without credentials.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    /// Credential option -> ID of the secret that holds its value.
    #[serde(default)]
    pub credentials: std::collections::BTreeMap<String, String>,
    /// User labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// When its options last changed (RFC 3339).
    pub updated_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{ServiceSpecModeReplicated, TaskStatus};

    #[test]
    fn stored_task_round_trips_docker_json() {
        let json = r#"{"ID":"t1","ServiceID":"s1","Slot":2,"DesiredState":"running",
            "Status":{"State":"running","Timestamp":"2024-01-01T00:00:00Z"},
            "NetworksAttachments":[{"Network":{"ID":"n1","Spec":{"Name":"net"}},"Addresses":["10.0.1.5/24"]}]}"#;
        let t: StoredTask = serde_json::from_str(json).unwrap();
        assert_eq!(t.id(), "t1");
        assert_eq!(t.slot(), 2);
        assert_eq!(t.state(), TaskState::RUNNING);
        assert_eq!(t.networks_attachments[0].addresses, vec!["10.0.1.5/24"]);
        let back = serde_json::to_value(&t).unwrap();
        assert_eq!(
            back["NetworksAttachments"][0]["Network"]["Spec"]["Name"],
            "net"
        );
        assert_eq!(back["Status"]["State"], "running");
        let _ = TaskStatus::default();
    }

    #[test]
    fn mode_defaults_to_one_replica() {
        assert_eq!(Mode::of(None), Mode::Replicated(1));
        let m = ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(3) }),
            ..Default::default()
        };
        assert_eq!(Mode::of(Some(&m)), Mode::Replicated(3));
        let g: ServiceSpecMode = serde_json::from_str(r#"{"Global":{}}"#).unwrap();
        assert_eq!(Mode::of(Some(&g)), Mode::Global);
    }

    #[test]
    fn a_template_seen_before_gets_its_version_back() {
        let spec = |image: &str, replicas: i64| -> ServiceSpec {
            serde_json::from_value(serde_json::json!({
                "Name": "web",
                "Mode": {"Replicated": {"Replicas": replicas}},
                "TaskTemplate": {"ContainerSpec": {"Image": image}}
            }))
            .unwrap()
        };
        let mut s = StoredService::default();
        s.service.spec = Some(spec("a", 1));
        s.spec_version = 1;
        assert!(
            !s.replace_spec(spec("a", 3), "t1"),
            "scaling replaces no task"
        );
        assert_eq!((s.spec_version, s.history.len()), (1, 0));
        assert!(s.replace_spec(spec("b", 3), "t2"));
        assert_eq!((s.spec_version, s.previous_spec_version), (2, 1));
        // A rollback: the previous template, with its version, so slots never updated stay.
        let prev = s.previous_spec.clone().unwrap();
        assert!(s.replace_spec(prev, "t3"));
        assert_eq!((s.spec_version, s.previous_spec_version), (1, 2));
        assert!(s.replace_spec(spec("c", 3), "t4"));
        assert_eq!(s.spec_version, 3, "a new template never reuses a number");
        assert!(s.replace_spec(spec("b", 2), "t5"));
        assert_eq!(s.spec_version, 2, "found in history");
        let versions: Vec<u64> = s.history.iter().map(|r| r.version).collect();
        assert_eq!(
            versions,
            vec![3, 1],
            "newest first, the current one left out"
        );
        for i in 0..20 {
            s.replace_spec(spec(&format!("img{i}"), 1), "t");
        }
        assert_eq!(s.history.len(), HISTORY_LIMIT);
    }

    #[test]
    fn terminal_states() {
        assert!(!is_terminal(TaskState::RUNNING));
        assert!(is_terminal(TaskState::FAILED));
        assert!(is_terminal(TaskState::SHUTDOWN));
        assert!(!is_terminal(TaskState::PENDING));
    }
}
