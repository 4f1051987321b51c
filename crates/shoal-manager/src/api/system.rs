//! `/_ping`, `/version`, `/info`: what the CLI reads to negotiate and to see an active manager.

use super::{json, AppState, Error, Result, API_VERSION, MIN_API_VERSION};
use crate::db;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use shoal_api::models::{
    ClusterInfo, LocalNodeState, Node, NodeSpecRoleEnum, PeerNode, Swarm, SwarmInfo,
};
use shoal_api::ApiError;

/// Calls the local engine and decodes its JSON answer.
pub async fn engine_json(
    d: &AppState,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> std::result::Result<(StatusCode, serde_json::Value), ApiError> {
    let uri = format!("/v{}{}", d.engine.engine_api_version(), path);
    let mut b = axum::http::Request::builder().method(method).uri(uri);
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b
        .body(Body::from(body.unwrap_or_default()))
        .map_err(|e| ApiError::internal(format!("building engine request: {e}")))?;
    let resp = d.engine.forward(req).await;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::internal(format!("reading engine answer for {path}: {e}")))?
        .to_bytes();
    let v = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::internal(format!("engine answer for {path} is not JSON: {e}")))?
    };
    Ok((status, v))
}

/// `GET|HEAD /_ping`: the CLI negotiates its version and reads the swarm state from the headers.
pub async fn ping(State(d): State<AppState>) -> Response {
    let swarm = if d.lock.is_locked() {
        "locked"
    } else if d.manager.read().await.is_some() {
        "active/manager"
    } else if d.node.read().await.is_some() {
        "active/worker"
    } else {
        "inactive"
    };
    (
        StatusCode::OK,
        [
            ("api-version", API_VERSION),
            ("ostype", "linux"),
            ("docker-experimental", "false"),
            ("builder-version", "1"),
            ("swarm", swarm),
            ("cache-control", "no-cache, no-store, must-revalidate"),
            ("pragma", "no-cache"),
            ("content-type", "text/plain; charset=utf-8"),
        ],
        "OK",
    )
        .into_response()
}

/// The engine's answer to a GET, or an empty object when it has none to give (stopped,
/// unreachable): shoal's own part of `/version` and `/info` stands without it, and the engine's
/// `{"message": ...}` must not pass for fields of a successful answer.
async fn engine_part(d: &AppState, path: &str) -> std::result::Result<serde_json::Value, ApiError> {
    let (status, v) = engine_json(d, Method::GET, path, None).await?;
    if status.is_success() {
        return Ok(v);
    }
    tracing::warn!(%status, answer = %v, path, "the engine has no answer; shoal answers its own part");
    Ok(serde_json::json!({}))
}

/// `GET /version`: the engine's version, with shoal's API range and itself as a component.
pub async fn version(State(d): State<AppState>) -> Result<Response> {
    let mut v = engine_part(&d, "/version").await?;
    if let Some(o) = v.as_object_mut() {
        o.insert("ApiVersion".into(), API_VERSION.into());
        o.insert("MinAPIVersion".into(), MIN_API_VERSION.into());
        let comp = serde_json::json!({"Name": "shoal", "Version": env!("CARGO_PKG_VERSION"), "Details": {"ApiVersion": API_VERSION}});
        match o.get_mut("Components").and_then(|c| c.as_array_mut()) {
            Some(a) => a.push(comp),
            None => {
                o.insert("Components".into(), serde_json::json!([comp]));
            }
        }
    }
    Ok(json(StatusCode::OK, &v))
}

