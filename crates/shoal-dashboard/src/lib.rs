//! The web dashboard (issue 21): a login, a live view of the cluster (the visualizer: a column
//! per node, a card per task) and the actions a Swarm operator takes, served by every manager.
//!
//! - `auth`: sessions in this manager's memory, CSRF tokens, the slowdown of failed logins.
//! - `view`: the page's data, a pure function of the manager's decoded state.
//! - `stream`: `/api/stream`, the view as server-sent events on every change.
//! - `docker`: `/api/docker/...`, the Docker API in process (the same handlers, validation and
//!   errors as the socket), limited to what the page offers.
//! - The page itself (`assets/`) is embedded in the binary: no CDN, no internet.

#![warn(missing_docs)]

pub mod auth;
pub mod compose;
pub mod deploy;
pub mod docker;
pub mod serve;
pub mod stream;
pub mod view;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use parking_lot::Mutex;
use shoal_manager::api::AppState;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

/// The cookie that carries a session's token.
pub const COOKIE: &str = "shoal_session";
/// The header every state-changing request carries with its session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The largest login form read (a password is at most 1 KiB; the rest is slack).
const MAX_FORM_BYTES: usize = 16 << 10;
/// What the pages may load: only themselves (every asset is embedded), no inline script.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The embedded page: (path, content type, body).
pub const ASSETS: [(&str, &str, &str); 4] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../assets/index.html"),
    ),
    (
        "/login",
        "text/html; charset=utf-8",
        include_str!("../assets/login.html"),
    ),
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/app.js"),
    ),
    (
        "/assets/app.css",
        "text/css; charset=utf-8",
        include_str!("../assets/app.css"),
    ),
];

/// The page weight budget the README promises (every asset, uncompressed).
pub const PAGE_BUDGET_BYTES: usize = 60 << 10;

/// The dashboard of one daemon: its sessions, and the API it acts through.
pub struct Dashboard {
    daemon: AppState,
    api: BoxCloneSyncService<Request<Body>, Response, Infallible>,
    sessions: Mutex<auth::Sessions>,
    throttle: Mutex<auth::Throttle>,
    /// Served over TLS: cookies get `Secure`.
    secure: bool,
}

impl Dashboard {
    /// The dashboard for `daemon`; `secure` when it is served over HTTPS.
    pub fn new(daemon: AppState, secure: bool) -> Arc<Dashboard> {
        Arc::new(Dashboard {
            api: BoxCloneSyncService::new(shoal_manager::api::app(daemon.clone())),
            daemon,
            sessions: Mutex::default(),
            throttle: Mutex::default(),
            secure,
        })
    }

    /// Opens a session without a password: for a client already authenticated another way (a
    /// client certificate of the TCP API). Returns the cookie token.
    pub fn open_session(&self, user: &str) -> String {
        self.sessions.lock().open(user, Instant::now()).0
    }

    /// The API the dashboard acts through (in process).
    pub fn api(&self) -> &BoxCloneSyncService<Request<Body>, Response, Infallible> {
        &self.api
    }

    /// The daemon the dashboard serves.
    pub fn daemon(&self) -> &AppState {
        &self.daemon
    }

    /// Whether a session is still valid (without counting as use).
    pub fn session_alive(&self, token: &str) -> bool {
        self.sessions.lock().alive(token, Instant::now())
    }

    fn session(&self, headers: &HeaderMap) -> Result<(String, auth::Session), Refusal> {
        let Some(token) = cookie(headers, COOKIE) else {
            return Err(Refusal::NoSession { had_cookie: false });
        };
        match self.sessions.lock().touch(&token, Instant::now()) {
            Some(s) => Ok((token, s)),
            None => Err(Refusal::NoSession { had_cookie: true }),
        }
    }

    /// The session, and for anything but a read its CSRF token checked.
    fn authorized(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<(String, auth::Session), Refusal> {
        let (token, s) = self.session(headers)?;
        if !matches!(*method, Method::GET | Method::HEAD) {
            let sent = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !auth::same_secret(sent, &s.csrf) {
                return Err(Refusal::Csrf);
            }
        }
        Ok((token, s))
    }

    fn cookie_header(&self, token: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("shoal_session=; Max-Age=0"))
    }
}

/// Why a request is turned away.
#[derive(Debug)]
enum Refusal {
    NoSession { had_cookie: bool },
    Csrf,
}

