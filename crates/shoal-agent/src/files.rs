//! Secret and config files: written on a tmpfs the agent mounts, per task, then bind-mounted
//! read-only into the task's container. Secret bytes never touch a persistent disk.
//!
//! The tmpfs lives exactly while the agent runs: `swarm leave` removes the files and unmounts
//! it, and so does daemon shutdown, minus the removal. Shoal's containers outlive a daemon
//! restart by design (Docker with `live-restore`, where Swarm's engine would instead stop them
//! and unmount each container's secrets), so on shutdown a running task keeps its own bind
//! mounts of its files, which keep the unmounted tmpfs alive for it alone, while the host's
//! file tree shows nothing; the next start mounts a new tmpfs and writes the files of every
//! assigned task again (a created, not yet started container needs them at start).

use shoal_api::dispatch::FilePayload;
use shoal_api::objects::StoredTask;
use shoal_api::validate::{config_target, secret_target};
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a file step failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// Filesystem error with the path involved.
    #[error("{op} {path}: {source}")]
    Io {
        /// The step.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A task refers to a secret or config the assignments did not carry.
    #[error("{kind} {id} referenced by task {task} is not available on this node")]
    Missing {
        /// "secret" or "config".
        kind: &'static str,
        /// Its ID.
        id: String,
        /// The task.
        task: String,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FilesError + 'a {
    move |source| FilesError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One secret or config reference of a task, whatever its kind.
struct FileRef {
    kind: &'static str,
    id: String,
    name: Option<String>,
    mode: Option<u32>,
    uid: Option<String>,
    gid: Option<String>,
}

/// The directory tree (on tmpfs) holding every task's files.
#[derive(Debug, Clone)]
pub struct Files {
    root: PathBuf,
}

/// Names the data directory of the daemon whose tree this is (not a task ID: those have no dot).
const OWNER: &str = ".owner";

/// The data directory written in a files tree's marker.
fn owner_of(root: &Path) -> Option<PathBuf> {
    let bytes = std::fs::read(root.join(OWNER)).ok()?;
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

fn is_mountpoint(p: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.display().to_string();
    text.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

impl Files {
    /// The tmpfs tree's root: where other short-lived credentials (a volume's key file) are
    /// written, so they never touch the disk.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Prepares `root`, mounting a tmpfs there when it is not one already (needs root; without it
    /// the files stay in a 0700 directory and a warning says so).
    pub fn new(root: PathBuf) -> Result<Files, FilesError> {
        std::fs::create_dir_all(&root).map_err(io("creating", &root))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(io("securing", &root))?;
        if !is_mountpoint(&root) {
            let status = std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    "mode=0700,nosuid,nodev,noexec",
                    "shoal-files",
                ])
                .arg(&root)
                .status();
            match status {
                Ok(s) if s.success() => {}
                other => {
                    tracing::warn!(path = %root.display(), result = ?other, "could not mount a tmpfs for secrets; they stay in a 0700 directory")
                }
            }
        }
        Ok(Files { root })
    }

    /// The files of node `node_id` under `files_root`, for the daemon whose data directory is
    /// `owner`. Trees this daemon left under earlier identities (a `kill -9`, then a new swarm)
    /// are unmounted first; trees of other daemons on the machine (their `.owner` names another
    /// data directory) are left alone.
    pub fn for_node(files_root: &Path, node_id: &str, owner: &Path) -> Result<Files, FilesError> {
        let root = files_root.join(&node_id[..node_id.len().min(12)]);
        if let Ok(entries) = std::fs::read_dir(files_root) {
            for e in entries.flatten() {
                let p = e.path();
                if p != root && owner_of(&p).as_deref() == Some(owner) {
                    tracing::info!(path = %p.display(), "unmounting the secrets tmpfs of this node's former identity");
                    Files { root: p }.cleanup();
                }
            }
        }
        let files = Files::new(root)?;
        let marker = files.root.join(OWNER);
        std::fs::write(&marker, owner.as_os_str().as_encoded_bytes())
            .map_err(io("writing", &marker))?;
        Ok(files)
    }

    /// Writes a task's secrets and configs; returns (host path, container path) pairs to mount.
    pub fn prepare(
        &self,
        task: &StoredTask,
        secrets: &[FilePayload],
        configs: &[FilePayload],
    ) -> Result<Vec<(PathBuf, String)>, FilesError> {
        let cs = task
            .task
            .spec
            .as_ref()
            .and_then(|s| s.container_spec.as_ref());
        let dir = self.root.join(task.id());
        let mut refs: Vec<FileRef> = Vec::new();
        for r in cs.and_then(|c| c.secrets.as_ref()).into_iter().flatten() {
            let f = r.file.clone().unwrap_or_default();
            refs.push(FileRef {
                kind: "secret",
                id: r.secret_id.clone().unwrap_or_default(),
                name: f.name,
                mode: f.mode,
                uid: f.uid,
                gid: f.gid,
            });
        }
        for r in cs.and_then(|c| c.configs.as_ref()).into_iter().flatten() {
            // A config without a file target is not mounted.
            let Some(f) = r.file.clone() else { continue };
            refs.push(FileRef {
                kind: "config",
                id: r.config_id.clone().unwrap_or_default(),
                name: f.name,
                mode: f.mode,
                uid: f.uid,
                gid: f.gid,
            });
        }
        let mut out = Vec::new();
        for (
            i,
            FileRef {
                kind,
                id,
                name,
                mode,
                uid,
                gid,
            },
        ) in refs.into_iter().enumerate()
        {
            let payloads = if kind == "secret" { secrets } else { configs };
            let p = payloads
                .iter()
                .find(|s| s.id == id)
                .ok_or_else(|| FilesError::Missing {
                    kind,
                    id: id.clone(),
                    task: task.id().into(),
                })?;
            let host = dir.join(format!("{kind}-{i}"));
            write(
                &host,
                &p.data,
                mode.unwrap_or(0o444),
                uid.as_deref(),
                gid.as_deref(),
            )?;
            let name = name.unwrap_or_else(|| p.name.clone());
            out.push((
                host,
                if kind == "secret" {
                    secret_target(&name)
                } else {
                    config_target(&name)
                },
            ));
        }
        Ok(out)
    }

    /// Forgets a task's files.
    pub fn remove(&self, task_id: &str) {
        let dir = self.root.join(task_id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %dir.display(), error = %e, "removing task files");
            }
        }
    }

    /// Removes everything and unmounts the tmpfs (swarm leave).
    pub fn cleanup(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let p = e.path();
                if e.file_name() == OWNER {
                    continue;
                }
                if let Err(err) = std::fs::remove_dir_all(&p) {
                    tracing::warn!(path = %p.display(), error = %err, "removing task files");
                }
            }
        }
        self.unmount();
    }

    /// Takes the tmpfs off the host's file tree (daemon shutdown, and leave): nothing of the
    /// secrets stays reachable there while the daemon is down. A running task keeps its own
    /// bind mounts of its files (the kernel keeps the tmpfs alive for them); the next start
    /// mounts a new tmpfs and writes every assigned task's files again.
    pub fn unmount(&self) {
        if is_mountpoint(&self.root) {
            let plain = std::process::Command::new("umount")
                .arg(&self.root)
                .status();
            if !matches!(plain, Ok(s) if s.success()) {
                // Busy (a process has a file open there): detach it from the tree anyway.
                let lazy = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.root)
                    .status();
                if !matches!(lazy, Ok(s) if s.success()) {
                    tracing::warn!(path = %self.root.display(), result = ?lazy, "could not unmount the secrets tmpfs");
                    return;
                }
            }
            tracing::info!(path = %self.root.display(), "secrets tmpfs unmounted");
        }
        // The empty mount point (or, without a tmpfs, the 0700 directory and what is left in it).
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.root.display(), error = %e, "removing the secrets directory");
            }
        }
    }
}

