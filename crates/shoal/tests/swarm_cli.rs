//! The docker CLI against a single-node shoal: what a Swarm user checks.

mod common;

use common::{wait_until, Node};
use std::time::Duration;

#[test]
fn swarm_lifecycle_as_the_cli_sees_it() {
    let node = Node::start("lifecycle");
    let err = node.fails(&["service", "ls"]);
    assert!(err.contains("not a swarm manager"), "{err}");
    let out = node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    assert!(out.contains("Swarm initialized"), "{out}");
    assert!(out.contains("docker swarm join --token SWMTKN-1-"), "{out}");
    let err = node.fails(&["swarm", "init"]);
    assert!(err.contains("already part of a swarm"), "{err}");
    let info = node.ok(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.Nodes}}",
    ]);
    assert_eq!(info.trim(), "active true 1");
    let nodes = node.ok(&[
        "node",
        "ls",
        "--format",
        "{{.Self}} {{.Status}} {{.Availability}} {{.ManagerStatus}}",
    ]);
    assert_eq!(nodes.trim(), "true Ready Active Leader");
    let token = node.ok(&["swarm", "join-token", "-q", "worker"]);
    let parts: Vec<&str> = token.trim().split('-').collect();
    assert_eq!(
        (parts.len(), parts[2].len(), parts[3].len()),
        (4, 50, 25),
        "{token}"
    );
    // The token carries the digest of the CA a joining node will find.
    let root: String = serde_json::from_str(&node.ok(&[
        "info",
        "--format",
        "{{json .Swarm.Cluster.TLSInfo.TrustRoot}}",
    ]))
    .unwrap();
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");
    let parsed = shoal_pki::JoinToken::parse(&token).unwrap();
    assert!(
        parsed.matches_ca(&root),
        "join token digest does not match the cluster CA"
    );
    let manager = node.ok(&["swarm", "join-token", "-q", "manager"]);
    assert_ne!(
        manager.trim(),
        token.trim(),
        "worker and manager tokens must differ"
    );
    node.ok(&["swarm", "join-token", "--rotate", "-q", "worker"]);
    let rotated = node.ok(&["swarm", "join-token", "-q", "worker"]);
    assert_ne!(rotated.trim(), token.trim(), "rotation kept the old token");
    assert!(shoal_pki::JoinToken::parse(&rotated)
        .unwrap()
        .matches_ca(&root));
    assert_eq!(
        node.ok(&["swarm", "join-token", "-q", "manager"]).trim(),
        manager.trim(),
        "rotating the worker token changed the manager's"
    );
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "keep",
        "--replicas",
        "2",
        "shoal-test/web",
    ]);
    node.wait_replicas("keep", "2/2");
    // Swarm's words for the last manager (the CLI trims the trailing space of its answer).
    let err = node.fails(&["swarm", "leave"]);
    assert!(
        err.contains("Error response from daemon: You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message."),
        "{err:?}"
    );
    node.ok(&["swarm", "leave", "--force"]);
    assert!(
        node.containers("keep").is_empty(),
        "leaving the swarm left task containers behind"
    );
    let err = node.fails(&["node", "ls"]);
    assert!(err.contains("not a swarm manager"), "{err}");
    // Left for real: the node is outside any swarm, and can make a new one.
    let state = node.ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    assert_eq!(state.trim(), "inactive");
    let err = node.fails(&["swarm", "leave"]);
    assert!(err.contains("This node is not part of a swarm"), "{err}");
    let out = node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    assert!(out.contains("Swarm initialized"), "{out}");
    assert_eq!(
        node.ok(&["service", "ls", "-q"]).trim(),
        "",
        "a new swarm has no services"
    );
    node.ok(&["swarm", "leave", "--force"]);
}

