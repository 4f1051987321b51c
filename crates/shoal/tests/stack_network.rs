//! Stacks and service networking through the docker CLI: the sample stack, DNS discovery, VIP
//! load balancing, network isolation and the published port on the node.

mod common;

use common::{wait_for, wait_until, Node};
use std::collections::HashSet;
use std::time::Duration;

#[test]
fn sample_stack_deploys_answers_and_is_removed_cleanly() {
    let node = Node::start("stack");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    let out = node.ok(&["stack", "deploy", "-c", "examples/stack.yml", "demo"]);
    assert!(out.contains("Creating service demo_web"), "{out}");
    node.wait_replicas("demo_web", "3/3");
    node.wait_replicas("demo_api", "2/2");
    let stacks = node.ok(&["stack", "ls", "--format", "{{.Name}} {{.Services}}"]);
    assert_eq!(stacks.trim(), "demo 2");

    // The published port answers on the node, balanced over web's replicas, and web reaches api by name.
    let mut webs = HashSet::new();
    let mut apis = HashSet::new();
    wait_until(
        Duration::from_secs(30),
        "every web replica answered",
        || {
            if let Some(body) = node.http_get("http://127.0.0.1:8080/") {
                assert!(body.contains("secret api_token: present"), "{body}");
                if let Some(rest) = body.lines().next().and_then(|l| l.split("web ").nth(1)) {
                    let mut it = rest.split(" -> api ");
                    webs.insert(it.next().unwrap_or("").to_string());
                    let api = it.next().unwrap_or("").trim().to_string();
                    assert_ne!(
                        api, "unreachable",
                        "web could not reach api by name: {body}"
                    );
                    apis.insert(api);
                }
            }
            webs.len() == 3 && apis.len() == 2
        },
    );

    // Scale through the CLI and see it in stack ps.
    node.ok(&["service", "scale", "demo_web=5"]);
    node.wait_replicas("demo_web", "5/5");
    let ps = node.ok(&[
        "stack",
        "ps",
        "demo",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Name}} {{.CurrentState}}",
    ]);
    assert_eq!(
        ps.lines().filter(|l| l.contains("Running")).count(),
        7,
        "{ps}"
    );

    // Non-swarm endpoints pass through to the engine: ps, logs, exec.
    let c = node.ps_q("name=demo_web.1.");
    let host = node.ok(&["exec", c.trim(), "hostname"]);
    assert!(!host.trim().is_empty());
    node.ok(&["logs", c.trim()]);

    node.ok(&["stack", "rm", "demo"]);
    wait_until(Duration::from_secs(30), "stack containers gone", || {
        node.engine_containers("com.docker.stack.namespace=demo")
            .is_empty()
    });
    wait_until(Duration::from_secs(10), "stack objects gone", || {
        node.ok(&[
            "network",
            "ls",
            "--filter",
            "label=com.docker.stack.namespace=demo",
            "-q",
        ])
        .trim()
        .is_empty()
            && node.ok(&["secret", "ls", "-q"]).trim().is_empty()
            && node.ok(&["config", "ls", "-q"]).trim().is_empty()
    });
    assert!(
        node.http_get("http://127.0.0.1:8080/").is_none(),
        "the published port still answers after stack rm"
    );
}

