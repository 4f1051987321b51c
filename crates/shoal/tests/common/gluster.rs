//! GlusterFS lab: one real `glusterd` per test node namespace, for end-to-end tests of shared
//! volumes (issue 19) that must survive a storage server's death.
//!
//! Each node's glusterd runs in the node's network namespace *and* a private mount namespace of
//! its own (`nsenter --net=... unshare -m`), where a per-node directory is bound over
//! `/var/lib/glusterd` and `/var/log/glusterfs` and a tmpfs covers `/run`: so every glusterd
//! has its own state, UUID, logs and `/run/glusterd.socket`. The `gluster` CLI only talks to the
//! glusterd of the mount namespace it runs in (`--remote-host` is read-only), so it runs through
//! `nsenter -t <glusterd pid> -m -n`. Peers know each other by address (10.99.0.i); the nodes'
//! bridge lives in the cluster's hub namespace, so the host's FORWARD policy does not apply.
//!
//! Bricks live under the lab's directory on the root filesystem (hence `force` on create), the
//! same path inside and outside the glusterd's mount namespace, so a test reads a brick's files
//! directly. A FUSE mount made through [`GlusterLab::mount`] is started with `nsenter --net`
//! only, so it sits in the host's mount namespace: the host and the Docker Engine see it.
//!
//! Everything lives under one directory, `<tmp>/shoal-t<pid>-gluster-<n>`; dropping the lab
//! unmounts, stops and deletes its volumes, kills every process of every node's mount namespace
//! and removes the directory. What a killed test process left is swept by the next lab.

use super::{netns_name, unmount_under, wait_for, wait_until};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Run by `unshare -m` inside a node's network namespace: private state, logs and `/run`, then
/// glusterd in the foreground (its pid is the spawned child's). `$1` is the node's directory.
const GLUSTERD_SCRIPT: &str = r#"set -e
d="$1"
mkdir -p "$d/lib" "$d/log" /var/lib/glusterd /var/log/glusterfs
mount --bind "$d/lib" /var/lib/glusterd
mount --bind "$d/log" /var/log/glusterfs
mount -t tmpfs -o mode=0755 shoal-gluster /run
exec glusterd -N -l "$d/log/glusterd.log"
"#;

static SWEEP: Once = Once::new();

/// One brick as `gluster volume status --xml` shows it.
#[derive(Debug, Clone)]
pub struct Brick {
    /// The brick node's address.
    pub host: String,
    /// The brick's directory (same path on the host).
    pub path: PathBuf,
    /// Whether glusterd sees its glusterfsd running.
    pub online: bool,
    /// Its glusterfsd's process ID while online.
    pub pid: Option<u32>,
}

/// One node's glusterd.
struct GlusterNode {
    ip: String,
    netns: String,
    dir: PathBuf,
    glusterd: Option<Child>,
    /// `mnt:[inode]` of the glusterd's private mount namespace: every process in it is the node's.
    mnt_ns: Option<String>,
}

/// A GlusterFS trusted pool over a set of node namespaces: volumes, brick kills, server
/// restarts and host-visible FUSE mounts, all torn down on drop.
pub struct GlusterLab {
    root: PathBuf,
    nodes: Vec<GlusterNode>,
    /// Volumes created, with the 1-based nodes holding their bricks.
    volumes: Vec<(String, Vec<usize>)>,
    /// FUSE mount points made by [`GlusterLab::mount`], unmounted on drop.
    mounts: Vec<PathBuf>,
}

impl GlusterLab {
    /// One glusterd on every node of a [`super::cluster::Cluster`], probed into one pool.
    pub fn start(cluster: &super::cluster::Cluster) -> GlusterLab {
        let nodes: Vec<(String, String)> = cluster
            .nodes
            .iter()
            .map(|n| (n.netns.name.clone(), n.ip.clone()))
            .collect();
        GlusterLab::start_in(&nodes)
    }

