//! Real TLS handshakes over loopback TCP for the API's certificates (`api.rs`): who the API
//! listener lets in, and that API client certificates open nothing on the node port.

use crate::*;
use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DAY: Duration = Duration::from_secs(24 * 3600);
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Serials revoked so far, as the store would answer.
#[derive(Debug, Default)]
struct Revoked(Mutex<HashSet<String>>);

impl Revocations for Revoked {
    fn is_revoked(&self, serial: &str) -> bool {
        self.0.lock().unwrap().contains(serial)
    }
}

/// A client's files as `shoal client-cert` writes them: (cert.pem, key.pem).
fn client(ca: &ClusterCa, name: &str) -> (IssuedClientCert, String) {
    let key = ClientKey::generate().unwrap();
    let issued = ca
        .issue_api_client(key.csr_pem(), name, "cluster1", 90 * DAY)
        .unwrap();
    (issued, key.key_pem().to_string())
}

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

fn api_server(ca: &ClusterCa) -> ApiServerCert {
    ca.issue_api_server(
        "manager1",
        "cluster1",
        &["node-1".into(), "localhost".into(), "not a name!".into()],
        &[LOOPBACK, "10.99.0.1".parse().unwrap()],
        SystemTime::now() + 90 * DAY,
    )
    .unwrap()
}

/// One connection: the server's view (the client's leaf, if any) and the client's (it read the
/// server's first bytes, which only comes after the server accepted its certificate).
async fn connect(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> (io::Result<Option<Vec<u8>>>, io::Result<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        tls.write_all(b"ok").await?;
        tls.flush().await?;
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        Ok(leaf)
    });
    let name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    let client = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await?;
        tls.shutdown().await?;
        Ok(())
    }
    .await;
    (server.await.unwrap(), client)
}

fn cert_error<T: std::fmt::Debug>(r: io::Result<T>) -> rustls::CertificateError {
    let e = r.expect_err("the handshake must fail");
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => c.clone(),
        _ => panic!("not a certificate error: {e:?}"),
    }
}

#[tokio::test]
async fn an_api_client_certificate_is_let_in_by_name_until_revoked() {
    let ca = ClusterCa::generate().unwrap();
    let revoked = Arc::new(Revoked::default());
    let server = api_server_config(&api_server(&ca), revoked.clone()).unwrap();
    let (issued, key) = client(&ca, "ci-runner");
    let cfg = api_client_config(ca.cert_pem(), &issued.cert_pem, &key).unwrap();
    let (seen, ok) = connect(server.clone(), cfg.clone(), "127.0.0.1").await;
    ok.unwrap();
    let who = api_client_of_der(&seen.unwrap().unwrap()).unwrap();
    assert_eq!(who.name, "ci-runner");
    assert_eq!(who.serial, issued.serial);
    assert_eq!(who.fingerprint, issued.fingerprint);
    assert_eq!(api_client_of_pem(&issued.cert_pem).unwrap(), who);

    // The server certificate names the node's host name and addresses, not anything else.
    for name in ["10.99.0.1", "node-1", "localhost"] {
        connect(server.clone(), cfg.clone(), name).await.1.unwrap();
    }
    let err = cert_error(
        connect(server.clone(), cfg.clone(), "other.example")
            .await
            .1,
    );
    assert!(
        matches!(
            err,
            rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. }
        ),
        "{err:?}"
    );

    revoked.0.lock().unwrap().insert(issued.serial.clone());
    let (seen, client) = connect(server.clone(), cfg, "127.0.0.1").await;
    assert_eq!(cert_error(seen), rustls::CertificateError::Revoked);
    assert!(client.is_err());
    // Another certificate of the same name is not affected.
    let (other, key) = client_cert_pair(&ca, "ci-runner");
    let cfg = api_client_config(ca.cert_pem(), &other, &key).unwrap();
    connect(server, cfg, "127.0.0.1").await.1.unwrap();
}

fn client_cert_pair(ca: &ClusterCa, name: &str) -> (String, String) {
    let (issued, key) = client(ca, name);
    (issued.cert_pem, key)
}

