//! Networking across nodes, each a real daemon in its own network namespace, driven by the docker
//! CLI: tasks on different nodes reach each other by name over the VXLAN overlay, the VIP spreads
//! over tasks on every node, a published port answers on a node without tasks (keeping the
//! client's address), networks stay isolated, the mesh survives a node's loss, and removing
//! everything leaves nothing behind on the nodes.

mod common;

use common::cluster::{Cluster, ClusterNode, CLIENT};
use common::{wait_for, wait_until};
use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

/// `docker service ls` as name -> replicas ("2/2").
fn replicas(n: &ClusterNode) -> HashMap<String, String> {
    n.ok(&["service", "ls", "--format", "{{.Name}} {{.Replicas}}"])
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.trim().to_string()))
        .collect()
}

fn wait_replicas(n: &ClusterNode, want: &[(&str, &str)]) {
    wait_for(Duration::from_secs(60), "services converged", || {
        let now = replicas(n);
        if want
            .iter()
            .all(|(s, r)| now.get(*s).map(String::as_str) == Some(*r))
        {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
}

/// The docker CLI against the shared engine itself (not a shoal socket); stdout if it
/// succeeded.
fn engine(args: &[&str]) -> Option<String> {
    let out = Command::new("docker")
        .args(["-H", "unix:///var/run/docker.sock"])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// The running container of `service` on the node with ID `node_id`.
fn container_on(service: &str, node_id: &str) -> Option<String> {
    engine(&[
        "ps",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
        "--filter",
        &format!("label=com.docker.swarm.node.id={node_id}"),
        "--format",
        "{{.ID}}",
    ])?
    .lines()
    .next()
    .map(str::to_string)
}

/// Runs `sh -c script` in a container; stdout if it succeeded.
fn exec(container: &str, script: &str) -> Option<String> {
    engine(&["exec", container, "sh", "-c", script]).map(|o| o.trim().to_string())
}

/// The address of a container on the engine network whose name ends with `suffix`.
fn engine_addr(container: &str, suffix: &str) -> Option<String> {
    engine(&[
        "inspect",
        container,
        "--format",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{$v.IPAddress}}\n{{end}}",
    ])?
    .lines()
    .find_map(|l| {
        let (net, addr) = l.split_once(' ')?;
        net.ends_with(suffix).then(|| addr.to_string())
    })
}

/// Names of the links in a node's namespace that start with `prefix`.
fn links(n: &ClusterNode, prefix: &str) -> Vec<String> {
    n.sh(&["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

#[test]
fn overlay_spans_nodes_and_the_mesh_answers_on_every_node() {
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let mut c = Cluster::start("overlay", 3);
    c.form(1);
    phase("cluster formed");
    let m = c.node(1);
    m.ok(&["network", "create", "-d", "overlay", "appnet"]);
    m.ok(&["network", "create", "-d", "overlay", "other"]);
    // Everything runs on the workers: node-1 (the manager) has no task at all.
    for args in [
        &["--name", "api", "--replicas", "2", "--network", "appnet"][..],
        &[
            "--name",
            "web",
            "--replicas",
            "2",
            "--network",
            "appnet",
            "--publish",
            "8080:80",
        ][..],
        &["--name", "lone", "--network", "other"][..],
    ] {
        let mut cmd = vec![
            "service",
            "create",
            "--detach",
            "--constraint",
            "node.role==worker",
        ];
        cmd.extend_from_slice(args);
        cmd.push("shoal-test/web");
        m.ok(&cmd);
    }
    wait_replicas(m, &[("api", "2/2"), ("web", "2/2"), ("lone", "1/1")]);
    let (n2, n3) = (c.node(2).node_id(), c.node(3).node_id());
    let api_nodes: BTreeSet<String> = m
        .ok(&["service", "ps", "api", "--format", "{{.Node}}"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        api_nodes,
        BTreeSet::from(["node-2".to_string(), "node-3".to_string()]),
        "api's replicas should be spread over both workers"
    );

    phase("services running");
    // `docker network inspect` lists the nodes that carry appnet (node-1 has no task on it),
    // and with --verbose each service's VIP and tasks.
    let peers = m.ok(&[
        "network",
        "inspect",
        "appnet",
        "--format",
        "{{range .Peers}}{{.Name}}={{.IP}} {{end}}",
    ]);
    assert_eq!(
        peers.split_whitespace().collect::<BTreeSet<_>>(),
        BTreeSet::from(["node-2=10.99.0.2", "node-3=10.99.0.3"]),
        "appnet's peers"
    );
    let verbose = m.ok(&[
        "network",
        "inspect",
        "--verbose",
        "appnet",
        "--format",
        "{{range $name, $s := .Services}}{{$name}}:{{len $s.Tasks}} {{end}}",
    ]);
    assert_eq!(verbose.trim(), "api:2 web:2", "appnet's services and tasks");
    // By name across nodes: web on node-2 reaches both api tasks (one of them on node-3)
    // through api's VIP, and tasks.api lists both addresses.
    let web2 = container_on("web", &n2).expect("web task on node-2");
    let mut seen = BTreeSet::new();
    wait_until(
        Duration::from_secs(30),
        "web on node-2 reached both api tasks by name",
        || {
            if let Some(host) = exec(&web2, "timeout 3 wget -q -O- http://api/") {
                seen.insert(host);
            }
            seen.len() == 2
        },
    );
    let tasks = exec(&web2, "nslookup tasks.api 2>/dev/null").unwrap_or_default();
    let addrs = tasks
        .lines()
        .filter(|l| l.starts_with("Address") && !l.contains("#53") && !l.contains(":53"))
        .count();
    assert_eq!(addrs, 2, "tasks.api should list both tasks:\n{tasks}");
    // Large transfers cross the overlay too (MTU): 200 kB from the api task on node-3.
    let api3 = container_on("api", &n3).expect("api task on node-3");
    let api3_addr = exec(&api3, "hostname -i").expect("api address");
    assert!(exec(&api3, "head -c 200000 /dev/zero > /www/big && echo ok").is_some());
    let got = exec(
        &web2,
        &format!("timeout 5 wget -q -O- http://{api3_addr}/big | wc -c"),
    );
    assert_eq!(got.as_deref(), Some("200000"), "200 kB across nodes");

    phase("by name across nodes done");
    // The routing mesh: node-1 runs no task, yet its published port answers, from both web
    // tasks, and the tasks see the client's own address.
    for node in [1, 2, 3] {
        let url = format!("http://{}:8080/cgi-bin/whoami", c.node(node).ip);
        let mut hosts = BTreeSet::new();
        wait_until(
            Duration::from_secs(30),
            &format!("both web tasks answered through node-{node}"),
            || {
                if let Some(body) = c.client_get(&url) {
                    assert!(
                        body.contains(CLIENT),
                        "the task saw another source than the client {CLIENT}: {body}"
                    );
                    hosts.insert(body.split_whitespace().next().unwrap_or("").to_string());
                }
                hosts.len() == 2
            },
        );
    }

    phase("mesh done");
    // The manager's daemon restarts (kill -9, then a new process on its data): its published
    // port answers throughout, from the rules the old process left until the new one has
    // replaced them with its first assignments.
    let url = format!("http://{}:8080/", c.node(1).ip);
    let probing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let prober = {
        let (probing, answered, url) = (probing.clone(), answered.clone(), url.clone());
        let hub = format!("--net=/run/netns/{}", c.hub.name);
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let t0 = std::time::Instant::now();
            while probing.load(std::sync::atomic::Ordering::Relaxed) {
                let got = Command::new("nsenter")
                    .args([hub.as_str(), "curl", "-s", "-f", "-m", "1", &url])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if got {
                    ok += 1;
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    failed.push(format!("{:.2}s", t0.elapsed().as_secs_f64()));
                }
                // The probing rate, not a wait for anything.
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, failed)
        })
    };
    let answers_so_far = || answered.load(std::sync::atomic::Ordering::Relaxed);
    // The prober is under way (a few answers) before the restart.
    wait_for(
        Duration::from_secs(20),
        "the prober's first answers",
        || match answers_so_far() {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} answers")),
        },
    );
    c.node_mut(1).restart_daemon();
    wait_replicas(c.node(1), &[("web", "2/2")]);
    // And it goes on answering while the new process replaces the old rules with its first
    // assignments: thirty more answers (about three seconds of probing; the subject here is
    // "no probe fails for a while", so this counts probes rather than waiting for a state).
    let after = answers_so_far();
    wait_for(
        Duration::from_secs(30),
        "thirty answers after the restart",
        || match answers_so_far() - after {
            n if n >= 30 => Ok(()),
            n => Err(format!("{n} answers since")),
        },
    );
    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = prober.join().expect("prober thread");
    assert!(
        failed.is_empty() && ok > 10,
        "node-1:8080 through its daemon's restart: {ok} answered, failed at {failed:?}"
    );
    let m = c.node(1);

    phase("daemon restart survived");
    // A node's own connections to a task on another node: node-1 (no task of web) reaches the
    // web task on node-2 at its ingress address and through web's ingress VIP, and node-2
    // reaches the api task on node-3 at its appnet address.
    let web2_ingress = engine_addr(&web2, "-ingress").expect("web's ingress address");
    let ingress_id = m.ok(&["network", "inspect", "ingress", "--format", "{{.Id}}"]);
    let web_vip = m
        .ok(&[
            "service",
            "inspect",
            "web",
            "--format",
            "{{range .Endpoint.VirtualIPs}}{{.NetworkID}} {{.Addr}}\n{{end}}",
        ])
        .lines()
        .find_map(|l| {
            let (net, addr) = l.split_once(' ')?;
            (net == ingress_id.trim()).then(|| addr.split('/').next().unwrap_or(addr).to_string())
        })
        .expect("web's VIP on ingress");
    for (node, url) in [
        (1, format!("http://{web2_ingress}/")),
        (1, format!("http://{web_vip}/")),
        (2, format!("http://{api3_addr}/")),
    ] {
        wait_until(
            Duration::from_secs(15),
            &format!("node-{node} itself reached {url} on another node"),
            || {
                !c.node(node)
                    .sh(&["curl", "-s", "-f", "-m", "3", &url])
                    .is_empty()
            },
        );
    }

    phase("node-originated connections done");
    // Isolation: from appnet, lone (on other) neither resolves nor answers at its address.
    let lone = container_on("lone", &n2)
        .or_else(|| container_on("lone", &n3))
        .expect("lone's task");
    let lone_addr = exec(&lone, "hostname -i").expect("lone's address");
    assert!(
        exec(&web2, "nslookup lone >/dev/null 2>&1").is_none(),
        "lone resolved from appnet"
    );
    assert!(
        exec(&web2, &format!("timeout 3 wget -q -O- http://{lone_addr}/")).is_none(),
        "appnet reached lone's address {lone_addr} on another network"
    );

    phase("isolation done");
    // Losing node-3 (one web and one api task): node-1's published port keeps answering.
    c.node_mut(3).kill();
    let m = c.node(1);
    let url = format!("http://{}:8080/", m.ip);
    let mut in_a_row = 0;
    wait_until(
        Duration::from_secs(30),
        "node-1:8080 answered 20 times in a row after node-3 died",
        || {
            if c.client_get(&url).is_some() {
                in_a_row += 1;
            } else {
                in_a_row = 0;
            }
            in_a_row >= 20
        },
    );
    wait_replicas(m, &[("api", "2/2"), ("web", "2/2")]);

    phase("node loss survived");
    // Cleanup: with the services and networks gone, the nodes keep no bridge, VXLAN device,
    // engine network or load-balancing rule of theirs.
    for s in ["web", "api", "lone"] {
        m.ok(&["service", "rm", s]);
    }
    m.ok(&["network", "rm", "appnet", "other"]);
    for i in [1, 2] {
        let n = c.node(i);
        let tag: String = n.node_id().chars().take(12).collect();
        wait_for(
            Duration::from_secs(30),
            &format!("node-{i} cleaned up"),
            || {
                let left = [links(n, "shl-"), links(n, "shx-"), links(n, "shv-")].concat();
                let nets = String::from_utf8_lossy(
                    &Command::new("docker")
                        .args(["network", "ls", "--format", "{{.Name}}"])
                        .output()
                        .expect("docker network ls")
                        .stdout,
                )
                .lines()
                .filter(|l| l.starts_with(&format!("shoal-{tag}-")))
                .map(str::to_string)
                .collect::<Vec<_>>();
                let table = n.sh(&["nft", "list", "table", "ip", &format!("shoal_{tag}")]);
                let chains = table.lines().filter(|l| l.contains("chain svc_")).count();
                if left.is_empty() && nets.is_empty() && chains == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "links {left:?}, networks {nets:?}, {chains} service chains"
                    ))
                }
            },
        );
    }
    phase("cleaned up");
}

/// The container of `docker run --name <name>` on the shared engine.
fn engine_container(name: &str) -> Option<String> {
    engine(&["ps", "-q", "--filter", &format!("name=^{name}$")])?
        .lines()
        .next()
        .map(str::to_string)
}

#[test]
fn plain_containers_join_attachable_networks_on_managers_and_workers() {
    let c = Cluster::start("attach", 2);
    c.form(1);
    let m = c.node(1);
    m.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "attnet",
    ]);
    m.ok(&["network", "create", "-d", "overlay", "closed"]);
    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "api",
        "--network",
        "attnet",
        "--constraint",
        "node.hostname==node-2",
        "shoal-test/web",
    ]);
    wait_replicas(m, &[("api", "1/1")]);
    let n2 = c.node(2).node_id();
    let api = container_on("api", &n2).expect("api task on node-2");
    let api_addr = exec(&api, "hostname -i").expect("api's address");

    // On the manager (node-1, no task there): a plain container on attnet reaches api on
    // node-2 by its service name (the VIP), through tasks.api, and at its address.
    m.ok(&[
        "run",
        "--pull",
        "never",
        "-d",
        "--name",
        "probe1",
        "--network",
        "attnet",
        "shoal-test/busybox",
        "sleep",
        "300",
    ]);
    let probe1 = engine_container("probe1").expect("probe1 on the engine");
    let probe1_addr = exec(&probe1, "hostname -i").unwrap_or_default();
    assert!(
        probe1_addr.starts_with(api_addr.rsplit_once('.').map_or("", |(a, _)| a)),
        "probe1 ({probe1_addr}) is not on attnet's subnet (api at {api_addr})"
    );
    for url in [
        "http://api/",
        "http://tasks.api/",
        &format!("http://{api_addr}/"),
    ] {
        wait_until(
            Duration::from_secs(20),
            &format!("probe1 on node-1 reached {url}"),
            || exec(&probe1, &format!("timeout 3 wget -q -O- {url}")).is_some(),
        );
    }
    // The other way: api's task reaches the attached container at its address.
    assert!(
        exec(&api, &format!("ping -c 1 -W 2 {probe1_addr}")).is_some(),
        "api on node-2 could not reach probe1 at {probe1_addr}"
    );

    // On the worker, through its own socket, a one-off `docker run --rm`.
    let out = c.node(2).ok(&[
        "run",
        "--pull",
        "never",
        "--rm",
        "--network",
        "attnet",
        "shoal-test/busybox",
        "sh",
        "-c",
        "timeout 3 wget -q -O- http://api/",
    ]);
    assert!(
        !out.trim().is_empty(),
        "docker run on the worker got no answer from api"
    );

    // Refusals name the network and the reason, and create nothing; a network neither the
    // swarm nor the engine knows gets the engine's own answer.
    for (net, why) in [
        ("closed", "not manually attachable"),
        ("nosuchnet", "not found"),
    ] {
        let err = m.fails(&[
            "run",
            "--pull",
            "never",
            "--rm",
            "--network",
            net,
            "shoal-test/busybox",
            "true",
        ]);
        assert!(
            err.contains(net) && err.contains(why),
            "docker run --network {net}: {err}"
        );
    }

    // Removing the container gives its address back: with api gone too, node-1 no longer
    // carries attnet.
    m.ok(&["rm", "-f", "probe1"]);
    m.ok(&["service", "rm", "api"]);
    wait_for(
        Duration::from_secs(30),
        "node-1 dropped attnet after its container went",
        || {
            let left = links(m, "shl-").len();
            // Only ingress may remain (it has no task either, so none at all is expected).
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} bridges left: {:?}", links(m, "shl-")))
            }
        },
    );
    let tasks = m.ok(&["network", "rm", "attnet", "closed"]);
    assert!(tasks.contains("attnet"));
}
