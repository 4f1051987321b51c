//! The worker: turns the node's assignments into containers. One runner per task (`runner`)
//! moves it through Swarm's states (preparing, starting, running, then complete, failed or
//! shutdown) as the pure task step (`step`) decides, and reports each one; on start it adopts
//! the containers it finds instead of starting duplicates, and it removes those of tasks the
//! node no longer has.

mod runner;
pub mod stale;
pub mod step;

use crate::executor::{Executor, Found};
use crate::files::Files;
use crate::network::NetworkError;
use futures::future::BoxFuture;
use runner::{prepare, run_task, LastReported, Reporter};
use shoal_api::dispatch::{NetworkInfo, NodeAssignments, TaskStatusReport};
use shoal_api::models::TaskState;
use shoal_api::objects::{is_terminal, state_rank, StoredTask};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Node networking as the worker needs it; implemented by the network agent.
pub trait NetworkBackend: Send + Sync + 'static {
    /// Makes a network usable here; returns the engine network name to attach containers to.
    fn ensure(&self, net: &NetworkInfo) -> BoxFuture<'_, Result<String, NetworkError>>;
    /// Applies DNS records, VIPs and published ports.
    fn route(&self, a: &NodeAssignments) -> BoxFuture<'_, Result<(), NetworkError>>;
    /// Removes a network no task here uses any more.
    fn remove(&self, network_id: &str) -> BoxFuture<'_, Result<(), NetworkError>>;
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
    /// Shared-volume mounts.
    pub volumes: crate::volumes::Volumes,
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
    let mut stopping: HashMap<String, JoinHandle<()>> = HashMap::new();
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
            if let (Some(_), Ok(p)) = (&found, &prep) {
                // An adopted container binds its volumes' mounts already: keep them.
                for v in &p.volumes {
                    cfg.volumes.adopt(t.id(), v);
                }
            }
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
            let owned: HashSet<String> = runners
                .iter()
                .filter(|(_, r)| !r.handle.is_finished())
                .map(|(id, _)| id.clone())
                .collect();
            sweep(&cfg, &a.tasks, &owned, &mut stopping).await;
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
            if first {
                cfg.volumes.forget_unused().await;
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
    // Wait for every runner to be gone, so none issues an engine call after the worker returns
    // (a leave then removes what is there, and nothing comes after it).
    for (_, r) in runners {
        r.handle.abort();
        let _ = r.handle.await;
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

/// Removes containers (and files) of tasks this node no longer has, and stops running ones of
/// tasks that have ended ([`stale::stale`] decides). A stop waits out the task's grace period,
/// so it runs on its own, once per container, and the loop goes on.
async fn sweep<E: Executor>(
    cfg: &Arc<WorkerConfig<E>>,
    assigned: &[StoredTask],
    owned: &HashSet<String>,
    stopping: &mut HashMap<String, JoinHandle<()>>,
) {
    stopping.retain(|_, h| !h.is_finished());
    let found = match cfg.executor.list().await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "listing containers for cleanup");
            return;
        }
    };
    let task_of: HashMap<&str, &str> = found
        .iter()
        .map(|f| (f.id.as_str(), f.task_id.as_str()))
        .collect();
    for (id, cleanup) in stale::stale(&found, assigned, owned) {
        let task = task_of.get(id.as_str()).copied().unwrap_or_default();
        match cleanup {
            stale::Cleanup::Remove => {
                tracing::info!(%task, container = %id, "removing container of a task this node no longer has");
                if let Err(e) = cfg.executor.remove(&id).await {
                    tracing::warn!(container = %id, error = %e, "removing container");
                }
                cfg.files.remove(task);
                cfg.volumes.release(task).await;
            }
            stale::Cleanup::Stop if !stopping.contains_key(&id) => {
                tracing::warn!(%task, container = %id, "stopping a running container of a task that has ended");
                let cfg = cfg.clone();
                let container = id.clone();
                let h = tokio::spawn(async move {
                    if let Err(e) = cfg.executor.shutdown(&container).await {
                        tracing::warn!(%container, error = %e, "stopping container");
                    }
                });
                stopping.insert(id, h);
            }
            stale::Cleanup::Stop => {}
        }
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
pub async fn remove_all<E: Executor>(
    executor: &E,
    files: &Files,
    volumes: &crate::volumes::Volumes,
) {
    // A runner stopped in the middle of a create has sent its request; the engine may finish it
    // after the first listing (seen: a task's container left behind by `swarm leave --force`
    // right after `service create`), so a second pass a moment later removes it too.
    for pass in 0..2 {
        if pass > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if let Ok(found) = executor.list().await {
            for f in found {
                if let Err(e) = executor.remove(&f.id).await {
                    tracing::warn!(container = %f.id, error = %e, "removing container");
                }
            }
        }
    }
    files.cleanup();
    volumes.unmount_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{ExecError, Prepared};
    use shoal_api::models::TaskStatus;

    /// Records what the worker asks of it, over containers kept in a list: `existing` at
    /// first, plus those it prepares. A container's `wait` returns 143 once it is shut down.
    struct Recording {
        containers: std::sync::Mutex<Vec<Found>>,
        calls: std::sync::Mutex<Vec<String>>,
        removed: std::sync::Mutex<Vec<String>>,
        stopped: watch::Sender<HashSet<String>>,
    }

    impl Recording {
        fn with(existing: Vec<Found>) -> Self {
            Recording {
                containers: std::sync::Mutex::new(existing),
                calls: Default::default(),
                removed: Default::default(),
                stopped: watch::channel(HashSet::new()).0,
            }
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        fn record(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl Default for Recording {
        /// One running container, "c1", of task "t1".
        fn default() -> Self {
            Recording::with(vec![Found {
                id: "c1".into(),
                task_id: "t1".into(),
                running: true,
                started: true,
                pid: None,
            }])
        }
    }

    impl Executor for Recording {
        async fn list(&self) -> Result<Vec<Found>, ExecError> {
            let removed = self.removed.lock().unwrap().clone();
            let all = self.containers.lock().unwrap().clone();
            Ok(all
                .into_iter()
                .filter(|c| !removed.contains(&c.id))
                .collect())
        }
        async fn prepare(&self, t: &StoredTask, _: &Prepared) -> Result<String, ExecError> {
            self.record(format!("prepare {}", t.id()));
            let id = format!("new-{}", t.id());
            self.containers.lock().unwrap().push(Found {
                id: id.clone(),
                task_id: t.id().into(),
                running: false,
                started: false,
                pid: None,
            });
            Ok(id)
        }
        async fn start(&self, id: &str) -> Result<Option<i64>, ExecError> {
            self.record(format!("start {id}"));
            Ok(Some(42))
        }
        async fn wait(&self, id: &str) -> Result<i64, ExecError> {
            let mut rx = self.stopped.subscribe();
            let _ = rx.wait_for(|s| s.contains(id)).await;
            Ok(143)
        }
        async fn shutdown(&self, id: &str) -> Result<(), ExecError> {
            self.record(format!("shutdown {id}"));
            self.stopped.send_modify(|s| {
                s.insert(id.to_string());
            });
            Ok(())
        }
        async fn remove(&self, id: &str) -> Result<(), ExecError> {
            self.record(format!("remove {id}"));
            self.removed.lock().unwrap().push(id.into());
            Ok(())
        }
    }

    /// The next status the worker reports, within a few seconds.
    async fn next_report(rx: &mut mpsc::Receiver<Vec<TaskStatusReport>>) -> TaskStatus {
        let batch = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a report within 5 s")
            .expect("reports channel open");
        assert_eq!(batch.len(), 1, "one report per step: {batch:?}");
        batch.into_iter().next().unwrap().status
    }

    /// A worker running over `exec` with its files in a fresh temp dir, and the ends the
    /// tests drive it by.
    struct WorkerUnderTest {
        atx: watch::Sender<NodeAssignments>,
        rrx: mpsc::Receiver<Vec<TaskStatusReport>>,
        stop: CancellationToken,
        worker: tokio::task::JoinHandle<()>,
        files: Files,
    }

    impl WorkerUnderTest {
        /// Stops the worker and removes its files, unmounting their tmpfs (mounted when the
        /// tests run as root).
        async fn finish(self) {
            self.stop.cancel();
            let _ = self.worker.await;
            self.files.cleanup();
        }
    }

    fn start(name: &str, exec: Arc<Recording>) -> WorkerUnderTest {
        let dir = std::env::temp_dir().join(format!("shoal-worker-{name}-{}", std::process::id()));
        let files = Files::new(dir).unwrap();
        let cfg = WorkerConfig {
            node_id: "n1".into(),
            executor: exec,
            files: files.clone(),
            network: None,
            volumes: crate::volumes::Volumes::new(
                files.root().join("volumes"),
                files.root().to_path_buf(),
            ),
        };
        let (atx, arx) = watch::channel(NodeAssignments::default());
        let (rtx, rrx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let worker = tokio::spawn(run(cfg, arx, rtx, stop.clone()));
        WorkerUnderTest {
            atx,
            rrx,
            stop,
            worker,
            files,
        }
    }

    /// A task with its desired and observed state (also for `stale`'s tests).
    pub(super) fn task(id: &str, desired: TaskState, state: TaskState) -> StoredTask {
        let mut t = StoredTask::default();
        t.task.id = Some(id.into());
        t.task.desired_state = Some(desired);
        t.task.status = Some(TaskStatus {
            state: Some(state),
            ..Default::default()
        });
        t
    }

    #[tokio::test]
    async fn runs_a_new_task_through_prepare_start_shutdown_and_removal() {
        let exec = Arc::new(Recording::with(vec![]));
        let mut w = start("run", exec.clone());
        let assigned = |desired, stored| NodeAssignments {
            tasks: vec![task("t2", desired, stored)],
            ..Default::default()
        };

        w.atx
            .send_replace(assigned(TaskState::RUNNING, TaskState::ASSIGNED));
        let states: Vec<(TaskState, Option<String>, Option<i64>)> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                let s = next_report(&mut w.rrx).await;
                let c = s.container_status.unwrap_or_default();
                v.push((s.state.unwrap(), c.container_id, c.pid));
            }
            v
        };
        assert_eq!(
            states,
            vec![
                (TaskState::PREPARING, None, None),
                (TaskState::STARTING, Some("new-t2".into()), None),
                (TaskState::RUNNING, Some("new-t2".into()), Some(42)),
            ]
        );
        assert_eq!(exec.calls(), vec!["prepare t2", "start new-t2"]);

        // Desired shutdown (the manager has stored `running`): the container is stopped, then
        // the task reported shut down with the exit code.
        w.atx
            .send_replace(assigned(TaskState::SHUTDOWN, TaskState::RUNNING));
        let s = next_report(&mut w.rrx).await;
        assert_eq!(s.state, Some(TaskState::SHUTDOWN));
        assert_eq!(s.container_status.unwrap().exit_code, Some(143));
        assert_eq!(exec.calls().last().unwrap(), "shutdown new-t2");

        // The task leaves the node: its container is removed.
        w.atx.send_replace(NodeAssignments::default());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(exec.calls().last().unwrap(), "remove new-t2");
        w.finish().await;
    }

    fn running_task(id: &str) -> StoredTask {
        task(id, TaskState::RUNNING, TaskState::RUNNING)
    }

    #[tokio::test]
    async fn adopts_and_sweeps_only_after_real_assignments() {
        let exec = Arc::new(Recording::default());
        let mut w = start("test", exec.clone());

        // The placeholder value must not make the worker remove anything.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            exec.removed.lock().unwrap().is_empty(),
            "swept before the first assignments"
        );

        // Real assignments holding the task: the running container is adopted, not replaced.
        w.atx.send_replace(NodeAssignments {
            tasks: vec![running_task("t1")],
            ..Default::default()
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            exec.removed.lock().unwrap().is_empty(),
            "an assigned task's container was removed"
        );
        assert!(
            w.rrx.try_recv().is_err(),
            "an adopted running task needs no new report"
        );

        // The task leaves the assignments: its container goes.
        w.atx.send_replace(NodeAssignments::default());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(*exec.removed.lock().unwrap(), vec!["c1".to_string()]);
        w.finish().await;
    }
}
