//! Shared volumes on this node (issue 19): a volume is mounted once per node, when the first task
//! that uses it is about to get its container, under `<data>/volumes/<name>/<options hash>`, and
//! the task's container gets a bind mount of it (or of its `subdir`) instead of an engine volume.
//! The last task that leaves unmounts it.
//!
//! Why a bind and not an engine volume plugin: the engine then needs nothing from shoal at
//! container start (a plugin socket that must answer while the daemon restarts), several nodes'
//! agents can share one engine (the test harness), and the mount is checked to be one before any
//! container sees the path, so a task never runs on the empty directory under a failed mount.
//!
//! Options changed later (a new `stack deploy`) make a new hash, so they apply to the next mount
//! while the tasks on the old one keep it until they leave. Mounts are keyed per options and
//! serialized per key only: one volume whose servers hang never blocks another's mount.
//!
//! After a restart, the mounts of adopted containers' volumes are found (already mountpoints) and
//! kept; [`Volumes::forget_unused`] unmounts what no task claimed.

use shoal_api::dispatch::VolumePayload;
use shoal_api::volume;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a mount program may take before the attempt counts as failed (a FUSE client waits
/// for unreachable servers by itself for about this long).
const MOUNT_TIMEOUT: Duration = Duration::from_secs(45);

/// Why a task's volume is not usable yet: shown as the task's error while it waits in
/// `preparing`, and retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The options the manager sent do not parse (a newer manager, or a stored volume from
    /// before a validation rule).
    #[error("volume {name}: {message}")]
    Invalid {
        /// Volume name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The mount program failed, timed out, or left no mount.
    #[error("mounting volume {name}: {detail}")]
    Mount {
        /// Volume name.
        name: String,
        /// The mount program's error output, or why it counted as failed.
        detail: String,
    },
    /// A directory or credential file could not be made.
    #[error("volume {name}: {op} {}: {source}", path.display())]
    Io {
        /// Volume name.
        name: String,
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// One mount of one volume with one set of options.
struct Entry {
    /// The volume's name (for logs).
    name: String,
    /// Where it is mounted.
    path: PathBuf,
    /// The tasks using it.
    users: Mutex<HashSet<String>>,
    /// Mounted or not; held while mounting or unmounting, so a task waits for its own key only.
    mounted: tokio::sync::Mutex<bool>,
}

/// This node's shared-volume mounts.
#[derive(Clone)]
pub struct Volumes {
    root: PathBuf,
    /// Where credential files (a Ceph keyring, an ssh identity) are written: a tmpfs, never disk.
    secrets: PathBuf,
    table: Arc<Mutex<HashMap<String, Arc<Entry>>>>,
}

/// The directory of one volume's mount for one set of options: a short hash of the options,
/// so a change of options mounts anew beside the old mount.
fn key_of(v: &VolumePayload) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(v.driver.as_bytes());
    for (k, val) in &v.options {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([1]);
        h.update(val.as_bytes());
    }
    for (k, val) in &v.credentials {
        h.update([2]);
        h.update(k.as_bytes());
        h.update([3]);
        h.update(val);
    }
    let d = h.finalize();
    let hex: String = d.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{}/{hex}", v.name)
}

/// Whether `p` is a mount point now (the kernel's table, not a guess from directory contents).
pub fn is_mountpoint(p: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.display().to_string();
    text.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape_mountinfo(m) == want)
    })
}

/// Mount points in mountinfo escape space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn mkdir(name: &str, p: &Path) -> Result<(), VolumeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(|source| VolumeError::Io {
            name: name.to_string(),
            op: "creating",
            path: p.to_path_buf(),
            source,
        })
}

