//! `/nodes`: this version has one node, the manager itself.

use super::filters::Filters;
use super::{json, parse_body, AppState, Result};
use crate::db::{self, Member, Removed};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use shoal_api::models::{
    ManagerStatus, Node, NodeSpec, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState,
    Reachability,
};
use shoal_api::{id, ApiError};
use shoal_store::Expect;
use std::collections::HashMap;

/// The node a key names: its ID, a unique ID prefix, or its host name.
///
/// A host name is what a node says of itself, so two nodes may announce the same one: such a
/// name picks neither (Docker's "is ambiguous" error) rather than whichever is listed first, so
/// a node announcing another's host name cannot be promoted, removed or inspected in its place.
fn find(
    store: &shoal_store::Store,
    key: &str,
) -> std::result::Result<db::Versioned<Node>, ApiError> {
    if let Some(n) = db::lookup::<Node>(store, key) {
        return Ok(n);
    }
    let mut named: Vec<db::Versioned<Node>> = db::list::<Node>(store)
        .into_iter()
        .filter(|n| {
            n.obj
                .description
                .as_ref()
                .and_then(|d| d.hostname.as_deref())
                == Some(key)
        })
        .collect();
    match named.len() {
        0 => Err(ApiError::not_found(format!("node {key} not found"))),
        1 => Ok(named.remove(0)),
        n => Err(ApiError::invalid(format!(
            "node {key} is ambiguous ({n} matches found)"
        ))),
    }
}

/// A node as `GET /nodes` shows it: [`with_manager_status`], the swarm's TLS information in
/// its description (every node's certificate comes from the one root CA), and the fields
/// dockerd always fills.
fn shown(mgr: &crate::cluster::Manager, n: Node, tls: &Option<shoal_api::models::TlsInfo>) -> Node {
    let mut n = with_manager_status(mgr, n);
    if let Some(d) = n.description.as_mut() {
        d.tls_info = tls.clone();
    }
    shoal_api::moby::node(&mut n);
    n
}

/// Fills in `ManagerStatus` from raft as it is now: who leads, and who answers.
pub(crate) fn with_manager_status(mgr: &crate::cluster::Manager, mut n: Node) -> Node {
    let store = &mgr.store;
    let id = n.id.clone().unwrap_or_default();
    let is_manager = n.spec.as_ref().and_then(|s| s.role) == Some(NodeSpecRoleEnum::MANAGER);
    let member = db::get::<crate::db::Member>(store, &id);
    n.manager_status = match (is_manager, member) {
        (true, Some(m)) => {
            let leader = store.leader().map(|l| l.0) == Some(m.obj.raft_id);
            let ready = n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY);
            // The leader knows from raft traffic; a follower goes by the node's state.
            let reachable = leader || mgr.answers(&m.obj.addr).unwrap_or(ready);
            Some(ManagerStatus {
                leader: Some(leader),
                reachability: Some(if reachable {
                    Reachability::REACHABLE
                } else {
                    Reachability::UNREACHABLE
                }),
                addr: Some(m.obj.addr),
            })
        }
        (true, None) => n.manager_status,
        (false, _) => None,
    };
    n
}

/// `GET /nodes`.
pub async fn list(
    State(d): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let m = d.manager().await?;
    let f = Filters::parse(
        &q,
        &["id", "label", "membership", "name", "node.label", "role"],
    )?;
    f.known("role", &["worker", "manager"])?;
    f.known("membership", &["pending", "accepted"])?;
    let tls = super::swarm::tls_info(&m.store);
    let out: Vec<Node> = db::list::<Node>(&m.store)
        .into_iter()
        .map(|n| shown(&m, n.obj, &tls))
        .filter(|n| f.any("id", |x| n.id.as_deref().unwrap_or_default().starts_with(x)))
        .filter(|n| {
            f.any("name", |x| {
                n.description
                    .as_ref()
                    .and_then(|d| d.hostname.as_deref())
                    .unwrap_or_default()
                    .starts_with(x)
            })
        })
        .filter(|n| {
            f.any("role", |x| {
                let r = n.spec.as_ref().and_then(|s| s.role);
                x.eq_ignore_ascii_case("manager") == (r == Some(NodeSpecRoleEnum::MANAGER))
            })
        })
        .filter(|_| f.any("membership", |x| x.eq_ignore_ascii_case("accepted")))
        .filter(|n| {
            f.labels(
                "label",
                n.description
                    .as_ref()
                    .and_then(|d| d.engine.as_ref())
                    .and_then(|e| e.labels.as_ref()),
            )
        })
        .filter(|n| {
            f.labels(
                "node.label",
                n.spec.as_ref().and_then(|s| s.labels.as_ref()),
            )
        })
        .collect();
    Ok(json(StatusCode::OK, &out))
}

/// `GET /nodes/{id}`.
pub async fn inspect(State(d): State<AppState>, Path(key): Path<String>) -> Result<Response> {
    let m = d.manager().await?;
    let n = find(&m.store, &key)?.obj;
    let tls = super::swarm::tls_info(&m.store);
    Ok(json(StatusCode::OK, &shown(&m, n, &tls)))
}

