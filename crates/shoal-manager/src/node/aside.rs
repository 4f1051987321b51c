//! Raft state set aside while a new one is built (`swarm init --force-new-cluster`, and `swarm
//! init` over what an unfinished init or leave left), so that a crash at any point leaves either
//! the old state or the new one, and the aside copy is removed once the new one is durable.
//!
//! The steps, each durable (the data directory fsynced) before the next:
//! 1. a marker file (`raft.aside`) naming the aside directory is written;
//! 2. `raft` is renamed to that directory; the new `raft` is built and committed;
//! 3. the marker is removed: the commit point;
//! 4. the aside directory is removed.
//!
//! [`recover`], at every daemon start, undoes an unfinished change (marker present: the aside
//! state goes back to `raft`) and removes aside directories whose change finished (no marker).

use std::io;
use std::path::{Path, PathBuf};

/// The marker: present while a change of the raft state is unfinished; holds the aside name.
const MARKER: &str = "raft.aside";
/// Prefix of every aside directory's name.
const PREFIX: &str = "raft.before-";
/// The live raft state's directory.
const RAFT: &str = "raft";

/// A raft state set aside, kept until [`Aside::commit`] says the new one is durable.
#[derive(Debug)]
#[must_use = "an aside state is removed only by commit"]
pub struct Aside {
    data_dir: PathBuf,
    path: PathBuf,
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// An unfinished change was undone: this aside state is `raft` again.
    RolledBack(PathBuf),
    /// A finished change's aside state was removed.
    Removed(PathBuf),
}

pub use super::datadir::sync_dir;

/// Writes `data` to `dir/name` durably (see [`super::datadir::write_durably`]).
fn write_durably(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    super::datadir::write_durably(&dir.join(name), data)
}