impl Volumes {
    /// The mounts live under `root` (in the data directory); credential files under `secrets`
    /// (a tmpfs: the secrets' tree).
    pub fn new(root: PathBuf, secrets: PathBuf) -> Volumes {
        Volumes {
            root,
            secrets,
            table: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn entry(&self, v: &VolumePayload) -> Arc<Entry> {
        let key = key_of(v);
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Entry {
                    name: v.name.clone(),
                    path: self.root.join(&key),
                    users: Mutex::new(HashSet::new()),
                    mounted: tokio::sync::Mutex::new(false),
                })
            })
            .clone()
    }

    /// Records that `task` (an adopted, already running container) uses `v`'s mount, when that
    /// mount is there: after a restart its container still binds it, so it must not be unmounted.
    pub fn adopt(&self, task: &str, v: &VolumePayload) {
        let e = self.entry(v);
        if is_mountpoint(&e.path) || matches!(volume_kind(v), Ok(Kind::Local)) {
            e.users
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(task.to_string());
            if let Ok(mut m) = e.mounted.try_lock() {
                *m = true;
            }
        }
    }

    /// Mounts `v` for `task` unless mounted already, and returns the host path its containers
    /// bind (the mount, or its `subdir`, created if missing). Fails without a mount: the caller
    /// keeps the task waiting and calls again later.
    pub async fn acquire(&self, task: &str, v: &VolumePayload) -> Result<PathBuf, VolumeError> {
        let cfg = parse(v)?;
        let e = self.entry(v);
        e.users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.to_string());
        let made = self.ensure_mounted(&e, v, &cfg).await;
        let base = match made {
            Ok(base) => base,
            Err(err) => {
                self.release_entry(&e, task).await;
                return Err(err);
            }
        };
        let Some(sub) = cfg.subdir.as_deref() else {
            return Ok(base);
        };
        let p = base.join(sub);
        mkdir(&v.name, &p)?;
        Ok(p)
    }

    async fn ensure_mounted(
        &self,
        e: &Entry,
        v: &VolumePayload,
        cfg: &volume::VolumeConfig,
    ) -> Result<PathBuf, VolumeError> {
        let mut mounted = e.mounted.lock().await;
        if let volume::Backend::Local { path, .. } = &cfg.backend {
            // A node-local volume is a directory: the given one, or one of shoal's own.
            // Not under the options' hash: the data stays when the options change.
            let dir = match path {
                Some(p) => PathBuf::from(p),
                None => self.root.join(&v.name).join("_data"),
            };
            mkdir(&v.name, &dir)?;
            *mounted = true;
            return Ok(dir);
        }
        if *mounted && is_mountpoint(&e.path) {
            return Ok(e.path.clone());
        }
        mkdir(&v.name, &e.path)?;
        if is_mountpoint(&e.path) {
            // Left by this daemon before a restart: the same options, so the same mount.
            tracing::info!(volume = %v.name, path = %e.path.display(), "volume already mounted; kept");
            *mounted = true;
            return Ok(e.path.clone());
        }
        let creds: HashMap<String, Vec<u8>> = v
            .credentials
            .iter()
            .map(|(k, val)| (k.clone(), val.clone()))
            .collect();
        let invalid = |e: volume::CommandError| VolumeError::Invalid {
            name: v.name.clone(),
            message: e.to_string(),
        };
        let files = self.credential_files(v, cfg, &creds)?;
        let cmd = match volume::mount_command(cfg, &e.path, &files, &creds) {
            Ok(Some(cmd)) => cmd,
            Ok(None) => {
                self.remove_credential_files(&files);
                return Err(VolumeError::Invalid {
                    name: v.name.clone(),
                    message: "no mount command for this volume type".into(),
                });
            }
            Err(err) => {
                self.remove_credential_files(&files);
                return Err(invalid(err));
            }
        };
        tracing::info!(volume = %v.name, program = %cmd.program, args = ?cmd.args, path = %e.path.display(), "mounting volume");
        let out = run(&cmd).await;
        let fail = |detail: String| {
            // The files live as long as the mount (sshfs reads its key again to reconnect).
            self.remove_credential_files(&files);
            VolumeError::Mount {
                name: v.name.clone(),
                detail,
            }
        };
        crate::metrics::count(
            &crate::metrics::METRICS.volume_mounts,
            matches!(&out, Ok(()) if is_mountpoint(&e.path)),
        );
        match out {
            Err(detail) => return Err(fail(detail)),
            Ok(()) if !is_mountpoint(&e.path) => {
                return Err(fail(format!(
                    "{} exited 0 but {} is not a mount point",
                    cmd.program,
                    e.path.display()
                )))
            }
            Ok(()) => {}
        }
        *mounted = true;
        Ok(e.path.clone())
    }

    /// Writes the files a mount program reads its credentials from (0600, on the tmpfs).
    fn credential_files(
        &self,
        v: &VolumePayload,
        cfg: &volume::VolumeConfig,
        creds: &HashMap<String, Vec<u8>>,
    ) -> Result<HashMap<String, PathBuf>, VolumeError> {
        let mut out = HashMap::new();
        let wanted = volume::files_to_write(cfg, creds).map_err(|e| VolumeError::Invalid {
            name: v.name.clone(),
            message: e.to_string(),
        })?;
        if wanted.is_empty() {
            return Ok(out);
        }
        let dir = self.credentials_dir(&key_of(v));
        mkdir(&v.name, &dir)?;
        for (k, val) in wanted {
            let p = dir.join(k);
            write_private(&p, &val).map_err(|source| VolumeError::Io {
                name: v.name.clone(),
                op: "writing credential",
                path: p.clone(),
                source,
            })?;
            out.insert(k.to_string(), p);
        }
        Ok(out)
    }

    /// Where the credential files of the mount with `key` live (on the tmpfs).
    fn credentials_dir(&self, key: &str) -> PathBuf {
        self.secrets.join(".volumes").join(key.replace('/', "-"))
    }

    fn remove_credential_files(&self, files: &HashMap<String, PathBuf>) {
        for p in files.values() {
            let _ = std::fs::remove_file(p);
        }
        if let Some(dir) = files.values().next().and_then(|p| p.parent()) {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// `task` no longer uses any volume here (its container is gone): mounts no task uses any
    /// more are unmounted.
    pub async fn release(&self, task: &str) {
        let entries: Vec<Arc<Entry>> = {
            let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
            t.values()
                .filter(|e| {
                    e.users
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(task)
                })
                .cloned()
                .collect()
        };
        for e in entries {
            self.release_entry(&e, task).await;
        }
    }

    async fn release_entry(&self, e: &Arc<Entry>, task: &str) {
        let empty = {
            let mut u = e.users.lock().unwrap_or_else(|e| e.into_inner());
            u.remove(task);
            u.is_empty()
        };
        if !empty {
            return;
        }
        let mut mounted = e.mounted.lock().await;
        // Another task may have claimed it while this one waited for the lock.
        if !e.users.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return;
        }
        if is_mountpoint(&e.path) {
            tracing::info!(volume = %e.name, path = %e.path.display(), "unmounting volume no task here uses");
            unmount(&e.path).await;
        }
        if let Ok(rel) = e.path.strip_prefix(&self.root) {
            let creds = self.credentials_dir(&rel.display().to_string());
            let _ = std::fs::remove_dir_all(creds);
        }
        *mounted = false;
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if e.users.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            t.retain(|_, x| !Arc::ptr_eq(x, e));
            let _ = std::fs::remove_dir(&e.path);
        }
    }

    /// Unmounts every mount under the volumes' root that no task has claimed (left by a daemon
    /// that was killed, for tasks that are gone). Each goes through the table like a release,
    /// so a task claiming the same mount meanwhile waits and mounts it again.
    pub async fn forget_unused(&self) {
        for m in self.mounts_under_root() {
            let Ok(rel) = m.strip_prefix(&self.root) else {
                continue;
            };
            let key = rel.display().to_string();
            let e = {
                let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
                if t.contains_key(&key) {
                    continue;
                }
                let e = Arc::new(Entry {
                    name: key.split('/').next().unwrap_or_default().to_string(),
                    path: m.clone(),
                    users: Mutex::new(HashSet::new()),
                    mounted: tokio::sync::Mutex::new(true),
                });
                t.insert(key, e.clone());
                e
            };
            tracing::info!(path = %m.display(), "unmounting a volume no task here uses (left before a restart)");
            self.release_entry(&e, "").await;
        }
    }

    /// Unmounts every volume (swarm leave, daemon shutdown): the containers that used them are
    /// gone or keep their own reference.
    pub async fn unmount_all(&self) {
        for m in self.mounts_under_root() {
            unmount(&m).await;
            let _ = std::fs::remove_dir(&m);
        }
        let _ = std::fs::remove_dir_all(self.secrets.join(".volumes"));
        self.table.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn mounts_under_root(&self) -> Vec<PathBuf> {
        let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return Vec::new();
        };
        let root = self.root.display().to_string();
        let mut out: Vec<PathBuf> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(unescape_mountinfo))
            .filter(|m| m.starts_with(&format!("{root}/")))
            .map(PathBuf::from)
            .collect();
        // Deepest first, so nested mounts come off before their parents.
        out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        out.dedup();
        out
    }
}

