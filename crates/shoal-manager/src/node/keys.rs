//! The node's keys at rest, in `<data-dir>/keys/`: nothing in the data directory holds a
//! private key or a secret in the clear.
//!
//! - `node.sealed`: the node's private key (PEM) and, on a manager, the data key that seals the
//!   raft store, sealed together in one file (so they change atomically) with the
//!   key-encryption key (KEK).
//! - `kek`: the KEK itself, 32 random bytes, when autolock is off. This protects a copied
//!   `raft.redb` or a backup of it, not someone holding the whole directory.
//! - With autolock on there is no `kek` file: the KEK is the swarm's unlock key, which the
//!   operator keeps, and the node starts locked ([`super::lock`]).
//!
//! Every file is written crash-safe: a temporary file (0600), fsync, rename, fsync the
//! directory. Data directories from before sealing (a plain `certs/swarm-node.key`) are
//! migrated when the key is first read: sealed, then the plain file removed.

use base64::Engine;
use shoal_pki::NodeCert;
use shoal_store::seal::{Key, SealError};
use std::path::{Path, PathBuf};

/// The folder inside the data directory that holds the sealed keys.
pub const KEYS_DIR: &str = "keys";
const KEK_FILE: &str = "kek";
const SEALED_FILE: &str = "node.sealed";
/// What the sealed file is sealed as (bound into the seal).
const CTX: &[u8] = b"shoal node keys";

/// Why the node's keys could not be read or written, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file could not be read, written, renamed or removed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The step.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The key does not open the sealed file, or sealing failed.
    #[error("{}: {source}", path.display())]
    Seal {
        /// The sealed file.
        path: PathBuf,
        /// What sealing said.
        source: SealError,
    },
    /// A key file or the sealed file's content is not what this code writes.
    #[error("{}: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The node has a certificate but its private key is nowhere.
    #[error("no node key in {} (sealed) nor in {} (from before sealing); `docker swarm leave --force` resets the node", sealed.display(), legacy.display())]
    NoNodeKey {
        /// Where the sealed key should be.
        sealed: PathBuf,
        /// Where a key from before sealing would be.
        legacy: PathBuf,
    },
}

/// The key-encryption key of a data directory, as found on start.
#[derive(Debug)]
pub enum Kek {
    /// The `kek` file, which opens the sealed keys (created when there was none to open).
    Open(Key),
    /// No `kek` file (autolock), or one that no longer opens the sealed keys (a crash while
    /// autolock was switched on): only the unlock key opens them.
    Locked,
}

/// The sealed file's content; never printed.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Sealed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node_key_pem: Option<String>,
    /// The key before the last certificate save, kept until the new certificate is in place: a
    /// crash between sealing the new key and writing the certificate leaves the old pair usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_node_key_pem: Option<String>,
}

fn dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join(KEYS_DIR)
}

fn kek_path(data_dir: &Path) -> PathBuf {
    dir_of(data_dir).join(KEK_FILE)
}

fn sealed_path(data_dir: &Path) -> PathBuf {
    dir_of(data_dir).join(SEALED_FILE)
}

/// Writes `bytes` to `path` crash-safe and root-only ([`super::datadir::write_durably`]).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    super::datadir::write_durably(path, bytes).map_err(|source| KeyError::Io {
        what: "writing",
        path: path.to_path_buf(),
        source,
    })
}

