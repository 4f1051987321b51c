//! The dashboard in a real browser (issue 21): Debian's chromium, driven over WebDriver by its
//! chromedriver, against a real cluster of three namespaced nodes (one manager, two workers).
//! What a user checks: the page without a session sends them to the login; a wrong password is
//! refused; after logging in, every task's card is in its node's column; scaling from the page
//! makes the new cards appear; a refused action shows the API's error; killing a node moves its
//! cards; a forged post without the CSRF token changes nothing. Screenshots of the main views
//! land in `target/dashboard-screenshots/` (`SHOAL_SCREENSHOTS=docs/screenshots` writes the
//! README's).
//!
//! Also here: `/metrics` checked by `promtool check metrics` and scraped by a real Prometheus.

mod common;

use common::cluster::{Cluster, ClusterNode};
use common::wait_until;
use common::webdriver::Browser;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";
const DASHBOARD: &str = "http://127.0.0.1:9000";

fn set_password(node: &ClusterNode, password: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["dashboard", "password", "-H"])
        .arg(format!("unix://{}", node.socket.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Every task card on the page: (task ID, service, state, the hostname of its column).
fn cards(b: &Browser) -> Vec<(String, String, String, String)> {
    let v = b.exec(
        "return [...document.querySelectorAll('article.task-card')].map(c => {
             const col = c.closest('.node-column');
             return [c.dataset.taskId, c.dataset.serviceName, c.dataset.state,
                     col ? (col.dataset.hostname || '') : ''];
         });",
        json!([]),
    );
    v.as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let s = |i: usize| c[i].as_str().unwrap_or_default().to_string();
            (s(0), s(1), s(2), s(3))
        })
        .collect()
}

/// Running cards of `service`, by column.
fn running_by_column(b: &Browser, service: &str) -> BTreeMap<String, String> {
    cards(b)
        .into_iter()
        .filter(|(_, s, st, _)| s == service && st == "running")
        .map(|(id, _, _, col)| (id, col))
        .collect()
}

/// Where `docker service ps` says each running task of `service` is: task ID -> node name.
fn ps_running(node: &ClusterNode, service: &str) -> BTreeMap<String, String> {
    node.ok(&[
        "service",
        "ps",
        service,
        "--no-trunc",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.ID}} {{.Node}} {{.CurrentState}}",
    ])
    .lines()
    .filter(|l| l.contains("Running"))
    .filter_map(|l| {
        let mut it = l.split_whitespace();
        Some((it.next()?.to_string(), it.next()?.to_string()))
    })
    .collect()
}

/// The text of the element with `id` on the page now ("" when absent).
fn text_of(b: &Browser, id: &str) -> String {
    b.exec(
        "const e = document.getElementById(arguments[0]); return e ? e.textContent : '';",
        json!([id]),
    )
    .as_str()
    .unwrap_or_default()
    .to_string()
}

fn shots() -> PathBuf {
    match std::env::var("SHOAL_SCREENSHOTS") {
        Ok(dir) if !dir.is_empty() => common::repo().join(dir),
        _ => common::repo().join("target/dashboard-screenshots"),
    }
}

fn show(b: &Browser, view: &str) {
    b.exec("location.hash = arguments[0];", json!([view]));
}