/// The kinds the agent treats differently: a directory, or a filesystem to mount.
enum Kind {
    Local,
    Mounted,
}

fn parse(v: &VolumePayload) -> Result<volume::VolumeConfig, VolumeError> {
    let opts: HashMap<String, String> = v
        .options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Credentials are parsed as present; their values come to `mount_command` apart.
    volume::parse_stored(
        Some(&v.driver),
        &opts,
        v.credentials.keys().map(String::as_str),
    )
    .map_err(|e| VolumeError::Invalid {
        name: v.name.clone(),
        message: e.message,
    })
}

fn volume_kind(v: &VolumePayload) -> Result<Kind, VolumeError> {
    Ok(match parse(v)?.backend {
        volume::Backend::Local { .. } => Kind::Local,
        _ => Kind::Mounted,
    })
}

fn write_private(p: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Runs a mount program with its stdin (credentials) and a time limit; `Err` is what it printed.
async fn run(cmd: &volume::MountCommand) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut c = tokio::process::Command::new(&cmd.program);
    c.args(&cmd.args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = c
        .spawn()
        .map_err(|e| format!("starting {}: {e}", cmd.program))?;
    if let Some(mut stdin) = child.stdin.take() {
        if let Some(input) = &cmd.stdin {
            let _ = stdin.write_all(input).await;
        }
        drop(stdin);
    }
    match tokio::time::timeout(MOUNT_TIMEOUT, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "{} did not finish within {} s",
            cmd.program,
            MOUNT_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("waiting for {}: {e}", cmd.program)),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if msg.is_empty() {
                msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            Err(format!("{} failed ({}): {msg}", cmd.program, out.status))
        }
    }
}

