//! The Python Docker SDK (`pip install docker==7.1.0`) against a single-node shoal: the second
//! real client beside the docker CLI. Each test starts a daemon of its own and runs one script
//! of `tests/sdk/` (swarm, nodes, services, secrets and configs, networks), which asserts what
//! the SDK sees and lists every failed check. `scripts/sdk-coverage.py` counts the SDK calls
//! the scripts make (they append them to `target/sdk-calls.txt`).

mod common;

use common::Node;
use std::process::Command;

/// Runs `tests/sdk/<script>` against `node`'s socket; fails the test with the script's output
/// (every failed check, and the daemon's log tail) unless every check passed.
fn sdk(node: &Node, script: &str) {
    let dir = common::repo().join("crates/shoal/tests/sdk");
    let calls = common::repo().join("target/sdk-calls.txt");
    let out = Command::new("python3")
        .arg(dir.join(script))
        .current_dir(&dir)
        .env("SHOAL_SOCKET", &node.socket)
        .env("SHOAL_SDK_CALLS", &calls)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'docker'"),
        "the Python Docker SDK is missing: pip install docker==7.1.0 (.ci/run installs it)"
    );
    assert!(
        out.status.success(),
        "{script} failed against shoal:\n{stdout}\n{stderr}"
    );
}

#[test]
fn swarm_init_update_leave_and_init_again() {
    let node = Node::start("sdk-swarm");
    sdk(&node, "swarm.py");
}

#[test]
fn nodes_list_get_update_and_drain() {
    let node = Node::start("sdk-nodes");
    sdk(&node, "nodes.py");
}

#[test]
fn services_in_every_mode_as_docker_shows_them() {
    let node = Node::start("sdk-services");
    sdk(&node, "services.py");
}

#[test]
fn secrets_and_configs() {
    let node = Node::start("sdk-objects");
    sdk(&node, "objects.py");
}

#[test]
fn overlay_networks() {
    let node = Node::start("sdk-networks");
    sdk(&node, "networks.py");
}
