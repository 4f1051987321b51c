//! Several nodes, each a real daemon in its own network namespace, driven by the docker CLI:
//! joining, spreading tasks, losing a node, draining, and managers replacing a lost leader.

mod common;

use common::cluster::{Cluster, ClusterNode};
use common::{wait_for, wait_until};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `docker node ls` as name -> (status, availability, manager status).
fn nodes(n: &ClusterNode) -> HashMap<String, (String, String, String)> {
    n.ok(&[
        "node",
        "ls",
        "--format",
        "{{.Hostname}}|{{.Status}}|{{.Availability}}|{{.ManagerStatus}}",
    ])
    .lines()
    .filter_map(|l| {
        let p: Vec<&str> = l.split('|').collect();
        (p.len() == 4).then(|| {
            (
                p[0].to_string(),
                (p[1].to_string(), p[2].to_string(), p[3].to_string()),
            )
        })
    })
    .collect()
}

/// Waits until `node` is down and the service's running tasks per node satisfy `pred`.
fn wait_down_and(
    n: &ClusterNode,
    node: &str,
    service: &str,
    pred: impl Fn(&HashMap<String, usize>) -> bool,
) {
    wait_for(
        Duration::from_secs(30),
        &format!("{node} down, tasks moved"),
        || {
            let per = running_per_node(n, service);
            let down = nodes(n).get(node).is_some_and(|x| x.0 == "Down");
            if down && pred(&per) {
                Ok(())
            } else {
                Err(format!("down={down} {per:?}"))
            }
        },
    );
}

/// Running tasks of a service per node name.
fn running_per_node(n: &ClusterNode, service: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for l in n
        .ok(&[
            "service",
            "ps",
            service,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}}|{{.CurrentState}}",
        ])
        .lines()
    {
        if let Some((node, state)) = l.split_once('|') {
            if state.starts_with("Running") {
                *out.entry(node.to_string()).or_default() += 1;
            }
        }
    }
    out
}

