//! Multi-node harness: each node is a real `shoal daemon` in its own network namespace with its
//! own address (10.99.0.i), data directory and API socket, all sharing the machine's Docker
//! Engine. The namespaces hang off a bridge in a hub namespace of their own, so the host's
//! firewall is not involved, and every cluster has its own hub and namespaces (unique names),
//! so clusters of several tests run side by side. A node can be killed (process and
//! containers), restarted, and cut off from the others.

use super::engines::{self, Engine};
use super::{
    docker_at, expect_failure, expect_ok, images, ip_must as must, ip_quiet as ip, netns_name,
    node_id_on_disk, remove_node_leftovers_on, wait_until, Netns, MACHINE_ENGINE,
};
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

const BRIDGE: &str = "shbr0";
/// The address of the hub namespace, a client that is none of the nodes.
pub const CLIENT: &str = "10.99.0.254";

/// Answers Docker's calls to a dead node's network plugin with success, so that removing the
/// node's containers does not wait on a plugin that will never answer; removes the socket when
/// dropped.
pub(crate) struct PluginStandIn {
    path: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PluginStandIn {
    pub(crate) fn start(path: &std::path::Path) -> PluginStandIn {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let _ = std::fs::remove_file(path);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listener = std::os::unix::net::UnixListener::bind(path).ok();
        let flag = stop.clone();
        let thread = listener.map(|l| {
            let _ = l.set_nonblocking(true);
            std::thread::spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let Ok((mut conn, _)) = l.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                    let mut buf = [0u8; 8192];
                    let n = conn.read(&mut buf).unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let body = if req.contains("Plugin.Activate") {
                        r#"{"Implements":["NetworkDriver","IpamDriver"]}"#
                    } else {
                        "{}"
                    };
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.plugins.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            })
        });
        PluginStandIn {
            path: path.to_path_buf(),
            stop,
            thread,
        }
    }
}

impl Drop for PluginStandIn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One node of a [`Cluster`].
pub struct ClusterNode {
    /// 1-based index.
    pub index: usize,
    /// Its address on the test network.
    pub ip: String,
    /// Its data directory.
    pub dir: PathBuf,
    /// Its API socket.
    pub socket: PathBuf,
    /// Its network namespace.
    pub netns: Netns,
    /// The cluster's hub namespace, where its link to the others can be cut.
    hub: String,
    /// Extra `shoal daemon` flags, kept for restarts.
    args: Vec<String>,
    child: Option<Child>,
    /// Its own Docker Engine ([`Cluster::start_with_engines`]); None: the machine's.
    pub own_engine: Option<Engine>,
}

impl ClusterNode {
    /// Runs a command in the node's network namespace and returns its stdout.
    pub fn sh(&self, cmd: &[&str]) -> String {
        let out = self
            .netns
            .command(cmd[0])
            .args(&cmd[1..])
            .output()
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// The name it shows in `docker node ls`.
    pub fn name(&self) -> String {
        format!("node-{}", self.index)
    }

    /// Runs the docker CLI against this node.
    pub fn docker(&self, args: &[&str]) -> Output {
        docker_at(&self.socket, args)
    }

    /// Runs docker and returns stdout, failing the test if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        expect_ok(self.docker(args), args)
    }

