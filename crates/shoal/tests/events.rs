//! `docker events` against shoal, as a Swarm user reads it: the swarm's changes (services,
//! secrets, networks, nodes) with Docker's Type, Action and Actor, the engine's container events
//! in the same stream, the CLI's `--since`/`--until`/`--filter`, the Python SDK's
//! `client.events`, and a history that a new leader still has.

mod common;

use common::cluster::Cluster;
use common::{wait_for, wait_until, Node};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Now as the CLI takes a Unix time: `seconds.nanoseconds`.
fn now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// `docker events --format '{{json .}}'` with `args`, parsed.
fn events(out: String) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// (Type, Action, name) of the swarm-scoped events.
fn swarm_brief(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter(|e| e["scope"] == "swarm")
        .map(|e| {
            (
                e["Type"].as_str().unwrap_or_default().to_string(),
                e["Action"].as_str().unwrap_or_default().to_string(),
                e["Actor"]["Attributes"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn t(typ: &str, action: &str, name: &str) -> (String, String, String) {
    (typ.into(), action.into(), name.into())
}

/// Whether `want` appears in `got` in order (other events may come between).
fn in_order(got: &[(String, String, String)], want: &[(String, String, String)]) -> bool {
    let mut it = got.iter();
    want.iter().all(|w| it.any(|g| g == w))
}

fn secret_file(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, "hunter2").unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn docker_events_shows_the_swarms_changes_and_the_engines() {
    let node = Node::start("events");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    let node_id = node.node_id().unwrap();
    let t0 = now();
    node.ok(&["network", "create", "-d", "overlay", "backend"]);
    node.ok(&["secret", "create", "pw", &secret_file(&node.dir, "pw")]);
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--network",
        "backend",
        "shoal-test/web",
    ]);
    node.wait_replicas("web", "1/1");
    node.ok(&["service", "update", "-d", "--replicas", "2", "web"]);
    node.ok(&[
        "service",
        "update",
        "-d",
        "--image",
        "shoal-test/busybox",
        "--args",
        "sleep 3600",
        "web",
    ]);
    node.ok(&["service", "rm", "web"]);
    node.ok(&["secret", "rm", "pw"]);
    wait_until(Duration::from_secs(30), "the network can go", || {
        node.docker(&["network", "rm", "backend"]).status.success()
    });
    node.ok(&["node", "update", "--availability", "drain", &node_id]);
    node.ok(&["node", "update", "--availability", "active", &node_id]);
    let t1 = now();

    let all = events(node.ok(&[
        "events",
        "--format",
        "{{json .}}",
        "--since",
        &t0,
        "--until",
        &t1,
    ]));
    let swarm = swarm_brief(&all);
    let want = [
        t("network", "create", "backend"),
        t("secret", "create", "pw"),
        t("service", "create", "web"),
        t("service", "update", "web"),
        t("service", "remove", "web"),
        t("secret", "remove", "pw"),
        t("network", "remove", "backend"),
        t("node", "update", "127.0.0.1"),
    ];
    let hostname = all
        .iter()
        .find(|e| e["Type"] == "node")
        .map(|e| {
            e["Actor"]["Attributes"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .expect("a node event");
    let want: Vec<_> = want
        .into_iter()
        .map(|(ty, a, n)| {
            let n = if ty == "node" { hostname.clone() } else { n };
            (ty, a, n)
        })
        .collect();
    assert!(in_order(&swarm, &want), "{swarm:#?}");

    let attr = |e: &Value, k: &str| e["Actor"]["Attributes"][k].as_str().map(str::to_string);
    let service_updates: Vec<&Value> = all
        .iter()
        .filter(|e| e["Type"] == "service" && e["Action"] == "update")
        .collect();
    assert!(
        service_updates
            .iter()
            .any(|e| attr(e, "replicas.old").as_deref() == Some("1")
                && attr(e, "replicas.new").as_deref() == Some("2")),
        "{service_updates:#?}"
    );
    assert!(
        service_updates.iter().any(|e| attr(e, "image.new")
            .is_some_and(|i| i.starts_with("shoal-test/busybox"))
            && attr(e, "image.old").is_some_and(|i| i.starts_with("shoal-test/web"))),
        "{service_updates:#?}"
    );
    let drains: Vec<_> = all
        .iter()
        .filter(|e| e["Type"] == "node")
        .filter_map(|e| Some((attr(e, "availability.old")?, attr(e, "availability.new")?)))
        .collect();
    assert_eq!(
        drains,
        [
            ("active".to_string(), "drain".to_string()),
            ("drain".to_string(), "active".to_string())
        ]
    );
    for e in all.iter().filter(|e| e["scope"] == "swarm") {
        assert!(
            e["Actor"]["ID"].as_str().is_some_and(|id| id.len() >= 25),
            "{e}"
        );
        assert!(
            e["time"].as_i64().unwrap() > 0 && e["timeNano"].as_i64().unwrap() > 0,
            "{e}"
        );
    }
    // The engine's own events of this node's task containers are in the same stream, and
    // everything is ordered by time.
    let ours = |e: &&Value| attr(e, "com.docker.swarm.node.id").as_deref() == Some(&node_id);
    let containers: Vec<&Value> = all
        .iter()
        .filter(|e| e["Type"] == "container" && e["scope"] == "local")
        .filter(ours)
        .collect();
    assert!(
        containers.iter().any(|e| e["Action"] == "start"),
        "no container start of the task in {all:#?}"
    );
    let times: Vec<i64> = all
        .iter()
        .map(|e| e["timeNano"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // The CLI's other forms of time and filters. It sends a duration as whole seconds
    // (`--until 0s` is the start of this second), so these wait for the next one.
    let secs = |s: &str| s.split_once('.').unwrap().0.parse::<i64>().unwrap();
    wait_until(Duration::from_secs(5), "the next second", || {
        secs(&now()) > secs(&t1)
    });
    let t0_rfc = {
        let (s, n) = t0.split_once('.').unwrap();
        let secs: i64 = s.parse().unwrap();
        let nanos: u32 = n.parse().unwrap();
        chrono::DateTime::from_timestamp(secs, nanos)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    };
    let secrets = events(node.ok(&[
        "events",
        "--format",
        "{{json .}}",
        "--since",
        &t0_rfc,
        "--until",
        "0s",
        "--filter",
        "type=secret",
    ]));
    assert_eq!(
        swarm_brief(&secrets),
        [t("secret", "create", "pw"), t("secret", "remove", "pw")]
    );
    assert_eq!(secrets.len(), 2, "{secrets:#?}");
    let removed = events(node.ok(&[
        "events",
        "--format",
        "{{json .}}",
        "--since",
        "10m",
        "--until",
        "0s",
        "--filter",
        "service=web",
        "--filter",
        "event=remove",
    ]));
    assert_eq!(
        swarm_brief(&removed),
        [t("service", "remove", "web")],
        "{removed:#?}"
    );

    // The Python SDK sees them too.
    let py = std::process::Command::new("python3")
        .args([
            "-c",
            r#"
import docker, json, sys
c = docker.DockerClient(base_url="unix://" + sys.argv[1])
evs = list(c.events(decode=True, since=int(sys.argv[2]), until=int(sys.argv[3]),
                    filters={"type": ["service", "secret", "network"]}))
print(json.dumps(evs))
"#,
            node.socket.to_str().unwrap(),
            &secs(&t0).to_string(),
            &(secs(&t1) + 1).to_string(),
        ])
        .output()
        .expect("python3");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let sdk: Vec<Value> = serde_json::from_slice(&py.stdout).unwrap();
    let sdk = swarm_brief(&sdk);
    assert!(
        in_order(&sdk, &want[..want.len() - 1]),
        "the SDK's events: {sdk:#?}"
    );
    assert!(sdk.iter().all(|e| e.0 != "node"), "{sdk:#?}");

    print_latency(&node.socket);
}

/// One HTTP/1.1 request on the API socket; the connection, after the request was written.
fn request(socket: &Path, method: &str, path: &str, body: &str) -> UnixStream {
    let mut s = UnixStream::connect(socket).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: shoal\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

/// How long after a write its event reaches a live `GET /events` client (printed, not asserted).
fn print_latency(socket: &Path) {
    let filters = "%7B%22type%22%3A%5B%22secret%22%5D%7D";
    let stream = request(
        socket,
        "GET",
        &format!("/v1.41/events?filters={filters}"),
        "",
    );
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if line.starts_with('{') && tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    let (mut to_event, mut to_answer) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let name = format!("latency-{i}");
        let body = format!(r#"{{"Name":"{name}","Data":"eA=="}}"#);
        let sent = Instant::now();
        let mut conn = request(socket, "POST", "/v1.41/secrets/create", &body);
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        let answered = Instant::now();
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
        loop {
            let (at, line) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the secret's event");
            if line.contains(&format!("\"name\":\"{name}\"")) {
                to_event.push(at - sent);
                to_answer.push(answered - sent);
                break;
            }
        }
    }
    to_event.sort();
    to_answer.sort();
    eprintln!(
        "events latency, real daemon, 20 secrets (median / max): request sent -> event read by \
         a live client {:?} / {:?}; request sent -> the write's answer (commit) {:?} / {:?}",
        to_event[10], to_event[19], to_answer[10], to_answer[19]
    );
}

#[test]
fn a_new_leader_still_has_the_events_of_the_old_one() {
    let mut c = Cluster::start("events", 3);
    c.form(3);
    let t0 = now();
    let n1 = c.node(1);
    n1.ok(&[
        "secret",
        "create",
        "ev-secret",
        &secret_file(&n1.dir, "ev-secret"),
    ]);
    n1.ok(&["network", "create", "-d", "overlay", "ev-net"]);
    n1.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "ev-web",
        "--replicas",
        "0",
        "shoal-test/busybox",
    ]);
    let t1 = now();
    let before = [
        t("secret", "create", "ev-secret"),
        t("network", "create", "ev-net"),
        t("service", "create", "ev-web"),
    ];
    let history = |c: &Cluster, n: usize, until: &str| {
        events(c.node(n).ok(&[
            "events",
            "--format",
            "{{json .}}",
            "--filter",
            "scope=swarm",
            "--since",
            &t0,
            "--until",
            until,
        ]))
    };
    assert_eq!(
        swarm_brief(&history(&c, 1, &t1)),
        before,
        "on the leader that made them"
    );

    // The leader (node 1, which ran `swarm init`) dies; node 2 and 3 elect another.
    c.node_mut(1).kill();
    wait_until(Duration::from_secs(30), "a write is accepted again", || {
        c.node(2)
            .docker(&["config", "create", "ev-config", "/etc/hostname"])
            .status
            .success()
    });
    for n in [2, 3] {
        assert_eq!(
            swarm_brief(&history(&c, n, &t1)),
            before,
            "node {n} after the leader change"
        );
    }
    // The new leader's own events follow the old one's, each once; node-1 going down is one.
    wait_for(Duration::from_secs(30), "node-1 down in the events", || {
        let all = history(&c, 3, "0s");
        let b = swarm_brief(&all);
        let down = all.iter().any(|e| {
            e["Type"] == "node"
                && e["Actor"]["Attributes"]["name"] == "node-1"
                && e["Actor"]["Attributes"]["state.new"] == "down"
                && e["Actor"]["Attributes"]["state.old"] == "ready"
        });
        let mut want = before.to_vec();
        want.push(t("config", "create", "ev-config"));
        let once = want
            .iter()
            .all(|w| b.iter().filter(|g| *g == w).count() == 1);
        if down && in_order(&b, &want) && once {
            Ok(())
        } else {
            Err(format!("{b:?}"))
        }
    });
}
