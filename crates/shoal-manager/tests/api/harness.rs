//! One shoal node in-process: the API's router over a real store in a temp dir, driven with
//! `tower::ServiceExt::oneshot`. No daemon process and no Docker Engine: the agent is a
//! stand-in behind `node::AgentHost` (the real one is tested end to end), and the engine
//! is a unix socket that answers only what the swarm endpoints read (`/_ping`, `/version`,
//! `/info`) and 404 for the rest.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use shoal_api::dispatch::{NodeAssignments, TaskStatusReport};
use shoal_manager::api::{self, Daemon};
use shoal_manager::node::{AgentError, AgentHost, FloatingLink, LogLink, PeerLink};
use shoal_manager::proxy::EngineProxy;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

/// The host name the fake engine reports, so node listings are the same on every machine.
pub const HOSTNAME: &str = "apitest-node";

/// Stands in for the node's agent: records what the manager asks of it, runs nothing.
#[derive(Default)]
pub struct StandInAgent {
    /// Times `start` was called.
    pub starts: AtomicUsize,
    /// Times `stop(remove = true)` was called.
    pub removals: AtomicUsize,
}

impl AgentHost for StandInAgent {
    fn start(
        &self,
        _node_id: String,
        _assignments: watch::Receiver<NodeAssignments>,
        _reports: mpsc::Sender<Vec<TaskStatusReport>>,
        _logs: LogLink,
        _floating: FloatingLink,
        _peers: PeerLink,
    ) -> BoxFuture<'_, Result<(), AgentError>> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }

    fn stop(&self, remove: bool) -> BoxFuture<'_, ()> {
        if remove {
            self.removals.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(async {})
    }
}

/// The engine's own events so far (JSON values with `timeNano`), what its `/events` serves.
static ENGINE_EVENTS: std::sync::Mutex<Vec<Value>> = std::sync::Mutex::new(Vec::new());
/// Live `/events` streams the fake engine serves now, by the `filters` they were asked with
/// (tests send a filter key of their own, which the engine and shoal ignore, to find theirs).
pub static LIVE_EVENTS: std::sync::Mutex<std::collections::BTreeMap<String, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());
/// Wakes whoever waits on [`LIVE_EVENTS`].
pub static EVENTS_CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

fn engine_feed() -> &'static tokio::sync::broadcast::Sender<Value> {
    static FEED: std::sync::OnceLock<tokio::sync::broadcast::Sender<Value>> =
        std::sync::OnceLock::new();
    FEED.get_or_init(|| tokio::sync::broadcast::channel(1024).0)
}

/// Now, in Unix nanoseconds.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// A time as the engine's `since`/`until` take it (`seconds.nanoseconds`).
pub fn unix(ns: i64) -> String {
    format!(
        "{}.{:09}",
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000)
    )
}

/// The fake engine sees a container event now: `action` on container `id`. Returns its time.
pub fn engine_event(id: &str, action: &str) -> i64 {
    let t = now_ns();
    let e = json!({
        "status": action, "id": id, "from": "shoal-test/web",
        "Type": "container", "Action": action,
        "Actor": {"ID": id, "Attributes": {"image": "shoal-test/web", "name": id}},
        "scope": "local", "time": t / 1_000_000_000, "timeNano": t,
    });
    ENGINE_EVENTS.lock().unwrap().push(e.clone());
    let _ = engine_feed().send(e);
    t
}

/// Counts one live events stream until dropped.
struct LiveEvents(String);

impl LiveEvents {
    fn new(key: String) -> LiveEvents {
        *LIVE_EVENTS.lock().unwrap().entry(key.clone()).or_default() += 1;
        EVENTS_CHANGED.notify_waiters();
        LiveEvents(key)
    }
}

impl Drop for LiveEvents {
    fn drop(&mut self) {
        if let Some(n) = LIVE_EVENTS.lock().unwrap().get_mut(&self.0) {
            *n -= 1;
        }
        EVENTS_CHANGED.notify_waiters();
    }
}

