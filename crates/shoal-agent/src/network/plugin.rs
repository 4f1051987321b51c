//! The Docker network plugin (legacy plugin protocol, JSON over HTTP on a unix socket in
//! `/run/docker/plugins/`), through which Docker gives task containers their address before
//! they start. It is both the network driver and the IPAM driver of the node's engine networks
//! (see `ipam.rs`): as IPAM it hands out exactly the address Docker was given (`--ip`, chosen by
//! shoal's allocator); as network driver it wires the container to the network's bridge: in
//! `Join` it creates a veth pair, enslaves one end to the bridge and hands the other to Docker,
//! which moves it into the container as `ethN`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::ipam::{IpamError, Pools};
use super::netlink::Links;
use super::{names, NetworkError};

/// Content type of plugin answers, as Docker's plugin client expects.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";
/// Driver option (`com.docker.network.generic`) carrying the shoal network ID.
pub(crate) const OPT_NETWORK_ID: &str = "com.shoal.network.id";
/// Driver option carrying the bridge name.
pub(crate) const OPT_BRIDGE: &str = "com.shoal.bridge";
/// Driver option carrying the gateway address.
pub(crate) const OPT_GATEWAY: &str = "com.shoal.gateway";
/// Docker's key for driver options in `CreateNetwork`.
const GENERIC: &str = "com.docker.network.generic";

/// What the plugin needs to know about one Docker network of our driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PluginNet {
    pub bridge: String,
    pub gateway: Ipv4Addr,
}

/// State shared by the plugin's handlers; separate from the agent's lock, because Docker calls
/// the plugin while the agent is waiting for Docker (`CreateNetwork` during `ensure_network`).
pub(crate) struct PluginState {
    pub links: Links,
    pub docker: bollard::Docker,
    pub alias: String,
    pub dockerd_pid: Option<u32>,
    pub networks: Mutex<HashMap<String, PluginNet>>,
    pub pools: Mutex<Pools>,
}

impl PluginState {
    /// Records that Docker network `docker_id` is backed by `net`.
    pub fn register(&self, docker_id: &str, net: PluginNet) {
        self.networks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(docker_id.to_string(), net);
    }

    fn forget(&self, docker_id: &str) {
        self.networks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(docker_id);
    }

    fn get(&self, docker_id: &str) -> Option<PluginNet> {
        self.networks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(docker_id)
            .cloned()
    }

    /// The network behind `docker_id`, asking Docker for its driver options when the plugin
    /// has not seen it (the agent restarted while Docker kept the network).
    async fn resolve(&self, docker_id: &str) -> Result<PluginNet, NetworkError> {
        if let Some(n) = self.get(docker_id) {
            return Ok(n);
        }
        let inspect = self
            .docker
            .inspect_network(docker_id, None)
            .await
            .map_err(|e| NetworkError::docker("inspecting unknown network", docker_id, e))?;
        let opts = inspect.options.unwrap_or_default();
        let net = plugin_net_from(|k| opts.get(k).cloned()).ok_or_else(|| {
            NetworkError::invalid(format!("network {docker_id}"), "lacks shoal driver options")
        })?;
        self.register(docker_id, net.clone());
        Ok(net)
    }
}

fn plugin_net_from(get: impl Fn(&str) -> Option<String>) -> Option<PluginNet> {
    Some(PluginNet {
        bridge: get(OPT_BRIDGE)?,
        gateway: get(OPT_GATEWAY)?.parse().ok()?,
    })
}

fn reply(v: Value) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], v.to_string()).into_response()
}

fn fail(op: &str, msg: impl std::fmt::Display) -> Response {
    tracing::warn!(op, error = %msg, "plugin request failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        json!({ "Err": format!("shoal {op}: {msg}") }).to_string(),
    )
        .into_response()
}

fn parse<T: for<'de> Deserialize<'de>>(op: &str, body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| Box::new(fail(op, format!("bad request: {e}"))))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateNetworkReq {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(default)]
    options: HashMap<String, Value>,
}

