//! Restarts that always come back: one daemon per data directory, a first log line before
//! anything can block, and a warning when the node's address is not this machine's.

mod common;

use common::{wait_for, wait_until, Node};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_second_daemon_on_the_same_data_dir_fails_at_once_naming_the_holder() {
    let node = Node::start("lock2");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    let holder = node.pid().expect("the first daemon runs");
    let started = Instant::now();
    let mut second = node
        .netns
        .command(env!("CARGO_BIN_EXE_shoal"))
        .args(["daemon", "--data-dir"])
        .arg(node.dir.join("data"))
        .arg("--socket")
        .arg(node.dir.join("second.sock"))
        .env("SHOAL_PULL", "never")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the second daemon");
    // Awaited, but bounded: a daemon that is still running after 3 s did not fail "at once".
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(3) {
            let _ = second.kill();
            let _ = second.wait();
            panic!("the second daemon still runs after 3 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "the second daemon exited 0: {err}");
    assert!(
        err.contains(&format!("PID {holder}")),
        "the message names the holder's PID {holder}: {err}"
    );
    // The first one is untouched and still serves.
    node.ok(&["node", "ls"]);
    assert!(!node.dir.join("second.sock").exists());
}

#[test]
fn the_first_log_line_comes_before_the_engine_answers() {
    let dir = tempfile::tempdir().unwrap();
    // An engine that accepts connections (the kernel's backlog) and never answers.
    let engine = dir.path().join("engine.sock");
    let _silent = std::os::unix::net::UnixListener::bind(&engine).unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["daemon", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(dir.path().join("docker.sock"))
        .arg("--engine")
        .arg(&engine)
        .env("SHOAL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting shoal daemon");
    let pid = daemon.id();
    let stderr = daemon.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(5));
    let _ = daemon.kill();
    let _ = daemon.wait();
    let first = plain(
        &first
            .expect("a first log line within 5 s while the engine does not answer")
            .unwrap(),
    );
    assert!(first.contains("starting"), "{first}");
    assert!(first.contains(&format!("pid={pid}")), "{first}");
}

#[test]
fn a_node_whose_address_is_on_no_interface_says_so() {
    let mut node = Node::start("addrwarn");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    node.kill9();
    // The data dir moved to a machine without that address (here: the identity names one
    // this namespace does not have).
    let path = node.dir.join("data/node.json");
    let mut identity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    identity["addr"] = "10.123.45.67:2377".into();
    std::fs::write(&path, identity.to_string()).unwrap();
    node.spawn();
    wait_for(Duration::from_secs(10), "the address warning", || {
        let log = plain(&node.log());
        match log
            .lines()
            .find(|l| l.contains("on none of its interfaces"))
        {
            Some(l) if l.contains("10.123.45.67") => Ok(()),
            _ => Err("not logged yet".into()),
        }
    });
    // A node whose address is its own gets no such warning.
    assert_eq!(
        node.log().matches("on none of its interfaces").count(),
        1,
        "warned only for the restart with a foreign address"
    );
}

/// A log line without its terminal colours.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ending with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `path` is a mount point in this (the host's) mount namespace.
fn mounted(path: &std::path::Path) -> bool {
    let want = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// `cat` in a container, through the engine itself.
fn cat_in(container: &str, path: &str) -> String {
    let out = Command::new("docker")
        .args([
            "-H",
            "unix:///var/run/docker.sock",
            "exec",
            container,
            "cat",
            path,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn secret_tmpfs_is_unmounted_on_shutdown_and_on_leave() {
    let mut node = Node::start("tmpfs");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    let id = node.node_id().unwrap();
    let files = std::path::PathBuf::from("/run/shoal/files").join(&id[..12]);
    let secret = node.dir.join("secret.txt");
    std::fs::write(&secret, "tmpfs-s3cr3t").unwrap();
    node.ok(&["secret", "create", "pw", secret.to_str().unwrap()]);
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "app",
        "--secret",
        "pw",
        "--stop-grace-period",
        "1s",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    node.wait_replicas("app", "1/1");
    assert!(
        mounted(&files),
        "the secrets tmpfs is mounted at {}",
        files.display()
    );
    let (container, _) = node.containers("app").pop().unwrap();
    assert_eq!(cat_in(&container, "/run/secrets/pw"), "tmpfs-s3cr3t");

    // SIGTERM: the host no longer shows the secret files; the running task keeps its own
    // mount of them.
    assert!(node.terminate().success());
    assert!(
        !mounted(&files),
        "the secrets tmpfs is unmounted on shutdown"
    );
    assert!(
        !files.exists() || std::fs::read_dir(&files).unwrap().next().is_none(),
        "nothing left under {}",
        files.display()
    );
    assert_eq!(
        cat_in(&container, "/run/secrets/pw"),
        "tmpfs-s3cr3t",
        "a running task still reads its secret while the daemon is down"
    );

    // Back: the task is adopted and the tmpfs is mounted again with its files.
    node.spawn();
    wait_until(Duration::from_secs(20), "tmpfs mounted again", || {
        mounted(&files)
    });
    node.wait_replicas("app", "1/1");
    assert_eq!(
        node.containers("app"),
        vec![(container.clone(), node.containers("app")[0].1.clone())]
    );
    assert_eq!(cat_in(&container, "/run/secrets/pw"), "tmpfs-s3cr3t");

    // Leave: containers and files go, and so does the mount.
    node.ok(&["swarm", "leave", "--force"]);
    assert!(!mounted(&files), "the secrets tmpfs is unmounted on leave");
    assert!(!files.exists(), "{} removed on leave", files.display());
}

/// Names in the data dir left by a change of the raft state (set-aside copies, the marker).
fn aside_left(data: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("raft.before-") || n.starts_with("raft.aside"))
        .collect()
}

#[test]
fn force_new_cluster_keeps_the_state_and_leaves_nothing_aside() {
    let mut node = Node::start("fnc");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    let secret = node.dir.join("secret.txt");
    std::fs::write(&secret, "kept").unwrap();
    node.ok(&["secret", "create", "kept", secret.to_str().unwrap()]);
    node.ok(&[
        "swarm",
        "init",
        "--force-new-cluster",
        "--advertise-addr",
        "127.0.0.1",
    ]);
    let data = node.dir.join("data");
    assert_eq!(aside_left(&data), Vec::<String>::new(), "old state removed");
    assert!(node.ok(&["secret", "ls"]).contains("kept"));
    node.kill9();
    node.spawn();
    wait_for(
        Duration::from_secs(20),
        "the secret after a restart",
        || {
            let out = node.docker(&["secret", "ls"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if text.contains("kept") {
                Ok(())
            } else {
                Err(format!("{text} {}", String::from_utf8_lossy(&out.stderr)))
            }
        },
    );
    assert_eq!(aside_left(&data), Vec::<String>::new());
}

#[test]
fn swarm_init_over_what_an_unfinished_leave_left() {
    let mut node = Node::start("reinit");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    let secret = node.dir.join("secret.txt");
    std::fs::write(&secret, "old swarm").unwrap();
    node.ok(&["secret", "create", "old", secret.to_str().unwrap()]);
    // A leave cut short after its first step: the identity is gone, the rest is still there.
    node.kill9();
    let data = node.dir.join("data");
    let old_identity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("node.json")).unwrap()).unwrap();
    let old_files = std::path::PathBuf::from("/run/shoal/files")
        .join(&old_identity["node_id"].as_str().unwrap()[..12]);
    std::fs::remove_file(data.join("node.json")).unwrap();
    assert!(data.join("raft").exists());
    node.spawn();
    assert_eq!(
        node.ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
            .trim(),
        "inactive"
    );
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    assert_eq!(
        node.ok(&["secret", "ls", "-q"]).trim(),
        "",
        "a new, empty swarm"
    );
    assert_eq!(
        aside_left(&data),
        Vec::<String>::new(),
        "the leftover is gone"
    );
    node.kill9();
    node.spawn();
    wait_for(
        Duration::from_secs(20),
        "the new swarm after a restart",
        || {
            let out = node.docker(&["node", "ls", "-q"]);
            if out.status.success() && !out.stdout.is_empty() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).to_string())
            }
        },
    );
    // The first swarm's secrets tmpfs: its daemon was killed and its identity is gone, so
    // nothing of shoal will unmount it (the harness unmounts the current identity's).
    if mounted(&old_files) {
        let _ = std::process::Command::new("umount")
            .arg(&old_files)
            .status();
    }
    let _ = std::fs::remove_dir(&old_files);
}
