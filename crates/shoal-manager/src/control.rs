//! The control loop: on every store change (and when a restart delay ends) it runs orchestration,
//! allocation and scheduling over one snapshot and writes the result as one batch (split by
//! slot only beyond [`MAX_OPS_PER_WRITE`] operations).

use crate::allocator::{attach_task, Ipam};
use crate::db;
use crate::orchestrator;
use crate::scheduler;
use crate::state::{ClusterState, Delta, SharedReader, SharedState};
use shoal_api::models::TaskState;
use shoal_api::objects::{is_terminal, state_rank, StoredTask};
use shoal_api::{id, ApiError};
use shoal_store::{Expect, Op, Store};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// A pass writes at most this many operations per store write; more are split (see
/// [`write_in_batches`]). Big enough that `--replicas 4000` is still one raft entry.
pub const MAX_OPS_PER_WRITE: usize = 4096;

/// Runs passes until cancelled. `alloc` serializes address allocation with the API.
pub async fn run(store: Store, alloc: Arc<Mutex<()>>, stop: CancellationToken) {
    run_shared(SharedState::new(store).reader(), alloc, stop).await
}

/// [`run`] on a view shared with other loops (the dispatcher), so each change is decoded once.
///
/// Changes are coalesced for 5 ms, or for as long as the last pass took (at most 250 ms) so
/// that passes over a large cluster cannot take the whole CPU while status reports stream in.
/// After a pass that had nothing to write, changes that cannot alter any decision (see
/// [`Quiet`]) run no pass.
pub async fn run_shared(mut view: SharedReader, alloc: Arc<Mutex<()>>, stop: CancellationToken) {
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
                let now = chrono::Utc::now();
                let decided = decide(live.state(), now);
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
                if !open { return; }
                // Coalesce bursts of changes into one pass.
                let settle = took.clamp(Duration::from_millis(5), Duration::from_millis(250));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(settle) => {}
                }
            }
            _ = tokio::time::sleep_until(wake_at) => timer = true,
        }
    }
}

/// One pass over a fresh snapshot; returns how soon the next must run if nothing changes.
pub async fn pass(store: &Store) -> Result<Option<Duration>, ApiError> {
    pass_on(store, &ClusterState::load(store)).await
}

/// One pass over `state` (a fresh load or a [`crate::state::LiveState`]'s view); returns how soon the next
/// must run if nothing changes.
pub async fn pass_on(store: &Store, state: &ClusterState) -> Result<Option<Duration>, ApiError> {
    let now = chrono::Utc::now();
    let d = decide(state, now)?;
    let next = d.next_pass(now);
    write(store, state.tasks.len(), d).await?;
    Ok(next)
}

/// What one pass decided: the writes, and when the next pass must run at the latest.
struct Decision {
    ops: OpsBySlot,
    created: usize,
    wake_at: Option<chrono::DateTime<chrono::Utc>>,
    plan_ms: u64,
    schedule_ms: u64,
}

impl Decision {
    fn next_pass(&self, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
        self.wake_at.map(|w| {
            (w - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_millis(10))
        })
    }
}

