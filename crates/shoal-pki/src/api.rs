//! Certificates for the Docker API over TCP (`shoal daemon --listen tcp://...`), kept apart from
//! node certificates. An API client certificate (OU [`API_CLIENT_OU`], clientAuth only) is what
//! an operator's docker CLI or SDK presents; a manager's API server certificate (OU
//! [`API_SERVER_OU`], serverAuth only) names the node's host names and addresses, so clients
//! verify it by the address they dial. The API's rustls config accepts only API client
//! certificates of the cluster CA that are not revoked: a node certificate is refused there, and
//! `tls::server_config` refuses API client certificates on the node port (2377).

use crate::tls::{certs, key, provider, tls_err, CheckedClientVerifier};
use crate::{csr_public_key, first_cert_der, parse_cert, ClusterCa, PkiError, CERT_BACKDATE};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The OU of API client certificates: what the API listener requires and the node port refuses.
pub const API_CLIENT_OU: &str = "shoal-api-client";
/// The OU of a manager's API server certificate (it carries no node role, so it opens nothing).
pub const API_SERVER_OU: &str = "shoal-api-server";
/// The longest client name: it is the certificate's CN, which X.509 caps at 64.
pub const MAX_CLIENT_NAME: usize = 64;

/// Refuses client names that would not read well in logs and listings: 1-64 of `a-z A-Z 0-9 _ .
/// -`, starting with a letter or digit.
pub fn check_client_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CLIENT_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidIdentity(format!(
            "client name {name:?} must be 1-{MAX_CLIENT_NAME} of a-z, A-Z, 0-9, '_', '.', '-', starting with a letter or digit"
        )))
    }
}

/// A client's fresh key pair and the CSR that carries its public half to the CA: `shoal
/// client-cert` makes it on the client's side, so the private key never travels.
pub struct ClientKey {
    key_pem: String,
    csr_pem: String,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.debug_struct("ClientKey")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// A new ECDSA P-256 key and its CSR (empty subject: the CA writes the name).
    pub fn generate() -> Result<ClientKey, PkiError> {
        let (key_pem, csr_pem) = crate::node::key_and_csr("generating the client key")?;
        Ok(ClientKey { key_pem, csr_pem })
    }

    /// The CSR to send to a manager; safe to share.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// The private key, PEM (PKCS#8), for the client's `key.pem` (written 0600 by the caller).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

/// What the CA issued for a client: the certificate and what the cluster records about it.
#[derive(Debug, Clone)]
pub struct IssuedClientCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its serial number, lowercase hex: the key of its revocation record.
    pub serial: String,
    /// SHA-256 of its DER, lowercase hex: what `shoal client-cert ls` shows to tell it apart.
    pub fingerprint: String,
    /// When it stops being accepted.
    pub not_after: SystemTime,
}

/// A manager's certificate for serving the API over TCP, with its key (made in memory, never
/// written) and the CA clients verify it with.
#[derive(Clone)]
pub struct ApiServerCert {
    cert_pem: String,
    pub(crate) key_pem: String,
    ca_pem: String,
    not_after: SystemTime,
}

