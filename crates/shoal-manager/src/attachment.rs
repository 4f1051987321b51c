//! Network attachments: a plain container (`docker run --network <attachable swarm network>`)
//! gets its address the way a service task does, from a task the store keeps for it. As in
//! Swarm, that task has no service and carries a `NetworkAttachmentSpec`; it is made for the
//! node that asked, allocated an address by the control loop, sent to the node with its other
//! assignments (so the node carries the network and its peers learn the address), and deleted
//! once the node reports it terminal (the container is gone) or the node leaves the swarm.

use crate::db;
use shoal_api::models::{Network, TaskSpec, TaskSpecNetworkAttachmentSpec, TaskState, TaskStatus};
use shoal_api::objects::{AttachedNetwork, AttachedNetworkSpec, NetworkAttachment, StoredTask};
use shoal_api::{id, ApiError};
use shoal_store::{Expect, Store};

/// Why a node's container gets no address on a network. The messages are what the user sees
/// (the leader sends them back over the node's session).
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    /// The task ID the node picked belongs to another task.
    #[error("task ID {task_id} is already in use")]
    TaskIdInUse {
        /// The contested ID.
        task_id: String,
    },
    /// No swarm network has that name or ID.
    #[error("could not attach to network {network}: network not found")]
    NetworkNotFound {
        /// The name or ID asked for.
        network: String,
    },
    /// The network is ingress, or was created without `--attachable`.
    #[error(
        "could not attach to network {name}: network {name} not manually attachable \
         (create it with --attachable)"
    )]
    NotAttachable {
        /// The network's name.
        name: String,
    },
    /// Storing the attachment task failed.
    #[error("{0}")]
    Store(#[from] ApiError),
}

/// Stores the attachment task `task_id` on `network` for `node_id`; a repeat of the same
/// request is accepted.
pub async fn create(
    store: &Store,
    node_id: &str,
    task_id: &str,
    network: &str,
    aliases: Vec<String>,
) -> Result<(), AttachmentError> {
    if let Some(t) = db::get::<StoredTask>(store, task_id) {
        return if t.obj.is_attachment() && t.obj.node_id() == Some(node_id) {
            Ok(())
        } else {
            Err(AttachmentError::TaskIdInUse {
                task_id: task_id.to_string(),
            })
        };
    }
    let task = task(store, node_id, task_id, network, aliases)?;
    let op = db::put(&task, Expect::Absent)?;
    db::write(store, vec![op]).await?;
    Ok(())
}

/// The attachment task, or why `network` cannot be attached to.
fn task(
    store: &Store,
    node_id: &str,
    task_id: &str,
    network: &str,
    aliases: Vec<String>,
) -> Result<StoredTask, AttachmentError> {
    let n = db::lookup::<Network>(store, network)
        .ok_or_else(|| AttachmentError::NetworkNotFound {
            network: network.to_string(),
        })?
        .obj;
    let name = n.name.clone().unwrap_or_default();
    if n.ingress == Some(true) || n.attachable != Some(true) {
        return Err(AttachmentError::NotAttachable { name });
    }
    let now = id::now();
    let mut t = StoredTask::default();
    t.task.id = Some(task_id.to_string());
    t.task.node_id = Some(node_id.to_string());
    t.task.desired_state = Some(TaskState::RUNNING);
    t.task.created_at = Some(now.clone());
    t.task.updated_at = Some(now.clone());
    t.task.status = Some(TaskStatus {
        state: Some(TaskState::NEW),
        message: Some("network attachment".into()),
        timestamp: Some(now),
        ..Default::default()
    });
    t.task.spec = Some(TaskSpec {
        network_attachment_spec: Some(TaskSpecNetworkAttachmentSpec {
            container_id: Some(String::new()),
        }),
        ..Default::default()
    });
    t.networks_attachments = vec![NetworkAttachment {
        network: AttachedNetwork {
            id: n.id.clone().unwrap_or_default(),
            spec: AttachedNetworkSpec { name },
        },
        addresses: Vec::new(),
        aliases,
    }];
    Ok(t)
}