/// `POST /nodes/{id}/update?version=N`: availability and labels; roles change with multi-node support.
pub async fn update(
    State(d): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response> {
    let m = d.manager().await?;
    let spec: NodeSpec = parse_body(&body)?;
    let version = super::query::version(&q, super::query::Versioned::Node)?;
    check_spec(&spec)?;
    let cur = db::at_version(find(&m.store, &key)?, version)?;
    let mut node = cur.obj.clone();
    let old = node.spec.clone().unwrap_or_default();
    let node_id = node.id.clone().unwrap_or_default();
    let mut ops = Vec::new();
    match (old.role, spec.role) {
        (Some(NodeSpecRoleEnum::WORKER), Some(NodeSpecRoleEnum::MANAGER)) => {
            // Promote: a raft identity now; the node gets a manager certificate when it sees
            // its new role, and the leader adds it to raft once it answers.
            let addr = node
                .status
                .as_ref()
                .and_then(|s| s.addr.clone())
                .map(|ip| format!("{ip}:2377"))
                .ok_or_else(|| ApiError::invalid_arg("node has no address to reach it at"))?;
            let raft_id = loop {
                let r: u64 = rand::random();
                if r > 1 {
                    break r;
                }
            };
            if db::get::<Member>(&m.store, &node_id).is_some() {
                ops.push(db::delete::<Member>(&node_id, Expect::Any));
            }
            ops.push(db::put(
                &Member {
                    node_id: node_id.clone(),
                    raft_id,
                    addr,
                },
                Expect::Any,
            )?);
        }
        (Some(NodeSpecRoleEnum::MANAGER), Some(NodeSpecRoleEnum::WORKER)) => {
            check_quorum_without(&m.store, &node_id, "demote")?;
        }
        _ => {}
    }
    node.spec = Some(NodeSpec {
        role: spec.role.or(old.role),
        ..spec
    });
    node.updated_at = Some(id::now());
    ops.insert(0, db::put(&node, Expect::Version(version))?);
    db::write(&m.store, ops).await?;
    Ok(super::done())
}

/// As dockerd (`convert.NodeSpecToGRPC`): a node's spec names its role and availability; the
/// CLI always sends both, and an empty one would leave the node neither worker nor manager.
fn check_spec(spec: &NodeSpec) -> std::result::Result<(), ApiError> {
    let named = |v: Option<String>| format!("{:?}", v.unwrap_or_default());
    if !matches!(
        spec.role,
        Some(NodeSpecRoleEnum::WORKER | NodeSpecRoleEnum::MANAGER)
    ) {
        return Err(ApiError::invalid(format!(
            "invalid Role: {}",
            named(spec.role.map(|r| r.to_string()))
        )));
    }
    if matches!(
        spec.availability,
        None | Some(NodeSpecAvailabilityEnum::EMPTY)
    ) {
        return Err(ApiError::invalid(format!(
            "invalid Availability: {}",
            named(spec.availability.map(|a| a.to_string()))
        )));
    }
    Ok(())
}

/// Refuses to take `node_id` out of the voting managers when that would leave no manager, or
/// too few reachable ones for a quorum of those that remain.
fn check_quorum_without(
    store: &shoal_store::Store,
    node_id: &str,
    what: &str,
) -> std::result::Result<(), ApiError> {
    let managers: Vec<Node> = db::list::<Node>(store)
        .into_iter()
        .map(|n| n.obj)
        .filter(|n| n.spec.as_ref().and_then(|s| s.role) == Some(NodeSpecRoleEnum::MANAGER))
        .collect();
    let remaining: Vec<&Node> = managers
        .iter()
        .filter(|n| n.id.as_deref() != Some(node_id))
        .collect();
    if remaining.is_empty() {
        return Err(ApiError::failed_precondition(format!(
            "attempting to {what} the last manager of the swarm"
        )));
    }
    let reachable = remaining
        .iter()
        .filter(|n| n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY))
        .count();
    let quorum = remaining.len() / 2 + 1;
    if reachable < quorum {
        return Err(ApiError::failed_precondition(format!(
            "can't {what} node {node_id}: the swarm would lose quorum ({reachable} of the {} remaining managers are reachable, {quorum} are needed)",
            remaining.len()
        )));
    }
    Ok(())
}

/// `DELETE /nodes/{id}?force=`: a manager must be demoted first; a node that is not down needs
/// `force`. Its certificate is refused from then on.
pub async fn remove(
    State(d): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let m = d.manager().await?;
    let n = find(&m.store, &key)?;
    let id = n.obj.id.clone().unwrap_or_default();
    let force = super::bool_param(&q, "force");
    if n.obj.spec.as_ref().and_then(|s| s.role) == Some(NodeSpecRoleEnum::MANAGER) {
        return Err(ApiError::failed_precondition(format!("node {id} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal")).into());
    }
    let down = n.obj.status.as_ref().and_then(|s| s.state) == Some(NodeState::DOWN);
    if !down && !force {
        return Err(ApiError::failed_precondition(format!(
            "node {id} is not down and can't be removed"
        ))
        .into());
    }
    let mut ops = vec![
        db::delete::<Node>(&id, Expect::Version(n.version)),
        db::put(
            &Removed {
                node_id: id.clone(),
            },
            Expect::Any,
        )?,
    ];
    if db::get::<Member>(&m.store, &id).is_some() {
        ops.push(db::delete::<Member>(&id, Expect::Any));
    }
    db::write(&m.store, ops).await?;
    tracing::info!(node = %id, "node removed; its certificate is refused from now on");
    Ok(super::done())
}
