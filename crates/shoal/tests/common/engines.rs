//! Docker Engines of the nodes' own (issue 22: an image present on one node's engine only).
//! Each is a second `dockerd` started with `nsenter --net=<node namespace>` (the machine's mount
//! namespace, so its mounts reach everything), with its own data root, exec root, pid file and
//! API socket, its own managed containerd (under its exec root) in a containerd namespace of its
//! own, and a copy of the machine's `/etc/docker/daemon.json` without the keys those flags set
//! (the storage driver, fuse-overlayfs here, is kept). Its bridge and iptables rules live in the
//! node's namespace. Dropping an [`Engine`] removes its containers, stops it and leaves no
//! process, mount or file behind.

use super::{expect_failure, expect_ok, mounts_under, unmount_under, wait_for, MACHINE_ENGINE};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

static SWEEP: Once = Once::new();

/// daemon.json keys that clash with the flags each engine gets (dockerd refuses a directive set
/// both ways) or would point it at the machine engine's own places.
const OWN_KEYS: &[&str] = &[
    "data-root",
    "graph",
    "exec-root",
    "pidfile",
    "hosts",
    "containerd",
    "containerd-namespace",
    "containerd-plugins-namespace",
];

/// Unix socket paths are at most 107 bytes; the longest dockerd makes under its exec root is
/// `containerd/containerd.sock.ttrpc`, so the exec root must stay well under this.
const MAX_EXEC_ROOT: usize = 70;

/// A node's own Docker Engine: a `dockerd` in the node's network namespace.
pub struct Engine {
    /// Its API socket (`docker -H unix://<socket>`).
    pub socket: PathBuf,
    /// Its directory: config, data root, exec root, pid file and log.
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Engine {
    /// Starts `dockerd` in the namespace `netns` (a name under /run/netns) with its socket at
    /// `socket` and everything else under `dir`; does not wait for it (see [`Engine::wait_ready`]).
    pub fn spawn(netns: &str, dir: &Path, socket: &Path) -> Engine {
        sweep_stale_engines();
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_file(socket);
        let data = dir.join("data");
        let exec = dir.join("exec");
        std::fs::create_dir_all(&data).expect("engine data root");
        std::fs::create_dir_all(&exec).expect("engine exec root");
        assert!(
            exec.as_os_str().len() <= MAX_EXEC_ROOT,
            "exec root {} is too long for dockerd's sockets: use a shorter cluster name",
            exec.display()
        );
        let config = dir.join("daemon.json");
        std::fs::write(&config, engine_config()).expect("writing the engine's daemon.json");
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("engine log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("dockerd")
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(&data)
            .arg("--exec-root")
            .arg(&exec)
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            // Its own managed containerd already keeps it apart; distinct namespaces make sure.
            .args(["--containerd-namespace", netns])
            .arg("--containerd-plugins-namespace")
            .arg(format!("{netns}-plugins"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        Engine {
            socket: socket.to_path_buf(),
            dir: dir.to_path_buf(),
            child: Some(child),
        }
    }

    /// Waits until the engine answers `docker version`; fails the test with its log if it
    /// exits or does not answer within 60 s.
    pub fn wait_ready(&mut self) {
        wait_for(Duration::from_secs(60), "own dockerd answers", || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "dockerd for {} exited ({st}):\n{}",
                        self.socket.display(),
                        self.log_tail(40)
                    );
                }
            }
            let out = self.docker(&["version"]);
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).to_string())
            }
        });
    }

    /// `unix://<socket>`: the docker CLI's `-H` for this engine.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs the docker CLI against this engine.
    pub fn docker(&self, args: &[&str]) -> Output {
        docker_on(&self.host(), args)
    }

    /// Runs the docker CLI against this engine and returns stdout, failing the test on error.
    pub fn ok(&self, args: &[&str]) -> String {
        expect_ok(self.docker(args), args)
    }

    /// Runs the docker CLI against this engine expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        expect_failure(self.docker(args), args)
    }

    /// The engine log's last lines.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Removes every container, stops dockerd (SIGTERM, then SIGKILL after 30 s) and whatever
    /// it left (containerd, shims, fuse-overlayfs), unmounts everything under its directory and
    /// removes it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            // Containers first: dockerd would otherwise stop each for up to 10 s on its way out.
            let ids = self.docker(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).to_string();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
            signal(child.id(), "TERM");
            let until = Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        clean_engine_dir(&self.dir);
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the docker CLI against the engine at `host` (`unix://...`).
pub fn docker_on(host: &str, args: &[&str]) -> Output {
    Command::new("docker")
        .arg("-H")
        .arg(host)
        .args(args)
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null())
        .output()
        .expect("running docker")
}

/// Copies `image` from the engine at `from` into the engine at `to` (`docker save | docker
/// load`), failing the test if either side fails.
pub fn copy_image(from: &str, to: &str, image: &str) {
    let mut save = Command::new("docker")
        .args(["-H", from, "save", image])
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker save");
    let piped = save.stdout.take().expect("docker save's stdout");
    let load = Command::new("docker")
        .args(["-H", to, "load", "-q"])
        .env_remove("DOCKER_HOST")
        .stdin(piped)
        .output()
        .expect("docker load");
    let mut save_err = String::new();
    if let Some(mut e) = save.stderr.take() {
        let _ = e.read_to_string(&mut save_err);
    }
    let saved = save.wait().expect("waiting for docker save");
    assert!(saved.success(), "docker -H {from} save {image}: {save_err}");
    assert!(
        load.status.success(),
        "docker -H {to} load ({image}): {}",
        String::from_utf8_lossy(&load.stderr)
    );
}