impl Refusal {
    /// A page is sent to the login; the page's own calls get Docker's error format.
    fn answer(self, page: bool) -> Response {
        match (self, page) {
            (Refusal::NoSession { had_cookie }, true) => redirect(if had_cookie {
                "/login?expired=1"
            } else {
                "/login"
            }),
            (Refusal::NoSession { .. }, false) => error(
                StatusCode::UNAUTHORIZED,
                "not logged in, or the session expired: log in again",
            ),
            (Refusal::Csrf, _) => error(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token (X-CSRF-Token): reload the page",
            ),
        }
    }
}

/// The dashboard's routes.
pub fn router(dash: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/assets/{file}", get(asset))
        .route("/api/session", get(session_info))
        .route("/api/stream", get(stream))
        .route("/api/stacks", post(deploy_stack))
        .route("/api/docker/{*path}", any(docker_api))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "page not found") })
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(dash)
}

async fn security_headers(req: Request, next: axum::middleware::Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it Chrome posts the login form with `Origin: null`, which the
    // origin check rightly refuses.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if api
        || h.get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/html"))
    {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

fn asset_of(path: &str) -> Option<Response> {
    let (_, ty, body) = ASSETS.iter().find(|(p, _, _)| *p == path)?;
    Some(([(header::CONTENT_TYPE, *ty)], *body).into_response())
}

async fn index(State(dash): State<Arc<Dashboard>>, req: Request) -> Response {
    match dash.session(req.headers()) {
        Ok(_) => asset_of("/").unwrap_or_else(not_found),
        Err(r) => match certificate_login(&dash, &req) {
            Some(res) => res,
            None => r.answer(true),
        },
    }
}

async fn login_page(State(dash): State<Arc<Dashboard>>, req: Request) -> Response {
    if dash.session(req.headers()).is_ok() {
        return redirect("/");
    }
    if let Some(res) = certificate_login(&dash, &req) {
        return res;
    }
    asset_of("/login").unwrap_or_else(not_found)
}

/// A browser whose HTTPS connection presented an API client certificate of the cluster (checked
/// at the handshake, revocations included) is logged in as that certificate's name.
fn certificate_login(dash: &Dashboard, req: &Request) -> Option<Response> {
    let user = req.extensions().get::<serve::ClientCertUser>()?;
    let name = format!("cert:{}", user.0);
    let token = dash.open_session(&name);
    tracing::info!(client = %client_ip(req), user = %name, "dashboard login by client certificate");
    let mut res = redirect("/");
    res.headers_mut().insert(
        header::SET_COOKIE,
        dash.cookie_header(&token, auth::ABSOLUTE.as_secs()),
    );
    Some(res)
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    asset_of(&format!("/assets/{file}")).unwrap_or_else(not_found)
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "page not found")
}

/// `POST /login`: the form's `password` against the stored Argon2 hash.
async fn login(State(dash): State<Arc<Dashboard>>, req: Request) -> Response {
    let client = client_ip(&req);
    if !same_origin(req.headers()) {
        return error(StatusCode::FORBIDDEN, "login from another site refused");
    }
    let wait = dash.throttle.lock().wait(client, Instant::now());
    if !wait.is_zero() {
        tracing::warn!(client = %client, wait_s = wait.as_secs(), "dashboard login refused: too many failed attempts");
        return redirect(&format!("/login?wait={}", wait.as_secs().max(1)));
    }
    let body = match axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "login form too large"),
    };
    let password = form_field(&body, "password").unwrap_or_default();
    // A worker (or a node outside any swarm, or a locked manager) has no password to check:
    // the page says to use a manager's dashboard.
    let Ok(manager) = dash.daemon.manager().await else {
        return redirect("/login?unavailable=1");
    };
    let Some(phc) = shoal_manager::admin::stored_hash(&manager.store) else {
        return redirect("/login?unset=1");
    };
    let ok = tokio::task::spawn_blocking(move || shoal_manager::admin::verify(&phc, &password))
        .await
        .unwrap_or(false);
    if !ok {
        let wait = dash.throttle.lock().failed(client, Instant::now());
        tracing::warn!(client = %client, next_wait_s = wait.as_secs(), "dashboard login failed");
        return redirect("/login?failed=1");
    }
    dash.throttle.lock().succeeded(client);
    let token = dash.open_session("admin");
    tracing::info!(client = %client, user = "admin", "dashboard login");
    let mut res = redirect("/");
    res.headers_mut().insert(
        header::SET_COOKIE,
        dash.cookie_header(&token, auth::ABSOLUTE.as_secs()),
    );
    res
}