#[test]
fn services_scale_restart_and_report_as_swarm_does() {
    let node = Node::start("services");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    node.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--restart-delay",
        "1s",
        "--env",
        "A=1",
        "--label",
        "team=x",
        "--container-label",
        "c=1",
        "--hostname",
        "h-{{.Task.Slot}}",
        "shoal-test/web",
    ]);
    assert_eq!(node.replicas("web"), "3/3");
    let cs = node.containers("web");
    assert_eq!(cs.len(), 3, "{cs:?}");
    assert!(cs.iter().all(|(_, n)| n.starts_with("web.")), "{cs:?}");

    // Scale up and down converge.
    node.ok(&["service", "scale", "web=5"]);
    node.wait_replicas("web", "5/5");
    node.ok(&["service", "scale", "web=2"]);
    node.wait_replicas("web", "2/2");
    wait_until(
        Duration::from_secs(30),
        "scaled-down containers stop",
        || {
            let running = String::from_utf8_lossy(
                &std::process::Command::new("docker")
                    .args([
                        "-H",
                        "unix:///var/run/docker.sock",
                        "ps",
                        "-q",
                        "--filter",
                        "label=com.docker.swarm.service.name=web",
                        "--filter",
                        &format!("label=com.docker.swarm.node.id={}", node.node_id().unwrap()),
                    ])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .lines()
            .count();
            running == 2
        },
    );

    // A container removed by hand is replaced after the restart delay; ps shows why.
    let victim = node.ps_q("name=web.1.");
    node.ok(&["rm", "-f", victim.trim()]);
    wait_until(Duration::from_secs(30), "replacement running", || {
        let ps = node.ok(&[
            "service",
            "ps",
            "web",
            "--format",
            "{{.Name}} {{.CurrentState}} {{.Error}}",
        ]);
        ps.lines()
            .filter(|l| l.contains("web.1") && l.contains("Running"))
            .count()
            == 1
            && ps.contains("Failed")
            && ps.contains("task: non-zero exit (137)")
    });
    node.wait_replicas("web", "2/2");

    // Inspect and update with optimistic concurrency.
    let pretty = node.ok(&["service", "inspect", "--pretty", "web"]);
    assert!(
        pretty.contains("Replicated") && pretty.contains("shoal-test/web"),
        "{pretty}"
    );
    let v: u64 = node
        .ok(&["service", "inspect", "-f", "{{.Version.Index}}", "web"])
        .trim()
        .parse()
        .unwrap();
    node.ok(&["service", "update", "-d", "--env-add", "B=2", "web"]);
    let env = node.ok(&[
        "service",
        "inspect",
        "-f",
        "{{.Spec.TaskTemplate.ContainerSpec.Env}}",
        "web",
    ]);
    assert!(env.contains("B=2"), "{env}");
    let stale = node.docker(&["service", "update", "-d", "--env-add", "C=3", "web"]);
    assert!(stale.status.success());
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
            common::path(&node.socket),
            "-XPOST",
            &format!("http://x/v1.50/services/web/update?version={v}"),
            "-d",
            r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"shoal-test/web"}}}"#,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "409",
        "a stale version must be refused (Docker answers 500; a conflict is no server fault)"
    );
    wait_until(Duration::from_secs(60), "updated tasks running", || {
        let c = node.ok(&[
            "service",
            "ps",
            "web",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.CurrentState}}",
        ]);
        c.lines().count() == 2
            && c.lines().all(|l| l.starts_with("Running"))
            && node
                .engine_containers("com.docker.swarm.service.name=web")
                .len()
                >= 2
    });
    // The running task of slot 1 (its predecessor's container may still be stopping).
    let task = node
        .ok(&[
            "service",
            "ps",
            "web",
            "--filter",
            "desired-state=running",
            "--no-trunc",
            "--format",
            "{{.Name}} {{.ID}}",
        ])
        .lines()
        .find_map(|l| l.strip_prefix("web.1 ").map(str::to_string))
        .expect("a running task in slot 1");
    let c = node.ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.task.id={task}"),
    ]);
    let env = node.ok(&["exec", c.trim(), "sh", "-c", "echo $A$B; hostname"]);
    assert_eq!(
        env.trim(),
        "12\nh-1",
        "env and templated hostname reach the task"
    );

    // Removal leaves no container behind.
    node.ok(&["service", "rm", "web"]);
    wait_until(Duration::from_secs(30), "web containers removed", || {
        node.containers("web").is_empty()
    });
}