#[tokio::test]
async fn node_certificates_and_other_cas_do_not_open_the_api() {
    let ca = ClusterCa::generate().unwrap();
    let server = api_server_config(&api_server(&ca), Arc::new(Revoked::default())).unwrap();
    for role in [Role::Manager, Role::Worker] {
        let n = node(&ca, "node1", role);
        let cfg = api_client_config(ca.cert_pem(), n.cert_pem(), n.key_pem()).unwrap();
        let (seen, client) = connect(server.clone(), cfg, "127.0.0.1").await;
        assert_eq!(
            cert_error(seen),
            rustls::CertificateError::InvalidPurpose,
            "{role}"
        );
        assert!(client.is_err());
    }
    // The server's own certificate is for serving only.
    let s = api_server(&ca);
    let server_key = s.key_pem.clone();
    let cfg = api_client_config(ca.cert_pem(), s.cert_pem(), &server_key).unwrap();
    let (seen, _) = connect(server.clone(), cfg, "127.0.0.1").await;
    let err = cert_error(seen);
    assert!(
        matches!(
            err,
            rustls::CertificateError::InvalidPurpose
                | rustls::CertificateError::InvalidPurposeContext { .. }
        ),
        "{err:?}"
    );
    // A client certificate from another CA.
    let other = ClusterCa::generate().unwrap();
    let (cert, key) = client_cert_pair(&other, "intruder");
    let cfg = api_client_config(ca.cert_pem(), &cert, &key).unwrap();
    let (seen, client) = connect(server.clone(), cfg, "127.0.0.1").await;
    assert_eq!(cert_error(seen), rustls::CertificateError::UnknownIssuer);
    assert!(client.is_err());
    // No certificate at all.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        r.add(first_cert_der(ca.cert_pem(), "ca").unwrap()).unwrap();
        r
    };
    let anonymous = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (seen, client) = connect(server, Arc::new(anonymous), "127.0.0.1").await;
    let e = seen.expect_err("no certificate, no entry");
    assert!(
        matches!(
            e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::NoCertificatesPresented)
        ),
        "{e:?}"
    );
    assert!(client.is_err());
}

#[tokio::test]
async fn an_api_client_certificate_does_not_open_the_node_port() {
    let ca = ClusterCa::generate().unwrap();
    let manager = node(&ca, "manager1", Role::Manager);
    let (cert, key) = client_cert_pair(&ca, "ci-runner");
    let mut cfg = (*api_client_config(ca.cert_pem(), &cert, &key).unwrap()).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let (seen, client) = connect(
        server_config(&manager).unwrap(),
        Arc::new(cfg),
        MANAGER_SERVER_NAME,
    )
    .await;
    assert_eq!(cert_error(seen), rustls::CertificateError::InvalidPurpose);
    assert!(client.is_err());
    // A node certificate still does.
    let worker = node(&ca, "worker1", Role::Worker);
    let (seen, client) = connect(
        server_config(&manager).unwrap(),
        client_config(&worker).unwrap(),
        MANAGER_SERVER_NAME,
    )
    .await;
    client.unwrap();
    assert_eq!(
        identity_of_der(&seen.unwrap().unwrap()).unwrap().node_id,
        "worker1"
    );
}

#[test]
fn client_names_and_csrs_are_checked() {
    let ca = ClusterCa::generate().unwrap();
    let key = ClientKey::generate().unwrap();
    for bad in ["", "-x", "a b", "a/b", "é", &"x".repeat(65)] {
        assert!(
            matches!(
                ca.issue_api_client(key.csr_pem(), bad, "c", DAY),
                Err(PkiError::InvalidIdentity(_))
            ),
            "{bad:?}"
        );
    }
    for good in ["a", "ci-runner.prod_2", &"x".repeat(64)] {
        ca.issue_api_client(key.csr_pem(), good, "c", DAY).unwrap();
    }
    assert!(matches!(
        ca.issue_api_client("not a csr", "a", "c", DAY),
        Err(PkiError::BadCsr(_))
    ));
    assert!(!format!("{key:?}").contains("PRIVATE KEY"));
    assert!(!format!("{:?}", api_server(&ca)).contains("PRIVATE KEY"));
    // Serial numbers differ, and an issued certificate is an API client's, not a node's.
    let a = ca.issue_api_client(key.csr_pem(), "a", "c", DAY).unwrap();
    let b = ca.issue_api_client(key.csr_pem(), "a", "c", DAY).unwrap();
    assert_ne!(a.serial, b.serial);
    let der = first_cert_der(&a.cert_pem, "t").unwrap();
    assert!(identity_of_der(&der).is_err());
    assert!(a.not_after <= SystemTime::now() + DAY);
}
