//! `docker volume` on a manager (issue 19): the swarm's shared volumes (`crate::volumes`) next
//! to the engine's own. A create with driver `shoal` (or `local` with a network filesystem
//! `type`) makes a cluster volume; any other goes to the engine, as do all volume calls on a
//! node that is not a manager. `ls` shows both; `inspect` and `rm` find a cluster volume
//! first, then ask the engine.

use super::system::engine_json;
use super::{json, parse_body, proxy, AppState, Result};
use crate::db;
use crate::volumes::{self, VolumeRequest};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use shoal_api::models::TaskState;
use shoal_api::objects::StoredVolume;
use shoal_api::ApiError;
use std::collections::{BTreeMap, HashMap};

/// `POST /volumes/create`, as the docker CLI and SDK send it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    name: Option<String>,
    driver: Option<String>,
    driver_opts: Option<HashMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
}

/// The manager, or `None` on a node that is none (its engine answers `docker volume` there);
/// a locked manager refuses, as it refuses everything until unlocked.
async fn manager(d: &AppState) -> Result<Option<std::sync::Arc<crate::cluster::Manager>>> {
    match d.manager().await {
        Ok(m) => Ok(Some(m)),
        Err(e) if d.lock.is_locked() => Err(e.into()),
        Err(_) => Ok(None),
    }
}

/// The hostnames of the nodes that run a task mounting `name` now.
fn mounted_on(state: &shoal_control::state::ClusterState, name: &str) -> Vec<String> {
    let users: Vec<&str> = state
        .services
        .values()
        .filter(|s| {
            s.obj
                .spec()
                .task_template
                .as_ref()
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.mounts.as_ref())
                .is_some_and(|ms| ms.iter().any(|m| m.source.as_deref() == Some(name)))
        })
        .map(|s| s.obj.id())
        .collect();
    let mut nodes: Vec<String> = state
        .tasks
        .iter()
        .filter(|t| users.contains(&t.obj.service_id()))
        .filter(|t| t.obj.state() == TaskState::RUNNING)
        .filter_map(|t| t.obj.node_id().map(str::to_string))
        .filter_map(|id| {
            state
                .nodes
                .iter()
                .find(|n| n.obj.id.as_deref() == Some(id.as_str()))
                .and_then(|n| n.obj.description.as_ref()?.hostname.clone())
                .or(Some(id))
        })
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

/// `GET /volumes`: the engine's volumes and the swarm's.
pub async fn list(State(d): State<AppState>, req: Request) -> Result<Response> {
    let Some(m) = manager(&d).await? else {
        return Ok(proxy(State(d), req).await);
    };
    let q = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let (status, mut engine) = engine_json(&d, Method::GET, &format!("/volumes{q}"), None).await?;
    if !status.is_success() {
        return Ok(json(status, &engine));
    }
    let state = crate::state::load(&m.store);
    let ours: Vec<serde_json::Value> = db::list::<StoredVolume>(&m.store)
        .into_iter()
        .map(|v| volumes::public(&v.obj, &mounted_on(&state, &v.obj.name)))
        .collect();
    if let Some(list) = engine.get_mut("Volumes") {
        if list.is_null() {
            *list = serde_json::Value::Array(Vec::new());
        }
        if let Some(a) = list.as_array_mut() {
            a.extend(ours);
        }
    }
    Ok(json(StatusCode::OK, &engine))
}

/// `POST /volumes/create`.
pub async fn create(State(d): State<AppState>, req: Request) -> Result<Response> {
    let Some(m) = manager(&d).await? else {
        return Ok(proxy(State(d), req).await);
    };
    let (parts, body) = req.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, super::MAX_BODY_BYTES)
        .await
        .map_err(|e| ApiError::invalid(format!("reading the request body: {e}")))?;
    let b: CreateBody = parse_body(&bytes)?;
    let driver = b.driver.clone().unwrap_or_else(|| "local".into());
    let options = b.driver_opts.clone().unwrap_or_default();
    if !shoal_api::volume::is_managed(Some(&driver), &options) {
        // The engine's own (a node-local docker volume).
        let req = Request::from_parts(parts, Body::from(bytes));
        return Ok(proxy(State(d), req).await);
    }
    let name = b.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| {
        ApiError::invalid("Name: a shared volume needs a name (every node mounts it by name)")
    })?;
    let vreq = VolumeRequest {
        name: name.clone(),
        driver,
        options,
        labels: b.labels.unwrap_or_default(),
    };
    let ops = volumes::ops_for(&m.store, &vreq)?;
    if !ops.is_empty() {
        db::write(&m.store, ops).await?;
        tracing::info!(volume = %name, "volume created or updated");
    }
    let v = db::find::<StoredVolume>(&m.store, &name)?;
    let state = crate::state::load(&m.store);
    Ok(json(
        StatusCode::CREATED,
        &volumes::public(&v.obj, &mounted_on(&state, &name)),
    ))
}

/// A cluster volume by exact name, or `None` (then it is the engine's to answer).
fn ours(m: &crate::cluster::Manager, name: &str) -> Option<db::Versioned<StoredVolume>> {
    db::list::<StoredVolume>(&m.store)
        .into_iter()
        .find(|v| v.obj.name == name)
}

/// `GET /volumes/{name}`.
pub async fn inspect(
    State(d): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response> {
    let Some(m) = manager(&d).await? else {
        return Ok(proxy(State(d), req).await);
    };
    let Some(v) = ours(&m, &name) else {
        return Ok(proxy(State(d), req).await);
    };
    let state = crate::state::load(&m.store);
    Ok(json(
        StatusCode::OK,
        &volumes::public(&v.obj, &mounted_on(&state, &name)),
    ))
}

/// `DELETE /volumes/{name}`: refused while a service mounts it; once no task uses it, no node
/// keeps it mounted (each unmounts when its last task using it leaves).
pub async fn remove(
    State(d): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response> {
    let Some(m) = manager(&d).await? else {
        return Ok(proxy(State(d), req).await);
    };
    let Some(v) = ours(&m, &name) else {
        return Ok(proxy(State(d), req).await);
    };
    let ops = volumes::remove_ops(&m.store, &v)?;
    db::write(&m.store, ops).await?;
    tracing::info!(volume = %name, "volume removed");
    Ok(StatusCode::NO_CONTENT.into_response())
}
