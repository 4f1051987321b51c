//! Role changes: `docker node promote/demote` of this node reaches it in its assignments; it
//! gets a certificate for the new role, then starts or stops its manager.

use super::client::OnRole;
use super::renewal::renew_certificate;
use super::{keys, Identity, NodeError};
use crate::api::AppState;
use crate::cluster::Manager;
use shoal_api::Role;
use std::sync::Arc;

/// Reacts to `docker node promote/demote` of this node, seen in its assignments.
pub(crate) fn role_watcher(d: &AppState) -> OnRole {
    let weak = Arc::downgrade(d);
    Box::new(move |role, raft_id| {
        let Some(d) = weak.upgrade() else { return };
        tokio::spawn(async move {
            // The managers may be electing a leader right now: retry for a while.
            for attempt in 1..=20u32 {
                match change_role(&d, role, raft_id).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, %role, attempt, "changing this node's role")
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            tracing::error!(%role, "gave up changing this node's role; restart the daemon to retry");
        });
    })
}

/// Gets a certificate for the new role from the managers, then starts or stops the manager.
async fn change_role(d: &AppState, role: Role, raft_id: u64) -> Result<(), NodeError> {
    let _lock = d.lifecycle.lock().await;
    let Some(mut identity) = Identity::load(&d.data_dir) else {
        return Ok(());
    };
    if identity.role == role && (role != Role::Manager || identity.raft_id == raft_id) {
        return Ok(());
    }
    tracing::info!(from = %identity.role, to = %role, "the swarm changed this node's role");
    let mut kek = d.lock.kek_for(&d.data_dir)?;
    let old = keys::load_cert(&d.data_dir, &kek)?;
    let (cert, issued) = renew_certificate(&identity, &old, Some(role)).await?;
    if issued.role != role {
        return Err(NodeError::WrongRole {
            issued: issued.role,
            wanted: role,
        });
    }
    if role == Role::Worker && !keys::has_kek_file(&d.data_dir) {
        // Autolock is for managers: a worker's keys go back under a KEK file of its own.
        let new = keys::new_file_kek(&d.data_dir)?;
        keys::reseal(&d.data_dir, &kek, &new, false)?;
        d.lock.set_kek(new.clone());
        kek = new;
    }
    keys::save_cert(&d.data_dir, &kek, &cert)?;
    identity.role = role;
    identity.raft_id = issued.raft_id.max(raft_id);
    identity
        .save(&d.data_dir)
        .map_err(NodeError::io("saving node identity in", &d.data_dir))?;
    if role == Role::Manager {
        if d.manager.read().await.is_none() {
            let data_key = keys::data_key(&d.data_dir, &kek)?;
            let m = Manager::start(&d.data_dir, identity, &cert, false, data_key).await?;
            super::lock::spawn_follow(d, &m);
            *d.manager.write().await = Some(Arc::new(m));
        }
    } else if let Some(m) = d.manager.write().await.take() {
        m.shutdown().await;
        if let Err(e) = super::aside::forget_raft_of_worker(&d.data_dir) {
            tracing::warn!(error = %e, "removing the raft state of a demoted manager; the next start retries");
        }
    }
    Ok(())
}
