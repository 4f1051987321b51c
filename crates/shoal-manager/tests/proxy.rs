//! The engine proxy, tested two ways:
//! - against a fake engine (an axum app on a unix socket), to pin down version rewriting,
//!   streaming in both directions, hijack with half-close and the error format, without Docker;
//! - with the real `docker` CLI through the proxy to this machine's Docker Engine, in both the
//!   mode the tests of other crates use (the engine's own `/_ping`) and the mode shoal runs in
//!   (shoal answers `/_ping` with API 1.50, so every path arrives as `/v1.50/...`).
//!
//! The Docker tests need the engine at /var/run/docker.sock, the docker CLI and the test images
//! (built once by scripts/build-test-images.sh). Containers are named
//! `shoal-proxytest-<pid>-<test>-...`; each test removes its own at start and end, and leftovers
//! of dead test processes are removed once per process.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::{any, get, post};
use axum::Router;
use futures::StreamExt;
use http::{header, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper_util::rt::TokioIo;
use shoal_manager::proxy::EngineProxy;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const ENGINE_SOCKET: &str = "/var/run/docker.sock";
const BUSYBOX: &str = "shoal-test/busybox";
const CLI_TIMEOUT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A scratch directory removed on drop (no tempfile dependency for one directory).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("shoal-proxytest-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serves `router` on a fresh unix socket until dropped.
struct Served {
    socket: PathBuf,
    task: JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn serve(tag: &str, router: Router) -> Served {
    let dir = TempDir::new(tag);
    let socket = dir.0.join("api.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Served {
        socket,
        task,
        _dir: dir,
    }
}

/// Which `/_ping` the docker CLI negotiates against.
#[derive(Clone, Copy, Debug)]
enum Ping {
    /// Forwarded to the engine: the CLI talks 1.41 and nothing is rewritten.
    Engine,
    /// Answered like shoal does (API 1.50): the CLI sends `/v1.50/...` and the proxy rewrites.
    Shoal,
}

async fn shoal_ping() -> Response {
    Response::builder()
        .header("Api-Version", "1.50")
        .header("Ostype", "linux")
        .header(header::CACHE_CONTROL, "no-cache, no-store, must-revalidate")
        .body(Body::from("OK"))
        .unwrap()
}

async fn proxy_router(engine_socket: &Path, ping: Ping) -> Router {
    let proxy = EngineProxy::connect(engine_socket.to_owned())
        .await
        .expect("the engine answers /_ping");
    let fallback = move |req: Request| {
        let proxy = proxy.clone();
        async move { proxy.forward(req).await }
    };
    let router = Router::new();
    let router = match ping {
        Ping::Engine => router,
        Ping::Shoal => router
            .route("/_ping", get(shoal_ping).head(shoal_ping))
            .route("/{version}/_ping", get(shoal_ping).head(shoal_ping)),
    };
    router.fallback(fallback)
}

/// Once per process: the test images exist and containers of dead test processes are gone.
fn docker_prerequisites() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-test-images.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .status()
            .expect("run build-test-images.sh");
        assert!(status.success(), "{} failed", script.display());

        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                "name=shoal-proxytest-",
                "--format",
                "{{.Names}}",
            ])
            .env("DOCKER_HOST", format!("unix://{ENGINE_SOCKET}"))
            .output()
            .expect("docker ps");
        let stale: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|name| {
                let pid = name
                    .strip_prefix("shoal-proxytest-")
                    .and_then(|rest| rest.split('-').next())
                    .and_then(|pid| pid.parse::<u32>().ok());
                matches!(pid, Some(pid) if !Path::new(&format!("/proc/{pid}")).exists())
            })
            .map(str::to_owned)
            .collect();
        if !stale.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&stale)
                .env("DOCKER_HOST", format!("unix://{ENGINE_SOCKET}"))
                .output();
        }
    });
}

/// Names this test's containers and removes them (straight at the engine) at start and on drop,
/// so a failing assertion leaves nothing behind.
struct Containers {
    prefix: String,
}

impl Containers {
    fn new(test: &str) -> Containers {
        docker_prerequisites();
        let c = Containers {
            prefix: format!("shoal-proxytest-{}-{test}-", std::process::id()),
        };
        c.remove_all();
        c
    }

