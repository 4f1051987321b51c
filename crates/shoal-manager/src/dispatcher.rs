//! The dispatcher: turns the store into each node's assignments, and agents' status reports into
//! store writes. In-process today; the node-to-node RPC carries the same messages later.

use crate::allocator::network_subnet;
use crate::db::{self, Versioned};
use crate::state::ClusterState;
use base64::Engine as _;
use shoal_api::dispatch::{
    FilePayload, NetworkInfo, NodeAssignments, PublishedPort, ServiceRoute, TaskEndpoint,
    TaskStatusReport,
};
use shoal_api::models::{
    Config, EndpointPortConfigPublishModeEnum, EndpointSpecModeEnum, Secret, TaskState,
};
use shoal_api::objects::{is_terminal, state_rank, StoredTask};
use shoal_store::{Expect, Store};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

fn addr_of(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

/// Computes what `node_id` must run and route, from one snapshot.
pub fn assignments(store: &Store, state: &ClusterState, node_id: &str) -> NodeAssignments {
    let mut out = NodeAssignments::default();
    let mut secret_ids = HashSet::new();
    let mut config_ids = HashSet::new();
    let mut net_ids: BTreeMap<String, ()> = BTreeMap::new();
    for t in &state.tasks {
        if t.obj.node_id() != Some(node_id) {
            continue;
        }
        let live = !is_terminal(t.obj.state());
        if live && t.obj.desired() == TaskState::RUNNING {
            let cs = t
                .obj
                .task
                .spec
                .as_ref()
                .and_then(|s| s.container_spec.as_ref());
            for s in cs.and_then(|c| c.secrets.as_ref()).into_iter().flatten() {
                secret_ids.extend(s.secret_id.clone());
            }
            for c in cs.and_then(|c| c.configs.as_ref()).into_iter().flatten() {
                config_ids.extend(c.config_id.clone());
            }
        }
        if live {
            for a in &t.obj.networks_attachments {
                net_ids.insert(a.network.id.clone(), ());
            }
        }
        out.tasks.push(t.obj.clone());
    }
    out.tasks.sort_by(|a, b| a.id().cmp(b.id()));
    for id in secret_ids {
        if let Some(s) = db::get::<Secret>(store, &id) {
            let spec = s.obj.spec.unwrap_or_default();
            out.secrets.push(FilePayload {
                id,
                name: spec.name.unwrap_or_default(),
                data: decode(spec.data.as_deref()),
            });
        }
    }
    for id in config_ids {
        if let Some(c) = db::get::<Config>(store, &id) {
            let spec = c.obj.spec.unwrap_or_default();
            out.configs.push(FilePayload {
                id,
                name: spec.name.unwrap_or_default(),
                data: decode(spec.data.as_deref()),
            });
        }
    }
    out.secrets.sort_by(|a, b| a.id.cmp(&b.id));
    out.configs.sort_by(|a, b| a.id.cmp(&b.id));
    for n in &state.networks {
        let Some(id) = n.obj.id.clone() else { continue };
        if !net_ids.contains_key(&id) {
            continue;
        }
        if let Some((subnet, gateway)) = network_subnet(&n.obj) {
            out.networks.push(NetworkInfo {
                id,
                name: n.obj.name.clone().unwrap_or_default(),
                subnet,
                gateway,
                internal: n.obj.internal.unwrap_or(false),
                ingress: n.obj.ingress.unwrap_or(false),
            });
        }
    }
    routes(state, node_id, &net_ids, &mut out);
    if let Some(n) = state
        .nodes
        .iter()
        .find(|n| n.obj.id.as_deref() == Some(node_id))
    {
        let manager = n.obj.spec.as_ref().and_then(|s| s.role)
            == Some(shoal_api::models::NodeSpecRoleEnum::MANAGER);
        out.role = if manager { "manager" } else { "worker" }.to_string();
        if manager {
            out.raft_id = db::get::<db::Member>(store, node_id)
                .map(|m| m.obj.raft_id)
                .unwrap_or(0);
        }
    }
    out
}

fn decode(data: Option<&str>) -> Vec<u8> {
    data.and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        .unwrap_or_default()
}

fn routes(
    state: &ClusterState,
    node_id: &str,
    nets: &BTreeMap<String, ()>,
    out: &mut NodeAssignments,
) {
    let mut running: HashMap<&str, Vec<&StoredTask>> = HashMap::new();
    for t in &state.tasks {
        if t.obj.state() == TaskState::RUNNING && t.obj.desired() == TaskState::RUNNING {
            running.entry(t.obj.service_id()).or_default().push(&t.obj);
        }
    }
    let mut services: Vec<&Versioned<shoal_api::objects::StoredService>> =
        state.services.values().collect();
    services.sort_by(|a, b| a.obj.id().cmp(b.obj.id()));
    for svc in services {
        let s = &svc.obj;
        let tasks = running.get(s.id()).cloned().unwrap_or_default();
        let dnsrr = s.spec().endpoint_spec.as_ref().and_then(|e| e.mode)
            == Some(EndpointSpecModeEnum::DNSRR);
        let vips: HashMap<String, Ipv4Addr> = s
            .service
            .endpoint
            .iter()
            .flat_map(|e| e.virtual_ips.iter().flatten())
            .filter_map(|v| Some((v.network_id.clone()?, addr_of(v.addr.as_deref()?)?)))
            .collect();
        for net in crate::allocator::service_networks(s, state) {
            let (net_id, _, aliases) = net;
            if !nets.contains_key(&net_id) {
                continue;
            }
            let endpoints: Vec<TaskEndpoint> = tasks
                .iter()
                .filter_map(|t| {
                    let a = t
                        .networks_attachments
                        .iter()
                        .find(|a| a.network.id == net_id)?;
                    Some(TaskEndpoint {
                        task_id: t.id().to_string(),
                        addr: addr_of(a.addresses.first()?)?,
                        healthy: true,
                    })
                })
                .collect();
            out.services.push(ServiceRoute {
                service_id: s.id().to_string(),
                name: s.name().to_string(),
                network_id: net_id.clone(),
                aliases,
                vip: if dnsrr {
                    None
                } else {
                    vips.get(&net_id).copied()
                },
                dnsrr,
                tasks: endpoints,
            });
        }
        for p in s
            .service
            .endpoint
            .iter()
            .flat_map(|e| e.ports.iter().flatten())
        {
            let (Some(published), Some(target)) = (p.published_port, p.target_port) else {
                continue;
            };
            if published <= 0 {
                continue;
            }
            let host = p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST);
            let mut targets: Vec<SocketAddrV4> = tasks
                .iter()
                .filter(|t| !host || t.node_id() == Some(node_id))
                .filter_map(|t| {
                    let a = t
                        .networks_attachments
                        .iter()
                        .find(|a| {
                            state.networks.iter().any(|n| {
                                n.obj.id.as_deref() == Some(&a.network.id)
                                    && n.obj.ingress == Some(true)
                            })
                        })
                        .or_else(|| t.networks_attachments.first())?;
                    Some(SocketAddrV4::new(
                        addr_of(a.addresses.first()?)?,
                        target as u16,
                    ))
                })
                .collect();
            targets.sort();
            out.published.push(PublishedPort {
                protocol: p
                    .protocol
                    .map(|p| p.to_string())
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "tcp".into()),
                published: published as u16,
                targets,
            });
        }
    }
}

