//! What a manager answers on port 2377: the CA (joining and renewing), raft traffic between
//! managers, and dispatcher sessions. The transport has verified TLS chains; this decides who
//! may do what with the cluster's state in hand, and logs every refusal with its reason.

use crate::db::{self, Member, Removed, RootCa};
use crate::dispatcher::Dispatcher;
use crate::logbroker::LogBroker;
use futures::future::BoxFuture;
use shoal_api::id;
use shoal_api::models::{
    ManagerStatus, Node, NodeDescription, NodeSpec, NodeSpecAvailabilityEnum, NodeSpecRoleEnum,
    NodeState, NodeStatus, Reachability, Swarm,
};
use shoal_pki::{ClusterCa, JoinToken, NodeIdentity, Role};
use shoal_rpc::{pb, Handlers, PeerInfo, SessionStream};
use shoal_store::{Expect, RpcKind, Store};
use std::collections::HashMap;
use std::time::Duration;
use tonic::{Status, Streaming};

/// Swarm's default `CAConfig.NodeCertExpiry`: 90 days.
pub const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);

/// The manager's RPC handlers.
pub struct ManagerRpc {
    /// The replicated store.
    pub store: Store,
    /// Sessions (answered only while this manager leads).
    pub dispatcher: Dispatcher,
    /// Task logs, for other managers' API clients (served only while this manager leads).
    pub logs: LogBroker,
}

fn refuse(peer: &PeerInfo, call: &str, reason: String) -> Status {
    peer.refuse(call, &reason)
}

fn cluster(store: &Store) -> Result<Swarm, Status> {
    db::list::<Swarm>(store)
        .into_iter()
        .next()
        .map(|c| c.obj)
        .ok_or_else(|| Status::unavailable("this manager has no swarm state yet"))
}

/// The CA able to sign, from the store.
pub fn cluster_ca(store: &Store) -> Result<ClusterCa, Status> {
    let ca = db::get::<RootCa>(store, "root")
        .ok_or_else(|| Status::unavailable("the cluster CA is not in the store yet"))?;
    ClusterCa::from_pem_pair(&ca.obj.cert_pem, &ca.obj.key_pem)
        .map_err(|e| Status::internal(format!("cluster CA: {e}")))
}

/// How long node certificates are valid (`docker swarm update --cert-expiry`).
pub fn cert_expiry(c: &Swarm) -> Duration {
    c.spec
        .as_ref()
        .and_then(|s| s.ca_config.as_ref())
        .and_then(|ca| ca.node_cert_expiry)
        .filter(|ns| *ns > 0)
        .map(|ns| Duration::from_nanos(ns as u64))
        .unwrap_or(DEFAULT_CERT_EXPIRY)
}

/// The manager, not down, whose raft address is `addr`: a joining manager that announced it would
/// take that manager's raft traffic's address (its messages then fail TLS, as the certificate
/// names another node) and count as a voter that never answers. A down manager's address may be
/// reused: that is a machine rejoining after losing its data dir.
fn address_in_use(store: &Store, addr: &str) -> Option<String> {
    db::list::<Member>(store)
        .into_iter()
        .filter(|m| m.obj.addr == addr)
        .map(|m| m.obj.node_id)
        .find(|id| {
            db::get::<Node>(store, id).is_some_and(|n| {
                n.obj.status.as_ref().and_then(|s| s.state) != Some(NodeState::DOWN)
            })
        })
}

fn not_removed(store: &Store, peer: &PeerInfo, call: &str, node: &str) -> Result<(), Status> {
    if db::get::<Removed>(store, node).is_some() {
        return Err(refuse(
            peer,
            call,
            format!("node {node} was removed from the swarm"),
        ));
    }
    Ok(())
}

impl Handlers for ManagerRpc {
    fn root_ca(&self) -> Result<String, Status> {
        Ok(cluster_ca(&self.store)?.cert_pem().to_string())
    }

