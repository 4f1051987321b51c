//! Node identities and the certificate (with its key) each node holds.

use crate::{
    cert_not_after, cert_not_before, finish_set, first_cert_der, parse_cert, read_to_string,
    write_set, PkiError,
};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// What a node may do in the cluster (shoal-api's one role type); written into its
/// certificate's OU and a DNS SAN so peers can tell managers from workers.
pub use shoal_api::Role;

/// The OU and DNS SAN Swarm uses for this role, so our certificates read like Swarm's.
pub fn role_ou(role: Role) -> &'static str {
    match role {
        Role::Worker => "swarm-worker",
        Role::Manager => "swarm-manager",
    }
}

/// The role a certificate's OU names, if it is one of ours.
pub fn role_of_ou(ou: &str) -> Option<Role> {
    match ou {
        "swarm-worker" => Some(Role::Worker),
        "swarm-manager" => Some(Role::Manager),
        _ => None,
    }
}

/// Who a certificate says a node is: what a server learns about its peer after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    /// The node's id (certificate CN and a DNS SAN).
    pub node_id: String,
    /// Worker or manager (certificate OU and a DNS SAN).
    pub role: Role,
    /// The cluster the node belongs to (certificate O).
    pub cluster_id: String,
}

impl NodeIdentity {
    /// Refuses ids that cannot be DNS SANs, and node ids that spell a role name: a worker whose
    /// id were "swarm-manager" would carry the manager SAN and could pass for a manager.
    pub(crate) fn validate(&self) -> Result<(), PkiError> {
        if !is_dns_label(&self.node_id) {
            return Err(PkiError::InvalidIdentity(format!(
                "node id {:?} is not a DNS label (1-63 of a-z, 0-9, '-')",
                self.node_id
            )));
        }
        if role_of_ou(&self.node_id.to_ascii_lowercase()).is_some() {
            return Err(PkiError::InvalidIdentity(format!(
                "node id {:?} is a role name",
                self.node_id
            )));
        }
        if self.cluster_id.is_empty()
            || self.cluster_id.len() > 64
            || !self
                .cluster_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(PkiError::InvalidIdentity(format!(
                "cluster id {:?} must be 1-64 of a-z, 0-9, '-'",
                self.cluster_id
            )));
        }
        Ok(())
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Reads the identity a cluster certificate carries, for a server looking at
/// `peer_certificates()[0]` once the handshake (and so the chain check) has succeeded.
pub fn identity_of_der(der: &[u8]) -> Result<NodeIdentity, PkiError> {
    let cert = parse_cert(der, "node certificate")?;
    identity_of(&cert)
}

fn identity_of(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<NodeIdentity, PkiError> {
    let subject = cert.subject();
    let one =
        |mut it: Box<dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>> + '_>,
         field: &str| {
            let v = it.next().ok_or_else(|| {
                PkiError::InvalidIdentity(format!("the certificate has no {field}"))
            })?;
            if it.next().is_some() {
                return Err(PkiError::InvalidIdentity(format!(
                    "the certificate has more than one {field}"
                )));
            }
            v.as_str()
                .map(str::to_string)
                .map_err(|e| PkiError::InvalidIdentity(format!("the certificate's {field}: {e}")))
        };
    let node_id = one(Box::new(subject.iter_common_name()), "CN")?;
    let ou = one(Box::new(subject.iter_organizational_unit()), "OU")?;
    let cluster_id = one(Box::new(subject.iter_organization()), "O")?;
    let role = role_of_ou(&ou)
        .ok_or_else(|| PkiError::InvalidIdentity(format!("unknown role OU {ou:?}")))?;
    Ok(NodeIdentity {
        node_id,
        role,
        cluster_id,
    })
}

/// A node's fresh key pair and the CSR that carries its public half to the CA, so the private
/// key never leaves the node.
pub struct NodeKey {
    key_pem: String,
    csr_pem: String,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.debug_struct("NodeKey")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// A new ECDSA P-256 key and its CSR (empty subject: the CA assigns the identity).
    pub fn generate() -> Result<NodeKey, PkiError> {
        let (key_pem, csr_pem) = key_and_csr("generating the node key")?;
        Ok(NodeKey { key_pem, csr_pem })
    }

    /// The CSR to send to a manager; safe to share.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// Pairs the key with the certificate the CA issued for its CSR, checking they belong
    /// together and chain to `ca_pem`.
    pub fn into_node_cert(self, cert_pem: String, ca_pem: String) -> Result<NodeCert, PkiError> {
        NodeCert::new(cert_pem, self.key_pem, ca_pem)
    }
}

/// A new ECDSA P-256 key (PEM, PKCS#8) and a CSR for it with an empty subject: whoever signs
/// decides the identity. `what` names the key in errors.
pub(crate) fn key_and_csr(what: &'static str) -> Result<(String, String), PkiError> {
    let key = rcgen::KeyPair::generate().map_err(|source| PkiError::Crypto { what, source })?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|source| PkiError::Crypto {
            what: "making the certificate signing request",
            source,
        })?;
    let csr_pem = csr.pem().map_err(|source| PkiError::Crypto {
        what: "encoding the certificate signing request",
        source,
    })?;
    Ok((key.serialize_pem(), csr_pem))
}

const NODE_CERT_FILE: &str = "swarm-node.crt";
const NODE_KEY_FILE: &str = "swarm-node.key";
const ROOT_CA_FILE: &str = "swarm-root-ca.crt";

/// A node's TLS credentials: its leaf certificate, private key and the cluster CA, checked to
/// belong together when built so a handshake never fails on mismatched files.
#[derive(Clone)]
pub struct NodeCert {
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
    identity: NodeIdentity,
    not_before: SystemTime,
    not_after: SystemTime,
    renew_fraction: f64,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.debug_struct("NodeCert")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl NodeCert {
    /// Builds credentials, refusing a key that is not the certificate's, a certificate not
    /// signed by `ca_pem`, or one without a cluster identity. Validity dates are not checked
    /// here (see [`NodeCert::check_valid_at`]) so an expired node can still load and re-join.
    pub fn new(cert_pem: String, key_pem: String, ca_pem: String) -> Result<NodeCert, PkiError> {
        let ca_der = first_cert_der(&ca_pem, "CA certificate")?;
        let ca = parse_cert(&ca_der, "CA certificate")?;
        if !ca.is_ca() {
            return Err(PkiError::NotACa);
        }
        let der = first_cert_der(&cert_pem, "node certificate")?;
        let cert = parse_cert(&der, "node certificate")?;
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| PkiError::WrongCa)?;
        let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|source| PkiError::Crypto {
            what: "parsing the node key",
            source,
        })?;
        if rcgen::PublicKeyData::subject_public_key_info(&key) != cert.public_key().raw {
            return Err(PkiError::KeyMismatch {
                what: "node certificate",
            });
        }
        let identity = identity_of(&cert)?;
        let not_before = cert_not_before(&cert);
        let not_after = cert_not_after(&cert);
        let renew_fraction = renew_fraction(&der);
        Ok(NodeCert {
            cert_pem,
            key_pem,
            ca_pem,
            identity,
            not_before,
            not_after,
            renew_fraction,
        })
    }