#[test]
fn daemon_kill9_adopts_containers_without_duplicates() {
    let mut node = Node::start("adopt");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    node.ok(&[
        "service",
        "create",
        "--name",
        "db",
        "--replicas",
        "3",
        "--restart-delay",
        "1s",
        "shoal-test/web",
    ]);
    let mut before: Vec<String> = node
        .containers("db")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    before.sort();
    assert_eq!(before.len(), 3);
    node.kill9();
    // While the daemon is down, one task container disappears.
    let gone = before[0].clone();
    let st = std::process::Command::new("docker")
        .args(["-H", "unix:///var/run/docker.sock", "rm", "-f", &gone])
        .output()
        .unwrap();
    assert!(st.status.success());
    node.spawn();
    node.wait_replicas("db", "3/3");
    wait_until(Duration::from_secs(30), "lost task replaced", || {
        node.containers("db").len() == 3
    });
    let mut after: Vec<String> = node
        .containers("db")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    after.sort();
    for id in &before[1..] {
        assert!(
            after.contains(id),
            "running container {id} was not adopted: {after:?}\n{}",
            node.log()
        );
    }
    assert!(!after.contains(&gone));
    let ps = node.ok(&[
        "service",
        "ps",
        "db",
        "--format",
        "{{.Name}} {{.DesiredState}} {{.CurrentState}}",
    ]);
    assert_eq!(
        ps.lines().filter(|l| l.contains("Running Running")).count(),
        3,
        "{ps}"
    );
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let node = Node::start("badinput");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "taken",
        "-p",
        "18080:80",
        "shoal-test/web",
    ]);
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "service",
                "create",
                "-d",
                "--name",
                "bad name",
                "shoal-test/web",
            ],
            "DNS name",
        ),
        (
            &[
                "service",
                "create",
                "-d",
                "--name",
                "x",
                "--network",
                "nosuch",
                "shoal-test/web",
            ],
            "network nosuch not found",
        ),
        (
            &[
                "service",
                "create",
                "-d",
                "--name",
                "taken",
                "shoal-test/web",
            ],
            "already exists",
        ),
        (
            &[
                "service",
                "create",
                "-d",
                "--name",
                "y",
                "-p",
                "18080:80",
                "shoal-test/web",
            ],
            "already in use",
        ),
        (
            &[
                "service",
                "create",
                "-d",
                "--name",
                "z",
                "--mount",
                "type=bind,source=relative,target=/x",
                "shoal-test/web",
            ],
            "",
        ),
        (
            &[
                "service",
                "create",
                "-d",
                "--name",
                "w",
                "--replicas",
                "1000000000",
                "shoal-test/web",
            ],
            "exceeds the maximum",
        ),
        (&["service", "inspect", "nosuch"], "no such service"),
        (
            &[
                "network",
                "create",
                "-d",
                "overlay",
                "--subnet",
                "10.0.0.0/16",
                "overlapping",
            ],
            "overlaps",
        ),
        (
            &[
                "network", "create", "-d", "overlay", "--subnet", "bogus", "n2",
            ],
            "",
        ),
    ];
    for (args, want) in cases {
        let err = node.fails(args);
        assert!(err.contains(want), "docker {args:?}: {err}");
    }
    let sock = common::path(&node.socket).to_string();
    let curl = |method: &str, path: &str, body: &str| -> (String, String) {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-w",
                "\n%{http_code}",
                "--unix-socket",
                &sock,
                "-X",
                method,
                &format!("http://x{path}"),
                "-d",
                body,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    let (code, body) = curl("POST", "/v1.50/services/create", "{not json");
    assert_eq!(code, "400", "{body}");
    assert!(body.starts_with("{\"message\":"), "{body}");
    let (code, body) = curl(
        "POST",
        "/v1.50/services/create",
        r#"{"Name":"neg","TaskTemplate":{"ContainerSpec":{"Image":"a"}},"Mode":{"Replicated":{"Replicas":-2}}}"#,
    );
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("Mode.Replicated.Replicas"), "{body}");
    let (code, _) = curl("GET", "/v1.50/services/nosuch", "");
    assert_eq!(code, "404");
    let (code, _) = curl(
        "POST",
        "/v1.50/secrets/create",
        r#"{"Name":"s","Data":"!!!"}"#,
    );
    assert_eq!(code, "400");
    let services = node.ok(&["service", "ls", "--format", "{{.Name}}"]);
    assert_eq!(
        services.trim(),
        "taken",
        "refused requests must not write anything"
    );
    let nets = node.ok(&[
        "network",
        "ls",
        "--filter",
        "driver=overlay",
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(nets.trim(), "ingress");
}

#[test]
fn secrets_and_configs_reach_tasks_read_only_and_never_leak() {
    let node = Node::start("secrets");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    let secret_file = node.dir.join("pw.txt");
    std::fs::write(&secret_file, "hunter2\n").unwrap();
    node.ok(&[
        "secret",
        "create",
        "--label",
        "a=1",
        "db_pw",
        common::path(&secret_file),
    ]);
    node.ok(&["config", "create", "app_conf", common::path(&secret_file)]);
    let inspect = node.ok(&["secret", "inspect", "db_pw"]);
    assert!(
        !inspect.contains("hunter2") && !inspect.contains("aHVudGVyMg"),
        "secret data leaked: {inspect}"
    );
    node.ok(&[
        "service",
        "create",
        "--name",
        "app",
        "--secret",
        "db_pw",
        "--secret",
        "source=db_pw,target=/etc/pw,mode=0400",
        "--config",
        "source=app_conf,target=/etc/app.conf",
        "shoal-test/web",
    ]);
    let c = node.ps_q("name=app.1.");
    let out = node.ok(&["exec", c.trim(), "sh", "-c", "cat /run/secrets/db_pw /etc/pw /etc/app.conf; stat -c %a /etc/pw; echo x > /run/secrets/db_pw && echo writable || echo readonly"]);
    assert_eq!(out, "hunter2\nhunter2\nhunter2\n400\nreadonly\n");
    let err = node.fails(&["secret", "rm", "db_pw"]);
    assert!(
        err.contains("in use by the following service: app"),
        "{err}"
    );
    let log = node.log();
    assert!(!log.contains("hunter2"), "secret in the daemon log");
    node.ok(&["service", "rm", "app"]);
    node.ok(&["secret", "rm", "db_pw"]);
    assert!(node.ok(&["secret", "ls", "-q"]).trim().is_empty());
}

#[test]
fn missing_image_is_rejected_with_the_reason() {
    let node = Node::start("reject");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "ghost",
        "nosuch/image:1",
    ]);
    wait_until(Duration::from_secs(20), "task rejected", || {
        let ps = node.ok(&[
            "service",
            "ps",
            "ghost",
            "--no-trunc",
            "--format",
            "{{.CurrentState}}|{{.Error}}",
        ]);
        ps.lines()
            .any(|l| l.starts_with("Rejected") && l.contains("No such image: nosuch/image:1"))
    });
}

