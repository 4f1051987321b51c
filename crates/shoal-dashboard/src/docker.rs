//! `/api/docker/...`: the page's way to the Docker API, in process, through the same handlers,
//! validation and errors as the socket, limited to what the dashboard offers. Everything else
//! (containers, exec, plugins, swarm join tokens...) is refused here, so a stolen session can do
//! no more than the page's buttons.

use http::Method;

/// Whether the dashboard passes `method path` (the path without `/api/docker`, a `/v1.NN`
/// version prefix allowed) on to the API.
pub fn allowed(method: &Method, path: &str) -> bool {
    let mut segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segs.first().is_some_and(|s| is_version(s)) {
        segs.remove(0);
    }
    if segs.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return false;
    }
    matches!(
        (method.as_str(), segs.as_slice()),
        ("GET", ["_ping" | "version" | "info" | "events"])
            | (
                "GET",
                ["nodes" | "services" | "tasks" | "networks" | "volumes" | "secrets" | "configs"]
            )
            | (
                "GET",
                [
                    "nodes" | "services" | "tasks" | "networks" | "secrets" | "configs",
                    _
                ]
            )
            | ("GET", ["services" | "tasks", _, "logs"])
            | ("GET", ["images", "json"])
            | ("GET", ["shoal", "v1", "floating-ips"])
            | ("GET", ["shoal", "v1", "services", _, "history"])
            | ("POST", ["services", "create"])
            | ("POST", ["services" | "nodes", _, "update"])
            | (
                "DELETE",
                ["services" | "nodes" | "networks" | "secrets" | "configs", _]
            )
    )
}

fn is_version(s: &str) -> bool {
    s.strip_prefix('v').is_some_and(|v| {
        let mut parts = v.split('.');
        matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None)
            if !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_s_reads_and_actions_pass_and_nothing_else() {
        let get = Method::GET;
        let post = Method::POST;
        let delete = Method::DELETE;
        for (m, p) in [
            (&get, "/services"),
            (&get, "/v1.50/services/abc"),
            (&get, "/services/abc/logs"),
            (&get, "/tasks/t1/logs"),
            (&get, "/nodes"),
            (&get, "/events"),
            (&get, "/images/json"),
            (&get, "/shoal/v1/floating-ips"),
            (&post, "/services/abc/update"),
            (&post, "/v1.41/nodes/n1/update"),
            (&delete, "/services/abc"),
            (&delete, "/networks/n"),
        ] {
            assert!(allowed(m, p), "{m} {p} should pass");
        }
        for (m, p) in [
            // The engine's own objects, and what would run code on a node.
            (&post, "/containers/create"),
            (&post, "/containers/x/exec"),
            (&get, "/containers/json"),
            (&post, "/images/create"),
            (&post, "/plugins/pull"),
            // Join tokens and the unlock key; swarm-wide changes.
            (&get, "/swarm"),
            (&get, "/swarm/unlockkey"),
            (&post, "/swarm/leave"),
            (&post, "/swarm/update"),
            // Secrets are listed, never read or made here; no password change through a session.
            (&post, "/secrets/create"),
            (&post, "/shoal/v1/dashboard/password"),
            (&post, "/shoal/v1/client-certs"),
            // Methods and shapes that do not match.
            (&delete, "/services"),
            (&get, "/services/abc/update"),
            (&Method::PUT, "/services/abc"),
            (&get, "/services/../containers/json"),
            (&get, "/services//x"),
            (&get, "/v1.x/services"),
        ] {
            assert!(!allowed(m, p), "{m} {p} should be refused");
        }
    }
}