    /// The leaf certificate, PEM: what the node presents.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM (PKCS#8); only for building TLS configs and saving.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The cluster CA, PEM: what the node trusts.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Who this certificate says the node is (parsed from the leaf when built).
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// When peers stop accepting the certificate.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When the certificate became valid (issuance minus Swarm's one-hour backdate).
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// When to ask for a new certificate: like Swarm (which picks a random point between 50% and
    /// 80% of the lifetime), but the point is derived from the certificate's SHA-256, so it is
    /// spread across nodes yet stable across restarts and testable.
    pub fn renew_at(&self) -> SystemTime {
        renew_at(self.not_before, self.not_after, self.renew_fraction)
    }

    /// True once [`NodeCert::renew_at`] has passed (and so also when expired).
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        now >= self.renew_at()
    }

    /// Refuses a certificate that no peer would accept at `now`, to fail early with a clear
    /// error rather than in a handshake.
    pub fn check_valid_at(&self, now: SystemTime) -> Result<(), PkiError> {
        if now > self.not_after {
            return Err(PkiError::Expired {
                not_after: self.not_after,
            });
        }
        if now < self.not_before {
            return Err(PkiError::NotYetValid {
                not_before: self.not_before,
            });
        }
        Ok(())
    }

    /// Saves the certificate and the CA (both public) in `dir` as one set: a crash leaves the
    /// old pair or the new one. The private key is not written here: the caller seals it
    /// ([`NodeCert::key_pem`]) so no plain key is ever on disk, and keeps the previous key until
    /// the new certificate is in place, so [`NodeCert::load_with_key`] always finds the key of
    /// whichever certificate a crash left.
    pub fn save_public(&self, dir: &Path) -> Result<(), PkiError> {
        write_set(
            dir,
            &[
                (ROOT_CA_FILE, self.ca_pem.as_bytes(), 0o644),
                (NODE_CERT_FILE, self.cert_pem.as_bytes(), 0o644),
            ],
        )
    }

    /// Loads what [`NodeCert::save_public`] wrote, with the key the caller kept sealed, and the
    /// checks of [`NodeCert::new`].
    pub fn load_with_key(dir: &Path, key_pem: String) -> Result<NodeCert, PkiError> {
        finish_set(dir, &[ROOT_CA_FILE, NODE_CERT_FILE])?;
        NodeCert::new(
            read_to_string(&dir.join(NODE_CERT_FILE))?,
            key_pem,
            read_to_string(&dir.join(ROOT_CA_FILE))?,
        )
    }

    /// Where versions before sealing kept the node's private key in plain PEM; read once to
    /// seal it, then removed.
    pub fn legacy_key_path(dir: &Path) -> std::path::PathBuf {
        dir.join(NODE_KEY_FILE)
    }
}

