//! Shared volumes (issue 19) end to end: a real GlusterFS pool in the test nodes' namespaces
//! (`common::gluster`), shoal daemons that mount it for their tasks, and the docker CLI.

mod common;

use common::cluster::{Cluster, ClusterNode};
use common::gluster::GlusterLab;
use common::wait_until;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// Appends numbered records to /data/records, each fsynced before it is acknowledged on stdout
/// (`ack N`); a new task goes on from the last record in the file.
const WRITER: &str = r#"f=/data/records; touch $f; i=$(wc -l < $f)
while :; do i=$((i+1)); echo "record $i" >> $f && sync -d $f && echo "ack $i"; sleep 0.05; done"#;

/// The node (index) running the service's one running task, if any.
fn running_on(c: &Cluster, service: &str) -> Option<usize> {
    let out = c.node(1).ok(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}} {{.CurrentState}}",
    ]);
    let line = out.lines().find(|l| l.contains(" Running"))?;
    let host = line.split(' ').next()?;
    (1..=c.nodes.len()).find(|i| c.node(*i).name() == host)
}

/// The highest `ack N` the service's tasks printed so far.
fn last_ack(n: &ClusterNode, service: &str) -> u64 {
    let out = n.docker(&["service", "logs", "--raw", service]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ack "))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Record numbers in the records file.
fn records(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("record "))
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[test]
fn a_task_moves_with_its_glusterfs_data_and_outlives_a_brick() {
    common::images();
    let mut c = Cluster::start("vol", 3);
    c.form(1);
    let mut lab = GlusterLab::start(&c);
    let gv = format!("gv{}", std::process::id());
    lab.create_volume(&gv, &[1, 2]);
    let device = format!("{},{}:/{gv}", lab.ip(1), lab.ip(2));
    let n1 = c.node(1);

    // Options are checked before anything is stored, and the error names the option.
    let bad = n1.fails(&[
        "volume",
        "create",
        "-d",
        "shoal",
        "--opt",
        "type=glusterfs",
        "--opt",
        "device=nohost",
        "bad",
    ]);
    assert!(bad.contains("device"), "{bad}");
    let unknown = n1.fails(&[
        "volume", "create", "-d", "shoal", "--opt", "type=zfs", "bad",
    ]);
    assert!(unknown.contains("zfs"), "{unknown}");

    n1.ok(&[
        "volume",
        "create",
        "-d",
        "shoal",
        "--opt",
        "type=glusterfs",
        "--opt",
        &format!("device={device}"),
        "--opt",
        "subdir=app",
        "records",
    ]);
    let ls = n1.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(ls.lines().any(|l| l == "shoal records"), "{ls}");

    n1.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "writer",
        "--constraint",
        "node.role==worker",
        "--mount",
        "type=volume,source=records,target=/data",
        "shoal-test/busybox",
        "sh",
        "-c",
        WRITER,
    ]);
    let mut first = None;
    wait_until(Duration::from_secs(60), "the writer running", || {
        first = running_on(&c, "writer");
        first.is_some()
    });
    let first = first.unwrap();
    wait_until(Duration::from_secs(30), "20 acknowledged records", || {
        last_ack(c.node(1), "writer") >= 20
    });
    let inspect = n1.ok(&[
        "volume",
        "inspect",
        "records",
        "--format",
        "{{json .Status}}",
    ]);
    assert!(
        inspect.contains(&c.node(first).name()),
        "inspect shows where it is mounted: {inspect}"
    );

    // A test-side mount of the same gluster volume sees the records under `app/`.
    let mnt = lab.root().join("check");
    lab.mount(&gv, 3, &mnt);
    let file = mnt.join("app").join("records");
    assert!(records(&file).len() >= 20, "{:?}", records(&file));

    // One brick dies while the task writes: the task keeps running and writing.
    lab.kill_brick(&gv, 1);
    let before = last_ack(c.node(1), "writer");
    wait_until(Duration::from_secs(30), "acks after a brick died", || {
        last_ack(c.node(1), "writer") >= before + 20
    });
    assert_eq!(
        running_on(&c, "writer"),
        Some(first),
        "the task kept running"
    );
    lab.restart_bricks(&gv);

    // The node running it dies: the task comes up on the other worker, with every record
    // acknowledged before the kill.
    let acked = last_ack(c.node(1), "writer");
    let killed_at = Instant::now();
    c.node_mut(first).kill();
    let mut second = None;
    wait_until(
        Duration::from_secs(90),
        "the writer running elsewhere",
        || {
            second = running_on(&c, "writer").filter(|n| *n != first);
            second.is_some()
        },
    );
    let moved = killed_at.elapsed();
    let second = second.unwrap();
    wait_until(Duration::from_secs(30), "the new task writing", || {
        records(&file).len() as u64 > acked + 10
    });
    let got = records(&file);
    let set: BTreeSet<u64> = got.iter().copied().collect();
    for n in 1..=acked {
        assert!(set.contains(&n), "acknowledged record {n} is missing");
    }
    eprintln!(
        "writer moved from node-{first} to node-{second} {moved:?} after the kill; {acked} acknowledged records all there ({} in the file)",
        got.len()
    );

    let n1 = c.node(1);
    // Removing a volume a service uses is refused; after the service, it goes, and the node
    // that ran the task unmounts it.
    let refused = n1.fails(&["volume", "rm", "records"]);
    assert!(refused.contains("in use"), "{refused}");
    n1.ok(&["service", "rm", "writer"]);
    let vol_dir = c
        .node(second)
        .dir
        .join("data")
        .join("volumes")
        .join("records");
    wait_until(
        Duration::from_secs(30),
        "the volume unmounted on its node",
        || common::mounts_under(&vol_dir).is_empty(),
    );
    n1.ok(&["volume", "rm", "records"]);
    // (The engine's own volumes are listed too, and the tests share one engine.)
    let ls = n1.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(!ls.lines().any(|l| l == "shoal records"), "{ls}");
    // (The killed node's mount goes with the cluster: `Cluster`'s drop unmounts what is left.)
    lab.unmount(&mnt);
}

