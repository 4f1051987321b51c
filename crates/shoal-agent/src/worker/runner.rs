//! One task's runner: observes the task's container, asks [`step`] what to do, reports and acts
//! through the executor, until the step says it is done. Also what the task needs before its
//! container exists (network names, addresses, files).

use super::step::{step, Failure, Observation, Observed, Phase, StatusUpdate, TaskAction};
use super::WorkerConfig;
use crate::executor::{ExecError, Executor, Found, Prepared};
use crate::files::FilesError;
use shoal_api::dispatch::{NodeAssignments, TaskStatusReport};
use shoal_api::models::{ContainerStatus, TaskState, TaskStatus};
use shoal_api::objects::StoredTask;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Why a task's container cannot be made: shown as the rejected task's error.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The task is on a network this node could not set up.
    #[error("network {network} is not available on this node")]
    NetworkUnavailable {
        /// The network's name.
        network: String,
    },
    /// Its secret or config files could not be written.
    #[error(transparent)]
    Files(#[from] FilesError),
}

/// What the executor needs besides the task: the engine networks and addresses of its
/// attachments, its DNS server, and its secret and config files (written now).
pub(super) fn prepare<E: Executor>(
    cfg: &WorkerConfig<E>,
    t: &StoredTask,
    a: &NodeAssignments,
    nets: &HashMap<String, String>,
) -> Result<Prepared, PrepareError> {
    let mut p = Prepared::default();
    if cfg.network.is_some() {
        for att in &t.networks_attachments {
            let name =
                nets.get(&att.network.id)
                    .ok_or_else(|| PrepareError::NetworkUnavailable {
                        network: att.network.spec.name.clone(),
                    })?;
            let ip = att
                .addresses
                .first()
                .and_then(|c| c.split('/').next())
                .unwrap_or_default()
                .to_string();
            p.networks.push((name.clone(), ip));
        }
        if let Some(first) = t.networks_attachments.first() {
            if let Some(n) = a.networks.iter().find(|n| n.id == first.network.id) {
                p.dns.push(n.gateway.to_string());
            }
        }
    }
    p.files = cfg.files.prepare(t, &a.secrets, &a.configs)?;
    p.volumes = shared_volumes(t, a);
    Ok(p)
}

/// The shared volumes (of the assignments) that the task's mounts name as their source.
fn shared_volumes(t: &StoredTask, a: &NodeAssignments) -> Vec<shoal_api::dispatch::VolumePayload> {
    use shoal_api::models::MountType;
    let mounts = t
        .task
        .spec
        .as_ref()
        .and_then(|s| s.container_spec.as_ref())
        .and_then(|c| c.mounts.as_ref());
    let mut out: Vec<shoal_api::dispatch::VolumePayload> = Vec::new();
    for m in mounts.into_iter().flatten() {
        if m.typ != Some(MountType::VOLUME) {
            continue;
        }
        let Some(src) = m.source.as_deref() else {
            continue;
        };
        if let Some(v) = a.volumes.iter().find(|v| v.name == src) {
            if !out.iter().any(|o| o.name == v.name) {
                out.push(v.clone());
            }
        }
    }
    out
}

/// Mounts the task's shared volumes on this node; the first failure is returned (the caller
/// keeps the task waiting in `preparing` and tries again later).
async fn mount_volumes<E: Executor>(
    cfg: &WorkerConfig<E>,
    task: &StoredTask,
    p: &mut Prepared,
) -> Result<(), crate::volumes::VolumeError> {
    for v in &p.volumes {
        if p.binds.contains_key(&v.name) {
            continue;
        }
        let path = cfg.volumes.acquire(task.id(), v).await?;
        p.binds.insert(v.name.clone(), path);
    }
    Ok(())
}

/// The wait before mounting a task's volume again: 1 s doubling to 16 s (a storage server back
/// up is used within 16 s; a dead one costs a mount attempt every 16 s).
fn volume_backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_secs(1u64 << attempt.min(4))
}

/// The last status each runner reported, kept so a report the manager never stored is sent again.
pub(super) type LastReported = Arc<std::sync::Mutex<HashMap<String, TaskStatus>>>;

/// Sends one task's status updates to the dispatcher and remembers the last.
pub(super) struct Reporter {
    pub(super) task_id: String,
    pub(super) tx: mpsc::Sender<Vec<TaskStatusReport>>,
    pub(super) last: LastReported,
}

