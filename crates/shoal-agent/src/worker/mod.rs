//! The worker: turns the node's assignments into containers. One runner per task moves it through
//! Swarm's states (preparing, starting, running, then complete, failed or shutdown) and reports
//! each step; on start it adopts the containers it finds instead of starting duplicates.

use crate::executor::{Executor, Found, Health, Prepared};
use crate::files::Files;
use futures::future::BoxFuture;
use shoal_api::dispatch::{NetworkInfo, NodeAssignments, TaskStatusReport};
use shoal_api::models::{ContainerStatus, TaskState, TaskStatus};
use shoal_api::objects::{is_terminal, runs, state_rank, StoredTask};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Node networking as the worker needs it; implemented by the network agent.
pub trait NetworkBackend: Send + Sync + 'static {
    /// Makes a network usable here; returns the engine network name to attach containers to.
    fn ensure(&self, net: &NetworkInfo) -> BoxFuture<'_, Result<String, String>>;
    /// Applies DNS records, VIPs and published ports.
    fn route(&self, a: &NodeAssignments) -> BoxFuture<'_, Result<(), String>>;
    /// Removes a network no task here uses any more.
    fn remove(&self, network_id: &str) -> BoxFuture<'_, Result<(), String>>;
    /// Removes everything it made.
    fn cleanup(&self) -> BoxFuture<'_, ()>;
}

/// What a worker needs.
pub struct WorkerConfig<E: Executor> {
    /// This node.
    pub node_id: String,
    /// The container backend.
    pub executor: Arc<E>,
    /// Secret and config files.
    pub files: Files,
    /// Networking, if this node has it.
    pub network: Option<Arc<dyn NetworkBackend>>,
}

struct Runner {
    desired: watch::Sender<TaskState>,
    handle: JoinHandle<()>,
}

/// Runs until `stop`; with `remove_all` set when it returns, the caller cleans up containers.
pub async fn run<E: Executor>(
    cfg: WorkerConfig<E>,
    mut assignments: watch::Receiver<NodeAssignments>,
    reports: mpsc::Sender<Vec<TaskStatusReport>>,
    stop: CancellationToken,
) {
    let cfg = Arc::new(cfg);
    // The channel starts with an empty placeholder: acting on it would sweep away every container
    // of this node. Wait for the dispatcher's first real answer.
    tokio::select! {
        _ = stop.cancelled() => return,
        r = assignments.changed() => if r.is_err() { return },
    }
    let mut runners: HashMap<String, Runner> = HashMap::new();
    let mut adopt: HashMap<String, Found> = match cfg.executor.list().await {
        Ok(found) => found.into_iter().map(|f| (f.task_id.clone(), f)).collect(),
        Err(e) => {
            tracing::error!(error = %e, "listing this node's containers; nothing adopted");
            HashMap::new()
        }
    };
    tracing::info!(node = %cfg.node_id, adopted = adopt.len(), "worker started");
    let mut nets: HashMap<String, String> = HashMap::new();
    let mut last_ids: HashSet<String> = HashSet::new();
    let mut last_sweep = Instant::now();
    let mut first = true;
    let last: LastReported = Default::default();
    loop {
        let a = assignments.borrow_and_update().clone();
        resend_unstored(&a, &last, &reports).await;
        // Networks first: tasks need their engine network before their container exists.
        if let Some(net) = &cfg.network {
            for n in &a.networks {
                if !nets.contains_key(&n.id) {
                    match net.ensure(n).await {
                        Ok(name) => {
                            nets.insert(n.id.clone(), name);
                        }
                        Err(e) => {
                            tracing::error!(network = %n.name, error = %e, "cannot set up network")
                        }
                    }
                }
            }
            if let Err(e) = net.route(&a).await {
                tracing::error!(error = %e, "applying service routes");
            }
        }
        let ids: HashSet<String> = a.tasks.iter().map(|t| t.id().to_string()).collect();
        for t in &a.tasks {
            let desired = t.desired();
            if let Some(r) = runners.get(t.id()) {
                r.desired.send_if_modified(|d| {
                    let changed = *d != desired;
                    *d = desired;
                    changed
                });
                continue;
            }
            let found = adopt.remove(t.id());
            // A network attachment's container is the user's own, not the agent's to run.
            if is_terminal(t.state()) || t.is_attachment() {
                continue;
            }
            let prep = prepare(&cfg, t, &a, &nets);
            let (tx, rx) = watch::channel(desired);
            let reporter = Reporter {
                task_id: t.id().to_string(),
                tx: reports.clone(),
                last: last.clone(),
            };
            let handle = tokio::spawn(run_task(cfg.clone(), t.clone(), found, prep, rx, reporter));
            runners.insert(
                t.id().to_string(),
                Runner {
                    desired: tx,
                    handle,
                },
            );
        }
        // Tasks gone from the assignments: stop their runners, then remove their containers.
        let gone = last_ids.iter().any(|id| !ids.contains(id));
        runners.retain(|id, r| {
            let keep = ids.contains(id);
            if !keep {
                r.handle.abort();
            }
            keep
        });
        if let Ok(mut m) = last.lock() {
            m.retain(|id, _| ids.contains(id));
        }
        // Networks no assignment needs any more go as soon as the containers on them are
        // swept; one Docker still holds (an endpoint not yet released) is retried in a second.
        let stale: Vec<String> = match &cfg.network {
            Some(_) => {
                let wanted: HashSet<&str> = a.networks.iter().map(|n| n.id.as_str()).collect();
                nets.keys()
                    .filter(|k| !wanted.contains(k.as_str()))
                    .cloned()
                    .collect()
            }
            None => Vec::new(),
        };
        let mut retry_soon = false;
        if first || gone || !stale.is_empty() || last_sweep.elapsed() > Duration::from_secs(10) {
            sweep(&cfg, &ids).await;
            release_attachments(&cfg, &a, &reports).await;
            if let Some(net) = &cfg.network {
                for id in stale {
                    match net.remove(&id).await {
                        Ok(()) => {
                            nets.remove(&id);
                        }
                        Err(e) => {
                            tracing::warn!(network = %id, error = %e, "removing unused network; retrying");
                            retry_soon = true;
                        }
                    }
                }
            }
            last_sweep = Instant::now();
            first = false;
        }
        last_ids = ids;
        tokio::select! {
            _ = stop.cancelled() => break,
            r = assignments.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(Duration::from_secs(if retry_soon { 1 } else { 10 })) => {}
        }
    }
    for (_, r) in runners {
        r.handle.abort();
    }
}