    fn issue(
        &self,
        peer: PeerInfo,
        req: pb::IssueRequest,
    ) -> BoxFuture<'static, Result<pb::IssueResponse, Status>> {
        let store = self.store.clone();
        Box::pin(async move {
            let ca = cluster_ca(&store)?;
            let c = cluster(&store)?;
            let cluster_id = c.id.clone().unwrap_or_default();
            let expiry = cert_expiry(&c);
            if peer.leaf().is_some() {
                // Renewal (or a new role) for a node that already has a certificate. A leader
                // that a quorum does not confirm has a stale view of roles: not from it.
                if store.is_leader() && !store.confirm_leader(Duration::from_secs(1)).await {
                    return Err(Status::unavailable(
                        "this manager cannot confirm its leadership; ask another manager",
                    ));
                }
                let me = peer.node("issue")?;
                not_removed(&store, &peer, "issue", &me.node_id)?;
                let node = db::get::<Node>(&store, &me.node_id).ok_or_else(|| {
                    refuse(&peer, "issue", format!("node {} is unknown", me.node_id))
                })?;
                let role = match node.obj.spec.as_ref().and_then(|s| s.role) {
                    Some(NodeSpecRoleEnum::MANAGER) => Role::Manager,
                    _ => Role::Worker,
                };
                let ident = NodeIdentity {
                    node_id: me.node_id.clone(),
                    role,
                    cluster_id,
                };
                let cert_pem = ca
                    .issue(&req.csr_pem, &ident, expiry)
                    .map_err(|e| Status::invalid_argument(format!("CSR: {e}")))?;
                let raft_id = db::get::<Member>(&store, &me.node_id)
                    .map(|m| m.obj.raft_id)
                    .unwrap_or(0);
                tracing::info!(node = %me.node_id, role = %role, "renewed a node certificate");
                return Ok(pb::IssueResponse {
                    node_id: me.node_id,
                    cert_pem,
                    ca_pem: ca.cert_pem().to_string(),
                    role: role.to_string(),
                    raft_id,
                });
            }
            let token = JoinToken::parse(&req.token)
                .map_err(|e| refuse(&peer, "issue", format!("invalid join token: {e}")))?;
            if !token.matches_ca(ca.cert_pem()) {
                return Err(refuse(
                    &peer,
                    "issue",
                    "invalid join token: it names another cluster's CA".into(),
                ));
            }
            let tokens = c.join_tokens.clone().unwrap_or_default();
            // Both compared, each in constant time: the answer's timing tells a guesser nothing.
            let presented = req.token.as_str();
            let is = |t: &Option<String>| {
                t.as_deref()
                    .is_some_and(|t| shoal_pki::token_matches(presented, t))
            };
            let (manager, worker) = (is(&tokens.manager), is(&tokens.worker));
            let role = if manager {
                Role::Manager
            } else if worker {
                Role::Worker
            } else {
                return Err(refuse(
                    &peer,
                    "issue",
                    "invalid join token: it is not this swarm's current worker or manager token"
                        .into(),
                ));
            };
            let availability = match req.availability.as_str() {
                "" | "active" => NodeSpecAvailabilityEnum::ACTIVE,
                "pause" => NodeSpecAvailabilityEnum::PAUSE,
                "drain" => NodeSpecAvailabilityEnum::DRAIN,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "Availability: {other:?} is not one of active, pause, drain"
                    )))
                }
            };
            let description: Option<NodeDescription> = if req.description_json.is_empty() {
                None
            } else {
                serde_json::from_slice(&req.description_json).ok()
            };
            let node_id = id::new_id();
            let seen_ip = peer.remote.map(|a| a.ip().to_string());
            let advertise = if req.advertise_addr.is_empty() {
                seen_ip.clone().map(|ip| format!("{ip}:2377"))
            } else {
                Some(req.advertise_addr.clone())
            };
            let ip = advertise
                .as_deref()
                .and_then(|a| a.rsplit_once(':').map(|(h, _)| h.to_string()))
                .or(seen_ip);
            if role == Role::Manager {
                if let Some(owner) = advertise.as_deref().and_then(|a| address_in_use(&store, a)) {
                    tracing::warn!(peer = ?peer.remote, %owner, "refused a manager join announcing another manager's address");
                    return Err(Status::already_exists(format!(
                        "advertise address {} is the address of manager {owner}, which is \
                             not down: give this node its own --advertise-addr, or remove {owner} \
                             (docker node demote/rm) if it is gone",
                        advertise.as_deref().unwrap_or_default()
                    )));
                }
            }
            let now = id::now();
            let node = Node {
                id: Some(node_id.clone()),
                version: None,
                created_at: Some(now.clone()),
                updated_at: Some(now),
                spec: Some(NodeSpec {
                    name: None,
                    labels: Some(HashMap::new()),
                    role: Some(match role {
                        Role::Manager => NodeSpecRoleEnum::MANAGER,
                        Role::Worker => NodeSpecRoleEnum::WORKER,
                    }),
                    availability: Some(availability),
                }),
                description,
                status: Some(NodeStatus {
                    state: Some(NodeState::UNKNOWN),
                    message: Some("joining".into()),
                    addr: ip,
                }),
                manager_status: (role == Role::Manager).then(|| ManagerStatus {
                    leader: Some(false),
                    reachability: Some(Reachability::UNKNOWN),
                    addr: advertise.clone(),
                }),
            };
            let mut ops = vec![db::put(&node, Expect::Absent).map_err(api_status)?];
            let mut raft_id = 0;
            if role == Role::Manager {
                raft_id = loop {
                    let r: u64 = rand::random();
                    if r > 1 {
                        break r;
                    }
                };
                let member = Member {
                    node_id: node_id.clone(),
                    raft_id,
                    addr: advertise.clone().unwrap_or_default(),
                };
                ops.push(db::put(&member, Expect::Absent).map_err(api_status)?);
            }
            let ident = NodeIdentity {
                node_id: node_id.clone(),
                role,
                cluster_id,
            };
            let cert_pem = ca
                .issue(&req.csr_pem, &ident, expiry)
                .map_err(|e| Status::invalid_argument(format!("CSR: {e}")))?;
            db::write(&store, ops).await.map_err(api_status)?;
            tracing::info!(node = %node_id, role = %role, addr = ?advertise, "node joined");
            Ok(pb::IssueResponse {
                node_id,
                cert_pem,
                ca_pem: ca.cert_pem().to_string(),
                role: role.to_string(),
                raft_id,
            })
        })
    }

    fn raft(
        &self,
        peer: PeerInfo,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, Status>> {
        let store = self.store.clone();
        Box::pin(async move {
            let me = peer.manager("raft")?;
            not_removed(&store, &peer, "raft", &me.node_id)?;
            // Only raft members talk raft; a store that knows none yet (a manager joining
            // right now) takes the leader's first messages on the certificate alone.
            let members = db::list::<Member>(&store);
            if !members.is_empty() && !members.iter().any(|m| m.obj.node_id == me.node_id) {
                return Err(refuse(
                    &peer,
                    "raft",
                    format!("node {} is not a raft member of this swarm", me.node_id),
                ));
            }
            // A forwarded write is an API call made on that manager: a demoted one (its
            // certificate still says manager until it renews) has no write access.
            if kind == RpcKind::Propose && !is_manager(&store, &me.node_id) {
                return Err(refuse(
                    &peer,
                    "raft",
                    format!(
                        "node {} is no longer a manager; its writes are refused",
                        me.node_id
                    ),
                ));
            }
            store
                .handle_rpc(kind, &payload)
                .await
                .map_err(|e| Status::internal(e.to_string()))
        })
    }

    fn session(
        &self,
        peer: PeerInfo,
        inbound: Streaming<pb::AgentMessage>,
    ) -> BoxFuture<'static, Result<SessionStream, Status>> {
        let store = self.store.clone();
        let d = self.dispatcher.clone();
        Box::pin(async move {
            let me = peer.node("session")?;
            not_removed(&store, &peer, "session", &me.node_id)?;
            d.open(me.node_id, inbound).await
        })
    }

    fn logs(
        &self,
        peer: PeerInfo,
        req: pb::LogRequest,
    ) -> BoxFuture<'static, Result<shoal_rpc::LogItemStream, Status>> {
        self.logs_call(peer, req)
    }
}

