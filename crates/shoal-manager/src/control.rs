//! The control loop: on every store change (and when a restart delay ends) it runs orchestration,
//! allocation and scheduling over one snapshot and writes the result as one batch.

use crate::allocator::{attach_task, Ipam};
use crate::db::{self, Versioned};
use crate::orchestrator;
use crate::scheduler;
use crate::state::ClusterState;
use shoal_api::models::{ServiceUpdateStatus, ServiceUpdateStatusStateEnum, TaskState};
use shoal_api::objects::{StoredService, StoredTask};
use shoal_api::{id, ApiError};
use shoal_store::{Expect, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Runs passes until cancelled. `alloc` serializes address allocation with the API.
pub async fn run(store: Store, alloc: Arc<Mutex<()>>, stop: CancellationToken) {
    let mut changes = store.watch();
    loop {
        if !store.is_leader() {
            // Followers keep a copy of the state; only the leader decides.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            while changes.try_recv().is_ok() {}
            continue;
        }
        let outcome = {
            let _guard = alloc.lock().await;
            pass(&store).await
        };
        let wake = match outcome {
            Ok(next) => next.unwrap_or(Duration::from_secs(2)),
            Err(e) => {
                // A conflict means someone wrote meanwhile: the next pass sees it.
                tracing::debug!(error = %e, "control pass did not complete; retrying");
                Duration::from_millis(50)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = changes.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r { return; }
                // Coalesce bursts of changes into one pass.
                tokio::time::sleep(Duration::from_millis(5)).await;
                while changes.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// One pass; returns how soon the next must run if nothing changes.
pub async fn pass(store: &Store) -> Result<Option<Duration>, ApiError> {
    let now = chrono::Utc::now();
    let state = ClusterState::load(store);
    let mut plan = orchestrator::plan(&state, now);

    // Allocate and schedule new tasks, and existing ones still waiting for a node.
    let mut ipam = Ipam::from_state(&state);
    let mut created = std::mem::take(&mut plan.created);
    let mut waiting: Vec<StoredTask> = state
        .tasks
        .iter()
        .filter(|t| {
            t.obj.desired() == TaskState::RUNNING
                && matches!(
                    t.obj.state(),
                    TaskState::NEW | TaskState::ALLOCATED | TaskState::PENDING
                )
                && !plan.updated.contains_key(t.obj.id())
        })
        .map(|t| t.obj.clone())
        .collect();
    let before: Vec<StoredTask> = waiting.clone();
    {
        // Only tasks with their addresses go to the scheduler; the others wait, with the reason.
        let mut ready: Vec<&mut StoredTask> = Vec::new();
        for t in created.iter_mut().chain(waiting.iter_mut()) {
            if allocate(t, &state, &mut ipam) {
                ready.push(t);
            }
        }
        scheduler::schedule(&state, &mut ready);
    }
    let mut ops = Vec::new();
    for t in &created {
        ops.push(db::put(t, Expect::Absent)?);
    }
    for (t, old) in waiting.iter().zip(before.iter()) {
        if t != old {
            let v = state
                .tasks
                .iter()
                .find(|x| x.obj.id() == t.id())
                .map(|x| x.version)
                .unwrap_or(0);
            ops.push(db::put(t, Expect::Version(v))?);
        }
    }
    for (t, v) in plan.updated.values() {
        ops.push(db::put(t, Expect::Version(*v))?);
    }
    for (id, v) in &plan.deleted {
        ops.push(db::delete::<StoredTask>(id, Expect::Version(*v)));
    }
    ops.extend(update_statuses(&state)?);
    if !ops.is_empty() {
        tracing::debug!(
            ops = ops.len(),
            created = created.len(),
            "control pass writes"
        );
        db::write(store, ops).await?;
    }
    Ok(plan.wake_at.map(|w| {
        (w - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(10))
    }))
}

/// Gives a task its network addresses if it lacks them; false (task left pending with the
/// reason) when a network has no free address.
fn allocate(t: &mut StoredTask, state: &ClusterState, ipam: &mut Ipam) -> bool {
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
            let s = t.task.status.get_or_insert_with(Default::default);
            if s.err.as_deref() != Some(e.message.as_str()) {
                s.state = Some(TaskState::PENDING);
                s.message = Some("pending address allocation".into());
                s.err = Some(e.message);
                s.timestamp = Some(id::now());
            }
            false
        }
    }
}

/// Marks a service's update (or rollback) completed once every task is up to date and running.
fn update_statuses(state: &ClusterState) -> Result<Vec<shoal_store::Op>, ApiError> {
    let mut ops = Vec::new();
    for Versioned { obj: svc, version } in state.services.values() {
        let Some(us) = &svc.service.update_status else {
            continue;
        };
        let done_state = match us.state {
            Some(ServiceUpdateStatusStateEnum::UPDATING) => ServiceUpdateStatusStateEnum::COMPLETED,
            Some(ServiceUpdateStatusStateEnum::ROLLBACK_STARTED) => {
                ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED
            }
            _ => continue,
        };
        let runnable: Vec<&StoredTask> = state
            .tasks
            .iter()
            .map(|t| &t.obj)
            .filter(|t| t.service_id() == svc.id() && t.desired() == TaskState::RUNNING)
            .collect();
        let settled = runnable
            .iter()
            .all(|t| t.spec_version >= svc.spec_version && t.state() == TaskState::RUNNING);
        if settled {
            let mut s: StoredService = svc.clone();
            s.service.update_status = Some(ServiceUpdateStatus {
                state: Some(done_state),
                started_at: us.started_at.clone(),
                completed_at: Some(id::now()),
                message: Some(if done_state == ServiceUpdateStatusStateEnum::COMPLETED {
                    "update completed".into()
                } else {
                    "rollback completed".into()
                }),
            });
            ops.push(db::put(&s, Expect::Version(*version))?);
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::models::{Network, Node, ServiceSpec};

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
}