fn remove_file(path: &Path) -> Result<(), KeyError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(KeyError::Io {
                what: "removing",
                path: path.to_path_buf(),
                source,
            })
        }
    }
    if let Some(dir) = path.parent() {
        super::datadir::sync_dir(dir).map_err(|source| KeyError::Io {
            what: "syncing",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// The data directory's KEK: the `kek` file if it opens the sealed keys; a new one when there
/// is neither (a new node, or a data directory from before sealing); else [`Kek::Locked`].
pub fn kek(data_dir: &Path) -> Result<Kek, KeyError> {
    let path = kek_path(data_dir);
    let sealed_exists = sealed_path(data_dir).exists();
    match std::fs::read(&path) {
        Ok(bytes) => {
            let key = Key::from_bytes(&bytes).map_err(|e| KeyError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if sealed_exists && !opens(data_dir, &key) {
                tracing::warn!(
                    path = %path.display(),
                    "the key-encryption key file does not open the sealed keys (autolock was being switched on); the unlock key is needed"
                );
                return Ok(Kek::Locked);
            }
            Ok(Kek::Open(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if sealed_exists {
                return Ok(Kek::Locked);
            }
            Ok(Kek::Open(new_file_kek(data_dir)?))
        }
        Err(source) => Err(KeyError::Io {
            what: "reading",
            path,
            source,
        }),
    }
}

/// A fresh random KEK, written to its own 0600 file (no autolock).
pub fn new_file_kek(data_dir: &Path) -> Result<Key, KeyError> {
    let key = Key::generate().map_err(|source| KeyError::Seal {
        path: kek_path(data_dir),
        source,
    })?;
    write_file(&kek_path(data_dir), key.as_bytes())?;
    Ok(key)
}

fn read_sealed(data_dir: &Path, kek: &Key) -> Result<Sealed, KeyError> {
    let path = sealed_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Sealed::default()),
        Err(source) => {
            return Err(KeyError::Io {
                what: "reading",
                path,
                source,
            })
        }
    };
    let plain = kek.open(CTX, &bytes).map_err(|source| KeyError::Seal {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&plain).map_err(|e| KeyError::Corrupt {
        path,
        message: format!("sealed keys do not decode: {e}"),
    })
}

fn write_sealed(data_dir: &Path, kek: &Key, sealed: &Sealed) -> Result<(), KeyError> {
    let path = sealed_path(data_dir);
    let plain = serde_json::to_vec(sealed).map_err(|e| KeyError::Corrupt {
        path: path.clone(),
        message: format!("sealed keys do not encode: {e}"),
    })?;
    let bytes = kek.seal(CTX, &plain).map_err(|source| KeyError::Seal {
        path: path.clone(),
        source,
    })?;
    write_file(&path, &bytes)
}

/// True when `kek` opens the sealed keys (or there are none yet): the check of an unlock key.
pub fn opens(data_dir: &Path, kek: &Key) -> bool {
    read_sealed(data_dir, kek).is_ok()
}

/// The manager's data key for its raft store; made (and sealed) on first use.
pub fn data_key(data_dir: &Path, kek: &Key) -> Result<Key, KeyError> {
    let path = sealed_path(data_dir);
    let mut sealed = read_sealed(data_dir, kek)?;
    if let Some(b64) = &sealed.data_key {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| KeyError::Corrupt {
                path: path.clone(),
                message: format!("data key: {e}"),
            })?;
        return Key::from_bytes(&bytes).map_err(|e| KeyError::Corrupt {
            path,
            message: format!("data key: {e}"),
        });
    }
    let key = Key::generate().map_err(|source| KeyError::Seal {
        path: path.clone(),
        source,
    })?;
    sealed.data_key = Some(base64::engine::general_purpose::STANDARD.encode(key.as_bytes()));
    write_sealed(data_dir, kek, &sealed)?;
    Ok(key)
}

/// Saves the node's certificate: the private key sealed, the certificate and CA in `certs`.
pub fn save_cert(data_dir: &Path, kek: &Key, cert: &NodeCert) -> Result<(), KeyError> {
    let certs = super::certs_dir(data_dir);
    let mut sealed = read_sealed(data_dir, kek)?;
    let new_key = cert.key_pem().to_string();
    if sealed.node_key_pem.as_deref() != Some(new_key.as_str()) {
        sealed.previous_node_key_pem = sealed.node_key_pem.replace(new_key);
        write_sealed(data_dir, kek, &sealed)?;
    }
    cert.save_public(&certs).map_err(|e| KeyError::Corrupt {
        path: certs.clone(),
        message: format!("saving the node certificate: {e}"),
    })?;
    if sealed.previous_node_key_pem.take().is_some() {
        write_sealed(data_dir, kek, &sealed)?;
    }
    remove_file(&NodeCert::legacy_key_path(&certs))
}

/// Loads the node's certificate with its sealed key. A plain key left by a version from before
/// sealing is sealed now and its file removed.
pub fn load_cert(data_dir: &Path, kek: &Key) -> Result<NodeCert, KeyError> {
    let certs = super::certs_dir(data_dir);
    remove_plain_ca(data_dir)?;
    let mut sealed = read_sealed(data_dir, kek)?;
    let legacy = NodeCert::legacy_key_path(&certs);
    let key_pem = match sealed.node_key_pem.clone() {
        Some(k) => k,
        None => {
            let plain = std::fs::read_to_string(&legacy).map_err(|_| KeyError::NoNodeKey {
                sealed: sealed_path(data_dir),
                legacy: legacy.clone(),
            })?;
            sealed.node_key_pem = Some(plain.clone());
            write_sealed(data_dir, kek, &sealed)?;
            remove_file(&legacy)?;
            tracing::warn!(
                path = %legacy.display(),
                "sealed a node key kept in plain text by an earlier version, and removed the plain file"
            );
            plain
        }
    };
    let loaded = match (
        NodeCert::load_with_key(&certs, key_pem),
        sealed.previous_node_key_pem,
    ) {
        // A crash after sealing a new key but before its certificate was in place.
        (Err(shoal_pki::PkiError::KeyMismatch { .. }), Some(previous)) => {
            NodeCert::load_with_key(&certs, previous)
        }
        (r, _) => r,
    };
    loaded.map_err(|e| KeyError::Corrupt {
        path: certs,
        message: format!("loading the node certificate: {e}"),
    })
}

/// Removes the `ca` folder (certificate and plain private key) that versions before sealing
/// wrote at `swarm init`: the CA lives in the raft store, sealed with the data key.
fn remove_plain_ca(data_dir: &Path) -> Result<(), KeyError> {
    let ca = data_dir.join("ca");
    if !ca.exists() {
        return Ok(());
    }
    std::fs::remove_dir_all(&ca).map_err(|source| KeyError::Io {
        what: "removing",
        path: ca.clone(),
        source,
    })?;
    tracing::warn!(path = %ca.display(), "removed the CA key an earlier version kept in plain text (the CA is in the sealed raft store)");
    Ok(())
}

/// Seals the node's keys with `new` instead of `old`. With `autolock` the `kek` file is removed
/// once the keys are sealed with the unlock key; without, the new KEK's file is written before
/// the keys are sealed with it. A crash in between leaves a `kek` file that does not open the
/// keys, which [`kek`] reports as locked: the unlock key (old or new) still opens them.
pub fn reseal(data_dir: &Path, old: &Key, new: &Key, autolock: bool) -> Result<(), KeyError> {
    let sealed = read_sealed(data_dir, old)?;
    if !autolock {
        write_file(&kek_path(data_dir), new.as_bytes())?;
    }
    write_sealed(data_dir, new, &sealed)?;
    if autolock {
        remove_file(&kek_path(data_dir))?;
    }
    Ok(())
}

/// True while the `kek` file exists, i.e. the keys are not sealed with an unlock key.
pub fn has_kek_file(data_dir: &Path) -> bool {
    kek_path(data_dir).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::Role;
    use shoal_pki::{ClusterCa, NodeIdentity, NodeKey};

    fn cert() -> NodeCert {
        let ca = ClusterCa::generate().unwrap();
        let key = NodeKey::generate().unwrap();
        let ident = NodeIdentity {
            node_id: "n0de".into(),
            role: Role::Manager,
            cluster_id: "c1".into(),
        };
        let pem = ca
            .issue(key.csr_pem(), &ident, std::time::Duration::from_secs(3600))
            .unwrap();
        key.into_node_cert(pem, ca.cert_pem().into()).unwrap()
    }

    fn grep(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
        let mut hits = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(p) = pending.pop() {
            if p.is_dir() {
                pending.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                hits.push(p);
            }
        }
        hits
    }

    #[test]
    fn keys_are_sealed_and_survive_a_restart_and_autolock() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let Kek::Open(kek1) = kek(dir).unwrap() else {
            panic!("a new node gets a KEK file")
        };
        let c = cert();
        save_cert(dir, &kek1, &c).unwrap();
        let dek = data_key(dir, &kek1).unwrap();
        assert_eq!(grep(dir, b"PRIVATE KEY"), Vec::<PathBuf>::new());
        assert_eq!(grep(dir, dek.as_bytes()), Vec::<PathBuf>::new());

        // A restart finds the same KEK, key and data key.
        let Kek::Open(again) = kek(dir).unwrap() else {
            panic!("unlocked")
        };
        assert_eq!(again, kek1);
        assert_eq!(load_cert(dir, &again).unwrap().key_pem(), c.key_pem());
        assert_eq!(data_key(dir, &again).unwrap(), dek);

        // Autolock: sealed with the unlock key, no KEK file, locked on restart.
        let unlock = Key::generate().unwrap();
        reseal(dir, &kek1, &unlock, true).unwrap();
        assert!(!has_kek_file(dir));
        assert!(matches!(kek(dir).unwrap(), Kek::Locked));
        assert!(!opens(dir, &kek1), "the old KEK no longer opens them");
        assert!(opens(dir, &unlock));
        assert!(matches!(
            load_cert(dir, &Key::generate().unwrap()),
            Err(KeyError::Seal { .. })
        ));
        assert_eq!(data_key(dir, &unlock).unwrap(), dek, "the data key stays");

        // Autolock off again: a new KEK file that opens them.
        let kek2 = Key::generate().unwrap();
        reseal(dir, &unlock, &kek2, false).unwrap();
        let Kek::Open(found) = kek(dir).unwrap() else {
            panic!("unlocked")
        };
        assert_eq!(found, kek2);
        assert_eq!(load_cert(dir, &kek2).unwrap().key_pem(), c.key_pem());
    }

    #[test]
    fn a_crash_between_sealing_a_new_key_and_saving_its_certificate_keeps_the_old_pair() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let Kek::Open(k) = kek(dir).unwrap() else {
            panic!()
        };
        let (old, new) = (cert(), cert());
        save_cert(dir, &k, &old).unwrap();
        // What the first step of a renewal's save leaves: the new key sealed, the old
        // certificate still in place.
        let mut sealed = read_sealed(dir, &k).unwrap();
        sealed.previous_node_key_pem = sealed.node_key_pem.replace(new.key_pem().to_string());
        write_sealed(dir, &k, &sealed).unwrap();
        let got = load_cert(dir, &k).unwrap();
        assert_eq!(got.cert_pem(), old.cert_pem());
        // A completed save loads the new pair and forgets the old key.
        save_cert(dir, &k, &new).unwrap();
        assert_eq!(load_cert(dir, &k).unwrap().cert_pem(), new.cert_pem());
        assert!(read_sealed(dir, &k)
            .unwrap()
            .previous_node_key_pem
            .is_none());
    }

    #[test]
    fn a_kek_file_left_by_a_crash_mid_autolock_means_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let Kek::Open(k) = kek(dir).unwrap() else {
            panic!()
        };
        data_key(dir, &k).unwrap();
        let unlock = Key::generate().unwrap();
        // The keys were sealed with the unlock key, the KEK file not yet removed.
        let sealed = read_sealed(dir, &k).unwrap();
        write_sealed(dir, &unlock, &sealed).unwrap();
        assert!(has_kek_file(dir));
        assert!(matches!(kek(dir).unwrap(), Kek::Locked));
    }

    #[test]
    fn a_plain_key_from_before_sealing_is_sealed_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let c = cert();
        let certs = super::super::certs_dir(dir);
        c.save_public(&certs).unwrap();
        std::fs::write(NodeCert::legacy_key_path(&certs), c.key_pem()).unwrap();
        std::fs::create_dir_all(dir.join("ca")).unwrap();
        std::fs::write(dir.join("ca/ca.key"), "-----BEGIN PRIVATE KEY-----").unwrap();
        let Kek::Open(k) = kek(dir).unwrap() else {
            panic!()
        };
        assert_eq!(load_cert(dir, &k).unwrap().key_pem(), c.key_pem());
        assert!(!NodeCert::legacy_key_path(&certs).exists());
        assert_eq!(grep(dir, b"PRIVATE KEY"), Vec::<PathBuf>::new());
        assert_eq!(load_cert(dir, &k).unwrap().key_pem(), c.key_pem());
    }
}