    /// One glusterd in each `(network namespace, address)`, probed into one pool (node 1
    /// probes the others): for labs on plain namespaces rather than a shoal cluster.
    pub fn start_in(nodes: &[(String, String)]) -> GlusterLab {
        sweep_stale();
        let root = std::env::temp_dir().join(netns_name("gluster"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("creating the gluster lab directory");
        let mut lab = GlusterLab {
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(i, (netns, ip))| GlusterNode {
                    ip: ip.clone(),
                    netns: netns.clone(),
                    dir: root.join(format!("node-{}", i + 1)),
                    glusterd: None,
                    mnt_ns: None,
                })
                .collect(),
            root,
            volumes: Vec::new(),
            mounts: Vec::new(),
        };
        for i in 1..=lab.nodes.len() {
            lab.spawn_glusterd(i);
        }
        for i in 1..=lab.nodes.len() {
            lab.wait_glusterd(i);
        }
        let others: Vec<String> = lab.nodes[1..].iter().map(|n| n.ip.clone()).collect();
        for ip in &others {
            lab.gluster(1, &["peer", "probe", ip]);
        }
        let all: Vec<usize> = (1..=lab.nodes.len()).collect();
        lab.wait_peers(&all);
        lab
    }

    /// The lab's directory: node state, bricks and logs; mount points belong under it too.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Node `i`'s (1-based) address.
    pub fn ip(&self, i: usize) -> &str {
        &self.nodes[i - 1].ip
    }

    /// Runs `gluster --mode=script ARGS` against node `i`'s glusterd; the raw output.
    pub fn try_gluster(&self, i: usize, args: &[&str]) -> Output {
        let pid = self
            .glusterd_pid(i)
            .unwrap_or_else(|| panic!("glusterd of node {i} is stopped"));
        Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-m",
                "-n",
                "gluster",
                "--mode=script",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running nsenter gluster")
    }

    /// Runs `gluster --mode=script ARGS` on node `i` and returns stdout; panics with its
    /// output and the glusterd log's tail if it fails.
    pub fn gluster(&self, i: usize, args: &[&str]) -> String {
        let out = self.try_gluster(i, args);
        assert!(
            out.status.success(),
            "gluster {} on node {i} failed: {}{}\n---- glusterd log (tail) ----\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.glusterd_log_tail(i, 20)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Creates and starts a replica volume `name` with one brick on each of `on` (1-based
    /// nodes, replica count = their number), and waits until every brick is online.
    pub fn create_volume(&mut self, name: &str, on: &[usize]) {
        assert!(on.len() >= 2, "a replica volume needs two bricks or more");
        let bricks: Vec<String> = on
            .iter()
            .map(|&i| format!("{}:{}", self.ip(i), self.brick_dir(name, i).display()))
            .collect();
        let replica = on.len().to_string();
        let mut args = vec!["volume", "create", name, "replica", &replica];
        args.extend(bricks.iter().map(String::as_str));
        // Bricks on the root filesystem are refused without it.
        args.push("force");
        self.gluster(on[0], &args);
        self.volumes.push((name.to_string(), on.to_vec()));
        self.gluster(on[0], &["volume", "start", name]);
        self.wait_bricks(name, Duration::from_secs(30), |b| {
            b.iter().all(|b| b.online)
        });
    }

    /// Where node `i`'s brick of `volume` keeps its files (a host path).
    pub fn brick_dir(&self, volume: &str, i: usize) -> PathBuf {
        self.nodes[i - 1].dir.join("bricks").join(volume)
    }

    /// The volume's bricks as glusterd sees them (asked of a running node, brick nodes
    /// first); empty if no glusterd answers.
    pub fn bricks(&self, volume: &str) -> Vec<Brick> {
        let Some(i) = self.answering_node(volume) else {
            return Vec::new();
        };
        let out = self.try_gluster(i, &["volume", "status", volume, "--xml"]);
        if !out.status.success() {
            return Vec::new();
        }
        parse_bricks(&String::from_utf8_lossy(&out.stdout), &self.root)
    }

    /// Node `i`'s brick of `volume`, as glusterd sees it.
    pub fn brick(&self, volume: &str, i: usize) -> Option<Brick> {
        let path = self.brick_dir(volume, i);
        self.bricks(volume)
            .into_iter()
            .find(|b| b.host == self.ip(i) && b.path == path)
    }

    /// `kill -9` of node `i`'s brick process of `volume`; returns once it is dead and glusterd
    /// shows the brick offline (a `volume start force` before that would see it running).
    pub fn kill_brick(&self, volume: &str, i: usize) {
        let pid = self
            .brick(volume, i)
            .and_then(|b| b.pid)
            .unwrap_or_else(|| panic!("brick of {volume} on node {i} is not running"));
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        wait_until(Duration::from_secs(10), "killed brick process gone", || {
            !process_alive(pid)
        });
        wait_until(
            Duration::from_secs(20),
            "glusterd sees the brick offline",
            || self.brick(volume, i).is_some_and(|b| !b.online),
        );
    }

    /// Restarts the volume's dead bricks (`gluster volume start V force`, repeated while
    /// glusterd still takes a brick for running) and waits until every brick is online.
    pub fn restart_bricks(&self, volume: &str) {
        let first = self.volume_nodes(volume)[0];
        let mut last_force: Option<Instant> = None;
        wait_for(
            Duration::from_secs(60),
            &format!("{volume}'s bricks online"),
            || {
                let bricks = self.bricks(volume);
                if !bricks.is_empty() && bricks.iter().all(|b| b.online) {
                    return Ok(());
                }
                let mut seen = format!("{bricks:?}");
                if last_force.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    // Refused while a peer is still reconnecting; tried again on the next round.
                    let out = self.try_gluster(first, &["volume", "start", volume, "force"]);
                    if !out.status.success() {
                        seen += &String::from_utf8_lossy(&out.stderr);
                    }
                    last_force = Some(Instant::now());
                }
                Err(seen)
            },
        );
    }

    /// Kills every server of `volume`: glusterd, bricks and self-heal daemon of each node
    /// holding one of its bricks (`kill -9` of its whole mount namespace), as a power cut would.
    pub fn stop_servers(&mut self, volume: &str) {
        for i in self.volume_nodes(volume) {
            self.kill_node(i);
        }
    }

    /// Starts the glusterd of every node holding a brick of `volume` again (same state), and
    /// waits until they are back in the pool and every brick is online.
    pub fn start_servers(&mut self, volume: &str) {
        let nodes = self.volume_nodes(volume);
        let stopped: Vec<usize> = nodes
            .iter()
            .copied()
            .filter(|&i| self.glusterd_pid(i).is_none())
            .collect();
        for &i in &stopped {
            self.spawn_glusterd(i);
        }
        for &i in &stopped {
            self.wait_glusterd(i);
        }
        self.wait_peers(&nodes);
        self.restart_bricks(volume);
    }

    /// The FUSE mount's source and options: the first brick node serves the volfile, the
    /// others are its backups (what a client or a Docker volume would be given).
    pub fn mount_source(&self, volume: &str) -> (String, String) {
        let nodes = self.volume_nodes(volume);
        let backups: Vec<&str> = nodes[1..].iter().map(|&i| self.ip(i)).collect();
        (
            format!("{}:/{volume}", self.ip(nodes[0])),
            format!("backup-volfile-servers={}", backups.join(":")),
        )
    }

    /// Mounts `volume` on `dir` (created if missing) with a FUSE client in node `via`'s network
    /// namespace but the host's mount namespace, so the host and the Docker Engine see it.
    pub fn mount(&mut self, volume: &str, via: usize, dir: &Path) {
        std::fs::create_dir_all(dir).expect("creating the mount point");
        let (source, opts) = self.mount_source(volume);
        let log = self
            .root
            .join(format!("mount-{volume}-{}.log", self.mounts.len()));
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.nodes[via - 1].netns))
            .args(["mount", "-t", "glusterfs", "-o"])
            .arg(format!("{opts},log-file={}", log.display()))
            .arg(&source)
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .expect("running mount -t glusterfs");
        assert!(
            out.status.success(),
            "mount -t glusterfs {source} {}: {}{}\n---- client log ----\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&log, 30)
        );
        self.mounts.push(dir.to_path_buf());
        wait_until(
            Duration::from_secs(20),
            "the glusterfs mount is listed",
            || {
                mount_points()
                    .iter()
                    .any(|(p, t)| p == dir && t == "fuse.glusterfs")
            },
        );
    }