/// Publishes assignments for one node whenever they change, until cancelled.
pub async fn serve_node(
    store: Store,
    node_id: String,
    tx: watch::Sender<NodeAssignments>,
    stop: CancellationToken,
) {
    let mut changes = store.watch();
    // The first computation is always sent: the agent acts on nothing before it.
    let mut first = true;
    loop {
        let state = ClusterState::load(&store);
        let next = assignments(&store, &state, &node_id);
        if std::mem::take(&mut first) {
            tx.send_replace(next);
        } else {
            tx.send_if_modified(|cur| {
                if *cur != next {
                    *cur = next;
                    true
                } else {
                    false
                }
            });
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = changes.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r { return; }
                tokio::time::sleep(Duration::from_millis(5)).await;
                while changes.try_recv().is_ok() {}
            }
        }
    }
}

/// Host-mode ports of a service: a running task shows them in `docker service ps`.
fn host_ports(store: &Store, service_id: &str) -> Option<shoal_api::models::PortStatus> {
    let svc = db::get::<shoal_api::objects::StoredService>(store, service_id)?;
    let ports: Vec<_> = svc
        .obj
        .service
        .endpoint
        .iter()
        .flat_map(|e| e.ports.iter().flatten())
        .filter(|p| p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST))
        .cloned()
        .collect();
    (!ports.is_empty()).then_some(shoal_api::models::PortStatus { ports: Some(ports) })
}

