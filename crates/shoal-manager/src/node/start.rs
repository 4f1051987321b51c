//! Starting a node that is in a swarm: the manager if it is one, and always its session.

use super::renewal::renewal_loop;
use super::{Identity, NodeError, NodeSession};
use crate::api::AppState;
use crate::cluster::Manager;
use shoal_api::Role;
use shoal_pki::NodeCert;
use std::sync::Arc;

/// This node's engine images, read by a task that lives as long as the session that receives
/// them (issue 22's index); `None` until the engine was first read, so an empty engine is
/// reported as empty and not mistaken for "not read yet".
pub(crate) fn engine_images(
    d: &AppState,
) -> tokio::sync::watch::Receiver<Option<Vec<shoal_api::images::NodeImage>>> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(crate::images::watch_engine(d.clone(), tx));
    rx
}

/// Starts what a node in a swarm runs: the manager if it is one, and always the agent's
/// session. Used by join and by a daemon restart.
pub async fn start_node(
    d: &AppState,
    identity: Identity,
    cert: &NodeCert,
    description: Option<shoal_api::models::NodeDescription>,
    bootstrap: bool,
) -> Result<(), NodeError> {
    let mut manager = None;
    if identity.role != Role::Manager {
        // A demotion cut short after the worker identity was saved.
        match super::aside::forget_raft_of_worker(&d.data_dir) {
            Ok(true) => tracing::warn!("removed raft state left by a demotion cut short"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "removing raft state left by a demotion"),
        }
    }
    if identity.role == Role::Manager {
        let kek = d.lock.kek_for(&d.data_dir)?;
        let data_key = super::keys::data_key(&d.data_dir, &kek)?;
        let m = Manager::start(&d.data_dir, identity.clone(), cert, bootstrap, data_key).await?;
        super::lock::spawn_follow(d, &m);
        manager = Some(Arc::new(m));
    }
    // Published before the session starts: a role change it reports must find the manager.
    *d.manager.write().await = manager.clone();
    let session = match NodeSession::start(d, &identity, cert, description).await {
        Ok(s) => s,
        Err(e) => {
            *d.manager.write().await = None;
            if let Some(m) = manager {
                m.shutdown().await;
            }
            return Err(e.into());
        }
    };
    tokio::spawn(renewal_loop(Arc::downgrade(d), session.stopped()));
    *d.node.write().await = Some((identity, Arc::new(session)));
    Ok(())
}