    /// Unmounts a mount made by [`GlusterLab::mount`] (lazily if it is busy).
    pub fn unmount(&mut self, dir: &Path) {
        unmount(dir);
        self.mounts.retain(|m| m != dir);
    }

    /// The last `n` lines of node `i`'s glusterd log, for failure messages.
    pub fn glusterd_log_tail(&self, i: usize, n: usize) -> String {
        tail(&self.nodes[i - 1].dir.join("log/glusterd.log"), n)
    }

    fn volume_nodes(&self, volume: &str) -> Vec<usize> {
        self.volumes
            .iter()
            .find(|(v, _)| v == volume)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| panic!("no volume {volume} in this lab"))
    }

    fn glusterd_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i - 1].glusterd.as_ref().map(Child::id)
    }

    /// A node whose glusterd runs, preferring the volume's brick nodes.
    fn answering_node(&self, volume: &str) -> Option<usize> {
        let bricks = self.volume_nodes(volume);
        let rest = (1..=self.nodes.len()).filter(|i| !bricks.contains(i));
        bricks
            .iter()
            .copied()
            .chain(rest)
            .find(|&i| self.glusterd_pid(i).is_some())
    }

    /// Starts node `i`'s glusterd in its private mount namespace (see [`GlusterLab::wait_glusterd`]).
    fn spawn_glusterd(&mut self, i: usize) {
        let node = &mut self.nodes[i - 1];
        std::fs::create_dir_all(node.dir.join("bricks")).expect("creating the node directory");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("glusterd.out"))
            .expect("opening glusterd.out");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.netns))
            .args(["unshare", "-m", "--propagation", "private"])
            .args(["sh", "-c", GLUSTERD_SCRIPT, "shoal-glusterd"])
            .arg(&node.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("starting glusterd");
        node.glusterd = Some(child);
        node.mnt_ns = None;
    }

    /// Waits until node `i`'s glusterd runs in its own mount namespace and its CLI socket
    /// answers; fails the test with its output if it exits.
    fn wait_glusterd(&mut self, i: usize) {
        wait_for(
            Duration::from_secs(30),
            &format!("glusterd of node {i} answers"),
            || {
                let node = &mut self.nodes[i - 1];
                if let Some(st) = node
                    .glusterd
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!(
                        "glusterd of node {i} exited ({st}): {}{}",
                        tail(&node.dir.join("glusterd.out"), 20),
                        tail(&node.dir.join("log/glusterd.log"), 20)
                    );
                }
                let pid = node.glusterd.as_ref().map(Child::id).unwrap_or_default();
                // The script execs glusterd once its mounts are made; a CLI run in the
                // namespace before then would talk to, and log into, the host's directories.
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() != "glusterd" {
                    return Err(format!("still {comm:?}"));
                }
                node.mnt_ns = mnt_ns(pid);
                let out = self.try_gluster(i, &["pool", "list"]);
                if out.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).to_string())
                }
            },
        );
    }

    /// Waits until each of `nodes` sees every other node of the lab as a connected peer.
    fn wait_peers(&self, nodes: &[usize]) {
        let want = self.nodes.len() - 1;
        for &i in nodes {
            wait_for(
                Duration::from_secs(60),
                &format!("node {i} sees {want} peers"),
                || {
                    let out = self.try_gluster(i, &["peer", "status"]);
                    let text = String::from_utf8_lossy(&out.stdout).to_string();
                    let n = text.matches("State: Peer in Cluster (Connected)").count();
                    if n == want {
                        Ok(())
                    } else {
                        Err(text)
                    }
                },
            );
        }
    }

    /// Waits until the volume's bricks satisfy `pred`.
    fn wait_bricks(&self, volume: &str, limit: Duration, pred: impl Fn(&[Brick]) -> bool) {
        wait_for(limit, &format!("{volume}'s bricks"), || {
            let b = self.bricks(volume);
            if !b.is_empty() && pred(&b) {
                Ok(())
            } else {
                Err(format!("{b:?}"))
            }
        });
    }

    /// `kill -9` of glusterd and every process of node `i`'s mount namespace; waits until
    /// none is left.
    fn kill_node(&mut self, i: usize) {
        let node = &mut self.nodes[i - 1];
        // Forgotten at once: a freed namespace's number can be given to a new one.
        if let Some(ns) = node.mnt_ns.take() {
            kill_namespace(&ns);
        }
        if let Some(mut c) = node.glusterd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for GlusterLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 1..=self.nodes.len() {
                eprintln!(
                    "---- gluster node {i} ({}) glusterd log (tail) ----\n{}",
                    self.ip(i),
                    self.glusterd_log_tail(i, 30)
                );
            }
        }
        for m in std::mem::take(&mut self.mounts) {
            unmount(&m);
        }
        for (volume, nodes) in std::mem::take(&mut self.volumes) {
            // Ask any running glusterd; a volume whose servers are all gone goes with the dirs.
            let Some(i) = nodes
                .iter()
                .copied()
                .chain(1..=self.nodes.len())
                .find(|&i| self.glusterd_pid(i).is_some())
            else {
                continue;
            };
            let _ = self.try_gluster(i, &["volume", "stop", &volume, "force"]);
            let _ = self.try_gluster(i, &["volume", "delete", &volume]);
        }
        for i in 1..=self.nodes.len() {
            self.kill_node(i);
        }
        // Client processes or mounts that outlived the above (a lazily unmounted volume).
        kill_processes_under(&self.root);
        unmount_under(&self.root);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Bricks under `root` out of `gluster volume status --xml` (self-heal daemons left out).
