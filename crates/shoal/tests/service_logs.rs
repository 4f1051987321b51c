//! `docker service logs` across nodes, with the real docker CLI, curl and the Python SDK: a
//! service with a task on every node of a three-node cluster (two managers, one worker) prints
//! lines; its logs, read on the leader and on the other manager, show every task's lines with
//! Docker's `name.slot.task@node` prefixes, and honour `--tail`, `--since`, `--timestamps`,
//! `--no-task-ids`, `--raw` and `--follow`; `details=false` gives bare lines; a followed stream
//! gets lines printed after it started, keeps going when a node dies, and ends on every node
//! when the client is killed.

mod common;

use common::cluster::{Cluster, ClusterNode};
use common::wait_for;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Each task says which slot it is, once on stdout and once on stderr, then ticks every 200 ms.
const SCRIPT: &str = "echo start from $SLOT; echo oops from $SLOT >&2; \
                      i=0; while true; do i=$((i+1)); echo tick $i from $SLOT; sleep 0.2; done";

/// A cluster of two managers (node-1 leads) and a worker, with service `talk` running one task
/// on each node; returns the tasks as slot -> (task ID, node name).
fn talking_cluster(name: &str) -> (Cluster, BTreeMap<u64, (String, String)>) {
    let c = Cluster::start(name, 3);
    c.form(2);
    let n1 = c.node(1);
    n1.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "talk",
        "--replicas",
        "3",
        "--replicas-max-per-node",
        "1",
        "--env",
        "SLOT={{.Task.Slot}}",
        "shoal-test/busybox",
        "sh",
        "-c",
        SCRIPT,
    ]);
    let mut tasks = BTreeMap::new();
    wait_for(
        Duration::from_secs(40),
        "a running task on every node",
        || {
            let ps = n1.ok(&[
                "service",
                "ps",
                "talk",
                "--no-trunc",
                "--filter",
                "desired-state=running",
                "--format",
                "{{.Name}} {{.ID}} {{.Node}} {{.CurrentState}}",
            ]);
            tasks.clear();
            for l in ps.lines() {
                let p: Vec<&str> = l.split_whitespace().collect();
                if p.len() >= 4 && p[3] == "Running" {
                    let slot = p[0].rsplit('.').next().and_then(|s| s.parse().ok());
                    if let Some(slot) = slot {
                        tasks.insert(slot, (p[1].to_string(), p[2].to_string()));
                    }
                }
            }
            let nodes: std::collections::BTreeSet<&String> = tasks.values().map(|t| &t.1).collect();
            if tasks.len() == 3 && nodes.len() == 3 {
                Ok(())
            } else {
                Err(ps)
            }
        },
    );
    (c, tasks)
}