/// `POST /logout` (CSRF-checked): 204, the session gone and the cookie cleared.
async fn logout(
    State(dash): State<Arc<Dashboard>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    match dash.authorized(&method, &headers) {
        Ok((token, _)) => {
            dash.sessions.lock().close(&token);
            let mut res = StatusCode::NO_CONTENT.into_response();
            res.headers_mut()
                .insert(header::SET_COOKIE, dash.cookie_header("", 0));
            res
        }
        Err(r) => r.answer(false),
    }
}

/// `GET /api/session`: the CSRF token the page sends back, and when the session ends if idle.
async fn session_info(State(dash): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    match dash.session(&headers) {
        Ok((_, s)) => {
            let left = s
                .expires(Instant::now())
                .saturating_duration_since(Instant::now());
            let expires = chrono::Utc::now()
                + chrono::Duration::from_std(left).unwrap_or_else(|_| chrono::Duration::zero());
            axum::Json(serde_json::json!({
                "csrf": s.csrf,
                "user": s.user,
                "expires": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }))
            .into_response()
        }
        Err(r) => r.answer(false),
    }
}

/// `GET /api/stream`: the live view (see [`stream`]).
async fn stream(State(dash): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    let (token, _) = match dash.session(&headers) {
        Ok(s) => s,
        Err(r) => return r.answer(false),
    };
    let m = match dash.daemon.manager().await {
        Ok(m) => m,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.message),
    };
    axum::response::Sse::new(stream::views(dash.clone(), m, token))
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response()
}

/// `POST /api/stacks` (`{"name", "compose"}`, CSRF-checked): deploys a pasted compose file.
async fn deploy_stack(
    State(dash): State<Arc<Dashboard>>,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (_, s) = match dash.authorized(&method, &headers) {
        Ok(s) => s,
        Err(r) => return r.answer(false),
    };
    if body.len() > compose::MAX_FILE_BYTES + 4096 {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the compose file is over 1 MiB",
        );
    }
    let req: deploy::DeployRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"name\": ..., \"compose\": ...}}: {e}"),
            )
        }
    };
    let stack = req.name.clone();
    match deploy::deploy(&dash, req).await {
        Ok(v) => {
            tracing::info!(user = %s.user, stack = %stack, "dashboard action: stack deployed");
            axum::Json(v).into_response()
        }
        Err(r) => {
            tracing::info!(user = %s.user, stack = %stack, status = r.status.as_u16(), error = %r.message, "dashboard action: stack deploy refused");
            error(r.status, &r.message)
        }
    }
}

/// `/api/docker/{path}`: the Docker API, for what [`docker::allowed`] lets through.
async fn docker_api(State(dash): State<Arc<Dashboard>>, req: Request) -> Response {
    let (_, s) = match dash.authorized(req.method(), req.headers()) {
        Ok(s) => s,
        Err(r) => return r.answer(false),
    };
    let path = req
        .uri()
        .path()
        .strip_prefix("/api/docker")
        .unwrap_or("/")
        .to_string();
    let method = req.method().clone();
    if !docker::allowed(&method, &path) {
        return error(
            StatusCode::FORBIDDEN,
            &format!("the dashboard does not offer {method} {path}"),
        );
    }
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let uri: http::Uri = match target.parse() {
        Ok(uri) => uri,
        Err(_) => return error(StatusCode::BAD_REQUEST, "malformed path"),
    };
    // A new request, not this one re-aimed: this router's extensions (its path parameters)
    // would confuse the API's own extractors.
    let (parts, body) = req.into_parts();
    let mut inner = Request::new(body);
    *inner.method_mut() = parts.method;
    *inner.uri_mut() = uri;
    *inner.version_mut() = parts.version;
    *inner.headers_mut() = parts.headers;
    // The session's secrets stay here: the API (and the engine behind it) never sees them.
    for h in [header::COOKIE, header::AUTHORIZATION] {
        inner.headers_mut().remove(h);
    }
    inner.headers_mut().remove(CSRF_HEADER);
    let res = match dash.api.clone().oneshot(inner).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if method != Method::GET {
        tracing::info!(user = %s.user, method = %method, path = %path, status = res.status().as_u16(), "dashboard action");
    }
    res
}

/// Docker's error format, so the page shows every refusal the same way.
fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "message": message }).to_string(),
    )
        .into_response()
}

fn redirect(to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(
            header::LOCATION,
            HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/")),
        )],
    )
        .into_response()
}

fn client_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// A form posted from another site carries its own `Origin` (or `Sec-Fetch-Site: cross-site`);
/// one from the dashboard's page names this host.
fn same_origin(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// One cookie's value from the `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// One field of an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        };
        (decode(k)? == name).then(|| decode(v)).flatten()
    })
}

#[cfg(test)]
mod tests;