/// Writes agents' status reports, batching what arrives together into one store write.
pub async fn collect_reports(
    store: Store,
    mut rx: mpsc::Receiver<Vec<TaskStatusReport>>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            r = rx.recv() => match r { Some(r) => r, None => return },
        };
        let mut batch: Vec<TaskStatusReport> = first;
        tokio::time::sleep(Duration::from_millis(10)).await;
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        // Keep only the newest report per task.
        let mut latest: HashMap<String, TaskStatusReport> = HashMap::new();
        for r in batch {
            latest.insert(r.task_id.clone(), r);
        }
        for attempt in 0..5 {
            let mut ops = Vec::new();
            for r in latest.values() {
                let Some(t) = db::get::<StoredTask>(&store, &r.task_id) else {
                    continue;
                };
                let new_state = r.status.state.unwrap_or(TaskState::NEW);
                let cur = t.obj.state();
                // Observed state only moves forward (a late report never undoes a newer one).
                if state_rank(new_state) < state_rank(cur)
                    || (new_state == cur
                        && t.obj
                            .task
                            .status
                            .as_ref()
                            .and_then(|s| s.container_status.as_ref())
                            == r.status.container_status.as_ref()
                        && t.obj.task.status.as_ref().and_then(|s| s.err.as_ref())
                            == r.status.err.as_ref())
                {
                    continue;
                }
                let mut task = t.obj.clone();
                let mut status = r.status.clone();
                if new_state == TaskState::RUNNING {
                    status.port_status = host_ports(&store, task.service_id());
                }
                task.task.status = Some(status);
                task.task.updated_at = Some(shoal_api::id::now());
                match db::put(&task, Expect::Version(t.version)) {
                    Ok(op) => ops.push(op),
                    Err(e) => {
                        tracing::error!(task = %r.task_id, error = %e, "cannot encode task status")
                    }
                }
            }
            if ops.is_empty() {
                break;
            }
            match db::write(&store, ops).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "status batch conflicted; retrying");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::models::{Secret, SecretSpec, ServiceSpec, TaskStatus};
    use shoal_api::objects::StoredService;
    use shoal_store::StoreOptions;

    fn task(id: &str, node: &str, secret: Option<&str>, state: TaskState) -> StoredTask {
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

    #[tokio::test]
    async fn secrets_go_only_to_nodes_running_a_task_that_uses_them() {
        let dir = std::env::temp_dir().join(format!("shoal-dispatch-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(StoreOptions {
            dir: dir.clone(),
            raft_node_id: 1,
            raft_addr: "127.0.0.1:2377".into(),
            bootstrap: true,
            transport: None,
        })
        .await
        .unwrap();
        let secret = Secret {
            id: Some("sec".into()),
            spec: Some(SecretSpec {
                name: Some("pw".into()),
                data: Some("aHVudGVyMg==".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut svc = StoredService::default();
        svc.service.id = Some("svc".into());
        svc.service.spec = Some(ServiceSpec {
            name: Some("app".into()),
            ..Default::default()
        });
        let ops = vec![
            db::put(&secret, Expect::Absent).unwrap(),
            db::put(&svc, Expect::Absent).unwrap(),
            db::put(
                &task("t-a", "node-a", Some("sec"), TaskState::RUNNING),
                Expect::Absent,
            )
            .unwrap(),
            db::put(
                &task("t-b", "node-b", None, TaskState::RUNNING),
                Expect::Absent,
            )
            .unwrap(),
            db::put(
                &task("t-c", "node-c", Some("sec"), TaskState::FAILED),
                Expect::Absent,
            )
            .unwrap(),
        ];
        db::write(&store, ops).await.unwrap();
        let state = ClusterState::load(&store);
        let a = assignments(&store, &state, "node-a");
        assert_eq!(a.tasks.len(), 1);
        assert_eq!(a.secrets.len(), 1);
        assert_eq!(a.secrets[0].data, b"hunter2");
        let b = assignments(&store, &state, "node-b");
        assert_eq!(b.tasks.len(), 1);
        assert!(
            b.secrets.is_empty(),
            "a node without a task using the secret got it"
        );
        let c = assignments(&store, &state, "node-c");
        assert_eq!(
            c.tasks.len(),
            1,
            "a stopped task stays assigned (its container is kept as history)"
        );
        assert!(
            c.secrets.is_empty(),
            "a node whose task has stopped still gets the secret"
        );
        assert!(
            !format!("{a:?}").contains("hunter2"),
            "secret data in Debug output"
        );
        store.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
