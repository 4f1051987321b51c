//! The cluster's trust: its certificate authority, node certificates and the rustls configs for
//! mutual TLS between nodes, and join tokens in Swarm's format, which carry the CA's digest so a
//! joining node can check the manager before it sends anything.

use rand::Rng;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

mod api;
#[cfg(test)]
mod api_tests;
mod node;
mod peer;
mod tls;
#[cfg(test)]
mod tls_tests;

pub use api::{
    api_client_config, api_client_of_der, api_client_of_pem, api_server_config, check_client_name,
    dashboard_server_config, fingerprint_hex, ApiClient, ApiServerCert, ClientKey,
    IssuedClientCert, Revocations, API_CLIENT_OU, API_SERVER_OU, MAX_CLIENT_NAME,
};
pub use node::{identity_of_der, role_of_ou, role_ou, NodeCert, NodeIdentity, NodeKey, Role};
pub use peer::{peer_client_config, peer_server_config};
/// Re-exported so callers build connectors and acceptors against the exact rustls we configure.
pub use rustls;
pub use tls::{
    bootstrap_client_config, client_config, manager_server_name, pinned_ca_pem, server_config,
    MANAGER_SERVER_NAME,
};

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
    /// PEM text held no usable item of the kind expected, so nothing can be built from it.
    #[error("{what}: {reason}")]
    BadPem {
        /// What was being read.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A certificate did not parse or lacks what a cluster certificate must carry.
    #[error("{what}: {reason}")]
    BadCertificate {
        /// Which certificate.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A certificate signing request was refused, so no certificate is issued for it.
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
    /// A node identity cannot be written into (or was not found in) a certificate.
    #[error("invalid node identity: {0}")]
    InvalidIdentity(String),
    /// The certificate offered as the CA cannot sign certificates.
    #[error("the CA certificate is not a CA certificate")]
    NotACa,
    /// A private key does not belong to the certificate it was paired with.
    #[error("the private key does not match the {what} certificate")]
    KeyMismatch {
        /// Which certificate.
        what: &'static str,
    },
    /// A certificate was not signed by the cluster CA it is supposed to chain to.
    #[error("the certificate was not issued by the cluster CA")]
    WrongCa,
    /// A certificate is past its notAfter, so no peer will accept it.
    #[error("the certificate expired at {} (unix seconds)", unix_secs(*not_after))]
    Expired {
        /// When it expired.
        not_after: SystemTime,
    },
    /// A certificate's notBefore is still ahead, usually a clock problem on one side.
    #[error("the certificate is not valid before {} (unix seconds)", unix_secs(*not_before))]
    NotYetValid {
        /// When it becomes valid.
        not_before: SystemTime,
    },
    /// The server's chain held no certificate with the join token's CA digest: not our cluster.
    #[error("no certificate in the server's chain has the join token's CA digest")]
    CaDigestMismatch,
    /// rustls refused to build a config from our material.
    #[error("{what}: {source}")]
    Tls {
        /// The step.
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused to build a certificate verifier from our trust anchors.
    #[error("{what}: {source}")]
    Verifier {
        /// The step.
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
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

/// How far back a node certificate's notBefore is set, as Swarm does, so that a peer whose clock
/// is a little behind still accepts a certificate issued a moment ago.
pub(crate) const CERT_BACKDATE: Duration = Duration::from_secs(3600);

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
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(20 * 365 * 24 * 3600)).into();
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

    /// Certificate and key PEM, so every manager can hold the CA through the replicated store.
    pub fn to_pem_pair(&self) -> (String, String) {
        (self.cert_pem.clone(), self.key_pem.clone())
    }

    /// Rebuilds a CA from [`ClusterCa::to_pem_pair`], refusing a non-CA certificate or a key that
    /// is not its own. The certificate is re-encoded canonically (64-column base64, LF) so that
    /// [`ClusterCa::digest`] equals what a joining node computes from the DER it sees on the wire.
    pub fn from_pem_pair(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, PkiError> {
        let der = first_cert_der(cert_pem, "CA certificate")?;
        let cert = parse_cert(&der, "CA certificate")?;
        if !cert.is_ca() {
            return Err(PkiError::NotACa);
        }
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(|source| PkiError::Crypto {
            what: "parsing the CA key",
            source,
        })?;
        if rcgen::PublicKeyData::subject_public_key_info(&key) != cert.public_key().raw {
            return Err(PkiError::KeyMismatch {
                what: "CA certificate",
            });
        }
        Ok(ClusterCa {
            cert_pem: pem_of_der(&der),
            key_pem: key_pem.to_string(),
        })
    }

    /// Signs a node certificate for the public key in `csr_pem`, valid from now for `validity`
    /// (capped at the CA's own expiry). The CSR must be self-signed by an ECDSA P-256 key; its
    /// subject and extensions are ignored, since only the CA decides who a node is.
    pub fn issue(
        &self,
        csr_pem: &str,
        id: &NodeIdentity,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let now = SystemTime::now();
        self.issue_between(csr_pem, id, now - CERT_BACKDATE, now + validity)
    }

    /// [`ClusterCa::issue`] with an explicit validity window, so tests can mint expired
    /// certificates.
    pub(crate) fn issue_between(
        &self,
        csr_pem: &str,
        id: &NodeIdentity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, PkiError> {
        id.validate()?;
        let public_key = csr_public_key(csr_pem)?;
        let role = role_ou(id.role);
        let mut params = rcgen::CertificateParams::new(vec![role.to_string(), id.node_id.clone()])
            .map_err(|source| PkiError::Crypto {
                what: "node certificate parameters",
                source,
            })?;
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, id.cluster_id.as_str());
        dn.push(rcgen::DnType::OrganizationalUnitName, role);
        dn.push(rcgen::DnType::CommonName, id.node_id.as_str());
        params.distinguished_name = dn;
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = self.sign(
            &public_key,
            params,
            not_before,
            not_after,
            "signing the node certificate",
        )?;
        Ok(cert.pem())
    }

    /// Signs a leaf certificate for `public_key` from `params` (subject, SANs and extended key
    /// usages already set): not a CA, a random serial, valid in the window given but never past
    /// the CA itself. Every certificate the cluster CA issues goes through here.
    pub(crate) fn sign(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        mut params: rcgen::CertificateParams,
        not_before: SystemTime,
        not_after: SystemTime,
        what: &'static str,
    ) -> Result<rcgen::Certificate, PkiError> {
        let ca_der = first_cert_der(&self.cert_pem, "CA certificate")?;
        let ca_not_after = cert_not_after(&parse_cert(&ca_der, "CA certificate")?);
        let key = rcgen::KeyPair::from_pem(&self.key_pem).map_err(|source| PkiError::Crypto {
            what: "parsing the CA key",
            source,
        })?;
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&ca_der, key).map_err(|source| PkiError::Crypto {
                what: "loading the CA as issuer",
                source,
            })?;
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        // Random, so a renewed certificate never repeats a serial; 20 bytes with the top bit
        // clear keeps it a positive integer within RFC 5280's limit.
        let mut serial: [u8; 20] = rand::rng().random();
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        params.not_before = not_before.into();
        params.not_after = not_after.min(ca_not_after).into();
        params
            .signed_by(public_key, &issuer)
            .map_err(|source| PkiError::Crypto { what, source })
    }
}

/// The public key of a CSR, once its self-signature checks out and the key is ECDSA P-256.
pub(crate) fn csr_public_key(csr_pem: &str) -> Result<rcgen::SubjectPublicKeyInfo, PkiError> {
    use x509_parser::prelude::FromDer;
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| PkiError::BadCsr(format!("no PEM certificate request: {e}")))?;
    let (rest, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| PkiError::BadCsr(format!("unparsable: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::BadCsr("trailing bytes after the request".into()));
    }
    csr.verify_signature()
        .map_err(|e| PkiError::BadCsr(format!("bad self-signature: {e}")))?;
    let spki = &csr.certification_request_info.subject_pki;
    let is_p256 = spki.algorithm.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|oid| oid == x509_parser::oid_registry::OID_EC_P256);
    if !is_p256 {
        return Err(PkiError::BadCsr("the key is not ECDSA P-256".into()));
    }
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| PkiError::BadCsr(format!("unusable public key: {e}")))
}

/// The first certificate of a PEM bundle, DER.
pub(crate) fn first_cert_der(
    pem: &str,
    what: &'static str,
) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::BadPem {
        what,
        reason: e.to_string(),
    })
}

