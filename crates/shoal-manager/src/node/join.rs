//! `swarm join`, the join client: fetches the CA the token pins, gets a certificate for a key
//! that never leaves this node, then runs as a worker (a dispatcher session) or a manager (a
//! raft member too).

use super::local::local_node;
use super::{keys, start_node, Identity, NodeError};
use crate::api::AppState;
use shoal_api::{id, Role};
use shoal_pki::{JoinToken, NodeKey};

/// A validated `swarm join`: what the API checked and resolved.
pub struct JoinPlan {
    /// The parsed join token.
    pub token: JoinToken,
    /// The token as given, sent to the managers once their CA is verified.
    pub token_text: String,
    /// The manager to join through.
    pub remote: std::net::SocketAddr,
    /// The address this node advertises (`host:port`).
    pub advertise: String,
    /// `Availability` as asked (lowercase; empty: active).
    pub availability: String,
}

/// Joins the swarm the token names through `plan.remote`, and starts what the node runs.
pub async fn join(d: &AppState, plan: JoinPlan) -> Result<(), NodeError> {
    // Trust only a manager whose CA has the token's digest, before the token is sent.
    let _lock = d.lifecycle.lock().await;
    if d.lock.is_locked() {
        return Err(NodeError::Locked);
    }
    if d.node.read().await.is_some() {
        return Err(NodeError::AlreadyInSwarm);
    }
    let JoinPlan {
        token,
        token_text,
        remote,
        advertise,
        availability,
    } = plan;
    let boot =
        shoal_pki::bootstrap_client_config(token.ca_digest).map_err(NodeError::pki("TLS"))?;
    let channel = shoal_rpc::connect(&remote.to_string(), boot).map_err(NodeError::RemoteAddr)?;
    let mut ca_client = shoal_rpc::pb::ca_client::CaClient::new(channel);
    let unreachable = |e: tonic::Status| NodeError::ManagerUnreachable {
        remote: remote.to_string(),
        message: e.message().to_string(),
    };
    let ca_pem = ca_client
        .get_root_ca_certificate(shoal_rpc::pb::Empty {})
        .await
        .map_err(unreachable)?
        .into_inner()
        .cert_pem;
    if !token.matches_ca(&ca_pem) {
        return Err(NodeError::CaMismatch);
    }
    let key = NodeKey::generate().map_err(NodeError::pki("node key"))?;
    let probe = Identity {
        node_id: String::new(),
        addr: advertise.clone(),
        role: Role::Worker,
        raft_id: 0,
        managers: Vec::new(),
    };
    let description = local_node(d, &probe, &id::now()).await.description;
    let issued = ca_client
        .issue_node_certificate(shoal_rpc::pb::IssueRequest {
            token: token_text,
            csr_pem: key.csr_pem().to_string(),
            description_json: serde_json::to_vec(&description).unwrap_or_default(),
            advertise_addr: advertise.clone(),
            availability,
        })
        .await
        .map_err(|e| match e.code() {
            tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => {
                NodeError::TokenRefused(e.message().to_string())
            }
            tonic::Code::AlreadyExists => NodeError::AddressInUse(e.message().to_string()),
            _ => unreachable(e),
        })?
        .into_inner();
    let role: Role = issued.role.parse()?;
    let cert = key
        .into_node_cert(issued.cert_pem, issued.ca_pem)
        .map_err(NodeError::pki("node certificate"))?;
    let kek = d.lock.kek_for(&d.data_dir)?;
    keys::save_cert(&d.data_dir, &kek, &cert)?;
    let identity = Identity {
        node_id: issued.node_id.clone(),
        addr: advertise,
        role,
        raft_id: issued.raft_id,
        managers: vec![remote.to_string()],
    };
    identity
        .save(&d.data_dir)
        .map_err(NodeError::io("saving node identity in", &d.data_dir))?;
    start_node(d, identity, &cert, description, false).await?;
    tracing::info!(node = %issued.node_id, %role, "joined the swarm");
    Ok(())
}