/// Waits until `docker service ls` shows `want` replicas of `service`.
fn wait_replicas(n: &ClusterNode, service: &str, want: &str) {
    wait_until(
        Duration::from_secs(60),
        &format!("{service} at {want}"),
        || {
            n.ok(&[
                "service",
                "ls",
                "--filter",
                &format!("name={service}"),
                "--format",
                "{{.Replicas}}",
            ])
            .trim()
            .starts_with(want)
        },
    );
}

#[test]
fn a_volume_whose_servers_are_down_keeps_its_task_waiting_with_the_reason() {
    common::images();
    let c = Cluster::start("volwait", 2);
    c.form(1);
    let mut lab = GlusterLab::start(&c);
    let gv = format!("gw{}", std::process::id());
    lab.create_volume(&gv, &[1, 2]);
    let n1 = c.node(1);
    n1.ok(&[
        "volume",
        "create",
        "-d",
        "shoal",
        "--opt",
        "type=glusterfs",
        "--opt",
        &format!("device={},{}:/{gv}", lab.ip(1), lab.ip(2)),
        "shared",
    ]);
    lab.stop_servers(&gv);

    n1.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "needs-storage",
        "--mount",
        "type=volume,source=shared,target=/data",
        "shoal-test/busybox",
        "sh",
        "-c",
        "echo hello > /data/hello && sleep 3600",
    ]);
    // Another service with no volume runs meanwhile: one bad volume blocks no one else.
    n1.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "bystander",
        "--replicas",
        "2",
        "shoal-test/busybox",
        "sleep",
        "3600",
    ]);
    let mut rows = Vec::new();
    wait_until(
        Duration::from_secs(90),
        "the task waiting with the mount error",
        || {
            rows = n1.ps_rows("needs-storage");
            rows.iter()
                .any(|(s, e)| s.starts_with("Preparing") && e.contains("mounting volume shared"))
        },
    );
    wait_replicas(n1, "bystander", "2/2");
    // Never started on the empty directory under the failed mount: no container exists.
    let containers = common::engine_containers("com.docker.swarm.service.name=needs-storage");
    assert!(containers.is_empty(), "{containers:?} {rows:?}");

    // The servers come back: the task mounts, starts and writes to the volume.
    lab.start_servers(&gv);
    wait_replicas(n1, "needs-storage", "1/1");
    wait_until(Duration::from_secs(20), "the file on both bricks", || {
        [1, 2].iter().all(|i| {
            std::fs::read_to_string(lab.brick_dir(&gv, *i).join("hello")).unwrap_or_default()
                == "hello\n"
        })
    });
    n1.ok(&["service", "rm", "needs-storage", "bystander"]);
    for i in 1..=2 {
        let dir = c.node(i).dir.join("data").join("volumes");
        wait_until(Duration::from_secs(30), "no volume mounted", || {
            common::mounts_under(&dir).is_empty()
        });
    }
}

