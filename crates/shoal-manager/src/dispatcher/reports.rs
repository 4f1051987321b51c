//! Status reports: the only code that writes task status coming from nodes. Agents' reports are
//! group-committed (newest per task wins, observed state only moves forward) in batches. A node
//! speaks only for its own tasks: a report is stored only if the task's `NodeID` is the node
//! named by the certificate of the session it came through; others are dropped and logged.

use crate::db;
use shoal_api::dispatch::TaskStatusReport;
use shoal_api::models::{EndpointPortConfigPublishModeEnum, TaskState};
use shoal_api::objects::{state_rank, StoredTask};
use shoal_store::{Expect, Store};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Host-mode ports of a service: a running task shows them in `docker service ps`.
fn host_ports(store: &Store, service_id: &str) -> Option<shoal_api::models::PortStatus> {
    let svc = db::get::<shoal_api::objects::StoredService>(store, service_id)?;
    let ports: Vec<_> = svc
        .obj
        .service
        .endpoint
        .iter()
        .flat_map(|e| e.ports.iter().flatten())
        .filter(|p| p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST))
        .cloned()
        .collect();
    (!ports.is_empty()).then_some(shoal_api::models::PortStatus { ports: Some(ports) })
}

/// Status reports written per store write at most; more are split into batches written together.
const MAX_REPORTS_PER_WRITE: usize = 4096;

/// How often at most the reports a node sent for other nodes' tasks are logged, per node.
const FOREIGN_LOG_EVERY: Duration = Duration::from_secs(60);

/// Reports as one session delivered them, with the node its certificate names: the only node
/// whose tasks they may change.
#[derive(Debug, Clone)]
pub struct NodeReports {
    /// The node ID from the session's verified client certificate.
    pub node: Arc<str>,
    /// What the node reported.
    pub reports: Vec<TaskStatusReport>,
}

/// One report and the node that sent it.
#[derive(Debug, Clone)]
struct Sourced {
    node: Arc<str>,
    report: TaskStatusReport,
}

/// Pending reports, the newest per (sending node, task): a report for someone else's task
/// must not displace the owner's.
type Pending = HashMap<(Arc<str>, String), Sourced>;

fn add_pending(pending: &mut Pending, batch: NodeReports) {
    for r in batch.reports {
        pending.insert(
            (batch.node.clone(), r.task_id.clone()),
            Sourced {
                node: batch.node.clone(),
                report: r,
            },
        );
    }
}

/// Writes agents' status reports, batching what arrives together into one store write.
///
/// Group commit: the first report after a quiet spell waits 10 ms for its companions; while a
/// write is in flight, newer reports keep arriving and go out together as soon as it ends (only
/// the newest report per task is kept). So the batch grows with the load instead of being capped
/// by the channel's capacity. Reading the tasks and encoding the writes runs off the async
/// threads, so raft and the other loops keep moving meanwhile.
pub async fn collect_reports(
    store: Store,
    mut rx: mpsc::Receiver<NodeReports>,
    stop: CancellationToken,
) {
    type Writing = std::pin::Pin<Box<dyn std::future::Future<Output = Written> + Send>>;
    let mut pending: Pending = HashMap::new();
    let mut idle: Option<Written> = Some(Written::default());
    let mut writing: Option<Writing> = None;
    let mut open = true;
    loop {
        if !pending.is_empty() {
            if let Some(written) = idle.take() {
                writing = Some(Box::pin(write_reports(
                    store.clone(),
                    std::mem::take(&mut pending),
                    written,
                )));
            }
        }
        if !open && writing.is_none() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = rx.recv(), if open => match r {
                Some(reports) => {
                    let quiet = writing.is_none() && pending.is_empty();
                    // Keep only the newest report per task (and sender).
                    add_pending(&mut pending, reports);
                    if quiet {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                        }
                    }
                    while let Ok(more) = rx.try_recv() {
                        add_pending(&mut pending, more);
                    }
                }
                None => open = false,
            },
            done = async {
                match writing.as_mut() {
                    Some(w) => w.await,
                    None => std::future::pending().await,
                }
            }, if writing.is_some() => {
                writing = None;
                idle = Some(done);
            }
        }
    }
}