/// Sends again every last-reported state the manager has not stored (its write failed, or the
/// manager restarted): observed state only moves forward, so a repeat is harmless.
async fn resend_unstored(
    a: &NodeAssignments,
    last: &LastReported,
    reports: &mpsc::Sender<Vec<TaskStatusReport>>,
) {
    let stale: Vec<TaskStatusReport> = match last.lock() {
        Ok(m) => a
            .tasks
            .iter()
            .filter_map(|t| {
                let mine = m.get(t.id())?;
                let stored = t.task.status.as_ref().and_then(|s| s.state);
                (mine.state.map(state_rank) > stored.map(state_rank)).then(|| TaskStatusReport {
                    task_id: t.id().to_string(),
                    status: mine.clone(),
                })
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    if !stale.is_empty() {
        tracing::debug!(
            count = stale.len(),
            "re-sending task states the manager has not stored"
        );
        let _ = reports.send(stale).await;
    }
}

/// Removes containers (and files) of tasks this node no longer has.
async fn sweep<E: Executor>(cfg: &WorkerConfig<E>, ids: &HashSet<String>) {
    match cfg.executor.list().await {
        Ok(found) => {
            for f in found.into_iter().filter(|f| !ids.contains(&f.task_id)) {
                tracing::info!(task = %f.task_id, container = %f.id, "removing container of a task this node no longer has");
                if let Err(e) = cfg.executor.remove(&f.id).await {
                    tracing::warn!(container = %f.id, error = %e, "removing container");
                }
                cfg.files.remove(&f.task_id);
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing containers for cleanup"),
    }
}

/// How long a new network attachment may wait for its container (the proxy creates it right
/// after the address arrives) before the node gives the address back.
const ATTACHMENT_GRACE: Duration = Duration::from_secs(15);

/// Reports network attachments done with once no container names them any more (the
/// container was removed, or its create never happened): the manager then deletes them.
async fn release_attachments<E: Executor>(
    cfg: &WorkerConfig<E>,
    a: &NodeAssignments,
    reports: &mpsc::Sender<Vec<TaskStatusReport>>,
) {
    let mine: Vec<&StoredTask> = a
        .tasks
        .iter()
        .filter(|t| t.is_attachment() && !is_terminal(t.state()))
        .collect();
    if mine.is_empty() {
        return;
    }
    let named = match cfg.executor.attached().await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "listing attached containers");
            return;
        }
    };
    let now = chrono::Utc::now();
    let done: Vec<TaskStatusReport> = mine
        .into_iter()
        .filter(|t| !named.contains(t.id()))
        .filter(|t| {
            let created = t
                .task
                .created_at
                .as_deref()
                .and_then(shoal_api::id::parse_time);
            created.is_none_or(|c| (now - c).to_std().unwrap_or_default() > ATTACHMENT_GRACE)
        })
        .map(|t| {
            tracing::info!(task = %t.id(), "network attachment without a container; releasing it");
            TaskStatusReport::attachment_released(t.id(), "container removed")
        })
        .collect();
    if !done.is_empty() && reports.send(done).await.is_err() {
        tracing::warn!("session closed; attachments are released on the next sweep");
    }
}

/// Removes every container of this node and its files (swarm leave).
pub async fn remove_all<E: Executor>(executor: &E, files: &Files) {
    if let Ok(found) = executor.list().await {
        for f in found {
            if let Err(e) = executor.remove(&f.id).await {
                tracing::warn!(container = %f.id, error = %e, "removing container");
            }
        }
    }
    files.cleanup();
}

fn prepare<E: Executor>(
    cfg: &WorkerConfig<E>,
    t: &StoredTask,
    a: &NodeAssignments,
    nets: &HashMap<String, String>,
) -> Result<Prepared, String> {
    let mut p = Prepared::default();
    if cfg.network.is_some() {
        for att in &t.networks_attachments {
            let name = nets.get(&att.network.id).ok_or_else(|| {
                format!(
                    "network {} is not available on this node",
                    att.network.spec.name
                )
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
    p.files = cfg
        .files
        .prepare(t, &a.secrets, &a.configs)
        .map_err(|e| e.to_string())?;
    Ok(p)
}

/// The last status each runner reported, kept so a report the manager never stored is sent again.
type LastReported = Arc<std::sync::Mutex<HashMap<String, TaskStatus>>>;

struct Reporter {
    task_id: String,
    tx: mpsc::Sender<Vec<TaskStatusReport>>,
    last: LastReported,
}

impl Reporter {
    async fn send(
        &self,
        state: TaskState,
        message: &str,
        err: Option<String>,
        container: Option<ContainerStatus>,
    ) {
        let status = TaskStatus {
            timestamp: Some(shoal_api::id::now()),
            state: Some(state),
            message: Some(message.to_string()),
            err,
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

fn cstatus(id: &str, pid: Option<i64>, exit: Option<i64>) -> Option<ContainerStatus> {
    Some(ContainerStatus {
        container_id: Some(id.to_string()),
        pid,
        exit_code: exit,
    })
}

/// One task's life on this node.
async fn run_task<E: Executor>(
    cfg: Arc<WorkerConfig<E>>,
    task: StoredTask,
    found: Option<Found>,
    prep: Result<Prepared, String>,
    mut desired: watch::Receiver<TaskState>,
    r: Reporter,
) {
    let ex = &cfg.executor;
    let cs = task
        .task
        .spec
        .as_ref()
        .and_then(|s| s.container_spec.clone())
        .unwrap_or_default();
    let grace = cs
        .stop_grace_period
        .map(|g| g / 1_000_000_000)
        .unwrap_or(10);
    let signal = cs.stop_signal.clone().filter(|s| !s.is_empty());
    // The container's health as the start or adoption learnt it (one inspect per task).
    let health: Option<Health>;
    let (cid, pid) = match found {
        Some(f) if f.running => {
            tracing::info!(task = %task.id(), container = %f.id, "adopted running container");
            health = ex.health(&f.id).await.ok().flatten();
            if task.state() != TaskState::RUNNING
                && !matches!(health, Some(h) if h != Health::Healthy)
            {
                r.send(
                    TaskState::RUNNING,
                    "started",
                    None,
                    cstatus(&f.id, f.pid, None),
                )
                .await;
            }
            (f.id, f.pid)
        }
        Some(f) if f.started => {
            // It stopped while the agent was away: report how it ended.
            let code = ex.wait(&f.id).await.unwrap_or(-1);
            finish(&r, &f.id, code).await;
            return;
        }
        other => {
            if other.is_none() && state_rank(task.state()) >= state_rank(TaskState::STARTING) {
                r.send(
                    TaskState::FAILED,
                    "container lost",
                    Some("task container was removed while the agent was not running".into()),
                    None,
                )
                .await;
                return;
            }
            if !runs(*desired.borrow()) && *desired.borrow() != TaskState::READY {
                r.send(TaskState::SHUTDOWN, "shutdown", None, None).await;
                return;
            }
            r.send(TaskState::PREPARING, "preparing", None, None).await;
            let prep = match prep {
                Ok(p) => p,
                Err(e) => {
                    r.send(TaskState::REJECTED, "preparing", Some(e), None)
                        .await;
                    return;
                }
            };
            let id = match other {
                Some(f) => f.id,
                None => {
                    let image = cs.image.clone().unwrap_or_default();
                    if let Err(e) = ex.ensure_image(&image).await {
                        r.send(TaskState::REJECTED, "preparing", Some(e.to_string()), None)
                            .await;
                        return;
                    }
                    match ex.create(&task, &prep).await {
                        Ok(id) => id,
                        Err(e) => {
                            r.send(TaskState::REJECTED, "preparing", Some(e.to_string()), None)
                                .await;
                            return;
                        }
                    }
                }
            };
            // A stop-first update prepares the replacement while the old task stops, and
            // starts it once the manager says so.
            if *desired.borrow() == TaskState::READY {
                r.send(TaskState::READY, "ready", None, cstatus(&id, None, None))
                    .await;
                while *desired.borrow() == TaskState::READY {
                    if desired.changed().await.is_err() {
                        return;
                    }
                }
            }
            if !runs(*desired.borrow()) {
                r.send(
                    TaskState::SHUTDOWN,
                    "shutdown",
                    None,
                    cstatus(&id, None, None),
                )
                .await;
                return;
            }
            r.send(
                TaskState::STARTING,
                "starting",
                None,
                cstatus(&id, None, None),
            )
            .await;
            match ex.start(&id).await {
                Ok(pid) => {
                    // A container with a health check stays `starting` until it is healthy,
                    // as in Swarm: it is not counted as up nor load-balanced before.
                    health = ex.health(&id).await.ok().flatten();
                    if !matches!(health, Some(h) if h != Health::Healthy) {
                        r.send(TaskState::RUNNING, "started", None, cstatus(&id, pid, None))
                            .await;
                    }
                    (id, pid)
                }
                Err(e) => {
                    r.send(
                        TaskState::FAILED,
                        "starting",
                        Some(format!("starting container failed: {e}")),
                        cstatus(&id, None, None),
                    )
                    .await;
                    return;
                }
            }
        }
    };
    // Health: polled only for containers that have a check; quickly until the first verdict.
    let mut no_check = health.is_none();
    let mut up =
        !matches!(health, Some(h) if h != Health::Healthy) || task.state() == TaskState::RUNNING;
    loop {
        let poll = Duration::from_millis(if up { 1000 } else { 250 });
        tokio::select! {
            _ = tokio::time::sleep(poll), if !no_check => {
                match ex.health(&cid).await {
                    Ok(Some(Health::Healthy)) if !up => {
                        up = true;
                        r.send(TaskState::RUNNING, "started", None, cstatus(&cid, pid, None)).await;
                    }
                    Ok(Some(Health::Unhealthy)) => {
                        // Reported first, so routing drops the task at the verdict, not after
                        // the stop grace period.
                        tracing::info!(task = %task.id(), container = %cid, "unhealthy container; stopping it");
                        r.send(
                            TaskState::FAILED,
                            "unhealthy",
                            Some("task: unhealthy container".into()),
                            cstatus(&cid, None, None),
                        )
                        .await;
                        if let Err(e) = ex.stop(&cid, grace, signal.clone()).await {
                            tracing::warn!(task = %task.id(), error = %e, "stopping container");
                        }
                        return;
                    }
                    Ok(None) => no_check = true,
                    _ => {}
                }
            }
            code = ex.wait(&cid) => {
                match code {
                    Ok(code) => finish(&r, &cid, code).await,
                    Err(e) => r.send(TaskState::FAILED, "failed", Some(e.to_string()), cstatus(&cid, None, None)).await,
                }
                return;
            }
            ch = desired.changed() => {
                if ch.is_err() {
                    return;
                }
                if !runs(*desired.borrow()) {
                    if let Err(e) = ex.stop(&cid, grace, signal.clone()).await {
                        tracing::warn!(task = %task.id(), error = %e, "stopping container");
                    }
                    let code = ex.wait(&cid).await.ok();
                    r.send(TaskState::SHUTDOWN, "shutdown", None, cstatus(&cid, None, code)).await;
                    return;
                }
            }
        }
    }
}

async fn finish(r: &Reporter, cid: &str, code: i64) {
    if code == 0 {
        r.send(
            TaskState::COMPLETE,
            "finished",
            None,
            cstatus(cid, None, Some(0)),
        )
        .await;
    } else {
        r.send(
            TaskState::FAILED,
            "failed",
            Some(format!("task: non-zero exit ({code})")),
            cstatus(cid, None, Some(code)),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::ExecError;

    /// Records what the worker asks of it; one pre-existing container for task "t1".
    #[derive(Default)]
    struct Recording {
        removed: std::sync::Mutex<Vec<String>>,
    }

    impl Executor for Recording {
        async fn list(&self) -> Result<Vec<Found>, ExecError> {
            let gone = self.removed.lock().unwrap().contains(&"c1".to_string());
            Ok(if gone {
                vec![]
            } else {
                vec![Found {
                    id: "c1".into(),
                    task_id: "t1".into(),
                    running: true,
                    exit_code: None,
                    started: true,
                    pid: None,
                }]
            })
        }
        async fn ensure_image(&self, _: &str) -> Result<(), ExecError> {
            Ok(())
        }
        async fn create(&self, _: &StoredTask, _: &Prepared) -> Result<String, ExecError> {
            Ok("new".into())
        }
        async fn start(&self, _: &str) -> Result<Option<i64>, ExecError> {
            Ok(None)
        }
        async fn wait(&self, _: &str) -> Result<i64, ExecError> {
            futures::future::pending().await
        }
        async fn stop(&self, _: &str, _: i64, _: Option<String>) -> Result<(), ExecError> {
            Ok(())
        }
        async fn remove(&self, id: &str) -> Result<(), ExecError> {
            self.removed.lock().unwrap().push(id.into());
            Ok(())
        }
    }

    fn running_task(id: &str) -> StoredTask {
        let mut t = StoredTask::default();
        t.task.id = Some(id.into());
        t.task.desired_state = Some(TaskState::RUNNING);
        t.task.status = Some(TaskStatus {
            state: Some(TaskState::RUNNING),
            ..Default::default()
        });
        t
    }

    #[tokio::test]
    async fn adopts_and_sweeps_only_after_real_assignments() {
        let dir = std::env::temp_dir().join(format!("shoal-worker-test-{}", std::process::id()));
        let exec = Arc::new(Recording::default());
        let cfg = WorkerConfig {
            node_id: "n1".into(),
            executor: exec.clone(),
            files: Files::new(dir.clone()).unwrap(),
            network: None,
        };
        let (atx, arx) = watch::channel(NodeAssignments::default());
        let (rtx, mut rrx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let worker = tokio::spawn(run(cfg, arx, rtx, stop.clone()));

        // The placeholder value must not make the worker remove anything.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            exec.removed.lock().unwrap().is_empty(),
            "swept before the first assignments"
        );

        // Real assignments holding the task: the running container is adopted, not replaced.
        atx.send_replace(NodeAssignments {
            tasks: vec![running_task("t1")],
            ..Default::default()
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            exec.removed.lock().unwrap().is_empty(),
            "an assigned task's container was removed"
        );
        assert!(
            rrx.try_recv().is_err(),
            "an adopted running task needs no new report"
        );

        // The task leaves the assignments: its container goes.
        atx.send_replace(NodeAssignments::default());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(*exec.removed.lock().unwrap(), vec!["c1".to_string()]);
        stop.cancel();
        let _ = worker.await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
