//! The cluster's trust: its certificate authority, and join tokens in Swarm's format, which carry
//! the CA's digest so a joining node can check the manager before it sends anything.

use rand::Rng;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a PKI step failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Generating or parsing key material failed.
    #[error("{what}: {source}")]
    Crypto {
        /// The step.
        what: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// Reading or writing CA files failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The step.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A token is not in Swarm's format.
    #[error("invalid join token")]
    InvalidToken,
}

/// The cluster's root CA: a self-signed ECDSA P-256 certificate and its key.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.debug_struct("ClusterCa")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

const CERT_FILE: &str = "ca.crt";
const KEY_FILE: &str = "ca.key";

impl ClusterCa {
    /// A new root CA, valid for 20 years as Swarm's is.
    pub fn generate() -> Result<ClusterCa, PkiError> {
        let key = rcgen::KeyPair::generate().map_err(|source| PkiError::Crypto {
            what: "generating the CA key",
            source,
        })?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|source| {
            PkiError::Crypto {
                what: "CA parameters",
                source,
            }
        })?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "swarm-ca");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(3600)).into();
        params.not_after = (now + std::time::Duration::from_secs(20 * 365 * 24 * 3600)).into();
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Crypto {
                what: "self-signing the CA",
                source,
            })?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The root certificate, PEM: what every node trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the root certificate's PEM bytes: the digest join tokens carry.
    pub fn digest(&self) -> [u8; 32] {
        digest_of(&self.cert_pem)
    }

    /// Saves the certificate and (mode 0600) the key in `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            op: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
        write(&dir.join(CERT_FILE), self.cert_pem.as_bytes(), 0o644)?;
        write(&dir.join(KEY_FILE), self.key_pem.as_bytes(), 0o600)
    }

    /// Loads what [`ClusterCa::save`] wrote, checking the key parses.
    pub fn load(dir: &Path) -> Result<ClusterCa, PkiError> {
        let read = |f: &str| {
            let path = dir.join(f);
            std::fs::read_to_string(&path).map_err(|source| PkiError::Io {
                op: "reading",
                path,
                source,
            })
        };
        let cert_pem = read(CERT_FILE)?;
        let key_pem = read(KEY_FILE)?;
        rcgen::KeyPair::from_pem(&key_pem).map_err(|source| PkiError::Crypto {
            what: "parsing the CA key",
            source,
        })?;
        Ok(ClusterCa { cert_pem, key_pem })
    }
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |op: &'static str| {
        move |source| PkiError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io("writing"))?;
    f.write_all(data).map_err(io("writing"))?;
    f.sync_all().map_err(io("syncing"))
}

/// SHA-256 of a PEM bundle, as Swarm computes the CA digest of a token.
pub fn digest_of(pem: &str) -> [u8; 32] {
    Sha256::digest(pem.as_bytes()).into()
}

/// A join token: `SWMTKN-1-<CA digest, base 36, 50 chars>-<secret, base 36, 25 chars>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Digest of the CA the joining node must find.
    pub ca_digest: [u8; 32],
    /// What the manager checks; worker and manager tokens differ here.
    pub secret: [u8; 16],
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

impl JoinToken {
    /// A new token for a CA with this digest.
    pub fn generate(ca_digest: [u8; 32]) -> JoinToken {
        JoinToken {
            ca_digest,
            secret: rand::rng().random(),
        }
    }

    /// Parses a token, requiring Swarm's exact shape.
    pub fn parse(s: &str) -> Result<JoinToken, PkiError> {
        let parts: Vec<&str> = s.trim().split('-').collect();
        if parts.len() != 4
            || parts[0] != "SWMTKN"
            || parts[1] != "1"
            || parts[2].len() != 50
            || parts[3].len() != 25
        {
            return Err(PkiError::InvalidToken);
        }
        let ca_digest = from_base36::<32>(parts[2]).ok_or(PkiError::InvalidToken)?;
        let secret = from_base36::<16>(parts[3]).ok_or(PkiError::InvalidToken)?;
        Ok(JoinToken { ca_digest, secret })
    }

    /// True if the token was made for the CA whose PEM this is.
    pub fn matches_ca(&self, ca_pem: &str) -> bool {
        self.ca_digest == digest_of(ca_pem)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SWMTKN-1-{}-{}",
            to_base36(&self.ca_digest, 50),
            to_base36(&self.secret, 25)
        )
    }
}

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Base 36 of a big-endian number, left-padded with zeros to `width`.
fn to_base36(bytes: &[u8], width: usize) -> String {
    let mut num = bytes.to_vec();
    let mut digits = Vec::new();
    while num.iter().any(|b| *b != 0) {
        let mut rem = 0u32;
        for b in num.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        digits.push(ALPHABET[rem as usize] as char);
    }
    while digits.len() < width {
        digits.push('0');
    }
    digits.iter().rev().collect()
}

/// The big-endian number a base-36 string spells, if it fits in `N` bytes.
fn from_base36<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    for c in s.chars() {
        let d = ALPHABET
            .iter()
            .position(|a| *a as char == c.to_ascii_lowercase())? as u32;
        let mut carry = d;
        for b in out.iter_mut().rev() {
            let cur = u32::from(*b) * 36 + carry;
            *b = (cur & 0xff) as u8;
            carry = cur >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_carry_the_ca_digest() {
        let ca = ClusterCa::generate().unwrap();
        let t = JoinToken::generate(ca.digest());
        let s = t.to_string();
        assert!(s.starts_with("SWMTKN-1-"));
        let back = JoinToken::parse(&s).unwrap();
        assert_eq!(back, t);
        assert!(back.matches_ca(ca.cert_pem()));
        let other = ClusterCa::generate().unwrap();
        assert!(
            !back.matches_ca(other.cert_pem()),
            "a token must not match another CA"
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = JoinToken::generate([7; 32]).to_string();
        for bad in [
            "".to_string(),
            "SWMTKN-2-".to_string() + &good[9..],
            good.replacen("SWMTKN", "SWMTKM", 1),
            good[..good.len() - 1].to_string(),
            format!("{good}-x"),
            good.replace(&good[9..10], "!"),
            // 50 base-36 digits can exceed 256 bits: zzzz... does not fit.
            format!("SWMTKN-1-{}-{}", "z".repeat(50), "0".repeat(25)),
        ] {
            assert!(JoinToken::parse(&bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn base36_matches_known_values() {
        assert_eq!(to_base36(&[0, 35], 3), "00z");
        assert_eq!(to_base36(&[1, 0], 0), "74");
        assert_eq!(from_base36::<2>("74"), Some([1, 0]));
    }

    #[test]
    fn ca_saves_and_loads_with_a_private_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shoal-pki-test-{}", std::process::id()));
        let ca = ClusterCa::generate().unwrap();
        ca.save(&dir).unwrap();
        let mode = std::fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let back = ClusterCa::load(&dir).unwrap();
        assert_eq!(back.digest(), ca.digest());
        assert!(!format!("{back:?}").contains("PRIVATE KEY"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
