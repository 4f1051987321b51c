//! Real TLS handshakes over loopback TCP between the configs of `tls.rs`.

use crate::*;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn node(ca: &ClusterCa, node_id: &str, role: Role) -> NodeCert {
    let key = NodeKey::generate().unwrap();
    let id = NodeIdentity {
        node_id: node_id.into(),
        role,
        cluster_id: "cluster1".into(),
    };
    let pem = ca.issue(key.csr_pem(), &id, 90 * DAY).unwrap();
    key.into_node_cert(pem, ca.cert_pem().into()).unwrap()
}

fn expired_node(ca: &ClusterCa, node_id: &str, role: Role) -> NodeCert {
    let key = NodeKey::generate().unwrap();
    let id = NodeIdentity {
        node_id: node_id.into(),
        role,
        cluster_id: "cluster1".into(),
    };
    let now = SystemTime::now();
    let pem = ca
        .issue_between(key.csr_pem(), &id, now - 2 * DAY, now - DAY)
        .unwrap();
    key.into_node_cert(pem, ca.cert_pem().into()).unwrap()
}

/// What each side saw: the server the client's identity (None: no client certificate), the
/// client the negotiated ALPN.
struct HandshakeOutcome {
    server: io::Result<Option<NodeIdentity>>,
    client: io::Result<Option<Vec<u8>>>,
}

async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> HandshakeOutcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let id = match tls.get_ref().1.peer_certificates() {
            Some(chain) => Some(identity_of_der(&chain[0]).map_err(io::Error::other)?),
            None => None,
        };
        tls.write_all(b"ok").await?;
        tls.flush().await?;
        // Wait for the client to read and hang up, so the answer is not cut short.
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        Ok(id)
    });
    let client = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = TlsConnector::from(client)
            .connect(manager_server_name().unwrap(), tcp)
            .await?;
        // With TLS 1.3 a client finishes before the server has judged its certificate; reading
        // the server's first bytes is what shows the server accepted it.
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ok");
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        tls.shutdown().await?;
        Ok(alpn)
    }
    .await;
    let server = server.await.unwrap();
    HandshakeOutcome { server, client }
}

/// The certificate problem a side reported, failing the test if it failed otherwise.
fn cert_error<T: std::fmt::Debug>(r: io::Result<T>) -> rustls::CertificateError {
    let e = r.expect_err("the handshake must fail");
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => c.clone(),
        _ => panic!("not a certificate error: {e:?}"),
    }
}

fn is_wrong_name(e: &rustls::CertificateError) -> bool {
    matches!(
        e,
        rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. }
    )
}

/// Both clusters' CAs are called "swarm-ca", so webpki finds a same-named issuer and the
/// signature check is what fails.
fn is_foreign(e: &rustls::CertificateError) -> bool {
    matches!(
        e,
        rustls::CertificateError::BadSignature | rustls::CertificateError::UnknownIssuer
    )
}

fn is_expired(e: &rustls::CertificateError) -> bool {
    matches!(
        e,
        rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
    )
}

