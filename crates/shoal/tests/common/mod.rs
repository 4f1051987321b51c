//! Test harness: a real `shoal daemon` on a temporary socket, driven by the real `docker` CLI.
//! Each daemon runs in a network namespace of its own (its bridges, nftables table, published
//! ports and port 2377 are its own), and everything it leaves on the shared Docker Engine carries
//! its node ID, so tests run in parallel.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub mod cluster;
pub mod engines;
pub mod gluster;
pub mod sshd;
pub mod webdriver;

static IMAGES: Once = Once::new();
static SWEEP: Once = Once::new();

/// Prefix of every network namespace the tests create: `shoal-t<pid>-...`, so namespaces left
/// by a test process that died can be told from those of a live one.
const NETNS_PREFIX: &str = "shoal-t";

/// A fresh network namespace name for this process: `shoal-t<pid>-<tag>-<n>`.
pub fn netns_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{NETNS_PREFIX}{}-{tag}-{n}", std::process::id())
}

/// Deletes namespaces (and their daemons' data) left by test processes that are gone.
fn sweep_stale_netns() {
    SWEEP.call_once(|| {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                ip_quiet(&["netns", "del", &name]);
            }
        }
    });
}

/// Runs `ip` and says whether it succeeded, output discarded (cleanup steps).
pub fn ip_quiet(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `ip`, failing the test with its stderr if it fails.
pub fn ip_must(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with loopback up; deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `name` (see [`netns_name`]).
    pub fn create(name: String) -> Netns {
        sweep_stale_netns();
        ip_must(&["netns", "add", &name]);
        ip_must(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// `nsenter --net=...` before `program`: a command run inside the namespace. Not
    /// `ip netns exec`, which also remounts /sys and hides the cgroup mounts.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg(program);
        c
    }

    /// Fetches a URL from inside the namespace with curl; None if it does not answer.
    pub fn http_get(&self, url: &str) -> Option<String> {
        let out = self
            .command("curl")
            .args(["-s", "--max-time", "3", url])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip_quiet(&["netns", "del", &self.name]);
    }
}

/// The node ID a daemon wrote to `<data>/node.json` (none before it is in a swarm).
pub fn node_id_on_disk(data: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data.join("node.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["node_id"].as_str().map(str::to_string)
}

/// Removes what a dead node `id` left on the engine: its containers and its engine networks.
/// Docker tears their endpoints down through the node's network plugin, which died with it and
/// would be retried for minutes per endpoint: a stand-in answers on the plugin's socket
/// meanwhile, as the dead machine's own engine would not have asked.
pub fn remove_node_leftovers(id: &str) {
    remove_node_leftovers_on(MACHINE_ENGINE, id);
}

/// The machine's Docker Engine, which nodes share unless they have engines of their own
/// ([`engines`]).
pub const MACHINE_ENGINE: &str = "unix:///var/run/docker.sock";

/// [`remove_node_leftovers`] on the engine at `host` (`unix://...`): the node's own engine.
pub fn remove_node_leftovers_on(host: &str, id: &str) {
    let short: String = id.chars().take(12).collect();
    let sock = PathBuf::from(format!("/run/docker/plugins/shoal-{short}.sock"));
    let stand_in = cluster::PluginStandIn::start(&sock);
    for (c, _) in engine_containers_on(host, &[&format!("com.docker.swarm.node.id={id}")]) {
        let _ = Command::new("docker")
            .args(["-H", host, "rm", "-f", &c])
            .output();
    }
    // Nothing would remove its engine networks later (a restarted node makes new ones).
    let nets = Command::new("docker")
        .args([
            "-H",
            host,
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("driver=shoal-{short}"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    for n in nets.split_whitespace() {
        // Plain containers a test attached to the node's swarm networks go first.
        let on = Command::new("docker")
            .args(["-H", host, "ps", "-aq", "--filter"])
            .arg(format!("network={n}"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        for c in on.split_whitespace() {
            let _ = Command::new("docker")
                .args(["-H", host, "rm", "-f", c])
                .output();
        }
        let _ = Command::new("docker")
            .args(["-H", host, "network", "rm", n])
            .output();
    }
    drop(stand_in);
    // Its secrets tmpfs: a daemon killed with -9 could not unmount it.
    let files = PathBuf::from("/run/shoal/files").join(&short);
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == files.to_str());
    if mounted {
        let _ = Command::new("umount").arg(&files).output();
    }
    let _ = std::fs::remove_dir(&files);
}

/// The host's mount points under `dir` (not `dir` itself), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let root = format!("{}/", dir.display());
    let mut out: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&root))
        .map(str::to_string)
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.len()));
    out
}

/// Lazily unmounts everything under `dir`, deepest first: what a killed node or a failed test
/// left (a FUSE client outlives the daemon that mounted it).
pub fn unmount_under(dir: &Path) {
    for m in mounts_under(dir) {
        let _ = Command::new("umount")
            .args(["-l", &m])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Root of the repository.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the local test images once per test binary.
pub fn images() {
    IMAGES.call_once(|| {
        let st = Command::new("bash")
            .arg(repo().join("scripts/build-test-images.sh"))
            .status()
            .expect("running build-test-images.sh");
        assert!(st.success(), "building test images failed");
    });
}

/// One shoal node: its daemon process, data directory, socket and network namespace.
pub struct Node {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    /// Its node ID once seen on disk, kept to clean up after `swarm leave` removed the file.
    id: std::cell::RefCell<Option<String>>,
    /// Extra `shoal daemon` flags, kept for restarts.
    args: Vec<String>,
    // Dropped after the daemon (fields drop in order, after `Drop::drop`).
    pub netns: Netns,
}

impl Node {
    /// Starts a daemon on a fresh data directory, in a network namespace of its own.
    pub fn start(name: &str) -> Node {
        Node::start_with(name, &[])
    }

    /// [`Node::start`] with extra `shoal daemon` flags (e.g. `--listen tcp://127.0.0.1:2376`).
    pub fn start_with(name: &str, args: &[&str]) -> Node {
        Node::start_prepared(name, args, |_| {})
    }

    /// Starts a daemon with extra flags in a network namespace of its own, on what `prepare`
    /// leaves in the node's directory (a fixture data directory unpacked as `data`).
    pub fn start_prepared(name: &str, args: &[&str], prepare: impl FnOnce(&Path)) -> Node {
        images();
        let netns = Netns::create(netns_name(name));
        let dir = std::env::temp_dir().join(&netns.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        prepare(&dir);
        let socket = dir.join("docker.sock");
        let mut node = Node {
            dir,
            socket,
            child: None,
            id: std::cell::RefCell::new(None),
            args: args.iter().map(|a| a.to_string()).collect(),
            netns,
        };
        node.spawn();
        node
    }

    /// (Re)starts the daemon process on the same data directory.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let child = self
            .netns
            .command(env!("CARGO_BIN_EXE_shoal"))
            .args(["daemon", "--data-dir"])
            .arg(self.dir.join("data"))
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.args)
            .env("SHOAL_PULL", "never")
            .env("SHOAL_LOG", "info,shoal_manager=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting shoal daemon");
        self.child = Some(child);
        wait_until(Duration::from_secs(20), "daemon socket answers", || {
            self.docker(&["version"]).status.success()
        });
    }

    /// This node's ID (None before `swarm init`).
    pub fn node_id(&self) -> Option<String> {
        if let Some(id) = node_id_on_disk(&self.dir.join("data")) {
            *self.id.borrow_mut() = Some(id);
        }
        self.id.borrow().clone()
    }

    /// Fetches a URL from inside the node's namespace (its published ports answer there).
    pub fn http_get(&self, url: &str) -> Option<String> {
        self.netns.http_get(url)
    }

    /// `docker ps -q --filter <filter>` through this node's API, limited to this node's task
    /// containers (plain `ps` lists the whole shared engine).
    pub fn ps_q(&self, filter: &str) -> String {
        let mine = format!(
            "label=com.docker.swarm.node.id={}",
            self.node_id().unwrap_or_default()
        );
        self.ok(&["ps", "-q", "--filter", filter, "--filter", &mine])
    }

    /// This node's containers on the engine with a label filter, as (id, name).
    pub fn engine_containers(&self, label: &str) -> Vec<(String, String)> {
        let Some(id) = self.node_id() else {
            return Vec::new();
        };
        engine_containers_all(&[label, &format!("com.docker.swarm.node.id={id}")])
    }

    /// The daemon's process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM to the daemon, as a service manager stops it; waits (bounded) for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("the daemon runs");
        let st = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("waiting for the daemon") {
                return status;
            }
            if Instant::now() > until {
                let _ = c.kill();
                let _ = c.wait();
                panic!("the daemon did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` of the daemon (its containers keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the docker CLI against this node.
    pub fn docker(&self, args: &[&str]) -> Output {
        docker_at(&self.socket, args)
    }

    /// Runs the docker CLI and returns stdout, failing the test on a non-zero exit.
    pub fn ok(&self, args: &[&str]) -> String {
        expect_ok(self.docker(args), args)
    }

    /// Runs the docker CLI expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        expect_failure(self.docker(args), args)
    }

    /// `REPLICAS` column of `docker service ls` for a service.
    pub fn replicas(&self, service: &str) -> String {
        let out = self.docker(&[
            "service",
            "ls",
            "--filter",
            &format!("name={service}"),
            "--format",
            "{{.Name}} {{.Replicas}}",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{service} "))
                    .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
            })
            .unwrap_or_default()
    }

    /// Waits until a service shows `want` in its REPLICAS column.
    pub fn wait_replicas(&self, service: &str, want: &str) {
        wait_for(
            Duration::from_secs(60),
            &format!("{service} at {want}"),
            || match self.replicas(service) {
                got if got == want => Ok(()),
                got => Err(format!(
                    "REPLICAS {got:?}; service ps:\n{}",
                    String::from_utf8_lossy(&self.docker(&["service", "ps", service]).stdout)
                )),
            },
        );
    }

    /// This node's engine containers of a service (by Swarm's labels), as (id, name).
    pub fn containers(&self, service: &str) -> Vec<(String, String)> {
        self.engine_containers(&format!("com.docker.swarm.service.name={service}"))
    }

    /// Runs the `shoal` CLI against this node: (success, stdout, stderr).
    pub fn shoal(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .arg("--host")
            .arg(&self.socket)
            .output()
            .expect("running shoal");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Daemon log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The daemon's side of a failure, for CI logs: its last lines.
            let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!("---- last daemon log lines ----\n{}", tail.join("\n"));
        }
        let id = self.node_id();
        if self.child.is_some() {
            let _ = self.docker(&["swarm", "leave", "--force"]);
        }
        self.kill9();
        // Whatever survived (a test that failed midway): this node's containers and networks.
        if let Some(id) = id {
            remove_node_leftovers(&id);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Containers on the machine's engine carrying a label filter, as (id, name).
pub fn engine_containers(label: &str) -> Vec<(String, String)> {
    engine_containers_all(&[label])
}

/// Containers on the machine's engine carrying every one of the label filters, as (id, name).
pub fn engine_containers_all(labels: &[&str]) -> Vec<(String, String)> {
    engine_containers_on(MACHINE_ENGINE, labels)
}

/// Containers on the engine at `host` (`unix://...`) carrying every one of the label filters,
/// as (id, name).
pub fn engine_containers_on(host: &str, labels: &[&str]) -> Vec<(String, String)> {
    let mut cmd = Command::new("docker");
    cmd.args(["-H", host, "ps", "-a"]);
    for l in labels {
        cmd.arg("--filter").arg(format!("label={l}"));
    }
    let out = cmd
        .args(["--format", "{{.ID}} {{.Names}}"])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect()
}

/// Runs the docker CLI against the shoal API socket at `socket`.
pub fn docker_at(socket: &Path, args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .expect("running docker")
}

/// stdout of a docker run that must have succeeded.
pub fn expect_ok(out: Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// stderr of a docker run that must have failed.
pub fn expect_failure(out: Output, args: &[&str]) -> String {
    assert!(
        !out.status.success(),
        "docker {args:?} unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Polls `f` until true, or fails the test after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

/// Polls `f` until it returns Ok, or fails the test after `limit` with the last thing it saw.
pub fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match f() {
            Ok(()) => return,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {limit:?} waiting for: {what}; last seen: {last}");
}

/// Path helper.
pub fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}
