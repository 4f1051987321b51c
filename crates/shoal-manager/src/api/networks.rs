//! `/networks`: swarm networks live in the store; the engine's local networks are listed beside
//! them, and anything not swarm-scoped goes to the engine.

use super::filters::Filters;
use super::system::engine_json;
use super::{json, parse_body, proxy, AppState, Result};
use crate::db;
use crate::state::ClusterState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use shoal_api::dispatch::ipnet_str::Ipv4Cidr;
use shoal_api::models::{Network, NetworkCreateRequest};
use shoal_api::objects::StoredService;
use shoal_api::{id, validate, ApiError};
use shoal_control::allocator::{check_subnet, free_subnet, parse_proc_net_route, HostRoute};
use shoal_store::Expect;
use std::collections::HashMap;

/// Docker networks shoal's agent creates on the engine for its own use; hidden from listings.
fn is_internal(v: &serde_json::Value) -> bool {
    v["Driver"]
        .as_str()
        .is_some_and(|d| d.starts_with("shoal-"))
}

/// `GET /networks`.
pub async fn list(
    State(d): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let f = Filters::parse(
        &q,
        &["dangling", "driver", "id", "label", "name", "scope", "type"],
    )?;
    let query = q
        .get("filters")
        .map(|v| {
            format!(
                "?filters={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .unwrap_or_default();
    let (_, engine) = engine_json(&d, Method::GET, &format!("/networks{query}"), None).await?;
    let mut out: Vec<serde_json::Value> = engine
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| !is_internal(n))
        .collect();
    if let Ok(m) = d.manager().await {
        for n in db::list::<Network>(&m.store).into_iter().map(|n| n.obj) {
            let keep = f.any("id", |x| n.id.as_deref().unwrap_or_default().starts_with(x))
                && f.any("name", |x| {
                    n.name.as_deref().unwrap_or_default().contains(x)
                })
                && f.any("driver", |x| n.driver.as_deref() == Some(x))
                && f.any("scope", |x| x == "swarm")
                && f.any("type", |x| x == "custom")
                && f.labels("label", n.labels.as_ref());
            if keep {
                out.push(view(&n));
            }
        }
    }
    Ok(json(StatusCode::OK, &out))
}

fn view(n: &Network) -> serde_json::Value {
    let mut v = serde_json::to_value(n).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.entry("Containers").or_insert(serde_json::json!({}));
        o.entry("Options").or_insert(serde_json::json!({}));
        o.entry("ConfigOnly").or_insert(false.into());
        o.entry("ConfigFrom")
            .or_insert(serde_json::json!({"Network": ""}));
    }
    v
}

/// The nodes that carry `network_id` (those with a live task or attachment on it), as
/// `docker network inspect` shows them in `Peers`; and, for `--verbose`, its services with
/// their VIPs and tasks.
fn peers_and_services(
    state: &ClusterState,
    network_id: &str,
) -> (serde_json::Value, serde_json::Value) {
    use shoal_api::objects::is_terminal;
    let mut peers: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    let mut services: serde_json::Map<String, serde_json::Value> = Default::default();
    let node_of = |id: &str| state.nodes.iter().find(|n| n.obj.id.as_deref() == Some(id));
    for t in state.tasks.iter().map(|t| &t.obj) {
        let Some(att) = t
            .networks_attachments
            .iter()
            .find(|a| a.network.id == network_id)
        else {
            continue;
        };
        let (Some(node_id), false) = (t.node_id(), is_terminal(t.state())) else {
            continue;
        };
        let node = node_of(node_id);
        let host = node
            .and_then(|n| n.obj.description.as_ref()?.hostname.clone())
            .unwrap_or_else(|| node_id.to_string());
        let ip = node
            .and_then(|n| n.obj.status.as_ref()?.addr.clone())
            .unwrap_or_default();
        peers.insert(
            host.clone(),
            serde_json::json!({ "Name": host, "IP": ip.clone() }),
        );
        let Some(svc) = state.services.get(t.service_id()) else {
            continue;
        };
        let name = svc
            .obj
            .service
            .spec
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_default();
        let vip = svc
            .obj
            .service
            .endpoint
            .iter()
            .flat_map(|e| e.virtual_ips.iter().flatten())
            .find(|v| v.network_id.as_deref() == Some(network_id))
            .and_then(|v| v.addr.clone())
            .map(|a| a.split('/').next().unwrap_or_default().to_string())
            .unwrap_or_default();
        let entry = services.entry(name).or_insert_with(
            || serde_json::json!({ "VIP": vip, "Ports": [], "LocalLBIndex": 0, "Tasks": [] }),
        );
        if let Some(list) = entry["Tasks"].as_array_mut() {
            list.push(serde_json::json!({
                "Name": format!("{}.{}.{}", svc.obj.name(), t.slot().max(1), t.id()),
                "EndpointID": "",
                "EndpointIP": att.addresses.first().map(|a| a.split('/').next().unwrap_or_default()).unwrap_or_default(),
                "Info": { "Host IP": ip },
            }));
        }
    }
    (
        serde_json::Value::Array(peers.into_values().collect()),
        serde_json::Value::Object(services),
    )
}

/// `GET /networks/{id}`: a swarm network (with its peers, and with `verbose=true` its
/// services and tasks), else the engine's.
pub async fn inspect(
    State(d): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Response> {
    if let Ok(m) = d.manager().await {
        if let Some(n) = db::lookup::<Network>(&m.store, &key) {
            let mut v = view(&n.obj);
            let state = crate::state::load(&m.store);
            let (peers, services) =
                peers_and_services(&state, n.obj.id.as_deref().unwrap_or_default());
            v["Peers"] = peers;
            if super::query::strict_bool(&q, "verbose")? {
                v["Services"] = services;
            }
            return Ok(json(StatusCode::OK, &v));
        }
    }
    Ok(proxy(State(d), req).await)
}

/// The routes of the host this manager runs on (the I/O half of the overlay subnet check; the
/// decision is `allocator::check_subnet`). Only this manager's view: other nodes' routes are
/// not known here. Unreadable means none known, said in the log.
pub(crate) async fn host_routes() -> Vec<HostRoute> {
    match tokio::fs::read_to_string("/proc/net/route").await {
        Ok(text) => parse_proc_net_route(&text),
        Err(e) => {
            tracing::warn!(error = %e, "reading /proc/net/route: overlay subnets are not checked against host routes");
            Vec::new()
        }
    }
}

/// `POST /networks/create`: overlay networks become swarm networks; others are the engine's.
pub async fn create(State(d): State<AppState>, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, super::MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            let status = if too_large { 413 } else { 400 };
            ApiError::new(status, format!("reading the request body: {e}"))
        })?;
    let r: NetworkCreateRequest = parse_body(&bytes)?;
    let driver = r
        .driver
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "bridge".into());
    if driver != "overlay" && r.scope.as_deref() != Some("swarm") {
        return Ok(proxy(State(d), Request::from_parts(parts, Body::from(bytes))).await);
    }
    let m = d.manager().await?;
    if driver != "overlay" {
        return Err(ApiError::invalid_arg(format!(
            "Driver: {driver:?} is not supported for swarm networks; use overlay"
        ))
        .into());
    }
    validate::dns_name("Name", &r.name).map_err(|_| {
        ApiError::invalid_arg(format!(
            "Name: network name {:?} must be valid as a DNS name component",
            r.name
        ))
    })?;
    if r.ingress == Some(true) {
        return Err(
            ApiError::invalid_arg("Ingress: the cluster already has its ingress network").into(),
        );
    }
    super::name_free::<Network>(&m.store, "network", &r.name)
        .map_err(|_| ApiError::conflict(format!("network with name {} already exists", r.name)))?;
    let routes = host_routes().await;
    let _alloc = m.alloc.lock().await;
    let state = crate::state::load(&m.store);
    let cfg = r
        .ipam
        .as_ref()
        .and_then(|i| i.config.as_ref())
        .and_then(|c| c.first())
        .cloned()
        .unwrap_or_default();
    let subnet: Ipv4Cidr = match cfg.subnet.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => s
            .parse()
            .map_err(|e: shoal_api::dispatch::ipnet_str::CidrError| {
                ApiError::invalid_arg(format!("IPAM.Config[0].Subnet: {e}"))
            })?,
        None => free_subnet(&state, &routes)
            .ok_or_else(|| ApiError::invalid_arg("no free subnet left in 10.0.0.0/8"))?,
    };
    check_subnet("IPAM.Config[0].Subnet", &subnet, &routes)?;
    if subnet.prefix > 29 {
        return Err(ApiError::invalid_arg(format!(
            "IPAM.Config[0].Subnet: {subnet} is too small (at most /29)"
        ))
        .into());
    }
    for other in &state.networks {
        if let Some((s, _)) = shoal_control::allocator::network_subnet(&other.obj) {
            if s.overlaps(&subnet) {
                return Err(ApiError::new(403, format!("invalid pool request: Pool overlaps with other one on this address space: {subnet} overlaps {s} of network {}", other.obj.name.clone().unwrap_or_default())).into());
            }
        }
    }
    let gateway = match cfg.gateway.as_deref().filter(|g| !g.is_empty()) {
        Some(g) => {
            let ip: std::net::Ipv4Addr = g.parse().map_err(|_| {
                ApiError::invalid_arg(format!(
                    "IPAM.Config[0].Gateway: {g:?} is not an IPv4 address"
                ))
            })?;
            if !subnet.contains(ip) {
                return Err(ApiError::invalid_arg(format!(
                    "IPAM.Config[0].Gateway: {ip} is not in subnet {subnet}"
                ))
                .into());
            }
            ip
        }
        None => subnet
            .nth(1)
            .ok_or_else(|| ApiError::invalid_arg("subnet too small"))?,
    };
    let vni = shoal_control::allocator::free_vni(&state);
    let nid = id::new_id();
    let mut options = r.options.clone().unwrap_or_default();
    options.insert(shoal_control::allocator::VNI_OPTION.into(), vni.to_string());
    let net = Network {
        internal: Some(r.internal.unwrap_or(false)),
        attachable: Some(r.attachable.unwrap_or(false)),
        options: Some(options),
        labels: Some(r.labels.clone().unwrap_or_default()),
        ..shoal_control::allocator::overlay_network(
            &r.name,
            &nid,
            id::now(),
            &subnet.to_string(),
            &gateway.to_string(),
        )
    };
    match db::write(&m.store, vec![db::put(&net, Expect::Absent)?]).await {
        Err(e) if e.status == 409 => {
            return Err(
                ApiError::conflict(format!("network with name {} already exists", r.name)).into(),
            )
        }
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    tracing::info!(network = %r.name, id = %nid, subnet = %subnet, "network created");
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({"Id": nid, "Warning": ""}),
    ))
}