/// Orchestration, allocation and scheduling over `state`: pure, no I/O.
fn decide(state: &ClusterState, now: chrono::DateTime<chrono::Utc>) -> Result<Decision, ApiError> {
    let started = Instant::now();
    let mut plan = orchestrator::plan(state, now);
    let planned = started.elapsed();

    // Allocate and schedule new tasks, and existing ones still waiting for a node.
    let mut created = std::mem::take(&mut plan.created);
    let mut waiting: Vec<StoredTask> = Vec::new();
    let mut before: Vec<(&StoredTask, u64)> = Vec::new();
    for t in &state.tasks {
        if t.obj.meant_to_run()
            && matches!(
                t.obj.state(),
                TaskState::NEW | TaskState::ALLOCATED | TaskState::PENDING
            )
            && !plan.updated.contains_key(t.obj.id())
        {
            waiting.push(t.obj.clone());
            before.push((&t.obj, t.version));
        }
    }
    if !created.is_empty() || !waiting.is_empty() {
        let mut ipam = Ipam::from_state(state);
        // Only tasks with their addresses go to the scheduler; the others wait, with the reason.
        let mut ready: Vec<&mut StoredTask> = Vec::new();
        for t in created.iter_mut().chain(waiting.iter_mut()) {
            if allocate(t, state, &mut ipam) {
                ready.push(t);
            }
        }
        scheduler::schedule(state, &mut ready);
    }
    let scheduled = started.elapsed();
    let mut ops = OpsBySlot::default();
    for t in &created {
        ops.push(slot_of(t), db::put(t, Expect::Absent)?);
    }
    for (t, (old, version)) in waiting.iter().zip(before.iter()) {
        if t != *old {
            ops.push(slot_of(t), db::put(t, Expect::Version(*version))?);
        }
    }
    for (t, v) in plan.updated.values() {
        ops.push(slot_of(t), db::put(t, Expect::Version(*v))?);
    }
    for (id, v) in &plan.deleted {
        ops.push(
            alone("task", id),
            db::delete::<StoredTask>(id, Expect::Version(*v)),
        );
    }
    for (id, (svc, v)) in &plan.services {
        ops.push(alone("service", id), db::put(svc, Expect::Version(*v))?);
    }
    Ok(Decision {
        ops,
        created: created.len(),
        wake_at: plan.wake_at,
        plan_ms: planned.as_millis() as u64,
        schedule_ms: (scheduled - planned).as_millis() as u64,
    })
}

/// Writes what a pass decided.
async fn write(store: &Store, tasks: usize, d: Decision) -> Result<(), ApiError> {
    if d.ops.ops.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let n = d.ops.ops.len();
    let written = write_in_batches(store, d.ops).await;
    tracing::debug!(
        ops = n,
        created = d.created,
        tasks,
        plan_ms = d.plan_ms,
        schedule_ms = d.schedule_ms,
        write_ms = started.elapsed().as_millis() as u64,
        "control pass writes"
    );
    written
}

/// What is known after a pass that had nothing to write: which changes could make the next
/// pass decide something. A change can only matter through what the decisions read. Status
/// progress of a placed task (assigned, preparing, starting: same task otherwise, neither end
/// waiting nor stopped) changes none of it: not slots, nodes, desired states, spec versions,
/// addresses, node loads nor the restart policy, which looks only at stopped tasks. A slot has
/// at most one runnable task here (else the pass would have stopped the others), so a task's
/// rank decides nothing either. Reaching `running` matters only to a service being updated (the
/// update's parallelism and its completion), so it counts as progress only elsewhere.
/// Timer-driven passes (restart delays) always run.
struct Quiet {
    /// Services with an update or rollback in progress, or with a runnable task of an older spec.
    updating: HashSet<String>,
}

impl Quiet {
    fn new(state: &ClusterState) -> Self {
        let mut updating: HashSet<String> = state
            .services
            .values()
            .filter(|s| orchestrator::updater::in_progress(&s.obj))
            .map(|s| s.obj.id().to_string())
            .collect();
        for t in &state.tasks {
            let t = &t.obj;
            if t.meant_to_run()
                && state
                    .services
                    .get(t.service_id())
                    .is_some_and(|s| t.spec_version != s.obj.spec_version)
            {
                updating.insert(t.service_id().to_string());
            }
        }
        Quiet { updating }
    }

    /// True if a pass over the view after `delta` would still have nothing to write; `task`
    /// finds a task in that view.
    fn unaffected<'a>(&self, delta: &Delta, task: impl Fn(&str) -> Option<&'a StoredTask>) -> bool {
        if delta.reloaded
            || delta.services
            || delta.nodes
            || delta.networks
            || delta.cluster
            || delta.other
        {
            return false;
        }
        delta.tasks.iter().all(|c| {
            let (Some(before), true) = (c.before.as_ref(), c.exists) else {
                return false;
            };
            let Some(now) = task(&c.id) else {
                return false;
            };
            let placed = |t: &StoredTask| {
                !is_terminal(t.state()) && state_rank(t.state()) >= state_rank(TaskState::ASSIGNED)
            };
            let same_task = before.service_id() == now.service_id()
                && before.slot() == now.slot()
                && before.node_id() == now.node_id()
                && before.desired() == now.desired()
                && before.spec_version == now.spec_version
                && before.networks_attachments == now.networks_attachments
                && before.task.created_at == now.task.created_at;
            let started_running =
                now.state() == TaskState::RUNNING && before.state() != TaskState::RUNNING;
            same_task
                && placed(before)
                && placed(now)
                && (!started_running || !self.updating.contains(now.service_id()))
        })
    }
}