#[test]
fn names_resolve_to_vips_tasks_balance_and_networks_are_isolated() {
    let node = Node::start("dns");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    node.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.0.40.0/24",
        "blue",
    ]);
    node.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.0.41.0/24",
        "red",
    ]);
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "echo",
        "--replicas",
        "2",
        "--network",
        "name=blue,alias=hello",
        "shoal-test/web",
    ]);
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "rr",
        "--replicas",
        "2",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        "blue",
        "shoal-test/web",
    ]);
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "client",
        "--network",
        "blue",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "outsider",
        "--network",
        "red",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    for s in ["echo", "rr"] {
        node.wait_replicas(s, "2/2");
    }
    node.wait_replicas("client", "1/1");
    node.wait_replicas("outsider", "1/1");
    let vip = node.ok(&[
        "service",
        "inspect",
        "-f",
        "{{range .Endpoint.VirtualIPs}}{{.Addr}}{{end}}",
        "echo",
    ]);
    let vip = vip.trim().split('/').next().unwrap_or_default().to_string();
    assert!(vip.starts_with("10.0.40."), "{vip}");
    let client = node.ps_q("name=client.1.");
    let client = client.trim();
    let sh = |c: &str, cmd: &str| -> String {
        let out = node.docker(&["exec", c, "sh", "-c", cmd]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    wait_until(
        Duration::from_secs(20),
        "service name resolves to its VIP",
        || sh(client, "nslookup echo").contains(&vip),
    );
    assert!(sh(client, "nslookup hello").contains(&vip), "network alias");
    let tasks = sh(client, "nslookup tasks.echo");
    assert_eq!(
        tasks.matches("10.0.40.").count(),
        2,
        "tasks.echo lists both tasks: {tasks}"
    );
    let rr = sh(client, "nslookup rr");
    assert!(
        rr.matches("10.0.40.").count() >= 2,
        "dnsrr answers task addresses: {rr}"
    );
    let mut seen = HashSet::new();
    for _ in 0..20 {
        seen.insert(
            sh(client, "timeout 3 wget -qO- http://echo/")
                .trim()
                .to_string(),
        );
    }
    seen.remove("");
    assert_eq!(seen.len(), 2, "VIP balances over both tasks: {seen:?}");

    // The other network neither resolves nor reaches blue's services.
    let outsider = node.ps_q("name=outsider.1.");
    let outsider = outsider.trim();
    assert!(
        !sh(outsider, "nslookup echo").contains(&vip),
        "echo resolves from red"
    );
    assert!(sh(
        outsider,
        &format!("timeout 3 wget -qO- http://{vip}/ || echo blocked")
    )
    .contains("blocked"));
    let task_ip = tasks
        .lines()
        .filter(|l| l.contains("10.0.40."))
        .filter_map(|l| l.split_whitespace().last())
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        sh(
            outsider,
            &format!("timeout 3 wget -qO- http://{task_ip}/ || echo blocked")
        )
        .contains("blocked"),
        "task {task_ip} reachable from red"
    );

    // Host-mode publishing answers on this node too (the task's node).
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "hosted",
        "--network",
        "blue",
        "--publish",
        "mode=host,published=18081,target=80",
        "shoal-test/web",
    ]);
    node.wait_replicas("hosted", "1/1");
    let hosted = node.ps_q("name=hosted.1.");
    let hostname = node.ok(&["exec", hosted.trim(), "hostname"]);
    wait_until(Duration::from_secs(20), "host-mode port answers", || {
        node.http_get("http://127.0.0.1:18081/")
            .is_some_and(|b| b.trim() == hostname.trim())
    });
    let ports = node.ok(&["service", "ps", "hosted", "--format", "{{.Ports}}"]);
    assert!(
        ports.contains("*:18081->80/tcp"),
        "host-mode port shown per task: {ports}"
    );
    node.ok(&["service", "rm", "hosted"]);
    wait_until(Duration::from_secs(20), "host-mode port closes", || {
        node.http_get("http://127.0.0.1:18081/").is_none()
    });

    // A scaled-down service leaves the rotation.
    node.ok(&["service", "scale", "echo=1"]);
    node.wait_replicas("echo", "1/1");
    wait_for(Duration::from_secs(20), "tasks.echo shrinks", || {
        let seen = sh(client, "nslookup tasks.echo");
        if seen.matches("10.0.40.").count() == 1 {
            Ok(())
        } else {
            let ps = node.ok(&["service", "ps", "echo"]);
            Err(format!("{seen}\n{ps}"))
        }
    });
    for s in ["echo", "rr", "client", "outsider"] {
        node.ok(&["service", "rm", s]);
    }
    wait_until(Duration::from_secs(30), "containers gone", || {
        node.engine_containers("com.docker.swarm.node.id")
            .is_empty()
    });
    node.ok(&["network", "rm", "blue", "red"]);
}
