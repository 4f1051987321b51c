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

/// Stores the attachment task `task_id` on `network` for `node_id`; a repeat of the same
/// request is accepted. The error is the message the user sees.
pub async fn create(
    store: &Store,
    node_id: &str,
    task_id: &str,
    network: &str,
    aliases: Vec<String>,
) -> Result<(), String> {
    if let Some(t) = db::get::<StoredTask>(store, task_id) {
        return if t.obj.is_attachment() && t.obj.node_id() == Some(node_id) {
            Ok(())
        } else {
            Err(format!("task ID {task_id} is already in use"))
        };
    }
    let task = task(store, node_id, task_id, network, aliases)?;
    let op = db::put(&task, Expect::Absent).map_err(|e| e.message)?;
    db::write(store, vec![op])
        .await
        .map(|_| ())
        .map_err(|e: ApiError| e.message)
}

/// The attachment task, or why `network` cannot be attached to.
fn task(
    store: &Store,
    node_id: &str,
    task_id: &str,
    network: &str,
    aliases: Vec<String>,
) -> Result<StoredTask, String> {
    let n = db::lookup::<Network>(store, network)
        .ok_or_else(|| format!("could not attach to network {network}: network not found"))?
        .obj;
    let name = n.name.clone().unwrap_or_default();
    if n.ingress == Some(true) || n.attachable != Some(true) {
        return Err(format!(
            "could not attach to network {name}: network {name} not manually attachable \
             (create it with --attachable)"
        ));
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
