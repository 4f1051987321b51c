//! The control loop: on every store change (and when a restart delay ends) it runs orchestration,
//! allocation and scheduling over one snapshot and writes the result as one batch (split by
//! slot only beyond [`MAX_OPS_PER_WRITE`] operations).

use crate::db;
use crate::state::{ClusterState, SharedReader};
use shoal_api::objects::StoredTask;
use shoal_api::ApiError;
use shoal_control::orchestrator::Note;
use shoal_control::quiet::Quiet;
use shoal_control::Inputs;
use shoal_store::{Expect, Op, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// A pass writes at most this many operations per store write; more are split (see
/// [`write_in_batches`]). Big enough that `--replicas 4000` is still one raft entry.
pub const MAX_OPS_PER_WRITE: usize = 4096;

/// Runs passes until cancelled, on a view shared with the dispatcher (each change is decoded
/// once). `alloc` serializes address allocation with the API.
///
/// Changes are coalesced for 5 ms, or for as long as the last pass took (at most 250 ms) so
/// that passes over a large cluster cannot take the whole CPU while status reports stream in.
/// After a pass that had nothing to write, changes that cannot alter any decision (see
/// [`Quiet`]) run no pass.
pub async fn run(mut view: SharedReader, alloc: Arc<Mutex<()>>, stop: CancellationToken) {
    let store = view.store().clone();
    let mut quiet: Option<Quiet> = None;
    let mut timer = true;
    let mut wake_at = tokio::time::Instant::now();
    let mut took = Duration::ZERO;
    loop {
        if !store.is_leader() {
            // Followers keep a copy of the state; only the leader decides.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        {
            // The view is read under the lock, so it holds every address the API allocated.
            let _guard = alloc.lock().await;
            let (live, delta) = view.refresh().await;
            let skip = !timer
                && quiet
                    .as_ref()
                    .is_some_and(|q| q.unaffected(&delta, |id| live.task(id).map(|t| &t.obj)));
            if !skip {
                let started = Instant::now();
                let inputs = inputs_now();
                let now = inputs.now;
                let decided = decide(live.state(), &inputs);
                let tasks = live.state().tasks.len();
                let outcome = match decided {
                    Ok(d) => {
                        let wrote = !d.ops.ops.is_empty();
                        let next = d.next_pass(now);
                        let q = (!wrote).then(|| Quiet::new(live.state()));
                        drop(live);
                        write(&store, tasks, d).await.map(|()| (q, next))
                    }
                    Err(e) => Err(e),
                };
                took = started.elapsed();
                let wake = match outcome {
                    Ok((q, next)) => {
                        quiet = q;
                        next.unwrap_or(Duration::from_secs(2))
                    }
                    Err(e) => {
                        // A conflict means someone wrote meanwhile: the next pass sees it.
                        tracing::debug!(error = %e, "control pass did not complete; retrying");
                        quiet = None;
                        Duration::from_millis(50)
                    }
                };
                wake_at = tokio::time::Instant::now() + wake;
            }
        }
        timer = false;
        tokio::select! {
            _ = stop.cancelled() => return,
            open = view.changed() => {
                // Coalesce bursts of changes into one pass.
                if !open || !crate::state::settle(took, &stop).await { return; }
            }
            _ = tokio::time::sleep_until(wake_at) => timer = true,
        }
    }
}

/// One pass over a fresh snapshot; returns how soon the next must run if nothing changes.
pub async fn pass(store: &Store) -> Result<Option<Duration>, ApiError> {
    pass_on(store, &crate::state::load(store)).await
}

/// One pass over `state` (a fresh load or a [`crate::state::LiveState`]'s view); returns how
/// soon the next must run if nothing changes.
pub async fn pass_on(store: &Store, state: &ClusterState) -> Result<Option<Duration>, ApiError> {
    let inputs = inputs_now();
    let p = decide(state, &inputs)?;
    let next = p.next_pass(inputs.now);
    write(store, state.tasks.len(), p).await?;
    Ok(next)
}

/// The decision's inputs from the world: the clock, and a fresh seed for new task IDs.
fn inputs_now() -> Inputs {
    Inputs::new(chrono::Utc::now(), rand::random())
}

/// What one pass decided, as store operations, and when the next pass must run at the latest.
struct Pass {
    ops: OpsBySlot,
    created: usize,
    wake_at: Option<chrono::DateTime<chrono::Utc>>,
    decide_ms: u64,
}

impl Pass {
    fn next_pass(&self, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
        self.wake_at.map(|w| {
            (w - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_millis(10))
        })
    }
}

/// Runs the pure decision over `state` and turns it into store operations, each quoting the
/// version it was decided from; logs what an operator should hear about.
fn decide(state: &ClusterState, inputs: &Inputs) -> Result<Pass, ApiError> {
    let started = Instant::now();
    let d = shoal_control::decide(state, inputs);
    let decide_ms = started.elapsed().as_millis() as u64;
    for note in &d.notes {
        log_note(note);
    }
    observe_scheduling(&d, inputs.now);
    let mut ops = OpsBySlot::default();
    for t in &d.created {
        ops.push(slot_of(t), db::put(t, Expect::Absent)?);
    }
    for (t, v) in &d.updated {
        ops.push(slot_of(t), db::put(t, Expect::Version(*v))?);
    }
    for (id, v) in &d.deleted {
        ops.push(
            alone("task", id),
            db::delete::<StoredTask>(id, Expect::Version(*v)),
        );
    }
    for (svc, v) in &d.services {
        ops.push(
            alone("service", svc.id()),
            db::put(svc, Expect::Version(*v))?,
        );
    }
    Ok(Pass {
        ops,
        created: d.created.len(),
        wake_at: d.wake_at,
        decide_ms,
    })
}

/// Feeds the scheduling latency: each task this pass assigned (the scheduler stamps its status
/// with the pass's time), from its creation.
fn observe_scheduling(d: &shoal_control::Decision, now: chrono::DateTime<chrono::Utc>) {
    let tasks = d.created.iter().chain(d.updated.iter().map(|(t, _)| t));
    for t in tasks {
        let Some(status) = t.task.status.as_ref() else {
            continue;
        };
        if status.state != Some(shoal_api::models::TaskState::ASSIGNED) {
            continue;
        }
        let at = |s: Option<&String>| {
            s.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
        };
        let (Some(assigned), Some(created)) = (
            at(status.timestamp.as_ref()),
            at(t.task.created_at.as_ref()),
        ) else {
            continue;
        };
        // Assigned by this pass: stamped with its time (formatting keeps microseconds or less).
        if (assigned - now).num_milliseconds().abs() > 1 {
            continue;
        }
        if let Ok(wait) = (assigned - created).to_std() {
            crate::metrics::METRICS
                .scheduling
                .observe(wait.as_secs_f64());
        }
    }
}

/// Logs a decision's note.
fn log_note(note: &Note) {
    match note {
        Note::PeriodicJobDue { service, iteration } => {
            tracing::info!(%service, iteration, "periodic job due; starting it")
        }
        Note::PeriodicJobSkipped { service, skipped } => tracing::warn!(
            %service,
            skipped,
            "periodic job due while its last run is still going; skipping this run"
        ),
        Note::RollingBack { service, task } => {
            tracing::warn!(%service, %task, "update failed; rolling back")
        }
        Note::Paused {
            service,
            what,
            task,
        } => tracing::warn!(%service, %task, "{what} paused after a task failed"),
    }
}

/// Writes what a pass decided.
async fn write(store: &Store, tasks: usize, p: Pass) -> Result<(), ApiError> {
    if p.ops.ops.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let n = p.ops.ops.len();
    let written = write_in_batches(store, p.ops).await;
    tracing::debug!(
        ops = n,
        created = p.created,
        tasks,
        decide_ms = p.decide_ms,
        write_ms = started.elapsed().as_millis() as u64,
        "control pass writes"
    );
    written
}

/// What a pass's operations are grouped by when they must be split: a service's slot (or, for
/// global services, its node), so that stopping a task and creating its replacement stay in one
/// atomic write. Deletions and service updates stand alone.
type BatchKey = (&'static str, String, u64, String);

fn slot_of(t: &StoredTask) -> BatchKey {
    let node = if t.slot() == 0 {
        t.node_id().unwrap_or_default().to_string()
    } else {
        String::new()
    };
    ("slot", t.service_id().to_string(), t.slot(), node)
}

fn alone(kind: &'static str, id: &str) -> BatchKey {
    (kind, id.to_string(), 0, String::new())
}

/// A pass's operations in the order they were decided, each with its slot.
#[derive(Default)]
struct OpsBySlot {
    ops: Vec<(BatchKey, Op)>,
}

impl OpsBySlot {
    fn push(&mut self, key: BatchKey, op: Op) {
        self.ops.push((key, op));
    }
}

/// Writes a pass's operations: as one batch when they fit [`MAX_OPS_PER_WRITE`] (the usual
/// case, and the pass is atomic), else as several batches of whole slots, submitted together so
/// the store coalesces them into as few raft entries as its limits allow. A batch that fails
/// leaves the others written; the next pass sees what is missing and decides again, as after a
/// crash.
async fn write_in_batches(store: &Store, ops: OpsBySlot) -> Result<(), ApiError> {
    let ops = ops.ops;
    if ops.len() <= MAX_OPS_PER_WRITE {
        return db::write(store, ops.into_iter().map(|(_, op)| op).collect())
            .await
            .map(|_| ());
    }
    let batches = split_by_slot(ops);
    let results = futures::future::join_all(batches.into_iter().map(|b| db::write(store, b))).await;
    results
        .into_iter()
        .find(|r| r.is_err())
        .unwrap_or(Ok(0))
        .map(|_| ())
}

/// Cuts operations into batches of about [`MAX_OPS_PER_WRITE`], never splitting a slot.
fn split_by_slot(mut ops: Vec<(BatchKey, Op)>) -> Vec<Vec<Op>> {
    // Stable: within a slot, the decided order is kept.
    ops.sort_by(|a, b| a.0.cmp(&b.0));
    let mut batches: Vec<Vec<Op>> = Vec::new();
    let mut current: Vec<Op> = Vec::new();
    let mut last: Option<BatchKey> = None;
    for (key, op) in ops {
        if current.len() >= MAX_OPS_PER_WRITE && last.as_ref() != Some(&key) {
            batches.push(std::mem::take(&mut current));
        }
        current.push(op);
        last = Some(key);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::models::{Node, TaskState};
    use shoal_api::objects::StoredService;
    use std::collections::HashMap;

    #[test]
    fn big_writes_split_between_slots_never_inside_one() {
        let mut ops = Vec::new();
        for slot in 1..=3000u64 {
            // A replacement: the old task stopped and the new one created, in the same slot.
            for id in ["old", "new"] {
                let op = db::delete::<StoredTask>(&format!("{id}{slot}"), Expect::Any);
                ops.push((("slot", "s".to_string(), slot, String::new()), op));
            }
        }
        let batches = split_by_slot(ops);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4096, 1904]
        );
        let first_last = batches[0].last().map(|op| op.key().1.to_string());
        let second_first = batches[1].first().map(|op| op.key().1.to_string());
        assert_eq!(first_last.as_deref(), Some("new2048"));
        assert_eq!(second_first.as_deref(), Some("old2049"));
    }

    #[tokio::test]
    async fn a_pass_places_more_tasks_than_one_write_holds_and_then_rests() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(shoal_store::StoreOptions {
            dir: dir.path().to_path_buf(),
            raft_node_id: 1,
            raft_addr: "127.0.0.1:2377".into(),
            bootstrap: true,
            transport: None,
            data_key: shoal_store::seal::Key::generate().expect("data key"),
            recorder: None,
        })
        .await
        .unwrap();
        let mut ops = Vec::new();
        for i in 0..3 {
            let node: Node = serde_json::from_str(&format!(
                r#"{{"ID":"node{i}","Spec":{{"Role":"worker","Availability":"active"}},"Status":{{"State":"ready"}}}}"#
            ))
            .unwrap();
            ops.push(db::put(&node, Expect::Absent).unwrap());
        }
        let mut svc = StoredService::default();
        svc.service.id = Some("s".into());
        svc.service.spec = Some(
            serde_json::from_str(r#"{"Name":"s","Mode":{"Replicated":{"Replicas":5000}}}"#)
                .unwrap(),
        );
        svc.spec_version = 1;
        ops.push(db::put(&svc, Expect::Absent).unwrap());
        db::write(&store, ops).await.unwrap();

        let before = store.last_applied();
        pass(&store).await.unwrap();
        let state = crate::state::load(&store);
        assert_eq!(state.tasks.len(), 5000);
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for t in &state.tasks {
            assert_eq!(t.obj.state(), TaskState::ASSIGNED);
            *per_node
                .entry(t.obj.node_id().unwrap_or("none"))
                .or_default() += 1;
        }
        let mut counts: Vec<usize> = per_node.values().copied().collect();
        counts.sort();
        assert_eq!(counts, vec![1666, 1667, 1667], "spread evenly");
        assert!(store.last_applied() > before);

        let settled = store.last_applied();
        pass(&store).await.unwrap();
        assert_eq!(
            store.last_applied(),
            settled,
            "a second pass has nothing to write"
        );
        store.shutdown().await.unwrap();
    }
}