/// What a report says about its task, as far as deciding whether it changes anything goes.
#[derive(Debug, Clone, PartialEq)]
struct Reported {
    state: Option<TaskState>,
    container: Option<shoal_api::models::ContainerStatus>,
    err: Option<String>,
    /// A preparation's progress changes the message alone.
    message: Option<String>,
}

impl Reported {
    fn of(r: &TaskStatusReport) -> Self {
        Reported {
            state: r.status.state,
            container: r.status.container_status.clone(),
            err: r.status.err.clone(),
            message: r.status.message.clone(),
        }
    }
}

/// The last report stored (or found already stored) per task. Observed state only moves
/// forward, so the store holds that status or a newer one: the same report again would be
/// refused after reading the task, and is skipped without reading it. Agents resend what they
/// have not seen stored yet, so under load many reports are such repeats.
#[derive(Default)]
struct Written {
    last: HashMap<String, Reported>,
    /// When each node's reports for other nodes' tasks were last logged.
    foreign_logged: HashMap<Arc<str>, Instant>,
}

impl Written {
    /// Forgets everything beyond this many tasks (deleted tasks are never pruned one by one).
    const MAX: usize = 1 << 20;

    fn repeats(&self, r: &TaskStatusReport) -> bool {
        self.last.get(&r.task_id) == Some(&Reported::of(r))
    }

    /// Logs reports dropped because their task is not the sender's, once a minute per node.
    fn log_foreign(&mut self, foreign: &[(Arc<str>, String, Option<String>)]) {
        let mut per_node: HashMap<&Arc<str>, (usize, &str, Option<&str>)> = HashMap::new();
        for (node, task, owner) in foreign {
            per_node
                .entry(node)
                .or_insert((0, task, owner.as_deref()))
                .0 += 1;
        }
        for (node, (count, task, owner)) in per_node {
            let due = self
                .foreign_logged
                .get(node)
                .is_none_or(|at| at.elapsed() >= FOREIGN_LOG_EVERY);
            if due {
                tracing::warn!(
                    %node, dropped = count, example_task = %task, owner = owner.unwrap_or("none"),
                    "dropped status reports for tasks that are not assigned to the reporting node \
                     (logged at most once a minute per node)"
                );
                self.foreign_logged.insert(node.clone(), Instant::now());
            }
        }
    }
}

/// Writes one batch of reports (several store writes if it is large), each retried on conflict.
async fn write_reports(store: Store, latest: Pending, mut written: Written) -> Written {
    let mut chunks: Vec<Vec<Sourced>> = Vec::new();
    for r in latest.into_values().filter(|r| !written.repeats(&r.report)) {
        match chunks.last_mut() {
            Some(c) if c.len() < MAX_REPORTS_PER_WRITE => c.push(r),
            _ => chunks.push(vec![r]),
        }
    }
    let done = futures::future::join_all(
        chunks
            .into_iter()
            .map(|c| write_report_chunk(store.clone(), Arc::new(c))),
    )
    .await;
    if written.last.len() > Written::MAX {
        written.last.clear();
    }
    if written.foreign_logged.len() > Written::MAX {
        written.foreign_logged.clear();
    }
    for (chunk, foreign) in done.into_iter().flatten() {
        let dropped: HashSet<usize> = foreign.iter().map(|f| f.0).collect();
        for (i, r) in chunk.iter().enumerate() {
            if !dropped.contains(&i) {
                written
                    .last
                    .insert(r.report.task_id.clone(), Reported::of(&r.report));
            }
        }
        let foreign: Vec<_> = foreign.into_iter().map(|f| f.1).collect();
        written.log_foreign(&foreign);
    }
    written
}

/// A report dropped because its task is not the sender's: its index in the chunk, and (sender,
/// task, the task's node).
type Foreign = (usize, (Arc<str>, String, Option<String>));

