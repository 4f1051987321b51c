//! `/metrics` (issue 21) as Prometheus sees it: a node in its own namespace serves its metrics
//! on `--metrics-addr`; `promtool check metrics` (Debian's `prometheus` package) accepts them;
//! a real Prometheus started here scrapes them and answers queries on the cluster's state.

mod common;

use common::{wait_until, Node};
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;

/// The metrics text as curl gets it inside the node's namespace.
fn scrape(node: &Node) -> String {
    node.http_get("http://127.0.0.1:9323/metrics")
        .expect("/metrics answers")
}

/// One series' value, the first line matching exactly `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrapes_them() {
    let node = Node::start_with("metrics", &["--metrics-addr", "127.0.0.1:9323"]);
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "2",
        "shoal-test/web",
    ]);
    wait_until(
        Duration::from_secs(30),
        "2 web replicas running in /metrics",
        || {
            value(
                &scrape(&node),
                "shoal_service_replicas_running{service=\"web\"}",
            ) == Some(2.0)
        },
    );
    let text = scrape(&node);
    for (series, want) in [
        ("shoal_service_replicas_desired{service=\"web\"}", 2.0),
        ("shoal_tasks{service=\"web\",state=\"running\"}", 2.0),
        (
            "shoal_nodes{role=\"manager\",state=\"ready\",availability=\"active\"}",
            1.0,
        ),
        ("shoal_raft_is_leader", 1.0),
        ("shoal_agent_task_containers{state=\"running\"}", 2.0),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in:\n{text}");
    }
    for family in [
        "shoal_api_requests_total{route=\"/services/create\",method=\"POST\",status=\"201\"}",
        "shoal_api_request_duration_seconds_count{route=\"/services/create\",method=\"POST\"}",
        "shoal_scheduling_latency_seconds_count",
        "shoal_raft_commit_seconds_count",
        "shoal_agent_nft_apply_seconds_count",
    ] {
        assert!(
            value(&text, family).is_some_and(|v| v >= 1.0),
            "{family} counted nothing in:\n{text}"
        );
    }

    // promtool reads the classic text format the way Prometheus' own tooling does.
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt install prometheus)");
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus in the node's namespace, scraping every second.
    let dir = node.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: shoal\n    static_configs:\n      - targets: ['127.0.0.1:9323']\n",
    )
    .unwrap();
    let mut prom = node
        .netns
        .command("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:9090")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .expect("prometheus (apt install prometheus)");
    let query = |q: &str| -> Option<f64> {
        let out = node
            .netns
            .command("curl")
            .args([
                "-s",
                "--max-time",
                "3",
                "--data-urlencode",
                &format!("query={q}"),
                "http://127.0.0.1:9090/api/v1/query",
            ])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let scraped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(Duration::from_secs(60), "Prometheus scraped shoal", || {
            query("up{job=\"shoal\"}") == Some(1.0)
                && query("shoal_service_replicas_running{service=\"web\"}") == Some(2.0)
        });
        // A change shows in the next scrapes.
        node.ok(&["service", "scale", "-d", "web=3"]);
        wait_until(
            Duration::from_secs(60),
            "Prometheus sees 3 replicas",
            || {
                query("shoal_service_replicas_running{service=\"web\"}") == Some(3.0)
                    && query("sum(shoal_tasks{state=\"running\"})") == Some(3.0)
            },
        );
    }));
    let _ = prom.kill();
    let _ = prom.wait();
    if let Err(e) = scraped {
        eprintln!(
            "prometheus log:\n{}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        std::panic::resume_unwind(e);
    }
}