/// The engine's `/events` as dockerd answers it: its events of the `since`/`until` window
/// (when either is given), then, unless `until` has passed, new ones as they come.
async fn fake_events(
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let time = |k: &str| {
        q.get(k).map(|v| {
            let (s, n) = v.split_once('.').unwrap_or((v, "0"));
            let n = format!("{n:0<9}");
            s.parse::<i64>().unwrap() * 1_000_000_000 + n[..9].parse::<i64>().unwrap()
        })
    };
    let (since, until) = (time("since"), time("until"));
    let live = engine_feed().subscribe();
    let in_window = |e: &Value| {
        let t = e["timeNano"].as_i64().unwrap();
        since.is_none_or(|s| t >= s) && until.is_none_or(|u| t <= u)
    };
    let history: Vec<Value> = if since.is_some() || until.is_some() {
        let all = ENGINE_EVENTS.lock().unwrap().clone();
        all.into_iter().filter(|e| in_window(e)).collect()
    } else {
        Vec::new()
    };
    let line = |e: &Value| Ok::<_, Infallible>(axum::body::Bytes::from(format!("{e}\n")));
    let first = futures::stream::iter(history.iter().map(line).collect::<Vec<_>>());
    if until.is_some_and(|u| u <= now_ns()) {
        return Response::new(Body::from_stream(first));
    }
    let guard = LiveEvents::new(q.get("filters").cloned().unwrap_or_default());
    let rest = futures::stream::unfold((live, guard), move |(mut live, guard)| async move {
        loop {
            match live.recv().await {
                Ok(e) if until.is_none_or(|u| e["timeNano"].as_i64().unwrap() <= u) => {
                    return Some((line(&e), (live, guard)))
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    });
    Response::new(Body::from_stream(futures::StreamExt::chain(first, rest)))
}

/// The engine's side: just enough of Docker's answers for `/version` and `/info`.
fn fake_engine() -> Router {
    Router::new()
        .route("/v1.47/events", get(fake_events))
        .route("/events", get(fake_events))
        .route(
            "/v1.47/volumes",
            get(|| async {
                axum::Json(json!({
                    "Volumes": [{"Name": "enginevol", "Driver": "local", "Scope": "local",
                        "Mountpoint": "/var/lib/docker/volumes/enginevol/_data",
                        "Labels": null, "Options": null, "CreatedAt": "2026-01-01T00:00:00Z"}],
                    "Warnings": null
                }))
            }),
        )
        .route(
            "/_ping",
            get(|| async { ([("api-version", "1.47")], "OK") }),
        )
        .route(
            "/v1.47/version",
            get(|| async {
                axum::Json(json!({
                    "Version": "27.5.1", "ApiVersion": "1.47", "MinAPIVersion": "1.24",
                    "Os": "linux", "Arch": "amd64",
                    "Components": [{"Name": "Engine", "Version": "27.5.1"}]
                }))
            }),
        )
        .route(
            "/v1.47/info",
            get(|| async {
                axum::Json(json!({
                    "Name": HOSTNAME, "NCPU": 2, "MemTotal": 4_000_000_000i64,
                    "ServerVersion": "27.5.1", "Architecture": "x86_64",
                    "Labels": ["zone=test"],
                    "Swarm": {"LocalNodeState": "inactive"}
                }))
            }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": "page not found"})),
            )
        })
}

/// A node of its own: data dir, engine socket, daemon state and the API in front of it.
pub struct Node {
    /// The daemon state every handler shares.
    pub daemon: api::AppState,
    /// The stand-in agent, to see what the manager asked of it.
    pub agent: Arc<StandInAgent>,
    engine: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.engine.abort();
    }
}

/// An answer: status, headers and the body decoded as JSON (Null when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// Body as JSON.
    pub json: Value,
    /// Body as text.
    pub text: String,
}

impl Answer {
    /// Docker's error message, checking the body is `{"message": "..."}` and nothing else.
    pub fn message(&self) -> &str {
        let obj = self
            .json
            .as_object()
            .unwrap_or_else(|| panic!("error body is not a JSON object: {:?}", self.text));
        assert_eq!(obj.len(), 1, "error body has more than a message: {obj:?}");
        assert_eq!(
            self.headers
                .get("content-type")
                .map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "error content type"
        );
        obj["message"].as_str().expect("message is a string")
    }

