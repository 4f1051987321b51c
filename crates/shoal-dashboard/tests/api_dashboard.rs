//! The dashboard's HTTP surface in process (issue 21): a real manager (store in a temp dir,
//! swarm initialised through the API) behind `shoal_dashboard::router`, driven with `oneshot`.
//! No browser, root or Docker Engine (a small fake answers the engine's `/_ping`, `/version`
//! and `/info`); the browser test (`crates/shoal/tests/dashboard.rs`) covers the page.

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use http::{header, Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use shoal_api::dispatch::{NodeAssignments, TaskStatusReport};
use shoal_dashboard::Dashboard;
use shoal_manager::api::{self, Daemon};
use shoal_manager::node::{AgentError, AgentHost, FloatingLink, LogLink, PeerLink};
use shoal_manager::proxy::EngineProxy;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

struct NoAgent;

impl AgentHost for NoAgent {
    fn start(
        &self,
        _: String,
        _: watch::Receiver<NodeAssignments>,
        _: mpsc::Sender<Vec<TaskStatusReport>>,
        _: LogLink,
        _: FloatingLink,
        _: PeerLink,
    ) -> BoxFuture<'_, Result<(), AgentError>> {
        Box::pin(async { Ok(()) })
    }

    fn stop(&self, _remove: bool) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn fake_engine() -> Router {
    Router::new()
        .route(
            "/_ping",
            get(|| async { ([("api-version", "1.47")], "OK") }),
        )
        .route(
            "/v1.47/version",
            get(|| async {
                axum::Json(
                    json!({"Version": "27.5.1", "ApiVersion": "1.47", "MinAPIVersion": "1.24",
                    "Os": "linux", "Arch": "amd64"}),
                )
            }),
        )
        .route(
            "/v1.47/info",
            get(|| async {
                axum::Json(
                    json!({"Name": "dash-test", "NCPU": 2, "MemTotal": 4_000_000_000i64,
                    "ServerVersion": "27.5.1", "Architecture": "x86_64",
                    "Swarm": {"LocalNodeState": "inactive"}}),
                )
            }),
        )
}

struct Site {
    daemon: api::AppState,
    app: Router,
    _engine: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// An answer: status, headers, body text.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    text: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn cookie(&self) -> Option<String> {
        let v = self.headers.get(header::SET_COOKIE)?.to_str().ok()?;
        let (pair, _) = v.split_once(';')?;
        Some(pair.to_string())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

impl Site {
    /// A single-manager swarm with its dashboard; `password` set when given.
    async fn new(password: Option<&str>) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let engine = tokio::spawn(async move {
            let _ = axum::serve(listener, fake_engine()).await;
        });
        let daemon = Arc::new(Daemon {
            lock: Default::default(),
            engine: EngineProxy::connect(socket).await.unwrap(),
            data_dir: dir.path().join("data"),
            agent: Arc::new(NoAgent),
            manager: Default::default(),
            node: Default::default(),
            hostname: None,
            lifecycle: Default::default(),
            peer_port: None,
        });
        let init = Request::builder()
            .method(Method::POST)
            .uri("/swarm/init")
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"ListenAddr": "127.0.0.1:0", "AdvertiseAddr": "127.0.0.1:0"}).to_string(),
            ))
            .unwrap();
        let r = api::app(daemon.clone()).oneshot(init).await.unwrap();
        assert_eq!(r.status(), 200);
        if let Some(p) = password {
            let m = daemon.manager().await.unwrap();
            shoal_manager::admin::set_password(&m.store, p.to_string())
                .await
                .unwrap();
        }
        let app = shoal_dashboard::router(Dashboard::new(daemon.clone(), false));
        Site {
            daemon,
            app,
            _engine: engine,
            _dir: dir,
        }
    }

    async fn send(&self, req: Request) -> Answer {
        let mut req = req;
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([10, 1, 2, 3], 5555))));
        let r: Response = self.app.clone().oneshot(req).await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, uri: &str, cookie: Option<&str>) -> Answer {
        let mut b = Request::builder().uri(uri);
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }

    async fn login(&self, password: &str) -> Answer {
        let form = format!(
            "password={}",
            percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC)
        );
        self.send(
            Request::builder()
                .method(Method::POST)
                .uri("/login")
                .header(header::HOST, "127.0.0.1:9000")
                .header(header::ORIGIN, "http://127.0.0.1:9000")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form))
                .unwrap(),
        )
        .await
    }

    async fn post(&self, uri: &str, cookie: &str, csrf: Option<&str>, body: Value) -> Answer {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = csrf {
            b = b.header("x-csrf-token", t);
        }
        self.send(b.body(Body::from(body.to_string())).unwrap())
            .await
    }
}

