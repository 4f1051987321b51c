//! A running manager: the store plus its control loops, started at `swarm init` or on restart.

use crate::{control, dispatcher};
use futures::future::BoxFuture;
use shoal_api::dispatch::{NodeAssignments, TaskStatusReport};
use shoal_store::{Store, StoreOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;

/// The node-side half the manager hands assignments to (the agent, wired in by the binary).
pub trait AgentHost: Send + Sync {
    /// Starts the agent for `node_id` on these channels.
    fn start(
        &self,
        node_id: String,
        assignments: watch::Receiver<NodeAssignments>,
        reports: mpsc::Sender<Vec<TaskStatusReport>>,
    ) -> BoxFuture<'_, Result<(), String>>;
    /// Stops the agent; with `remove` it also removes every container and network it made.
    fn stop(&self, remove: bool) -> BoxFuture<'_, ()>;
}

/// The local node's identity, kept beside the store so a restart rejoins as the same node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// Node ID.
    pub node_id: String,
    /// Address other nodes reach this one at (`host:2377`).
    pub addr: String,
}

impl Identity {
    fn path(dir: &Path) -> PathBuf {
        dir.join("node.json")
    }
    /// Reads the identity saved by `swarm init`, if this data dir has one.
    pub fn load(dir: &Path) -> Option<Identity> {
        let data = std::fs::read(Self::path(dir)).ok()?;
        serde_json::from_slice(&data).ok()
    }
    /// Saves it durably.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join("node.json.tmp");
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, Self::path(dir))?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// A manager at work.
pub struct Manager {
    /// The replicated store.
    pub store: Store,
    /// This node.
    pub identity: Identity,
    /// Serializes address allocation between the API and the control loop.
    pub alloc: Arc<Mutex<()>>,
    stop: CancellationToken,
}

impl Manager {
    /// Opens the store in `dir` and starts the loops and the local agent's dispatcher session.
    pub async fn start(
        dir: &Path,
        identity: Identity,
        agent: &dyn AgentHost,
    ) -> Result<Manager, String> {
        let store = Store::open(StoreOptions {
            dir: dir.join("raft"),
            raft_node_id: 1,
            raft_addr: identity.addr.clone(),
            bootstrap: true,
            transport: None,
        })
        .await
        .map_err(|e| format!("opening the store in {}: {e}", dir.display()))?;
        let stop = CancellationToken::new();
        let alloc = Arc::new(Mutex::new(()));
        tokio::spawn(control::run(store.clone(), alloc.clone(), stop.clone()));
        let (atx, arx) = watch::channel(NodeAssignments::default());
        let (rtx, rrx) = mpsc::channel(1024);
        tokio::spawn(dispatcher::serve_node(
            store.clone(),
            identity.node_id.clone(),
            atx,
            stop.clone(),
        ));
        tokio::spawn(dispatcher::collect_reports(
            store.clone(),
            rrx,
            stop.clone(),
        ));
        agent.start(identity.node_id.clone(), arx, rtx).await?;
        Ok(Manager {
            store,
            identity,
            alloc,
            stop,
        })
    }

    /// Stops the loops and the store.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        if let Err(e) = self.store.shutdown().await {
            tracing::warn!(error = %e, "store shutdown");
        }
    }
}