    fn name(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    fn remove_all(&self) {
        let engine = format!("unix://{ENGINE_SOCKET}");
        let Ok(out) = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("name={}", self.prefix)])
            .env("DOCKER_HOST", &engine)
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .env("DOCKER_HOST", &engine)
                .output();
        }
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        self.remove_all();
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn docker_cmd(socket: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args(args)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env_remove("DOCKER_API_VERSION")
        .env_remove("DOCKER_CONTEXT")
        .kill_on_drop(true);
    cmd
}

/// Runs the docker CLI against `socket`, feeding `stdin` (then EOF), with a timeout.
async fn docker(socket: &Path, args: &[&str], stdin: Option<&[u8]>) -> Out {
    let mut cmd = docker_cmd(socket, args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn docker");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).await.unwrap();
        drop(pipe);
    }
    let out = timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("docker {args:?} did not finish within {CLI_TIMEOUT:?}"))
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Like `docker` but asserts exit code 0 and returns stdout.
async fn docker_ok(socket: &Path, args: &[&str]) -> String {
    let out = docker(socket, args, None).await;
    assert_eq!(
        out.code, 0,
        "docker {args:?} failed\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out.stdout
}

async fn start_sleeper(socket: &Path, name: &str) {
    docker_ok(
        socket,
        &[
            "run", "-d", "--pull", "never", "--name", name, BUSYBOX, "sleep", "300",
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Fake engine: exact behaviour without Docker
// ---------------------------------------------------------------------------------------------

async fn fake_ping() -> Response {
    Response::builder()
        .header("Api-Version", "1.41")
        .body(Body::from("OK"))
        .unwrap()
}

/// Echoes what the engine saw: method, path and query, and the hop-by-hop header it got.
async fn fake_echo(req: Request) -> Response {
    let seen = format!(
        "{} {} te={:?}",
        req.method(),
        req.uri(),
        req.headers()
            .get("x-hop")
            .map(|v| v.to_str().unwrap().to_owned())
    );
    Response::builder()
        .status(StatusCode::IM_A_TEAPOT)
        .header("x-engine", "fake")
        .body(Body::from(seen))
        .unwrap()
}

/// Sends one line, then the rest only once the test saw the first line through the proxy.
async fn fake_stream(axum::extract::State(state): axum::extract::State<FakeState>) -> Response {
    let rx = state.release.lock().await.take().unwrap();
    let body = futures::stream::once(async { Ok::<_, Infallible>(Bytes::from("first\n")) }).chain(
        futures::stream::once(async move {
            let _ = rx.await;
            Ok(Bytes::from("second\n"))
        }),
    );
    Response::new(Body::from_stream(body))
}

/// Reads the request body frame by frame, reporting the first frame before the body ends.
async fn fake_upload(
    axum::extract::State(state): axum::extract::State<FakeState>,
    req: Request,
) -> Response {
    let first_seen = state.first_frame.lock().await.take().unwrap();
    let mut body = req.into_body();
    let mut total = Vec::new();
    let mut first_seen = Some(first_seen);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            total.extend_from_slice(&data);
            if let Some(tx) = first_seen.take() {
                let _ = tx.send(());
            }
        }
    }
    Response::new(Body::from(total))
}

/// Hijacks like `attach`: answers 101, reads until the client half-closes, then echoes it all
/// back in upper case and closes. Only a forwarded half-close lets this finish.
async fn fake_hijack(mut req: Request) -> Response {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = on_upgrade.await.unwrap();
        let mut io = TokioIo::new(upgraded);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        io.write_all(&got.to_ascii_uppercase()).await.unwrap();
        io.shutdown().await.unwrap();
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONTENT_TYPE, "application/vnd.docker.raw-stream")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .body(Body::empty())
        .unwrap()
}

/// Hijacks like `attach` to a container that never writes: answers 101, reads until the client
/// stops sending, then holds its end open without a word, as the engine does for a silent
/// container.
async fn fake_silent_hijack(mut req: Request) -> Response {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = on_upgrade.await.unwrap();
        let mut io = TokioIo::new(upgraded);
        let mut got = Vec::new();
        let _ = io.read_to_end(&mut got).await;
        std::future::pending::<()>().await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .body(Body::empty())
        .unwrap()
}

/// Streams a chunk every 20 ms forever; reports on `dropped` when the engine side lets go of it,
/// which only happens when the proxy closes the engine connection.
async fn fake_endless(axum::extract::State(state): axum::extract::State<FakeState>) -> Response {
    struct Guard(Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }
    let guard = Guard(state.dropped.lock().await.take());
    let body = futures::stream::unfold(guard, |guard| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((Ok::<_, Infallible>(Bytes::from("tick\n")), guard))
    });
    Response::new(Body::from_stream(body))
}

