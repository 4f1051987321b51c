//! Restarts that always come back: one daemon per data directory, a first log line before
//! anything can block, and a warning when the node's address is not this machine's.

mod common;

use common::{wait_for, Node};
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