    /// Runs docker expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        expect_failure(self.docker(args), args)
    }

    /// Starts (or restarts) the daemon inside the node's namespace.
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
            .args(["--hostname", &self.name()])
            .args(&self.args)
            .args(
                self.own_engine
                    .iter()
                    .flat_map(|e| [std::ffi::OsStr::new("--engine"), e.socket.as_os_str()]),
            )
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

    /// `-H` of the node's engine: its own, else the machine's.
    pub fn engine_host(&self) -> String {
        match &self.own_engine {
            Some(e) => e.host(),
            None => MACHINE_ENGINE.to_string(),
        }
    }

    /// Runs the docker CLI against the node's engine, not shoal's API: `engine(&["images"])`.
    pub fn engine(&self, args: &[&str]) -> Output {
        engines::docker_on(&self.engine_host(), args)
    }

    /// [`ClusterNode::engine`] that must succeed; returns stdout.
    pub fn engine_ok(&self, args: &[&str]) -> String {
        expect_ok(self.engine(args), args)
    }

    /// The images the node's engine holds, as `repository:tag`.
    pub fn engine_images(&self) -> Vec<String> {
        engines::images_on(&self.engine_host())
    }

    /// Copies `image` from the machine's engine into this node's own engine only.
    pub fn load_image(&self, image: &str) {
        let engine = self
            .own_engine
            .as_ref()
            .expect("load_image needs a node with its own engine (Cluster::start_with_engines)");
        engines::copy_image(MACHINE_ENGINE, &engine.host(), image);
    }

    /// The node's ID (empty before it is in a swarm).
    pub fn node_id(&self) -> String {
        self.ok(&["info", "--format", "{{.Swarm.NodeID}}"])
            .trim()
            .to_string()
    }

    /// `kill -9` of the daemon alone, then a new one on the same data: what it left in the
    /// namespace (bridges, rules) and its containers are still there.
    pub fn restart_daemon(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    /// `kill -9` of the daemon alone: its containers keep running until it comes back.
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM to the daemon, as `systemctl stop` does, and waits until it has exited.
    pub fn stop_daemon(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Whether the daemon process runs (it may have exited on its own).
    pub fn daemon_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// `kill -9` of the daemon and every container it ran: the whole node is gone.
    pub fn kill(&mut self) {
        let id = self.node_id_from_disk();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(id) = id {
            remove_node_leftovers_on(&self.engine_host(), &id);
        }
    }

    fn node_id_from_disk(&self) -> Option<String> {
        node_id_on_disk(&self.dir.join("data"))
    }

    /// `docker service ps SERVICE` as (current state, error) rows, errors untruncated.
    pub fn ps_rows(&self, service: &str) -> Vec<(String, String)> {
        self.ok(&[
            "service",
            "ps",
            service,
            "--no-trunc",
            "--format",
            "{{.CurrentState}}|{{.Error}}",
        ])
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(s, e)| (s.to_string(), e.to_string()))
        .collect()
    }

    /// The nodes running `service`'s tasks that are meant to run, as `docker service ps`
    /// names them, sorted (a node twice for two tasks).
    pub fn running_on(&self, service: &str) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .ok(&[
                "service",
                "ps",
                service,
                "--filter",
                "desired-state=running",
                "--format",
                "{{.Node}} {{.CurrentState}}",
            ])
            .lines()
            .filter(|l| l.contains("Running"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        nodes.sort();
        nodes
    }

    /// Containers of this node on the engine, running or not, as (id, name).
    pub fn containers(&self) -> Vec<(String, String)> {
        match self.node_id_from_disk() {
            Some(id) => super::engine_containers_on(
                &self.engine_host(),
                &[&format!("com.docker.swarm.node.id={id}")],
            ),
            None => Vec::new(),
        }
    }

    /// Cuts the node off from every other node (its link to the hub goes down).
    pub fn cut(&self) {
        must(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &format!("shh{}", self.index),
            "down",
        ]);
    }

    /// Undoes [`ClusterNode::cut`].
    pub fn heal(&self) {
        must(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &format!("shh{}", self.index),
            "up",
        ]);
    }

    /// The daemon log's last lines.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// N nodes on one test network.
pub struct Cluster {
    /// The nodes, index 0 is node-1 (10.99.0.1).
    pub nodes: Vec<ClusterNode>,
    root: PathBuf,
    /// The hub namespace: the nodes' bridge and a client that is none of them ([`CLIENT`]).
    pub hub: Netns,
}

impl Cluster {
    /// Creates the namespaces and starts `n` daemons (not yet in a swarm).
    pub fn start(name: &str, n: usize) -> Cluster {
        Cluster::start_with(name, n, |_| Vec::new())
    }

    /// [`Cluster::start`] with extra `shoal daemon` flags for each node, given its address.
    pub fn start_with(name: &str, n: usize, args: impl Fn(&str) -> Vec<String>) -> Cluster {
        Cluster::start_inner(name, n, args, false)
    }

    /// [`Cluster::start`] where every node has a Docker Engine of its own ([`engines`]), empty:
    /// [`ClusterNode::load_image`] puts an image on one node only. Keep `name` short (the
    /// engines' socket paths).
    pub fn start_with_engines(name: &str, n: usize) -> Cluster {
        Cluster::start_inner(name, n, |_| Vec::new(), true)
    }

    /// [`Cluster::start_with_engines`] with extra `shoal daemon` flags for each node.
    pub fn start_with_engines_and(
        name: &str,
        n: usize,
        args: impl Fn(&str) -> Vec<String>,
    ) -> Cluster {
        Cluster::start_inner(name, n, args, true)
    }