/// The images an engine holds, as `repository:tag` (untagged ones left out).
pub fn images_on(host: &str) -> Vec<String> {
    let out = expect_ok(
        docker_on(host, &["images", "--format", "{{.Repository}}:{{.Tag}}"]),
        &["images"],
    );
    out.lines()
        .filter(|l| !l.contains("<none>"))
        .map(str::to_string)
        .collect()
}

/// Builds `tag` on the machine's engine, once per size: the test busybox plus `/blob`, a file of
/// `megabytes` MiB of random bytes (incompressible, so a transfer moves them all), in one layer
/// made by `docker import`. Kept across runs: rebuilt only when its label tells another size.
pub fn build_big_image(tag: &str, megabytes: u64) -> String {
    super::images();
    let label = docker_on(
        MACHINE_ENGINE,
        &[
            "image",
            "inspect",
            "-f",
            "{{index .Config.Labels \"shoal.test.megabytes\"}}",
            tag,
        ],
    );
    if label.status.success()
        && String::from_utf8_lossy(&label.stdout).trim() == megabytes.to_string()
    {
        return tag.to_string();
    }
    let work = std::env::temp_dir().join(format!("shoal-big-{}-{megabytes}", std::process::id()));
    let root = work.join("root");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&root).expect("big image root");
    // The busybox image's files, as `docker export` gives them.
    let id = expect_ok(
        docker_on(MACHINE_ENGINE, &["create", "shoal-test/busybox:latest"]),
        &["create"],
    );
    let id = id.trim();
    let export = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker -H {MACHINE_ENGINE} export {id} | tar -x -C {}",
            root.display()
        ))
        .status()
        .expect("docker export | tar");
    let _ = docker_on(MACHINE_ENGINE, &["rm", "-f", id]);
    assert!(export.success(), "exporting shoal-test/busybox failed");
    let mut urandom = std::fs::File::open("/dev/urandom")
        .expect("/dev/urandom")
        .take(megabytes << 20);
    let mut blob = std::fs::File::create(root.join("blob")).expect("creating /blob");
    std::io::copy(&mut urandom, &mut blob).expect("writing /blob");
    drop(blob);
    let import = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -c . | docker -H {MACHINE_ENGINE} import --change 'CMD [\"/bin/sh\"]' \
             --change 'ENV PATH=/bin' --change 'LABEL shoal.test.megabytes={megabytes}' - {tag}",
            root.display()
        ))
        .stdout(Stdio::null())
        .status()
        .expect("tar | docker import");
    let _ = std::fs::remove_dir_all(&work);
    assert!(import.success(), "docker import of {tag} failed");
    tag.to_string()
}

/// The machine's `/etc/docker/daemon.json` without the keys each engine sets by flag.
fn engine_config() -> String {
    let text = std::fs::read_to_string("/etc/docker/daemon.json").unwrap_or_else(|_| "{}".into());
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("/etc/docker/daemon.json");
    if let Some(map) = v.as_object_mut() {
        for k in OWN_KEYS {
            map.remove(*k);
        }
    }
    v.to_string()
}

/// Sends `sig` (e.g. "TERM") to `pid`.
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Processes whose command line names a path under `dir` (an engine's containerd, shims and
/// fuse-overlayfs mounts), as (pid, argv).
fn processes_under(dir: &Path) -> Vec<(u32, Vec<String>)> {
    let needle = format!("{}/", dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).to_string())
                .collect();
            argv.iter()
                .any(|a| a.contains(&needle))
                .then_some((pid, argv))
        })
        .collect()
}

/// After dockerd is gone: kills what of the engine still runs, takes every mount under its
/// directory off (deepest first) and removes it.
fn clean_engine_dir(dir: &Path) {
    let left = processes_under(dir);
    for (pid, _) in &left {
        signal(*pid, "KILL");
    }
    let until = Instant::now() + Duration::from_secs(10);
    while !processes_under(dir).is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    unmount_under(dir);
    let until = Instant::now() + Duration::from_secs(10);
    while !mounts_under(dir).is_empty() && Instant::now() < until {
        unmount_under(dir);
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Stops engines left by test processes that are gone (killed before their drop ran): a
/// dockerd whose exec root lies under `<tmp>/shoal-t<pid>-...` of a dead pid.
fn sweep_stale_engines() {
    SWEEP.call_once(|| {
        let tmp = std::env::temp_dir();
        let prefix = format!("{}/shoal-t", tmp.display());
        for (pid, argv) in processes_under(&tmp) {
            if !argv.first().is_some_and(|a| a.ends_with("dockerd")) {
                continue;
            }
            let Some(exec) = argv
                .iter()
                .position(|a| a == "--exec-root")
                .and_then(|i| argv.get(i + 1))
            else {
                continue;
            };
            let Some(owner) = exec
                .strip_prefix(&prefix)
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{owner}")).exists() {
                continue;
            }
            signal(pid, "TERM");
            let until = Instant::now() + Duration::from_secs(30);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
            signal(pid, "KILL");
            if let Some(dir) = Path::new(exec).parent() {
                clean_engine_dir(dir);
            }
        }
    });
}