#[derive(Clone)]
struct FakeState {
    release: std::sync::Arc<tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>>,
    first_frame: std::sync::Arc<tokio::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>>,
    dropped: std::sync::Arc<tokio::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>>,
}

struct Fake {
    engine: Served,
    proxy: Served,
    release: Option<tokio::sync::oneshot::Sender<()>>,
    first_frame: Option<tokio::sync::oneshot::Receiver<()>>,
    dropped: Option<tokio::sync::oneshot::Receiver<()>>,
}

async fn fake_setup(tag: &str) -> Fake {
    let (release_tx, release_rx) = tokio::sync::oneshot::channel();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel();
    let state = FakeState {
        release: std::sync::Arc::new(tokio::sync::Mutex::new(Some(release_rx))),
        first_frame: std::sync::Arc::new(tokio::sync::Mutex::new(Some(first_tx))),
        dropped: std::sync::Arc::new(tokio::sync::Mutex::new(Some(dropped_tx))),
    };
    let engine = serve(
        &format!("{tag}-engine"),
        Router::new()
            .route("/_ping", get(fake_ping))
            .route("/v1.41/stream", get(fake_stream))
            .route("/v1.41/upload", post(fake_upload))
            .route("/v1.41/endless", get(fake_endless))
            .route("/v1.41/hijack", any(fake_hijack))
            .route("/v1.41/silent", any(fake_silent_hijack))
            .fallback(fake_echo)
            .with_state(state),
    );
    let proxy = serve(
        &format!("{tag}-proxy"),
        proxy_router(&engine.socket, Ping::Engine).await,
    );
    Fake {
        engine,
        proxy,
        release: Some(release_tx),
        first_frame: Some(first_rx),
        dropped: Some(dropped_rx),
    }
}

/// A raw HTTP/1 connection to `socket`, with upgrades enabled.
async fn client<B>(socket: &Path) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = UnixStream::connect(socket).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
}

