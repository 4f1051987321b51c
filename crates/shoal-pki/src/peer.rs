//! TLS between any two nodes, workers included (issue 22's image transfers): unlike the manager
//! port, both sides must present a node certificate of the cluster, and the client checks that
//! the server is the very node it meant to reach (by the node ID its certificate names), since
//! worker certificates carry no name to check an address against.

use crate::tls::{ca_roots, certs, key, provider, tls_err, ALPN_H2, VERSIONS};
use crate::{NodeCert, PkiError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// What every node serves its peer port with: only clients presenting a node certificate of
/// this cluster get past the handshake (no anonymous callers at all, unlike the manager port).
pub fn peer_server_config(cert: &NodeCert) -> Result<Arc<ServerConfig>, PkiError> {
    crate::tls::node_server_config(cert, false)
}

/// What a node dials another node's peer port with: presents its own certificate and accepts
/// only a server whose certificate chains to the cluster CA and names `node_id`.
pub fn peer_client_config(cert: &NodeCert, node_id: &str) -> Result<Arc<ClientConfig>, PkiError> {
    let provider = provider();
    let mut leaf = certs(cert.cert_pem(), "node certificate")?;
    leaf.truncate(1);
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err("choosing TLS versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier {
            roots: ca_roots(cert)?,
            provider,
            node_id: node_id.to_string(),
        }))
        .with_client_auth_cert(leaf, key(cert.key_pem(), "node key")?)
        .map_err(tls_err("installing the node certificate"))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The chain to the cluster CA, then the node ID the leaf names.
#[derive(Debug)]
struct PeerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    node_id: String,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(|e| match e {
            // Another cluster's CA has the same name: to the caller that is an unknown CA.
            rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            }
            other => other,
        })?;
        match crate::identity_of_der(end_entity) {
            Ok(id) if id.node_id == self.node_id => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
        }
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
