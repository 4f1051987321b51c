//! The node's data directory holds the CA's key, the node's key and the raft store: what an
//! operator (or anyone with a shell on the machine) checks is that only root can read it.

mod common;

use common::{wait_for, Node};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// Every path under `dir` (itself included) whose mode is not 0700 (directories) or 0600
/// (files), with its mode.
fn looser(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(p) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        let wanted = if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
            0o700
        } else if meta.is_file() {
            0o600
        } else {
            continue;
        };
        if mode != wanted {
            out.push(format!("{} {mode:o}", p.display()));
        }
    }
    out.sort();
    out
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn the_data_dir_is_root_only_and_a_restart_repairs_looser_modes() {
    // The daemon inherits this test process's umask (022 as a rule), which alone would leave
    // the raft store and the keys readable by everyone.
    let mut node = Node::start("datadir");
    node.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    node.ok(&["service", "create", "-d", "--name", "web", "shoal-test/web"]);
    let data = node.dir.join("data");
    assert!(
        data.join("node.json").exists(),
        "the node's identity is on disk"
    );
    assert_eq!(looser(&data), Vec::<String>::new(), "after swarm init");

    // A restore from a backup (or a careless chmod) loosened some modes while the daemon was down.
    node.kill9();
    chmod(&data, 0o755);
    chmod(&data.join("node.json"), 0o644);
    assert_eq!(looser(&data).len(), 2);
    node.spawn();
    wait_for(
        Duration::from_secs(20),
        "modes repaired on restart",
        || match looser(&data) {
            l if l.is_empty() => Ok(()),
            l => Err(format!("still looser: {l:?}")),
        },
    );
    let log = node.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("repaired a mode looser than root-only"))
        .collect::<Vec<_>>();
    assert!(
        warned.iter().any(|l| l.contains("node.json")) && warned.len() >= 2,
        "the log names what was repaired: {warned:?}"
    );
    node.wait_replicas("web", "1/1");
}