#[test]
fn global_mode_logs_and_rollback() {
    let node = Node::start("global");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    node.ok(&[
        "service",
        "create",
        "--name",
        "agent",
        "--mode",
        "global",
        "shoal-test/busybox",
        "sh",
        "-c",
        "echo line-one; echo line-two >&2; sleep 3600",
    ]);
    node.wait_replicas("agent", "1/1");
    let ps = node.ok(&["service", "ps", "agent", "--format", "{{.Name}} {{.Node}}"]);
    assert_eq!(ps.lines().count(), 1, "{ps}");

    // `service logs` labels each line with service.slot-or-node.task@node, as the CLI builds it from details.
    wait_until(Duration::from_secs(20), "both log lines", || {
        let out = node.docker(&["service", "logs", "agent"]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        all.contains("line-one")
            && all.contains("line-two")
            && all
                .lines()
                .all(|l| l.starts_with("agent.") && l.contains('@'))
    });

    // Update then roll back to the previous spec.
    node.ok(&["service", "update", "--env-add", "V=2", "agent"]);
    let env = node.ok(&[
        "service",
        "inspect",
        "-f",
        "{{.Spec.TaskTemplate.ContainerSpec.Env}}",
        "agent",
    ]);
    assert!(env.contains("V=2"), "{env}");
    node.ok(&["service", "rollback", "agent"]);
    let env = node.ok(&[
        "service",
        "inspect",
        "-f",
        "{{.Spec.TaskTemplate.ContainerSpec.Env}}",
        "agent",
    ]);
    assert!(!env.contains("V=2"), "rollback kept the new env: {env}");
    node.wait_replicas("agent", "1/1");
    wait_until(
        Duration::from_secs(20),
        "one agent container running",
        || node.ps_q("name=agent.").lines().count() == 1,
    );
    let c = node.ps_q("name=agent.");
    let v = node.ok(&["exec", c.trim(), "sh", "-c", "echo ${V:-unset}"]);
    assert_eq!(v.trim(), "unset");
}

#[test]
fn health_checks_gate_running_and_replace_unhealthy_tasks() {
    let node = Node::start("health");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    node.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "hc",
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        // Failures before the first success do not count (Docker's start period).
        "--health-start-period",
        "60s",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    let states = || {
        node.ok(&[
            "service",
            "ps",
            "hc",
            "--format",
            "{{.DesiredState}} {{.CurrentState}} {{.Error}}",
        ])
    };
    // Not healthy yet: the task stays starting and does not count as a running replica.
    wait_until(Duration::from_secs(30), "hc's container exists", || {
        !node.containers("hc").is_empty()
    });
    // Three failed checks (the start period keeps them from counting): by then a task that
    // ignored health would be running.
    let (c, _) = node.containers("hc")[0].clone();
    common::wait_for(
        Duration::from_secs(30),
        "three failed health checks",
        || {
            let out = std::process::Command::new("docker")
                .args(["-H", "unix:///var/run/docker.sock", "inspect", "-f"])
                .arg("{{if .State.Health}}{{len .State.Health.Log}}{{end}}")
                .arg(&c)
                .output()
                .unwrap();
            let seen = String::from_utf8_lossy(&out.stdout).trim().to_string();
            match seen.parse::<usize>() {
                Ok(n) if n >= 3 => Ok(()),
                _ => Err(format!("health log entries: {seen:?}")),
            }
        },
    );
    assert_eq!(node.replicas("hc"), "0/1", "{}", states());
    assert!(states().contains("Starting"), "{}", states());
    // Healthy: running.
    node.ok(&["exec", &c, "touch", "/tmp/ok"]);
    node.wait_replicas("hc", "1/1");
    // Unhealthy: the task fails with the reason and a replacement is started.
    node.ok(&["exec", &c, "rm", "/tmp/ok"]);
    wait_until(
        Duration::from_secs(30),
        "hc's unhealthy task failed and was replaced",
        || {
            let s = states();
            s.contains("task: unhealthy container")
                && s.lines().filter(|l| l.starts_with("Running")).count() == 1
        },
    );
    node.ok(&["service", "rm", "hc"]);
}

/// `UpdateStatus.State` and `.Message` of a service.
fn update_status(node: &Node, service: &str) -> (String, String) {
    let out = node.ok(&[
        "service",
        "inspect",
        "-f",
        "{{if .UpdateStatus}}{{.UpdateStatus.State}}|{{.UpdateStatus.Message}}{{end}}",
        service,
    ]);
    let (s, m) = out.trim().split_once('|').unwrap_or(("", ""));
    (s.to_string(), m.to_string())
}

/// IDs of a service's tasks whose container runs now.
fn running_tasks(node: &Node, service: &str) -> Vec<String> {
    node.ok(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.ID}} {{.CurrentState}}",
        "--no-trunc",
    ])
    .lines()
    .filter(|l| l.contains(" Running "))
    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
    .collect()
}

