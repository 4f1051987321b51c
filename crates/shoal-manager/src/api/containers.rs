//! `POST /containers/create` with an attachable swarm network (`docker run --network appnet`):
//! the engine knows no such network, so shoal gets the container an address on it first (a
//! network attachment, see [`crate::attachment`]), then hands the engine a request naming this
//! node's engine network for it, with that address, shoal's DNS for service names, and a label
//! that lets the node give the address back once the container is gone. Everything else about
//! the request goes to the engine unchanged.

use super::system::engine_json;
use super::{proxy, AppState, Result};
use crate::node::NodeSession;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use shoal_api::dispatch::ATTACHMENTS_LABEL;
use shoal_api::{id, ApiError};
use std::sync::Arc;
use std::time::Duration;

/// How long a create waits for the swarm to allocate the address and this node to carry the
/// network (a leader election may be under way).
const ATTACH_WAIT: Duration = Duration::from_secs(20);

/// Network modes the engine itself answers, never swarm networks.
fn engine_mode(name: &str) -> bool {
    matches!(name, "" | "default" | "bridge" | "host" | "none") || name.starts_with("container:")
}

/// The user-named networks of a create request: `HostConfig.NetworkMode` and the keys of
/// `NetworkingConfig.EndpointsConfig`, without the engine's own modes.
/// The fields this module reads or writes, under their Go names whatever case the client used
/// (the engine reads them without regard to case, so the request means the same to it).
fn go_field_names(v: &mut Value) {
    use super::decode::fold_object;
    // `get_mut`, not `v[..]`, which would add the fields it does not find.
    fold_object(v, &["HostConfig", "NetworkingConfig", "Labels"]);
    if let Some(h) = v.get_mut("HostConfig") {
        fold_object(h, &["NetworkMode", "Dns"]);
    }
    let Some(n) = v.get_mut("NetworkingConfig") else {
        return;
    };
    fold_object(n, &["EndpointsConfig"]);
    if let Some(eps) = n.get_mut("EndpointsConfig").and_then(Value::as_object_mut) {
        for ep in eps.values_mut() {
            fold_object(ep, &["IPAMConfig", "Aliases"]);
            if let Some(ipam) = ep.get_mut("IPAMConfig") {
                fold_object(ipam, &["IPv4Address"]);
            }
        }
    }
}

fn requested_networks(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(m) = v["HostConfig"]["NetworkMode"].as_str() {
        out.push(m.to_string());
    }
    if let Some(eps) = v["NetworkingConfig"]["EndpointsConfig"].as_object() {
        out.extend(eps.keys().cloned());
    }
    out.retain(|n| !engine_mode(n));
    out.sort();
    out.dedup();
    out
}

/// Points the request at `engine_name` instead of `name`, with the attachment's address.
fn rewrite(v: &mut Value, name: &str, engine_name: &str, addr: &str, dns: &str) {
    if v["HostConfig"]["NetworkMode"].as_str() == Some(name) {
        v["HostConfig"]["NetworkMode"] = json!(engine_name);
    }
    if !v["NetworkingConfig"].is_object() {
        v["NetworkingConfig"] = json!({});
    }
    if !v["NetworkingConfig"]["EndpointsConfig"].is_object() {
        v["NetworkingConfig"]["EndpointsConfig"] = json!({});
    }
    if let Some(eps) = v["NetworkingConfig"]["EndpointsConfig"].as_object_mut() {
        let mut ep = eps.remove(name).unwrap_or_else(|| json!({}));
        if !ep.is_object() {
            ep = json!({});
        }
        if !ep["IPAMConfig"].is_object() {
            ep["IPAMConfig"] = json!({});
        }
        ep["IPAMConfig"]["IPv4Address"] = json!(addr);
        eps.insert(engine_name.to_string(), ep);
    }
    if !v["HostConfig"].is_object() {
        v["HostConfig"] = json!({});
    }
    let has_dns = v["HostConfig"]["Dns"]
        .as_array()
        .is_some_and(|d| !d.is_empty());
    if !has_dns {
        v["HostConfig"]["Dns"] = json!([dns]);
    }
}