impl Reporter {
    /// `preparing` with a message that changes as the preparation goes on.
    async fn progress(&self, message: &str) {
        let status = TaskStatus {
            timestamp: Some(shoal_api::id::now()),
            state: Some(TaskState::PREPARING),
            message: Some(message.to_string()),
            err: None,
            container_status: None,
            port_status: None,
        };
        if let Ok(mut m) = self.last.lock() {
            m.insert(self.task_id.clone(), status.clone());
        }
        let report = TaskStatusReport {
            task_id: self.task_id.clone(),
            status,
        };
        if self.tx.send(vec![report]).await.is_err() {
            tracing::debug!(task = %self.task_id, "dispatcher gone; progress not reported");
        }
    }

    async fn send(&self, u: StatusUpdate, container: Option<ContainerStatus>) {
        let status = TaskStatus {
            timestamp: Some(shoal_api::id::now()),
            state: Some(u.state),
            message: Some(u.message.to_string()),
            err: u.err,
            container_status: container,
            port_status: None,
        };
        if let Ok(mut m) = self.last.lock() {
            m.insert(self.task_id.clone(), status.clone());
        }
        if self
            .tx
            .send(vec![TaskStatusReport {
                task_id: self.task_id.clone(),
                status,
            }])
            .await
            .is_err()
        {
            tracing::debug!(task = %self.task_id, "dispatcher gone; status not reported");
        }
    }
}

/// How often a long preparation's progress is reported (a transfer's percentage).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// `prepare`, reporting `preparing` with the executor's progress while it takes long (an image
/// fetched from another node: "fetching image from node-1: 45%"), each change once.
async fn prepare_telling<E: Executor>(
    ex: &E,
    task: &StoredTask,
    p: &Prepared,
    r: &Reporter,
) -> Result<String, ExecError> {
    let prepare = ex.prepare(task, p);
    tokio::pin!(prepare);
    let mut told: Option<String> = None;
    loop {
        tokio::select! {
            done = &mut prepare => return done,
            _ = tokio::time::sleep(PROGRESS_EVERY) => {
                let now = ex.progress(task);
                if now.is_some() && now != told {
                    if let Some(m) = &now {
                        r.progress(m).await;
                    }
                    told = now;
                }
            }
        }
    }
}

/// The container as the runner knows it: what it observed, plus the engine's names for it.
struct Container {
    id: Option<String>,
    pid: Option<i64>,
    observed: Observed,
}

impl Container {
    /// The container part of a report: its ID once it exists, the PID with `running`, the
    /// exit code once it stopped.
    fn status(&self, state: TaskState) -> Option<ContainerStatus> {
        let id = self.id.clone()?;
        Some(ContainerStatus {
            container_id: Some(id),
            pid: self.pid.filter(|_| state == TaskState::RUNNING),
            exit_code: match self.observed {
                Observed::Exited { code } => code,
                _ => None,
            },
        })
    }
}

/// The container's exit, awaited across health polls so the engine is asked once.
type Exit<'a> = Pin<Box<dyn Future<Output = Result<i64, ExecError>> + Send + 'a>>;

