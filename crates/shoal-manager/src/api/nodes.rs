//! `/nodes`: this version has one node, the manager itself.

use super::filters::Filters;
use super::{json, parse_body, AppState, Result};
use crate::db;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use shoal_api::models::{ManagerStatus, Node, NodeSpec, NodeSpecRoleEnum, NodeState, Reachability};
use shoal_api::{id, ApiError};
use shoal_store::Expect;
use std::collections::HashMap;

fn find(
    store: &shoal_store::Store,
    key: &str,
) -> std::result::Result<db::Versioned<Node>, ApiError> {
    db::lookup::<Node>(store, key)
        .or_else(|| {
            db::list::<Node>(store).into_iter().find(|n| {
                n.obj
                    .description
                    .as_ref()
                    .and_then(|d| d.hostname.as_deref())
                    == Some(key)
            })
        })
        .ok_or_else(|| ApiError::not_found(format!("node {key} not found")))
}

/// Fills in `ManagerStatus` from raft as it is now: who leads, and who answers.
fn with_manager_status(store: &shoal_store::Store, mut n: Node) -> Node {
    let id = n.id.clone().unwrap_or_default();
    let is_manager = n.spec.as_ref().and_then(|s| s.role) == Some(NodeSpecRoleEnum::MANAGER);
    let member = db::get::<crate::db::Member>(store, &id);
    n.manager_status = match (is_manager, member) {
        (true, Some(m)) => {
            let leader = store.leader().map(|l| l.0) == Some(m.obj.raft_id);
            let ready = n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY);
            Some(ManagerStatus {
                leader: Some(leader),
                reachability: Some(if leader || ready {
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
    let out: Vec<Node> = db::list::<Node>(&m.store)
        .into_iter()
        .map(|n| with_manager_status(&m.store, n.obj))
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
                (x == "manager") == (r == Some(NodeSpecRoleEnum::MANAGER))
            })
        })
        .filter(|_| f.any("membership", |x| x == "accepted"))
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
    Ok(json(StatusCode::OK, &with_manager_status(&m.store, n)))
}

/// `POST /nodes/{id}/update?version=N`: availability and labels; roles change with multi-node support.
pub async fn update(
    State(d): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response> {
    let m = d.manager().await?;
    let version: u64 = super::version_param(&q)?;
    let spec: NodeSpec = parse_body(&body)?;
    let cur = find(&m.store, &key)?;
    if cur.version != version {
        return Err(ApiError::out_of_sequence().into());
    }
    let mut node = cur.obj.clone();
    let old = node.spec.clone().unwrap_or_default();
    if spec.role.is_some_and(|r| Some(r) != old.role) {
        return Err(ApiError::invalid_arg(
            "Role: demoting the last manager of the cluster is not allowed",
        )
        .into());
    }
    node.spec = Some(NodeSpec {
        role: old.role,
        ..spec
    });
    node.updated_at = Some(id::now());
    db::write(&m.store, vec![db::put(&node, Expect::Version(version))?]).await?;
    Ok(json(StatusCode::OK, &serde_json::Value::Null))
}

/// `DELETE /nodes/{id}`.
pub async fn remove(State(d): State<AppState>, Path(key): Path<String>) -> Result<Response> {
    let m = d.manager().await?;
    let n = find(&m.store, &key)?;
    if n.obj.id.as_deref() == Some(m.identity.node_id.as_str()) {
        return Err(ApiError::invalid_arg(format!("node {} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal", m.identity.node_id)).into());
    }
    Err(ApiError::not_found(format!("node {key} not found")).into())
}
