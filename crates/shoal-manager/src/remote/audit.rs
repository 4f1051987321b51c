//! One log line per remote request, naming the client certificate that made it: writes at info
//! (target `shoal::audit`), reads at debug. Method, path, status, client and peer address only:
//! never a body or a query (bodies hold secrets; queries can hold filters with names), and the
//! path is cut at 200 characters.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use std::convert::Infallible;
use std::net::SocketAddr;
use tower::util::BoxCloneService;
use tower::ServiceExt;

/// The API as one clonable service, what every remote connection serves.
pub(crate) type App = BoxCloneService<Request<Body>, Response, Infallible>;

/// Who is on the other end of a remote connection.
#[derive(Debug, Clone)]
pub(crate) struct Who {
    /// The client certificate's name, or `plain-tcp` on a plain loopback listener.
    pub name: String,
    /// The peer's address.
    pub peer: SocketAddr,
}

/// The longest path written to the log.
const MAX_PATH: usize = 200;

/// Whether a method changes something (what gets an info-level audit line).
fn is_write(m: &http::Method) -> bool {
    !matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// The path as logged: no query, at most [`MAX_PATH`] characters.
fn logged_path(uri: &http::Uri) -> String {
    let p = uri.path();
    match p.char_indices().nth(MAX_PATH) {
        Some((i, _)) => format!("{}...", &p[..i]),
        None => p.to_string(),
    }
}

/// Serves one request through the API and logs it with the client's name.
pub(crate) async fn serve(
    app: App,
    who: Who,
    req: http::Request<hyper::body::Incoming>,
) -> Result<Response, Infallible> {
    let method = req.method().clone();
    let path = logged_path(req.uri());
    let resp = app.oneshot(req.map(Body::new)).await?;
    let status = resp.status().as_u16();
    if is_write(&method) {
        tracing::info!(
            target: "shoal::audit",
            client = %who.name,
            peer = %who.peer,
            method = %method,
            path = %path,
            status,
            "remote API write"
        );
    } else {
        tracing::debug!(
            target: "shoal::audit",
            client = %who.name,
            peer = %who.peer,
            method = %method,
            path = %path,
            status,
            "remote API read"
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_path_is_logged_and_never_too_much_of_it() {
        let u: http::Uri = "/v1.50/secrets/create?x=secret".parse().unwrap();
        assert_eq!(logged_path(&u), "/v1.50/secrets/create");
        let long: http::Uri = format!("/services/{}", "a".repeat(500)).parse().unwrap();
        let p = logged_path(&long);
        assert!(p.len() <= MAX_PATH + 3 && p.ends_with("..."), "{p}");
        assert!(is_write(&http::Method::POST));
        assert!(is_write(&http::Method::DELETE));
        assert!(!is_write(&http::Method::GET));
        assert!(!is_write(&http::Method::HEAD));
    }
}