#[test]
fn rolling_updates_roll_back_pause_and_start_first_through_the_cli() {
    let node = Node::start("rolling");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    node.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "--stop-grace-period",
        "1s",
        "--update-parallelism",
        "2",
        "--update-monitor",
        "3s",
        "--update-failure-action",
        "rollback",
        "--rollback-parallelism",
        "0",
        "shoal-test/web",
    ]);
    node.wait_replicas("web", "4/4");
    let before = running_tasks(&node, "web");
    assert_eq!(before.len(), 4);

    // A broken image: the first batch fails, the update rolls itself back, and the two slots
    // it never reached keep their tasks.
    let out = node.docker(&["service", "update", "--image", "nosuch/image:1", "web"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("update rolled back due to failure or early termination of task"),
        "{said}"
    );
    wait_until(Duration::from_secs(60), "rollback completed", || {
        update_status(&node, "web").0 == "rollback_completed"
    });
    let image = node.ok(&[
        "service",
        "inspect",
        "-f",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        "web",
    ]);
    assert_eq!(image.trim(), "shoal-test/web:latest");
    node.wait_replicas("web", "4/4");
    let after = running_tasks(&node, "web");
    let kept = before.iter().filter(|t| after.contains(t)).count();
    assert_eq!(
        kept, 2,
        "parallelism 2: two slots were never replaced, so the rollback must leave them"
    );

    // With failure action pause the CLI reports the pause, and the update stops there.
    let err = node.fails(&[
        "service",
        "update",
        "--update-failure-action",
        "pause",
        "--update-parallelism",
        "1",
        "--image",
        "nosuch/image:2",
        "web",
    ]);
    assert!(
        err.contains(
            "service update paused: update paused due to failure or early termination of task"
        ),
        "{err}"
    );
    assert_eq!(update_status(&node, "web").0, "paused");
    // The subject is that nothing happens: no condition to wait for, so a fixed look after two
    // seconds.
    std::thread::sleep(Duration::from_secs(2));
    let old = running_tasks(&node, "web").len();
    assert_eq!(
        old, 3,
        "a paused update went on: {old} tasks of the old image run"
    );

    // A good spec resumes; start-first with a delay replaces one slot at a time, a second
    // apart, and never runs fewer than four tasks.
    let watcher = {
        let socket = node.socket.clone();
        std::thread::spawn(move || {
            let mut low = usize::MAX;
            for _ in 0..100 {
                let out = common::docker_at(
                    &socket,
                    &[
                        "service",
                        "ps",
                        "web",
                        "--filter",
                        "desired-state=running",
                        "--format",
                        "{{.CurrentState}}",
                    ],
                );
                let running = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.starts_with("Running"))
                    .count();
                low = low.min(running);
                // The sampling rate of the watcher, not a wait for anything.
                std::thread::sleep(Duration::from_millis(100));
            }
            low
        })
    };
    let out = node.ok(&[
        "service",
        "update",
        "--update-order",
        "start-first",
        "--update-delay",
        "1s",
        "--image",
        "shoal-test/web",
        "--env-add",
        "V=3",
        "web",
    ]);
    assert!(
        out.contains("Service web converged") || out.contains("converged"),
        "{out}"
    );
    assert_eq!(update_status(&node, "web").0, "completed");
    let low = watcher.join().unwrap();
    // The one slot the pause left failing has no running task until it is replaced.
    assert!(low >= 3, "start-first let running tasks drop to {low}");
    let mut started: Vec<chrono::DateTime<chrono::Utc>> = running_tasks(&node, "web")
        .iter()
        .map(|t| {
            let ts = node.ok(&["inspect", "-f", "{{json .Status.Timestamp}}", t]);
            let ts: String = serde_json::from_str(ts.trim()).unwrap();
            chrono::DateTime::parse_from_rfc3339(&ts).unwrap().to_utc()
        })
        .collect();
    started.sort();
    assert_eq!(started.len(), 4);
    let gaps: Vec<i64> = started
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .collect();
    assert!(
        gaps.iter().filter(|g| **g >= 900).count() >= 2,
        "start-first with a 1 s delay replaced slots closer together: {gaps:?} ms"
    );

    // A manual rollback goes back to the spec before the last update.
    node.ok(&["service", "update", "-d", "--env-add", "V=4", "web"]);
    wait_until(Duration::from_secs(60), "update to V=4 completed", || {
        update_status(&node, "web").0 == "completed"
    });
    node.ok(&["service", "rollback", "-d", "web"]);
    wait_until(Duration::from_secs(60), "manual rollback completed", || {
        update_status(&node, "web").0 == "rollback_completed"
    });
    let env = node.ok(&[
        "service",
        "inspect",
        "-f",
        "{{.Spec.TaskTemplate.ContainerSpec.Env}}",
        "web",
    ]);
    assert!(env.contains("V=3") && !env.contains("V=4"), "{env}");
    node.wait_replicas("web", "4/4");

    // Beyond Swarm's one step back: `shoal service history` lists the earlier specs, and
    // `shoal service rollback --to` goes back to any of them.
    let shoal = |args: &[&str]| node.shoal(args);
    let (ok, listed, err) = shoal(&["service", "history", "web"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = listed.lines().collect();
    assert!(lines[0].starts_with("REVISION"), "{listed}");
    assert!(
        lines[1].contains("current") && lines[1].contains("V=3"),
        "{listed}"
    );
    // The first spec: the good image without any V= env.
    let first = lines
        .iter()
        .skip(1)
        .find(|l| l.contains("shoal-test/web") && !l.contains("V="))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no original revision in {listed}"))
        .to_string();
    assert!(
        lines.iter().any(|l| l.contains("nosuch/image:2")),
        "{listed}"
    );
    let (ok, _, err) = shoal(&["service", "rollback", "web", "--to", "999"]);
    assert!(!ok && err.contains("has no revision 999"), "{err}");
    let (ok, _, err) = shoal(&["service", "rollback", "web", "--to", &first]);
    assert!(ok, "{err}");
    assert_eq!(update_status(&node, "web").0, "rollback_completed");
    let env = node.ok(&[
        "service",
        "inspect",
        "-f",
        "{{.Spec.TaskTemplate.ContainerSpec.Env}}",
        "web",
    ]);
    assert!(!env.contains("V="), "{env}");
    node.wait_replicas("web", "4/4");
}

#[test]
fn placement_limits_leave_tasks_pending_with_swarms_reason() {
    let node = Node::start("placement");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "capped",
        "--replicas",
        "3",
        "--replicas-max-per-node",
        "1",
        "--placement-pref",
        "spread=node.labels.zone",
        "shoal-test/web",
    ]);
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "huge",
        "--reserve-memory",
        "100000g",
        "shoal-test/web",
    ]);
    node.wait_replicas("capped", "1/3");
    let pending = |svc: &str| {
        node.ok(&[
            "service",
            "ps",
            svc,
            "--no-trunc",
            "--format",
            "{{.CurrentState}}|{{.Error}}",
        ])
    };
    wait_until(Duration::from_secs(20), "two capped tasks pending", || {
        pending("capped")
            .lines()
            .filter(|l| {
                l.starts_with("Pending")
                    && l.contains("no suitable node (max replicas per node limit exceed on 1 node)")
            })
            .count()
            == 2
    });
    wait_until(Duration::from_secs(20), "the huge task pending", || {
        pending("huge").lines().any(|l| {
            l.starts_with("Pending")
                && l.contains("no suitable node (insufficient resources on 1 node)")
        })
    });
    assert_eq!(node.replicas("huge"), "0/1");
    // Lowering the reservation lets it run.
    node.ok(&["service", "update", "-d", "--reserve-memory", "16m", "huge"]);
    node.wait_replicas("huge", "1/1");
}

