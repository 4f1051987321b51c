//! rustls configs for mutual TLS between nodes, always on the `ring` provider and TLS 1.3.

use crate::{digest_of_der, pem_of_der, NodeCert, PkiError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::sync::Arc;

/// The DNS SAN only manager certificates carry; clients verify servers against it, whatever
/// address they dialled, so a worker certificate cannot stand in for a manager.
pub const MANAGER_SERVER_NAME: &str = "swarm-manager";

/// [`MANAGER_SERVER_NAME`] as the `ServerName` tokio-rustls' `connect` wants; any name works
/// with our client configs (they always check this one), it just makes the intent and the SNI
/// explicit. It cannot fail in practice; rustls only offers a fallible constructor.
pub fn manager_server_name() -> Result<ServerName<'static>, PkiError> {
    ServerName::try_from(MANAGER_SERVER_NAME).map_err(|e| {
        PkiError::InvalidIdentity(format!("{MANAGER_SERVER_NAME:?} as a server name: {e}"))
    })
}

/// ALPN for tonic's HTTP/2, so both sides agree without falling back.
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// The provider every config uses, never a process-wide default that another crate might set.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Only TLS 1.3: every peer is one of our nodes, so there is nothing older to talk to.
pub(crate) const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

pub(crate) fn tls_err(what: &'static str) -> impl FnOnce(rustls::Error) -> PkiError {
    move |source| PkiError::Tls { what, source }
}

pub(crate) fn certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadPem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::BadPem {
            what,
            reason: "no certificate found".into(),
        });
    }
    Ok(certs)
}

pub(crate) fn key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::BadPem {
        what,
        reason: e.to_string(),
    })
}

pub(crate) fn ca_roots(cert: &NodeCert) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for ca in certs(cert.ca_pem(), "CA certificate")? {
        roots.add(ca).map_err(tls_err("trusting the cluster CA"))?;
    }
    Ok(Arc::new(roots))
}

/// What a node serves with: presents its leaf followed by the CA (so a joiner holding only a
/// token can find and pin the CA), and accepts clients with no certificate (joiners) or with one
/// chaining to the cluster CA that is a node certificate (an API client certificate is refused
/// in the handshake: the two uses of the CA stay apart); read the peer's identity with
/// [`crate::identity_of_der`].
pub fn server_config(cert: &NodeCert) -> Result<Arc<ServerConfig>, PkiError> {
    node_server_config(cert, true)
}

/// A node's server config; `anonymous` lets clients without a certificate in (joiners on the
/// manager port), else every client must present a node certificate of the cluster.
pub(crate) fn node_server_config(
    cert: &NodeCert,
    anonymous: bool,
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let builder = WebPkiClientVerifier::builder_with_provider(ca_roots(cert)?, provider.clone());
    let builder = if anonymous {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    let inner = builder.build().map_err(|source| PkiError::Verifier {
        what: "building the client certificate verifier",
        source,
    })?;
    // The certificate names a node (OU of a role), so an API client certificate of the same CA
    // opens nothing on the node port.
    let verifier = Arc::new(CheckedClientVerifier {
        inner,
        check: Box::new(|der| {
            crate::identity_of_der(der)
                .map(|_| ())
                .map_err(|_| CertificateError::InvalidPurpose)
        }),
    });
    let mut chain = certs(cert.cert_pem(), "node certificate")?;
    chain.truncate(1);
    chain.extend(certs(cert.ca_pem(), "CA certificate")?);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err("choosing TLS versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key(cert.key_pem(), "node key")?)
        .map_err(tls_err("installing the node certificate"))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// What a node dials other nodes with: trusts only the cluster CA, presents its own
/// certificate, and accepts only servers whose certificate names [`MANAGER_SERVER_NAME`].
pub fn client_config(cert: &NodeCert) -> Result<Arc<ClientConfig>, PkiError> {
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(ca_roots(cert)?, provider.clone())
        .build()
        .map_err(|source| PkiError::Verifier {
            what: "building the server certificate verifier",
            source,
        })?;
    let mut leaf = certs(cert.cert_pem(), "node certificate")?;
    leaf.truncate(1);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err("choosing TLS versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ManagerVerifier {
            inner,
            name: manager_server_name()?,
        }))
        .with_client_auth_cert(leaf, key(cert.key_pem(), "node key")?)
        .map_err(tls_err("installing the node certificate"))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// What a joining node dials a manager with when all it has is a join token: no client
/// certificate, and the server is accepted only if its chain includes a certificate whose
/// [`crate::digest_of_der`] is the token's CA digest and the leaf verifies against that CA as a
/// manager. This pins the CA from the token during the handshake, which is stricter than Swarm
/// (it fetches the CA over an unverified connection and compares digests afterwards): nothing,
/// not even the join secret, is sent to a server that fails the check.
pub fn bootstrap_client_config(ca_digest: [u8; 32]) -> Result<Arc<ClientConfig>, PkiError> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err("choosing TLS versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
            ca_digest,
            provider,
            name: manager_server_name()?,
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The CA a bootstrap connection pinned, as canonical PEM: after a handshake with
/// [`bootstrap_client_config`], pass `peer_certificates()` to learn the CA to save without
/// trusting anything else the server says.
pub fn pinned_ca_pem(chain: &[CertificateDer<'_>], ca_digest: [u8; 32]) -> Option<String> {
    chain
        .iter()
        .find(|c| digest_of_der(c) == ca_digest)
        .map(|c| pem_of_der(c))
}

/// What a listener asks of a client certificate once WebPKI has accepted it against the cluster
/// CA: a node certificate on the node port, a live API client certificate on the API port.
pub(crate) type ClientCheck =
    Box<dyn Fn(&CertificateDer<'_>) -> Result<(), CertificateError> + Send + Sync>;

/// WebPKI against the cluster CA, then the listener's own [`ClientCheck`], so the two uses of
/// the CA stay apart in the handshake. One type for both listeners: only the check differs.
pub(crate) struct CheckedClientVerifier {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) check: ClientCheck,
}

impl std::fmt::Debug for CheckedClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedClientVerifier")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for CheckedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| match e {
                // Another cluster's CA is also called "swarm-ca": webpki finds a same-named
                // issuer and its signature fails. To the client that is an unknown CA (alert
                // unknown_ca), which is what it should be told.
                rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                }
                other => other,
            })?;
        (self.check)(end_entity).map_err(rustls::Error::InvalidCertificate)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// WebPKI against the cluster CA, with the name fixed to [`MANAGER_SERVER_NAME`] so callers can
/// dial by address.
#[derive(Debug)]
struct ManagerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for ManagerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Trusts the CA found in the server's own chain, but only the one the join token names.
#[derive(Debug)]
struct PinnedCaVerifier {
    ca_digest: [u8; 32],
    provider: Arc<CryptoProvider>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (pinned, others): (Vec<_>, Vec<_>) = intermediates
            .iter()
            .cloned()
            .partition(|c| digest_of_der(c) == self.ca_digest);
        let Some(ca) = pinned.into_iter().next() else {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PkiError::CaDigestMismatch)),
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("pinning the cluster CA: {e}")))?;
        verifier.verify_server_cert(end_entity, &others, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
