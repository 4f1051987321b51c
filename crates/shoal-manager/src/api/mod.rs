//! The Docker Engine API, swarm subset: routes, request parsing and Docker's error format. Every
//! other endpoint goes to the node's own engine through [`crate::proxy::EngineProxy`].

mod client_certs;
mod containers;
mod dashboard;
mod decode;
mod encode;
mod events;
mod filters;
mod floating_ips;
mod logs;
pub(crate) mod networks;
pub(crate) mod nodes;
mod objects;
pub(crate) mod query;
mod registry;
mod services;
mod volumes;
pub use services::parse_spec as parse_service_spec;
pub mod swarm;
pub(crate) mod system;

use crate::cluster::{Manager, ManagerSlot};
use crate::node::{AgentHost, Identity, NodeSession};
use crate::proxy::EngineProxy;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use serde::Serialize;
use shoal_api::ApiError;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::RwLock;

/// Highest API version shoal speaks (what the docker 28 client negotiates).
pub const API_VERSION: &str = "1.50";
/// Lowest API version accepted.
pub const MIN_API_VERSION: &str = "1.24";
/// The largest request body any endpoint reads (4 MiB, swarmkit's default gRPC message size,
/// so whatever a Swarm manager takes in one call fits): larger bodies are refused with 413 in
/// Docker's format before they are buffered. Secrets and configs have their own, smaller caps
/// (`shoal_api::validate::MAX_SECRET_SIZE`, `MAX_CONFIG_SIZE`).
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// What every handler shares.
pub struct Daemon {
    /// The local engine.
    pub engine: EngineProxy,
    /// Where the node keeps its state.
    pub data_dir: PathBuf,
    /// The agent the manager feeds.
    pub agent: Arc<dyn AgentHost>,
    /// The manager, once this node is a manager in a swarm.
    pub manager: ManagerSlot,
    /// This node's swarm membership (managers and workers): identity and dispatcher session.
    pub node: RwLock<Option<(Identity, Arc<NodeSession>)>>,
    /// The node's name, when set instead of the engine's host name.
    pub hostname: Option<String>,
    /// Serializes swarm init/leave.
    pub lifecycle: tokio::sync::Mutex<()>,
    /// The key-encryption key of the node's keys, or its locked state (autolock).
    pub lock: crate::node::lock::Lock,
    /// The peer port this node serves images on (`--peer-port`; None: serves none, and
    /// fetches from the default port).
    pub peer_port: Option<u16>,
}

/// Shared handle used as axum state.
pub type AppState = Arc<Daemon>;

impl Daemon {
    /// The manager, or Docker's "not a swarm manager" error (Swarm's "locked" error while the
    /// node waits for `docker swarm unlock`).
    pub async fn manager(&self) -> std::result::Result<Arc<Manager>, ApiError> {
        if self.lock.is_locked() {
            return Err(ApiError::unavailable(
                crate::node::NodeError::Locked.to_string(),
            ));
        }
        if let Some(m) = self.manager.read().await.clone() {
            return Ok(m);
        }
        // dockerd tells a node outside any swarm from a worker (`errNoManager`).
        Err(match self.node.read().await.is_some() {
            true => ApiError::worker_not_a_manager(),
            false => ApiError::not_a_manager(),
        })
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(status = e.status, message = %e.message, "request failed");
        }
        (status, [("content-type", "application/json")], e.body()).into_response()
    }
}

/// Handler error: an [`ApiError`] rendered in Docker's format.
#[derive(Debug)]
pub struct Error(pub ApiError);

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Error(e)
    }
}

/// Handler result.
pub type Result<T> = std::result::Result<T, Error>;

/// JSON with a status, as Docker answers: moby's Go field names ([`encode::GoNames`]).
pub fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(&encode::GoNames(v)) {
        Ok(body) => (status, [("content-type", "application/json")], body).into_response(),
        Err(e) => Error(ApiError::internal(format!("encoding response: {e}"))).into_response(),
    }
}

/// 200 with no body, as dockerd answers a write that returns nothing (leave, update, remove):
/// its handlers write no JSON, not even `null`.
pub fn done() -> Response {
    StatusCode::OK.into_response()
}

/// Parses a JSON body as dockerd does (field names in any case), refusing malformed input and
/// wrong types with Docker's 400 naming the field.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> std::result::Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            "request body is empty; a JSON object was expected",
        ));
    }
    decode::from_slice(body)
}

