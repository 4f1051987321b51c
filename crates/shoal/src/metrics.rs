//! `GET /metrics` (issue 21): this node's metrics in Prometheus' text format, on
//! `--metrics-addr` (default 127.0.0.1:9323, Docker's customary metrics port). A manager adds
//! the cluster's gauges (nodes, tasks, replicas) from its copy of the store; every node adds its
//! agent's instruments and its task containers as its engine lists them.

use crate::DaemonArgs;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shoal_manager::api::Daemon;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What the scrape handler needs: the daemon (is it a manager?) and the engine (containers).
#[derive(Clone)]
pub struct Scrape {
    daemon: Arc<Daemon>,
    engine: Option<bollard::Docker>,
}

/// The content type Prometheus asks for and this text follows (OpenMetrics 1.0).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `--metrics-addr` and serves `/metrics` there until `stop`. A default address whose
/// port is taken only warns; a given one that cannot be bound stops the start.
pub async fn start(
    args: &DaemonArgs,
    daemon: Arc<Daemon>,
    engine: Option<bollard::Docker>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let Some((addr, given)) = crate::daemon::optional_addr(
        args.metrics_addr.as_deref(),
        "127.0.0.1:9323",
        "--metrics-addr",
    )?
    else {
        return Ok(());
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if !given => {
            tracing::warn!(addr = %addr, error = %e, "metrics are not served (the default port is taken); pick another with --metrics-addr");
            return Ok(());
        }
        Err(e) => anyhow::bail!("--metrics-addr {addr}: {e}"),
    };
    if !addr.ip().is_loopback() {
        tracing::warn!(addr = %addr, "serving /metrics off loopback without authentication: service and node names are readable by anyone who reaches it");
    }
    tracing::info!(addr = %addr, "metrics on http://{addr}/metrics");
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(Scrape { daemon, engine });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(())
}

async fn scrape(
    axum::extract::State(s): axum::extract::State<Scrape>,
    headers: axum::http::HeaderMap,
) -> Response {
    let mut registry = Registry::default();
    shoal_manager::metrics::register(&mut registry);
    shoal_agent::metrics::register(&mut registry);
    let manager = s.daemon.manager.read().await.clone();
    if let Some(m) = manager {
        let mut reader = m.view.reader();
        let (live, _) = reader.refresh().await;
        shoal_manager::metrics::cluster_families(&mut registry, live.state());
    }
    if let Some(engine) = &s.engine {
        let node = s
            .daemon
            .node
            .read()
            .await
            .as_ref()
            .map(|(id, _)| id.node_id.clone());
        if let Some(node) = node {
            task_containers(&mut registry, engine, &node).await;
        }
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response();
    }
    // Prometheus asks for OpenMetrics; anything else (promtool, curl, older scrapers) gets
    // the classic text format.
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
            to_prometheus_text(&text),
        )
            .into_response()
    }
}

/// The classic Prometheus text format's content type.
const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text as the classic Prometheus format: a counter's HELP and TYPE name its
/// `_total` series, and OpenMetrics' `# EOF` and `# UNIT` lines go.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// This node's task containers by state, as its engine lists them.
async fn task_containers(registry: &mut Registry, engine: &bollard::Docker, node: &str) {
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("{}={node}", shoal_api::labels::NODE_ID)],
    )]);
    let listed = engine
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await;
    let Ok(containers) = listed else { return };
    let family: Family<Vec<(String, String)>, Gauge> = Family::default();
    for state in [
        "created",
        "running",
        "paused",
        "restarting",
        "exited",
        "dead",
    ] {
        family
            .get_or_create(&vec![("state".into(), state.into())])
            .set(0);
    }
    for c in containers {
        let state = c
            .state
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into());
        family.get_or_create(&vec![("state".into(), state)]).inc();
    }
    registry.register(
        "shoal_agent_task_containers",
        "Task containers on this node's engine, by state",
        family,
    );
}

#[cfg(test)]
mod tests {
    use super::to_prometheus_text;

    #[test]
    fn counters_are_named_by_their_series_in_the_classic_format() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 3\n# HELP b Gauge.\n# TYPE b gauge\nb 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 3\n# HELP b Gauge.\n# TYPE b gauge\nb 1\n"
        );
    }
}