/// A compose file with a node-local volume pinned to `node` and an NFS volume (Docker's
/// `local` driver form) whose mount options are `nfs_opts`.
fn stack_file(dir: &Path, node: &str, nfs_opts: &str) -> std::path::PathBuf {
    let path = dir.join("stack.yml");
    std::fs::write(
        &path,
        format!(
            r#"version: "3.8"
services:
  pinned:
    image: shoal-test/busybox
    command: ["sh", "-c", "echo hi > /data/hi && sleep 3600"]
    volumes: ["local:/data"]
  nfsuser:
    image: shoal-test/busybox
    command: ["sleep", "3600"]
    volumes: ["nfs:/data"]
volumes:
  local:
    driver: shoal
    driver_opts: {{type: local, node: {node}}}
  nfs:
    driver: local
    driver_opts: {{type: nfs, o: "{nfs_opts}", device: ":/export/pg"}}
"#
        ),
    )
    .unwrap();
    path
}

#[test]
fn stack_volumes_pin_local_data_and_apply_new_options_on_redeploy() {
    common::images();
    let mut c = Cluster::start("volstack", 2);
    c.form(1);
    let n1 = c.node(1);
    let dir = tempfile::tempdir().unwrap();
    let file = stack_file(dir.path(), "node-2", "addr=10.99.0.250,nfsvers=4,rw");
    n1.ok(&["stack", "deploy", "-c", file.to_str().unwrap(), "st"]);
    let ls = n1.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(ls.lines().any(|l| l == "shoal st_local"), "{ls}");
    assert!(ls.lines().any(|l| l == "local st_nfs"), "{ls}");

    // The node-local volume pins its task to node-2, where its data is.
    wait_until(Duration::from_secs(60), "the pinned task running", || {
        running_on(&c, "st_pinned") == Some(2)
    });
    let data = c.node(2).dir.join("data/volumes/st_local/_data/hi");
    wait_until(Duration::from_secs(20), "its file on node-2", || {
        std::fs::read_to_string(&data).unwrap_or_default() == "hi\n"
    });

    // NFS cannot mount on this kernel (no nfs in /proc/filesystems): the task waits in
    // `preparing` with the mount's error, never starting on an empty directory.
    let mut rows = Vec::new();
    wait_until(Duration::from_secs(60), "the NFS task waiting", || {
        rows = n1.ps_rows("st_nfsuser");
        rows.iter()
            .any(|(s, e)| s.starts_with("Preparing") && e.contains("mounting volume st_nfs"))
    });
    eprintln!("the NFS task, as docker service ps shows it: {rows:?}");
    let opts = n1.ok(&[
        "volume",
        "inspect",
        "st_nfs",
        "--format",
        "{{json .Options}}",
    ]);
    assert!(opts.contains("nfsvers=4,"), "{opts}");

    // A new deploy with other options: stored and shown (the next mount uses them).
    let file = stack_file(dir.path(), "node-2", "addr=10.99.0.250,nfsvers=4.1,rw");
    n1.ok(&["stack", "deploy", "-c", file.to_str().unwrap(), "st"]);
    let opts = n1.ok(&[
        "volume",
        "inspect",
        "st_nfs",
        "--format",
        "{{json .Options}}",
    ]);
    assert!(opts.contains("nfsvers=4.1"), "{opts}");

    // Bad options are refused with the option named, and nothing changes.
    let bad = stack_file(
        dir.path(),
        "node-2",
        "addr=10.99.0.250,nfsvers=4,ProxyCommand=x",
    );
    let out = n1.docker(&["stack", "deploy", "-c", bad.to_str().unwrap(), "st"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && err.contains("ProxyCommand"),
        "{err}"
    );
    let opts = n1.ok(&[
        "volume",
        "inspect",
        "st_nfs",
        "--format",
        "{{json .Options}}",
    ]);
    assert!(opts.contains("nfsvers=4.1"), "{opts}");

    // The volume's node dies: its task waits, and the reason says where the volume lives.
    c.node_mut(2).kill();
    let n1 = c.node(1);
    wait_until(
        Duration::from_secs(60),
        "the pinned task pending with the reason",
        || {
            n1.ps_rows("st_pinned").iter().any(|(s, e)| {
                s.starts_with("Pending") && e.contains("volume st_local lives on node node-2")
            })
        },
    );
    n1.ok(&["stack", "rm", "st"]);
}