/// Removes the raft state of a node that is no longer a manager (a demotion, or one a crash cut
/// short after the node saved its worker identity), durably; true when there was some. A node
/// promoted again later starts from an empty raft state, never from a stale log.
pub fn forget_raft_of_worker(data_dir: &Path) -> io::Result<bool> {
    let raft = data_dir.join(RAFT);
    match std::fs::remove_dir_all(&raft) {
        Ok(()) => {
            sync_dir(data_dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sets `data_dir/raft` aside for a change named `why`; `None` when there is no raft state.
pub fn set_aside(data_dir: &Path, why: &str) -> io::Result<Option<Aside>> {
    let raft = data_dir.join(RAFT);
    if !raft.exists() {
        return Ok(None);
    }
    let name = format!("{PREFIX}{why}-{}", shoal_api::id::new_id());
    write_durably(data_dir, MARKER, name.as_bytes())?;
    let path = data_dir.join(&name);
    std::fs::rename(&raft, &path)?;
    sync_dir(data_dir)?;
    Ok(Some(Aside {
        data_dir: data_dir.to_path_buf(),
        path,
    }))
}

impl Aside {
    /// Where the old state is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The new raft state is durable: forget the old one (marker first, so a crash during the
    /// removal cannot bring it back).
    pub fn commit(self) -> io::Result<()> {
        std::fs::remove_file(self.data_dir.join(MARKER))?;
        sync_dir(&self.data_dir)?;
        std::fs::remove_dir_all(&self.path)?;
        sync_dir(&self.data_dir)
    }

    /// The change failed: the old state is `raft` again, as after a crash.
    pub fn roll_back(self) -> io::Result<Vec<Recovered>> {
        recover(&self.data_dir)
    }
}

/// Brings the data directory back to one raft state after a crash: see the module's steps.
pub fn recover(data_dir: &Path) -> io::Result<Vec<Recovered>> {
    let mut done = Vec::new();
    let marker = data_dir.join(MARKER);
    match std::fs::read_to_string(&marker) {
        Ok(name) => {
            let name = name.trim();
            // Only a name this module makes, inside the data dir.
            if name.starts_with(PREFIX) && !name.contains('/') {
                let aside = data_dir.join(name);
                if aside.exists() {
                    let raft = data_dir.join(RAFT);
                    if raft.exists() {
                        std::fs::remove_dir_all(&raft)?;
                        sync_dir(data_dir)?;
                    }
                    std::fs::rename(&aside, &raft)?;
                    sync_dir(data_dir)?;
                    done.push(Recovered::RolledBack(aside));
                }
            }
            std::fs::remove_file(&marker)?;
            sync_dir(data_dir)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let _ = std::fs::remove_file(data_dir.join(format!("{MARKER}.tmp")));
    let mut removed = false;
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(PREFIX) {
            let path = entry.path();
            std::fs::remove_dir_all(&path)?;
            done.push(Recovered::Removed(path));
            removed = true;
        }
    }
    if removed {
        sync_dir(data_dir)?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_workers_leftover_raft_state_is_forgotten_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("raft")).unwrap();
        std::fs::write(dir.join("raft/raft.redb"), b"stale log").unwrap();
        assert!(forget_raft_of_worker(dir).unwrap());
        assert!(!dir.join("raft").exists());
        assert!(
            !forget_raft_of_worker(dir).unwrap(),
            "nothing left the second time"
        );
    }

    use super::*;

    fn raft_holds(dir: &Path) -> Option<String> {
        std::fs::read_to_string(dir.join(RAFT).join("state")).ok()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    /// A change cut short after each of its steps, then a restart's recovery: the raft state
    /// is the old one before the commit point and the new one after, and nothing else is left.
    #[test]
    fn a_change_cut_short_anywhere_recovers_the_old_state_or_the_new_one() {
        const STEPS: usize = 5;
        for crash_after in 0..=STEPS {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            std::fs::create_dir(dir.join(RAFT)).unwrap();
            std::fs::write(dir.join(RAFT).join("state"), "old").unwrap();
            std::fs::write(dir.join("node.json"), "{}").unwrap();
            let mut aside: Option<Aside> = None;
            let mut path = PathBuf::new();
            for step in 1..=crash_after {
                match step {
                    // 1 and 2: marker, rename (what set_aside does, one step at a time).
                    1 => {
                        path = dir.join(format!("{PREFIX}test-1"));
                        write_durably(dir, MARKER, path.file_name().unwrap().as_encoded_bytes())
                            .unwrap();
                    }
                    2 => {
                        std::fs::rename(dir.join(RAFT), &path).unwrap();
                        aside = Some(Aside {
                            data_dir: dir.to_path_buf(),
                            path: path.clone(),
                        });
                    }
                    // 3: the new state, partly or wholly written.
                    3 => {
                        std::fs::create_dir(dir.join(RAFT)).unwrap();
                        std::fs::write(dir.join(RAFT).join("state"), "new").unwrap();
                    }
                    // 4: the commit point.
                    4 => std::fs::remove_file(dir.join(MARKER)).unwrap(),
                    // 5: the old state removed (commit's second half).
                    5 => {
                        let a = aside.take().unwrap();
                        std::fs::remove_dir_all(a.path()).unwrap();
                    }
                    _ => unreachable!(),
                }
            }
            let recovered = recover(dir).unwrap();
            let want = if crash_after >= 4 { "new" } else { "old" };
            assert_eq!(
                raft_holds(dir).as_deref(),
                Some(want),
                "crash after step {crash_after}: {recovered:?}"
            );
            assert_eq!(
                entries(dir),
                vec!["node.json".to_string(), RAFT.to_string()],
                "crash after step {crash_after}"
            );
            assert!(
                recover(dir).unwrap().is_empty(),
                "a second recovery has nothing to do"
            );
        }
    }

    #[test]
    fn set_aside_then_commit_leaves_only_the_new_state() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(set_aside(dir, "none").unwrap().is_none(), "no raft state");
        std::fs::create_dir(dir.join(RAFT)).unwrap();
        std::fs::write(dir.join(RAFT).join("state"), "old").unwrap();
        let a = set_aside(dir, "force-new-cluster").unwrap().unwrap();
        assert!(a
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("raft.before-force-new-cluster-"));
        assert!(!dir.join(RAFT).exists());
        std::fs::create_dir(dir.join(RAFT)).unwrap();
        std::fs::write(dir.join(RAFT).join("state"), "new").unwrap();
        a.commit().unwrap();
        assert_eq!(raft_holds(dir).as_deref(), Some("new"));
        assert_eq!(entries(dir), vec![RAFT.to_string()]);

        // A failed change rolls back at once.
        let a = set_aside(dir, "again").unwrap().unwrap();
        std::fs::create_dir(dir.join(RAFT)).unwrap();
        let done = a.roll_back().unwrap();
        assert!(
            matches!(done.as_slice(), [Recovered::RolledBack(_)]),
            "{done:?}"
        );
        assert_eq!(raft_holds(dir).as_deref(), Some("new"));
        assert_eq!(entries(dir), vec![RAFT.to_string()]);
    }
}