/// Unmounts `p`: a plain unmount, then a lazy one (a container that still binds it keeps its
/// reference; the host's tree no longer shows it).
async fn unmount(p: &Path) {
    crate::metrics::METRICS.volume_unmounts.inc();
    let plain = tokio::process::Command::new("umount").arg(p).output().await;
    if matches!(&plain, Ok(o) if o.status.success()) {
        return;
    }
    let lazy = tokio::process::Command::new("umount")
        .arg("-l")
        .arg(p)
        .output()
        .await;
    if !matches!(&lazy, Ok(o) if o.status.success()) {
        tracing::warn!(path = %p.display(), result = ?lazy.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()), "could not unmount volume");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(opts: &[(&str, &str)]) -> VolumePayload {
        VolumePayload {
            name: "data".into(),
            driver: "shoal".into(),
            options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            credentials: Default::default(),
        }
    }

    #[test]
    fn new_options_mount_beside_the_old_ones() {
        let a = payload(&[("type", "glusterfs"), ("device", "n1,n2:/gv0")]);
        let b = payload(&[("type", "glusterfs"), ("device", "n1,n3:/gv0")]);
        assert_ne!(key_of(&a), key_of(&b));
        assert_eq!(key_of(&a), key_of(&a.clone()));
        assert!(key_of(&a).starts_with("data/"));
    }

    #[test]
    fn mountinfo_escapes_are_read_back() {
        assert_eq!(unescape_mountinfo("/a\\040b\\134c"), "/a b\\c");
    }

    #[tokio::test]
    async fn a_local_volume_is_a_directory_shared_by_its_tasks_and_kept_after_they_leave() {
        let dir = tempfile::tempdir().unwrap();
        let v = Volumes::new(dir.path().join("volumes"), dir.path().join("secrets"));
        let p = payload(&[("type", "local")]);
        let a = v.acquire("t1", &p).await.unwrap();
        let b = v.acquire("t2", &p).await.unwrap();
        assert_eq!(a, b);
        std::fs::write(a.join("f"), b"x").unwrap();
        v.release("t1").await;
        v.release("t2").await;
        // A directory, not a mount: its data stays for the next task.
        assert_eq!(std::fs::read(a.join("f")).unwrap(), b"x");
    }

    #[tokio::test]
    async fn a_failed_mount_is_an_error_and_leaves_no_claim() {
        let dir = tempfile::tempdir().unwrap();
        let v = Volumes::new(dir.path().join("volumes"), dir.path().join("secrets"));
        // Nothing listens on port 1: sshfs (if installed) fails at once, or the missing program
        // does, and nothing is mounted. (sshfs, not a gluster client: that would leave a log
        // file under /var/log/glusterfs on every run.)
        let mut p = payload(&[
            ("type", "sshfs"),
            ("device", "nobody@127.0.0.1:/nope"),
            ("port", "1"),
            (
                "host_key",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            ),
        ]);
        p.credentials
            .insert("password".into(), b"not-used".to_vec());
        let err = v.acquire("t1", &p).await.unwrap_err();
        assert!(err.to_string().contains("mounting volume data"), "{err}");
        assert!(v.table.lock().unwrap().is_empty());
    }
}