/// (start, finish) of every engine container a service ran, oldest first.
fn run_times(node: &Node, service: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = node
        .containers(service)
        .iter()
        .map(|(id, _)| {
            let o = std::process::Command::new("docker")
                .args([
                    "-H",
                    "unix:///var/run/docker.sock",
                    "inspect",
                    "--format",
                    "{{.State.StartedAt}} {{.State.FinishedAt}}",
                    id,
                ])
                .output()
                .unwrap();
            let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let (a, b) = s.split_once(' ').unwrap_or_default();
            // Still running: finished at the end of time.
            let b = if b.starts_with("0001-") { "9999" } else { b };
            (a.to_string(), b.to_string())
        })
        .collect();
    out.sort();
    out
}

/// The most containers of `runs` that were running at the same instant (RFC 3339 times in
/// one zone and precision compare as strings).
fn most_at_once(runs: &[(String, String)]) -> usize {
    runs.iter()
        .map(|(start, _)| runs.iter().filter(|(s, f)| s <= start && start < f).count())
        .max()
        .unwrap_or(0)
}

#[test]
fn jobs_run_to_completion_retry_by_policy_and_repeat_on_a_schedule() {
    let node = Node::start("jobs");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    let job_iteration = |svc: &str| -> u64 {
        node.ok(&[
            "service",
            "inspect",
            svc,
            "--format",
            "{{.JobStatus.JobIteration.Index}}",
        ])
        .trim()
        .parse()
        .unwrap()
    };
    let states = |svc: &str| -> Vec<String> {
        node.ok(&[
            "service",
            "ps",
            svc,
            "--format",
            "{{.DesiredState}} {{.CurrentState}}",
        ])
        .lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect()
    };

    // Replicated job: the CLI follows it to "job complete"; never more than 2 at once.
    let out = node.ok(&[
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
        "shoal-test/busybox",
        "sleep",
        "1",
    ]);
    assert!(out.contains("job complete"), "{out}");
    assert_eq!(node.replicas("batch"), "0/0");
    let ls = node.ok(&["service", "ls", "--filter", "name=batch"]);
    assert!(
        ls.contains("replicated job") && ls.contains("(4/4 completed)"),
        "{ls}"
    );
    assert_eq!(states("batch"), vec!["Complete Complete"; 4]);
    let runs = run_times(&node, "batch");
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert_eq!(most_at_once(&runs), 2, "max-concurrent not kept: {runs:?}");

    // An update runs the job again as a new iteration; the old tasks become history.
    let out = node.ok(&["service", "update", "--force", "batch"]);
    assert!(out.contains("job complete"), "{out}");
    assert_eq!(job_iteration("batch"), 1);
    let st = states("batch");
    assert_eq!(st.iter().filter(|s| *s == "Complete Complete").count(), 4);
    assert_eq!(st.iter().filter(|s| *s == "Shutdown Complete").count(), 4);

    // A failing job is retried by its restart policy, then left failed.
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "broken",
        "--mode",
        "replicated-job",
        "--restart-max-attempts",
        "1",
        "--restart-delay",
        "0s",
        "shoal-test/busybox",
        "sh",
        "-c",
        "exit 3",
    ]);
    let failed = || {
        node.ok(&[
            "service",
            "ps",
            "broken",
            "--format",
            "{{.CurrentState}}|{{.Error}}",
        ])
        .lines()
        .filter(|l| l.starts_with("Failed") && l.contains("non-zero exit (3)"))
        .count()
    };
    wait_until(Duration::from_secs(30), "a try and one retry", || {
        failed() == 2
    });
    // The subject is that no third try comes (its restart delay has passed by then).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(failed(), 2, "retried past --restart-max-attempts");
    assert!(node
        .ok(&["service", "ls", "--filter", "name=broken"])
        .contains("(0/1 completed)"));

    // Global job: once on the node.
    let out = node.ok(&[
        "service",
        "create",
        "--name",
        "everywhere",
        "--mode",
        "global-job",
        "shoal-test/busybox",
        "true",
    ]);
    assert!(out.contains("job complete"), "{out}");
    assert_eq!(states("everywhere"), vec!["Complete Complete"]);

    // Periodic job: nothing at create, a run each tick, and a tick that finds the last run
    // still going is skipped (3 s runs on a 2 s schedule never overlap).
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "tick",
        "--mode",
        "replicated-job",
        "--label",
        "shoal.cron=@every 2s",
        "shoal-test/busybox",
        "sleep",
        "3",
    ]);
    assert!(
        states("tick").is_empty(),
        "a periodic job ran at create: {:?}",
        states("tick")
    );
    wait_until(
        Duration::from_secs(40),
        "three runs of the periodic job",
        || job_iteration("tick") >= 3,
    );
    let shoal = |args: &[&str]| {
        let (ok, out, err) = node.shoal(args);
        (ok, out + &err)
    };
    let (ok, shown) = shoal(&["service", "schedule", "tick"]);
    assert!(ok, "{shown}");
    let field = |name: &str| {
        shown
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(field("Schedule:"), "@every 2s", "{shown}");
    assert!(field("Iteration:").parse::<u64>().unwrap() >= 3, "{shown}");
    assert!(field("Next run:").ends_with("UTC"), "{shown}");
    let skipped: u64 = field("Skipped:")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(skipped >= 1, "no tick was skipped: {shown}");
    let (ok, err) = shoal(&["service", "schedule", "batch"]);
    assert!(!ok && err.contains("not a periodic job"), "{err}");
    let runs = run_times(&node, "tick");
    node.ok(&["service", "rm", "tick"]);
    assert!(runs.len() >= 2, "{runs:?}");
    assert_eq!(most_at_once(&runs), 1, "periodic runs overlapped: {runs:?}");

    // Compose: a stack's one-off job (deploy.mode replicated-job) runs to completion.
    let compose = node.dir.join("jobs.yml");
    std::fs::write(
        &compose,
        "version: \"3.9\"\nservices:\n  migrate:\n    image: shoal-test/busybox\n    command: [\"true\"]\n    deploy:\n      mode: replicated-job\n      replicas: 2\n",
    )
    .unwrap();
    node.ok(&["stack", "deploy", "-c", compose.to_str().unwrap(), "ops"]);
    wait_until(Duration::from_secs(30), "the stack's job done", || {
        node.ok(&["service", "ls", "--filter", "name=ops_migrate"])
            .contains("(2/2 completed)")
    });

    // A schedule needs a job and must parse; the error names the label.
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        "nope",
        "--label",
        "shoal.cron=@every 2s",
        "shoal-test/busybox",
        "true",
    ]);
    assert!(
        err.contains("Labels.shoal.cron: a schedule needs a job"),
        "{err}"
    );
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        "nope",
        "--mode",
        "global-job",
        "--label",
        "shoal.cron=0 25 * * *",
        "shoal-test/busybox",
        "true",
    ]);
    assert!(err.contains("hour: 25 is outside 0-23"), "{err}");
    let ls = node.ok(&["service", "ls", "--format", "{{.Name}}"]);
    assert!(!ls.contains("nope"), "{ls}");
}