fn parse_bricks(xml: &str, root: &Path) -> Vec<Brick> {
    fn tag<'a>(s: &'a str, t: &str) -> Option<&'a str> {
        let start = s.find(&format!("<{t}>"))? + t.len() + 2;
        let end = s[start..].find(&format!("</{t}>"))? + start;
        Some(&s[start..end])
    }
    xml.split("<node>")
        .skip(1)
        .filter_map(|n| {
            let path = PathBuf::from(tag(n, "path")?);
            if !path.starts_with(root) {
                return None;
            }
            let online = tag(n, "status") == Some("1");
            Some(Brick {
                host: tag(n, "hostname")?.to_string(),
                path,
                online,
                pid: tag(n, "pid")
                    .and_then(|p| p.parse::<i64>().ok())
                    .filter(|p| online && *p > 0)
                    .map(|p| p as u32),
            })
        })
        .collect()
}

/// `mnt:[inode]` of a process's mount namespace (None once it is gone or a zombie).
fn mnt_ns(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|p| p.to_string_lossy().to_string())
}

/// Whether a process exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .map(|(_, rest)| rest.trim_start())
            .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
    })
}

/// Process IDs on the machine (but this one).
fn pids() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|&p| p != me)
                .collect()
        })
        .unwrap_or_default()
}