/// A point in [0.5, 0.8) of the lifetime, from the certificate's own hash.
fn renew_fraction(der: &[u8]) -> f64 {
    let h = Sha256::digest(der);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    // 53 bits give a uniform double in [0, 1).
    let unit = (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    0.5 + 0.3 * unit
}

fn renew_at(not_before: SystemTime, not_after: SystemTime, fraction: f64) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + lifetime.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterCa;
    use rustls_pki_types::pem::PemObject;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn ident(role: Role) -> NodeIdentity {
        NodeIdentity {
            node_id: "n0de1d".into(),
            role,
            cluster_id: "c1uster".into(),
        }
    }

    /// A node certificate from a fresh CA.
    fn some_cert() -> NodeCert {
        let ca = ClusterCa::generate().unwrap();
        let key = NodeKey::generate().unwrap();
        let pem = ca.issue(key.csr_pem(), &ident(Role::Worker), DAY).unwrap();
        key.into_node_cert(pem, ca.cert_pem().into()).unwrap()
    }

    #[test]
    fn a_save_cut_short_at_any_point_loads_the_old_set_or_the_new_one() {
        let (old, new) = (some_cert(), some_cert());
        let files = |c: &NodeCert| {
            vec![
                (ROOT_CA_FILE, c.ca_pem.clone()),
                (NODE_CERT_FILE, c.cert_pem.clone()),
            ]
        };
        // The crash points of a save, in order: k files of the new set written as `.new`
        // (committed once both are), then r of them renamed into place.
        for written in 0..=2usize {
            let renamed_max = if written == 2 { 2 } else { 0 };
            for renamed in 0..=renamed_max {
                let dir = tempfile::tempdir().unwrap();
                old.save_public(dir.path()).unwrap();
                for (name, pem) in files(&new).iter().take(written) {
                    std::fs::write(dir.path().join(format!("{name}.new")), pem).unwrap();
                }
                for (name, _) in files(&new).iter().take(renamed) {
                    std::fs::rename(
                        dir.path().join(format!("{name}.new")),
                        dir.path().join(name),
                    )
                    .unwrap();
                }
                let want = if written == 2 { &new } else { &old };
                let got = NodeCert::load_with_key(dir.path(), want.key_pem.clone())
                    .unwrap_or_else(|e| panic!("{written} written, {renamed} renamed: {e}"));
                assert_eq!(
                    got.cert_pem, want.cert_pem,
                    "{written} written, {renamed} renamed"
                );
                let left: Vec<String> = std::fs::read_dir(dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                    .filter(|n| n.ends_with(".new"))
                    .collect();
                assert!(left.is_empty(), "{written}/{renamed}: {left:?}");
            }
        }
    }

    #[test]
    fn renewal_falls_between_half_and_eighty_percent() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let end = start + 100 * DAY;
        for der in [&b"a"[..], b"b", b"another certificate", b""] {
            let f = renew_fraction(der);
            assert!((0.5..0.8).contains(&f), "{f}");
            let at = renew_at(start, end, f);
            assert!(at >= start + 50 * DAY && at < start + 80 * DAY);
        }
        assert_ne!(
            renew_fraction(b"a"),
            renew_fraction(b"b"),
            "spread across nodes"
        );
        // A certificate whose dates are upside down is due at once.
        assert_eq!(renew_at(end, start, 0.6), end);
    }

    #[test]
    fn needs_renewal_follows_the_lifetime() {
        let ca = ClusterCa::generate().unwrap();
        let key = NodeKey::generate().unwrap();
        let now = SystemTime::now();
        let (nb, na) = (now - DAY, now + 99 * DAY);
        let pem = ca
            .issue_between(key.csr_pem(), &ident(Role::Worker), nb, na)
            .unwrap();
        let cert = key.into_node_cert(pem, ca.cert_pem().into()).unwrap();
        assert_eq!(
            cert.not_after()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            na.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
        );
        assert!(!cert.needs_renewal(now), "1% into its life");
        assert!(!cert.needs_renewal(nb + 50 * DAY - Duration::from_secs(1)));
        assert!(cert.needs_renewal(nb + 80 * DAY));
        assert!(cert.needs_renewal(na + DAY), "expired");
        assert!(cert.check_valid_at(now).is_ok());
        assert!(matches!(
            cert.check_valid_at(na + DAY),
            Err(PkiError::Expired { .. })
        ));
        assert!(matches!(
            cert.check_valid_at(nb - DAY),
            Err(PkiError::NotYetValid { .. })
        ));
    }

    #[test]
    fn issued_certs_carry_the_identity_and_ignore_the_csr_subject() {
        let ca = ClusterCa::generate().unwrap();
        // A CSR that asks to be a manager called "evil" with a CA bit.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["swarm-manager".to_string(), "evil".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "swarm-manager");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let pem = ca.issue(&csr, &ident(Role::Worker), 90 * DAY).unwrap();
        let der = first_cert_der(&pem, "t").unwrap();
        assert_eq!(identity_of_der(&der).unwrap(), ident(Role::Worker));
        let cert = parse_cert(&der, "t").unwrap();
        assert!(!cert.is_ca());
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(sans, ["swarm-worker", "n0de1d"]);
        let cert = NodeCert::new(pem, key.serialize_pem(), ca.cert_pem().to_string()).unwrap();
        assert_eq!(cert.identity(), &ident(Role::Worker));
    }

    #[test]
    fn issue_rejects_bad_csrs_and_identities() {
        let ca = ClusterCa::generate().unwrap();
        for garbage in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            ca.cert_pem(),
        ] {
            assert!(
                matches!(
                    ca.issue(garbage, &ident(Role::Worker), DAY),
                    Err(PkiError::BadCsr(_))
                ),
                "{garbage:?}"
            );
        }
        // A CSR whose signature does not match its key: flip a byte inside the signature.
        let key = NodeKey::generate().unwrap();
        let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(
            key.csr_pem().as_bytes(),
        )
        .unwrap();
        let mut bytes = der.as_ref().to_vec();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            }
        );
        match ca.issue(&tampered, &ident(Role::Worker), DAY) {
            Err(PkiError::BadCsr(why)) => assert!(why.contains("self-signature"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A P-384 key is not what the cluster uses.
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&p384)
            .unwrap()
            .pem()
            .unwrap();
        assert!(matches!(
            ca.issue(&csr, &ident(Role::Worker), DAY),
            Err(PkiError::BadCsr(_))
        ));
        for bad in [
            NodeIdentity {
                node_id: "swarm-manager".into(),
                ..ident(Role::Worker)
            },
            NodeIdentity {
                node_id: "".into(),
                ..ident(Role::Worker)
            },
            NodeIdentity {
                node_id: "has.dot".into(),
                ..ident(Role::Worker)
            },
            NodeIdentity {
                cluster_id: "".into(),
                ..ident(Role::Worker)
            },
        ] {
            assert!(
                matches!(
                    ca.issue(key.csr_pem(), &bad, DAY),
                    Err(PkiError::InvalidIdentity(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn node_cert_refuses_mismatched_material() {
        let ca = ClusterCa::generate().unwrap();
        let other_ca = ClusterCa::generate().unwrap();
        let key = NodeKey::generate().unwrap();
        let other_key = NodeKey::generate().unwrap();
        let pem = ca.issue(key.csr_pem(), &ident(Role::Manager), DAY).unwrap();
        assert!(matches!(
            NodeCert::new(pem.clone(), other_key.key_pem.clone(), ca.cert_pem().into()),
            Err(PkiError::KeyMismatch { .. })
        ));
        assert!(matches!(
            NodeCert::new(pem.clone(), key.key_pem.clone(), other_ca.cert_pem().into()),
            Err(PkiError::WrongCa)
        ));
        assert!(matches!(
            NodeCert::new(pem.clone(), key.key_pem.clone(), pem.clone()),
            Err(PkiError::NotACa)
        ));
    }

    #[test]
    fn node_cert_saves_only_public_files_and_loads_with_the_kept_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().join("certificates");
        let ca = ClusterCa::generate().unwrap();
        let key = NodeKey::generate().unwrap();
        let pem = ca.issue(key.csr_pem(), &ident(Role::Manager), DAY).unwrap();
        let cert = key.into_node_cert(pem, ca.cert_pem().into()).unwrap();
        cert.save_public(&dir).unwrap();
        cert.save_public(&dir).unwrap(); // replacing works too
        let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(NODE_CERT_FILE), 0o644);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [NODE_CERT_FILE, ROOT_CA_FILE],
            "no key and no temporary files"
        );
        for f in &names {
            let text = std::fs::read_to_string(dir.join(f)).unwrap();
            assert!(!text.contains("PRIVATE KEY"), "{f}");
        }
        let back = NodeCert::load_with_key(&dir, cert.key_pem().to_string()).unwrap();
        assert_eq!(back.cert_pem(), cert.cert_pem());
        assert_eq!(back.identity(), &ident(Role::Manager));
        assert!(!format!("{back:?}").contains("PRIVATE KEY"));
    }
}