/// Writes one chunk; returns it if it is now stored (or was already), with the reports it
/// dropped as not the sender's, `None` if it gave up.
async fn write_report_chunk(
    store: Store,
    reports: Arc<Vec<Sourced>>,
) -> Option<(Arc<Vec<Sourced>>, Vec<Foreign>)> {
    for attempt in 0..5 {
        let started = Instant::now();
        let (s, r) = (store.clone(), reports.clone());
        let (ops, foreign) = match tokio::task::spawn_blocking(move || status_ops(&s, &r)).await {
            Ok(planned) => planned,
            Err(e) => {
                tracing::error!(error = %e, "building status writes failed");
                return None;
            }
        };
        if ops.is_empty() {
            return Some((reports, foreign));
        }
        let (n, built) = (ops.len(), started.elapsed());
        let result = db::write(&store, ops).await;
        tracing::debug!(
            reports = reports.len(),
            ops = n,
            build_ms = built.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "status reports written"
        );
        match result {
            Ok(_) => return Some((reports, foreign)),
            Err(e) => {
                tracing::debug!(attempt, error = %e, "status batch conflicted; retrying");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    None
}

/// The writes that store `reports`: each task with its new status, unless the report is older
/// than (or the same as) what is stored, or comes from a node the task is not assigned to (those
/// are returned apart).
fn status_ops(store: &Store, reports: &[Sourced]) -> (Vec<shoal_store::Op>, Vec<Foreign>) {
    let mut ops = Vec::new();
    let mut foreign = Vec::new();
    // Each service's host ports, read once rather than per running task.
    let mut ports: HashMap<String, Option<shoal_api::models::PortStatus>> = HashMap::new();
    for (i, Sourced { node, report: r }) in reports.iter().enumerate() {
        let Some(t) = db::get::<StoredTask>(store, &r.task_id) else {
            continue;
        };
        // The sender is who its certificate says; the task must be placed on that very node.
        if t.obj.task.node_id.as_deref() != Some(&**node) {
            foreign.push((
                i,
                (node.clone(), r.task_id.clone(), t.obj.task.node_id.clone()),
            ));
            continue;
        }
        let new_state = r.status.state.unwrap_or(TaskState::NEW);
        let cur = t.obj.state();
        // Observed state only moves forward (a late report never undoes a newer one).
        if state_rank(new_state) < state_rank(cur)
            || (new_state == cur
                && t.obj
                    .task
                    .status
                    .as_ref()
                    .and_then(|s| s.container_status.as_ref())
                    == r.status.container_status.as_ref()
                && t.obj.task.status.as_ref().and_then(|s| s.err.as_ref()) == r.status.err.as_ref()
                // A preparation's progress ("fetching image from node-1: 45%") is news.
                && t.obj.task.status.as_ref().and_then(|s| s.message.as_ref())
                    == r.status.message.as_ref())
        {
            continue;
        }
        let mut task = t.obj;
        let mut status = r.status.clone();
        if new_state == TaskState::RUNNING && cur != TaskState::RUNNING {
            task.running_at = Some(shoal_api::id::now());
        }
        if new_state == TaskState::RUNNING {
            status.port_status = ports
                .entry(task.service_id().to_string())
                .or_insert_with(|| host_ports(store, task.service_id()))
                .clone();
        }
        task.task.status = Some(status);
        task.task.updated_at = Some(shoal_api::id::now());
        match db::put(&task, Expect::Version(t.version)) {
            Ok(op) => ops.push(op),
            Err(e) => tracing::error!(task = %r.task_id, error = %e, "cannot encode task status"),
        }
    }
    (ops, foreign)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatcher::fixtures::{open_store, service, task};
    use shoal_api::models::TaskStatus;

    #[tokio::test]
    async fn reports_are_stored_newest_first_and_in_batches_of_any_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path()).await;
        let svc = service(
            "svc",
            serde_json::json!({"Spec": {"Name": "app"},
                "Endpoint": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}]}}),
        );
        let mut ops = vec![db::put(&svc, Expect::Absent).unwrap()];
        let n = MAX_REPORTS_PER_WRITE + 100;
        for i in 0..n {
            let t = task(&format!("t{i}"), "node-a", None, TaskState::ASSIGNED);
            ops.push(db::put(&t, Expect::Absent).unwrap());
        }
        db::write(&store, ops).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let collector = tokio::spawn(collect_reports(store.clone(), rx, stop.clone()));
        let report = |id: &str, state: TaskState| TaskStatusReport {
            task_id: id.into(),
            status: TaskStatus {
                state: Some(state),
                ..Default::default()
            },
        };
        let node_a = |reports: Vec<TaskStatusReport>| NodeReports {
            node: "node-a".into(),
            reports,
        };
        let stored = |id: &str| db::get::<StoredTask>(&store, id).unwrap().obj;
        let wait_for = |id: String, want: TaskState| {
            let store = store.clone();
            async move {
                for _ in 0..500 {
                    if db::get::<StoredTask>(&store, &id).unwrap().obj.state() == want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("{id} never reached {want:?}");
            }
        };

        tx.send(node_a(vec![report("t0", TaskState::PREPARING)]))
            .await
            .unwrap();
        tx.send(node_a(vec![report("t0", TaskState::RUNNING)]))
            .await
            .unwrap();
        wait_for("t0".into(), TaskState::RUNNING).await;
        let ports = stored("t0").task.status.and_then(|s| s.port_status);
        assert_eq!(
            ports.and_then(|p| p.ports).map(|p| p.len()),
            Some(1),
            "a running task shows its service's host-mode ports"
        );
        tx.send(node_a(vec![report("t0", TaskState::STARTING)]))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            stored("t0").state(),
            TaskState::RUNNING,
            "a late report undid a newer state"
        );

        // More reports than one write takes, many of them in one message.
        let all: Vec<TaskStatusReport> = (1..n)
            .map(|i| report(&format!("t{i}"), TaskState::RUNNING))
            .collect();
        for chunk in all.chunks(1000) {
            tx.send(node_a(chunk.to_vec())).await.unwrap();
        }
        wait_for(format!("t{}", n - 1), TaskState::RUNNING).await;
        for i in 1..n {
            wait_for(format!("t{i}"), TaskState::RUNNING).await;
        }
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), collector)
            .await
            .unwrap()
            .unwrap();
        stop.cancel();
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_node_cannot_change_the_status_of_another_nodes_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path()).await;
        let ops = vec![
            db::put(
                &task("ta", "node-a", None, TaskState::ASSIGNED),
                Expect::Absent,
            )
            .unwrap(),
            db::put(
                &task("tb", "node-b", None, TaskState::RUNNING),
                Expect::Absent,
            )
            .unwrap(),
        ];
        db::write(&store, ops).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let collector = tokio::spawn(collect_reports(store.clone(), rx, stop.clone()));
        let from = |node: &str, task: &str, state: TaskState| NodeReports {
            node: node.into(),
            reports: vec![TaskStatusReport {
                task_id: task.into(),
                status: TaskStatus {
                    state: Some(state),
                    err: Some("forged".into()),
                    ..Default::default()
                },
            }],
        };
        let state_of = |id: &str| db::get::<StoredTask>(&store, id).unwrap().obj.state();
        let wait_for = |id: &'static str, want: TaskState| {
            let store = store.clone();
            async move {
                for _ in 0..500 {
                    if db::get::<StoredTask>(&store, id).unwrap().obj.state() == want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("{id} never reached {want:?}");
            }
        };
        let tb_before = db::get::<StoredTask>(&store, "tb").unwrap();

        // Node A's session reports node B's task as failed, in its own message and alongside
        // one of its own tasks; then its own task's report, once stored, shows A was heard.
        tx.send(from("node-a", "tb", TaskState::FAILED))
            .await
            .unwrap();
        let mut both = from("node-a", "tb", TaskState::SHUTDOWN);
        both.reports
            .extend(from("node-a", "ta", TaskState::PREPARING).reports);
        tx.send(both).await.unwrap();
        tx.send(from("node-a", "ta", TaskState::RUNNING))
            .await
            .unwrap();
        wait_for("ta", TaskState::RUNNING).await;
        let tb_after = db::get::<StoredTask>(&store, "tb").unwrap();
        assert_eq!(
            state_of("tb"),
            TaskState::RUNNING,
            "node A rewrote node B's task"
        );
        assert_eq!(
            tb_after.version, tb_before.version,
            "node B's task was written"
        );

        // Node B's own report of the same state as A's forgery is not mistaken for a repeat.
        tx.send(from("node-b", "tb", TaskState::FAILED))
            .await
            .unwrap();
        wait_for("tb", TaskState::FAILED).await;

        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), collector)
            .await
            .unwrap()
            .unwrap();
        stop.cancel();
        store.shutdown().await.unwrap();
    }
}