fn get_req(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(path)
        .header(header::HOST, "docker")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn connect_learns_the_engine_version() {
    let fake = fake_setup("version").await;
    let proxy = EngineProxy::connect(fake.engine.socket.clone())
        .await
        .unwrap();
    assert_eq!(proxy.engine_api_version(), "1.41");
}

#[tokio::test]
async fn connect_fails_without_an_engine() {
    let dir = TempDir::new("noengine");
    let err = EngineProxy::connect(dir.0.join("missing.sock"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing.sock"), "{err}");
}

#[tokio::test]
async fn rewrites_newer_prefixes_and_keeps_status_headers_query() {
    let fake = fake_setup("rewrite").await;
    let cases = [
        (
            "/v1.50/containers/json?all=1",
            "GET /v1.41/containers/json?all=1",
        ),
        ("/v1.30/containers/json", "GET /v1.30/containers/json"),
        ("/containers/json", "GET /containers/json"),
    ];
    for (path, seen) in cases {
        let mut c = client(&fake.proxy.socket).await;
        let mut req = get_req(path);
        // A hop-by-hop header named in Connection must not reach the engine.
        req.headers_mut()
            .insert(header::CONNECTION, "x-hop".parse().unwrap());
        req.headers_mut().insert("x-hop", "1".parse().unwrap());
        let resp = c.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(resp.headers()["x-engine"], "fake");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("{seen} te=None").as_bytes());
    }
}

#[tokio::test]
async fn streams_response_bodies() {
    let mut fake = fake_setup("stream").await;
    let mut c = client(&fake.proxy.socket).await;
    let resp = c.send_request(get_req("/v1.50/stream")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // The engine sends "second" only after we saw "first": a buffering proxy would hang here.
    let first = timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("first chunk arrives before the body ends")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first\n");
    fake.release.take().unwrap().send(()).unwrap();
    let rest = timeout(Duration::from_secs(10), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "second\n");
}

#[tokio::test]
async fn client_going_away_closes_the_engine_stream() {
    // `docker stats` or `logs -f` ended with Ctrl-C must not leave the engine streaming.
    let mut fake = fake_setup("goaway").await;
    let mut c = client(&fake.proxy.socket).await;
    let resp = c.send_request(get_req("/v1.50/endless")).await.unwrap();
    let mut body = resp.into_body();
    let tick = body.frame().await.unwrap().unwrap();
    assert_eq!(tick.into_data().unwrap(), "tick\n");
    drop(body);
    drop(c);
    timeout(Duration::from_secs(10), fake.dropped.take().unwrap())
        .await
        .expect("the engine-side stream is dropped after the client left")
        .unwrap();
}

#[tokio::test]
async fn streams_request_bodies() {
    let mut fake = fake_setup("upload").await;
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
    let mut c = client(&fake.proxy.socket).await;
    let req = http::Request::post("/v1.50/upload")
        .header(header::HOST, "docker")
        .body(StreamBody::new(rx))
        .unwrap();
    tx.unbounded_send(Ok(Frame::data(Bytes::from("part1,"))))
        .unwrap();
    let first_frame = fake.first_frame.take().unwrap();
    let resp = tokio::spawn(async move { c.send_request(req).await });
    // The engine must see part 1 while the client still holds part 2 back.
    timeout(Duration::from_secs(10), first_frame)
        .await
        .expect("the engine gets the first frame before the request body ends")
        .unwrap();
    tx.unbounded_send(Ok(Frame::data(Bytes::from("part2"))))
        .unwrap();
    drop(tx);
    let resp = timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "part1,part2");
}

#[tokio::test]
async fn hijack_forwards_half_close_both_ways() {
    let fake = fake_setup("hijack").await;
    let mut c = client(&fake.proxy.socket).await;
    let req = http::Request::post("/v1.50/hijack?stream=1")
        .header(header::HOST, "docker")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()[header::UPGRADE], "tcp");
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "application/vnd.docker.raw-stream"
    );
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    io.write_all(b"hello through the proxy").await.unwrap();
    io.shutdown().await.unwrap();
    let mut back = Vec::new();
    timeout(Duration::from_secs(10), io.read_to_end(&mut back))
        .await
        .expect("the engine saw our half-close and answered")
        .unwrap();
    assert_eq!(back, b"HELLO THROUGH THE PROXY");
}