#[tokio::test]
async fn manager_server_accepts_a_worker_and_reads_its_identity() {
    let ca = ClusterCa::generate().unwrap();
    let manager = node(&ca, "manager1", Role::Manager);
    let worker = node(&ca, "worker1", Role::Worker);
    let o = handshake(
        server_config(&manager).unwrap(),
        client_config(&worker).unwrap(),
    )
    .await;
    assert_eq!(o.client.unwrap(), Some(b"h2".to_vec()));
    let seen = o.server.unwrap().unwrap();
    assert_eq!(&seen, worker.identity());
    assert_eq!(
        seen,
        NodeIdentity {
            node_id: "worker1".into(),
            role: Role::Worker,
            cluster_id: "cluster1".into(),
        }
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_let_in_anonymously() {
    let ca = ClusterCa::generate().unwrap();
    let manager = node(&ca, "manager1", Role::Manager);
    let o = handshake(
        server_config(&manager).unwrap(),
        bootstrap_client_config(ca.digest()).unwrap(),
    )
    .await;
    assert_eq!(o.client.unwrap(), Some(b"h2".to_vec()));
    assert_eq!(o.server.unwrap(), None);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let ca = ClusterCa::generate().unwrap();
    let other = ClusterCa::generate().unwrap();
    let manager = node(&ca, "manager1", Role::Manager);
    let intruder = node(&other, "worker1", Role::Worker);
    // Whatever the intruder thinks of the server, the server must judge its certificate.
    let mut config = (*client_config(&intruder).unwrap()).clone();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(AcceptAny));
    let o = handshake(server_config(&manager).unwrap(), Arc::new(config)).await;
    let err = cert_error(o.server);
    assert!(is_foreign(&err), "{err:?}");
    assert!(o.client.is_err());
}

/// Lets the intruder test reach the server's client check, whatever the server presents.
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn a_worker_cannot_serve_as_a_manager() {
    let ca = ClusterCa::generate().unwrap();
    let worker_server = node(&ca, "worker1", Role::Worker);
    let manager = node(&ca, "manager1", Role::Manager);
    let o = handshake(
        server_config(&worker_server).unwrap(),
        client_config(&manager).unwrap(),
    )
    .await;
    let err = cert_error(o.client);
    assert!(is_wrong_name(&err), "{err:?}");
    assert!(o.server.is_err());
    // Nor to a joining node holding the right token.
    let o = handshake(
        server_config(&worker_server).unwrap(),
        bootstrap_client_config(ca.digest()).unwrap(),
    )
    .await;
    let err = cert_error(o.client);
    assert!(is_wrong_name(&err), "{err:?}");
}

#[tokio::test]
async fn a_server_from_another_cluster_is_refused() {
    let ca = ClusterCa::generate().unwrap();
    let other = ClusterCa::generate().unwrap();
    let foreign_manager = node(&other, "manager1", Role::Manager);
    let worker = node(&ca, "worker1", Role::Worker);
    let o = handshake(
        server_config(&foreign_manager).unwrap(),
        client_config(&worker).unwrap(),
    )
    .await;
    let err = cert_error(o.client);
    assert!(is_foreign(&err), "{err:?}");
}

#[tokio::test]
async fn bootstrap_pins_the_ca_named_by_the_token() {
    let ca = ClusterCa::generate().unwrap();
    let manager = node(&ca, "manager1", Role::Manager);
    let token = JoinToken::parse(&JoinToken::generate(ca.digest()).to_string()).unwrap();

    // Right digest: the handshake succeeds, and the CA to save comes from the pinned chain.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config(&manager).unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    // Dialled by address: the verifier still insists on the manager name.
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = TlsConnector::from(bootstrap_client_config(token.ca_digest).unwrap())
        .connect(name, tcp)
        .await
        .unwrap();
    let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    let pinned = pinned_ca_pem(&chain, token.ca_digest).unwrap();
    assert_eq!(pinned, ca.cert_pem());
    assert!(token.matches_ca(&pinned));
    assert_eq!(pinned_ca_pem(&chain, [0; 32]), None);
    tls.shutdown().await.unwrap();
    server.await.unwrap();

    // Wrong digest: refused before anything is sent.
    let o = handshake(
        server_config(&manager).unwrap(),
        bootstrap_client_config([7; 32]).unwrap(),
    )
    .await;
    let err = cert_error(o.client);
    let rustls::CertificateError::Other(rustls::OtherError(inner)) = &err else {
        panic!("{err:?}");
    };
    assert!(
        matches!(
            inner.downcast_ref::<PkiError>(),
            Some(PkiError::CaDigestMismatch)
        ),
        "{inner:?}"
    );
    // Another cluster's CA digest against this manager fails the same way.
    let other = ClusterCa::generate().unwrap();
    let o = handshake(
        server_config(&manager).unwrap(),
        bootstrap_client_config(other.digest()).unwrap(),
    )
    .await;
    assert!(matches!(
        cert_error(o.client),
        rustls::CertificateError::Other(_)
    ));
}

#[tokio::test]
async fn expired_certificates_fail_the_handshake() {
    let ca = ClusterCa::generate().unwrap();
    let expired_manager = expired_node(&ca, "manager1", Role::Manager);
    let worker = node(&ca, "worker1", Role::Worker);
    let o = handshake(
        server_config(&expired_manager).unwrap(),
        client_config(&worker).unwrap(),
    )
    .await;
    let err = cert_error(o.client);
    assert!(is_expired(&err), "{err:?}");

    let manager = node(&ca, "manager1", Role::Manager);
    let expired_worker = expired_node(&ca, "worker1", Role::Worker);
    let o = handshake(
        server_config(&manager).unwrap(),
        client_config(&expired_worker).unwrap(),
    )
    .await;
    let err = cert_error(o.server);
    assert!(is_expired(&err), "{err:?}");
    assert!(o.client.is_err());
}

#[test]
fn the_ca_survives_a_pem_round_trip_with_its_digest() {
    let ca = ClusterCa::generate().unwrap();
    let (cert, key) = ca.to_pem_pair();
    let back = ClusterCa::from_pem_pair(&cert, &key).unwrap();
    assert_eq!(back.digest(), ca.digest());
    // The PEM rcgen writes is already canonical, so digests of DER and PEM agree.
    let der = first_cert_der(ca.cert_pem(), "t").unwrap();
    assert_eq!(digest_of_der(&der), ca.digest());
    // CRLF line endings are normalised away, keeping the digest tokens carry.
    let crlf = ClusterCa::from_pem_pair(&cert.replace('\n', "\r\n"), &key).unwrap();
    assert_eq!(crlf.digest(), ca.digest());
    // The pair can issue certificates.
    let n = node(&back, "worker1", Role::Worker);
    assert_eq!(n.ca_pem(), ca.cert_pem());

    let other = ClusterCa::generate().unwrap();
    let (_, other_key) = other.to_pem_pair();
    assert!(matches!(
        ClusterCa::from_pem_pair(&cert, &other_key),
        Err(PkiError::KeyMismatch { .. })
    ));
    assert!(matches!(
        ClusterCa::from_pem_pair(n.cert_pem(), &key),
        Err(PkiError::NotACa)
    ));
    assert!(matches!(
        ClusterCa::from_pem_pair("junk", &key),
        Err(PkiError::BadPem { .. })
    ));
}

#[tokio::test]
async fn peers_accept_only_nodes_of_the_cluster_and_the_node_they_dialled() {
    let ca = ClusterCa::generate().unwrap();
    let other = ClusterCa::generate().unwrap();
    let w1 = node(&ca, "worker1", Role::Worker);
    let w2 = node(&ca, "worker2", Role::Worker);
    // A worker serves a worker that dialled it by its node ID; the server reads the caller's.
    let ok = handshake(
        peer_server_config(&w1).unwrap(),
        peer_client_config(&w2, "worker1").unwrap(),
    )
    .await;
    assert_eq!(ok.server.unwrap().unwrap().node_id, "worker2");
    assert_eq!(ok.client.unwrap().as_deref(), Some(&b"h2"[..]));
    // Dialling worker1's address but expecting another node: refused by the client.
    let wrong = handshake(
        peer_server_config(&w1).unwrap(),
        peer_client_config(&w2, "worker3").unwrap(),
    )
    .await;
    assert!(is_wrong_name(&cert_error(wrong.client)));
    // A node of another cluster is refused either way.
    let stranger = node(&other, "worker1", Role::Worker);
    let r = handshake(
        peer_server_config(&w1).unwrap(),
        peer_client_config(&stranger, "worker1").unwrap(),
    )
    .await;
    assert!(is_foreign(&cert_error(r.client)));
    let r = handshake(
        peer_server_config(&stranger).unwrap(),
        peer_client_config(&w2, "worker1").unwrap(),
    )
    .await;
    assert!(is_foreign(&cert_error(r.client)));
    // A caller without a certificate (a joiner's config, which the manager port lets in)
    // never gets in.
    let m1 = node(&ca, "manager1", Role::Manager);
    let anon = handshake(
        peer_server_config(&m1).unwrap(),
        bootstrap_client_config(ca.digest()).unwrap(),
    )
    .await;
    assert!(
        anon.server.is_err(),
        "served a caller without a certificate"
    );
    let anon_on_manager_port = handshake(
        server_config(&m1).unwrap(),
        bootstrap_client_config(ca.digest()).unwrap(),
    )
    .await;
    assert!(
        anon_on_manager_port.server.is_ok(),
        "the control: the manager port lets it in"
    );
}