/// The `Swarm` section of `/info`.
pub async fn swarm_info(d: &AppState) -> SwarmInfo {
    if let Some(id) = d.lock.locked() {
        return SwarmInfo {
            node_id: Some(id.node_id.clone()),
            node_addr: Some(id.addr.split(':').next().unwrap_or_default().to_string()),
            local_node_state: Some(LocalNodeState::LOCKED),
            control_available: Some(false),
            error: Some(crate::node::NodeError::Locked.to_string()),
            remote_managers: None,
            ..Default::default()
        };
    }
    let worker = d.node.read().await.clone();
    let Some(m) = d.manager.read().await.clone() else {
        if let Some((id, _)) = worker {
            return SwarmInfo {
                node_id: Some(id.node_id.clone()),
                node_addr: Some(id.addr.split(':').next().unwrap_or_default().to_string()),
                local_node_state: Some(LocalNodeState::ACTIVE),
                control_available: Some(false),
                error: Some(String::new()),
                remote_managers: Some(
                    id.managers
                        .iter()
                        .map(|a| PeerNode {
                            node_id: None,
                            addr: Some(a.clone()),
                        })
                        .collect(),
                ),
                ..Default::default()
            };
        }
        return SwarmInfo {
            node_id: Some(String::new()),
            node_addr: Some(String::new()),
            local_node_state: Some(LocalNodeState::INACTIVE),
            control_available: Some(false),
            error: Some(String::new()),
            remote_managers: None,
            ..Default::default()
        };
    };
    let nodes = db::list::<Node>(&m.store);
    let managers = nodes
        .iter()
        .filter(|n| n.obj.spec.as_ref().and_then(|s| s.role) == Some(NodeSpecRoleEnum::MANAGER))
        .count();
    let cluster = db::list::<Swarm>(&m.store)
        .into_iter()
        .next()
        .map(|c| ClusterInfo {
            id: c.obj.id,
            version: c.obj.version,
            created_at: c.obj.created_at,
            updated_at: c.obj.updated_at,
            spec: c.obj.spec,
            tls_info: c.obj.tls_info.map(super::swarm::with_issuer),
            root_rotation_in_progress: c.obj.root_rotation_in_progress,
            data_path_port: c.obj.data_path_port,
            default_addr_pool: c.obj.default_addr_pool,
            subnet_size: c.obj.subnet_size,
        });
    let host = m
        .identity
        .addr
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    SwarmInfo {
        node_id: Some(m.identity.node_id.clone()),
        node_addr: Some(host),
        local_node_state: Some(LocalNodeState::ACTIVE),
        control_available: Some(true),
        error: Some(String::new()),
        remote_managers: Some(
            db::list::<crate::db::Member>(&m.store)
                .into_iter()
                .map(|mm| PeerNode {
                    node_id: Some(mm.obj.node_id),
                    addr: Some(mm.obj.addr),
                })
                .collect(),
        ),
        nodes: Some(nodes.len() as i64),
        managers: Some(managers as i64),
        cluster,
    }
}

/// `GET /info`: the engine's info with shoal's swarm state.
pub async fn info(State(d): State<AppState>) -> Result<Response> {
    let mut v = engine_part(&d, "/info").await?;
    let swarm = serde_json::to_value(swarm_info(&d).await)
        .map_err(|e| Error(ApiError::internal(format!("encoding swarm info: {e}"))))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("Swarm".into(), swarm);
    }
    Ok(json(StatusCode::OK, &v))
}

/// `GET /distribution/{name}/json`: for an image of a loopback registry (a node registry,
/// `127.0.0.1:5000/app:1`), the engine's answer, which it gets from that registry, so the CLI
/// pins the digest and the platforms as with any registry. For others shoal has no registry
/// access of its own: the CLI then records the tag without a digest (and says so), and every
/// node uses the image it has.
pub async fn distribution(state: State<AppState>, req: axum::extract::Request) -> Response {
    let path = req.uri().path();
    let name = path
        .split_once("/distribution/")
        .map(|(_, n)| n.trim_end_matches("/json"))
        .unwrap_or_default();
    if on_loopback_registry(name) {
        return super::proxy(state, req).await;
    }
    Error(ApiError::new(
        403,
        "shoal does not query registries for image digests; nodes use their local image",
    ))
    .into_response()
}

/// Whether an image name's registry is on loopback (`127.0.0.1:5000/app`, `localhost:5000/x`,
/// `[::1]:5000/y`): where a node registry listens, reachable from every node's engine.
fn on_loopback_registry(name: &str) -> bool {
    let Some((domain, _)) = name.split_once('/') else {
        return false;
    };
    let host = match domain.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => domain,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod loopback_tests {
    #[test]
    fn only_loopback_registries_are_asked_for_digests() {
        for yes in [
            "127.0.0.1:5000/app",
            "localhost:5000/a/b",
            "[::1]:5000/x",
            "127.0.0.2/y",
        ] {
            assert!(super::on_loopback_registry(yes), "{yes}");
        }
        for no in [
            "app",
            "library/app",
            "docker.io/library/app",
            "10.0.0.1:5000/app",
            "reg.example:5000/a",
        ] {
            assert!(!super::on_loopback_registry(no), "{no}");
        }
    }
}