/// Issue 17: an `attach` whose client goes away ends, with its engine connection, even when the
/// container never writes again (before, it stayed open for the container's whole life).
#[tokio::test]
async fn hijack_ends_when_the_client_goes_away_from_a_silent_container() {
    let fake = fake_setup("silent").await;
    let proxy = EngineProxy::connect(fake.engine.socket.clone())
        .await
        .unwrap();
    let p = proxy.clone();
    let served = serve(
        "silent-own",
        Router::new().fallback(move |req: Request| {
            let p = p.clone();
            async move { p.forward(req).await }
        }),
    );
    let open_now = |want: usize| {
        let proxy = proxy.clone();
        async move {
            // A condition, polled: the count changes inside the proxy's own task.
            timeout(Duration::from_secs(10), async {
                while proxy.open_hijacks() != want {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .is_ok()
        }
    };
    let mut c = client(&served.socket).await;
    let req = http::Request::post("/v1.41/silent?stream=1&stdin=1")
        .header(header::HOST, "docker")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    io.write_all(b"typed something").await.unwrap();
    assert!(open_now(1).await, "the hijacked stream is open");
    // The client goes away entirely (the CLI killed), and the container says nothing.
    drop(io);
    drop(c);
    assert!(
        open_now(0).await,
        "the hijacked stream is still open 10 s after its client left"
    );
}

#[tokio::test]
async fn engine_gone_gives_docker_style_503() {
    let fake = fake_setup("gone").await;
    let proxy_socket = fake.proxy.socket.clone();
    std::fs::remove_file(&fake.engine.socket).unwrap();
    drop(fake.engine);
    let mut c = client(&proxy_socket).await;
    let resp = c
        .send_request(get_req("/v1.50/containers/json"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let message = json["message"].as_str().unwrap();
    assert!(
        message.contains("cannot connect to the Docker Engine"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------
// Real docker CLI through the proxy to the real engine
// ---------------------------------------------------------------------------------------------

async fn real_proxy(tag: &str, ping: Ping) -> Served {
    docker_prerequisites();
    serve(tag, proxy_router(Path::new(ENGINE_SOCKET), ping).await)
}

async fn version_ps_images_inspect(ping: Ping) {
    let c = Containers::new(&format!("info{ping:?}").to_lowercase());
    let proxy = real_proxy("info", ping).await;
    let s = &proxy.socket;

    let version = docker_ok(s, &["version"]).await;
    assert!(version.contains("Server:"), "{version}");
    assert!(version.contains("1.41"), "{version}");
    // The CLI's negotiated version: in shoal mode every path it sends starts with /v1.50.
    let negotiated = docker_ok(s, &["version", "--format", "{{.Client.APIVersion}}"]).await;
    let want = match ping {
        Ping::Engine => "1.41",
        Ping::Shoal => "1.50",
    };
    assert_eq!(negotiated.trim(), want);

    let name = c.name("sleeper");
    start_sleeper(s, &name).await;

    let ps = docker_ok(s, &["ps", "-a", "--format", "{{.Names}} {{.State}}"]).await;
    assert!(ps.contains(&format!("{name} running")), "{ps}");

    let images = docker_ok(s, &["images", "--format", "{{.Repository}}:{{.Tag}}"]).await;
    assert!(images.contains("shoal-test/busybox:latest"), "{images}");

    let inspect = docker_ok(s, &["inspect", &name]).await;
    let json: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(json[0]["Name"], format!("/{name}"));
    assert_eq!(json[0]["State"]["Running"], true);

    let missing = docker(s, &["inspect", &c.name("does-not-exist")], None).await;
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("No such object"),
        "{}",
        missing.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_version_ps_images_inspect() {
    version_ps_images_inspect(Ping::Engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_version_ps_images_inspect_at_1_50() {
    version_ps_images_inspect(Ping::Shoal).await;
}

async fn run_attached(ping: Ping) {
    let c = Containers::new(&format!("run{ping:?}").to_lowercase());
    let proxy = real_proxy("run", ping).await;
    let s = &proxy.socket;

    let name = c.name("echo");
    let out = docker_ok(
        s,
        &[
            "run", "--rm", "--pull", "never", "--name", &name, BUSYBOX, "echo", "hello",
        ],
    )
    .await;
    assert_eq!(out, "hello\n");

    let name = c.name("cat");
    let out = docker(
        s,
        &[
            "run", "--rm", "-i", "--pull", "never", "--name", &name, BUSYBOX, "cat",
        ],
        Some(b"piped in\n"),
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "piped in\n");

    let name = c.name("exit");
    let out = docker(
        s,
        &[
            "run",
            "--rm",
            "--pull",
            "never",
            "--name",
            &name,
            BUSYBOX,
            "sh",
            "-c",
            "echo err >&2; exit 5",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 5);
    assert_eq!(out.stderr, "err\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_attached() {
    run_attached(Ping::Engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_attached_at_1_50() {
    run_attached(Ping::Shoal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_logs_follow_streams() {
    let c = Containers::new("logs");
    let proxy = real_proxy("logs", Ping::Shoal).await;
    let s = &proxy.socket;
    let name = c.name("ticker");
    docker_ok(
        s,
        &[
            "run",
            "-d",
            "--pull",
            "never",
            "--name",
            &name,
            BUSYBOX,
            "sh",
            "-c",
            "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.2; done",
        ],
    )
    .await;

    let mut child = docker_cmd(s, &["logs", "-f", &name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The container never exits, so every line seen here arrived while the stream was open.
    let seen = timeout(Duration::from_secs(30), async {
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line);
            if seen.len() == 8 {
                break;
            }
        }
        seen
    })
    .await
    .expect("docker logs -f streams lines");
    let _ = child.kill().await;
    let want: Vec<String> = (0..8).map(|i| format!("line{i}")).collect();
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exec_stdin_tty_and_exit_codes() {
    let c = Containers::new("exec");
    let proxy = real_proxy("exec", Ping::Shoal).await;
    let s = &proxy.socket;
    let name = c.name("box");
    start_sleeper(s, &name).await;

    let out = docker(s, &["exec", "-i", &name, "cat"], Some(b"hi\n")).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "hi\n");

    let out = docker(s, &["exec", &name, "sh", "-c", "exit 3"], None).await;
    assert_eq!(out.code, 3, "{}", out.stderr);

    // -t without -i: the raw (not multiplexed) TTY stream, CR LF line endings.
    let out = docker(s, &["exec", "-t", &name, "echo", "tty"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "tty\r\n");

    // Large output through the hijacked stream, stdout and stderr kept apart.
    let out = docker(
        s,
        &["exec", &name, "sh", "-c", "seq 1 20000; echo done >&2"],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 20000);
    assert_eq!(out.stdout.lines().last(), Some("20000"));
    assert_eq!(out.stderr, "done\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_attach_and_wait() {
    let c = Containers::new("attach");
    let proxy = real_proxy("attach", Ping::Shoal).await;
    let s = &proxy.socket;
    let name = c.name("reader");
    docker_ok(
        s,
        &[
            "run",
            "-d",
            "-i",
            "--pull",
            "never",
            "--name",
            &name,
            BUSYBOX,
            "sh",
            "-c",
            "read line; echo got:$line; exit 7",
        ],
    )
    .await;

    // Stdin stays open until the answer is out: when an attach's stdin ends, the engine closes
    // the attached stdout too (container/stream/attach.go), so later output would be lost.
    let mut child = docker_cmd(s, &["attach", &name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = timeout(CLI_TIMEOUT, lines.next_line())
        .await
        .expect("attach relays the container's answer")
        .unwrap();
    assert_eq!(line.as_deref(), Some("got:hello"));
    drop(stdin);
    let status = timeout(CLI_TIMEOUT, child.wait()).await.unwrap().unwrap();
    assert_eq!(
        status.code(),
        Some(7),
        "attach returns the container's exit code"
    );

    // Attach without stdin to a container that speaks later: output streams, then the exit code.
    let name = c.name("talker");
    docker_ok(
        s,
        &[
            "run",
            "-d",
            "--pull",
            "never",
            "--name",
            &name,
            BUSYBOX,
            "sh",
            "-c",
            "sleep 2; echo attached-out; exit 7",
        ],
    )
    .await;
    let out = docker(s, &["attach", "--no-stdin", &name], None).await;
    assert_eq!(out.stdout, "attached-out\n", "{}", out.stderr);
    assert_eq!(out.code, 7, "{}", out.stderr);

    let out = docker_ok(s, &["wait", &name]).await;
    assert_eq!(out.trim(), "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_cp_save_load_stream_bodies() {
    let c = Containers::new("cp");
    let proxy = real_proxy("cp", Ping::Shoal).await;
    let s = &proxy.socket;
    let name = c.name("box");
    start_sleeper(s, &name).await;

    let dir = TempDir::new("cp");
    let file = dir.0.join("payload.txt");
    let payload: String = (0..50_000).map(|i| format!("{i}\n")).collect();
    std::fs::write(&file, &payload).unwrap();
    docker_ok(s, &["cp", file.to_str().unwrap(), &format!("{name}:/tmp/")]).await;
    let out = docker_ok(s, &["exec", &name, "md5sum", "/tmp/payload.txt"]).await;
    let local = std::process::Command::new("md5sum")
        .arg(&file)
        .output()
        .unwrap();
    let local = String::from_utf8_lossy(&local.stdout);
    assert_eq!(
        out.split_whitespace().next(),
        local.split_whitespace().next()
    );

    let back = dir.0.join("back");
    std::fs::create_dir(&back).unwrap();
    docker_ok(
        s,
        &[
            "cp",
            &format!("{name}:/tmp/payload.txt"),
            back.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(back.join("payload.txt")).unwrap(),
        payload
    );

    // Response streaming (save) piped into request streaming (load), both through the proxy.
    let out = Command::new("sh")
        .args(["-c", &format!("docker save {BUSYBOX} | docker load")])
        .env("DOCKER_HOST", format!("unix://{}", s.display()))
        .env_remove("DOCKER_API_VERSION")
        .kill_on_drop(true)
        .output();
    let out = timeout(CLI_TIMEOUT, out).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Loaded image: shoal-test/busybox:latest"),
        "{stdout}"
    );
}
