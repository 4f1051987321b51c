//! The node's key-encryption key in memory, and whether the node is locked: a manager restarted
//! with autolock on has no KEK until `docker swarm unlock` gives it the unlock key.

use super::keys::{self, Kek};
use super::{Identity, NodeError};
use shoal_store::seal::Key;
use std::path::Path;

/// The KEK this node seals its keys with, or the identity it will rejoin as once unlocked.
#[derive(Default)]
pub struct Lock {
    state: parking_lot::RwLock<State>,
}

#[derive(Default)]
struct State {
    kek: Option<Key>,
    locked: Option<Identity>,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.read();
        f.debug_struct("Lock")
            .field("has_kek", &s.kek.is_some())
            .field("locked", &s.locked.is_some())
            .finish()
    }
}

impl Lock {
    /// The KEK in use, once the node is in a swarm and unlocked.
    pub fn kek(&self) -> Option<Key> {
        self.state.read().kek.clone()
    }

    /// Takes `kek` as the node's KEK and ends a locked state.
    pub fn set_kek(&self, kek: Key) {
        let mut s = self.state.write();
        s.kek = Some(kek);
        s.locked = None;
    }

    /// Forgets the KEK (the node left the swarm).
    pub fn clear(&self) {
        *self.state.write() = State::default();
    }

    /// Marks the node locked: it is `identity` in a swarm but has no key to open its keys.
    pub fn set_locked(&self, identity: Identity) {
        let mut s = self.state.write();
        s.kek = None;
        s.locked = Some(identity);
    }

    /// The identity a locked node waits to rejoin as; None when not locked.
    pub fn locked(&self) -> Option<Identity> {
        self.state.read().locked.clone()
    }

    /// True while the node waits for `docker swarm unlock`.
    pub fn is_locked(&self) -> bool {
        self.state.read().locked.is_some()
    }

    /// The KEK for a node joining or creating a swarm now: the one in use, else the data
    /// directory's (a new `kek` file on a new node).
    pub fn kek_for(&self, data_dir: &Path) -> Result<Key, NodeError> {
        if let Some(k) = self.kek() {
            return Ok(k);
        }
        match keys::kek(data_dir)? {
            Kek::Open(k) => {
                self.set_kek(k.clone());
                Ok(k)
            }
            Kek::Locked => Err(NodeError::Locked),
        }
    }
}
