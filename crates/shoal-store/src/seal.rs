//! Sealing bytes at rest: ChaCha20-Poly1305 (ring) with a random 96-bit nonce per value.
//!
//! The store seals every raft log entry and the snapshot data it writes with the manager's data
//! key, so a copy of `raft.redb` (a backup, a stolen disk) reveals no secret; the manager seals
//! the data key and the node's private key with a key-encryption key the same way. A sealed
//! value is `version (1) | nonce (12) | ciphertext | tag (16)`; the version byte is also bound
//! as associated data with the caller's `context`, so a value sealed for one purpose (a log
//! entry) does not open as another (the data key file).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Length of a key in bytes (256 bits).
pub const KEY_LEN: usize = 32;
/// The format byte every sealed value starts with.
const VERSION: u8 = 1;
/// Bytes a sealed value adds to its plain text: version, nonce and tag.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 16;

/// Why a sealed value did not open: the only failures sealing has, without the key's bytes.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SealError {
    /// Too short or of an unknown format version: not something this code sealed.
    #[error("{what}: not a sealed value (unknown format or truncated)")]
    Format {
        /// What was being opened.
        what: String,
    },
    /// The key is not the one it was sealed with, or the bytes were changed.
    #[error("{what}: the key does not open it (wrong key, or the data was altered)")]
    Refused {
        /// What was being opened.
        what: String,
    },
    /// The system's random number generator failed (no nonce, no key).
    #[error("the system random number generator failed")]
    Random,
    /// A key of the wrong length was given.
    #[error("a key must be {KEY_LEN} bytes, got {0}")]
    KeyLength(usize),
}

/// A 256-bit symmetric key; its bytes never appear in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    /// A fresh random key, for a new data key or key-encryption key.
    pub fn generate() -> Result<Key, SealError> {
        let mut b = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| SealError::Random)?;
        Ok(Key(b))
    }

    /// A key from its bytes (a key file, an unlock key); refuses any other length.
    pub fn from_bytes(b: &[u8]) -> Result<Key, SealError> {
        let arr: [u8; KEY_LEN] = b.try_into().map_err(|_| SealError::KeyLength(b.len()))?;
        Ok(Key(arr))
    }

    /// The key's bytes, for writing it sealed (or, without autolock, into its own 0600 file).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn aead(&self) -> Result<LessSafeKey, SealError> {
        // The length is fixed by the type, so ring has no reason to refuse it.
        UnboundKey::new(&CHACHA20_POLY1305, &self.0)
            .map(LessSafeKey::new)
            .map_err(|_| SealError::KeyLength(KEY_LEN))
    }

    /// Seals `plain` for `context` (a short label naming what it is), with a fresh nonce.
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .aead()?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                aad(context),
                &mut out[1 + NONCE_LEN..],
            )
            // Only a plain text over 256 GiB makes ChaCha20-Poly1305 refuse.
            .map_err(|_| SealError::Format {
                what: String::from_utf8_lossy(context).into_owned(),
            })?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens what [`Key::seal`] made with the same key and context; refuses anything else.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let what = || String::from_utf8_lossy(context).into_owned();
        if sealed.len() < OVERHEAD || sealed[0] != VERSION {
            return Err(SealError::Format { what: what() });
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        let mut buf = sealed[1 + NONCE_LEN..].to_vec();
        let plain_len = self
            .aead()?
            .open_in_place(Nonce::assume_unique_for_key(nonce), aad(context), &mut buf)
            .map_err(|_| SealError::Refused { what: what() })?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

fn aad(context: &[u8]) -> Aad<&[u8]> {
    Aad::from(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_kind_of_refusal() {
        let key = Key::generate().unwrap();
        let plain = b"SECRET-MARKER-4711 and more";
        let sealed = key.seal(b"log", plain).unwrap();
        assert_eq!(sealed.len(), plain.len() + OVERHEAD);
        assert!(
            !sealed.windows(plain.len()).any(|w| w == plain),
            "the plain text is not in the sealed bytes"
        );
        assert_eq!(key.open(b"log", &sealed).unwrap(), plain);
        // Two seals of the same text differ (fresh nonce).
        assert_ne!(key.seal(b"log", plain).unwrap(), sealed);
        // The empty value seals too.
        let empty = key.seal(b"log", b"").unwrap();
        assert_eq!(key.open(b"log", &empty).unwrap(), b"");

        let other = Key::generate().unwrap();
        assert!(matches!(
            other.open(b"log", &sealed),
            Err(SealError::Refused { .. })
        ));
        assert!(matches!(
            key.open(b"snapshot", &sealed),
            Err(SealError::Refused { .. })
        ));
        // A flipped bit anywhere (nonce, body, tag) is refused, never panics.
        for i in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(key.open(b"log", &bad), Err(SealError::Refused { .. })),
                "byte {i}"
            );
        }
        let mut bad = sealed.clone();
        bad[0] = 2;
        assert!(matches!(
            key.open(b"log", &bad),
            Err(SealError::Format { .. })
        ));
        for n in 0..OVERHEAD {
            assert!(matches!(
                key.open(b"log", &sealed[..n]),
                Err(SealError::Format { .. })
            ));
        }
        let err = other.open(b"log", &sealed).unwrap_err().to_string();
        assert!(err.contains("wrong key"), "{err}");
    }

    #[test]
    fn keys_have_one_length_and_never_print_their_bytes() {
        let key = Key::from_bytes(&[7u8; KEY_LEN]).unwrap();
        assert_eq!(key.as_bytes(), &[7u8; KEY_LEN]);
        assert_eq!(Key::from_bytes(&[1u8; 31]), Err(SealError::KeyLength(31)));
        assert_eq!(Key::from_bytes(&[]), Err(SealError::KeyLength(0)));
        assert_eq!(format!("{key:?}"), "Key(<redacted>)");
    }
}
