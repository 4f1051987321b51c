//! sshfs shared volumes (issue 19) end to end, with a password that must stay secret: a real
//! OpenSSH server (`common::sshd`) in a test node's namespace, shoal daemons that mount it for
//! their tasks with sshfs, and the docker CLI. The password is random, so finding its bytes
//! anywhere (API output, logs, process arguments, the data directory) is a leak.
//!
//! The server's user is a throwaway local account (see `common::sshd`), not root: root's
//! password would have to be set for the test. A wrong password and an unpinned host key both
//! leave the task in `Preparing` with `mounting volume NAME: sshfs failed ...: read: Connection
//! reset by peer`: sshfs sends ssh's own message (`Permission denied`, `Host key verification
//! failed.`) to /dev/null, so the test tells the two apart by the server's log instead.

mod common;

use common::cluster::{Cluster, ClusterNode};
use common::sshd::{random_hex, Sshd};
use common::wait_until;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Waits until a task of `service` waits in `Preparing` with an error naming `volume`; returns
/// that error and how long it took.
fn wait_preparing_on(n: &ClusterNode, service: &str, volume: &str) -> (String, Duration) {
    let start = Instant::now();
    let want = format!("mounting volume {volume}");
    let mut rows = Vec::new();
    let limit = Duration::from_secs(90);
    while start.elapsed() < limit {
        rows = n.ps_rows(service);
        if let Some((_, e)) = rows
            .iter()
            .find(|(s, e)| s.starts_with("Preparing") && e.contains(&want))
        {
            return (e.clone(), start.elapsed());
        }
        // Started after all: the mount that had to fail did not.
        assert!(
            !rows.iter().any(|(s, _)| s.starts_with("Running")),
            "{service} runs, its volume {volume} mounted: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{service}: no task in Preparing with {want:?} after {limit:?}; rows {rows:?}");
}

/// Whether `hay` holds `needle` anywhere.
fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir` on `dir`'s own filesystem (a volume mounted inside is another
/// filesystem and is skipped): (path, whether it holds `needle`). Symlinks are not followed.
fn search_tree(dir: &Path, needle: &[u8]) -> Vec<(PathBuf, bool)> {
    let dev = std::fs::metadata(dir).map(|m| m.dev()).unwrap_or(0);
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.dev() != dev {
                continue;
            }
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let data = std::fs::read(&p).unwrap_or_default();
                let hit = holds(&data, needle);
                out.push((p, hit));
            }
        }
    }
    out
}

/// Processes whose arguments or environment hold `needle`: (pid, arguments).
fn processes_holding(needle: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.parse::<u32>().is_err() {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if holds(&cmdline, needle) || holds(&environ, needle) {
            let args = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            out.push((name, args));
        }
    }
    out
}

#[test]
fn an_sshfs_volume_mounts_with_a_password_that_leaks_nowhere() {
    common::images();
    let c = Cluster::start("vssh", 2);
    c.form(1);
    // Dropped before the cluster (declared after it): the server goes, then the nodes unmount.
    let mut sshd = Sshd::start(&c.node(2).netns, &c.node(2).ip);
    let pw = sshd.password.clone();
    let n1 = c.node(1);
    let vol = "sshdata";

    // The volume pins the server's key and logs in with the password.
    n1.ok(&[
        "volume",
        "create",
        "-d",
        "shoal",
        "--opt",
        "type=sshfs",
        "--opt",
        &format!("device={}", sshd.device()),
        "--opt",
        &format!("password={pw}"),
        "--opt",
        &format!("host_key={}", sshd.host_key),
        vol,
    ]);
    let created = Instant::now();
    n1.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "sshwriter",
        "--mount",
        &format!("type=volume,source={vol},target=/data"),
        "shoal-test/busybox",
        "sh",
        "-c",
        "echo written-by-task > /data/hello && sleep 3600",
    ]);
    let hello = sshd.dir.join("hello");
    wait_until(
        Duration::from_secs(90),
        "the task's file in the served directory",
        || std::fs::read_to_string(&hello).unwrap_or_default() == "written-by-task\n",
    );
    let to_file = created.elapsed();
    // Written through the server, as its user (not by root on the node's side of a bind).
    let owner = std::fs::metadata(&hello).unwrap().uid();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let uid: u32 = passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == sshd.user).then(|| f[2].parse().unwrap())
        })
        .unwrap();
    assert_eq!(owner, uid, "the file is the ssh user's");
    assert!(
        sshd.log()
            .contains(&format!("Accepted password for {}", sshd.user)),
        "{}",
        sshd.log()
    );
    let node_dirs: Vec<PathBuf> = c.nodes.iter().map(|n| n.dir.join("data")).collect();
    let mounts: Vec<String> = node_dirs
        .iter()
        .flat_map(|d| common::mounts_under(d))
        .collect();
    assert_eq!(
        mounts.len(),
        1,
        "one sshfs mount on the task's node: {mounts:?}"
    );

    // Where a user would look, the password is not.
    let inspect = n1.ok(&["volume", "inspect", vol]);
    assert!(
        !inspect.contains(&pw),
        "volume inspect shows the password: {inspect}"
    );
    let secret_name = format!("shoal-volume.{vol}.password");
    let shown = n1.ok(&[
        "volume",
        "inspect",
        "--format",
        "{{index .Options \"password\"}}",
        vol,
    ]);
    assert_eq!(
        shown.trim(),
        format!("<secret {secret_name}>"),
        "volume inspect names the secret"
    );
    assert!(
        inspect.contains(&sshd.device()),
        "volume inspect shows the other options: {inspect}"
    );
    let service = n1.ok(&["service", "inspect", "sshwriter"]);
    assert!(
        !service.contains(&pw),
        "service inspect shows the password: {service}"
    );
    let secrets = n1.ok(&["secret", "ls", "--format", "{{.Name}}"]);
    assert!(
        secrets.lines().any(|l| l == secret_name),
        "secret ls: {secrets}"
    );
    let secret = n1.ok(&["secret", "inspect", &secret_name]);
    assert!(!secret.contains(&pw), "{secret}");
    // While the mount is up: no process's arguments or environment (sshfs, ssh, sshd, the
    // daemons), as `ps` shows them.
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).to_string();
    assert!(ps.contains("sshfs"), "sshfs runs: {ps}");
    assert!(!ps.contains(&pw), "ps shows the password: {ps}");
    let procs = processes_holding(pw.as_bytes());
    assert!(procs.is_empty(), "/proc shows the password: {procs:?}");
    // Nor any daemon's log, nor any file of its data directory (the raft log is sealed).
    for n in &c.nodes {
        let log = std::fs::read(n.dir.join("daemon.log")).unwrap();
        assert!(
            !holds(&log, pw.as_bytes()),
            "node-{}'s daemon.log holds the password",
            n.index
        );
        assert!(!log.is_empty(), "node-{}'s daemon.log is empty", n.index);
        let files = search_tree(&n.dir.join("data"), pw.as_bytes());
        let leaks: Vec<&PathBuf> = files.iter().filter(|(_, h)| *h).map(|(p, _)| p).collect();
        assert!(
            leaks.is_empty(),
            "node-{} data files hold the password: {leaks:?}",
            n.index
        );
        assert!(
            files.len() > 3,
            "node-{}: searched {} files",
            n.index,
            files.len()
        );
    }

    // An unpinned key the node does not know: refused before any password is sent.
    let log_before = sshd.log().len();
    n1.ok(&[
        "volume",
        "create",
        "-d",
        "shoal",
        "--opt",
        "type=sshfs",
        "--opt",
        &format!("device={}", sshd.device()),
        "--opt",
        &format!("password={pw}"),
        "sshunknown",
    ]);
    n1.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "sshunknown",
        "--mount",
        "type=volume,source=sshunknown,target=/data",
        "shoal-test/busybox",
        "sh",
        "-c",
        "echo unverified > /data/unknown && sleep 3600",
    ]);
    let (unknown_err, unknown_after) = wait_preparing_on(n1, "sshunknown", "sshunknown");
    let since = sshd.log()[log_before..].to_string();
    assert!(
        !since.contains("Accepted password") && !since.contains("Failed password"),
        "a password went to a server whose key was not checked: {since}"
    );
    assert!(!unknown_err.contains(&pw), "{unknown_err}");

    // A wrong password: the task waits, the error names the volume and not the password.
    let wrong = format!("pw-{}", random_hex(12));
    n1.ok(&[
        "volume",
        "create",
        "-d",
        "shoal",
        "--opt",
        "type=sshfs",
        "--opt",
        &format!("device={}", sshd.device()),
        "--opt",
        &format!("password={wrong}"),
        "--opt",
        &format!("host_key={}", sshd.host_key),
        "sshwrong",
    ]);
    n1.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "sshwrong",
        "--mount",
        "type=volume,source=sshwrong,target=/data",
        "shoal-test/busybox",
        "sh",
        "-c",
        "echo wrong > /data/wrong && sleep 3600",
    ]);
    let (wrong_err, wrong_after) = wait_preparing_on(n1, "sshwrong", "sshwrong");
    assert!(!wrong_err.contains(&wrong), "{wrong_err}");
    assert!(
        sshd.log()
            .contains(&format!("Failed password for {}", sshd.user)),
        "{}",
        sshd.log()
    );
    // It keeps waiting: the agent tries again (backoff) and fails again, still in Preparing.
    let failed = format!("Failed password for {}", sshd.user);
    wait_until(
        Duration::from_secs(30),
        "a second try with the wrong password",
        || sshd.log().matches(&failed).count() >= 2,
    );
    let rows = n1.ps_rows("sshwrong");
    assert!(
        rows.iter().all(|(s, _)| !s.starts_with("Running")),
        "{rows:?}"
    );
    wait_preparing_on(n1, "sshwrong", "sshwrong");
    // Neither started on the empty directory under its failed mount.
    for s in ["sshunknown", "sshwrong"] {
        let containers = common::engine_containers(&format!("com.docker.swarm.service.name={s}"));
        assert!(containers.is_empty(), "{s}: {containers:?}");
    }
    assert!(!sshd.dir.join("unknown").exists() && !sshd.dir.join("wrong").exists());
    // Still nothing anywhere after the failures.
    for n in &c.nodes {
        let log = std::fs::read(n.dir.join("daemon.log")).unwrap();
        assert!(!holds(&log, pw.as_bytes()) && !holds(&log, wrong.as_bytes()));
    }
    eprintln!(
        "sshfs: service create to file on the server {to_file:?}; unknown host key in Preparing after {unknown_after:?} ({unknown_err}); wrong password after {wrong_after:?} ({wrong_err})"
    );

    // Cleanup as a user does it: services, then volumes (and their secrets) go.
    n1.ok(&["service", "rm", "sshwriter", "sshunknown", "sshwrong"]);
    for d in &node_dirs {
        wait_until(Duration::from_secs(30), "no volume mounted", || {
            common::mounts_under(d).is_empty()
        });
    }
    n1.ok(&["volume", "rm", vol, "sshunknown", "sshwrong"]);
    let secrets = n1.ok(&["secret", "ls", "--format", "{{.Name}}"]);
    assert!(
        !secrets.lines().any(|l| l.starts_with("shoal-volume.")),
        "the volumes' secrets went with them: {secrets}"
    );
    sshd.stop();
}

#[test]
fn an_sshfs_volume_logs_in_with_an_identity_key_kept_secret() {
    common::images();
    let c = Cluster::start("vsshid", 2);
    c.form(1);
    let sshd = Sshd::start(&c.node(2).netns, &c.node(2).ip);
    let n1 = c.node(1);
    n1.ok(&[
        "volume",
        "create",
        "-d",
        "shoal",
        "--opt",
        "type=sshfs",
        "--opt",
        &format!("device={}", sshd.device()),
        "--opt",
        &format!("identity={}", sshd.client_key),
        "--opt",
        &format!("host_key={}", sshd.host_key),
        "keyed",
    ]);
    n1.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "keyedwriter",
        "--mount",
        "type=volume,source=keyed,target=/data",
        "shoal-test/busybox",
        "sh",
        "-c",
        "echo by-key > /data/hello && sleep 3600",
    ]);
    let hello = sshd.dir.join("hello");
    wait_until(
        Duration::from_secs(90),
        "the task's file on the server",
        || std::fs::read_to_string(&hello).unwrap_or_default() == "by-key\n",
    );
    // Logged in with the key, never with a password (sshfs is told not to try one).
    let log = sshd.log();
    assert!(
        log.contains(&format!("Accepted publickey for {}", sshd.user)),
        "{log}"
    );
    assert!(!log.contains("Accepted password"), "{log}");
    // The key is a secret: shown nowhere a user looks.
    let key_line = sshd
        .client_key
        .lines()
        .nth(1)
        .expect("a key body line")
        .to_string();
    for args in [
        vec!["volume", "inspect", "keyed"],
        vec!["service", "inspect", "keyedwriter"],
    ] {
        let out = n1.ok(&args);
        assert!(!out.contains(&key_line), "{args:?} shows the key: {out}");
    }
    for i in 1..=2 {
        let log = std::fs::read_to_string(c.node(i).dir.join("daemon.log")).unwrap_or_default();
        assert!(!log.contains(&key_line), "node-{i}'s log holds the key");
    }
    n1.ok(&["service", "rm", "keyedwriter"]);
    wait_until(Duration::from_secs(30), "the mount gone", || {
        c.nodes
            .iter()
            .all(|n| common::mounts_under(&n.dir.join("data")).is_empty())
    });
    n1.ok(&["volume", "rm", "keyed"]);
}
