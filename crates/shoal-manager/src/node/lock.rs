//! The node's key-encryption key in memory, and whether the node is locked: a manager restarted
//! with autolock on has no KEK until `docker swarm unlock` gives it the unlock key.

use super::keys::{self, Kek};
use super::{Identity, NodeError};
use crate::db::{self, Stored, UnlockKey};
use shoal_api::models::Swarm;
use shoal_store::seal::Key;
use shoal_store::Store;
use std::path::Path;

/// The KEK this node seals its keys with, or the identity it will rejoin as once unlocked.
#[derive(Default)]
pub struct Lock {
    state: parking_lot::RwLock<State>,
    /// One re-sealing at a time (the watcher and an API call may both start one).
    resealing: parking_lot::Mutex<()>,
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

/// `docker swarm unlock`: checks the key against the sealed keys, then starts the node as a
/// restart would have. Refused, in Swarm's words, when the node is not locked, the text is not
/// a key (400) or the key does not open the node's keys (401); nothing changes then.
pub async fn unlock(d: &crate::api::AppState, text: &str) -> Result<(), NodeError> {
    let _one = d.lifecycle.lock().await;
    let Some(identity) = d.lock.locked() else {
        if d.manager.read().await.is_some() {
            return Err(NodeError::NotLocked);
        }
        if d.node.read().await.is_some() {
            return Err(NodeError::Store(shoal_api::ApiError::not_a_manager()));
        }
        return Err(NodeError::NotInSwarm);
    };
    let key = parse_human_key(text).ok_or(NodeError::InvalidKeyString)?;
    if !keys::opens(&d.data_dir, &key) {
        return Err(NodeError::InvalidUnlockKey);
    }
    let cert = keys::load_cert(&d.data_dir, &key)?;
    d.lock.set_kek(key);
    let bootstrap = identity.raft_id == 1;
    if let Err(e) = super::start_node(d, identity.clone(), &cert, None, bootstrap).await {
        d.lock.set_locked(identity);
        return Err(e);
    }
    tracing::info!(node = %identity.node_id, "unlocked; the manager is starting");
    Ok(())
}

/// The prefix of Swarm's human-readable unlock keys.
const HUMAN_PREFIX: &str = "SWMKEY-1-";

/// A key as Swarm prints an unlock key: `SWMKEY-1-` and the unpadded standard base64 of the
/// key's 32 bytes.
pub fn human_key(key: &Key) -> String {
    use base64::Engine;
    format!(
        "{HUMAN_PREFIX}{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(key.as_bytes())
    )
}

/// Reads an unlock key as `docker swarm unlock` sends it; None when it is not one (Swarm then
/// answers "invalid key string").
pub fn parse_human_key(text: &str) -> Option<Key> {
    use base64::Engine;
    let b64 = text.trim().strip_prefix(HUMAN_PREFIX)?;
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(b64)
        .ok()?;
    Key::from_bytes(&bytes).ok()
}

/// What the swarm asks of this manager's keys: sealed with the unlock key (autolock on), or
/// with a KEK file of its own (off).
fn wanted(store: &Store) -> Option<Key> {
    let autolock = db::list::<Swarm>(store)
        .into_iter()
        .next()
        .and_then(|c| c.obj.spec?.encryption_config?.auto_lock_managers)
        .unwrap_or(false);
    if !autolock {
        return None;
    }
    db::get::<UnlockKey>(store, UnlockKey::ID)
        .and_then(|u| u.obj.key)
        .and_then(|k| parse_human_key(&k))
}

/// Brings this manager's sealed keys in line with the swarm's autolock setting: re-sealed with
/// the unlock key (and the KEK file removed) when autolock is on or its key rotated, with a new
/// KEK file when it was switched off. Run on every change of the setting, and at once by the
/// API call that changed it.
pub fn reconcile(data_dir: &Path, lock: &Lock, store: &Store) -> Result<(), NodeError> {
    let _one = lock.resealing.lock();
    let Some(current) = lock.kek() else {
        return Ok(());
    };
    match wanted(store) {
        Some(unlock) => {
            if unlock != current || keys::has_kek_file(data_dir) {
                keys::reseal(data_dir, &current, &unlock, true)?;
                lock.set_kek(unlock);
                tracing::info!("autolock: this manager's keys are sealed with the unlock key");
            }
        }
        None => {
            if !keys::has_kek_file(data_dir) {
                let new = Key::generate().map_err(|source| keys::KeyError::Seal {
                    path: data_dir.join(keys::KEYS_DIR),
                    source,
                })?;
                keys::reseal(data_dir, &current, &new, false)?;
                lock.set_kek(new);
                tracing::info!("autolock off: this manager's keys are sealed with a key file");
            }
        }
    }
    Ok(())
}

/// Starts [`follow`] for manager `m` of daemon `d`.
pub fn spawn_follow(d: &crate::api::AppState, m: &crate::cluster::Manager) {
    tokio::spawn(follow(
        std::sync::Arc::downgrade(d),
        m.store.clone(),
        m.stopping(),
    ));
}

/// Follows the swarm's autolock setting while the manager runs (see [`reconcile`]).
pub async fn follow(
    d: std::sync::Weak<crate::api::Daemon>,
    store: Store,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut changes = store.watch();
    let mut check = true;
    loop {
        if check {
            let Some(d) = d.upgrade() else { return };
            if let Err(e) = reconcile(&d.data_dir, &d.lock, &store) {
                tracing::error!(error = %e, "re-sealing this manager's keys for the autolock setting");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            change = changes.recv() => {
                check = match change {
                    Ok(cs) => cs
                        .changes
                        .iter()
                        .any(|c| c.kind == UnlockKey::KIND || c.kind == Swarm::KIND),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlock_keys_read_and_print_as_swarm_does() {
        let key = Key::from_bytes(&[0xfb; 32]).unwrap();
        let text = human_key(&key);
        assert!(text.starts_with("SWMKEY-1-"), "{text}");
        assert!(
            !text.ends_with('='),
            "unpadded, as swarmkit prints it: {text}"
        );
        assert_eq!(text.len(), "SWMKEY-1-".len() + 43);
        assert_eq!(parse_human_key(&text), Some(key.clone()));
        assert_eq!(parse_human_key(&format!("{text}\n")), Some(key));
        for bad in [
            "",
            "SWMKEY-1-",
            "SWMKEY-2-AAAA",
            &text[9..],
            &text[..text.len() - 1],
            "SWMKEY-1-!!!!",
        ] {
            assert_eq!(parse_human_key(bad), None, "{bad:?}");
        }
    }
}