#[test]
fn a_daemon_started_with_floating_ip_holds_it_once_it_leads() {
    let node = Node::start_with("floatflag", &["--floating-ip", "10.1.2.3/32"]);
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    // A single node holds it itself, on the interface of its advertise address (here lo).
    wait_until(
        Duration::from_secs(30),
        "the flag's address is held",
        || {
            let (_, out, _) = node.shoal(&["floating-ip", "ls"]);
            out.contains("10.1.2.3/32")
                && out.contains("held")
                && node
                    .netns
                    .command("ip")
                    .args(["-br", "addr", "show", "dev", "lo"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("10.1.2.3/32"))
        },
    );
}

#[test]
fn shoal_floating_ip_adds_lists_and_removes_addresses() {
    let node = Node::start("floating");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    let (ok, out, err) = node.shoal(&[
        "floating-ip",
        "add",
        "192.168.77.250/24",
        "--constraint",
        "node.role==manager",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "192.168.77.250/24");
    let (ok, _, err) = node.shoal(&["floating-ip", "add", "192.168.77.0/24"]);
    assert!(!ok && err.contains("network address"), "{err}");
    let (ok, _, err) = node.shoal(&["floating-ip", "add", "192.168.77.250/24"]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, out, err) = node.shoal(&["floating-ip", "ls"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ADDRESS"), "{out}");
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[1].starts_with("192.168.77.250/24") && lines[1].contains("node.role==manager"),
        "{out}"
    );
    let (ok, _, err) = node.shoal(&["floating-ip", "rm", "192.168.77.250/24"]);
    assert!(ok, "{err}");
    let (_, out, _) = node.shoal(&["floating-ip", "ls"]);
    assert_eq!(out.lines().count(), 1, "{out}");
}
