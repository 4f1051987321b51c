//! `swarm leave`: stops what the node runs and forgets the swarm (raft state, identity, CA,
//! certificates). A manager first takes itself out of the raft voters.

use super::NodeError;
use crate::api::AppState;
use crate::cluster::Manager;
use crate::db;
use shoal_api::models::{Node, NodeSpecRoleEnum, Reachability};
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
    if let Some(m) = manager.as_ref().filter(|_| !force) {
        return Err(NodeError::ManagerLeaveNeedsForce(refusal(m)));
    }
    if let Some(m) = &manager {
        leave_raft(m).await;
    }
    // While the session is open: the leader hears the release and moves the address at once.
    d.agent.hand_over().await;
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

/// Why a manager may not leave without `--force`, from the managers' reachability as
/// `docker node ls` shows it (what dockerd's `managerStats` counts).
fn refusal(m: &Manager) -> String {
    if m.store.leader().is_none() {
        return manager_leave_refusal(None);
    }
    let me = m.identity.node_id.as_str();
    let (mut active, mut reachable, mut unreachable) = (false, 0, 0);
    for n in db::list::<Node>(&m.store) {
        let n = crate::api::nodes::with_manager_status(m, n.obj);
        match n.manager_status.and_then(|s| s.reachability) {
            Some(Reachability::REACHABLE) => {
                reachable += 1;
                active |= n.id.as_deref() == Some(me);
            }
            Some(Reachability::UNREACHABLE) => unreachable += 1,
            _ => {}
        }
    }
    manager_leave_refusal(Some((active, reachable, unreachable)))
}

/// dockerd's refusal of `swarm leave` on a manager, word for word (`Cluster.Leave`): `stats`
/// is (this manager counted reachable, reachable managers, unreachable ones), None when the
/// manager has no leader to ask. The last manager's words end with a space, as Docker's do.
pub fn manager_leave_refusal(stats: Option<(bool, usize, usize)>) -> String {
    let mut msg = String::from(
        "You are attempting to leave the swarm on a node that is participating as a manager. ",
    );
    match stats {
        None => msg.push_str("Doing so may lose the consensus of your cluster. "),
        Some((active, reachable, unreachable)) => {
            // removingManagerCausesLossOfQuorum and isLastManager.
            if active && reachable <= unreachable + 2 {
                if reachable == 1 && unreachable == 0 {
                    msg.push_str("Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. ");
                    return msg;
                }
                msg.push_str(&format!(
                    "Removing this node leaves {} managers out of {}. Without a Raft quorum your swarm will be inaccessible. ",
                    reachable.saturating_sub(1),
                    reachable + unreachable
                ));
            }
        }
    }
    msg.push_str("The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message.");
    msg
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

#[cfg(test)]
mod tests {
    use super::manager_leave_refusal as refusal;

    #[test]
    fn a_manager_is_refused_in_dockerds_words_for_each_cluster() {
        let start =
            "You are attempting to leave the swarm on a node that is participating as a manager. ";
        let end = "The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message.";
        assert_eq!(
            refusal(Some((true, 1, 0))),
            format!("{start}Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. ")
        );
        assert_eq!(
            refusal(Some((true, 2, 0))),
            format!("{start}Removing this node leaves 1 managers out of 2. Without a Raft quorum your swarm will be inaccessible. {end}")
        );
        assert_eq!(
            refusal(Some((true, 3, 1))),
            format!("{start}Removing this node leaves 2 managers out of 4. Without a Raft quorum your swarm will be inaccessible. {end}")
        );
        // Five reachable managers keep their quorum without this one: no count, still refused.
        assert_eq!(refusal(Some((true, 5, 0))), format!("{start}{end}"));
        assert_eq!(refusal(Some((true, 3, 0))), format!("{start}{end}"));
        assert_eq!(
            refusal(None),
            format!("{start}Doing so may lose the consensus of your cluster. {end}")
        );
    }
}