/// Every query-string reader the handlers use, on one raw query, for the fuzzer
/// (`fuzz/fuzz_targets/queries.rs`): a query is user input that reaches time arithmetic
/// (`since`/`until`), number parsing and filter JSON before any handler logic, so none of it
/// may panic. Returns how many readers accepted it, so the work cannot be optimized away.
#[doc(hidden)]
pub fn read_query(raw: &str) -> usize {
    use axum::extract::Query;
    let Ok(uri) = format!("/q?{raw}").parse::<Uri>() else {
        return 0;
    };
    let Ok(Query(q)) = Query::<query::Query>::try_from_uri(&uri) else {
        return 0;
    };
    let mut ok = 0;
    ok += usize::from(logs::read_for_fuzz(&q));
    ok += usize::from(events::read_for_fuzz(&q));
    if let Ok(f) = filters::Filters::parse_any(&q) {
        ok += 1;
        ok += usize::from(f.labels("label", None));
        ok += usize::from(f.any("name", |n| n.is_empty()));
    }
    for key in ["status", "insertDefaults", "verbose", "rotateWorkerToken"] {
        ok += usize::from(query::strict_bool(&q, key).is_ok());
    }
    ok += usize::from(query::bool_param(&q, "force"));
    for kind in [
        query::Versioned::Swarm,
        query::Versioned::Service,
        query::Versioned::Node,
        query::Versioned::Secret,
        query::Versioned::Config,
    ] {
        ok += usize::from(query::version(&q, kind).is_ok());
    }
    ok
}

/// Refuses `name` when another object of the kind has it in other letter case: swarmkit keeps
/// names unique without regard to case (its store indexes them lowercased), and a service name
/// is a DNS name, where `web` and `WEB` are one. The store itself refuses exact duplicates.
pub fn name_free<T: crate::db::Stored>(
    store: &shoal_store::Store,
    what: &str,
    name: &str,
) -> std::result::Result<(), ApiError> {
    let taken = crate::db::list::<T>(store).into_iter().any(|o| {
        o.obj
            .name()
            .is_some_and(|n| n != name && n.eq_ignore_ascii_case(name))
    });
    if taken {
        // swarmkit's store says it of every kind; only its service API passes the words on.
        let conflict = match what {
            "service" => "name conflicts with an existing object: ",
            _ => "",
        };
        return Err(ApiError::conflict(format!(
            "rpc error: code = AlreadyExists desc = {conflict}{what} {name} already exists"
        )));
    }
    Ok(())
}

pub use query::bool_param;

/// The request's API version, read from the `/vX.Y` prefix.
#[derive(Clone, Debug)]
pub struct ApiVersion(pub Option<String>);

/// The URI as the client sent it, restored before proxying.
#[derive(Clone, Debug)]
pub struct ClientUri(pub Uri);

fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |s: &str| -> (u32, u32) {
        let (x, y) = s.split_once('.').unwrap_or((s, "0"));
        (x.parse().unwrap_or(0), y.parse().unwrap_or(0))
    };
    parse(a).cmp(&parse(b))
}

/// Strips the `/vX.Y` prefix so one route table serves every version.
fn strip_version(mut req: Request) -> Request {
    let uri = req.uri().clone();
    let path = uri.path();
    let mut version = None;
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some((v, tail)) = rest.split_once('/') {
            if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.') {
                version = Some(v.to_string());
                let new = match uri.query() {
                    Some(q) => format!("/{tail}?{q}"),
                    None => format!("/{tail}"),
                };
                if let Ok(u) = new.parse() {
                    *req.uri_mut() = u;
                }
            }
        }
    }
    req.extensions_mut().insert(ApiVersion(version));
    req.extensions_mut().insert(ClientUri(uri));
    req
}

async fn check_version(req: Request, next: axum::middleware::Next) -> Response {
    if let Some(ApiVersion(Some(v))) = req.extensions().get::<ApiVersion>() {
        if compare_versions(v, API_VERSION).is_gt() {
            return Error(ApiError::invalid(format!(
                "client version {v} is too new. Maximum supported API version is {API_VERSION}"
            )))
            .into_response();
        }
        if compare_versions(v, MIN_API_VERSION).is_lt() {
            return Error(ApiError::invalid(format!(
                "client version {v} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
            )))
            .into_response();
        }
    }
    next.run(req).await
}

/// axum's own refusals (a body too large to read, a path that does not decode) are plain text;
/// Docker's clients read `{"message": ...}` from every error, so shoal's routes answer them so.
async fn docker_errors(req: Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let text = match axum::body::to_bytes(resp.into_body(), 64 << 10).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(e) => format!("reading the error: {e}"),
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    Error(ApiError::new(status.as_u16(), message)).into_response()
}