    /// Asserts the status and that the message contains every one of `parts`.
    #[track_caller]
    pub fn refused(&self, status: u16, parts: &[&str]) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "want {status}, got {}: {}",
            self.status,
            self.text
        );
        let msg = self.message();
        for p in parts {
            assert!(msg.contains(p), "message {msg:?} lacks {p:?}");
        }
    }

    /// Asserts a success status and returns the JSON body.
    #[track_caller]
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "want {status}, got {}: {}",
            self.status,
            self.text
        );
        &self.json
    }
}

impl Node {
    /// A node outside any swarm.
    pub async fn new() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("engine socket");
        let engine = tokio::spawn(async move {
            let _ = axum::serve(listener, fake_engine()).await;
        });
        let proxy = EngineProxy::connect(socket)
            .await
            .expect("fake engine answers /_ping");
        let agent = Arc::new(StandInAgent::default());
        let daemon = Arc::new(Daemon {
            lock: Default::default(),
            engine: proxy,
            data_dir: dir.path().join("data"),
            agent: agent.clone(),
            manager: Default::default(),
            node: Default::default(),
            hostname: None,
            lifecycle: Default::default(),
            peer_port: None,
        });
        Node {
            daemon,
            agent,
            engine,
            _dir: dir,
        }
    }

    /// A node that has initialised a single-manager swarm through the API (raft bootstraps a
    /// single voter). Port 0 in the advertised address gives the RPC listener a free port, so
    /// tests run in parallel (`Manager::start` listens on every interface at that port; nothing
    /// connects to it). The node's own session then has no manager to reach, so the node stays
    /// `ready` for three heartbeat periods (15 s), far longer than any test here.
    pub async fn manager() -> Node {
        let n = Node::new().await;
        n.post(
            "/swarm/init",
            json!({"ListenAddr": "127.0.0.1:0", "AdvertiseAddr": "127.0.0.1:0"}),
        )
        .await
        .ok(200);
        n
    }

    /// Stops answering as the engine (its socket stays, nobody accepts).
    pub fn stop_engine(&self) {
        self.engine.abort();
    }

    /// Where the node keeps its swarm state.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.daemon.data_dir.clone()
    }

    /// Sends one request with a raw body.
    pub async fn call(&self, method: Method, uri: &str, body: Body) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(body)
            .expect("request");
        let resp: Response = api::app(self.daemon.clone())
            .oneshot(req)
            .await
            .unwrap_or_else(|e: Infallible| match e {});
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Answer {
            status,
            headers,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        }
    }

    /// `GET uri`.
    pub async fn get(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, Body::empty()).await
    }

    /// `POST uri` with a JSON body.
    pub async fn post(&self, uri: &str, body: Value) -> Answer {
        self.call(Method::POST, uri, Body::from(body.to_string()))
            .await
    }

    /// `POST uri` with a raw body.
    pub async fn post_raw(&self, uri: &str, body: impl Into<Body>) -> Answer {
        self.call(Method::POST, uri, body.into()).await
    }

    /// `DELETE uri`.
    pub async fn delete(&self, uri: &str) -> Answer {
        self.call(Method::DELETE, uri, Body::empty()).await
    }

    /// `GET uri`, expecting 200, returning the JSON.
    pub async fn read(&self, uri: &str) -> Value {
        self.get(uri).await.ok(200).clone()
    }

    /// Waits until `check` holds on `GET uri`'s JSON (the control loop works in the
    /// background); panics with the last answer after 10 s.
    pub async fn wait_for(&self, uri: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.read(uri).await;
            if check(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "gave up waiting on {uri}: {v}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Creates a service from a spec, returning its ID.
    pub async fn service(&self, spec: Value) -> String {
        let a = self.post("/services/create", spec).await;
        a.ok(201)["ID"].as_str().expect("ID").to_string()
    }
}

/// The smallest spec the CLI sends for `docker service create --name NAME IMAGE`.
pub fn spec(name: &str) -> Value {
    json!({
        "Name": name,
        "TaskTemplate": {"ContainerSpec": {"Image": "shoal-test/web:latest"}},
        "Mode": {"Replicated": {"Replicas": 1}}
    })
}

/// Percent-encodes a query value (filters are JSON).
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// base64 of `s`, as secret and config data travel.
pub fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}