/// A parsed X.509 certificate, refusing trailing garbage.
pub(crate) fn parse_cert<'a>(
    der: &'a [u8],
    what: &'static str,
) -> Result<x509_parser::certificate::X509Certificate<'a>, PkiError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::BadCertificate {
            what,
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(PkiError::BadCertificate {
            what,
            reason: "trailing bytes after the certificate".into(),
        });
    }
    Ok(cert)
}

/// A certificate's notAfter as a [`SystemTime`].
pub(crate) fn cert_not_after(cert: &x509_parser::certificate::X509Certificate<'_>) -> SystemTime {
    unix_time(cert.validity().not_after.timestamp())
}

/// A certificate's notBefore as a [`SystemTime`].
pub(crate) fn cert_not_before(cert: &x509_parser::certificate::X509Certificate<'_>) -> SystemTime {
    unix_time(cert.validity().not_before.timestamp())
}

fn unix_time(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

/// Seconds since the epoch (negative before it), for error messages.
fn unix_secs(t: SystemTime) -> i128 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i128::from(d.as_secs()),
        Err(e) => -i128::from(e.duration().as_secs()),
    }
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        op: "reading",
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces `path` atomically: the data goes to a temporary file in the same directory, is
/// fsynced, then renamed over `path`, so a crash leaves either the old or the new content.
/// Callers fsync the directory once they have renamed everything.
pub(crate) fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut tmp_name = path.as_os_str().to_os_string();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| PkiError::Io {
            op,
            path: p,
            source,
        }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("writing", &tmp))?;
    f.write_all(data).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path))
}