/// Forwards anything shoal does not answer to the engine, with the client's original URI.
pub async fn proxy(State(d): State<AppState>, mut req: Request) -> Response {
    if let Some(ClientUri(u)) = req.extensions().get::<ClientUri>().cloned() {
        *req.uri_mut() = u;
    }
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let res = d.engine.forward(req).await;
    crate::metrics::observe_request(
        "(engine)",
        &method,
        res.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    res
}

/// Counts a request to one of shoal's routes under its template (`/services/{id}`), so the
/// metric's labels stay few whatever IDs clients send.
async fn count_request(req: Request, next: axum::middleware::Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "(unmatched)".into());
    let method = req.method().to_string();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    crate::metrics::observe_request(
        &route,
        &method,
        res.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    res
}

/// The whole API as a service that strips version prefixes before routing.
pub fn app(
    state: AppState,
) -> impl tower::Service<
    Request<Body>,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send
       + Sync {
    let router = Router::new()
        .route("/_ping", get(system::ping).head(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/events", get(events::events))
        .route("/swarm", get(swarm::inspect))
        .route("/swarm/init", post(swarm::init))
        .route("/swarm/join", post(swarm::join))
        .route("/swarm/leave", post(swarm::leave))
        .route("/swarm/update", post(swarm::update))
        .route("/swarm/unlockkey", get(swarm::unlock_key))
        .route("/swarm/unlock", post(swarm::unlock))
        .route("/nodes", get(nodes::list))
        .route("/nodes/{id}", get(nodes::inspect).delete(nodes::remove))
        .route("/nodes/{id}/update", post(nodes::update))
        .route("/services", get(services::list))
        .route("/services/create", post(services::create))
        .route(
            "/services/{id}",
            get(services::inspect).delete(services::remove),
        )
        .route("/services/{id}/update", post(services::update))
        .route("/services/{id}/logs", get(logs::service_logs))
        .route("/shoal/v1/services/{id}/history", get(services::history))
        .route("/shoal/v1/services/{id}/schedule", get(services::schedule))
        .route(
            "/shoal/v1/services/{id}/rollback",
            post(services::rollback_to),
        )
        .route(
            "/shoal/v1/client-certs",
            get(client_certs::list).post(client_certs::create),
        )
        .route(
            "/shoal/v1/client-certs/{name}",
            axum::routing::delete(client_certs::revoke),
        )
        .route("/shoal/v1/registry", get(registry::list))
        .route(
            "/shoal/v1/floating-ips",
            get(floating_ips::list).post(floating_ips::add),
        )
        .route(
            "/shoal/v1/floating-ips/{address}",
            axum::routing::delete(floating_ips::remove),
        )
        .route(
            "/shoal/v1/dashboard/password",
            post(dashboard::set_password),
        )
        .route("/tasks", get(services::list_tasks))
        .route("/tasks/{id}", get(services::inspect_task))
        .route("/tasks/{id}/logs", get(logs::task_logs))
        .route("/secrets", get(objects::list_secrets))
        .route("/secrets/create", post(objects::create_secret))
        .route(
            "/secrets/{id}",
            get(objects::inspect_secret).delete(objects::remove_secret),
        )
        .route("/secrets/{id}/update", post(objects::update_secret))
        .route("/configs", get(objects::list_configs))
        .route("/configs/create", post(objects::create_config))
        .route(
            "/configs/{id}",
            get(objects::inspect_config).delete(objects::remove_config),
        )
        .route("/configs/{id}/update", post(objects::update_config))
        .route("/networks", get(networks::list))
        .route("/networks/create", post(networks::create))
        .route(
            "/networks/{id}",
            get(networks::inspect).delete(networks::remove),
        )
        .route("/volumes", get(volumes::list))
        .route("/volumes/create", post(volumes::create))
        .route(
            "/volumes/{name}",
            get(volumes::inspect).delete(volumes::remove),
        )
        .route("/distribution/{*name}", any(system::distribution))
        .route(
            "/containers/create",
            post(containers::create).fallback(proxy),
        )
        .route(
            "/containers/{id}",
            axum::routing::delete(containers::remove).fallback(proxy),
        )
        .route_layer(axum::middleware::from_fn(docker_errors))
        .route_layer(axum::middleware::from_fn(count_request))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .fallback(proxy)
        .layer(axum::middleware::from_fn(check_version))
        .with_state(state);
    tower::util::MapRequestLayer::new(strip_version).layer(router)
}

use tower::Layer;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_compare() {
        assert!(compare_versions("1.50", "1.41").is_gt());
        assert!(compare_versions("1.9", "1.24").is_lt());
        assert!(compare_versions("1.50", "1.50").is_eq());
    }

    #[test]
    fn strips_prefix_and_keeps_query() {
        let req = Request::builder()
            .uri("/v1.50/services?status=true")
            .body(Body::empty())
            .unwrap();
        let out = strip_version(req);
        assert_eq!(out.uri().to_string(), "/services?status=true");
        assert_eq!(
            out.extensions().get::<ApiVersion>().unwrap().0.as_deref(),
            Some("1.50")
        );
        let req = Request::builder()
            .uri("/_ping")
            .body(Body::empty())
            .unwrap();
        assert_eq!(strip_version(req).uri().path(), "/_ping");
    }
}
