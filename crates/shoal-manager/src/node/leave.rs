//! `swarm leave`: stops what the node runs and forgets the swarm (raft state, identity, CA,
//! certificates). A manager first takes itself out of the raft voters.

use super::NodeError;
use crate::api::AppState;
use crate::cluster::Manager;
use crate::db;
use shoal_api::models::{Node, NodeSpecRoleEnum};
use shoal_store::Expect;

/// Leaves the swarm; a manager only with `force` (Docker's rule: it may be the last one).
pub async fn leave(d: &AppState, force: bool) -> Result<(), NodeError> {
    let _lock = d.lifecycle.lock().await;
    if d.lock.is_locked() {
        if !force {
            return Err(NodeError::LockedLeave);
        }
        // Nothing runs on a locked node: only its state is forgotten.
        remove_state(d);
        tracing::info!("left the swarm (it was locked)");
        return Ok(());
    }
    let Some((_, session)) = d.node.read().await.clone() else {
        return Err(NodeError::NotInSwarm);
    };
    let manager = d.manager.read().await.clone();
    if manager.is_some() && !force {
        return Err(NodeError::ManagerLeaveNeedsForce);
    }
    if let Some(m) = &manager {
        leave_raft(m).await;
    }
    *d.manager.write().await = None;
    *d.node.write().await = None;
    session.stop();
    d.agent.stop(true).await;
    if let Some(m) = manager {
        m.shutdown().await;
    }
    remove_state(d);
    tracing::info!("left the swarm");
    Ok(())
}

/// Forgets the swarm on disk and in memory: raft state, identity, certificates and keys.
fn remove_state(d: &AppState) {
    d.lock.clear();
    // The identity first: once it is gone (durably) the node is in no swarm, whatever a crash
    // leaves of the rest (a later init sets leftover raft state aside).
    for sub in ["node.json", "raft", "ca", "certs", super::keys::KEYS_DIR] {
        let p = d.data_dir.join(sub);
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), error = %e, "removing swarm state");
            }
        }
        if let Err(e) = super::aside::sync_dir(&d.data_dir) {
            tracing::warn!(path = %d.data_dir.display(), error = %e, "syncing the data dir");
        }
    }
}

/// A manager that leaves a swarm with other managers first takes itself out of the voters (by
/// demoting its node), so the others keep their quorum. Best effort, bounded to 10 s.
async fn leave_raft(m: &Manager) {
    let me = m.store.raft_id();
    if m.store.membership().voters.keys().all(|v| *v == me) {
        return;
    }
    let Some(mut node) = db::get::<Node>(&m.store, &m.identity.node_id) else {
        return;
    };
    if let Some(spec) = node.obj.spec.as_mut() {
        spec.role = Some(NodeSpecRoleEnum::WORKER);
    }
    let op = match db::put(&node.obj, Expect::Version(node.version)) {
        Ok(op) => op,
        Err(_) => return,
    };
    if let Err(e) = db::write(&m.store, vec![op]).await {
        tracing::warn!(error = %e.message, "could not demote this manager before leaving");
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if !m.store.membership().voters.contains_key(&me) {
            tracing::info!("left the raft voters");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tracing::warn!("still a raft voter after 10s; leaving anyway");
}