impl std::fmt::Debug for ApiServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.debug_struct("ApiServerCert")
            .field("cert_pem", &self.cert_pem)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ApiServerCert {
    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The cluster CA, PEM (what clients put in `ca.pem`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// When it expires (the node certificate's own expiry: both are renewed together).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

impl ClusterCa {
    /// Signs an API client certificate named `name` for the public key in `csr_pem`, valid from
    /// now for `validity` (capped at the CA's expiry): CN = name, OU = [`API_CLIENT_OU`], O = the
    /// cluster, extended key usage clientAuth only, so it can be neither a server nor a node.
    pub fn issue_api_client(
        &self,
        csr_pem: &str,
        name: &str,
        cluster_id: &str,
        validity: Duration,
    ) -> Result<IssuedClientCert, PkiError> {
        check_client_name(name)?;
        let public_key = csr_public_key(csr_pem)?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = subject(cluster_id, API_CLIENT_OU, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let now = SystemTime::now();
        let cert = self.sign(
            &public_key,
            params,
            now - CERT_BACKDATE,
            now + validity,
            "signing the API client certificate",
        )?;
        let der = cert.der();
        let parsed = parse_cert(der, "API client certificate")?;
        Ok(IssuedClientCert {
            cert_pem: cert.pem(),
            serial: hex(parsed.raw_serial()),
            fingerprint: fingerprint_hex(der),
            not_after: crate::cert_not_after(&parsed),
        })
    }

    /// Makes a key and signs an API server certificate for this manager, valid until
    /// `not_after` (its node certificate's expiry): SANs are the host names in `dns` (those that
    /// are not DNS names are left out) and the addresses in `ips`, CN = the node ID, OU =
    /// [`API_SERVER_OU`], extended key usage serverAuth only.
    pub fn issue_api_server(
        &self,
        node_id: &str,
        cluster_id: &str,
        dns: &[String],
        ips: &[IpAddr],
        not_after: SystemTime,
    ) -> Result<ApiServerCert, PkiError> {
        let key = rcgen::KeyPair::generate().map_err(|source| PkiError::Crypto {
            what: "generating the API server key",
            source,
        })?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = subject(cluster_id, API_SERVER_OU, node_id);
        let mut sans = Vec::new();
        for name in dns {
            if let Ok(n) = rcgen::string::Ia5String::try_from(name.as_str()) {
                if is_dns_name(name) && !sans.contains(&rcgen::SanType::DnsName(n.clone())) {
                    sans.push(rcgen::SanType::DnsName(n));
                }
            }
        }
        for ip in ips {
            if !sans.contains(&rcgen::SanType::IpAddress(*ip)) {
                sans.push(rcgen::SanType::IpAddress(*ip));
            }
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        let cert = self.sign(
            &key,
            params,
            now - CERT_BACKDATE,
            not_after,
            "signing the API server certificate",
        )?;
        let parsed_not_after =
            crate::cert_not_after(&parse_cert(cert.der(), "API server certificate")?);
        Ok(ApiServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem().to_string(),
            not_after: parsed_not_after,
        })
    }
}

fn subject(cluster_id: &str, ou: &str, cn: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, cluster_id);
    dn.push(rcgen::DnType::OrganizationalUnitName, ou);
    dn.push(rcgen::DnType::CommonName, cn);
    dn
}

/// A host name a client can dial: dot-separated labels of letters, digits and '-'.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a certificate's DER, lowercase hex.
pub fn fingerprint_hex(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// Who an API client certificate names, read after the handshake verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClient {
    /// The name it was issued for (its CN).
    pub name: String,
    /// Its serial number, lowercase hex.
    pub serial: String,
    /// SHA-256 of its DER, lowercase hex.
    pub fingerprint: String,
}

/// The client an API client certificate names; refused for any other certificate (a node's, a
/// server's), so the two uses of the cluster CA stay apart.
pub fn api_client_of_der(der: &[u8]) -> Result<ApiClient, PkiError> {
    let cert = parse_cert(der, "API client certificate")?;
    let subject = cert.subject();
    let ous: Vec<_> = subject.iter_organizational_unit().collect();
    let is_client = ous.len() == 1 && ous[0].as_str().ok() == Some(API_CLIENT_OU);
    if !is_client {
        return Err(PkiError::BadCertificate {
            what: "API client certificate",
            reason: format!("its OU is not {API_CLIENT_OU:?}"),
        });
    }
    let mut cns = subject.iter_common_name();
    let name = match (cns.next(), cns.next()) {
        (Some(cn), None) => cn.as_str().map(str::to_string).ok(),
        _ => None,
    }
    .ok_or_else(|| PkiError::BadCertificate {
        what: "API client certificate",
        reason: "it has no single readable CN".into(),
    })?;
    Ok(ApiClient {
        name,
        serial: hex(cert.raw_serial()),
        fingerprint: fingerprint_hex(der),
    })
}

/// Which API client certificates are revoked, asked at every handshake (the API listener keeps
/// the answer in the replicated store, so a revocation holds on every manager).
pub trait Revocations: Send + Sync + std::fmt::Debug {
    /// True if the certificate with this serial (lowercase hex) is revoked.
    fn is_revoked(&self, serial: &str) -> bool;
}

/// What a manager serves the API over TCP with: presents `cert`, requires a client
/// certificate, and accepts it only if it chains to the cluster CA, is an API client
/// certificate (a node certificate is refused with `unsupported_certificate`) and is not
/// revoked (`certificate_revoked`). TLS 1.2 and 1.3, as Docker's clients speak both. No session
/// is ever resumed, so every connection's certificate meets the revocation check.
pub fn api_server_config(
    cert: &ApiServerCert,
    revocations: Arc<dyn Revocations>,
) -> Result<Arc<ServerConfig>, PkiError> {
    server_config_for_clients(cert, revocations, true)
}

/// What a manager serves the dashboard over HTTPS with: [`api_server_config`], except that a
/// client certificate is asked for but not required (a browser without one logs in with the
/// password); one that is presented is checked the same way (an API client certificate of the
/// cluster CA, not revoked), and its name logs the browser in.
pub fn dashboard_server_config(
    cert: &ApiServerCert,
    revocations: Arc<dyn Revocations>,
) -> Result<Arc<ServerConfig>, PkiError> {
    server_config_for_clients(cert, revocations, false)
}

fn server_config_for_clients(
    cert: &ApiServerCert,
    revocations: Arc<dyn Revocations>,
    required: bool,
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for ca in certs(&cert.ca_pem, "CA certificate")? {
        roots.add(ca).map_err(tls_err("trusting the cluster CA"))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    let inner = builder.build().map_err(|source| PkiError::Verifier {
        what: "building the API client verifier",
        source,
    })?;
    // An API client certificate (clientAuth usage and dates are WebPKI's), not revoked.
    let verifier = Arc::new(CheckedClientVerifier {
        inner,
        check: Box::new(move |der| {
            let client = api_client_of_der(der).map_err(|_| CertificateError::InvalidPurpose)?;
            if revocations.is_revoked(&client.serial) {
                return Err(CertificateError::Revoked);
            }
            Ok(())
        }),
    });
    let mut chain = certs(&cert.cert_pem, "API server certificate")?;
    chain.truncate(1);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err("choosing TLS versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key(&cert.key_pem, "API server key")?)
        .map_err(tls_err("installing the API server certificate"))?;
    // A resumed session skips the certificate check, and with it a revocation since.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client of the API over TCP, as `DOCKER_CERT_PATH` holds it: trusts `ca_pem` only and
/// presents `cert_pem` with `key_pem`. The server is verified by the name it is dialled by.
pub fn api_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, PkiError> {
    let mut roots = RootCertStore::empty();
    for ca in certs(ca_pem, "CA certificate")? {
        roots.add(ca).map_err(tls_err("trusting the CA"))?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("choosing TLS versions"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            certs(cert_pem, "client certificate")?,
            key(key_pem, "client key")?,
        )
        .map_err(tls_err("installing the client certificate"))?;
    Ok(Arc::new(config))
}

/// The first certificate of a PEM bundle, parsed as an API client's (for tools reading
/// `cert.pem`).
pub fn api_client_of_pem(pem: &str) -> Result<ApiClient, PkiError> {
    api_client_of_der(&first_cert_der(pem, "API client certificate")?)
}