/// A request from inside node 1 with curl: (status, body).
fn curl(node: &ClusterNode, args: &[&str]) -> (u16, String) {
    let out = node
        .netns
        .command("curl")
        .args(["-s", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn dashboard_in_a_browser_shows_the_cluster_live_and_acts_through_the_api() {
    let mut c = Cluster::start("dash", 3);
    c.form(1);
    let n1 = c.node(1);

    // A password too short is refused, a good one is stored.
    let short = set_password(n1, "short");
    assert!(!short.status.success());
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("Password: at least 8"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    assert!(set_password(n1, PASSWORD).status.success());

    n1.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "3",
        "shoal-test/web",
    ]);

    let b = Browser::start(&n1.netns, 9515);

    // No session: sent to the login page.
    b.goto(&format!("{DASHBOARD}/"));
    assert!(b.url().ends_with("/login"), "at {}", b.url());
    b.screenshot(&shots().join("login.png"));

    // A wrong password is refused and said so.
    let pw = b.wait_for("#password", Duration::from_secs(10));
    b.type_into(&pw, "not the password");
    b.click_css("#login", Duration::from_secs(5));
    wait_until(
        Duration::from_secs(10),
        "the login says the password was wrong",
        || b.url().contains("failed=1") && text_of(&b, "login-message").contains("Wrong password"),
    );

    // The right one opens the visualizer: one column per node.
    let pw = b.wait_for("#password", Duration::from_secs(10));
    b.type_into(&pw, PASSWORD);
    b.click_css("#login", Duration::from_secs(5));
    wait_until(Duration::from_secs(10), "three node columns", || {
        b.find_all("section.node-column").len() == 3
    });
    let cookie = b.cookie("shoal_session").expect("session cookie");

    // Every running task's card sits in the column of the node `docker service ps` names.
    wait_until(
        Duration::from_secs(30),
        "3 running web cards in their nodes' columns",
        || {
            let page = running_by_column(&b, "web");
            let ps = ps_running(n1, "web");
            page.len() == 3 && page == ps
        },
    );
    // Each column heads its node with the CPU and memory it reports in use.
    wait_until(
        Duration::from_secs(20),
        "node columns show CPU and memory in use",
        || {
            let heads = b.exec(
            "return [...document.querySelectorAll('section.node-column')].map(c => c.textContent);",
            json!([]),
        );
            heads.as_array().is_some_and(|a| {
                a.len() == 3
                    && a.iter().all(|h| {
                        h.as_str()
                            .is_some_and(|t| t.contains("% in use") && t.contains("used"))
                    })
            })
        },
    );
    b.screenshot(&shots().join("visualizer.png"));

    // Scale from the page: the services view, the Scale button, the dialog.
    show(&b, "#services");
    b.wait_for(
        "button[data-action=scale][data-service-name=web]",
        Duration::from_secs(10),
    );
    b.screenshot(&shots().join("services.png"));
    b.click_css(
        "button[data-action=scale][data-service-name=web]",
        Duration::from_secs(10),
    );
    let input = b.wait_for("#dialog-input", Duration::from_secs(5));
    b.type_into(&input, "5");
    b.click_css("#dialog-ok", Duration::from_secs(5));
    // The page says what it did (or why not) before the cards change.
    wait_until(
        Duration::from_secs(10),
        "the page confirms the scale",
        || text_of(&b, "status").contains("Scaling web to 5"),
    );
    show(&b, "#visualizer");
    wait_until(
        Duration::from_secs(30),
        "5 running web cards after scaling from the page",
        || {
            let page = running_by_column(&b, "web");
            page.len() == 5 && page == ps_running(n1, "web")
        },
    );
    let replicas = n1.ok(&[
        "service",
        "inspect",
        "web",
        "--format",
        "{{.Spec.Mode.Replicated.Replicas}}",
    ]);
    assert_eq!(replicas.trim(), "5");

    // Deploy a stack from a pasted compose file; a broken one is refused with the key named.
    show(&b, "#stacks");
    b.click_css("details.deploy summary", Duration::from_secs(10));
    b.type_into(&b.wait_for("#stack-name", Duration::from_secs(5)), "demo");
    let compose = b.wait_for("#stack-compose", Duration::from_secs(5));
    b.type_into(
        &compose,
        "services:\n  api:\n    command: sleep 3600\n    deploy:\n      replicas: 2\n",
    );
    b.click_css("#stack-deploy", Duration::from_secs(5));
    wait_until(Duration::from_secs(10), "the missing image refused", || {
        b.find_all("#error")
            .first()
            .is_some_and(|e| b.text(e).contains("services.api") && b.text(e).contains("image"))
    });
    b.type_into(
        &compose,
        "services:\n  api:\n    image: shoal-test/busybox\n    command: sh -c \"echo hello from $$SLOT; sleep 3600\"\n    environment:\n      SLOT: \"{{.Task.Slot}}\"\n    deploy:\n      replicas: 2\n",
    );
    b.click_css("#stack-deploy", Duration::from_secs(5));
    wait_until(
        Duration::from_secs(10),
        "the page confirms the deploy",
        || {
            b.find_all("#status")
                .first()
                .is_some_and(|e| b.text(e).contains("Stack demo: 1 service(s) created"))
        },
    );
    show(&b, "#visualizer");
    wait_until(Duration::from_secs(30), "2 running demo_api cards", || {
        let page = running_by_column(&b, "demo_api");
        page.len() == 2 && page == ps_running(n1, "demo_api")
    });
    // A service's logs, live, then one task's.
    show(&b, "#services");
    b.click_css(
        "button[data-action=logs][data-service-name=demo_api]",
        Duration::from_secs(10),
    );
    let logs_say = |what: &str| {
        b.find_all("#logs-pre")
            .first()
            .is_some_and(|p| b.text(p).contains(what))
    };
    wait_until(
        Duration::from_secs(15),
        "both tasks' lines in the service's logs",
        || logs_say("hello from 1") && logs_say("hello from 2"),
    );
    let second = b.exec(
        "const o = [...document.querySelectorAll('#logs-task option')].find(o => o.textContent.startsWith('demo_api.2')); return o ? o.value : null;",
        json!([]),
    );
    let second = second
        .as_str()
        .expect("task 2 in the logs' task list")
        .to_string();
    b.exec(
        "const s = document.getElementById('logs-task'); s.value = arguments[0]; s.dispatchEvent(new Event('change'));",
        json!([second]),
    );
    wait_until(Duration::from_secs(15), "one task's logs", || {
        logs_say("hello from 2") && !logs_say("hello from 1")
    });
    b.click_css("#logs-close", Duration::from_secs(5));

    let label = n1.ok(&[
        "service",
        "inspect",
        "demo_api",
        "--format",
        "{{index .Spec.Labels \"com.docker.stack.namespace\"}}",
    ]);
    assert_eq!(
        label.trim(),
        "demo",
        "deployed as `docker stack deploy` would"
    );
    assert!(n1.ok(&["stack", "ls"]).contains("demo"));
    b.screenshot(&shots().join("visualizer.png"));
    show(&b, "#stacks");
    b.wait_for(
        "button[data-action=remove-stack][data-stack=demo]",
        Duration::from_secs(10),
    );
    b.screenshot(&shots().join("stacks.png"));

    // A refused action shows the API's own error: demoting the only manager.
    show(&b, "#nodes");
    b.wait_for(
        "button[data-action=demote][data-hostname=node-1]",
        Duration::from_secs(10),
    );
    b.screenshot(&shots().join("nodes.png"));
    b.click_css(
        "button[data-action=demote][data-hostname=node-1]",
        Duration::from_secs(10),
    );
    b.click_css("#dialog-ok", Duration::from_secs(5));
    wait_until(Duration::from_secs(10), "the refusal shown", || {
        b.find_all("#error")
            .first()
            .is_some_and(|e| b.text(e).to_lowercase().contains("manager"))
    });
    let role = n1.ok(&["node", "inspect", "node-1", "--format", "{{.Spec.Role}}"]);
    assert_eq!(
        role.trim(),
        "manager",
        "the refused demotion changed nothing"
    );

    // Images and where they are: every node reports its engine's (here they share one).
    show(&b, "#images");
    wait_until(
        Duration::from_secs(20),
        "shoal-test/web on the three nodes",
        || {
            let rows = b.exec(
            "return [...document.querySelectorAll('#c-images tr[data-image-id]')].map(r => r.textContent);",
            json!([]),
        );
            rows.as_array().into_iter().flatten().any(|r| {
                r.as_str().is_some_and(|t| {
                    t.contains("shoal-test/web:latest") && t.contains("node-1, node-2, node-3")
                })
            })
        },
    );
    b.screenshot(&shots().join("images.png"));

    // A node dies: its cards move to the others, without a reload.
    show(&b, "#visualizer");
    let on_three = running_by_column(&b, "web")
        .values()
        .filter(|col| *col == "node-3")
        .count();
    assert!(on_three > 0, "node-3 runs some web tasks before it dies");
    c.node_mut(3).kill();
    let n1 = c.node(1);
    wait_until(
        Duration::from_secs(60),
        "the dead node's cards moved to the others",
        || {
            let page = running_by_column(&b, "web");
            page.len() == 5 && page.values().all(|col| col != "node-3")
        },
    );
    let down = b.exec(
        "const c = document.querySelector('.node-column[data-hostname=\"node-3\"]'); return c ? c.textContent : '';",
        json!([]),
    );
    assert!(
        down.as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("down"),
        "node-3's column says it is down: {down}"
    );

    // A forged post with the session cookie but no CSRF token changes nothing.
    let svc: Value = serde_json::from_str(&n1.ok(&["service", "inspect", "web"])).unwrap();
    let version = svc[0]["Version"]["Index"].as_u64().unwrap();
    let mut spec = svc[0]["Spec"].clone();
    spec["Mode"]["Replicated"]["Replicas"] = json!(1);
    let cookie_arg = format!("shoal_session={cookie}");
    let (status, body) = curl(
        n1,
        &[
            "-X",
            "POST",
            "-b",
            &cookie_arg,
            "-H",
            "content-type: application/json",
            "--data-binary",
            &spec.to_string(),
            &format!("{DASHBOARD}/api/docker/services/web/update?version={version}"),
        ],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("CSRF"), "{body}");
    // A form from another site posting to the login is refused too.
    let (status, _) = curl(
        n1,
        &[
            "-X",
            "POST",
            "-H",
            "origin: http://evil.example",
            "-d",
            &format!("password={PASSWORD}"),
            &format!("{DASHBOARD}/login"),
        ],
    );
    assert_eq!(status, 403);
    // Nothing outside the page's actions passes, even with the token.
    let csrf: Value = serde_json::from_str(
        &curl(
            n1,
            &["-b", &cookie_arg, &format!("{DASHBOARD}/api/session")],
        )
        .1,
    )
    .unwrap();
    let token = csrf["csrf"].as_str().unwrap();
    let (status, body) = curl(
        n1,
        &[
            "-X",
            "POST",
            "-b",
            &cookie_arg,
            "-H",
            &format!("x-csrf-token: {token}"),
            "-H",
            "content-type: application/json",
            "--data-binary",
            "{}",
            &format!("{DASHBOARD}/api/docker/containers/create"),
        ],
    );
    assert_eq!(status, 403, "{body}");
    let replicas = n1.ok(&[
        "service",
        "inspect",
        "web",
        "--format",
        "{{.Spec.Mode.Replicated.Replicas}}",
    ]);
    assert_eq!(replicas.trim(), "5", "the forged update changed nothing");

    // On a phone's screen the page still shows the columns (scrolling sideways).
    b.resize(390, 844);
    b.screenshot(&shots().join("phone.png"));
    assert!(!b.find_all("section.node-column").is_empty());
}

/// Off loopback the dashboard speaks HTTPS with a certificate from the cluster CA; a browser
/// with a `shoal client-cert` certificate is logged in by it, one without gets the login page,
/// and a revoked certificate is refused at the handshake.
#[test]
fn dashboard_over_https_with_the_cluster_ca_logs_client_certificates_in() {
    let node = common::Node::start_with("dash-tls", &["--dashboard-addr", "0.0.0.0:9443"]);
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    let ca = node.dir.join("data/certs/swarm-root-ca.crt");
    let get = |args: &[&str]| -> (u16, String, String) {
        let out = node
            .netns
            .command("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let code = text
            .lines()
            .last()
            .unwrap_or("0")
            .trim()
            .parse()
            .unwrap_or(0);
        let location = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("location: ")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default();
        (code, location, text)
    };
    let cacert = ca.display().to_string();
    // The certificate is made once the node is a manager; its names include localhost.
    wait_until(Duration::from_secs(20), "the login page over HTTPS", || {
        get(&["--cacert", &cacert, "https://localhost:9443/login"]).0 == 200
    });
    // Without a client certificate: sent to the login.
    let (code, location, _) = get(&["--cacert", &cacert, "https://localhost:9443/"]);
    assert_eq!((code, location.as_str()), (303, "/login"));
    // Plain HTTP on that port gets nowhere.
    assert_eq!(get(&["http://127.0.0.1:9443/login"]).0, 0);

    // With an API client certificate: logged in by it.
    let certs = node.dir.join("client");
    let issued = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["client-cert", "ops", "--out"])
        .arg(&certs)
        .args(["-H", &format!("unix://{}", node.socket.display())])
        .output()
        .unwrap();
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let cert = certs.join("cert.pem").display().to_string();
    let key = certs.join("key.pem").display().to_string();
    let with_cert = [
        "--cacert",
        cacert.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
        "https://localhost:9443/",
    ];
    let (code, location, text) = get(&with_cert);
    assert_eq!((code, location.as_str()), (303, "/"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("set-cookie: shoal_session=")
            && text.contains("Secure"),
        "a Secure session cookie: {text}"
    );

    // Revoked: refused at the handshake.
    let revoked = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["client-cert", "rm", "ops"])
        .args(["-H", &format!("unix://{}", node.socket.display())])
        .output()
        .unwrap();
    assert!(revoked.status.success());
    wait_until(
        Duration::from_secs(10),
        "the revoked certificate refused",
        || get(&with_cert).0 == 0,
    );
}
