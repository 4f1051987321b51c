//! The Docker API over TCP with mutual TLS (`shoal daemon --listen`), driven by real clients: the
//! docker CLI and the Python SDK with `DOCKER_HOST`/`DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH` and a
//! certificate from `shoal client-cert`; Python's `ssl` for a connection held open across a
//! revocation; the node protocol's own client (tonic over rustls) for port 2377. Every client
//! runs inside the daemon's network namespace (or the cluster's hub), so the ports are the
//! test's own.

mod common;
use common::cluster::{Cluster, CLIENT};
use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `program` inside the network namespace `ns`.
fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg(program);
    c
}

/// The docker CLI against `tcp://host:2376` with TLS and the certificates in `certs`.
fn tls_docker(ns: &str, host: &str, certs: &Path, args: &[&str]) -> Output {
    in_ns(ns, "docker")
        .args(args)
        .env("DOCKER_HOST", format!("tcp://{host}:2376"))
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", certs)
        .stdin(Stdio::null())
        .output()
        .expect("running docker")
}

/// Python with the SDK's TLS variables. `REQUESTS_CA_BUNDLE` and `CURL_CA_BUNDLE`, when the
/// environment sets them, make `requests` verify against that bundle instead of the SDK's
/// `ca.pem`: a client's setting, not the server's, so they are cleared here.
fn python(ns: &str, script: &str, envs: &[(&str, String)]) -> Command {
    let mut c = in_ns(ns, "python3");
    c.arg("-c")
        .arg(script)
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .stdin(Stdio::null());
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

fn tls_env(host: &str, certs: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("DOCKER_HOST", format!("tcp://{host}:2376")),
        ("DOCKER_TLS_VERIFY", "1".into()),
        ("DOCKER_CERT_PATH", certs.display().to_string()),
    ]
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `shoal client-cert NAME --out DIR` against a node's socket; the directory.
fn client_cert(socket: &Path, name: &str, dir: &Path) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["client-cert", name, "--out"])
        .arg(dir)
        .arg("--host")
        .arg(socket)
        .output()
        .expect("running shoal");
    assert!(out.status.success(), "shoal client-cert: {}", text(&out));
    dir.to_path_buf()
}

fn shoal_cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .arg("--host")
        .arg(socket)
        .output()
        .expect("running shoal")
}