#[test]
fn workers_join_run_tasks_and_survive_node_loss() {
    let mut c = Cluster::start("workers", 3);
    let n1 = c.node(1);
    n1.ok(&["swarm", "init", "--advertise-addr", &n1.ip]);
    let worker = n1.ok(&["swarm", "join-token", "-q", "worker"]);
    let worker = worker.trim().to_string();
    let shown = n1.ok(&["swarm", "join-token", "worker"]);
    assert!(
        shown.contains(&format!(
            "docker swarm join --token {worker} 10.99.0.1:2377"
        )),
        "{shown}"
    );

    // Refused: a token with the right CA but a made-up secret, and one naming another CA.
    let (prefix, _) = worker.rsplit_once('-').unwrap();
    let forged = format!("{prefix}-{}", "0".repeat(25));
    let e = c
        .node(2)
        .fails(&["swarm", "join", "--token", &forged, "10.99.0.1:2377"]);
    assert!(e.contains("join token"), "{e}");
    let other_ca = format!(
        "SWMTKN-1-{}-{}",
        "1".repeat(50),
        worker.rsplit_once('-').unwrap().1
    );
    let e = c
        .node(2)
        .fails(&["swarm", "join", "--token", &other_ca, "10.99.0.1:2377"]);
    assert!(
        e.to_lowercase().contains("could not join") || e.contains("CA"),
        "{e}"
    );
    assert!(
        c.node(1).log_tail(200).contains("refused"),
        "refusal logged with its reason"
    );

    for i in [2, 3] {
        let n = c.node(i);
        n.ok(&[
            "swarm",
            "join",
            "--token",
            &worker,
            "--advertise-addr",
            &n.ip,
            "10.99.0.1:2377",
        ]);
    }
    wait_for(Duration::from_secs(20), "three ready nodes", || {
        let ls = nodes(c.node(1));
        let ready = ls.values().filter(|(s, _, _)| s == "Ready").count();
        if ready == 3 && ls.get("node-1").is_some_and(|n| n.2 == "Leader") {
            Ok(())
        } else {
            Err(format!("{ls:?}"))
        }
    });
    // A worker is not a manager, and Swarm tells it so in its own words.
    let e = c.node(2).fails(&["node", "ls"]);
    assert!(
        e.contains("This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager."),
        "{e}"
    );
    let info = c.node(2).ok(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ]);
    assert_eq!(info.trim(), "active false");

    // Tasks spread over the three nodes.
    c.node(1).ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "spread",
        "--replicas",
        "6",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    wait_for(
        Duration::from_secs(60),
        "6 tasks running, 2 per node",
        || {
            let per = running_per_node(c.node(1), "spread");
            if per.len() == 3 && per.values().all(|n| *n == 2) {
                Ok(())
            } else {
                Err(format!("{per:?}"))
            }
        },
    );

    // Per-node views: a node's tasks, and the human-readable inspect.
    let ps3 = c
        .node(1)
        .ok(&["node", "ps", "node-3", "--format", "{{.Name}} {{.Node}}"]);
    assert_eq!(ps3.lines().count(), 2, "{ps3}");
    assert!(ps3.lines().all(|l| l.ends_with(" node-3")), "{ps3}");
    let pretty = c.node(1).ok(&["node", "inspect", "--pretty", "node-1"]);
    assert!(
        pretty.contains("Manager Status:") && pretty.contains("Leader"),
        "{pretty}"
    );

    // Jobs across nodes: a global job completes once on each of the three; a replicated job
    // kept off node-1 by a constraint completes its four tasks on the other two.
    let out = c.node(1).ok(&[
        "service",
        "create",
        "--name",
        "each",
        "--mode",
        "global-job",
        "shoal-test/busybox",
        "true",
    ]);
    assert!(out.contains("job complete"), "{out}");
    let done_on = |svc: &str| -> Vec<String> {
        let mut v: Vec<String> = c
            .node(1)
            .ok(&[
                "service",
                "ps",
                svc,
                "--format",
                "{{.Node}} {{.CurrentState}}",
            ])
            .lines()
            .filter(|l| l.contains(" Complete "))
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(done_on("each"), vec!["node-1", "node-2", "node-3"]);
    let out = c.node(1).ok(&[
        "service",
        "create",
        "--name",
        "batch",
        "--mode",
        "replicated-job",
        "--replicas",
        "4",
        "--max-concurrent",
        "2",
        "--constraint",
        "node.hostname!=node-1",
        "shoal-test/busybox",
        "true",
    ]);
    assert!(out.contains("job complete"), "{out}");
    let on = done_on("batch");
    assert_eq!(on.len(), 4, "{on:?}");
    assert!(on.iter().all(|n| n != "node-1"), "{on:?}");
    c.node(1).ok(&["service", "rm", "each", "batch"]);

    // Spread over a node label: zone a is node-1 alone, zone b nodes 2 and 3. Six replicas go
    // three to each zone, so node-1 runs three (a spread by node alone would give it two).
    for (n, zone) in [("node-1", "a"), ("node-2", "b"), ("node-3", "b")] {
        c.node(1)
            .ok(&["node", "update", "--label-add", &format!("zone={zone}"), n]);
    }
    c.node(1).ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "zoned",
        "--replicas",
        "6",
        "--placement-pref",
        "spread=node.labels.zone",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    wait_for(Duration::from_secs(60), "zoned: 3 in each zone", || {
        let per = running_per_node(c.node(1), "zoned");
        let b = per.get("node-2").copied().unwrap_or(0) + per.get("node-3").copied().unwrap_or(0);
        if per.get("node-1") == Some(&3) && b == 3 {
            Ok(())
        } else {
            Err(format!("{per:?}"))
        }
    });
    c.node(1).ok(&["service", "rm", "zoned"]);

    // Node 3 dies with its containers: it is marked down and its tasks run elsewhere.
    let lost = Instant::now();
    c.node_mut(3).kill();
    wait_down_and(c.node(1), "node-3", "spread", |per| {
        per.values().sum::<usize>() == 6 && !per.contains_key("node-3")
    });
    eprintln!("node loss: 6/6 running again after {:?}", lost.elapsed());

    // It comes back: ready again, and it runs none of its old tasks (no 7th replica).
    c.node_mut(3).spawn();
    wait_until(Duration::from_secs(30), "node-3 ready again", || {
        nodes(c.node(1))
            .get("node-3")
            .is_some_and(|n| n.0 == "Ready")
    });
    // The subject is that nothing starts on it: a fixed look two seconds after it is ready.
    std::thread::sleep(Duration::from_secs(2));
    let running_on_3 = c
        .node(3)
        .containers()
        .into_iter()
        .filter(|(id, _)| {
            let out = std::process::Command::new("docker")
                .args([
                    "-H",
                    "unix:///var/run/docker.sock",
                    "inspect",
                    "-f",
                    "{{.State.Running}}",
                    id,
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim() == "true"
        })
        .count();
    assert_eq!(
        running_on_3, 0,
        "stale tasks on the returning node are not running"
    );
    assert_eq!(
        running_per_node(c.node(1), "spread")
            .values()
            .sum::<usize>(),
        6
    );

    // Drain node 2: its tasks move to node 1 (node 3 is active again and may take some too).
    c.node(1)
        .ok(&["node", "update", "--availability", "drain", "node-2"]);
    wait_for(Duration::from_secs(30), "node-2 drained", || {
        let per = running_per_node(c.node(1), "spread");
        if !per.contains_key("node-2") && per.values().sum::<usize>() == 6 {
            Ok(())
        } else {
            Err(format!("{per:?}"))
        }
    });
    assert_eq!(nodes(c.node(1))["node-2"].1, "Drain");

    c.node(1)
        .ok(&["node", "update", "--availability", "active", "node-2"]);

    // Roles: the last manager cannot go; a promoted worker joins raft; demoted, it leaves it.
    let e = c.node(1).fails(&["node", "demote", "node-1"]);
    assert!(e.contains("last manager"), "{e}");
    c.node(1).ok(&["node", "promote", "node-2"]);
    wait_for(
        Duration::from_secs(30),
        "node-2 a reachable manager",
        || {
            let ls = nodes(c.node(1));
            if ls.get("node-2").is_some_and(|n| n.2 == "Reachable") {
                Ok(())
            } else {
                Err(format!("{ls:?}"))
            }
        },
    );
    wait_until(
        Duration::from_secs(20),
        "node-2 answers as a manager",
        || c.node(2).docker(&["node", "ls"]).status.success(),
    );
    let e = c.node(1).fails(&["node", "rm", "node-2"]);
    assert!(e.contains("demoted"), "{e}");
    // A manager of two may not leave without --force: Swarm counts what it would lose.
    let e = c.node(2).fails(&["swarm", "leave"]);
    assert!(
        e.contains("You are attempting to leave the swarm on a node that is participating as a manager. Removing this node leaves 1 managers out of 2. Without a Raft quorum your swarm will be inaccessible. The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message."),
        "{e}"
    );
    c.node(1).ok(&["node", "demote", "node-2"]);
    wait_for(Duration::from_secs(30), "node-2 a worker again", || {
        let ls = nodes(c.node(1));
        let out = c.node(2).docker(&["node", "ls"]);
        if ls.get("node-2").is_some_and(|n| n.2.is_empty()) && !out.status.success() {
            Ok(())
        } else {
            Err(format!("{ls:?}"))
        }
    });

    // A removed node's certificate is refused when it comes back.
    let e = c.node(1).fails(&["node", "rm", "node-3"]);
    assert!(e.contains("not down"), "{e}");
    c.node_mut(3).kill();
    wait_until(Duration::from_secs(20), "node-3 down", || {
        nodes(c.node(1))
            .get("node-3")
            .is_some_and(|n| n.0 == "Down")
    });
    c.node(1).ok(&["node", "rm", "node-3"]);
    c.node_mut(3).spawn();
    wait_until(
        Duration::from_secs(20),
        "the removed node is refused",
        || {
            c.node(1)
                .log_tail(400)
                .contains("was removed from the swarm")
        },
    );
    assert!(!nodes(c.node(1)).contains_key("node-3"));

    // A worker leaves; its containers go with it.
    c.node(2).ok(&["swarm", "leave"]);
    wait_until(Duration::from_secs(20), "node-2 containers removed", || {
        c.node(2).containers().is_empty()
    });
    wait_for(Duration::from_secs(30), "6 running on node-1", || {
        let per = running_per_node(c.node(1), "spread");
        if per.get("node-1") == Some(&6) {
            Ok(())
        } else {
            Err(format!("{per:?}"))
        }
    });
    c.node(1).ok(&["service", "rm", "spread"]);
}

#[test]
fn managers_replicate_and_replace_a_lost_leader() {
    let mut c = Cluster::start("managers", 3);
    c.form(3);
    wait_for(
        Duration::from_secs(30),
        "three managers, one leader",
        || {
            let ls = nodes(c.node(1));
            let leaders = ls.values().filter(|n| n.2 == "Leader").count();
            let reachable = ls.values().filter(|n| n.2 == "Reachable").count();
            if leaders == 1 && reachable == 2 {
                Ok(())
            } else {
                Err(format!("{ls:?}"))
            }
        },
    );
    // Any manager answers, with the same state.
    c.node(2).ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "3",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    let ls3 = c.node(3).ok(&["service", "ls", "--format", "{{.Name}}"]);
    assert!(
        ls3.contains("web"),
        "a follower reads its own write's result: {ls3}"
    );
    wait_for(Duration::from_secs(60), "3 running", || {
        let per = running_per_node(c.node(1), "web");
        if per.values().sum::<usize>() == 3 {
            Ok(())
        } else {
            Err(format!("{per:?}"))
        }
    });

    // The leader (node 1) dies: the others elect a new one and keep taking writes.
    let t = Instant::now();
    c.node_mut(1).kill();
    wait_until(Duration::from_secs(20), "a write is accepted again", || {
        c.node(2)
            .docker(&["service", "update", "-d", "--label-add", "k=v", "web"])
            .status
            .success()
    });
    eprintln!("leader loss: write accepted after {:?}", t.elapsed());
    wait_for(
        Duration::from_secs(30),
        "node-1 down, 3 running elsewhere",
        || {
            let per = running_per_node(c.node(2), "web");
            let ls = nodes(c.node(2));
            let n1 = ls.get("node-1").cloned().unwrap_or_default();
            if n1.0 == "Down"
                && n1.2 == "Unreachable"
                && per.values().sum::<usize>() == 3
                && !per.contains_key("node-1")
            {
                Ok(())
            } else {
                Err(format!("{ls:?} {per:?}"))
            }
        },
    );

    // Two of three gone: no quorum, writes fail clearly, the last tasks keep running.
    c.node_mut(2).kill();
    let e = c.node(3).fails(&["service", "scale", "-d", "web=5"]);
    assert!(e.contains("quorum") || e.contains("leader"), "{e}");
    assert!(!c.node(3).containers().is_empty());

    // The survivor recovers the swarm from its own state.
    c.node(3).ok(&["swarm", "init", "--force-new-cluster"]);
    c.node(3).ok(&["service", "scale", "-d", "web=5"]);
    wait_for(Duration::from_secs(60), "5 running on node-3", || {
        let per = running_per_node(c.node(3), "web");
        if per.get("node-3") == Some(&5) {
            Ok(())
        } else {
            Err(format!("{per:?}"))
        }
    });
    let ls = nodes(c.node(3));
    assert_eq!(ls["node-3"].2, "Leader", "{ls:?}");
    assert_eq!(ls["node-2"].0, "Down", "{ls:?}");
    // An old manager that comes back is told it is a worker now, and the new leader stays.
    c.node_mut(2).spawn();
    wait_for(Duration::from_secs(30), "node-2 back as a worker", || {
        let ls = nodes(c.node(3));
        let n2 = ls.get("node-2").cloned().unwrap_or_default();
        let out = c.node(2).docker(&["node", "ls"]);
        if n2.0 == "Ready" && n2.2.is_empty() && !out.status.success() {
            Ok(())
        } else {
            Err(format!("{ls:?}"))
        }
    });
    assert_eq!(nodes(c.node(3))["node-3"].2, "Leader");
    c.node(3).ok(&["service", "rm", "web"]);
}

#[test]
fn a_partitioned_worker_is_marked_down_and_comes_back() {
    let c = Cluster::start("partition", 2);
    c.form(1);
    c.node(1)
        .ok(&["swarm", "update", "--dispatcher-heartbeat", "1s"]);
    let hb = c.node(1).ok(&[
        "info",
        "--format",
        "{{.Swarm.Cluster.Spec.Dispatcher.HeartbeatPeriod}}",
    ]);
    assert_eq!(hb.trim(), "1s", "heartbeat period stored");
    c.node(1).ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "p",
        "--replicas",
        "4",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    wait_for(Duration::from_secs(60), "2 running per node", || {
        let per = running_per_node(c.node(1), "p");
        if per.get("node-1") == Some(&2) && per.get("node-2") == Some(&2) {
            Ok(())
        } else {
            Err(format!("{per:?}"))
        }
    });

    // Cut off (no connection reset: only missing heartbeats tell): down after 3 periods.
    let t = Instant::now();
    c.node(2).cut();
    wait_down_and(c.node(1), "node-2", "p", |per| {
        per.get("node-1") == Some(&4)
    });
    eprintln!(
        "partition: node-2 down and tasks moved after {:?}",
        t.elapsed()
    );
    // Its containers still run meanwhile: it cannot know yet.
    assert!(!c.node(2).containers().is_empty());

    // Healed: it reconnects, is ready again, and stops the tasks that were replaced.
    c.node(2).heal();
    wait_until(Duration::from_secs(30), "node-2 ready again", || {
        nodes(c.node(1))
            .get("node-2")
            .is_some_and(|n| n.0 == "Ready")
    });
    wait_until(
        Duration::from_secs(30),
        "stale tasks on node-2 stopped",
        || {
            c.node(2).containers().into_iter().all(|(id, _)| {
                let out = std::process::Command::new("docker")
                    .args([
                        "-H",
                        "unix:///var/run/docker.sock",
                        "inspect",
                        "-f",
                        "{{.State.Running}}",
                        &id,
                    ])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim() != "true"
            })
        },
    );
    let per = running_per_node(c.node(1), "p");
    assert_eq!(per.values().sum::<usize>(), 4, "{per:?}");
    c.node(1).ok(&["service", "rm", "p"]);
}

/// Whether the engine says this container runs.
fn container_running(id: &str) -> bool {
    let out = std::process::Command::new("docker")
        .args([
            "-H",
            "unix:///var/run/docker.sock",
            "inspect",
            "-f",
            "{{.State.Running}}",
            id,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "true"
}

#[test]
fn containers_no_longer_desired_after_a_downtime_are_stopped_and_removed() {
    let mut c = Cluster::start("orphans", 2);
    c.form(1);
    for (name, replicas) in [("gone", "2"), ("scaled", "2"), ("ended", "1")] {
        c.node(1).ok(&[
            "service",
            "create",
            "-d",
            "--name",
            name,
            "--replicas",
            replicas,
            "--stop-grace-period",
            "1s",
            "--constraint",
            "node.hostname==node-2",
            "shoal-test/busybox",
            "sleep",
            "3600",
        ]);
    }
    let running_on_2 = |c: &Cluster| -> Vec<(String, String)> {
        c.node(2)
            .containers()
            .into_iter()
            .filter(|(id, _)| container_running(id))
            .collect()
    };
    wait_for(
        Duration::from_secs(60),
        "5 tasks running on node-2",
        || match running_on_2(&c).len() {
            5 => Ok(()),
            n => Err(format!("{n} running")),
        },
    );
    // One task is replaced (a forced update): its stopped container stays as the old task's
    // history, and the new task runs beside it.
    let first_ended: Vec<String> = running_on_2(&c)
        .into_iter()
        .filter(|(_, name)| name.starts_with("ended."))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(first_ended.len(), 1);
    let ended = first_ended[0].clone();
    c.node(1)
        .ok(&["service", "update", "-d", "--force", "ended"]);
    wait_for(Duration::from_secs(30), "ended's task replaced", || {
        let now = running_on_2(&c);
        let replaced = now
            .iter()
            .any(|(id, name)| name.starts_with("ended.") && *id != ended);
        if replaced && !container_running(&ended) && now.len() == 5 {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
    let before: Vec<(String, String)> = c.node(2).containers();
    assert!(
        before.iter().any(|(id, _)| *id == ended),
        "the old task's container is kept as history: {before:?}"
    );
    let replacement: String = running_on_2(&c)
        .into_iter()
        .find(|(id, name)| name.starts_with("ended.") && *id != ended)
        .map(|(id, _)| id)
        .unwrap();

    // The worker's daemon dies (its containers run on). Meanwhile one service is removed, one
    // scaled to nothing, and the ended task's container is started again behind the
    // daemon's back (as a daemon killed while stopping an unhealthy task leaves it running).
    c.node_mut(2).kill_daemon();
    c.node(1).ok(&["service", "rm", "gone"]);
    c.node(1).ok(&["service", "scale", "-d", "scaled=0"]);
    let st = std::process::Command::new("docker")
        .args(["-H", "unix:///var/run/docker.sock", "start", &ended])
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    assert!(container_running(&ended));

    c.node_mut(2).spawn();
    let t = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "node-2's stale containers gone",
        || {
            let left: Vec<String> = c
                .node(2)
                .containers()
                .into_iter()
                .filter(|(id, name)| {
                    before.iter().any(|(b, _)| b == id)
                        && *id != replacement
                        && (name.starts_with("gone.") || container_running(id))
                })
                .map(|(_, name)| name)
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "left: {left:?}; before {before:?}, old {ended}, new {replacement}"
                ))
            }
        },
    );
    eprintln!(
        "orphans: stopped and removed {:?} after the restart",
        t.elapsed()
    );
    assert!(c.node_mut(2).daemon_running());
    assert!(
        container_running(&replacement),
        "the task that is still desired keeps its container"
    );
    assert_eq!(
        c.node(1)
            .ok(&[
                "service",
                "ls",
                "--filter",
                "name=ended",
                "--format",
                "{{.Replicas}}"
            ])
            .trim(),
        "1/1"
    );
    let ps = c.node(1).ok(&[
        "service",
        "ps",
        "scaled",
        "--format",
        "{{.DesiredState}} {{.CurrentState}}",
    ]);
    assert!(
        ps.lines().all(|l| !l.contains("Running Running")),
        "no task of the scaled-down service runs: {ps}"
    );
}

/// Running containers of a service across the machine's engine, as names.
fn running_names(service: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "-H",
            "unix:///var/run/docker.sock",
            "ps",
            "--filter",
            &format!("label=com.docker.swarm.service.name={service}"),
            "--filter",
            "status=running",
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// xorshift64: the test's random moments, reproducible from the printed seed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Running containers per slot of each service: (services not at their count, slots with two).
fn census(want: &[(&str, usize)]) -> (Vec<String>, Vec<String>) {
    let mut short = Vec::new();
    let mut dup = Vec::new();
    for (service, n) in want {
        let names = running_names(service);
        let mut per_slot: HashMap<String, usize> = HashMap::new();
        for name in &names {
            let slot = name.split('.').nth(1).unwrap_or("").to_string();
            *per_slot.entry(slot).or_default() += 1;
        }
        dup.extend(
            per_slot
                .iter()
                .filter(|(_, c)| **c > 1)
                .map(|(s, _)| format!("{service}.{s}")),
        );
        if names.len() != *n {
            short.push(format!("{service}: {} running of {n}", names.len()));
        }
    }
    (short, dup)
}

/// A stack of two services, deployed again each round with other replica counts.
fn crash_stack(round: usize) -> (String, [(&'static str, usize); 2]) {
    let (a, b) = [(2usize, 3usize), (3, 1), (1, 2)][round % 3];
    let yml = format!(
        "version: \"3.8\"\nservices:\n  a:\n    image: shoal-test/busybox\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: {a}\n  b:\n    image: shoal-test/busybox\n    command: [\"sleep\", \"3601\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: {b}\n"
    );
    (yml, [("crash_a", a), ("crash_b", b)])
}

/// `kill -9` of a random node's daemon at a random moment while work is in flight, then the
/// same command again: it comes back, rejoins, and everything converges with exactly one
/// running container per slot. The work is a service scaled (and every other round force-
/// updated), or with SHOAL_CRASH_WORK=stack a `docker stack deploy` of two services run again
/// with other replica counts (re-run after the round when the kill cut it short). SHOAL_SEED
/// replays a run; SHOAL_CRASH_ROUNDS sets the rounds (bench/crash.sh runs many).
#[test]
fn kill9_at_random_moments_comes_back_without_duplicates() {
    let seed: u64 = std::env::var("SHOAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    let rounds: usize = std::env::var("SHOAL_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let stack = std::env::var("SHOAL_CRASH_WORK").is_ok_and(|w| w == "stack");
    eprintln!(
        "crash: seed {seed} (SHOAL_SEED={seed} replays it), {rounds} rounds of {}",
        if stack {
            "stack deploys"
        } else {
            "scales and updates"
        }
    );
    let mut rng = seed;
    let service = "crashsvc";
    let mut c = Cluster::start("crash", 2);
    c.form(1);
    let converged = |c: &Cluster, want: &[(&str, usize)]| -> Result<(), String> {
        let (short, dup) = census(want);
        let ready = nodes(c.node(1)).values().filter(|n| n.0 == "Ready").count();
        let mut replicas_ok = true;
        for (s, n) in want {
            let out = c.node(1).docker(&[
                "service",
                "ls",
                "--filter",
                &format!("name={s}"),
                "--format",
                "{{.Name}} {{.Replicas}}",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            replicas_ok &= text.lines().any(|l| l == format!("{s} {n}/{n}"));
        }
        if short.is_empty() && dup.is_empty() && ready == 2 && replicas_ok {
            Ok(())
        } else {
            Err(format!(
                "{short:?}, slots with two: {dup:?}, {ready} nodes ready, replicas as wanted: {replicas_ok}"
            ))
        }
    };
    let compose = c.nodes[0].dir.join("crash-stack.yml");
    if !stack {
        c.node(1).ok(&[
            "service",
            "create",
            "-d",
            "--name",
            service,
            "--replicas",
            "4",
            "--stop-grace-period",
            "1s",
            "shoal-test/busybox",
            "sleep",
            "3600",
        ]);
        wait_for(Duration::from_secs(60), "the service runs", || {
            converged(&c, &[(service, 4)])
        });
    }
    let mut worst = Duration::ZERO;
    for round in 0..rounds {
        let victim = 1 + (next_random(&mut rng) % 2) as usize;
        let delay = Duration::from_millis(next_random(&mut rng) % 1500);
        let mut redeploy = None;
        let (want, what): (Vec<(&str, usize)>, String) = if stack {
            let (yml, want) = crash_stack(round);
            std::fs::write(&compose, yml).unwrap();
            // The deploy runs while the kill lands (the CLI may fail when it hits node-1).
            let child = std::process::Command::new("docker")
                .args(["stack", "deploy", "-d", "-c"])
                .arg(&compose)
                .arg("crash")
                .env(
                    "DOCKER_HOST",
                    format!("unix://{}", c.node(1).socket.display()),
                )
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            redeploy = Some(child);
            (
                want.to_vec(),
                format!("a stack deploy of a={} b={}", want[0].1, want[1].1),
            )
        } else {
            let want = [6usize, 3, 5][round % 3];
            // Work in flight when the kill lands: a scale, and every other round a forced update.
            c.node(1)
                .ok(&["service", "scale", "-d", &format!("{service}={want}")]);
            if round % 2 == 1 {
                c.node(1)
                    .ok(&["service", "update", "-d", "--force", service]);
            }
            (
                vec![(service, want)],
                format!(
                    "a scale to {want}{}",
                    if round % 2 == 1 { " and an update" } else { "" }
                ),
            )
        };
        // A random moment, not a condition: where the kill lands is the point of the test.
        std::thread::sleep(delay);
        c.node_mut(victim).kill_daemon();
        c.node_mut(victim).spawn();
        let t = Instant::now();
        if let Some(child) = redeploy.take() {
            let out = child.wait_with_output().unwrap();
            if !out.status.success() {
                eprintln!(
                    "crash: round {round}: the deploy was cut short ({}); deploying again",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                let again = c.node(1).docker(&[
                    "stack",
                    "deploy",
                    "-d",
                    "-c",
                    compose.to_str().unwrap(),
                    "crash",
                ]);
                assert!(
                    again.status.success(),
                    "{}",
                    String::from_utf8_lossy(&again.stderr)
                );
            }
        }
        wait_for(
            Duration::from_secs(90),
            &format!("round {round}: node-{victim} killed after {delay:?}, converged"),
            || converged(&c, &want),
        );
        let took = t.elapsed();
        worst = worst.max(took);
        eprintln!(
            "crash: round {round}: node-{victim} killed {delay:?} into {what}; back and converged in {took:?}"
        );
        assert!(c.node_mut(victim).daemon_running());
    }
    eprintln!("crash: {rounds} rounds, slowest convergence {worst:?}");
    if stack {
        c.node(1).ok(&["stack", "rm", "crash"]);
    } else {
        c.node(1).ok(&["service", "rm", service]);
    }
}