#[tokio::test]
async fn login_sessions_csrf_and_the_allowlist() {
    let site = Site::new(Some("correct horse")).await;

    // No session: pages go to the login, the page's calls get 401 in Docker's format.
    let a = site.get("/", None).await;
    assert_eq!((a.status, a.location()), (StatusCode::SEE_OTHER, "/login"));
    assert!(a.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let a = site.get("/api/docker/services", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.json()["message"].as_str().unwrap().contains("log in"));
    assert_eq!(site.get("/login", None).await.status, StatusCode::OK);
    assert_eq!(
        site.get("/assets/app.js", None).await.status,
        StatusCode::OK
    );

    // A wrong password, then the right one: a session cookie, HttpOnly and SameSite.
    let a = site.login("wrong horse").await;
    assert_eq!(a.location(), "/login?failed=1");
    assert!(a.cookie().is_none());
    let a = site.login("correct horse").await;
    assert_eq!((a.status, a.location()), (StatusCode::SEE_OTHER, "/"));
    let set = a.headers[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = a.cookie().unwrap();
    assert_eq!(site.get("/", Some(&cookie)).await.status, StatusCode::OK);
    let session = site.get("/api/session", Some(&cookie)).await.json();
    let csrf = session["csrf"].as_str().unwrap().to_string();
    assert_eq!(session["user"], "admin");

    // Reads pass through to the API; so do its refusals, in its words.
    let services = site.get("/api/docker/services", Some(&cookie)).await;
    assert_eq!(
        (services.status, services.text.as_str()),
        (StatusCode::OK, "[]")
    );
    let missing = site.get("/api/docker/services/nope", Some(&cookie)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json()["message"].as_str().unwrap().contains("nope"));

    // Actions need the CSRF token; with it they run, checked as the API checks them.
    let spec = json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "web:1"}}});
    let a = site
        .post("/api/docker/services/create", &cookie, None, spec.clone())
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = site
        .post(
            "/api/docker/services/create",
            &cookie,
            Some("forged"),
            spec.clone(),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(site
        .get("/api/docker/services", Some(&cookie))
        .await
        .text
        .starts_with("[]"));
    let a = site
        .post("/api/docker/services/create", &cookie, Some(&csrf), spec)
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let bad = json!({"Name": "bad name!", "TaskTemplate": {"ContainerSpec": {"Image": "web:1"}}});
    let a = site
        .post("/api/docker/services/create", &cookie, Some(&csrf), bad)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);

    // Nothing outside the page's actions, token or not.
    for path in [
        "/api/docker/containers/create",
        "/api/docker/swarm/leave",
        "/api/docker/secrets/create",
        "/api/docker/shoal/v1/dashboard/password",
    ] {
        let a = site.post(path, &cookie, Some(&csrf), json!({})).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: {}", a.text);
    }
    let a = site.get("/api/docker/swarm", Some(&cookie)).await;
    assert_eq!(
        a.status,
        StatusCode::FORBIDDEN,
        "join tokens stay out of reach"
    );

    // Deploy a stack from a compose file: created as `docker stack deploy` names it.
    let a = site
        .post(
            "/api/stacks",
            &cookie,
            Some(&csrf),
            json!({"name": "demo", "compose": "services:\n  api:\n    image: api:1\n    build: .\n"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["created"], json!(["demo_api"]));
    assert!(a.json()["warnings"].to_string().contains("build"));
    let m = site.daemon.manager().await.unwrap();
    let svc = shoal_manager::db::lookup::<shoal_api::objects::StoredService>(&m.store, "demo_api")
        .expect("demo_api exists");
    let labels = svc.obj.spec().labels.clone().unwrap_or_default();
    assert_eq!(labels["com.docker.stack.namespace"], "demo");
    // Again: updated in place, not duplicated.
    let a = site
        .post(
            "/api/stacks",
            &cookie,
            Some(&csrf),
            json!({"name": "demo", "compose": "services:\n  api:\n    image: api:2\n"}),
        )
        .await;
    assert_eq!(a.json()["updated"], json!(["demo_api"]), "{}", a.text);
    let a = site
        .post(
            "/api/stacks",
            &cookie,
            Some(&csrf),
            json!({"name": "demo", "compose": "services:\n  api:\n    ports: ['80:x']\n    image: a\n"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.json()["message"]
            .as_str()
            .unwrap()
            .contains("services.api"),
        "{}",
        a.text
    );

    // Logout ends the session (with the token), and the cookie no longer opens anything.
    let a = site.post("/logout", &cookie, Some(&csrf), json!({})).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(
        site.get("/", Some(&cookie)).await.location(),
        "/login?expired=1"
    );
}

#[tokio::test]
async fn failed_logins_are_slowed_and_an_unset_password_says_so() {
    let unset = Site::new(None).await;
    assert_eq!(unset.login("anything").await.location(), "/login?unset=1");
    // A node that is no manager (here: it left the swarm) sends the user to a manager.
    let left = Request::builder()
        .method(Method::POST)
        .uri("/swarm/leave?force=1")
        .body(Body::empty())
        .unwrap();
    let r = api::app(unset.daemon.clone()).oneshot(left).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        unset.login("anything").await.location(),
        "/login?unavailable=1"
    );

    let site = Site::new(Some("correct horse")).await;
    for _ in 0..4 {
        assert_eq!(site.login("guess").await.location(), "/login?failed=1");
    }
    // The fourth failure imposed a wait: even the right password is not checked now.
    let a = site.login("correct horse").await;
    assert!(a.location().starts_with("/login?wait="), "{}", a.location());
    assert!(a.cookie().is_none());
    // From another site: refused before anything.
    let a = site
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/login")
                .header(header::HOST, "127.0.0.1:9000")
                .header(header::ORIGIN, "null")
                .body(Body::from("password=correct+horse"))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn random_requests_never_panic_or_fail_inside() {
    let site = Site::new(Some("correct horse")).await;
    let cookie = site.login("correct horse").await.cookie().unwrap();
    let csrf = site.get("/api/session", Some(&cookie)).await.json()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let seed: u64 = std::env::var("SHOAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (SHOAL_SEED to repeat)");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    use rand::Rng;
    let paths = [
        "/",
        "/login",
        "/logout",
        "/api/session",
        "/api/stacks",
        "/api/docker/services",
        "/api/docker/services/create",
        "/api/docker/nodes/x/update",
        "/api/docker/v1.50/tasks",
        "/api/docker/../../etc/passwd",
        "/api/docker/%2e%2e/x",
        "/assets/app.js",
        "/assets/../lib.rs",
        "/api/docker/services/web/update?version=abc",
    ];
    let bodies = [
        "",
        "{}",
        "password=",
        "{\"name\":\"x\",\"compose\":\"services: {a: {image: b}}\"}",
        "{\"name\": 1}",
        "\u{0}\u{1}",
        "[[[[[[[[[[",
        "{\"Name\":\"\",\"TaskTemplate\":null}",
    ];
    for i in 0..400 {
        let method = [Method::GET, Method::POST, Method::DELETE, Method::PUT]
            [rng.random_range(0..4)]
        .clone();
        let mut path = paths[rng.random_range(0..paths.len())].to_string();
        if rng.random_bool(0.3) {
            path.push_str(&format!("{}", rng.random::<u32>()));
        }
        let body = bodies[rng.random_range(0..bodies.len())];
        let mut b = Request::builder().method(method.clone()).uri(&path);
        if rng.random_bool(0.7) {
            b = b.header(header::COOKIE, &cookie);
        }
        if rng.random_bool(0.5) {
            b = b.header("x-csrf-token", &csrf);
        }
        let Ok(req) = b.body(Body::from(body)) else {
            continue;
        };
        let a = site.send(req).await;
        assert!(
            !a.status.is_server_error(),
            "request {i}: {method} {path} with {body:?} answered {}: {}",
            a.status,
            a.text
        );
    }
}
