//! Test harness: a real `shoal daemon` on a temporary socket, driven by the real `docker` CLI.
//! Daemon tests share the host's network namespace and Docker Engine, so they run one at a time.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

pub mod cluster;

static IMAGES: Once = Once::new();
static SERIAL: Mutex<()> = Mutex::new(());

/// Daemon tests share the host's engine, addresses and ports: one at a time per test binary.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
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

/// One shoal node: its daemon process, data directory and socket.
pub struct Node {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    _serial: MutexGuard<'static, ()>,
}

impl Node {
    /// Starts a daemon on a fresh data directory.
    pub fn start(name: &str) -> Node {
        images();
        let serial = serial();
        let dir = std::env::temp_dir().join(format!("shoal-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("docker.sock");
        let mut node = Node {
            dir,
            socket,
            child: None,
            _serial: serial,
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
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["daemon", "--data-dir"])
            .arg(self.dir.join("data"))
            .arg("--socket")
            .arg(&self.socket)
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
        wait_until(
            Duration::from_secs(60),
            &format!("{service} at {want}"),
            || self.replicas(service) == want,
        );
    }

    /// Engine containers of a service (by Swarm's label), as (id, name).
    pub fn containers(&self, service: &str) -> Vec<(String, String)> {
        engine_containers(&format!("com.docker.swarm.service.name={service}"))
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
        if self.child.is_some() {
            let _ = self.docker(&["swarm", "leave", "--force"]);
        }
        self.kill9();
        // Whatever survived (a test that failed midway): remove by shoal's label.
        for (id, _) in engine_containers("com.docker.swarm.node.id") {
            let _ = Command::new("docker")
                .args(["-H", "unix:///var/run/docker.sock", "rm", "-f", &id])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Containers on the machine's engine carrying a label filter, as (id, name).
pub fn engine_containers(label: &str) -> Vec<(String, String)> {
    let out = Command::new("docker")
        .args([
            "-H",
            "unix:///var/run/docker.sock",
            "ps",
            "-a",
            "--filter",
            &format!("label={label}"),
            "--format",
            "{{.ID}} {{.Names}}",
        ])
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

/// Fetches a URL from the host with curl; None if it does not answer.
pub fn http_get(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "3", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// Path helper.
pub fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}