/// Waits until something accepts TCP connections at `addr` inside `ns` (the TLS listener starts
/// once the node is a manager).
fn wait_listening(ns: &str, addr: &str) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let probe =
        format!("import socket; socket.create_connection(({host:?}, {port}), timeout=1).close()");
    wait_until(Duration::from_secs(20), &format!("{addr} accepts"), || {
        in_ns(ns, "python3")
            .args(["-c", &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
}

/// Opens a TLS connection with `certs`, asks `/_ping` on it and keeps it open; the child prints
/// "connected" once answered, then how the connection ended ("cut: ...") or that it did not.
fn hold_connection(ns: &str, host: &str, certs: &Path) -> Child {
    let script = format!(
        r#"
import socket, ssl, sys
d = {dir:?}
ctx = ssl.create_default_context(cafile=d + "/ca.pem")
ctx.load_cert_chain(d + "/cert.pem", d + "/key.pem")
s = ctx.wrap_socket(socket.create_connection(({host:?}, 2376)), server_hostname={host:?})
s.sendall(b"GET /_ping HTTP/1.1\r\nHost: shoal\r\n\r\n")
got = b""
while not got.endswith(b"OK"):
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
print("connected" if got.endswith(b"OK") else "unexpected: %r" % got, flush=True)
s.settimeout(30)
try:
    while True:
        if not s.recv(4096):
            print("cut: closed", flush=True)
            break
except socket.timeout:
    print("still open after 30 s", flush=True)
except Exception as e:
    print("cut: %s" % e, flush=True)
"#,
        dir = certs.display().to_string(),
    );
    python(ns, &script, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3")
}

/// The first line the held connection printed ("connected").
fn first_line(child: &mut Child) -> (String, BufReader<std::process::ChildStdout>) {
    let mut r = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    r.read_line(&mut line).expect("reading python");
    (line.trim().to_string(), r)
}

/// Waits (bounded) for the held connection to end and returns what it said.
fn ended(
    child: &mut Child,
    mut out: BufReader<std::process::ChildStdout>,
    within: Duration,
) -> String {
    let start = Instant::now();
    while start.elapsed() < within {
        if child.try_wait().expect("python").is_some() {
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            return line.trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    format!("still open after {within:?}")
}

/// The daemon's audit lines (`shoal::audit`), ANSI colours removed.
fn audit_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("shoal::audit"))
        .map(strip_ansi)
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// Runs `f` on a thread inside the network namespace `ns` (its sockets are the namespace's).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("opening the namespace");
        // SAFETY: setns only moves this thread (which runs nothing else) into the namespace.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the namespace thread")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn docker_cli_and_python_sdk_drive_the_swarm_over_tls() {
    let node = Node::start_with("remote-cli", &["--listen", "tcp://127.0.0.1:2376"]);
    let ns = node.netns.name.clone();
    // No swarm, no CA: the TCP API waits, and says so.
    wait_until(Duration::from_secs(10), "the log says why", || {
        node.log()
            .contains("starts once this node is a swarm manager")
    });
    let refused = python(
        &ns,
        "import socket; socket.create_connection(('127.0.0.1', 2376), timeout=1)",
        &[],
    )
    .output()
    .unwrap();
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Connection refused"),
        "{}",
        text(&refused)
    );
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    wait_listening(&ns, "127.0.0.1:2376");

    let certs = client_cert(&node.socket, "ci", &node.dir.join("ci"));
    let mode = |f: &str| {
        std::fs::metadata(certs.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("key.pem"), 0o600);
    assert!(std::fs::read_to_string(certs.join("key.pem"))
        .unwrap()
        .contains("PRIVATE KEY"));
    let cert = std::fs::read_to_string(certs.join("cert.pem")).unwrap();
    assert_eq!(shoal_pki::api_client_of_pem(&cert).unwrap().name, "ci");
    // ca.pem is the swarm's root CA, as `docker swarm ca` shows it.
    let ca = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    assert_eq!(node.ok(&["swarm", "ca"]).trim(), ca.trim());
    // Refused when the files are there already: nothing is overwritten.
    let again = shoal_cli(
        &node.socket,
        &["client-cert", "ci2", "--out", certs.to_str().unwrap()],
    );
    assert!(!again.status.success());
    assert!(text(&again).contains("exists"), "{}", text(&again));

    // The docker CLI, over TCP with mutual TLS.
    let docker = |args: &[&str]| {
        let out = tls_docker(&ns, "127.0.0.1", &certs, args);
        assert!(out.status.success(), "docker {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "0",
        "--env",
        "TOKEN=do-not-log-me",
        "shoal-test/web",
    ]);
    assert_eq!(
        docker(&["service", "ls", "--format", "{{.Name}} {{.Replicas}}"]).trim(),
        "web 0/0"
    );

    // The Python SDK's from_env() with the same variables: services and nodes.
    let script = r#"
import docker, json
c = docker.from_env()
print(json.dumps({
    "services": sorted(s.name for s in c.services.list()),
    "nodes": [(n.attrs["Description"]["Hostname"], n.attrs["Spec"]["Role"]) for n in c.nodes.list()],
    "swarm": c.swarm.attrs["ID"],
}))
"#;
    let out = python(&ns, script, &tls_env("127.0.0.1", &certs))
        .output()
        .unwrap();
    assert!(out.status.success(), "python: {}", text(&out));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["services"], serde_json::json!(["web"]));
    let nodes = seen["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{seen}");
    assert_eq!(nodes[0][1], "manager");
    let swarm_id = node.ok(&["info", "--format", "{{.Swarm.Cluster.ID}}"]);
    assert_eq!(seen["swarm"], swarm_id.trim());

    docker(&["service", "rm", "web"]);
    assert_eq!(docker(&["service", "ls", "-q"]).trim(), "");

    // Every remote write has its audit line with the client's name; reads are not at info, and
    // no body is ever logged.
    let log = node.log();
    let audit = audit_lines(&log);
    let find = |method: &str, path: &str, status: &str| {
        audit.iter().any(|l| {
            l.contains("remote API write")
                && l.contains("client=ci ")
                && l.contains(&format!("method={method}"))
                && l.contains(path)
                && l.contains(&format!("status={status}"))
        })
    };
    assert!(find("POST", "/services/create", "201"), "{audit:#?}");
    assert!(find("DELETE", "/services/web", "200"), "{audit:#?}");
    assert!(
        !audit.iter().any(|l| l.contains("GET")),
        "reads are debug lines: {audit:#?}"
    );
    assert!(!log.contains("do-not-log-me"), "a body reached the log");

    let ls = shoal_cli(&node.socket, &["client-cert", "ls"]);
    let ls = text(&ls);
    let row = ls
        .lines()
        .find(|l| l.starts_with("ci "))
        .unwrap_or_default();
    assert!(row.ends_with(" no"), "{ls}");

    // A client without TLS is refused, with the answer Go's servers give.
    let plain = in_ns(&ns, "docker")
        .arg("version")
        .env("DOCKER_HOST", "tcp://127.0.0.1:2376")
        .output()
        .unwrap();
    assert!(!plain.status.success());
    assert!(
        text(&plain).contains("Client sent an HTTP request to an HTTPS server"),
        "{}",
        text(&plain)
    );
    let out = python(
        &ns,
        "import docker; docker.DockerClient(base_url='tcp://127.0.0.1:2376').services.list()",
        &[],
    )
    .output()
    .unwrap();
    assert!(!out.status.success(), "plain python: {}", text(&out));
    // TLS without a client certificate: refused at the handshake.
    let out = in_ns(&ns, "curl")
        .args(["-s", "--max-time", "5", "--cacert"])
        .arg(certs.join("ca.pem"))
        .arg("https://127.0.0.1:2376/_ping")
        .output()
        .unwrap();
    assert!(!out.status.success(), "no certificate: {}", text(&out));
    assert!(
        node.log().contains("peer sent no certificates"),
        "{}",
        node.log()
    );
}

#[test]
fn revoked_foreign_and_node_certificates_are_refused() {
    let node = Node::start_with("remote-refuse", &["--listen", "tcp://127.0.0.1:2376"]);
    let ns = node.netns.name.clone();
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    wait_listening(&ns, "127.0.0.1:2376");
    let alice = client_cert(&node.socket, "alice", &node.dir.join("alice"));
    let bob = client_cert(&node.socket, "bob", &node.dir.join("bob"));
    let ls = |certs: &Path| tls_docker(&ns, "127.0.0.1", certs, &["service", "ls"]);
    assert!(ls(&alice).status.success(), "{}", text(&ls(&alice)));

    // Revoked: the open connection is ended, and every new handshake refused.
    let mut held = hold_connection(&ns, "127.0.0.1", &alice);
    let (first, rest) = first_line(&mut held);
    assert_eq!(first, "connected");
    let rm = shoal_cli(&node.socket, &["client-cert", "rm", "alice"]);
    assert!(rm.status.success(), "{}", text(&rm));
    let end = ended(&mut held, rest, Duration::from_secs(10));
    assert!(end.starts_with("cut"), "the open connection: {end}");
    let out = ls(&alice);
    assert!(!out.status.success());
    assert!(text(&out).contains("revoked certificate"), "{}", text(&out));
    assert!(ls(&bob).status.success(), "bob: {}", text(&ls(&bob)));
    let list = text(&shoal_cli(&node.socket, &["client-cert", "ls"]));
    let row = list
        .lines()
        .find(|l| l.starts_with("alice "))
        .unwrap_or_default();
    assert!(row.contains(" yes ("), "{list}");

    // A client certificate from another CA (the client trusts the swarm's CA all the same).
    let other_ca = shoal_pki::ClusterCa::generate().unwrap();
    let key = shoal_pki::ClientKey::generate().unwrap();
    let foreign = other_ca
        .issue_api_client(
            key.csr_pem(),
            "mallory",
            "elsewhere",
            Duration::from_secs(86400),
        )
        .unwrap();
    let dir = node.dir.join("mallory");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(alice.join("ca.pem"), dir.join("ca.pem")).unwrap();
    std::fs::write(dir.join("cert.pem"), &foreign.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), key.key_pem()).unwrap();
    let out = ls(&dir);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unknown certificate authority"),
        "{}",
        text(&out)
    );

    // A node certificate, got as a joining worker gets one (token + CSR on port 2377).
    let token = node.ok(&["swarm", "join-token", "-q", "worker"]);
    let token = token.trim().to_string();
    let worker = in_netns(&ns, move || {
        runtime().block_on(async move {
            let parsed = shoal_pki::JoinToken::parse(&token).unwrap();
            let boot = shoal_pki::bootstrap_client_config(parsed.ca_digest).unwrap();
            let ch = shoal_rpc::connect("127.0.0.1:2377", boot).unwrap();
            let key = shoal_pki::NodeKey::generate().unwrap();
            let issued = shoal_rpc::pb::ca_client::CaClient::new(ch)
                .issue_node_certificate(shoal_rpc::pb::IssueRequest {
                    token,
                    csr_pem: key.csr_pem().to_string(),
                    ..Default::default()
                })
                .await
                .expect("a worker certificate")
                .into_inner();
            key.into_node_cert(issued.cert_pem, issued.ca_pem).unwrap()
        })
    });
    assert_eq!(worker.identity().role.to_string(), "worker");
    let dir = node.dir.join("as-node");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), worker.ca_pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), worker.cert_pem()).unwrap();
    std::fs::write(dir.join("key.pem"), worker.key_pem()).unwrap();
    let out = ls(&dir);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unsupported certificate"),
        "{}",
        text(&out)
    );

    // And an API client certificate opens nothing on the node port: not even the CA's public
    // call, which a client without any certificate may make.
    let read = |f: &str| std::fs::read_to_string(bob.join(f)).unwrap();
    let (ca, cert, key) = (read("ca.pem"), read("cert.pem"), read("key.pem"));
    let (with_api_cert, anonymous) = in_netns(&ns, move || {
        runtime().block_on(async move {
            let mut cfg = (*shoal_pki::api_client_config(&ca, &cert, &key).unwrap()).clone();
            cfg.alpn_protocols = vec![b"h2".to_vec()];
            let ch = shoal_rpc::connect("127.0.0.1:2377", std::sync::Arc::new(cfg)).unwrap();
            let with_api_cert = shoal_rpc::pb::ca_client::CaClient::new(ch)
                .get_root_ca_certificate(shoal_rpc::pb::Empty {})
                .await
                .map(|r| r.into_inner().cert_pem);
            let digest = shoal_pki::digest_of(&ca);
            let boot = shoal_pki::bootstrap_client_config(digest).unwrap();
            let ch = shoal_rpc::connect("127.0.0.1:2377", boot).unwrap();
            let anonymous = shoal_rpc::pb::ca_client::CaClient::new(ch)
                .get_root_ca_certificate(shoal_rpc::pb::Empty {})
                .await
                .map(|r| r.into_inner().cert_pem);
            (with_api_cert, anonymous)
        })
    });
    assert!(anonymous.is_ok(), "{anonymous:?}");
    with_api_cert.expect_err("an API client certificate on port 2377");
    // The node port refused it in the handshake, for what it is.
    let log = strip_ansi(&node.log());
    assert!(
        log.lines()
            .any(|l| l.contains("refused a TLS connection") && l.contains("InvalidPurpose")),
        "{log}"
    );
}

