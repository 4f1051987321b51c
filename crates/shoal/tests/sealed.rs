//! Keys and secrets at rest, as an operator (or a thief with a copy of the disk) would check:
//! a byte search of the data directory and the daemon's log finds no secret and no private
//! key, and with autolock a restarted manager does nothing until `docker swarm unlock`.

mod common;

use base64::Engine;
use common::{wait_for, Node};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Every file under `dir` that contains `needle`.
fn files_with(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(p) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            let bytes = std::fs::read(&p).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(p.display().to_string());
            }
        }
    }
    hits.sort();
    hits
}

/// Runs the docker CLI against `node` with `input` on its stdin (`docker swarm unlock` reads
/// the key there when stdin is not a terminal).
fn docker_with_input(socket: &Path, args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running docker");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("writing the key");
    child.wait_with_output().expect("docker")
}

fn local_state(node: &Node) -> String {
    state_at(&node.socket)
}

fn state_at(socket: &Path) -> String {
    let out = common::docker_at(socket, &["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// kill -9 and start again on the same data directory.
fn restart(node: &mut Node) {
    node.kill9();
    node.spawn();
}

#[test]
fn secrets_and_keys_are_sealed_in_the_data_dir_and_absent_from_the_log() {
    let mut node = Node::start("sealed");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    let marker = format!("SHOAL-SEALED-E2E-{}", std::process::id());
    let file = node.dir.join("secret.txt");
    std::fs::write(&file, &marker).unwrap();
    node.ok(&["secret", "create", "sealed", common::path(&file)]);
    std::fs::remove_file(&file).unwrap();
    node.ok(&["service", "create", "-d", "--name", "web", "shoal-test/web"]);
    node.wait_replicas("web", "1/1");

    let data = node.dir.join("data");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&marker);
    let check = |when: &str, node: &Node| {
        for (what, needle) in [
            ("the secret", marker.as_str()),
            ("the secret in base64", b64.as_str()),
            ("a PEM private key", "PRIVATE KEY"),
        ] {
            assert_eq!(
                files_with(&data, needle.as_bytes()),
                Vec::<String>::new(),
                "{when}: {what} is in the data dir"
            );
        }
        let log = node.log();
        assert!(
            !log.contains(&marker) && !log.contains(&b64) && !log.contains("PRIVATE KEY"),
            "{when}: the daemon log holds the secret or a key"
        );
    };
    check("after secret create", &node);
    assert!(
        data.join("keys/node.sealed").exists() && data.join("keys/kek").exists(),
        "the node key and data key are sealed, the KEK in its own file"
    );

    // The sealed store and key open again after a restart.
    restart(&mut node);
    wait_for(
        Duration::from_secs(30),
        "the secret after a restart",
        || {
            let out = node.docker(&["secret", "ls", "--format", "{{.Name}}"]);
            match String::from_utf8_lossy(&out.stdout).trim() {
                "sealed" => Ok(()),
                other => Err(format!(
                    "{other:?} {}",
                    String::from_utf8_lossy(&out.stderr)
                )),
            }
        },
    );
    node.wait_replicas("web", "1/1");
    check("after a restart", &node);
}

#[test]
fn autolock_keeps_a_restarted_manager_locked_until_unlocked_with_the_current_key() {
    let mut node = Node::start("autolock");
    let init = node.ok(&[
        "swarm",
        "init",
        "--autolock",
        "--advertise-addr",
        "127.0.0.1",
    ]);
    let key = node.ok(&["swarm", "unlock-key", "-q"]).trim().to_string();
    assert!(key.starts_with("SWMKEY-1-"), "{key}");
    assert!(init.contains(&key), "init prints the unlock key: {init}");
    let data = node.dir.join("data");
    assert!(!data.join("keys/kek").exists(), "no key file with autolock");
    assert_eq!(
        files_with(&data, key.as_bytes()),
        Vec::<String>::new(),
        "the unlock key is nowhere on disk in the clear"
    );
    node.ok(&["service", "create", "-d", "--name", "web", "shoal-test/web"]);
    node.wait_replicas("web", "1/1");

    restart(&mut node);
    assert_eq!(local_state(&node), "locked");
    let refused = node.fails(&["service", "ls"]);
    assert!(
        refused.contains("Swarm is encrypted and needs to be unlocked before it can be used"),
        "{refused}"
    );
    let wrong = docker_with_input(
        &node.socket,
        &["swarm", "unlock"],
        "SWMKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    );
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("swarm could not be unlocked: invalid key provided"),
        "{err}"
    );
    assert_eq!(local_state(&node), "locked", "a wrong key changes nothing");
    let ok = docker_with_input(&node.socket, &["swarm", "unlock"], &format!("{key}\n"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    wait_for(
        Duration::from_secs(30),
        "active after unlock",
        || match local_state(&node).as_str() {
            "active" => Ok(()),
            s => Err(s.to_string()),
        },
    );
    node.wait_replicas("web", "1/1");

    // A rotated key: the old one no longer unlocks, the new one does.
    let rotated = node
        .ok(&["swarm", "unlock-key", "--rotate", "-q"])
        .trim()
        .to_string();
    assert!(
        rotated.starts_with("SWMKEY-1-") && rotated != key,
        "{rotated}"
    );
    restart(&mut node);
    assert_eq!(local_state(&node), "locked");
    let old = docker_with_input(&node.socket, &["swarm", "unlock"], &format!("{key}\n"));
    assert!(
        !old.status.success(),
        "the key from before the rotation unlocked"
    );
    let ok = docker_with_input(&node.socket, &["swarm", "unlock"], &format!("{rotated}\n"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    node.wait_replicas("web", "1/1");

    // Autolock off: a restart comes back unlocked, and there is no key to show.
    node.ok(&["swarm", "update", "--autolock=false"]);
    let none = node.fails(&["swarm", "unlock-key"]);
    assert!(none.contains("no unlock key is set"), "{none}");
    restart(&mut node);
    assert_eq!(local_state(&node), "active");
    node.wait_replicas("web", "1/1");
    let log = node.log();
    assert!(
        !log.contains(&key) && !log.contains(&rotated),
        "the daemon log holds an unlock key"
    );
}

#[test]
fn every_manager_follows_autolock_and_a_restarted_one_waits_for_the_key() {
    let mut c = common::cluster::Cluster::start("lockc", 3);
    c.form(3);
    let n1 = c.node(1);
    n1.ok(&["swarm", "update", "--autolock=true"]);
    let key = n1.ok(&["swarm", "unlock-key", "-q"]).trim().to_string();
    for i in [2, 3] {
        let kek = c.node(i).dir.join("data/keys/kek");
        common::wait_until(
            Duration::from_secs(30),
            &format!("node-{i} re-sealed its keys with the unlock key"),
            || !kek.exists(),
        );
    }
    n1.ok(&["service", "create", "-d", "--name", "web", "shoal-test/web"]);

    // A restarted manager is locked; the others keep the swarm going meanwhile.
    c.node_mut(2).restart_daemon();
    let n2 = c.node(2);
    assert_eq!(state_at(&n2.socket), "locked");
    let refused = n2.fails(&["node", "ls"]);
    assert!(refused.contains("Swarm is encrypted"), "{refused}");
    c.node(1).ok(&["service", "ls"]);
    let ok = docker_with_input(&n2.socket, &["swarm", "unlock"], &format!("{key}\n"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    wait_for(Duration::from_secs(30), "node-2 manages again", || {
        let out = n2.docker(&["node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        match text
            .lines()
            .filter(|l| l.contains("Leader") || l.contains("Reachable"))
            .count()
        {
            3 => Ok(()),
            _ => Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))),
        }
    });

    // A rotation reaches node-3 too: after a restart only the new key opens it. The file is
    // read before the rotation: node-3 may re-seal before the CLI has its answer.
    let sealed = c.node(3).dir.join("data/keys/node.sealed");
    let before = std::fs::read(&sealed).unwrap();
    let rotated = c
        .node(1)
        .ok(&["swarm", "unlock-key", "--rotate", "-q"])
        .trim()
        .to_string();
    common::wait_until(
        Duration::from_secs(30),
        "node-3 re-sealed for the new key",
        || std::fs::read(&sealed).is_ok_and(|now| now != before),
    );
    c.node_mut(3).restart_daemon();
    let n3 = c.node(3);
    assert_eq!(state_at(&n3.socket), "locked");
    let old = docker_with_input(&n3.socket, &["swarm", "unlock"], &format!("{key}\n"));
    assert!(!old.status.success(), "the old key still unlocks node-3");
    let ok = docker_with_input(&n3.socket, &["swarm", "unlock"], &format!("{rotated}\n"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    wait_for(
        Duration::from_secs(30),
        "node-3 active",
        || match state_at(&n3.socket).as_str() {
            "active" => Ok(()),
            s => Err(s.to_string()),
        },
    );
}

/// What `fixtures/make-pre-sealing.sh` wrote with a shoal from before encryption at rest.
const OLD_SECRET: &str = "PRE-SEALING-SECRET-4711";

fn names(node: &Node, kind: &str) -> String {
    node.ok(&[kind, "ls", "--format", "{{.Name}}"])
}

#[test]
fn a_data_dir_from_before_sealing_is_sealed_on_its_first_start_and_keeps_its_swarm() {
    let fixture = common::repo().join("crates/shoal/tests/fixtures/pre-sealing-data.tar.gz");
    let b64 = base64::engine::general_purpose::STANDARD.encode(OLD_SECRET);
    let mut node = Node::start_prepared("presealed", &[], |dir| {
        let st = Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-xzf")
            .arg(&fixture)
            .status()
            .unwrap();
        assert!(st.success(), "unpacking {}", fixture.display());
        // The old format: private keys in PEM and the secret in the raft log's JSON.
        let data = dir.join("data");
        assert!(!files_with(&data, b"PRIVATE KEY").is_empty());
        assert!(!files_with(&data, b64.as_bytes()).is_empty());
    });
    let data = node.dir.join("data");
    let swarm_id = std::fs::read_to_string(data.join("swarm-id.txt")).unwrap();
    wait_for(
        Duration::from_secs(30),
        "the old swarm is active",
        || match state_at(&node.socket).as_str() {
            "active" => Ok(()),
            other => Err(other.to_string()),
        },
    );
    let check = |when: &str, node: &Node| {
        let id = node.ok(&["info", "--format", "{{.Swarm.Cluster.ID}}"]);
        assert_eq!(id.trim(), swarm_id.trim(), "{when}: the same swarm");
        assert!(names(node, "secret").contains("old_secret"), "{when}");
        assert!(names(node, "config").contains("old_config"), "{when}");
        assert!(names(node, "service").contains("old_svc"), "{when}");
        for (what, needle) in [
            ("the secret", OLD_SECRET),
            ("the secret in base64", b64.as_str()),
            ("a PEM private key", "PRIVATE KEY"),
        ] {
            assert_eq!(
                files_with(&data, needle.as_bytes()),
                Vec::<String>::new(),
                "{when}: {what} is still in the data dir"
            );
        }
    };
    check("first start", &node);
    // It takes writes, and the sealed state opens again after a restart.
    node.ok(&["secret", "create", "new_secret", "/etc/hostname"]);
    node.terminate();
    node.spawn();
    wait_for(
        Duration::from_secs(30),
        "the swarm after a restart",
        || match state_at(&node.socket).as_str() {
            "active" => Ok(()),
            other => Err(other.to_string()),
        },
    );
    check("after a restart", &node);
    assert!(names(&node, "secret").contains("new_secret"));
}
