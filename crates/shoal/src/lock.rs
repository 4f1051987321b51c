//! The data directory's lock: one daemon per data directory for its whole life. Two daemons on
//! one raft store would answer from one node's identity with two processes (and redb's own lock
//! would only make the second wait and retry); the lock turns that into an error at once that
//! names the holder's PID. The kernel drops the lock when the holder dies, `kill -9` included,
//! so a restart never finds a stale lock to clean.

use anyhow::Context;
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "shoal.lock";

/// Held for the daemon's whole life: dropping it (or the process dying) releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock on `dir` without waiting and writes this process's PID in it; fails at once
    /// with the holder's PID when another process holds it.
    pub fn acquire(dir: &Path) -> anyhow::Result<DataDirLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the data dir lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!("PID {pid}"),
                    // It took the lock and has not written its PID yet.
                    Err(_) => "a process that has not written its PID yet".to_string(),
                };
                anyhow::bail!(
                    "the data dir {} is in use by another shoal daemon ({holder}, lock file {}); \
                     stop it first or give this one its own --data-dir",
                    dir.display(),
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .with_context(|| format!("writing this daemon's PID to {}", path.display()))?;
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file, for the log.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_fails_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDirLock::acquire(dir.path()).unwrap();
        let pid = std::process::id().to_string();
        assert_eq!(
            std::fs::read_to_string(held.path()).unwrap().trim(),
            pid,
            "the holder's PID is in the file"
        );
        // flock locks belong to the open file description: a second open in this process
        // conflicts just as another process would.
        let err = format!("{:#}", DataDirLock::acquire(dir.path()).unwrap_err());
        assert!(err.contains(&format!("PID {pid}")), "{err}");
        drop(held);
        let again = DataDirLock::acquire(dir.path()).expect("released when dropped");
        assert_eq!(std::fs::read_to_string(again.path()).unwrap().trim(), pid);
    }
}