impl ManagerRpc {
    fn logs_call(
        &self,
        peer: PeerInfo,
        req: pb::LogRequest,
    ) -> BoxFuture<'static, Result<shoal_rpc::LogItemStream, Status>> {
        let store = self.store.clone();
        let logs = self.logs.clone();
        Box::pin(async move {
            let me = peer.manager("logs")?;
            not_removed(&store, &peer, "logs", &me.node_id)?;
            if !is_manager(&store, &me.node_id) {
                return Err(refuse(
                    &peer,
                    "logs",
                    format!("node {} is no longer a manager", me.node_id),
                ));
            }
            crate::logbroker::remote::serve(&logs, req).await
        })
    }
}

/// True if the store says `node` is a manager now (whatever its certificate says).
fn is_manager(store: &Store, node: &str) -> bool {
    db::get::<Node>(store, node)
        .and_then(|n| n.obj.spec?.role)
        .is_some_and(|r| r == NodeSpecRoleEnum::MANAGER)
}

fn api_status(e: shoal_api::ApiError) -> Status {
    match e.status {
        400 => Status::invalid_argument(e.message),
        404 => Status::not_found(e.message),
        409 => Status::already_exists(e.message),
        503 => Status::unavailable(e.message),
        _ => Status::internal(e.message),
    }
}