#[test]
fn plain_tcp_is_served_only_on_loopback() {
    for addr in [
        "tcp://0.0.0.0:2375",
        "tcp://10.1.2.3:2375",
        "tcp://[::]:2375",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut daemon = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["daemon", "--listen", addr, "--tls=false", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--socket")
            .arg(dir.path().join("docker.sock"))
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // It must exit by itself, at once; one still running after 10 s has started.
        let start = Instant::now();
        while daemon.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if daemon.try_wait().unwrap().is_none() {
            let _ = daemon.kill();
            let _ = daemon.wait();
            panic!("shoal daemon --listen {addr} --tls=false started");
        }
        let out = daemon.wait_with_output().unwrap();
        assert!(!out.status.success(), "{addr} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("plain TCP is allowed only on a loopback address") && err.contains(addr),
            "{err}"
        );
        assert!(
            !dir.path().join("docker.sock").exists(),
            "refused before serving anything"
        );
    }

    let node = Node::start_with(
        "remote-plain",
        &["--listen", "tcp://127.0.0.1:2375", "--tls=false"],
    );
    let ns = node.netns.name.clone();
    let plain = |args: &[&str]| {
        in_ns(&ns, "docker")
            .args(args)
            .env("DOCKER_HOST", "tcp://127.0.0.1:2375")
            .output()
            .unwrap()
    };
    // Served from the start: a plain listener needs no CA.
    let out = plain(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = plain(&["service", "ls"]);
    assert!(out.status.success(), "{}", text(&out));
    let log = node.log();
    assert!(log.contains("over plain TCP on loopback"), "{log}");
    assert!(
        audit_lines(&log)
            .iter()
            .any(|l| l.contains("client=plain-tcp") && l.contains("/swarm/init")),
        "{log}"
    );
}

#[test]
fn a_revocation_through_one_manager_holds_on_every_manager() {
    let cluster = Cluster::start_with("remote", 3, |ip| {
        vec!["--listen".into(), format!("tcp://{ip}:2376")]
    });
    cluster.form(3);
    let hub = cluster.hub.name.clone();
    for n in &cluster.nodes {
        wait_listening(&hub, &format!("{}:2376", n.ip));
    }
    let certs = client_cert(
        &cluster.node(1).socket,
        "ops",
        &cluster.node(1).dir.join("ops"),
    );
    // The certificate issued through node 1 opens every manager (each serves its own server
    // certificate, naming its address).
    for n in &cluster.nodes {
        let out = tls_docker(&hub, &n.ip, &certs, &["node", "ls", "-q"]);
        assert!(out.status.success(), "{}: {}", n.ip, text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    }
    let out = python(
        &hub,
        "import docker; print(len(docker.from_env().nodes.list()))",
        &tls_env(&cluster.node(3).ip, &certs),
    )
    .output()
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "3",
        "{}",
        text(&out)
    );

    // A connection held open to node 3, then the certificate revoked through node 1.
    let mut held = hold_connection(&hub, &cluster.node(3).ip, &certs);
    let (first, rest) = first_line(&mut held);
    assert_eq!(first, "connected");
    let rm = shoal_cli(&cluster.node(1).socket, &["client-cert", "rm", "ops"]);
    assert!(rm.status.success(), "{}", text(&rm));
    let end = ended(&mut held, rest, Duration::from_secs(10));
    assert!(end.starts_with("cut"), "the connection to node 3: {end}");
    for n in &cluster.nodes {
        // The revocation reaches each manager's copy of the store within a raft round trip.
        wait_for(
            Duration::from_secs(5),
            &format!("{} refuses the revoked certificate", n.ip),
            || {
                let out = tls_docker(&hub, &n.ip, &certs, &["node", "ls", "-q"]);
                if !out.status.success() && text(&out).contains("revoked certificate") {
                    Ok(())
                } else {
                    Err(text(&out))
                }
            },
        );
    }
    // Node 3 ended it, and names the client (the hub, none of the nodes) in its refusals.
    let log = cluster.node(3).log_tail(400);
    assert!(
        log.contains("its open TCP API connections ended"),
        "node 3: {log}"
    );
    assert!(log.contains(CLIENT), "node 3 logged its peer: {log}");
}
