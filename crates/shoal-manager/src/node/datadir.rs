//! The node's data directory holds the CA's key, the node's key and the raft store with every
//! secret: only root may read it. The directory and every directory under it are 0700, every
//! file 0600, whatever the umask the daemon was started with; a restart repairs looser modes.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A path whose mode was looser than the data directory allows, and what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// The file or directory.
    pub path: PathBuf,
    /// Its mode before (permission bits).
    pub was: u32,
    /// Its mode now.
    pub now: u32,
}

/// Creates `dir` if missing and brings it and everything under it to 0700 (directories) and
/// 0600 (files); returns what had looser modes. Symbolic links are not followed and other
/// kinds of files (sockets) are left alone.
pub fn secure(dir: &Path) -> io::Result<Vec<Repaired>> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let mut repaired = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        let wanted = if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
            0o700
        } else if meta.is_file() {
            0o600
        } else {
            continue;
        };
        let was = meta.permissions().mode() & 0o7777;
        if was != wanted {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(wanted))?;
            // Only a looser mode is worth a word; a stricter one (0400) is just made usable.
            if was & 0o077 != 0 || was & 0o7000 != 0 {
                repaired.push(Repaired {
                    path,
                    was,
                    now: wanted,
                });
            }
        }
    }
    Ok(repaired)
}

/// Writes `data` to `path` durably and root-only: a 0600 temporary file, fsynced, renamed into
/// place, then the directory fsynced, so a crash leaves the old content or the new one.
pub fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Makes creations, renames and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn looser_modes_are_repaired_and_reported_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let fresh = secure(&dir).unwrap();
        assert!(fresh.is_empty(), "{fresh:?}");
        assert_eq!(mode(&dir), 0o700, "a new data dir is 0700");

        let certs = dir.join("certs");
        std::fs::create_dir(&certs).unwrap();
        std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o755)).unwrap();
        let key = certs.join("swarm-node.key");
        std::fs::write(&key, "key").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let setuid = dir.join("raft.redb");
        std::fs::write(&setuid, "db").unwrap();
        std::fs::set_permissions(&setuid, std::fs::Permissions::from_mode(0o4600)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "not ours").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();

        let mut got = secure(&dir).unwrap();
        got.sort_by(|a, b| a.path.cmp(&b.path));
        let summary: Vec<(PathBuf, u32, u32)> =
            got.into_iter().map(|r| (r.path, r.was, r.now)).collect();
        assert_eq!(
            summary,
            vec![
                (dir.clone(), 0o755, 0o700),
                (certs.clone(), 0o755, 0o700),
                (key.clone(), 0o644, 0o600),
                (setuid.clone(), 0o4600, 0o600),
            ]
        );
        assert_eq!(
            (mode(&dir), mode(&certs), mode(&key), mode(&setuid)),
            (0o700, 0o700, 0o600, 0o600)
        );
        assert_eq!(mode(&outside), 0o644, "a link's target is not touched");
        assert!(secure(&dir).unwrap().is_empty(), "nothing left to repair");
    }
}