/// One task's life on this node.
pub(super) async fn run_task<E: Executor>(
    cfg: Arc<WorkerConfig<E>>,
    task: StoredTask,
    found: Option<Found>,
    prep: Result<Prepared, PrepareError>,
    mut desired: watch::Receiver<TaskState>,
    r: Reporter,
) {
    let ex: &E = &cfg.executor;
    let mut c = adopt(ex, &task, found).await;
    let mut prep = Some(prep);
    let mut reported = task.state();
    let mut failure: Option<Failure> = None;
    let mut exit: Option<Exit<'_>> = None;
    let mut volume_attempts: u32 = 0;
    let mut volume_error: Option<String> = None;
    loop {
        let now = Observation {
            desired: Some(*desired.borrow()),
            reported,
            container: c.observed.clone(),
            failure: failure.take(),
        };
        let next = step(&now);
        if let Some(u) = next.report {
            reported = u.state;
            let container = c.status(u.state);
            r.send(u, container).await;
        }
        // Every action but `Prepare` comes from a container the runner made or adopted, so it
        // has an ID.
        let id = c.id.clone().unwrap_or_default();
        match next.action {
            TaskAction::Prepare => {
                if let Some(Ok(p)) = prep.as_mut() {
                    if let Err(e) = mount_volumes(&cfg, &task, p).await {
                        // Never a container on an unmounted directory: the task waits in
                        // `preparing` with the mount's error, and tries again with backoff.
                        let err = e.to_string();
                        if volume_error.as_deref() != Some(err.as_str()) {
                            tracing::warn!(task = %task.id(), error = %err, "task waits for its volume");
                            let u = StatusUpdate {
                                state: TaskState::PREPARING,
                                message: "waiting for volume",
                                err: Some(err.clone()),
                            };
                            r.send(u, None).await;
                            volume_error = Some(err);
                        }
                        let wait = volume_backoff(volume_attempts);
                        volume_attempts = volume_attempts.saturating_add(1);
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            ch = desired.changed() => if ch.is_err() {
                                cfg.volumes.release(task.id()).await;
                                return;
                            },
                        }
                        continue;
                    }
                }
                let made = match prep.take() {
                    Some(Ok(p)) => prepare_telling(ex, &task, &p, &r)
                        .await
                        .map_err(|e| e.to_string()),
                    Some(Err(e)) => Err(e.to_string()),
                    // The step prepares once: then the container exists or the task is rejected.
                    None => Err("prepared once already".to_string()),
                };
                match made {
                    Ok(id) => {
                        c.id = Some(id);
                        c.observed = Observed::Created;
                    }
                    Err(error) => {
                        cfg.volumes.release(task.id()).await;
                        failure = Some(Failure {
                            during: Phase::Prepare,
                            error,
                        })
                    }
                }
            }
            TaskAction::Start => match ex.start(&id).await {
                Ok(pid) => {
                    c.pid = pid;
                    let health = ex.health(&id).await.ok().flatten();
                    c.observed = Observed::Running { health };
                }
                Err(e) => {
                    failure = Some(Failure {
                        during: Phase::Start,
                        error: e.to_string(),
                    })
                }
            },
            TaskAction::Wait { health_every } => {
                let waiting = exit.get_or_insert_with(|| {
                    let id = id.clone();
                    Box::pin(async move { ex.wait(&id).await })
                });
                let mut exited = None;
                tokio::select! {
                    _ = tokio::time::sleep(health_every.unwrap_or_default()), if health_every.is_some() => {
                        if let Ok(health) = ex.health(&id).await {
                            c.observed = Observed::Running { health };
                        }
                    }
                    code = waiting => exited = Some(code),
                    ch = desired.changed() => if ch.is_err() { return },
                }
                if let Some(code) = exited {
                    exit = None;
                    match code {
                        Ok(code) => c.observed = Observed::Exited { code: Some(code) },
                        Err(e) => {
                            failure = Some(Failure {
                                during: Phase::Wait,
                                error: e.to_string(),
                            })
                        }
                    }
                }
            }
            TaskAction::Hold => {
                if desired.changed().await.is_err() {
                    return;
                }
            }
            TaskAction::Shutdown => {
                if let Err(e) = ex.shutdown(&id).await {
                    tracing::warn!(task = %task.id(), error = %e, "stopping container");
                }
                let code = match exit.take() {
                    Some(waiting) => waiting.await,
                    None => ex.wait(&id).await,
                };
                c.observed = Observed::Exited { code: code.ok() };
            }
            TaskAction::Remove => {
                if let Err(e) = ex.remove(&id).await {
                    tracing::warn!(task = %task.id(), error = %e, "removing container");
                }
                cfg.volumes.release(task.id()).await;
                return;
            }
            TaskAction::Done => {
                if c.id.is_none() {
                    // Never had a container (shut down while waiting): nothing binds its volumes.
                    cfg.volumes.release(task.id()).await;
                }
                return;
            }
        }
    }
}

/// What the runner starts from: nothing, or the container a previous agent left (one inspect
/// for its health if it runs; its exit code if it stopped while the agent was away).
async fn adopt<E: Executor>(ex: &E, task: &StoredTask, found: Option<Found>) -> Container {
    let Some(f) = found else {
        return Container {
            id: None,
            pid: None,
            observed: Observed::Absent,
        };
    };
    let observed = if f.running {
        tracing::info!(task = %task.id(), container = %f.id, "adopted running container");
        Observed::Running {
            health: ex.health(&f.id).await.ok().flatten(),
        }
    } else if f.started {
        Observed::Exited {
            code: Some(ex.wait(&f.id).await.unwrap_or(-1)),
        }
    } else {
        Observed::Created
    };
    Container {
        id: Some(f.id),
        pid: f.pid,
        observed,
    }
}