/// `docker service logs ARGS talk` on `n`: (stdout, stderr).
fn logs(n: &ClusterNode, args: &[&str]) -> (String, String) {
    let mut all = vec!["service", "logs"];
    all.extend_from_slice(args);
    all.push("talk");
    let out = n.docker(&all);
    assert!(
        out.status.success(),
        "docker {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The prefix the docker CLI prints before a task's lines.
fn prefix(slot: u64, task: &str, node: &str, ids: bool) -> String {
    if ids {
        format!("talk.{slot}.{}@{node}    | ", &task[..12])
    } else {
        format!("talk.{slot}@{node}    | ")
    }
}

/// The daemon's log as text (colours stripped).
fn daemon_log(n: &ClusterNode) -> String {
    let raw = std::fs::read_to_string(n.dir.join("daemon.log")).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// `GET path` on the node's API socket with curl: the raw body.
fn curl(n: &ClusterNode, path: &str) -> Vec<u8> {
    curl_with_headers(n, path).1
}

/// `GET path` on the node's API socket with curl: the response head and the raw body.
fn curl_with_headers(n: &ClusterNode, path: &str) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "20", "--unix-socket"])
        .arg(&n.socket)
        .arg(format!("http://shoal{path}"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {path}: {out:?}");
    let end = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    (
        String::from_utf8_lossy(&out.stdout[..end]).to_lowercase(),
        out.stdout[end + 4..].to_vec(),
    )
}

/// The engine's multiplexed stream as (stream, payload) frames.
fn frames(mut body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    while body.len() >= 8 {
        let len = u32::from_be_bytes([body[4], body[5], body[6], body[7]]) as usize;
        assert!(body.len() >= 8 + len, "a cut frame: {body:?}");
        out.push((
            body[0],
            String::from_utf8_lossy(&body[8..8 + len]).into_owned(),
        ));
        body = &body[8 + len..];
    }
    assert!(body.is_empty(), "bytes after the last frame: {body:?}");
    out
}

#[test]
fn service_logs_show_every_nodes_tasks_as_docker_shows_them() {
    let (c, tasks) = talking_cluster("logs");
    // Read on the leader, and on the other manager (which asks the leader).
    for n in [c.node(1), c.node(2)] {
        let mut seen = (String::new(), String::new());
        wait_for(Duration::from_secs(20), "every task's lines", || {
            seen = logs(n, &[]);
            let all = tasks.iter().all(|(slot, (id, node))| {
                let p = prefix(*slot, id, node, true);
                seen.0.contains(&format!("{p}start from {slot}\n"))
                    && seen.1.contains(&format!("{p}oops from {slot}\n"))
            });
            if all {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        });
        assert!(!seen.0.contains("com.docker.swarm"), "{}", seen.0);
    }
    // Every node's agent served the reads of its own tasks (the harness's nodes share one
    // engine, so a manager reading its engine alone would print the same lines).
    for i in 1..=3 {
        let log = daemon_log(c.node(i));
        assert!(
            log.contains("log subscription started") && log.contains("log subscription ended"),
            "node-{i}'s agent served no log subscription"
        );
    }
    let n1 = c.node(1);

    // --no-task-ids: `name.slot@node`.
    let (out, _) = logs(n1, &["--no-task-ids"]);
    for (slot, (id, node)) in &tasks {
        assert!(
            out.contains(&format!(
                "{}start from {slot}\n",
                prefix(*slot, id, node, false)
            )),
            "{out}"
        );
    }

    // --raw: the lines as the tasks wrote them, nothing before them (no attributes either:
    // the CLI asks details=false).
    let (out, err) = logs(n1, &["--raw"]);
    for slot in tasks.keys() {
        assert!(
            out.lines().any(|l| l == format!("start from {slot}")),
            "{out}"
        );
        assert!(
            err.lines().any(|l| l == format!("oops from {slot}")),
            "{err}"
        );
    }
    assert!(
        out.lines()
            .all(|l| l.starts_with("start from") || l.starts_with("tick")),
        "{out}"
    );

    // --timestamps: dockerd's fixed-width time, then the prefix.
    let (out, _) = logs(n1, &["--timestamps"]);
    let (slot, (id, node)) = tasks.iter().next().unwrap();
    let line = out
        .lines()
        .find(|l| l.ends_with(&format!("start from {slot}")))
        .unwrap_or_else(|| panic!("{out}"));
    let (ts, rest) = line.split_once(' ').unwrap();
    assert_eq!(ts.len(), "2024-01-02T13:23:37.123456789Z".len(), "{line}");
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{line}");
    assert_eq!(
        rest,
        format!("{}start from {slot}", prefix(*slot, id, node, true))
    );

    // --tail 1: each task's last line only.
    let (out, err) = logs(n1, &["--tail", "1"]);
    let lines: Vec<&str> = out.lines().chain(err.lines()).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (slot, (id, node)) in &tasks {
        let p = prefix(*slot, id, node, true);
        assert!(lines.iter().any(|l| l.starts_with(&p)), "{p} in {lines:?}");
    }

    // --since: nothing from before (the tasks' first lines), the ticks since.
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    wait_for(Duration::from_secs(10), "ticks since", || {
        let (out, err) = logs(n1, &["--since", &since, "--no-task-ids"]);
        assert!(!out.contains("start from") && err.is_empty(), "{out}{err}");
        let ticking = tasks.iter().all(|(slot, (id, node))| {
            out.contains(&format!("{}tick", prefix(*slot, id, node, false)))
        });
        if ticking {
            Ok(())
        } else {
            Err(out)
        }
    });

    // The API itself: details=false gives the bare lines; details=true the attributes moby
    // gives, which the CLI turns into its prefix.
    let bare = frames(&curl(
        n1,
        "/v1.50/services/talk/logs?stdout=1&stderr=1&details=false",
    ));
    assert!(
        bare.iter()
            .any(|(s, l)| *s == 2 && l.starts_with("oops from")),
        "{bare:?}"
    );
    assert!(
        bare.iter().all(|(_, l)| l.starts_with("start from")
            || l.starts_with("oops from")
            || l.starts_with("tick")),
        "{bare:?}"
    );
    let detailed = frames(&curl(
        n1,
        "/v1.50/services/talk/logs?stdout=1&details=1&tail=1",
    ));
    let (_, (id, node)) = tasks.iter().next().unwrap();
    let node_id = c
        .node(1)
        .ok(&["node", "inspect", node, "--format", "{{.ID}}"])
        .trim()
        .to_string();
    let service_id = n1
        .ok(&["service", "inspect", "talk", "--format", "{{.ID}}"])
        .trim()
        .to_string();
    let want = format!(
        "com.docker.swarm.node.id={node_id},com.docker.swarm.service.id={service_id},com.docker.swarm.task.id={id} tick"
    );
    assert!(
        detailed
            .iter()
            .any(|(s, l)| *s == 1 && l.starts_with(&want)),
        "{want} in {detailed:?}"
    );
    // until: nothing written after it (the tasks' first lines were, long before `since`).
    // `until` carries `since` to the nanosecond (`secs.nanos`, as the CLI sends it): cut to
    // whole seconds it could fall before the first lines when they came less than a second
    // before `since`.
    let cut = chrono::DateTime::parse_from_rfc3339(&since).unwrap();
    let until = frames(&curl(
        n1,
        &format!(
            "/v1.50/services/talk/logs?stdout=1&timestamps=1&until={}.{:09}",
            cut.timestamp(),
            cut.timestamp_subsec_nanos()
        ),
    ));
    assert!(
        until.iter().any(|(_, l)| l.contains(" start from ")),
        "{until:?}"
    );
    for (_, l) in &until {
        let ts = chrono::DateTime::parse_from_rfc3339(l.split(' ').next().unwrap()).unwrap();
        assert!(ts <= cut, "{l} is after until={cut}");
    }
    // Bad options are refused before the stream starts, as dockerd refuses them.
    let refused = String::from_utf8(curl(n1, "/v1.50/services/talk/logs?stdout=0")).unwrap();
    assert!(
        refused.contains("you must choose at least one stream"),
        "{refused}"
    );

    // A service with a TTY: its logs come raw, as dockerd sends them (the CLI wants --raw).
    n1.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "tty",
        "--tty",
        "shoal-test/busybox",
        "sh",
        "-c",
        "echo hello tty; sleep 1000",
    ]);
    wait_for(Duration::from_secs(30), "the TTY service's line", || {
        let out = n1.docker(&["service", "logs", "--raw", "tty"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("hello tty") {
            Ok(())
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    });
    let e = n1.fails(&["service", "logs", "tty"]);
    assert!(
        e.contains("tty service logs only supported with --raw"),
        "{e}"
    );
    let (head, body) = curl_with_headers(n1, "/v1.50/services/tty/logs?stdout=1");
    assert!(
        head.contains("content-type: application/vnd.docker.raw-stream"),
        "{head}"
    );
    assert!(body.starts_with(b"hello tty\r\n"), "{body:?}");
    let (head, _) = curl_with_headers(n1, "/v1.50/services/talk/logs?stdout=1&tail=0");
    assert!(
        head.contains("content-type: application/vnd.docker.multiplexed-stream"),
        "{head}"
    );

    // The Python SDK (it sends `stdout=True`).
    let script = format!(
        "import docker\n\
         c = docker.DockerClient(base_url='unix://{}')\n\
         s = c.services.get('talk')\n\
         out = b''.join(s.logs(stdout=True, stderr=True)).decode()\n\
         print(out)\n",
        c.node(2).socket.display()
    );
    let py = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    let out = String::from_utf8_lossy(&py.stdout);
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    for slot in tasks.keys() {
        assert!(out.contains(&format!("start from {slot}\n")), "{out}");
        assert!(out.contains(&format!("oops from {slot}\n")), "{out}");
    }
    assert!(!out.contains("com.docker.swarm"), "{out}");
}

/// What `docker service logs --follow` printed so far.
struct Follower {
    child: std::process::Child,
    out: Arc<Mutex<String>>,
}

impl Follower {
    fn start(n: &ClusterNode, args: &[&str]) -> Follower {
        let mut child = Command::new("docker")
            .args(["service", "logs", "--follow"])
            .args(args)
            .arg("talk")
            .env("DOCKER_HOST", format!("unix://{}", n.socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker service logs --follow");
        let out = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Follower { child, out }
    }

    fn text(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits until every node in `nodes` has printed a tick after `after` bytes of output.
    fn wait_ticks(&self, nodes: &[&str], after: usize) {
        wait_for(
            Duration::from_secs(15),
            &format!("new ticks from {nodes:?}"),
            || {
                let t = self.text();
                let new = &t[after.min(t.len())..];
                if nodes.iter().all(|n| {
                    new.lines()
                        .any(|l| l.contains(&format!("@{n}")) && l.contains("| tick"))
                }) {
                    Ok(())
                } else {
                    Err(t)
                }
            },
        );
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn followed_logs_get_new_lines_outlive_a_dead_node_and_end_with_their_client() {
    let (mut c, _) = talking_cluster("logsf");
    let started = |n: &ClusterNode| daemon_log(n).matches("log subscription started").count();
    let ended = |n: &ClusterNode| {
        daemon_log(n)
            .lines()
            .filter(|l| l.contains("log subscription ended") && l.contains("open=0"))
            .count()
    };
    let before: Vec<usize> = (1..=3).map(|i| ended(c.node(i))).collect();

    // On the other manager (through the leader): no old lines, only those printed since.
    let f = Follower::start(c.node(2), &["--tail", "0"]);
    f.wait_ticks(&["node-1", "node-2", "node-3"], 0);
    assert!(!f.text().contains("start from"), "{}", f.text());
    for i in 1..=3 {
        assert!(started(c.node(i)) >= 1, "node-{i} serves no subscription");
    }
    // The client is killed: every node's agent lets go of its subscription.
    drop(f);
    wait_for(
        Duration::from_secs(10),
        "every node's subscription ended",
        || {
            let now: Vec<usize> = (1..=3).map(|i| ended(c.node(i))).collect();
            if now.iter().zip(&before).all(|(n, b)| n > b) {
                Ok(())
            } else {
                Err(format!(
                    "ended with none open, before {before:?}, now {now:?}"
                ))
            }
        },
    );

    // A node dies mid-stream: the lines of the others keep coming.
    let f = Follower::start(c.node(1), &["--tail", "0", "--no-task-ids"]);
    f.wait_ticks(&["node-1", "node-2", "node-3"], 0);
    c.node_mut(3).kill();
    let mark = f.text().len();
    f.wait_ticks(&["node-1", "node-2"], mark);
    drop(f);
    wait_for(
        Duration::from_secs(10),
        "no subscription left on the leader",
        || {
            let log = daemon_log(c.node(1));
            let last = log
                .lines()
                .rfind(|l| l.contains("log subscription "))
                .unwrap_or_default()
                .to_string();
            if last.contains("ended") && last.contains("open=0") {
                Ok(())
            } else {
                Err(last)
            }
        },
    );
}