fn add_label(v: &mut Value, tasks: &[String]) {
    if !v["Labels"].is_object() {
        v["Labels"] = json!({});
    }
    v["Labels"][ATTACHMENTS_LABEL] = json!(tasks.join(","));
}

/// Whether the engine itself has a network of that name or ID.
async fn engine_has(d: &AppState, name: &str) -> bool {
    let path = format!(
        "/networks/{}",
        percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
    );
    matches!(engine_json(d, Method::GET, &path, None).await, Ok((s, _)) if s.is_success())
}

/// The name of the engine network this node made for swarm network `network_id`, once the
/// node's agent has made it (an engine shared by several nodes holds one per node).
async fn engine_network(
    d: &AppState,
    node_id: &str,
    network_id: &str,
) -> std::result::Result<String, ApiError> {
    let filters = json!({ "label": [
        format!("com.shoal.network.id={network_id}"),
        format!("com.shoal.node.id={node_id}"),
    ] })
    .to_string();
    let path = format!(
        "/networks?filters={}",
        percent_encoding::utf8_percent_encode(&filters, percent_encoding::NON_ALPHANUMERIC)
    );
    let until = tokio::time::Instant::now() + ATTACH_WAIT;
    loop {
        if let Ok((s, v)) = engine_json(d, Method::GET, &path, None).await {
            let name = v
                .as_array()
                .and_then(|a| a.first())
                .and_then(|n| n["Name"].as_str());
            if let (true, Some(name)) = (s.is_success(), name) {
                return Ok(name.to_string());
            }
        }
        if tokio::time::Instant::now() >= until {
            return Err(ApiError::unavailable(format!(
                "network {network_id} was not set up on this node within {} s",
                ATTACH_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status a refusal from the swarm maps to, as Docker answers it (never 404 here: the
/// CLI takes a 404 from create for a missing image and tries to pull it).
fn refusal(message: String) -> ApiError {
    let status = if message.contains("not found") {
        400
    } else if message.contains("not manually attachable") {
        403
    } else {
        503
    };
    ApiError::new(status, message)
}

async fn release_all(session: &NodeSession, tasks: &[String], why: &str) {
    for t in tasks {
        session.release(t, why).await;
    }
}

/// `POST /containers/create`.
pub async fn create(State(d): State<AppState>, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .map_err(|e| ApiError::invalid(format!("reading request body: {e}")))?;
    let pass = |parts, bytes: Bytes| Request::from_parts(parts, Body::from(bytes));
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(proxy(State(d), pass(parts, bytes)).await);
    };
    go_field_names(&mut v);
    let node: Option<(String, Arc<NodeSession>)> = d
        .node
        .read()
        .await
        .as_ref()
        .map(|(id, s)| (id.node_id.clone(), s.clone()));
    let (Some((node_id, session)), names) = (node, requested_networks(&v)) else {
        return Ok(proxy(State(d), pass(parts, bytes)).await);
    };
    let mut swarm = Vec::new();
    for n in names {
        if !engine_has(&d, &n).await {
            swarm.push(n);
        }
    }
    if swarm.is_empty() {
        return Ok(proxy(State(d), pass(parts, bytes)).await);
    }
    let mut tasks: Vec<String> = Vec::new();
    for name in &swarm {
        let aliases: Vec<String> = v["NetworkingConfig"]["EndpointsConfig"][name.as_str()]
            ["Aliases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let task_id = id::new_id();
        let attached = session.attach(&task_id, name, aliases, ATTACH_WAIT).await;
        let (att, net) = match attached {
            Ok(x) => x,
            // Not a swarm network either: the engine answers as it always does.
            Err(e)
                if e.to_string().contains("network not found")
                    && tasks.is_empty()
                    && swarm.len() == 1 =>
            {
                return Ok(proxy(State(d), pass(parts, bytes)).await);
            }
            Err(e) => {
                release_all(&session, &tasks, "container create failed").await;
                return Err(refusal(e.to_string()).into());
            }
        };
        tasks.push(task_id);
        let engine_name = match engine_network(&d, &node_id, &net.id).await {
            Ok(n) => n,
            Err(e) => {
                release_all(&session, &tasks, "container create failed").await;
                return Err(e.into());
            }
        };
        let addr = att.addresses[0].split('/').next().unwrap_or_default();
        rewrite(&mut v, name, &engine_name, addr, &net.gateway.to_string());
        tracing::info!(network = %name, %addr, task = %tasks[tasks.len() - 1], "attaching a container");
    }
    add_label(&mut v, &tasks);
    let body = serde_json::to_vec(&v)
        .map_err(|e| ApiError::internal(format!("encoding the create request: {e}")))?;
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from(body.len()),
    );
    let resp = proxy(State(d), Request::from_parts(parts, Body::from(body))).await;
    if resp.status() != StatusCode::CREATED {
        release_all(&session, &tasks, "container create failed").await;
    }
    Ok(resp)
}

/// `DELETE /containers/{id}`: a container with network attachments gives their addresses
/// back as soon as the engine has removed it (the node's sweep would, later).
pub async fn remove(
    State(d): State<AppState>,
    axum::extract::Path(key): axum::extract::Path<String>,
    req: Request,
) -> Result<Response> {
    let session: Option<Arc<NodeSession>> = d.node.read().await.as_ref().map(|(_, s)| s.clone());
    let path = format!(
        "/containers/{}/json",
        percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC)
    );
    let tasks: Vec<String> = match (&session, engine_json(&d, Method::GET, &path, None).await) {
        (Some(_), Ok((s, v))) if s.is_success() => v["Config"]["Labels"][ATTACHMENTS_LABEL]
            .as_str()
            .map(|l| l.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let resp = proxy(State(d), req).await;
    if let (Some(session), true) = (session, resp.status().is_success()) {
        release_all(&session, &tasks, "container removed").await;
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_user_networks_only() {
        let v = json!({
            "HostConfig": {"NetworkMode": "appnet"},
            "NetworkingConfig": {"EndpointsConfig": {"appnet": {}, "other": {}}}
        });
        assert_eq!(requested_networks(&v), vec!["appnet", "other"]);
        let v = json!({"HostConfig": {"NetworkMode": "default"}});
        assert!(requested_networks(&v).is_empty());
        let v = json!({"HostConfig": {"NetworkMode": "container:abc"}});
        assert!(requested_networks(&v).is_empty());
    }

    #[test]
    fn rewrite_names_the_engine_network_with_the_address() {
        let mut v = json!({
            "HostConfig": {"NetworkMode": "appnet"},
            "NetworkingConfig": {"EndpointsConfig": {"appnet": {"Aliases": ["db"]}}}
        });
        rewrite(&mut v, "appnet", "shoal-abc-appnet", "10.0.1.9", "10.0.1.1");
        assert_eq!(v["HostConfig"]["NetworkMode"], "shoal-abc-appnet");
        let ep = &v["NetworkingConfig"]["EndpointsConfig"]["shoal-abc-appnet"];
        assert_eq!(ep["IPAMConfig"]["IPv4Address"], "10.0.1.9");
        assert_eq!(ep["Aliases"], json!(["db"]));
        assert!(v["NetworkingConfig"]["EndpointsConfig"]["appnet"].is_null());
        assert_eq!(v["HostConfig"]["Dns"], json!(["10.0.1.1"]));
    }

    #[test]
    fn rewrite_keeps_the_users_dns() {
        let mut v = json!({"HostConfig": {"NetworkMode": "appnet", "Dns": ["9.9.9.9"]}});
        rewrite(&mut v, "appnet", "e", "10.0.1.9", "10.0.1.1");
        assert_eq!(v["HostConfig"]["Dns"], json!(["9.9.9.9"]));
        assert_eq!(
            v["NetworkingConfig"]["EndpointsConfig"]["e"]["IPAMConfig"]["IPv4Address"],
            "10.0.1.9"
        );
    }
}