fn write(
    path: &Path,
    data: &[u8],
    mode: u32,
    uid: Option<&str>,
    gid: Option<&str>,
) -> Result<(), FilesError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("writing", &tmp))?;
        f.write_all(data).map_err(io("writing", &tmp))?;
    }
    let uid: Option<u32> = uid.and_then(|u| u.parse().ok());
    let gid: Option<u32> = gid.and_then(|g| g.parse().ok());
    std::os::unix::fs::chown(&tmp, uid.or(Some(0)), gid.or(Some(0))).map_err(io("chown", &tmp))?;
    // The requested permission bits only: a secret file is never setuid, setgid or sticky,
    // whatever mode its spec asks for.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o777))
        .map_err(io("chmod", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (mount), as the daemon does.
    #[test]
    fn a_former_identitys_tree_is_unmounted_and_another_daemons_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let files_root = tmp.path().join("files");
        let (mine, theirs) = (tmp.path().join("data-a"), tmp.path().join("data-b"));
        let old = Files::for_node(&files_root, "oldnode000000000", &mine).unwrap();
        let other = Files::for_node(&files_root, "othernode0000000", &theirs).unwrap();
        std::fs::write(old.root.join("secret"), b"x").unwrap();
        assert!(is_mountpoint(&old.root), "a tmpfs holds the files");

        let new = Files::for_node(&files_root, "newnode000000000", &mine).unwrap();
        assert!(
            !is_mountpoint(&old.root) && !old.root.exists(),
            "the old tree is gone"
        );
        assert!(is_mountpoint(&other.root), "another daemon's tree stays");
        assert!(is_mountpoint(&new.root));
        for f in [new, other] {
            f.cleanup();
            assert!(!f.root.exists());
        }
    }

    #[test]
    fn files_keep_the_requested_mode_but_never_setuid_setgid_or_sticky() {
        let tmp = tempfile::tempdir().unwrap();
        for (asked, got) in [
            (0o444, 0o444),
            (0o6755, 0o755),
            (0o1640, 0o640),
            (0o400, 0o400),
        ] {
            let path = tmp.path().join(format!("task/secret-{asked:o}"));
            // Owned by whoever runs the test, so it needs no root.
            // SAFETY: getuid and getgid cannot fail.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let (uid, gid) = (uid.to_string(), gid.to_string());
            write(&path, b"s3cr3t", asked, Some(&uid), Some(&gid)).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, got, "asked {asked:o}");
            assert_eq!(std::fs::read(&path).unwrap(), b"s3cr3t");
        }
    }
}
