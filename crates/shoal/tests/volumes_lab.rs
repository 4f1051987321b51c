//! Shared-volume lab (issue 19): real GlusterFS servers in the test nodes' namespaces, mounted on
//! the host as the Docker Engine would see them, losing and regaining their servers.

mod common;

use common::cluster::Cluster;
use common::gluster::GlusterLab;
use common::wait_until;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes `body` to `path` and fsyncs it, so it has reached the bricks when this returns.
fn write_synced(path: &Path, body: &str) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(body.as_bytes())?;
    f.sync_all()
}

/// Contents of a file, or "" if it cannot be read.
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn gluster_replica_two_survives_a_brick_kill() {
    let cluster = Cluster::start("vlab", 3);
    let t = Instant::now();
    let mut lab = GlusterLab::start(&cluster);
    let pool = t.elapsed();
    let volume = format!("gv-{}", std::process::id());
    let t = Instant::now();
    lab.create_volume(&volume, &[1, 2]);
    let created = t.elapsed();
    let mnt = lab.root().join("mnt");
    let t = Instant::now();
    lab.mount(&volume, 3, &mnt);
    let mounted = t.elapsed();
    eprintln!(
        "gluster setup: pool of 3 glusterds {pool:?}, replica-2 volume created and started \
         {created:?}, mounted {mounted:?}"
    );

    // Written through the mount, the file lands in both bricks.
    write_synced(&mnt.join("one"), "first\n").expect("writing through the mount");
    for i in [1, 2] {
        assert_eq!(
            read(&lab.brick_dir(&volume, i).join("one")),
            "first\n",
            "brick on node {i}"
        );
    }

    // One brick dies: the volume keeps serving from the other.
    lab.kill_brick(&volume, 1);
    write_synced(&mnt.join("two"), "second\n").expect("writing with brick 1 dead");
    assert_eq!(read(&mnt.join("two")), "second\n");
    assert_eq!(read(&mnt.join("one")), "first\n");
    assert_eq!(read(&lab.brick_dir(&volume, 2).join("two")), "second\n");

    // Back again, it is healed with what it missed.
    let t = Instant::now();
    lab.restart_bricks(&volume);
    wait_until(Duration::from_secs(60), "brick 1 healed", || {
        read(&lab.brick_dir(&volume, 1).join("two")) == "second\n"
    });
    let healed = t.elapsed();

    // Every server of the volume dies and comes back: the mount recovers by itself. A write
    // lands in both bricks once the client is connected to both again (until then it lands in
    // the first to come back, and is written again).
    let t = Instant::now();
    lab.stop_servers(&volume);
    lab.start_servers(&volume);
    let restarted = t.elapsed();
    let t = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "the mount writes to both bricks again",
        || {
            write_synced(&mnt.join("three"), "third\n").is_ok()
                && [1, 2]
                    .iter()
                    .all(|&i| read(&lab.brick_dir(&volume, i).join("three")) == "third\n")
        },
    );
    eprintln!(
        "gluster recovery: brick restarted and healed {healed:?}, servers restarted \
         {restarted:?}, then the mount wrote to both bricks in {:?}",
        t.elapsed()
    );
    assert_eq!(read(&mnt.join("one")), "first\n");
    assert_eq!(read(&mnt.join("two")), "second\n");

    lab.unmount(&mnt);
    assert!(!read(Path::new("/proc/self/mountinfo")).contains(&volume));
}
