//! Builders the dispatcher's tests share: a store in a temporary directory, tasks, services and
//! network attachments as the control loop writes them.

use shoal_api::models::{TaskState, TaskStatus};
use shoal_api::objects::{NetworkAttachment, StoredService, StoredTask};
use shoal_store::{Store, StoreOptions};

/// A task of service `svc` on `node`, optionally using `secret`, observed in `state`.
pub fn task(id: &str, node: &str, secret: Option<&str>, state: TaskState) -> StoredTask {
    let spec: shoal_api::models::TaskSpec = serde_json::from_value(serde_json::json!({
        "ContainerSpec": {"Image": "x", "Secrets": secret.map(|s| vec![serde_json::json!({"SecretID": s, "SecretName": s, "File": {"Name": s}})]).unwrap_or_default()}
    }))
    .unwrap();
    let mut t = StoredTask::default();
    t.task.id = Some(id.into());
    t.task.service_id = Some("svc".into());
    t.task.node_id = Some(node.into());
    t.task.spec = Some(spec);
    t.task.desired_state = Some(TaskState::RUNNING);
    t.task.status = Some(TaskStatus {
        state: Some(state),
        ..Default::default()
    });
    t
}

/// A single-manager store in `dir`.
pub async fn open_store(dir: &std::path::Path) -> Store {
    Store::open(StoreOptions {
        dir: dir.to_path_buf(),
        raft_node_id: 1,
        raft_addr: "127.0.0.1:2377".into(),
        bootstrap: true,
        transport: None,
        data_key: shoal_store::seal::Key::generate().expect("data key"),
        recorder: None,
    })
    .await
    .unwrap()
}

/// A stored service with ID `id`, from its JSON form.
pub fn service(id: &str, json: serde_json::Value) -> StoredService {
    let mut svc: StoredService = serde_json::from_value(json).unwrap();
    svc.service.id = Some(id.into());
    svc
}

/// An attachment to network `net` with address `addr` (CIDR).
pub fn attach(net: &str, addr: &str) -> NetworkAttachment {
    NetworkAttachment {
        network: shoal_api::objects::AttachedNetwork {
            id: net.into(),
            spec: Default::default(),
        },
        addresses: vec![addr.into()],
        aliases: vec![],
    }
}

/// An overlay (or the ingress) network with one subnet, as the allocator stores it.
pub fn net(id: &str, subnet: &str, ingress: bool) -> shoal_api::models::Network {
    serde_json::from_value(serde_json::json!({
        "Id": id, "Name": id, "Ingress": ingress,
        "IPAM": {"Config": [{"Subnet": subnet}]}
    }))
    .expect("a network from a literal")
}
