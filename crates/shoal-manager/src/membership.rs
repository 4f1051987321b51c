//! Keeps raft's voters equal to the nodes whose role is manager: a promoted node is added as a
//! learner, and made a voter once it has caught up; a demoted or removed one leaves the voters,
//! and once raft no longer counts it its `Member` record goes too, so its certificate (which
//! says manager until it renews) is refused by every manager's raft service from then on.
//! Leader only. The API refuses role changes that would lose quorum before they get here.

use crate::db::{self, Member};
use shoal_api::models::{Node, NodeSpecRoleEnum};
use shoal_store::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Raft ids and addresses of the nodes that should be voting managers.
pub fn desired(store: &Store) -> BTreeMap<u64, String> {
    let nodes: BTreeMap<String, Node> = db::list::<Node>(store)
        .into_iter()
        .filter_map(|n| Some((n.obj.id.clone()?, n.obj)))
        .collect();
    db::list::<Member>(store)
        .into_iter()
        .filter(|m| {
            nodes
                .get(&m.obj.node_id)
                .and_then(|n| n.spec.as_ref())
                .and_then(|s| s.role)
                == Some(NodeSpecRoleEnum::MANAGER)
        })
        .map(|m| (m.obj.raft_id, m.obj.addr))
        .collect()
}

/// `Member` records to delete (node ID and the version seen, so a promotion written meanwhile
/// is not undone): their node is gone or no longer a manager, and raft counts their id neither
/// as voter nor as learner any more.
pub fn stale_members(store: &Store) -> Vec<(String, u64)> {
    let managers: BTreeSet<String> = db::list::<Node>(store)
        .into_iter()
        .filter(|n| n.obj.spec.as_ref().and_then(|s| s.role) == Some(NodeSpecRoleEnum::MANAGER))
        .filter_map(|n| n.obj.id)
        .collect();
    let have = store.membership();
    db::list::<Member>(store)
        .into_iter()
        .filter(|m| !managers.contains(&m.obj.node_id))
        .filter(|m| {
            !have.voters.contains_key(&m.obj.raft_id) && !have.learners.contains_key(&m.obj.raft_id)
        })
        .map(|m| (m.obj.node_id, m.version))
        .collect()
}

/// Runs until `stop`.
pub async fn run(store: Store, stop: CancellationToken) {
    let mut changes = store.watch();
    loop {
        if store.is_leader() {
            if let Err(e) = reconcile(&store).await {
                tracing::warn!(error = %e, "raft membership change");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changes.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }
}

async fn reconcile(store: &Store) -> Result<(), shoal_store::StoreError> {
    let want = desired(store);
    if want.is_empty() {
        return Ok(());
    }
    let have = store.membership();
    for (id, addr) in &want {
        if !have.voters.contains_key(id) && !have.learners.contains_key(id) {
            tracing::info!(raft_id = id, %addr, "adding a manager to raft as a learner");
            store.add_learner(*id, addr.clone()).await?;
        }
    }
    // A new manager votes once it has (nearly) the whole log; until then it only listens.
    let me = store.raft_id();
    let voters: BTreeSet<u64> = want
        .keys()
        .copied()
        .filter(|id| *id == me || have.voters.contains_key(id) || store.caught_up(*id, 16))
        .collect();
    let current: BTreeSet<u64> = have.voters.keys().copied().collect();
    if voters != current && !voters.is_empty() {
        tracing::info!(?voters, ?current, "changing raft voters");
        store.set_voters(voters, true).await?;
    }
    let stale = stale_members(store);
    if !stale.is_empty() {
        tracing::info!(nodes = ?stale, "demoted managers left raft: forgetting their raft identity");
        let ops = stale
            .iter()
            .map(|(id, v)| db::delete::<Member>(id, shoal_store::Expect::Version(*v)))
            .collect();
        if let Err(e) = db::write(store, ops).await {
            tracing::warn!(error = %e, "forgetting demoted managers' raft identity");
        }
    }
    Ok(())
}