/// `kill -9` of every gluster process in mount namespace `ns`, until none is left (bounded).
/// Only processes named `gluster*`: a namespace's number is reused once it is freed.
fn kill_namespace(ns: &str) {
    let members = || -> Vec<u32> {
        pids()
            .into_iter()
            .filter(|&p| mnt_ns(p).as_deref() == Some(ns))
            .filter(|&p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.starts_with("gluster"))
            })
            .collect()
    };
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let left = members();
        if left.is_empty() {
            return;
        }
        if Instant::now() > until {
            // No panic while unwinding (a Drop after a failure): that would abort the binary.
            let msg = format!("gluster processes {left:?} of {ns} survive kill -9");
            if std::thread::panicking() {
                eprintln!("{msg}");
                return;
            }
            panic!("{msg}");
        }
        for p in &left {
            let _ = Command::new("kill")
                .args(["-9", &p.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `kill -9` of every process whose command line names a path under `root` (FUSE clients,
/// bricks and glusterds of a lab).
fn kill_processes_under(root: &Path) {
    // With the slash: `...-gluster-4` must not match `...-gluster-40`.
    let needle = format!("{}/", root.display());
    for p in pids() {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = Command::new("kill")
                .args(["-9", &p.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The host's mount points with their file system types.
fn mount_points() -> Vec<(PathBuf, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let dash = f.iter().position(|x| *x == "-")?;
            Some((PathBuf::from(f.get(4)?), f.get(dash + 1)?.to_string()))
        })
        .collect()
}

/// Unmounts `dir`, lazily if a plain unmount fails (a busy or dead FUSE mount).
fn unmount(dir: &Path) {
    let ok = Command::new("umount")
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(dir)
            .stderr(Stdio::null())
            .status();
    }
}

/// Once per test process: kills and removes what labs of test processes that are gone left
/// (a test killed by a timeout runs no `Drop`): their glusterds, whose command lines name
/// their directory `<tmp>/shoal-t<pid>-gluster-<n>`, everything in those glusterds' mount
/// namespaces, their FUSE clients and mounts, and the directories.
fn sweep_stale() {
    SWEEP.call_once(|| {
        let tmp = std::env::temp_dir();
        let Ok(entries) = std::fs::read_dir(&tmp) else {
            return;
        };
        let own_ns = mnt_ns(std::process::id());
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix("shoal-t") else {
                continue;
            };
            if !name.contains("-gluster-") {
                continue;
            }
            let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if Path::new(&format!("/proc/{owner}")).exists() {
                continue;
            }
            let root = tmp.join(&name);
            // With the slash: `...-gluster-4` must not match `...-gluster-40`.
            let needle = format!("{}/", root.display());
            let mut namespaces = HashSet::new();
            for p in pids() {
                let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&needle) {
                    if let Some(ns) = mnt_ns(p).filter(|ns| Some(ns) != own_ns.as_ref()) {
                        namespaces.insert(ns);
                    }
                }
            }
            for ns in &namespaces {
                kill_namespace(ns);
            }
            kill_processes_under(&root);
            unmount_under(&root);
            let _ = std::fs::remove_dir_all(&root);
        }
    });
}

/// The last `n` lines of a file ("" if unreadable).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