/// The name a file of a set waits under until the whole set is durable.
fn pending(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.new"))
}

/// Replaces a set of files that only make sense together (a key and its certificate) so that a
/// crash at any point leaves either the whole old set or the whole new one. Each file is first
/// written complete and fsynced as `<name>.new`, the last of them only once the others are
/// durable: its presence commits the set. The renames into place follow, the last one last;
/// [`finish_set`], called before reading, completes a committed set or drops an uncommitted one.
pub(crate) fn write_set(dir: &Path, files: &[(&str, &[u8], u32)]) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        op: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    // A new directory's own entry must be durable too.
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    let Some(((last, last_data, last_mode), rest)) = files.split_last() else {
        return Ok(());
    };
    for (name, data, mode) in rest {
        write(&pending(dir, name), data, *mode)?;
    }
    sync_dir(dir)?;
    write(&pending(dir, last), last_data, *last_mode)?;
    sync_dir(dir)?;
    finish_set(dir, &files.iter().map(|(n, _, _)| *n).collect::<Vec<_>>())
}

/// Completes what [`write_set`] left: with the last file's `.new` present the set was committed
/// and the remaining renames are done; without it, the `.new` files of an unfinished write are
/// removed and the old set stays.
pub(crate) fn finish_set(dir: &Path, names: &[&str]) -> Result<(), PkiError> {
    let Some(last) = names.last() else {
        return Ok(());
    };
    let committed = pending(dir, last).exists();
    let mut touched = false;
    for name in names {
        let from = pending(dir, name);
        if !from.exists() {
            continue;
        }
        touched = true;
        let r = if committed {
            std::fs::rename(&from, dir.join(name))
        } else {
            std::fs::remove_file(&from)
        };
        r.map_err(|source| PkiError::Io {
            op: if committed {
                "renaming into place"
            } else {
                "removing an unfinished write"
            },
            path: from,
            source,
        })?;
    }
    if touched {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes renames in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| PkiError::Io {
            op: "syncing",
            path: dir.to_path_buf(),
            source,
        })
}

/// The raw subject and public key (SubjectPublicKeyInfo) of the first certificate in `pem`,
/// both DER: what Docker shows base64-encoded as `TLSInfo.CertIssuerSubject` and
/// `CertIssuerPublicKey` of a swarm and of its nodes.
pub fn issuer_of(pem: &str) -> Result<(Vec<u8>, Vec<u8>), PkiError> {
    let der = first_cert_der(pem, "the CA certificate")?;
    let cert = parse_cert(der.as_ref(), "the CA certificate")?;
    Ok((
        cert.subject().as_raw().to_vec(),
        cert.public_key().raw.to_vec(),
    ))
}

/// SHA-256 of a PEM bundle, as Swarm computes the CA digest of a token.
pub fn digest_of(pem: &str) -> [u8; 32] {
    Sha256::digest(pem.as_bytes()).into()
}

/// The token digest of a certificate seen as DER (e.g. in a TLS chain): [`digest_of`] its
/// canonical PEM, which is byte for byte what rcgen and Go's `pem.Encode` write.
pub fn digest_of_der(der: &[u8]) -> [u8; 32] {
    digest_of(&pem_of_der(der))
}

/// Canonical PEM of a DER certificate: base64 in 64-column lines, LF endings.
pub(crate) fn pem_of_der(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        // base64 is ASCII, so any byte index is a char boundary.
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
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

/// True when a presented join token is `expected`, compared in constant time: how long a
/// refusal takes says nothing about how many leading characters of a guess were right.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    if a.len() != b.len() {
        // The length is public (every token has Swarm's fixed shape); the content is not.
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keeps the compiler from turning the loop back into an early-exit comparison.
    std::hint::black_box(diff) == 0
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
    fn token_comparison_sees_every_byte() {
        let good = JoinToken::generate([7; 32]).to_string();
        assert!(token_matches(&good, &good));
        let n = good.len();
        for at in [0, 9, n / 2, n - 1] {
            let mut bad = good.clone().into_bytes();
            bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
            let bad = String::from_utf8(bad).unwrap();
            assert!(!token_matches(&bad, &good), "differs at byte {at}");
        }
        assert!(
            !token_matches(&good[..n - 1], &good),
            "a prefix is not the token"
        );
        assert!(!token_matches("", &good));
        assert!(!token_matches(&format!("{good}x"), &good));
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
    fn ca_key_never_prints_and_round_trips_through_pem() {
        let ca = ClusterCa::generate().unwrap();
        let (cert, key) = ca.to_pem_pair();
        let back = ClusterCa::from_pem_pair(&cert, &key).unwrap();
        assert_eq!(back.digest(), ca.digest());
        assert!(!format!("{back:?}").contains("PRIVATE KEY"));
    }
}