    fn start_inner(
        name: &str,
        n: usize,
        args: impl Fn(&str) -> Vec<String>,
        own_engines: bool,
    ) -> Cluster {
        images();
        let hub = Netns::create(netns_name(&format!("{name}-hub")));
        let h = hub.name.as_str();
        must(&["-n", h, "link", "add", BRIDGE, "type", "bridge"]);
        must(&["-n", h, "link", "set", BRIDGE, "up"]);
        // A client outside every node (the routing mesh's caller).
        must(&[
            "-n",
            h,
            "addr",
            "add",
            &format!("{CLIENT}/24"),
            "dev",
            BRIDGE,
        ]);
        let root = std::env::temp_dir().join(&hub.name);
        let _ = std::fs::remove_dir_all(&root);
        let mut nodes = Vec::new();
        for i in 1..=n {
            let netns = Netns::create(netns_name(&format!("{name}-n{i}")));
            let node = netns.name.as_str();
            let hub_side = format!("shh{i}");
            must(&[
                "-n", h, "link", "add", &hub_side, "type", "veth", "peer", "name", "eth0", "netns",
                node,
            ]);
            must(&["-n", h, "link", "set", &hub_side, "master", BRIDGE]);
            must(&["-n", h, "link", "set", &hub_side, "up"]);
            must(&[
                "-n",
                node,
                "addr",
                "add",
                &format!("10.99.0.{i}/24"),
                "dev",
                "eth0",
            ]);
            must(&["-n", node, "link", "set", "eth0", "up"]);
            let dir = root.join(format!("node-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            nodes.push(ClusterNode {
                index: i,
                ip: format!("10.99.0.{i}"),
                socket: dir.join("docker.sock"),
                dir,
                args: args(&format!("10.99.0.{i}")),
                netns,
                hub: hub.name.clone(),
                child: None,
                own_engine: None,
            });
        }
        if own_engines {
            // All start at once, then each is waited for.
            for node in &mut nodes {
                let engine = Engine::spawn(
                    &node.netns.name,
                    &node.dir.join("engine"),
                    &node.dir.join("engine.sock"),
                );
                node.own_engine = Some(engine);
            }
            for engine in nodes.iter_mut().filter_map(|n| n.own_engine.as_mut()) {
                engine.wait_ready();
            }
        }
        for node in &mut nodes {
            node.spawn();
        }
        Cluster { nodes, root, hub }
    }

    /// An HTTP GET from the hub namespace (a client outside every node); the body if it answered.
    pub fn client_get(&self, url: &str) -> Option<String> {
        self.hub.http_get(url)
    }

    /// Node `i` (1-based).
    pub fn node(&self, i: usize) -> &ClusterNode {
        &self.nodes[i - 1]
    }

    /// Node `i` (1-based), to kill or restart it.
    pub fn node_mut(&mut self, i: usize) -> &mut ClusterNode {
        &mut self.nodes[i - 1]
    }

    /// `swarm init` on node 1 and joins the others: the first `managers` as managers.
    pub fn form(&self, managers: usize) {
        let first = self.node(1);
        first.ok(&["swarm", "init", "--advertise-addr", &first.ip]);
        let worker = first.ok(&["swarm", "join-token", "-q", "worker"]);
        let manager = first.ok(&["swarm", "join-token", "-q", "manager"]);
        for n in &self.nodes[1..] {
            let token = if n.index <= managers {
                &manager
            } else {
                &worker
            };
            n.ok(&[
                "swarm",
                "join",
                "--token",
                token.trim(),
                "--advertise-addr",
                &n.ip,
                &format!("{}:2377", first.ip),
            ]);
        }
        // Tasks are not rebalanced later, so tests start once every node can take some.
        let n = self.nodes.len();
        wait_until(Duration::from_secs(30), "every node ready", || {
            first
                .ok(&["node", "ls", "--format", "{{.Status}}"])
                .lines()
                .filter(|l| l.trim() == "Ready")
                .count()
                == n
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SHOAL_TEST_HOLD=<seconds>: keep a failed test's cluster up that long, to look inside.
        if let (true, Some(secs)) = (
            std::thread::panicking(),
            std::env::var("SHOAL_TEST_HOLD")
                .ok()
                .and_then(|v| v.parse::<u64>().ok()),
        ) {
            let release = self.root.join("release");
            eprintln!(
                "holding the cluster for {secs} s (SHOAL_TEST_HOLD); `touch {}` ends it",
                release.display()
            );
            let until = std::time::Instant::now() + Duration::from_secs(secs);
            while std::time::Instant::now() < until && !release.exists() {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!(
                    "---- node-{} daemon log (last lines) ----\n{}",
                    n.index,
                    n.log_tail(80)
                );
                if let Some(e) = &n.own_engine {
                    eprintln!(
                        "---- node-{} engine log (last lines) ----\n{}",
                        n.index,
                        e.log_tail(30)
                    );
                }
            }
        }
        for n in &mut self.nodes {
            n.heal_quietly();
            if n.child.is_some() {
                let _ = n.docker(&["swarm", "leave", "--force"]);
            }
            // Its task containers, and plain containers a test attached to its networks.
            n.kill();
            // Its own engine, if any: stopped and gone before its directory is removed below.
            drop(n.own_engine.take());
        }
        // A killed node's shared-volume mounts outlive its daemon (the FUSE client is a process
        // of its own): take every mount under the cluster's directory off, deepest first, also
        // when the test failed half-way.
        super::unmount_under(&self.root);
        // The namespaces go when the nodes and the hub are dropped, after this.
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl ClusterNode {
    fn heal_quietly(&self) {
        ip(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &format!("shh{}", self.index),
            "up",
        ]);
    }
}