/// `DELETE /networks/{id}`.
pub async fn remove(
    State(d): State<AppState>,
    Path(key): Path<String>,
    req: Request,
) -> Result<Response> {
    let Ok(m) = d.manager().await else {
        return Ok(proxy(State(d), req).await);
    };
    let Some(n) = db::lookup::<Network>(&m.store, &key) else {
        return Ok(proxy(State(d), req).await);
    };
    let nid = n.obj.id.clone().unwrap_or_default();
    if n.obj.ingress == Some(true) {
        // Swarm's refusal while a service publishes through the mesh; Swarm removes an unused
        // ingress network, shoal keeps it (its routing mesh is set up on every node).
        let users = db::list::<StoredService>(&m.store).into_iter().find(|s| {
            s.obj
                .service
                .endpoint
                .iter()
                .flat_map(|e| e.virtual_ips.iter().flatten())
                .any(|v| v.network_id.as_deref() == Some(nid.as_str()))
        });
        if let Some(s) = users {
            return Err(ApiError::failed_precondition(format!(
                "ingress network cannot be removed because service {} depends on it",
                s.obj.id()
            ))
            .into());
        }
        return Err(ApiError::new(403, "rpc error: code = PermissionDenied desc = removing the ingress network is not supported by shoal").into());
    }
    // swarmkit's words name the network and the first service by ID (FailedPrecondition: 400).
    let user = db::list::<StoredService>(&m.store).into_iter().find(|s| {
        let tt = s.obj.spec().task_template.as_ref();
        tt.and_then(|t| t.networks.as_ref())
            .into_iter()
            .flatten()
            .any(|a| a.target.as_deref() == Some(nid.as_str()))
    });
    if let Some(s) = user {
        return Err(ApiError::failed_precondition(format!(
            "network {nid} is in use by service {}",
            s.obj.id()
        ))
        .into());
    }
    db::write(&m.store, vec![db::delete::<Network>(&nid, Expect::Any)]).await?;
    Ok(axum::response::IntoResponse::into_response(
        StatusCode::NO_CONTENT,
    ))
}
