//! The node registries (issue 22, part 2): every node serves the OCI distribution API on
//! 127.0.0.1:5000; tags and manifests live in the raft store, blobs on two nodes, so an image
//! pushed to one node runs on the others also after that node is gone. The nodes have Docker
//! Engines of their own (`Cluster::start_with_engines_and`) that pull from their own node's
//! registry.

mod common;

use common::cluster::{Cluster, ClusterNode};
use common::wait_until;
use std::time::Duration;

const IMAGE: &str = "shoal-test/busybox:latest";

/// `shoal registry ls` on a manager, as (repository:tag, digest, copies) rows.
fn registry_ls(n: &ClusterNode) -> Vec<(String, String, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["registry", "ls", "-H"])
        .arg(format!("unix://{}", n.socket.display()))
        .output()
        .expect("shoal registry ls");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("(COPIES"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6).then(|| {
                (
                    format!("{}:{}", f[0], f[1]),
                    f[2].to_string(),
                    f[4].to_string(),
                )
            })
        })
        .collect()
}

#[test]
fn an_image_pushed_to_one_node_runs_on_the_others_after_that_node_is_gone() {
    let mut c =
        Cluster::start_with_engines_and("reg", 3, |_| vec!["--pull".into(), "missing".into()]);
    c.form(1);
    let n2 = c.node(2);
    n2.load_image(IMAGE);
    n2.engine_ok(&["tag", IMAGE, "127.0.0.1:5000/app:1"]);
    let pushed = n2.engine_ok(&["push", "127.0.0.1:5000/app:1"]);
    let digest = pushed
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in the push's output:\n{pushed}"))
        .to_string();
    assert!(digest.starts_with("sha256:"), "{pushed}");

    // The tag is the swarm's: a manager lists it, and its blobs reach a second node.
    let n1 = c.node(1);
    wait_until(
        Duration::from_secs(60),
        "every blob of the image on two nodes",
        || {
            registry_ls(n1)
                .iter()
                .any(|(t, d, copies)| t == "app:1" && *d == digest && copies == "2")
        },
    );
    // Any node's registry serves it, to skopeo as to the engine.
    let inspect = c.node(3).sh(&[
        "skopeo",
        "inspect",
        "--tls-verify=false",
        "docker://127.0.0.1:5000/app:1",
    ]);
    assert!(
        inspect.contains(&digest),
        "skopeo inspect on node-3:\n{inspect}"
    );

    // The node that received the push is gone; the image is not on any engine but node-2's.
    n2.engine_ok(&["rmi", "127.0.0.1:5000/app:1"]);
    c.node_mut(2).kill();
    let n1 = c.node(1);
    n1.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "reg",
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        "127.0.0.1:5000/app:1",
        "sleep",
        "1d",
    ]);
    wait_until(
        Duration::from_secs(120),
        "two replicas on the two nodes left",
        || n1.running_on("reg") == vec!["node-1", "node-3"],
    );
    // The CLI pinned the digest through the registry, as with any registry.
    let image = n1.ok(&[
        "service",
        "inspect",
        "-f",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        "reg",
    ]);
    assert_eq!(image.trim(), format!("127.0.0.1:5000/app:1@{digest}"));
    // And the platforms from the image's config, which only a registry tells the CLI.
    let platforms = n1.ok(&[
        "service",
        "inspect",
        "-f",
        "{{json .Spec.TaskTemplate.Placement.Platforms}}",
        "reg",
    ]);
    assert!(
        platforms.contains("\"Architecture\":\"amd64\""),
        "{platforms}"
    );
    // By digest, from the engine of a node that never had it.
    c.node(3)
        .engine_ok(&["pull", &format!("127.0.0.1:5000/app@{digest}")]);

    // An upload whose content does not match its digest is refused and leaves nothing.
    let bad = format!("sha256:{}", "0".repeat(64));
    let answer = c.node(3).sh(&[
        "curl",
        "-s",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "--data-binary",
        "not what the digest says",
        &format!("http://127.0.0.1:5000/v2/bad/blobs/uploads/?digest={bad}"),
    ]);
    assert!(
        answer.ends_with("400") && answer.contains("DIGEST_INVALID"),
        "{answer}"
    );
    let head = c.node(3).sh(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-I",
        &format!("http://127.0.0.1:5000/v2/bad/blobs/{bad}"),
    ]);
    assert_eq!(head.trim(), "404");

    // A node that leaves the swarm keeps none of its registry's blobs.
    let n3 = c.node(3);
    let store = n3.dir.join("data").join("registry");
    assert!(store.exists(), "node-3 has a registry store");
    n3.ok(&["swarm", "leave", "--force"]);
    assert!(
        !store.exists(),
        "the registry's blobs outlived the node's leave"
    );
}
