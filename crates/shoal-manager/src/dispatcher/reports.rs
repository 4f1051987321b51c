//! Status reports: the only code that writes task status coming from nodes. Agents' reports are
//! group-committed (newest per task wins, observed state only moves forward) in batches.

use crate::db;
use shoal_api::dispatch::TaskStatusReport;
use shoal_api::models::{EndpointPortConfigPublishModeEnum, TaskState};
use shoal_api::objects::{state_rank, StoredTask};
use shoal_store::{Expect, Store};
use std::collections::HashMap;
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

/// Writes agents' status reports, batching what arrives together into one store write.
///
/// Group commit: the first report after a quiet spell waits 10 ms for its companions; while a
/// write is in flight, newer reports keep arriving and go out together as soon as it ends (only
/// the newest report per task is kept). So the batch grows with the load instead of being capped
/// by the channel's capacity. Reading the tasks and encoding the writes runs off the async
/// threads, so raft and the other loops keep moving meanwhile.
pub async fn collect_reports(
    store: Store,
    mut rx: mpsc::Receiver<Vec<TaskStatusReport>>,
    stop: CancellationToken,
) {
    type Writing = std::pin::Pin<Box<dyn std::future::Future<Output = Written> + Send>>;
    let mut pending: HashMap<String, TaskStatusReport> = HashMap::new();
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
                    // Keep only the newest report per task.
                    for r in reports {
                        pending.insert(r.task_id.clone(), r);
                    }
                    if quiet {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                        }
                    }
                    while let Ok(more) = rx.try_recv() {
                        for r in more {
                            pending.insert(r.task_id.clone(), r);
                        }
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
}

impl Reported {
    fn of(r: &TaskStatusReport) -> Self {
        Reported {
            state: r.status.state,
            container: r.status.container_status.clone(),
            err: r.status.err.clone(),
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
}

impl Written {
    /// Forgets everything beyond this many tasks (deleted tasks are never pruned one by one).
    const MAX: usize = 1 << 20;

    fn repeats(&self, r: &TaskStatusReport) -> bool {
        self.last.get(&r.task_id) == Some(&Reported::of(r))
    }
}

/// Writes one batch of reports (several store writes if it is large), each retried on conflict.
async fn write_reports(
    store: Store,
    latest: HashMap<String, TaskStatusReport>,
    mut written: Written,
) -> Written {
    let mut chunks: Vec<Vec<TaskStatusReport>> = Vec::new();
    for r in latest.into_values().filter(|r| !written.repeats(r)) {
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
    for chunk in done.into_iter().flatten() {
        for r in chunk.iter() {
            written.last.insert(r.task_id.clone(), Reported::of(r));
        }
    }
    written
}

/// Writes one chunk; returns it if it is now stored (or was already), `None` if it gave up.
async fn write_report_chunk(
    store: Store,
    reports: Arc<Vec<TaskStatusReport>>,
) -> Option<Arc<Vec<TaskStatusReport>>> {
    for attempt in 0..5 {
        let started = Instant::now();
        let (s, r) = (store.clone(), reports.clone());
        let ops = match tokio::task::spawn_blocking(move || status_ops(&s, &r)).await {
            Ok(ops) => ops,
            Err(e) => {
                tracing::error!(error = %e, "building status writes failed");
                return None;
            }
        };
        if ops.is_empty() {
            return Some(reports);
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
            Ok(_) => return Some(reports),
            Err(e) => {
                tracing::debug!(attempt, error = %e, "status batch conflicted; retrying");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    None
}

/// The writes that store `reports`: each task with its new status, unless the report is older
/// than (or the same as) what is stored.
fn status_ops(store: &Store, reports: &[TaskStatusReport]) -> Vec<shoal_store::Op> {
    let mut ops = Vec::new();
    // Each service's host ports, read once rather than per running task.
    let mut ports: HashMap<String, Option<shoal_api::models::PortStatus>> = HashMap::new();
    for r in reports {
        let Some(t) = db::get::<StoredTask>(store, &r.task_id) else {
            continue;
        };
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
                && t.obj.task.status.as_ref().and_then(|s| s.err.as_ref()) == r.status.err.as_ref())
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
    ops
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

        tx.send(vec![report("t0", TaskState::PREPARING)])
            .await
            .unwrap();
        tx.send(vec![report("t0", TaskState::RUNNING)])
            .await
            .unwrap();
        wait_for("t0".into(), TaskState::RUNNING).await;
        let ports = stored("t0").task.status.and_then(|s| s.port_status);
        assert_eq!(
            ports.and_then(|p| p.ports).map(|p| p.len()),
            Some(1),
            "a running task shows its service's host-mode ports"
        );
        tx.send(vec![report("t0", TaskState::STARTING)])
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
            tx.send(chunk.to_vec()).await.unwrap();
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
}