/// What a pass's operations are grouped by when they must be split: a service's slot (or, for
/// global services, its node), so that stopping a task and creating its replacement stay in one
/// atomic write. Deletions and service updates stand alone.
type SlotKey = (&'static str, String, u64, String);

fn slot_of(t: &StoredTask) -> SlotKey {
    let node = if t.slot() == 0 {
        t.node_id().unwrap_or_default().to_string()
    } else {
        String::new()
    };
    ("slot", t.service_id().to_string(), t.slot(), node)
}

fn alone(kind: &'static str, id: &str) -> SlotKey {
    (kind, id.to_string(), 0, String::new())
}

/// A pass's operations in the order they were decided, each with its slot.
#[derive(Default)]
struct OpsBySlot {
    ops: Vec<(SlotKey, Op)>,
}

impl OpsBySlot {
    fn push(&mut self, key: SlotKey, op: Op) {
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

/// Leaves a task pending with the reason its address could not be allocated (written once,
/// so an unchanged reason does not rewrite the task every pass).
fn pending_allocation(t: &mut StoredTask, e: ApiError) {
    let s = t.task.status.get_or_insert_with(Default::default);
    if s.err.as_deref() != Some(e.message.as_str()) {
        s.state = Some(TaskState::PENDING);
        s.message = Some("pending address allocation".into());
        s.err = Some(e.message);
        s.timestamp = Some(id::now());
    }
}

/// Gives a network attachment its address and, as its node is known from the start, marks it
/// assigned; false (left pending with the reason) when the network is full.
fn allocate_attachment(t: &mut StoredTask, ipam: &mut Ipam) -> bool {
    for a in t
        .networks_attachments
        .iter_mut()
        .filter(|a| a.addresses.is_empty())
    {
        match ipam.allocate(&a.network.id) {
            Ok(addr) => a.addresses.push(addr),
            Err(e) => {
                pending_allocation(t, e);
                return false;
            }
        }
    }
    let s = t.task.status.get_or_insert_with(Default::default);
    s.state = Some(TaskState::ASSIGNED);
    s.message = Some("network attachment".into());
    s.err = None;
    s.timestamp = Some(id::now());
    false
}

/// Gives a task its network addresses if it lacks them; false (task left pending with the
/// reason) when a network has no free address.
fn allocate(t: &mut StoredTask, state: &ClusterState, ipam: &mut Ipam) -> bool {
    if t.is_attachment() {
        return allocate_attachment(t, ipam);
    }
    let Some(svc) = state.services.get(t.service_id()) else {
        return false;
    };
    let wanted = crate::allocator::service_networks(&svc.obj, state).len();
    if t.networks_attachments.len() == wanted {
        return true;
    }
    match attach_task(t, state, ipam) {
        Ok(()) => true,
        Err(e) => {
            pending_allocation(t, e);
            false
        }
    }
}

/// Cuts operations into batches of about [`MAX_OPS_PER_WRITE`], never splitting a slot.
fn split_by_slot(mut ops: Vec<(SlotKey, Op)>) -> Vec<Vec<Op>> {
    // Stable: within a slot, the decided order is kept.
    ops.sort_by(|a, b| a.0.cmp(&b.0));
    let mut batches: Vec<Vec<Op>> = Vec::new();
    let mut current: Vec<Op> = Vec::new();
    let mut last: Option<SlotKey> = None;
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
    use crate::db::Versioned;
    use shoal_api::models::{
        Network, Node, ServiceSpec, ServiceUpdateStatus, ServiceUpdateStatusStateEnum,
    };
    use shoal_api::objects::StoredService;
    use std::collections::HashMap;

    fn versioned<T>(obj: T) -> Versioned<T> {
        Versioned { obj, version: 1 }
    }

    #[test]
    fn a_task_without_addresses_waits_instead_of_being_scheduled() {
        let net: Network = serde_json::from_str(
            r#"{"Id":"n","Name":"tiny","IPAM":{"Config":[{"Subnet":"10.9.0.0/30"}]}}"#,
        )
        .unwrap();
        let node: Node = serde_json::from_str(r#"{"ID":"node1","Spec":{"Role":"manager","Availability":"active"},"Status":{"State":"ready"}}"#).unwrap();
        let spec: ServiceSpec = serde_json::from_str(r#"{"Name":"s","TaskTemplate":{"ContainerSpec":{"Image":"x"},"Networks":[{"Target":"n"}]}}"#).unwrap();
        let mut svc = StoredService::default();
        svc.service.id = Some("s".into());
        svc.service.spec = Some(spec);
        let mut state = ClusterState {
            networks: vec![versioned(net)],
            nodes: vec![versioned(node)],
            ..Default::default()
        };
        state.services.insert("s".into(), versioned(svc.clone()));
        let mut ipam = Ipam::from_state(&state);
        let mut a = orchestrator::new_task(&svc, 1, None, vec![]);
        let mut b = orchestrator::new_task(&svc, 2, None, vec![]);
        assert!(allocate(&mut a, &state, &mut ipam));
        assert_eq!(a.networks_attachments[0].addresses, vec!["10.9.0.2/30"]);
        assert!(
            !allocate(&mut b, &state, &mut ipam),
            "a task with no address must not be scheduled"
        );
        assert_eq!(b.state(), TaskState::PENDING);
        assert!(b
            .task
            .status
            .as_ref()
            .and_then(|s| s.err.as_deref())
            .unwrap_or("")
            .contains("full"));
        let mut ready = vec![&mut a];
        assert_eq!(scheduler::schedule(&state, &mut ready), 1);
        assert_eq!(a.node_id(), Some("node1"));
    }

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
        let state = ClusterState::load(&store);
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

    /// Applies a pass's writes to a state, as the store would (versions from a counter).
    fn apply(state: &mut ClusterState, ops: OpsBySlot, version: &mut u64) {
        for (_, op) in ops.ops {
            *version += 1;
            match op {
                Op::Put { kind, data, .. } if kind == shoal_api::kind::TASK => {
                    let t: StoredTask = serde_json::from_slice(&data).unwrap();
                    let v = Versioned {
                        obj: t,
                        version: *version,
                    };
                    match state.tasks.iter().position(|x| x.obj.id() == v.obj.id()) {
                        Some(i) => state.tasks[i] = v,
                        None => state.tasks.push(v),
                    }
                }
                Op::Put { kind, data, .. } if kind == shoal_api::kind::SERVICE => {
                    let s: StoredService = serde_json::from_slice(&data).unwrap();
                    state.services.insert(
                        s.id().to_string(),
                        Versioned {
                            obj: s,
                            version: *version,
                        },
                    );
                }
                Op::Delete { id, .. } => state.tasks.retain(|t| t.obj.id() != id),
                other => panic!("unexpected write {other:?}"),
            }
        }
    }

    fn settle(state: &mut ClusterState, now: chrono::DateTime<chrono::Utc>, version: &mut u64) {
        for _ in 0..20 {
            let d = decide(state, now).unwrap();
            if d.ops.ops.is_empty() {
                return;
            }
            apply(state, d.ops, version);
        }
        panic!("the passes never settle");
    }

    #[test]
    fn a_skipped_pass_would_have_had_nothing_to_write() {
        use rand::Rng;
        let mut rng = rand::rng();
        let now = shoal_api::id::parse_time("2030-01-01T00:00:00Z").unwrap();
        let mut version = 1;
        let mut state = ClusterState::default();
        for i in 0..3 {
            let node: Node = serde_json::from_str(&format!(
                r#"{{"ID":"n{i}","Spec":{{"Role":"worker","Availability":"active"}},"Status":{{"State":"ready"}}}}"#
            ))
            .unwrap();
            state.nodes.push(versioned(node));
        }
        for (id, json, spec_version, updating) in [
            (
                "plain",
                r#"{"Name":"plain","Mode":{"Replicated":{"Replicas":4}},"TaskTemplate":{"RestartPolicy":{"Delay":0}}}"#,
                1,
                false,
            ),
            (
                "rolling",
                r#"{"Name":"rolling","Mode":{"Replicated":{"Replicas":6}},"UpdateConfig":{"Parallelism":1},"TaskTemplate":{"RestartPolicy":{"Delay":0}}}"#,
                2,
                true,
            ),
            (
                "delayed",
                r#"{"Name":"delayed","Mode":{"Replicated":{"Replicas":2}}}"#,
                1,
                false,
            ),
            (
                "everywhere",
                r#"{"Name":"everywhere","Mode":{"Global":{}}}"#,
                1,
                false,
            ),
        ] {
            let mut svc = StoredService::default();
            svc.service.id = Some(id.into());
            svc.service.spec = Some(serde_json::from_str(json).unwrap());
            svc.spec_version = spec_version;
            if updating {
                svc.service.update_status = Some(ServiceUpdateStatus {
                    state: Some(ServiceUpdateStatusStateEnum::UPDATING),
                    ..Default::default()
                });
            }
            state.services.insert(id.into(), versioned(svc));
        }
        // Tasks of the rolling service from its older spec, running.
        for slot in 1..=3 {
            let svc = &state.services["rolling"].obj;
            let mut t = orchestrator::new_task(svc, slot, Some("n0"), vec![]);
            t.spec_version = 1;
            t.task.status.get_or_insert_with(Default::default).state = Some(TaskState::RUNNING);
            state.tasks.push(versioned(t));
        }
        settle(&mut state, now, &mut version);

        let progress = [
            TaskState::ACCEPTED,
            TaskState::PREPARING,
            TaskState::STARTING,
            TaskState::RUNNING,
            TaskState::RUNNING,
            TaskState::FAILED,
            TaskState::COMPLETE,
        ];
        let (mut skipped, mut ran) = (0, 0);
        for step in 0..600 {
            if step % 20 == 0 {
                // Start another rolling update, so that updates are often in progress.
                let svc = &mut state.services.get_mut("rolling").unwrap().obj;
                svc.spec_version += 1;
                svc.service.update_status = Some(ServiceUpdateStatus {
                    state: Some(ServiceUpdateStatusStateEnum::UPDATING),
                    ..Default::default()
                });
                settle(&mut state, now, &mut version);
            }
            let quiet = Quiet::new(&state);
            let mut delta = Delta::default();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..state.tasks.len());
                let before = state.tasks[i].obj.clone();
                let mut after = before.clone();
                let s = after.task.status.get_or_insert_with(Default::default);
                s.state = Some(progress[rng.random_range(0..progress.len())]);
                s.timestamp = Some(shoal_api::id::now());
                version += 1;
                state.tasks[i] = Versioned {
                    obj: after,
                    version,
                };
                delta.tasks.push(crate::state::TaskChange {
                    id: before.id().to_string(),
                    before: Some(Arc::new(before)),
                    exists: true,
                });
            }
            let tasks: HashMap<&str, &StoredTask> =
                state.tasks.iter().map(|t| (t.obj.id(), &t.obj)).collect();
            let skip = quiet.unaffected(&delta, |id| tasks.get(id).copied());
            let d = decide(&state, now).unwrap();
            if skip {
                skipped += 1;
                assert!(
                    d.ops.ops.is_empty(),
                    "step {step}: skipped a pass that writes {:?}",
                    d.ops.ops.iter().map(|(_, op)| op.key()).collect::<Vec<_>>()
                );
            } else {
                ran += 1;
            }
            apply(&mut state, d.ops, &mut version);
            settle(&mut state, now, &mut version);
        }
        assert!(skipped > 20 && ran > 20, "skipped {skipped}, ran {ran}");
    }
}