#[derive(Deserialize)]
struct NetworkReq {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

#[derive(Deserialize)]
struct EndpointReq {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
}

async fn activate() -> Response {
    reply(json!({ "Implements": ["NetworkDriver", "IpamDriver"] }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RequestPoolReq {
    #[serde(default)]
    address_space: String,
    #[serde(default)]
    pool: String,
    #[serde(default)]
    sub_pool: String,
    #[serde(default)]
    options: Option<HashMap<String, String>>,
    #[serde(default, rename = "V6")]
    v6: bool,
}

#[derive(Deserialize)]
struct PoolReq {
    #[serde(rename = "PoolID")]
    pool_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AddressReq {
    #[serde(rename = "PoolID")]
    pool_id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    options: Option<HashMap<String, String>>,
}

async fn ipam_capabilities() -> Response {
    reply(json!({ "RequiresMACAddress": false }))
}

async fn ipam_address_spaces() -> Response {
    reply(json!({
        "LocalDefaultAddressSpace": "shoal-local",
        "GlobalDefaultAddressSpace": "shoal-global",
    }))
}

/// One IPAM call: decode the request, run `call` on the node's pools, answer its value or its
/// error in the plugin protocol's words.
fn with_pools<R, E>(
    st: &PluginState,
    op: &str,
    body: &Bytes,
    call: impl FnOnce(&mut Pools, R) -> Result<Value, E>,
) -> Response
where
    R: for<'de> Deserialize<'de>,
    E: std::fmt::Display,
{
    let req: R = match parse(op, body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let res = call(&mut st.pools.lock().unwrap_or_else(|e| e.into_inner()), req);
    match res {
        Ok(v) => reply(v),
        Err(e) => fail(op, e),
    }
}

async fn request_pool(State(st): State<Arc<PluginState>>, body: Bytes) -> Response {
    with_pools(&st, "RequestPool", &body, |pools, req: RequestPoolReq| {
        let options = req.options.unwrap_or_default();
        let (pool_id, subnet) =
            pools.request_pool(&req.address_space, &req.pool, &options, req.v6)?;
        tracing::debug!(%pool_id, sub_pool = %req.sub_pool, "IPAM pool requested");
        Ok::<_, IpamError>(json!({ "PoolID": pool_id, "Pool": subnet.to_string(), "Data": {} }))
    })
}

async fn release_pool(State(st): State<Arc<PluginState>>, body: Bytes) -> Response {
    with_pools(&st, "ReleasePool", &body, |pools, req: PoolReq| {
        pools.release_pool(&req.pool_id);
        tracing::debug!(pool_id = %req.pool_id, "IPAM pool released");
        Ok::<_, std::convert::Infallible>(json!({}))
    })
}

async fn request_address(State(st): State<Arc<PluginState>>, body: Bytes) -> Response {
    with_pools(&st, "RequestAddress", &body, |pools, req: AddressReq| {
        let options = req.options.unwrap_or_default();
        let address = pools.request_address(&req.pool_id, &req.address, &options)?;
        tracing::debug!(pool_id = %req.pool_id, %address, "IPAM address handed out");
        Ok::<_, IpamError>(json!({ "Address": address, "Data": {} }))
    })
}

async fn release_address(body: Bytes) -> Response {
    // Nothing to free: the allocator owns the addresses, the plugin keeps no leases.
    if let Err(resp) = parse::<PoolReq>("ReleaseAddress", &body) {
        return *resp;
    }
    reply(json!({}))
}

async fn capabilities() -> Response {
    reply(json!({ "Scope": "local", "ConnectivityScope": "local" }))
}

async fn create_network(State(st): State<Arc<PluginState>>, body: Bytes) -> Response {
    let req: CreateNetworkReq = match parse("CreateNetwork", &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let generic = req.options.get(GENERIC).and_then(Value::as_object);
    let Some(net) = plugin_net_from(|k| {
        generic
            .and_then(|g| g.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    }) else {
        return fail(
            "CreateNetwork",
            "networks of this driver are created by shoal only",
        );
    };
    match st.links.index(&net.bridge).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return fail(
                "CreateNetwork",
                format!("bridge {} does not exist", net.bridge),
            )
        }
        Err(e) => return fail("CreateNetwork", e),
    }
    tracing::info!(docker_network = %req.network_id, bridge = %net.bridge, "Docker created network");
    st.register(&req.network_id, net);
    reply(json!({}))
}

async fn delete_network(State(st): State<Arc<PluginState>>, body: Bytes) -> Response {
    let req: NetworkReq = match parse("DeleteNetwork", &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    st.forget(&req.network_id);
    reply(json!({}))
}

#[derive(Deserialize)]
struct CreateEndpointReq {
    #[serde(rename = "Interface", default)]
    interface: Option<EndpointInterface>,
}

#[derive(Deserialize)]
struct EndpointInterface {
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "MacAddress", default)]
    mac_address: String,
}

async fn create_endpoint(body: Bytes) -> Response {
    let req: CreateEndpointReq = match parse("CreateEndpoint", &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    // Docker already chose the address (IPAM). The MAC follows from it, so other nodes can
    // point their VXLAN entries at the container without learning it.
    let Some(iface) = req.interface.filter(|i| i.mac_address.is_empty()) else {
        return reply(json!({ "Interface": {} }));
    };
    match iface.address.split('/').next().map(str::parse::<Ipv4Addr>) {
        Some(Ok(ip)) => reply(json!({
            "Interface": { "MacAddress": names::mac_string(&names::endpoint_mac(ip)) }
        })),
        _ => reply(json!({ "Interface": {} })),
    }
}

async fn endpoint_info(body: Bytes) -> Response {
    if let Err(resp) = parse::<EndpointReq>("EndpointOperInfo", &body) {
        return *resp;
    }
    reply(json!({ "Value": {} }))
}

async fn join(State(st): State<Arc<PluginState>>, body: Bytes) -> Response {
    let req: EndpointReq = match parse("Join", &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let net = match st.resolve(&req.network_id).await {
        Ok(n) => n,
        Err(e) => return fail("Join", e),
    };
    let bridge_index = match st.links.index(&net.bridge).await {
        Ok(Some(i)) => i,
        Ok(None) => return fail("Join", format!("bridge {} does not exist", net.bridge)),
        Err(e) => return fail("Join", e),
    };
    let (host, peer) = names::veth_names(&req.endpoint_id);
    if let Err(e) = st
        .links
        .create_veth(
            &host,
            &peer,
            bridge_index,
            &st.alias,
            st.dockerd_pid,
            names::OVERLAY_MTU,
        )
        .await
    {
        return fail("Join", e);
    }
    tracing::debug!(endpoint = %req.endpoint_id, bridge = %net.bridge, %host, "endpoint joined");
    reply(json!({
        "InterfaceName": { "SrcName": peer, "DstPrefix": "eth" },
        "Gateway": net.gateway.to_string(),
    }))
}

async fn leave(body: Bytes) -> Response {
    // Docker moves the interface out of the container; DeleteEndpoint removes the pair.
    if let Err(resp) = parse::<EndpointReq>("Leave", &body) {
        return *resp;
    }
    reply(json!({}))
}

async fn delete_endpoint(State(st): State<Arc<PluginState>>, body: Bytes) -> Response {
    let req: EndpointReq = match parse("DeleteEndpoint", &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let (host, _) = names::veth_names(&req.endpoint_id);
    if let Err(e) = st.links.delete_link(&host).await {
        return fail("DeleteEndpoint", e);
    }
    reply(json!({}))
}

async fn nothing() -> Response {
    reply(json!({}))
}

fn router(state: Arc<PluginState>) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/NetworkDriver.GetCapabilities", post(capabilities))
        .route("/NetworkDriver.CreateNetwork", post(create_network))
        .route("/NetworkDriver.DeleteNetwork", post(delete_network))
        .route("/NetworkDriver.CreateEndpoint", post(create_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", post(endpoint_info))
        .route("/NetworkDriver.DeleteEndpoint", post(delete_endpoint))
        .route("/NetworkDriver.Join", post(join))
        .route("/NetworkDriver.Leave", post(leave))
        .route("/NetworkDriver.DiscoverNew", post(nothing))
        .route("/NetworkDriver.DiscoverDelete", post(nothing))
        .route("/NetworkDriver.ProgramExternalConnectivity", post(nothing))
        .route("/NetworkDriver.RevokeExternalConnectivity", post(nothing))
        .route("/IpamDriver.GetCapabilities", post(ipam_capabilities))
        .route(
            "/IpamDriver.GetDefaultAddressSpaces",
            post(ipam_address_spaces),
        )
        .route("/IpamDriver.RequestPool", post(request_pool))
        .route("/IpamDriver.ReleasePool", post(release_pool))
        .route("/IpamDriver.RequestAddress", post(request_address))
        .route("/IpamDriver.ReleaseAddress", post(release_address))
        .with_state(state)
}

/// The running plugin server; `stop` removes the socket.
pub(crate) struct PluginServer {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl PluginServer {
    /// Listens on `dir/<driver>.sock` (replacing a stale socket) and serves the plugin API.
    pub async fn start(
        dir: &Path,
        driver: &str,
        state: Arc<PluginState>,
    ) -> Result<PluginServer, NetworkError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| NetworkError::io("create plugin dir", dir.display(), e))?;
        let path = dir.join(format!("{driver}.sock"));
        match tokio::fs::remove_file(&path).await {
            Ok(()) => tracing::debug!(path = %path.display(), "removed stale plugin socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(NetworkError::io(
                    "remove stale plugin socket",
                    path.display(),
                    e,
                ))
            }
        }
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| NetworkError::io("bind plugin socket", path.display(), e))?;
        let (tx, rx) = oneshot::channel::<()>();
        let app = router(state);
        let shown = path.display().to_string();
        let task = tokio::spawn(async move {
            let res = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = res {
                tracing::error!(socket = %shown, error = %e, "plugin server stopped");
            }
        });
        tracing::info!(socket = %path.display(), "network plugin listening");
        Ok(PluginServer {
            shutdown: Some(tx),
            task: Some(task),
            path,
        })
    }

    /// Stops serving and removes the socket.
    pub async fn stop(&mut self) -> Result<(), NetworkError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take() {
            // Docker keeps idle connections open; do not wait for them forever.
            if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                tracing::debug!("plugin server did not drain in time");
                task.abort();
            }
        }
        match tokio::fs::remove_file(&self.path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetworkError::io(
                "remove plugin socket",
                self.path.display(),
                e,
            )),
        }
    }
}

impl Drop for PluginServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
